"""Value at risk of the book: parametric (delta-gamma) with a cheap bound between exact refreshes, and
Monte Carlo by full revaluation. The risk engine asks it before and after orders; nothing here decides.

:meth:`VarModel.refresh` computes the parametric VaR of the current book with
:func:`greekfire.quant.parametric_var`, and the VaR of one unit of delta cash and of gamma cash each way per
underlying. ``VaR(book) + VaR(order's delta) + VaR(order's gamma)`` then bounds the VaR after an order (the
model's P&L scales with its inputs, and VaR of a sum is taken as at most the sum); the risk engine computes
the VaR after an order exactly (:meth:`VarModel.exact_after`) only when that bound is near the limit.
:meth:`VarModel.compute_mc_var` revalues the book with :func:`greekfire.quant.mc_var` (off the hot path).

Volatilities, rate and dividend yield come from the portfolio's pricing inputs. Amounts in currency.
"""

from __future__ import annotations

import logging
import math

import torch

from greekfire import quant
from greekfire.core.metrics import gauge
from greekfire.core.settings import RiskSettings
from greekfire.trading.portfolio import Portfolio

log = logging.getLogger(__name__)

# Monte Carlo VaR revalues the options with this engine of the pricing registry (the vols are the
# engine-owned pricing inputs, so a model that needs more than a vol would need its inputs declared too)
REVALUATION_ENGINE = "bsm"

VAR_GAUGE = gauge("greekfire_trading_var", "1-day VaR of the book, currency", ["method"])


class VarModel:
    """VaR of ``portfolio`` at ``limits.var_confidence`` (the risk engine's live limits object)."""

    def __init__(self, portfolio: Portfolio, limits: RiskSettings) -> None:
        self.portfolio = portfolio
        self.limits = limits
        self.exact = 0.0  # the last exact parametric VaR
        self.exact_ns: int | None = None
        self.at_exact: dict[str, tuple[float, float]] = {}  # und -> (delta cash, gamma cash) at that time
        self.var = 0.0  # the exact VaR, plus a bound for what changed since (between exact refreshes)
        # per underlying: VaR of +1 / -1 delta cash and of +1 / -1 gamma cash (currency per unit), and the
        # daily vol they were computed for (they depend on nothing else)
        self.unit: dict[str, tuple[float, float, float, float]] = {}
        self.unit_vol: dict[str, float] = {}
        self.mc_var = 0.0
        self.exact_checks = 0
        self.available = True
        self.mc_runs = 0

    def vol_of(self, underlying: str) -> float:
        """Annualised volatility of an underlying for VaR (the pricing inputs' figure)."""
        return self.portfolio.pricing.underlying_vol(underlying)

    def inputs(self) -> tuple[list[str], list[float], list[float], list[float], list[float]]:
        """Per underlying with a spot: names, delta cash, gamma cash (x spot^2), spot, daily vol."""
        pf = self.portfolio
        unds = [u for u in pf.totals if u in pf.spots]
        dc, gc, sp, vo = [], [], [], []
        for u in unds:
            d, g = pf.cash_greeks(u)
            dc.append(d)
            gc.append(g * 100.0)  # quant.parametric_var takes gamma x spot^2
            sp.append(pf.spots[u])
            vo.append(self.vol_of(u) / math.sqrt(252.0))
        return unds, dc, gc, sp, vo

    def param_var(self, dc: list[float], gc: list[float], sp: list[float], vo: list[float]) -> float:
        """Parametric VaR summed over the rows (no diversification credit between underlyings)."""
        if not dc:
            return 0.0
        fn = getattr(quant, "parametric_var", None)
        if fn is None:  # the pricing core of this build has no VaR: the check is off, and says so once
            if self.available:
                log.error("greekfire.quant.parametric_var is missing: the VaR limit is NOT enforced")
            self.available = False
            return 0.0
        # VaR per underlying, summed: no diversification credit between underlyings (conservative)
        var, _ = fn(
            torch.tensor(dc, dtype=torch.float64), torch.tensor(gc, dtype=torch.float64),
            torch.tensor(sp, dtype=torch.float64), torch.tensor(vo, dtype=torch.float64),
            confidence=self.limits.var_confidence,
        )
        return float(var.sum())

    def param_var_each(self, dc: list[float], gc: list[float], sp: list[float], vo: list[float]) -> list[float]:
        """Parametric VaR of each row separately (currency)."""
        fn = getattr(quant, "parametric_var", None)
        if fn is None or not dc:
            return [0.0] * len(dc)
        var, _ = fn(
            torch.tensor(dc, dtype=torch.float64), torch.tensor(gc, dtype=torch.float64),
            torch.tensor(sp, dtype=torch.float64), torch.tensor(vo, dtype=torch.float64),
            confidence=self.limits.var_confidence,
        )
        return [float(v) for v in var.tolist()]

    def exact_after(self, und: str, d_dc: float, d_gc: float) -> float:
        """Exact parametric VaR if one underlying's delta and gamma cash moved by ``d_dc`` / ``d_gc``."""
        self.exact_checks += 1
        unds, dc, gc, sp, vo = self.inputs()
        if und in unds:
            i = unds.index(und)
            dc[i] += d_dc
            gc[i] += d_gc
        return self.param_var(dc, gc, sp, vo)

    @staticmethod
    def increment(unit: tuple[float, float, float, float], d_dc: float, d_gq: float) -> float:
        """Upper bound of the VaR added by a change of delta cash and gamma cash (currency)."""
        return (unit[0] * d_dc if d_dc >= 0 else -unit[1] * d_dc) + (unit[2] * d_gq if d_gq >= 0 else -unit[3] * d_gq)

    def refresh(self, now_ns: int | None = None) -> float:
        """Bring the VaR up to date; returns it (currency).

        The exact parametric VaR (a ``quant`` call) is recomputed when ``now_ns`` is None or at most every
        ``var_refresh_s``; in between, the VaR is the last exact figure plus the bound of what the book's
        delta and gamma cash did since, from the unit VaRs (no tensor call)."""
        unds, dc, gc, sp, vo = self.inputs()
        vs = self
        if unds and self.available:
            # unit VaRs depend only on the daily vol: recompute for new underlyings or changed vols
            todo = [i for i, u in enumerate(unds) if vs.unit_vol.get(u) != vo[i]]
            if todo:
                per = self.param_var_each(
                    [1.0, -1.0, 0.0, 0.0] * len(todo), [0.0, 0.0, 1.0, -1.0] * len(todo),
                    [sp[i] for i in todo for _ in range(4)], [vo[i] for i in todo for _ in range(4)],
                )
                for k, i in enumerate(todo):
                    vs.unit[unds[i]] = (per[4 * k], per[4 * k + 1], per[4 * k + 2], per[4 * k + 3])
                    vs.unit_vol[unds[i]] = vo[i]
        due = (
            now_ns is None or vs.exact_ns is None
            or now_ns - vs.exact_ns >= self.limits.var_refresh_s * 1e9
            or any(u not in vs.at_exact for u in unds)
        )
        if due:
            vs.exact = self.param_var(dc, gc, sp, vo)
            vs.exact_ns = now_ns if now_ns is not None else (vs.exact_ns or 0)
            vs.at_exact = {u: (dc[i], gc[i]) for i, u in enumerate(unds)}
            vs.var = vs.exact
            VAR_GAUGE.labels("parametric").set(vs.var)
        else:
            bound = vs.exact
            for i, u in enumerate(unds):
                unit = vs.unit.get(u)
                if unit is not None:
                    d0, g0 = vs.at_exact[u]
                    bound += self.increment(unit, dc[i] - d0, gc[i] - g0)
            vs.var = bound
        return vs.var

    def compute_mc_var(self, seed: int = 0) -> float:
        """Monte Carlo 1-day VaR of the book by full revaluation (``quant.mc_var``, ``var_mc_paths`` paths,
        independent underlyings); recorded for the pre-trade and continuous checks. Off the hot path."""
        fn = getattr(quant, "mc_var", None)
        pf = self.portfolio
        if fn is None or not self.available:
            return self.mc_var
        unds = [u for u in pf.totals if u in pf.spots]
        held = [(iid, p.qty) for iid, p in pf.positions.items() if p.qty and pf.instruments[iid].underlying in unds]
        if not held:
            self.set_mc_var(0.0)
            return 0.0
        col = {u: j for j, u in enumerate(unds)}
        opts = [(pf.instruments[i], q) for i, q in held if pf.instruments[i].is_option]
        stock = [(pf.instruments[i], q) for i, q in held if not pf.instruments[i].is_option]
        f64 = torch.float64
        if opts:
            o_col = torch.tensor([col[i.underlying] for i, _ in opts])
            o_right = torch.tensor([i.right for i, _ in opts], dtype=f64)
            o_strike = torch.tensor([i.strike for i, _ in opts], dtype=f64)
            o_ttm = torch.tensor([max(i.ttm(pf.now_ns), 1e-4) for i, _ in opts], dtype=f64)
            o_vol = torch.tensor([pf.pricing.vol(i.instrument_id) for i, _ in opts], dtype=f64)
            o_w = torch.tensor([q * i.multiplier for i, q in opts], dtype=f64)
        s_col = torch.tensor([col[i.underlying] for i, _ in stock], dtype=torch.long)
        s_w = torch.tensor([q * i.multiplier for i, q in stock], dtype=f64)

        engine = quant.get_engine(REVALUATION_ENGINE)
        batch = quant.OptionBatch(o_right, o_strike, o_ttm) if opts else None

        def revalue(spots: torch.Tensor) -> torch.Tensor:
            value = (spots[:, s_col] * s_w).sum(dim=1)
            if batch is not None:
                market = quant.MarketInputs(spots[:, o_col], pf.rate, pf.div_yield, vol=o_vol)
                px = quant.price(engine, batch, market)["value"]
                value = value + (px * o_w).sum(dim=1)
            return value

        spots = torch.tensor([pf.spots[u] for u in unds], dtype=f64)
        vols = torch.tensor([self.vol_of(u) / math.sqrt(252.0) for u in unds], dtype=f64)
        var, _ = fn(revalue, spots, vols, confidence=self.limits.var_confidence, n_paths=self.limits.var_mc_paths,
                    seed=seed)
        self.set_mc_var(float(var))
        return self.mc_var

    def set_mc_var(self, value: float) -> None:
        """Record a Monte Carlo VaR figure computed off the hot path (currency)."""
        self.mc_var = float(value)
        VAR_GAUGE.labels("monte_carlo").set(value)
