"""A/B serving: route inference traffic between the champion and the challenger by weight, join each
prediction with the price observed later (by request id), and decide on a sequential test.

The test is a mixture sequential probability ratio test (mSPRT; Johari, Pekelis & Walsh, "Always valid
inference", 2017) on the difference of the variants' mean squared errors (one observation per request: the
mean over its rows of (predicted - observed)^2, in price/strike units squared). With ``theta`` =
mean(challenger) - mean(champion), its plug-in variance ``V`` = var_A/n_A + var_B/n_B and a normal mixture of
scale ``tau`` (``models.ab_tau`` times the pooled mean squared error)::

    Lambda = sqrt(V / (V + tau^2)) * exp(theta^2 tau^2 / (2 V (V + tau^2)))

The test may be looked at after every observation: once both variants have ``models.ab_min_samples``
observations and ``Lambda >= 1 / models.ab_alpha``, it decides ``promote`` (the challenger errs less) or
``rollback`` (it errs more); after ``models.ab_max_samples`` per variant undecided it stops (``inconclusive``,
the champion stays). With ``models.ab_auto_decide`` the decision goes through the registry (promotion without
the offline gate, or the challenger's rollback), recorded in the audit history with the statistic.

Example::

    router = ABRouter(champion_model, challenger_model, settings, registry=reg)
    variant = router.choose()                             # "champion" or "challenger"
    router.record(request_id, variant, [0.051], latency_s=0.0008)
    router.observe(request_id, [0.049])                   # a decision once the evidence suffices
"""

from __future__ import annotations

import logging
import math
import random
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from greekfire.core.errors import DataError
from greekfire.core.metrics import counter, gauge, histogram
from greekfire.core.settings import Settings

log = logging.getLogger(__name__)

Variant = Literal["champion", "challenger"]
VARIANTS: tuple[Variant, ...] = ("champion", "challenger")
AB_ACTOR = "ab-test"

AB_REQUESTS = counter("greekfire_ab_requests", "A/B pricing requests by variant and outcome", ["variant", "status"])
AB_LATENCY = histogram(
    "greekfire_ab_request_seconds", "A/B pricing latency by variant, seconds", ["variant"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
)
AB_OBSERVED = counter("greekfire_ab_observed", "observed prices joined to a prediction, by variant", ["variant"])
AB_MSE = gauge("greekfire_ab_mean_squared_error", "mean squared error against observed prices, by variant",
               ["variant"])
AB_RATIO = gauge("greekfire_ab_msprt_ratio", "the A/B test's mixture likelihood ratio (decides at 1/alpha)")


@dataclass
class RunningStats:
    """Count, mean and variance of a stream (Welford), plus failed requests and total latency."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0
    failed: int = 0
    requests: int = 0
    latency_s: float = 0.0

    def add(self, x: float) -> None:
        """One observation."""
        self.n += 1
        d = x - self.mean
        self.mean += d / self.n
        self.m2 += d * (x - self.mean)

    @property
    def var(self) -> float:
        """Sample variance (0 below two observations)."""
        return self.m2 / (self.n - 1) if self.n > 1 else 0.0

    def as_dict(self) -> dict[str, Any]:
        """Plain data with the variance and mean latency (seconds)."""
        return {**asdict(self), "var": self.var,
                "mean_latency_s": self.latency_s / self.requests if self.requests else None}


@dataclass(frozen=True)
class Decision:
    """The test's state: ``outcome`` continue | promote | rollback | inconclusive."""

    outcome: str
    ratio: float
    threshold: float
    theta: float
    n_champion: int
    n_challenger: int
    mse_champion: float
    mse_challenger: float

    @property
    def final(self) -> bool:
        """True once the test has stopped."""
        return self.outcome != "continue"

    def reason(self) -> str:
        """One line for the audit history."""
        return (f"A/B mSPRT {self.outcome}: MSE challenger {self.mse_challenger:.4g} (n={self.n_challenger}) vs "
                f"champion {self.mse_champion:.4g} (n={self.n_champion}), ratio {self.ratio:.4g} vs threshold "
                f"{self.threshold:.4g}")

    def as_dict(self) -> dict[str, Any]:
        """Plain data."""
        return asdict(self)


def msprt(a: RunningStats, b: RunningStats, *, alpha: float, tau: float, min_samples: int,
          max_samples: int) -> Decision:
    """The mixture SPRT of ``b`` (challenger) against ``a`` (champion) on their means (module docstring)."""
    threshold = 1.0 / alpha
    theta = b.mean - a.mean
    v = (a.var / a.n if a.n else math.inf) + (b.var / b.n if b.n else math.inf)
    pooled = (a.mean * a.n + b.mean * b.n) / max(1, a.n + b.n)
    t2 = (tau * pooled) ** 2
    if a.n < 2 or b.n < 2 or not math.isfinite(v) or t2 <= 0:
        ratio = 1.0
    elif v <= 0:  # no spread at all: any difference is certain
        ratio = math.inf if theta != 0 else 1.0
    else:
        log_ratio = 0.5 * math.log(v / (v + t2)) + theta * theta * t2 / (2 * v * (v + t2))
        ratio = math.exp(min(log_ratio, 700.0))
    outcome = "continue"
    if a.n >= min_samples and b.n >= min_samples and ratio >= threshold:
        outcome = "rollback" if theta > 0 else "promote"
    elif a.n >= max_samples and b.n >= max_samples:
        outcome = "inconclusive"
    return Decision(outcome, ratio, threshold, theta, a.n, b.n, a.mean, b.mean)


@dataclass
class _Pending:
    variant: Variant
    prices: list[float]


@dataclass
class ABRouter:
    """Weighted routing between two models, the join of predictions with observed prices, and the test.

    ``models`` maps variant to the served model (any object; the server keeps its batcher beside it);
    ``registry`` (a :class:`~greekfire.training.registry.ModelRegistry`) applies the decision when
    ``models.ab_auto_decide`` is on. After a decision all traffic goes to the (new) champion.
    """

    models: dict[str, Any]
    settings: Settings
    registry: Any = None
    versions: dict[str, str | None] = field(default_factory=dict)
    seed: int | None = None

    def __post_init__(self) -> None:
        m = self.settings.models
        self.weight = m.ab_challenger_weight if self.models.get("challenger") is not None else 0.0
        self.stats: dict[str, RunningStats] = {v: RunningStats() for v in VARIANTS}
        self.pending: OrderedDict[str, _Pending] = OrderedDict()
        self.decision: Decision | None = None
        self.applied: dict[str, Any] | None = None
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        """True while traffic is split (a challenger, a weight above 0, no decision yet)."""
        return self.weight > 0 and self.models.get("challenger") is not None and self.decision is None

    def choose(self) -> Variant:
        """The variant for the next request: the challenger with probability ``models.ab_challenger_weight``."""
        if self.active and self._rng.random() < self.weight:
            return "challenger"
        return "champion"

    def record(self, request_id: str, variant: Variant, prices: list[float], latency_s: float,
               ok: bool = True) -> None:
        """Keep a prediction until its observed price arrives (the oldest are dropped beyond
        ``models.ab_pending_max``) and count its latency (seconds) and outcome."""
        AB_REQUESTS.labels(variant, "ok" if ok else "error").inc()
        AB_LATENCY.labels(variant).observe(latency_s)
        with self._lock:
            st = self.stats[variant]
            st.requests += 1
            st.latency_s += latency_s
            if not ok:
                st.failed += 1
                return
            self.pending[request_id] = _Pending(variant, prices)
            while len(self.pending) > self.settings.models.ab_pending_max:
                self.pending.popitem(last=False)

    def observe(self, request_id: str, observed: list[float]) -> dict[str, Any]:
        """Join the observed prices (price/strike, one per row of the request) with the prediction of
        ``request_id``; returns the variant, the request's mean squared error and the test's state.
        DataError for an unknown (or expired) request id or a row count that does not match."""
        with self._lock:
            p = self.pending.pop(request_id, None)
            if p is None:
                raise DataError("request_id", request_id, "no prediction awaits an observed price under this id "
                                "(unknown, already observed, or dropped after models.ab_pending_max)")
            if len(observed) != len(p.prices) or not all(math.isfinite(x) for x in observed):
                self.pending[request_id] = p
                raise DataError("price", len(observed), f"{len(p.prices)} finite observed prices, one per row")
            se = sum((a - b) ** 2 for a, b in zip(p.prices, observed, strict=True)) / len(observed)
            st = self.stats[p.variant]
            st.add(se)
            AB_OBSERVED.labels(p.variant).inc()
            AB_MSE.labels(p.variant).set(st.mean)
            first = None
            if self.decision is None and p.variant in ("champion", "challenger"):
                d = self.evaluate()
                AB_RATIO.set(d.ratio if math.isfinite(d.ratio) else 1e300)
                if d.final:
                    self.decision = first = d
        if first is not None:
            self._apply(first)
        return {"request_id": request_id, "variant": p.variant, "squared_error": se,
                "decision": (self.decision or self.evaluate()).as_dict()}

    def evaluate(self) -> Decision:
        """The test on the observations so far."""
        m = self.settings.models
        return msprt(self.stats["champion"], self.stats["challenger"], alpha=m.ab_alpha, tau=m.ab_tau,
                     min_samples=m.ab_min_samples, max_samples=m.ab_max_samples)

    def _apply(self, d: Decision) -> None:
        """Route everything to the winner; with ``models.ab_auto_decide`` record the decision in the registry."""
        log.warning("A/B test decided: %s", d.reason())
        if d.outcome == "promote":
            self.models["champion"] = self.models["challenger"]
            self.versions["champion"] = self.versions.get("challenger")
        self.models["challenger"] = None
        self.versions["challenger"] = None
        if self.registry is None or not self.settings.models.ab_auto_decide or d.outcome == "inconclusive":
            return
        details = {"ab": d.as_dict(), "stats": {k: v.as_dict() for k, v in self.stats.items()}}
        try:
            if d.outcome == "promote":
                version = self.registry.alias_version("challenger")
                entry = self.registry.promote(version, actor=AB_ACTOR, reason=d.reason(), gate=False, details=details)
            else:
                entry = self.registry.rollback_challenger(actor=AB_ACTOR, reason=d.reason(), details=details)
            self.applied = entry.as_dict()
        except Exception as exc:  # the registry may be down: the routing already changed, say so loudly
            log.error("A/B decision %s could not be recorded in the registry: %s", d.outcome, exc)
            self.applied = {"error": f"{type(exc).__name__}: {exc}"}

    def state(self) -> dict[str, Any]:
        """Weights, versions, per-variant figures, the test and what the registry recorded."""
        with self._lock:
            return {
                "active": self.active, "challenger_weight": self.weight if self.active else 0.0,
                "versions": dict(self.versions), "stats": {k: v.as_dict() for k, v in self.stats.items()},
                "pending": len(self.pending), "test": self.evaluate().as_dict(),
                "decision": self.decision.as_dict() if self.decision else None, "applied": self.applied,
            }


def router_from_registry(settings: Settings, registry: Any, *, device: str = "cpu",
                         seed: int | None = None) -> ABRouter:
    """An :class:`ABRouter` serving the registry's champion and (when set and ``models.ab_challenger_weight``
    > 0) its challenger."""
    champion = registry.load("champion", device=device)
    challenger_v = registry.alias_version("challenger")
    weight = settings.models.ab_challenger_weight
    challenger = registry.load(challenger_v, device=device) if challenger_v and weight > 0 else None
    return ABRouter({"champion": champion, "challenger": challenger}, settings, registry=registry,
                    versions={"champion": champion.info.get("version"),
                              "challenger": challenger_v if challenger is not None else None}, seed=seed)
