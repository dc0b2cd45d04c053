"""The HFT engine: market data feed, shared-memory rings, tick processing, order management, risk."""
