"""Positions, cash, P&L and Greeks, kept current incrementally.

What happens when:

- a fill: the one position changes (quantity, average cost, realized P&L, fees), cash moves, and the
  position's Greek contribution to its underlying's totals is swapped (old out, new in) — no repricing;
- a quote: the instrument's mark is stored; a quote on an underlying marks that underlying dirty;
- the end of a quote batch (:meth:`Portfolio.revalue`): for each dirty underlying, the per-unit Greeks of
  all its options are recomputed — a chain of up to :data:`SMALL_CHAIN` options by the closed form in plain
  float math (:func:`greekfire.quant.bsm_greeks_scalar`), a bigger one in ONE vectorised call
  to :func:`greekfire.quant.bsm_greeks` — and that underlying's totals are rebuilt from its positions. Other
  underlyings are not touched.

Volatilities, rate and dividend yield come from the engine's :class:`~greekfire.trading.pricing.PricingInputs`
(the same inputs the risk engine and the strategies' declarations use).

Greek units (per underlying): delta in share equivalents (quantity x multiplier x delta), gamma in shares
per 1.00 of spot, vega in currency per 1.00 vol, theta in currency per year. Cash forms: delta_cash =
delta x spot, gamma_cash = gamma x spot^2 / 100 (delta change in currency for a 1% move).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from greekfire.quant import bsm_greeks, bsm_greeks_scalar
from greekfire.trading.model import Fill, Instrument
from greekfire.trading.pricing import PricingInputs

GREEKS = ("delta", "gamma", "vega", "theta")

# A chain up to this many options is revalued with scalar closed-form math (about 3 us an option here); a
# tensor call through the pricing core costs about 0.4 ms whatever its size, so it wins only on big chains.
SMALL_CHAIN = 32

@dataclass(slots=True)
class Position:
    """Net position in one instrument. ``avg_cost`` in currency per unit (before the multiplier)."""

    instrument_id: int
    qty: int = 0
    avg_cost: float = 0.0
    realized_pnl: float = 0.0
    fees: float = 0.0
    fill_count: int = 0

    def apply(self, side: int, qty: int, price: float, multiplier: float, fee: float) -> float:
        """Apply one fill (side +1/-1); returns the realized P&L of this fill (currency, before fees)."""
        signed = side * qty
        realized = 0.0
        if self.qty == 0 or (self.qty > 0) == (signed > 0):
            new_qty = self.qty + signed
            self.avg_cost = (self.avg_cost * abs(self.qty) + price * qty) / abs(new_qty)
            self.qty = new_qty
        else:
            closing = min(qty, abs(self.qty))
            realized = (price - self.avg_cost) * closing * multiplier * (1 if self.qty > 0 else -1)
            new_qty = self.qty + signed
            if new_qty == 0:
                self.avg_cost = 0.0
            elif (new_qty > 0) != (self.qty > 0):  # flipped through zero: the remainder opens at this price
                self.avg_cost = price
            self.qty = new_qty
        self.realized_pnl += realized
        self.fees += fee
        self.fill_count += 1
        return realized

    def unrealized(self, mark: float, multiplier: float) -> float:
        """Mark-to-market P&L of the open quantity (currency)."""
        if self.qty == 0 or not math.isfinite(mark):
            return 0.0
        return (mark - self.avg_cost) * self.qty * multiplier

    def to_dict(self) -> dict[str, Any]:
        return {
            "instrument_id": self.instrument_id, "qty": self.qty, "avg_cost": self.avg_cost,
            "realized_pnl": self.realized_pnl, "fees": self.fees, "fill_count": self.fill_count,
        }


class Portfolio:
    """Cash, positions and Greeks of one account, priced with ``pricing`` (default: its own inputs at
    ``rate`` / ``div_yield``, continuously compounded)."""

    def __init__(
        self, starting_cash: float = 0.0, *, rate: float = 0.0, div_yield: float = 0.0,
        pricing: PricingInputs | None = None,
    ) -> None:
        self.cash = float(starting_cash)
        self.starting_cash = float(starting_cash)
        self.pricing = pricing or PricingInputs(rate=rate, div_yield=div_yield)
        self.pricing.listeners.append(self._vol_changed)
        self.instruments: dict[int, Instrument] = {}
        self.positions: dict[int, Position] = {}
        self.net: dict[int, int] = {}  # instrument -> net quantity (what strategies read, cheaply)
        self.marks: dict[int, float] = {}
        self.spots: dict[str, float] = {}
        # per-unit Greeks (per 1 unit of the instrument, before the multiplier): id -> (delta, gamma, vega, theta)
        self.unit: dict[int, tuple[float, float, float, float]] = {}
        # underlying -> (delta, gamma, vega, theta); tuples, so a read-only view of the dict is read-only
        self.totals: dict[str, tuple[float, float, float, float]] = {}
        self._contrib: dict[int, tuple[float, float, float, float]] = {}
        self._options_of: dict[str, list[int]] = {}
        self._dirty: set[str] = set()
        self.now_ns = 0
        self.peak_equity = self.starting_cash
        self.day_start_equity = self.starting_cash
        self.revaluations = 0

    # ---------------------------------------------------------------- instruments and marks
    def add_instrument(self, inst: Instrument) -> None:
        """Register an instrument (its underlying gets a Greek bucket; options are revalued with it)."""
        self.instruments[inst.instrument_id] = inst
        self.totals.setdefault(inst.underlying, (0.0, 0.0, 0.0, 0.0))
        if inst.is_option:
            self._options_of.setdefault(inst.underlying, []).append(inst.instrument_id)
            self.unit[inst.instrument_id] = (0.0, 0.0, 0.0, 0.0)
        else:
            self.unit[inst.instrument_id] = (1.0, 0.0, 0.0, 0.0)
        self._dirty.add(inst.underlying)

    def mark(self, instrument_id: int, price: float) -> None:
        """Store the latest mark (mid) of an instrument; an underlying's mark also moves its spot."""
        self.marks[instrument_id] = price
        inst = self.instruments.get(instrument_id)
        if inst is not None and not inst.is_option:
            self.spots[inst.underlying] = price
            self._dirty.add(inst.underlying)

    @property
    def rate(self) -> float:
        """Interest rate of the pricing inputs (continuously compounded, per year)."""
        return self.pricing.rate

    @rate.setter
    def rate(self, value: float) -> None:
        self.pricing.rate = value

    @property
    def div_yield(self) -> float:
        """Dividend yield of the pricing inputs (continuously compounded, per year)."""
        return self.pricing.div_yield

    @property
    def default_vol(self) -> float:
        """Volatility of an option without its own (annualised)."""
        return self.pricing.default_vol

    @default_vol.setter
    def default_vol(self, value: float) -> None:
        self.pricing.default_vol = value
        self._dirty.update(self.totals)

    @property
    def vols(self) -> Mapping[int, float]:
        """Per-option volatilities set so far (read-only; annualised)."""
        return self.pricing.vols

    def set_vol(self, instrument_id: int, vol: float) -> None:
        """Set an option's volatility (annualised); its underlying is revalued at the next batch end."""
        self.pricing.set_vol(instrument_id, vol)

    def _vol_changed(self, instrument_id: int) -> None:
        inst = self.instruments.get(instrument_id)
        if inst is not None:
            self._dirty.add(inst.underlying)

    # ---------------------------------------------------------------- fills
    def apply_fill(self, fill: Fill) -> float:
        """Apply one fill to its position, cash and Greek totals; returns the fill's realized P&L."""
        inst = self.instruments[fill.instrument_id]
        pos = self.positions.get(fill.instrument_id)
        if pos is None:
            pos = self.positions[fill.instrument_id] = Position(fill.instrument_id)
        realized = pos.apply(int(fill.side), fill.qty, fill.price, inst.multiplier, fill.fee)
        self.net[fill.instrument_id] = pos.qty
        self.cash -= int(fill.side) * fill.qty * fill.price * inst.multiplier + fill.fee
        self._swap_contribution(inst, pos.qty)
        return realized

    def settle(
        self, instrument_id: int, *, close_price: float = 0.0, underlying_id: int | None = None,
        underlying_qty: int = 0, price: float = 0.0,
    ) -> float:
        """Close an option position without a trade (expiry, exercise, assignment): the whole position goes
        at ``close_price`` (currency per unit: 0 for an expiry or a physical delivery, the intrinsic value for
        a cash settlement) and ``underlying_qty`` units of ``underlying_id`` (signed) move at ``price`` (the
        strike, currency per unit), cash following: ``-underlying_qty x price``. No fee. Returns the option
        leg's realized P&L (currency)."""
        pos = self.positions.get(instrument_id)
        if pos is None or not pos.qty:
            return 0.0
        inst = self.instruments[instrument_id]
        side, qty = (-1 if pos.qty > 0 else 1), abs(pos.qty)
        realized = pos.apply(side, qty, close_price, inst.multiplier, 0.0)
        self.net[instrument_id] = pos.qty
        self.cash -= side * qty * close_price * inst.multiplier
        self._swap_contribution(inst, pos.qty)
        if underlying_qty and underlying_id is not None:
            und = self.instruments[underlying_id]
            upos = self.positions.get(underlying_id)
            if upos is None:
                upos = self.positions[underlying_id] = Position(underlying_id)
            upos.apply(1 if underlying_qty > 0 else -1, abs(underlying_qty), price, und.multiplier, 0.0)
            self.net[underlying_id] = upos.qty
            self.cash -= underlying_qty * price * und.multiplier
            self._swap_contribution(und, upos.qty)
        self._dirty.add(inst.underlying)
        return realized

    def _swap_contribution(self, inst: Instrument, qty: int) -> None:
        u = self.unit[inst.instrument_id]
        m = qty * inst.multiplier
        new = (u[0] * m, u[1] * m, u[2] * m, u[3] * m)
        old = self._contrib.get(inst.instrument_id, (0.0, 0.0, 0.0, 0.0))
        t = self.totals[inst.underlying]
        self.totals[inst.underlying] = (
            t[0] + new[0] - old[0], t[1] + new[1] - old[1], t[2] + new[2] - old[2], t[3] + new[3] - old[3],
        )
        self._contrib[inst.instrument_id] = new

    # ---------------------------------------------------------------- revaluation
    def revalue(self, now_ns: int | None = None, force: bool = False) -> list[str]:
        """Recompute Greeks of the dirty underlyings (one quant call each); returns those revalued."""
        if now_ns is not None:
            self.now_ns = now_ns
        todo = list(self.totals) if force else [u for u in self._dirty if u in self.spots]
        for und in todo:
            self._revalue_underlying(und)
            self._dirty.discard(und)
        if todo:
            self.revaluations += 1
        return todo

    def _revalue_underlying(self, und: str) -> None:
        spot = self.spots.get(und)
        ids = self._options_of.get(und, [])
        if ids and spot is not None and spot > 0:
            insts = [self.instruments[i] for i in ids]
            # floor the time at one minute so options on their expiry day keep finite Greeks
            ttm = [max(i.ttm(self.now_ns), 1.0 / (365 * 24 * 60)) for i in insts]
            rights = [i.right for i in insts]
            strikes = [i.strike for i in insts]
            pricing = self.pricing
            vols = [pricing.vol(i.instrument_id) for i in insts]
            rate, div_yield = pricing.rate, pricing.div_yield
            rows = (
                bsm_greeks_scalar(rights, float(spot), strikes, ttm, rate, div_yield, vols)
                if len(ids) <= SMALL_CHAIN else None
            )
            if rows is not None:
                for iid, row in zip(ids, rows, strict=True):
                    self.unit[iid] = row
            else:
                f64 = torch.float64
                g = bsm_greeks(
                    torch.tensor(rights, dtype=f64), float(spot), torch.tensor(strikes, dtype=f64),
                    torch.tensor(ttm, dtype=f64), rate, div_yield, torch.tensor(vols, dtype=f64),
                )
                cols = [torch.nan_to_num(g[k], nan=0.0).tolist() for k in GREEKS]
                for j, iid in enumerate(ids):
                    self.unit[iid] = (cols[0][j], cols[1][j], cols[2][j], cols[3][j])
        # rebuild this underlying's totals from its positions (drops any drift of the incremental sums)
        tot = [0.0, 0.0, 0.0, 0.0]
        for iid, pos in self.positions.items():
            inst = self.instruments[iid]
            if inst.underlying != und:
                continue
            u = self.unit[iid]
            m = pos.qty * inst.multiplier
            c = (u[0] * m, u[1] * m, u[2] * m, u[3] * m)
            self._contrib[iid] = c
            for k in range(4):
                tot[k] += c[k]
        self.totals[und] = (tot[0], tot[1], tot[2], tot[3])

    # ---------------------------------------------------------------- what-if and summaries
    def greeks_after(self, instrument_id: int, signed_qty: int) -> tuple[str, list[float]]:
        """The underlying and its [delta, gamma, vega, theta] totals as they would be after a fill."""
        inst = self.instruments[instrument_id]
        u = self.unit[instrument_id]
        m = signed_qty * inst.multiplier
        t = self.totals[inst.underlying]
        return inst.underlying, [t[0] + u[0] * m, t[1] + u[1] * m, t[2] + u[2] * m, t[3] + u[3] * m]

    def cash_greeks(self, und: str, totals: Sequence[float] | None = None) -> tuple[float, float]:
        """(delta_cash, gamma_cash) of one underlying: delta x spot, gamma x spot^2 / 100."""
        t = totals if totals is not None else self.totals[und]
        s = self.spots.get(und, 0.0)
        return t[0] * s, t[1] * s * s / 100.0

    def market_value(self) -> float:
        """Sum of open positions at their marks (currency)."""
        mv = 0.0
        for iid, pos in self.positions.items():
            if pos.qty:
                mark = self.marks.get(iid, pos.avg_cost)
                mv += pos.qty * mark * self.instruments[iid].multiplier
        return mv

    def equity(self) -> float:
        """Cash plus market value (currency)."""
        return self.cash + self.market_value()

    def position_pnl(self, instrument_id: int) -> float:
        """Realized + unrealized - fees of one position (currency)."""
        pos = self.positions.get(instrument_id)
        if pos is None:
            return 0.0
        inst = self.instruments[instrument_id]
        return pos.realized_pnl + pos.unrealized(self.marks.get(instrument_id, pos.avg_cost), inst.multiplier) - pos.fees

    def pnl(self) -> dict[str, float]:
        """realized, unrealized, fees and total P&L (currency) since the start."""
        realized = sum(p.realized_pnl for p in self.positions.values())
        fees = sum(p.fees for p in self.positions.values())
        unreal = sum(
            p.unrealized(self.marks.get(i, p.avg_cost), self.instruments[i].multiplier) for i, p in self.positions.items()
        )
        return {"realized": realized, "unrealized": unreal, "fees": fees, "total": realized + unreal - fees}

    def greeks(self) -> dict[str, dict[str, float]]:
        """Greek totals per underlying plus cash forms, and a 'TOTAL' row summing the cash forms."""
        out: dict[str, dict[str, float]] = {}
        total = {"delta_cash": 0.0, "gamma_cash": 0.0, "vega": 0.0, "theta": 0.0}
        for und, t in self.totals.items():
            dc, gc = self.cash_greeks(und, t)
            out[und] = {"delta": t[0], "gamma": t[1], "vega": t[2], "theta": t[3], "delta_cash": dc, "gamma_cash": gc}
            total["delta_cash"] += dc
            total["gamma_cash"] += gc
            total["vega"] += t[2]
            total["theta"] += t[3]
        out["TOTAL"] = total
        return out

    def snapshot(self) -> dict[str, Any]:
        """Plain data for the database snapshot."""
        return {
            "cash": self.cash, "starting_cash": self.starting_cash, "peak_equity": self.peak_equity,
            "day_start_equity": self.day_start_equity,
            "positions": [p.to_dict() for p in self.positions.values()],
            "marks": {str(k): v for k, v in self.marks.items()},
        }

    def restore(self, data: dict[str, Any]) -> None:
        """Load a :meth:`snapshot` (instruments must be registered first); Greeks are rebuilt."""
        self.cash = float(data["cash"])
        self.starting_cash = float(data.get("starting_cash", self.starting_cash))
        self.peak_equity = float(data.get("peak_equity", self.cash))
        self.day_start_equity = float(data.get("day_start_equity", self.cash))
        self.positions = {}
        self.net.clear()
        for p in data.get("positions", []):
            pos = self.positions[int(p["instrument_id"])] = Position(**p)
            self.net[pos.instrument_id] = pos.qty
        for k, v in data.get("marks", {}).items():
            self.mark(int(k), float(v))
        self._contrib.clear()
        self._dirty.update(self.totals)
