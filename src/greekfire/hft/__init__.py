"""The HFT engine: a market data feed over UDP multicast with gap recovery (:mod:`greekfire.hft.feed`),
processes pinned to cores joined by shared-memory rings (:mod:`greekfire.hft.ring`), CPU placement
(:mod:`greekfire.hft.cpu`), the machine check (:mod:`greekfire.hft.doctor`), tick features
(:mod:`greekfire.hft.features`), the cluster of book/feature workers (:mod:`greekfire.hft.cluster`) and the
pipeline that joins them to the strategy, risk and the exchange (:mod:`greekfire.hft.pipeline`).

See docs/hft.md.
"""
