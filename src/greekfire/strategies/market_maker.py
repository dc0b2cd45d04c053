"""A sample options market maker: quote around the pricing core's fair value with inventory and Greek skew.

Fair values: :func:`greekfire.quant.bsm_greeks` prices the whole chain (value, delta, gamma) in one call at
start, on every timer, and when the underlying has moved more than ``full_reprice_bps`` since the last full
price. Between full prices an underlying quote moves each fair value by its second-order Taylor step
``value + delta x dS + gamma x dS^2 / 2`` (a few float operations, so a market event never waits for a
tensor call); the options are stepped and re-quoted one at a time, largest |delta| at the last full price
first, so the quotes the move hits hardest go out first. Each option is quoted on both sides:

    reservation = fair - inventory_skew x position - delta_skew x book_delta x option_delta
                       - vega_skew x book_vega x option_vega
    bid = reservation - half_width_ticks x tick,  ask = reservation + half_width_ticks x tick

rounded away from the reservation onto the tick grid, kept one tick inside the market's opposite side,
post-only. A quote is amended only when its price moves by ``requote_ticks`` or more, so most market events
produce no order. At ``max_inventory`` contracts the side that would grow the position is pulled.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from greekfire.quant import bsm_greeks
from greekfire.trading.engine import Strategy
from greekfire.trading.model import Fill, Instrument, Quote, Side, TimeInForce
from greekfire.trading.orders import OPEN, OrderStatus

_WORKING = frozenset((OrderStatus.ACCEPTED, OrderStatus.PARTIALLY_FILLED))
# bound once: an Enum class attribute lookup costs ~0.2 us on the re-quote path
_BUY, _SELL, _GTC = Side.BUY, Side.SELL, TimeInForce.GTC
_ZERO4 = (0.0, 0.0, 0.0, 0.0)


class OptionsMarketMaker(Strategy):
    """Two-sided quotes on every option of the engine's underlyings. Parameters (keyword arguments):

    vol (annualised, 0.20), rate (0.02), half_width_ticks (4), size (contracts, 5), inventory_skew (currency
    per contract held, 0.01), delta_skew (currency per share of book delta per unit option delta, 2e-5),
    vega_skew (1e-6), max_inventory (contracts, 50), requote_ticks (1), full_reprice_bps (50.0).
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
        self.full_reprice_bps = float(p.get("full_reprice_bps", 50.0))
        self.fair: dict[int, float] = {}
        self.market: dict[int, tuple[float, float]] = {}  # best bid/ask last seen (any venue)
        self.quotes: dict[int, dict[int, str]] = {}  # instrument -> side -> client id
        self._chain: dict[str, list[Instrument]] = {}
        self._underlying_ids: dict[int, str] = {}
        # Taylor base per option: (spot at the full price, value, delta, gamma)
        self._base: dict[int, tuple[float, float, float, float]] = {}
        self._by_delta: dict[str, list[Instrument]] = {}  # each chain, largest |delta| at the last full price first
        self._want: dict[int, tuple[float | None, float | None]] = {}  # unclamped target (bid, ask)
        self._live: dict[int, tuple[float | None, float | None]] = {}  # what our working orders show
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
        # after a restart: take over our restored working quotes (one per side), cancel any extra
        for order in eng.oms.open_orders(strategy_id=self.name):
            mine = self.quotes.setdefault(order.instrument_id, {})
            if order.side not in mine:
                mine[order.side] = order.client_id
            else:
                eng.cancel(order.client_id)
        for und in self._chain:
            if und in eng.portfolio.spots:
                self._reprice(und, eng.portfolio.spots[und])

    # ---------------------------------------------------------------- fair values
    def _reprice(self, und: str, spot: float) -> None:
        """Full price of the chain through the pricing core (one tensor call)."""
        eng = self.engine
        assert eng is not None
        chain = self._chain.get(und)
        if not chain:
            return
        now = eng.clock_ns()
        g = bsm_greeks(
            torch.tensor([i.right for i in chain], dtype=torch.float64), spot,
            torch.tensor([i.strike for i in chain], dtype=torch.float64),
            torch.tensor([max(i.ttm(now), 1e-4) for i in chain], dtype=torch.float64), self.rate, 0.0, self.vol,
        )
        vals, deltas, gammas = g["value"].tolist(), g["delta"].tolist(), g["gamma"].tolist()
        for inst, v, d, gm in zip(chain, vals, deltas, gammas, strict=True):
            self._base[inst.instrument_id] = (spot, v, d, gm)
            self.fair[inst.instrument_id] = v
        # on an underlying move, the options with the largest |delta| move most: re-quote those first
        self._by_delta[und] = sorted(chain, key=lambda i: -abs(self._base[i.instrument_id][2]))
        self.reprices += 1
        self._requote_chain(und)

    def _step(self, und: str, spot: float) -> None:
        """Move every fair value of the chain to ``spot`` by its Taylor step from the last full price, and
        re-quote each option as soon as its own fair value has moved (the first order does not wait for the
        rest of the chain), largest |delta| first: those quotes move most and are the most exposed."""
        base = self._base
        fair = self.fair
        requote = self._requote
        for inst in self._by_delta.get(und) or self._chain.get(und) or ():
            b = base.get(inst.instrument_id)
            if b is not None:
                ds = spot - b[0]
                v = b[1] + b[2] * ds + 0.5 * b[3] * ds * ds
                fair[inst.instrument_id] = v if v > 0.0 else 0.0
            requote(inst)

    # ---------------------------------------------------------------- events
    def on_quote(self, quote: Quote) -> None:
        iid = quote.instrument_id
        und = self._underlying_ids.get(iid)
        if und is not None:
            eng = self.engine
            assert eng is not None
            spot = eng.portfolio.spots.get(und)
            chain = self._chain.get(und)
            if not spot or not chain:
                return
            base = self._base.get(chain[0].instrument_id)
            if base is None:  # nothing to quote before the first full price: do it right after this batch
                eng.after_batch(self._reprice_all)
                return
            self._step(und, spot)  # quotes move now; a big move is re-priced exactly after the batch
            if abs(spot / base[0] - 1.0) * 1e4 >= self.full_reprice_bps:
                eng.after_batch(self._reprice_all)
            return
        bid, ask = quote.bid, quote.ask
        self.market[iid] = (bid, ask)
        want = self._want.get(iid)
        # fast path: our target is unchanged, already shown, and the new market does not force a clamp
        if want is not None and self._live.get(iid) == want:
            wb, wa = want
            if (wb is None or not wb >= ask) and (wa is None or not wa <= bid):
                return
        if iid in self.fair and self.engine is not None:
            self._requote(self.engine.instruments[iid])

    def on_fill(self, fill: Fill) -> None:
        eng = self.engine
        assert eng is not None
        # a fill changes the inventory of one option and the book Greeks that skew every quote
        self._requote_chain(eng.instruments[fill.instrument_id].underlying)

    def on_timer(self, now_ns: int) -> None:
        self._live.clear()  # re-check every order against the OMS (catches venue-side cancels)
        self._reprice_all()

    def _reprice_all(self) -> None:
        eng = self.engine
        assert eng is not None
        for und in self._chain:
            spot = eng.portfolio.spots.get(und)
            if spot:
                self._reprice(und, spot)

    # ---------------------------------------------------------------- quoting
    def _requote_chain(self, und: str) -> None:
        for inst in self._chain.get(und, ()):
            self._requote(inst)

    def _requote(self, inst: Instrument) -> None:
        iid = inst.instrument_id
        fair = self.fair.get(iid)
        if fair is None:
            return
        eng = self.engine
        assert eng is not None
        pf = eng.portfolio
        pos = pf.positions.get(iid)
        qty = pos.qty if pos is not None else 0
        unit = pf.unit.get(iid, _ZERO4)
        book = pf.totals.get(inst.underlying, _ZERO4)
        reservation = (
            fair - self.inventory_skew * qty - self.delta_skew * book[0] * unit[0] - self.vega_skew * book[2] * unit[2]
        )
        tick = inst.tick_size
        r = reservation / tick
        hw = self.half_width_ticks
        bid = round(math.floor(r - hw + 1e-9) * tick, 10)
        ask = round(math.ceil(r + hw - 1e-9) * tick, 10)
        want_bid = bid if bid >= tick and qty < self.max_inventory else None
        want_ask = ask if qty > -self.max_inventory else None
        self._want[iid] = (want_bid, want_ask)
        mkt = self.market.get(iid)
        if mkt is not None:
            mb, ma = mkt
            if want_bid is not None and ma == ma and want_bid >= ma:
                want_bid = round(ma - tick, 10) if ma - tick >= tick else None
            if want_ask is not None and mb == mb and want_ask <= mb:
                want_ask = round(mb + tick, 10)
        mine = self.quotes.get(iid)
        if mine is None:
            mine = self.quotes[iid] = {}
        shown_bid = self._quote_side(mine, iid, _BUY, want_bid, tick)
        self._live[iid] = (shown_bid, self._quote_side(mine, iid, _SELL, want_ask, tick))

    def _quote_side(self, mine: dict[int, str], iid: int, side: Side, price: float | None, tick: float) -> float | None:
        """Bring our working order on one side to ``price`` (None: no quote); returns the price it now shows."""
        eng = self.engine
        assert eng is not None
        cid = mine.get(side)
        order = eng.oms.orders.get(cid) if cid else None
        if order is not None and order.status not in OPEN:
            order = None
            del mine[side]
        if price is None:
            if order is not None and order.status in _WORKING:
                eng.cancel(order.client_id)
            return None
        if order is None:
            sent = self.submit(iid, side, self.size, price, tif=_GTC, post_only=True)
            if sent and sent[0].is_open:
                mine[side] = sent[0].client_id
                return price
            return None
        if order.price is not None and abs(order.price - price) >= self.requote_ticks * tick - 1e-9:
            if order.status in _WORKING and eng.amend(order.client_id, max(order.qty, order.filled_qty + self.size), price) is None:
                return price
            return None
        return price
