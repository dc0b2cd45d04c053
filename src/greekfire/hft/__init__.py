"""The HFT engine: processes pinned to cores and joined by shared-memory rings, a MoldUDP64 multicast feed,
books and features on tensors, pre-allocated order management, fast risk and kill switches."""
