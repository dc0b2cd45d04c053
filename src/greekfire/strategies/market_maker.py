"""A sample options market maker: quote around the pricing core's fair value with inventory and Greek skew.

Fair values come from :func:`greekfire.quant.bsm_price` for the whole chain in one call, only when the
underlying has moved by more than ``reprice_bps`` (not on every quote). Each option is quoted on both sides:

    reservation = fair - inventory_skew x position - delta_skew x book_delta x option_delta
                       - vega_skew x book_vega x option_vega
    bid = reservation - half_width_ticks x tick,  ask = reservation + half_width_ticks x tick

(rounded away from the reservation onto the tick grid, kept one tick inside the market's opposite side,
post-only). A quote is amended only when its price moves by ``requote_ticks`` or more, so most market events
produce no order. At ``max_inventory`` contracts the side that would grow the position is pulled.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from greekfire.quant import bsm_price
from greekfire.trading.engine import Strategy
from greekfire.trading.model import Fill, Instrument, Quote, Side, TimeInForce
from greekfire.trading.orders import OrderStatus

_WORKING = (OrderStatus.ACCEPTED, OrderStatus.PARTIALLY_FILLED)


class OptionsMarketMaker(Strategy):
    """Two-sided quotes on every option of the engine's underlyings. Parameters (keyword arguments):

    vol (annualised, 0.20), rate (0.02), half_width_ticks (4), size (contracts, 5), inventory_skew (currency
    per contract held, 0.01), delta_skew (currency per share of book delta per unit option delta, 2e-5),
    vega_skew (1e-6), max_inventory (contracts, 50), requote_ticks (1), reprice_bps (2.0).
    """

    name = "market_maker"

    def __init__(self, name: str | None = None, **params: Any) -> None:
        super().__init__(name, **params)
        p = params
        self.vol = float(p.get("vol", 0.20))
        self.rate = float(p.get("rate", 0.02))
        self.half_width_ticks = int(p.get("half_width_ticks", 4))
        self.size = int(p.get("size", 5))
        self.inventory_skew = float(p.get("inventory_skew", 0.01))
        self.delta_skew = float(p.get("delta_skew", 2e-5))
        self.vega_skew = float(p.get("vega_skew", 1e-6))
        self.max_inventory = int(p.get("max_inventory", 50))
        self.requote_ticks = int(p.get("requote_ticks", 1))
        self.reprice_bps = float(p.get("reprice_bps", 2.0))
        self.fair: dict[int, float] = {}
        self.market: dict[int, tuple[float, float]] = {}  # best bid/ask seen (any venue)
        self.quotes: dict[int, dict[int, str]] = {}  # instrument -> side -> client id
        self._chain: dict[str, list[Instrument]] = {}
        self._priced_spot: dict[str, float] = {}
        self._underlying_ids: dict[int, str] = {}
        self.reprices = 0

    def on_start(self) -> None:
        eng = self.engine
        assert eng is not None
        for inst in eng.instruments.values():
            if inst.is_option:
                self._chain.setdefault(inst.underlying, []).append(inst)
                eng.portfolio.set_vol(inst.instrument_id, self.vol)
            else:
                self._underlying_ids[inst.instrument_id] = inst.underlying
        for und in self._chain:
            if und in eng.portfolio.spots:
                self._reprice(und, eng.portfolio.spots[und])

    def _reprice(self, und: str, spot: float) -> None:
        eng = self.engine
        assert eng is not None
        chain = self._chain.get(und)
        if not chain:
            return
        now = eng.clock_ns()
        px = bsm_price(
            torch.tensor([i.right for i in chain], dtype=torch.float64), spot,
            torch.tensor([i.strike for i in chain], dtype=torch.float64),
            torch.tensor([max(i.ttm(now), 1e-4) for i in chain], dtype=torch.float64), self.rate, 0.0, self.vol,
        ).tolist()
        for inst, p in zip(chain, px, strict=True):
            self.fair[inst.instrument_id] = p
        self._priced_spot[und] = spot
        self.reprices += 1
        for inst in chain:
            self._requote(inst)

    def on_quote(self, quote: Quote) -> None:
        iid = quote.instrument_id
        und = self._underlying_ids.get(iid)
        if und is not None:
            eng = self.engine
            assert eng is not None
            spot = eng.portfolio.spots.get(und)
            last = self._priced_spot.get(und)
            if spot and (last is None or abs(spot / last - 1.0) * 1e4 >= self.reprice_bps):
                self._reprice(und, spot)
            return
        self.market[iid] = (quote.bid, quote.ask)
        inst = self.engine.instruments[iid] if self.engine else None
        if inst is not None and iid in self.fair:
            self._requote(inst)

    def on_fill(self, fill: Fill) -> None:
        eng = self.engine
        assert eng is not None
        self._requote(eng.instruments[fill.instrument_id])

    def on_timer(self, now_ns: int) -> None:
        for chain in self._chain.values():
            for inst in chain:
                if inst.instrument_id in self.fair:
                    self._requote(inst)

    def _requote(self, inst: Instrument) -> None:
        eng = self.engine
        assert eng is not None
        iid = inst.instrument_id
        fair = self.fair.get(iid)
        if fair is None:
            return
        pf = eng.portfolio
        pos = pf.positions.get(iid)
        qty = pos.qty if pos is not None else 0
        unit = pf.unit.get(iid, (0.0, 0.0, 0.0, 0.0))
        book = pf.totals.get(inst.underlying, (0.0, 0.0, 0.0, 0.0))
        reservation = (
            fair - self.inventory_skew * qty - self.delta_skew * book[0] * unit[0] - self.vega_skew * book[2] * unit[2]
        )
        tick = inst.tick_size
        bid = math.floor(reservation / tick - self.half_width_ticks + 1e-9) * tick
        ask = math.ceil(reservation / tick + self.half_width_ticks - 1e-9) * tick
        mkt = self.market.get(iid)
        if mkt is not None:
            mb, ma = mkt
            if ma == ma and bid >= ma:
                bid = ma - tick
            if mb == mb and ask <= mb:
                ask = mb + tick
        want = {
            Side.BUY: round(bid, 10) if bid >= tick and qty < self.max_inventory else None,
            Side.SELL: round(ask, 10) if qty > -self.max_inventory else None,
        }
        mine = self.quotes.setdefault(iid, {})
        for side, price in want.items():
            cid = mine.get(side)
            order = eng.oms.get(cid) if cid else None
            if order is not None and not order.is_open:
                order = None
                del mine[side]
            if price is None:
                if order is not None and order.status in _WORKING:
                    eng.cancel(order.client_id)
                continue
            if order is None:
                sent = self.submit(iid, side, self.size, price, tif=TimeInForce.GTC, post_only=True)
                if sent and sent[0].is_open:
                    mine[side] = sent[0].client_id
            elif order.status in _WORKING and order.price is not None and abs(order.price - price) >= self.requote_ticks * tick - 1e-9:
                eng.amend(order.client_id, max(order.qty, order.filled_qty + self.size), price)
