"""The HFT engine: a market data feed over UDP multicast with gap recovery (:mod:`greekfire.hft.feed`),
processes pinned to cores joined by shared-memory rings (:mod:`greekfire.hft.ring`), CPU placement
(:mod:`greekfire.hft.cpu`) and the machine check (:mod:`greekfire.hft.doctor`).

See docs/hft.md.
"""
