"""A sample options market maker: quote around the pricing core's fair value with inventory and Greek skew.

Fair values: :func:`greekfire.quant.bsm_greeks` prices the whole chain (value, delta, gamma) in one call at
start, on every timer, and when the underlying has moved more than ``full_reprice_bps`` since the last full
price. Between full prices an underlying quote moves each fair value by its second-order Taylor step
``value + delta x dS + gamma x dS^2 / 2`` (a few float operations, so a market event never waits for a
tensor call); the chain is stepped, largest |delta| at the last full price first, and every quote that moved
goes out in one mass quote (``ctx.amend_many``), the ones the move hits hardest first in the message.
Each option is quoted on both sides:

    skew = inventory_skew x position + delta_skew x book_delta x option_delta + vega_skew x book_vega x option_vega
    reservation = fair - skew, the skew capped at +/- max_skew_ticks x tick
    bid = reservation - half_width_ticks x tick,  ask = reservation + half_width_ticks x tick

rounded away from the reservation onto the tick grid, kept one tick inside the best opposite price over
every venue the engine routes to (``ctx.venue_quotes``: the router can post it wherever it goes), post-only.
With the cap at the half width (the default) a quote leans to shed inventory but never bids above or offers
below fair value. Quote prices are integer ticks; the market's prices (currency) are compared with a quote's
target through that target in currency nudged 1e-6 of a tick outward (exact for prices on the grid, and an
empty side, NaN, compares false), so an option's quote costs no conversion. A quote is amended only when its
price moves by ``requote_ticks`` or more, so most market events produce no order. At ``max_inventory``
contracts the side that would grow the position is pulled.

It acts only through its :class:`~greekfire.trading.strategy.StrategyContext`: its volatility is declared
to the engine's pricing inputs at start (``ctx.declare_vol``), so the book's Greeks and the VaR limit use
the figure its quotes are made on; positions, the book's Greeks and spots are read from the context's views.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from greekfire.core.errors import ConfigError
from greekfire.quant import bsm_greeks
from greekfire.trading.model import Fill, Instrument, Quote, Side, TimeInForce
from greekfire.trading.orders import OPEN, OrderStatus
from greekfire.trading.strategy import OrderView, Strategy

_WORKING = frozenset((OrderStatus.ACCEPTED, OrderStatus.PARTIALLY_FILLED))
# bound once: an Enum class attribute lookup costs ~0.2 us on the re-quote path
_BUY, _SELL, _GTC = Side.BUY, Side.SELL, TimeInForce.GTC
_SIDES = (_BUY, _SELL)  # quote side k: 0 bid, 1 ask
_ZERO4 = (0.0, 0.0, 0.0, 0.0)
_INF, _NAN = math.inf, math.nan


class _Leg:
    """One option's quoting state. The re-quote loop reads it once per market move: attributes of one
    object, not a lookup in each of several dicts keyed by instrument."""

    __slots__ = ("inst", "iid", "und", "tick", "base", "want", "gate", "live", "lo_ask", "hi_bid", "orders")

    def __init__(self, inst: Instrument) -> None:
        self.inst = inst
        self.iid = inst.instrument_id
        self.und = inst.underlying
        self.tick = inst.tick_size
        self.base: tuple[float, float, float, float] | None = None  # (spot, value, delta, gamma) at the last full price
        self.want: tuple[int | None, int | None] | None = None  # unclamped target (bid, ask), ticks
        # ``want`` in currency nudged 1e-6 tick outward (NaN: no quote): ``gate[0] >= ask`` is exactly "the
        # bid is at or above that ask" for an ask on the grid, ``gate[1] <= bid`` likewise. Made by the first
        # option quote that needs it after ``want`` changed (None until then), not on every chain step
        self.gate: tuple[float, float] | None = None
        self.live: tuple[int | None, int | None] | None = None  # what our working orders show (bid, ask), ticks
        # bounds on the best prices over the venues' last quotes (``ctx.venue_quotes``): ``lo_ask`` <= the
        # lowest ask, ``hi_bid`` >= the highest bid. A quote can only push them outward (two comparisons); a
        # re-quote whose target clears them needs no look at the venues' quotes, and one that does not works
        # the exact best out and tightens them to it
        self.lo_ask = _INF
        self.hi_bid = -_INF
        self.orders: list[OrderView | None] = [None, None]  # our working [bid, ask] order


class OptionsMarketMaker(Strategy):
    """Two-sided quotes on every option of the engine's underlyings. Parameters (keyword arguments):

    vol (annualised, 0.20), rate (0.02), half_width_ticks (4), size (contracts, 5), inventory_skew (currency
    per contract held, 0.01), delta_skew (currency per share of book delta per unit option delta, 2e-5),
    vega_skew (1e-6), max_inventory (contracts, 50), requote_ticks (1), full_reprice_bps (50.0),
    max_skew_ticks (the most the three skews together move the reservation, ticks; half_width_ticks).
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
        self.max_skew_ticks = float(p.get("max_skew_ticks", self.half_width_ticks))
        if not self.max_skew_ticks >= 0:
            raise ConfigError("market_maker.max_skew_ticks", self.max_skew_ticks, ">= 0 (ticks)")
        self.fair: dict[int, float] = {}  # fair value per option (currency)
        self._legs: dict[int, _Leg] = {}  # per option
        self._chain: dict[str, list[_Leg]] = {}
        self._by_delta: dict[str, list[_Leg]] = {}  # each chain, largest |delta| at the last full price first
        self._underlying_ids: dict[int, str] = {}
        self.reprices = 0

    def on_start(self) -> None:
        ctx = self.ctx
        for inst in ctx.instruments.values():
            if inst.is_option:
                leg = self._legs[inst.instrument_id] = _Leg(inst)
                self._chain.setdefault(inst.underlying, []).append(leg)
            else:
                self._underlying_ids[inst.instrument_id] = inst.underlying
        for und in self._chain:  # the book is valued and limited on the vol the quotes are made on
            ctx.declare_vol(und, self.vol)
        # after a restart: take over our restored working quotes (one per side), cancel any extra
        for order in ctx.open_orders():
            held = self._legs.get(order.instrument_id)
            k = 0 if order.side == _BUY else 1
            if held is not None and held.orders[k] is None:
                held.orders[k] = order
            else:
                ctx.cancel(order)
        for und in self._chain:
            if und in ctx.spots:
                self._reprice(und, ctx.spots[und])

    # ---------------------------------------------------------------- fair values
    def _reprice(self, und: str, spot: float) -> None:
        """Full price of the chain through the pricing core (one tensor call)."""
        chain = self._chain.get(und)
        if not chain:
            return
        now = self.ctx.now_ns()
        g = bsm_greeks(
            torch.tensor([leg.inst.right for leg in chain], dtype=torch.float64), spot,
            torch.tensor([leg.inst.strike for leg in chain], dtype=torch.float64),
            torch.tensor([max(leg.inst.ttm(now), 1e-4) for leg in chain], dtype=torch.float64), self.rate, 0.0,
            self.vol,
        )
        vals, deltas, gammas = g["value"].tolist(), g["delta"].tolist(), g["gamma"].tolist()
        for leg, v, d, gm in zip(chain, vals, deltas, gammas, strict=True):
            leg.base = (spot, v, d, gm)
            self.fair[leg.iid] = v
        # on an underlying move, the options with the largest |delta| move most: re-quote those first
        self._by_delta[und] = sorted(chain, key=lambda leg: -abs(leg.base[2]) if leg.base else 0.0)
        self.reprices += 1
        self._requote_chain(und)

    def _step(self, und: str, spot: float) -> None:
        """Move every fair value of the chain to ``spot`` by its Taylor step from the last full price and
        re-quote the chain in one mass quote, largest |delta| first: those quotes move most and are the most
        exposed, so they lead the message."""
        self._requote_many(self._by_delta.get(und) or self._chain.get(und) or (), spot)

    # ---------------------------------------------------------------- events
    def on_quote(self, quote: Quote) -> None:
        iid = quote.instrument_id
        leg = self._legs.get(iid)  # an option's quote (nearly every event): one lookup before its fast path
        if leg is None:
            und = self._underlying_ids.get(iid)
            if und is None:
                return
            ctx = self.ctx
            spot = ctx.spots.get(und)
            chain = self._chain.get(und)
            if not spot or not chain:
                return
            base = chain[0].base
            if base is None:  # nothing to quote before the first full price: do it right after this batch
                ctx.after_batch(self._reprice_all)
                return
            self._step(und, spot)  # quotes move now; a big move is re-priced exactly after the batch
            if abs(spot / base[0] - 1.0) * 1e4 >= self.full_reprice_bps:
                ctx.after_batch(self._reprice_all)
            return
        bid, ask = quote.bid, quote.ask
        if ask < leg.lo_ask:  # an empty side (NaN) moves neither bound
            leg.lo_ask = ask
        if bid > leg.hi_bid:
            leg.hi_bid = bid
        want = leg.want
        # fast path: our target is unchanged, already shown, and the new market does not force a clamp. This
        # venue's quote is all there is to check: shown == target means the last re-quote found no venue
        # forcing a clamp, and each venue's quote since then was checked here as it came
        if want is not None and leg.live == want:
            gate = leg.gate
            if gate is None:
                wb, wa = want
                tick = leg.tick
                leg.gate = gate = (_NAN if wb is None else (wb + 1e-6) * tick, _NAN if wa is None else (wa - 1e-6) * tick)
            gb, ga = gate
            if not gb >= ask and not ga <= bid:
                return
        if iid in self.fair:
            self._requote_many((leg,))

    def on_fill(self, fill: Fill) -> None:
        # a fill changes the inventory of one option and the book Greeks that skew every quote
        self._requote_chain(self.ctx.instruments[fill.instrument_id].underlying)

    def on_timer(self, now_ns: int) -> None:
        for leg in self._legs.values():
            leg.live = None  # re-check every order's state (catches venue-side cancels)
        self._reprice_all()

    def _reprice_all(self) -> None:
        spots = self.ctx.spots
        for und in self._chain:
            spot = spots.get(und)
            if spot:
                self._reprice(und, spot)

    # ---------------------------------------------------------------- quoting
    def _requote_chain(self, und: str) -> None:
        self._requote_many(self._chain.get(und, ()))

    def _requote_many(self, legs: Iterable[_Leg], spot: float | None = None) -> None:
        """Bring the quotes of ``legs`` to their targets: new quotes and pulled ones go out as they are
        found, and the re-prices of working quotes go out together in one mass quote at the end (one
        ``amend_many``). With ``spot``, each fair value is first stepped to it from its Taylor base."""
        ctx = self.ctx
        positions, units, totals, venue_quotes = ctx.positions, ctx.unit_greeks, ctx.greeks, ctx.venue_quotes
        fair_of, quote_side = self.fair, self._quote_side
        inv_skew, delta_skew, vega_skew = self.inventory_skew, self.delta_skew, self.vega_skew
        hw, max_inv, size, ticks = self.half_width_ticks, self.max_inventory, self.size, self.requote_ticks
        max_skew = self.max_skew_ticks
        floor, ceil, working = math.floor, math.ceil, _WORKING
        amends: list[tuple[OrderView, int, int]] = []
        want_bid: int | None
        want_ask: int | None
        shown_bid: int | None
        fair: float | None
        und: str | None = None
        book: tuple[float, ...] = _ZERO4
        tick, cap = 0.0, 0.0
        for leg in legs:
            iid = leg.iid
            b = leg.base
            if spot is not None and b is not None:
                ds = spot - b[0]
                fair = b[1] + ds * (b[2] + 0.5 * b[3] * ds)
                if fair < 0.0:
                    fair = 0.0
                fair_of[iid] = fair
            else:
                fair = fair_of.get(iid)
                if fair is None:
                    continue
            qty = positions[iid] if iid in positions else 0  # noqa: SIM401  # a read-only view: in + [] cost half its .get
            unit = units.get(iid, _ZERO4)
            if leg.und is not und:  # the book's Greeks: one lookup per underlying, not per option
                und = leg.und
                book = totals.get(und, _ZERO4)
            if leg.tick != tick:  # per tick size (one in a chain): its skew cap
                tick = leg.tick
                cap = max_skew * tick
            # the skew leans the quotes to shed inventory and Greeks, but never past fair value: uncapped, a
            # few dozen contracts pushed it tens of ticks, selling below (buying above) fair to the flow
            # and out of the risk engine's price band (its denied re-quotes left the old quote resting)
            skew = inv_skew * qty + delta_skew * book[0] * unit[0] + vega_skew * book[2] * unit[2]
            if skew > cap:
                skew = cap
            elif skew < -cap:
                skew = -cap
            r = (fair - skew) / tick
            want_bid = floor(r - hw + 1e-9)  # ticks
            want_ask = ceil(r + hw - 1e-9)
            if want_bid < 1 or qty >= max_inv:
                want_bid = None
            if qty <= -max_inv:
                want_ask = None
            want = (want_bid, want_ask)
            if spot is not None and want == leg.want and want == leg.live:
                continue  # the step left this option's quotes where they are, working there, clamped by no venue
            leg.want = want
            leg.gate = None
            # never cross the market: one tick inside the best opposite price over every venue, so the quote
            # is marketable at none and the router posts it wherever it goes (an empty side, NaN, never wins)
            # the gate's comparisons, inline: the target nudged 1e-6 tick outward against the best prices. The
            # bounds answer for most options (a target a few ticks off fair is far from the market); only a
            # target that reaches a bound needs the exact best over the venues' quotes
            gb = -_INF if want_bid is None else (want_bid + 1e-6) * tick  # an absent side reaches no price
            ga = _INF if want_ask is None else (want_ask - 1e-6) * tick
            ma, mb = leg.lo_ask, leg.hi_bid
            if gb >= ma or ga <= mb:  # a bound is reached: the exact best prices, and the clamp they force
                mb, ma = -_INF, _INF
                for tops in venue_quotes.values():  # each venue the router may post to: its last quote
                    q = tops.get(iid)
                    if q is not None:
                        if q.bid > mb:
                            mb = q.bid
                        if q.ask < ma:
                            ma = q.ask
                leg.lo_ask, leg.hi_bid = ma, mb
                if gb >= ma:
                    want_bid = ceil(ma / tick - 1e-6) - 1
                    if want_bid < 1:
                        want_bid = None
                if ga <= mb:
                    want_ask = floor(mb / tick + 1e-6) + 1
            mine = leg.orders
            # the common case inline: a working quote that stays, or moves (one amend); else _quote_side
            o = mine[0]
            if want_bid is not None and o is not None and o.status in working and o.price_ticks is not None:
                if not -ticks < o.price_ticks - want_bid < ticks:
                    n = o.filled_qty + size
                    amends.append((o, n if n > o.qty else o.qty, want_bid))
                shown_bid = want_bid
            else:
                shown_bid = quote_side(mine, 0, iid, want_bid)
            o = mine[1]
            if want_ask is not None and o is not None and o.status in working and o.price_ticks is not None:
                if not -ticks < o.price_ticks - want_ask < ticks:
                    n = o.filled_qty + size
                    amends.append((o, n if n > o.qty else o.qty, want_ask))
                leg.live = (shown_bid, want_ask)
            else:
                leg.live = (shown_bid, quote_side(mine, 1, iid, want_ask))
        if amends:
            denials = ctx.amend_many(amends)
            if denials.count(None) == len(denials):  # the common case: every re-price went out
                return
            for (o, _, _), denial in zip(amends, denials, strict=True):
                leg = self._legs[o.instrument_id]
                if denial is not None and leg.live is not None:  # that order still shows its old price
                    b0, a0 = leg.live
                    leg.live = (None, a0) if o.side == _BUY else (b0, None)

    def _quote_side(self, mine: list[OrderView | None], k: int, iid: int, price: int | None) -> int | None:
        """Side ``k`` (0 bid, 1 ask) of an option when it is not a working quote re-priced in place (that case
        is inline in :meth:`_requote_many`): pull it (``price`` None), place a new quote, or leave an order
        whose cancel or replace is pending. Prices in ticks; returns the price the side shows (None: none, or
        not yet)."""
        order = mine[k]
        if order is not None and order.status not in OPEN:
            order = mine[k] = None
        if price is None:
            if order is not None and order.status in _WORKING:
                self.ctx.cancel(order)
            return None
        if order is None:
            sent = self.submit(iid, _SIDES[k], self.size, price, tif=_GTC, post_only=True)
            if sent and sent[0].is_open:
                mine[k] = sent[0]
                return price
            return None
        if order.price_ticks is not None and abs(order.price_ticks - price) >= self.requote_ticks:
            return None  # pending at another price: re-quoted when it settles
        return price
