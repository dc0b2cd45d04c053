"""The HFT engine: a market data feed over UDP multicast with gap recovery (:mod:`greekfire.hft.feed`),
processes pinned to cores joined by shared-memory rings (:mod:`greekfire.hft.ring`), CPU placement
(:mod:`greekfire.hft.cpu`), the machine check (:mod:`greekfire.hft.doctor`), pre-allocated order management
(:mod:`greekfire.hft.orders`), OUCH and FIX gateways (:mod:`greekfire.hft.ouch`, :mod:`greekfire.hft.gateway`),
fast risk and circuit breakers (:mod:`greekfire.hft.risk`), the kill switch (:mod:`greekfire.hft.killswitch`),
tick features (:mod:`greekfire.hft.features`), the cluster of book/feature workers
(:mod:`greekfire.hft.cluster`) and the pipeline that joins them (:mod:`greekfire.hft.pipeline`).

See docs/hft.md.
"""
