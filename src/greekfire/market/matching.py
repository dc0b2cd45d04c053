"""Matching engine: the exchange side of a simulated venue.

Continuous price-time matching of one instrument. Prices are integer ticks, quantities integers.
Order types: limit, market; time in force GTC, DAY, IOC, FOK (GTD rests as GTC: its owner cancels it at
its expiry); post-only; cancel; cancel/replace;
self-trade prevention; maker/taker fees per unit of quantity; execution reports with trade ids.

Report conventions (what a venue adapter can rely on):

* A bad request (unknown side / time in force / order type, a stop order (``unsupported_ord_type``: stops
  are held by the trading engine until triggered), missing price, quantity <= 0, duplicate live
  id, post-only that would cross, FOK that cannot fill completely) gets one ``REJECTED`` report and never
  touches the book. What the book cannot represent is refused, never rounded: a price that is not a whole
  number of ticks (``off_tick``: 10000.5 ticks is not 10000) and a quantity that is not a whole number
  (``fractional_qty``), in ``submit`` and ``replace`` alike.
* An accepted order gets ``ACCEPTED`` first, then, for each fill, one ``TRADE`` for the aggressor
  (liquidity ``"T"``) followed by one for the resting order (``"M"``), both with the same ``trade_id``.
* What an IOC or market order could not fill is ``CANCELED`` (reason ``"ioc_remainder"`` /
  ``"no_liquidity"``); self-trade prevention cancels with reason ``"self_trade"``.
* ``replace`` takes the new *total* order quantity (FIX OrderQty: leaves = new_qty - cum_qty). It keeps
  time priority only when the price is unchanged and the quantity does not grow; it answers
  ``REPLACED`` and may then trade if the new price crosses.
* ``cancel`` / ``replace`` of an id that is not live answer ``REJECTED`` with reason ``"unknown_order"``
  (side ``BUY`` and owner 0 as placeholders, since the engine no longer knows the order).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from enum import IntEnum

from greekfire.core.errors import ConfigError

__all__ = [
    "ExecKind",
    "ExecReport",
    "MatchingEngine",
    "OrdType",
    "OrderType",
    "Side",
    "TimeInForce",
]


class Side(IntEnum):
    """Order side; the value is the sign of the position change."""

    BUY = 1
    SELL = -1


class OrderType(IntEnum):
    """Order types, one set for the books and the trading engine. A book works LIMIT and MARKET; STOP (a
    market order once the reference trades through the order's ``stop_ticks``) and STOP_LIMIT are held by the trading
    engine until triggered."""

    LIMIT = 0
    MARKET = 1
    STOP = 2
    STOP_LIMIT = 3


OrdType = OrderType  # the name the book's callers use


class TimeInForce(IntEnum):
    """Time in force, one set for the books and the trading engine."""

    GTC = 0
    DAY = 1
    IOC = 2
    FOK = 3
    GTD = 4  # good till ``expire_ns``: a book rests it as GTC, the trading engine cancels it at expiry


class ExecKind(IntEnum):
    ACCEPTED = 0
    REJECTED = 1
    TRADE = 2
    CANCELED = 3
    REPLACED = 4
    EXPIRED = 5


@dataclass(slots=True, frozen=True)
class ExecReport:
    """One execution report.

    ``price`` is in ticks: the trade price for TRADE, the order's limit otherwise (0 for market orders).
    ``qty`` is this trade's quantity for TRADE, the order quantity otherwise. ``fee`` is in currency
    (fee per unit x quantity; negative is a rebate).
    """

    kind: ExecKind
    order_id: int
    owner: int
    side: Side
    price: int
    qty: int
    leaves_qty: int
    cum_qty: int
    trade_id: int = 0
    liquidity: str = ""
    fee: float = 0.0
    reason: str = ""
    ts_ns: int = 0


# The engine builds reports through _report, which fills the slots directly: a frozen dataclass's
# generated __init__ goes through object.__setattr__ per field and costs about twice as much, which is
# most of the engine's time per order. The objects are ordinary ExecReports (same equality, repr, hash).
_new_object = object.__new__
(_set_kind, _set_order_id, _set_owner, _set_side, _set_price, _set_qty, _set_leaves, _set_cum, _set_trade_id,
 _set_liquidity, _set_fee, _set_reason, _set_ts) = (
    ExecReport.__dict__[f].__set__
    for f in ("kind", "order_id", "owner", "side", "price", "qty", "leaves_qty", "cum_qty", "trade_id", "liquidity",
              "fee", "reason", "ts_ns")
)


def _whole(v: object) -> int | None:
    """``v`` as an int when it is a whole number (an int, or a float or numpy number with no fraction), else
    None (a fraction, NaN, infinity, not a number)."""
    if isinstance(v, bool):
        return None
    try:
        i = int(v)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):
        return None
    return i if i == v else None


def _report(kind: ExecKind, order_id: int, owner: int, side: Side, price: int, qty: int, leaves_qty: int,
            cum_qty: int, trade_id: int = 0, liquidity: str = "", fee: float = 0.0, reason: str = "",
            ts_ns: int = 0) -> ExecReport:
    r = _new_object(ExecReport)
    _set_kind(r, kind)
    _set_order_id(r, order_id)
    _set_owner(r, owner)
    _set_side(r, side)
    _set_price(r, price)
    _set_qty(r, qty)
    _set_leaves(r, leaves_qty)
    _set_cum(r, cum_qty)
    _set_trade_id(r, trade_id)
    _set_liquidity(r, liquidity)
    _set_fee(r, fee)
    _set_reason(r, reason)
    _set_ts(r, ts_ns)
    return r


STP_MODES = ("cancel_newest", "cancel_oldest", "cancel_both", "none")


# Enum members as module constants: looking a member up on its class costs ~0.1 us, several per order.
_BUY, _SELL = Side.BUY, Side.SELL
_MARKET = OrdType.MARKET
_GTC, _DAY, _IOC, _FOK = TimeInForce.GTC, TimeInForce.DAY, TimeInForce.IOC, TimeInForce.FOK
_ACCEPTED, _REJECTED, _TRADE = ExecKind.ACCEPTED, ExecKind.REJECTED, ExecKind.TRADE
_CANCELED, _REPLACED, _EXPIRED = ExecKind.CANCELED, ExecKind.REPLACED, ExecKind.EXPIRED


class _Order:
    """A live order on the book (mutable, engine-internal)."""

    __slots__ = ("order_id", "owner", "side", "price", "qty", "leaves", "cum", "tif", "post_only")

    def __init__(
        self, order_id: int, owner: int, side: Side, price: int, qty: int, tif: TimeInForce, post_only: bool
    ) -> None:
        self.order_id = order_id
        self.owner = owner
        self.side = side
        self.price = price
        self.qty = qty
        self.leaves = qty
        self.cum = 0
        self.tif = tif
        self.post_only = post_only


class _BookSide:
    """One side: price -> FIFO of orders (a dict keeps insertion order), prices kept sorted.

    ``keys`` holds sort keys ascending with the best price LAST (bids: price, asks: -price), so the
    frequent operations at the top of the book touch the end of the list.
    """

    __slots__ = ("sign", "levels", "keys", "totals")

    def __init__(self, sign: int) -> None:
        self.sign = sign
        self.levels: dict[int, dict[int, _Order]] = {}
        self.keys: list[int] = []
        self.totals: dict[int, int] = {}

    def best_price(self) -> int | None:
        return self.keys[-1] * self.sign if self.keys else None

    def add(self, order: _Order) -> None:
        px = order.price
        level = self.levels.get(px)
        if level is None:
            level = self.levels[px] = {}
            self.totals[px] = 0
            bisect.insort(self.keys, px * self.sign)
        level[order.order_id] = order
        self.totals[px] += order.leaves

    def remove(self, order: _Order) -> None:
        px = order.price
        level = self.levels[px]
        del level[order.order_id]
        self.totals[px] -= order.leaves
        if not level:
            self._drop_level(px)

    def _drop_level(self, px: int) -> None:
        del self.levels[px]
        del self.totals[px]
        key = px * self.sign
        if self.keys and self.keys[-1] == key:
            self.keys.pop()
        else:
            i = bisect.bisect_left(self.keys, key)
            del self.keys[i]

    def depth(self, n: int) -> list[tuple[int, int]]:
        out = []
        for key in reversed(self.keys[-n:] if n > 0 else []):
            px = key * self.sign
            out.append((px, self.totals[px]))
        return out


class MatchingEngine:
    """Continuous price-time matching for one instrument.

    ``maker_fee`` / ``taker_fee`` are currency per unit of quantity (negative: rebate). ``stp`` is the
    self-trade prevention mode when an order would trade with a resting order of the same ``owner``:
    ``cancel_newest`` (cancel the incoming remainder), ``cancel_oldest`` (cancel the resting order and go
    on), ``cancel_both`` or ``none`` (let them trade).

    Example::

        eng = MatchingEngine(maker_fee=-0.001, taker_fee=0.003)
        eng.submit(1, owner=7, side=Side.SELL, qty=100, price=10_050)
        reports = eng.submit(2, owner=8, side=Side.BUY, qty=40, price=10_060)  # trades 40 @ 10_050
    """

    def __init__(
        self, instrument_id: int = 0, *, maker_fee: float = 0.0, taker_fee: float = 0.0, stp: str = "cancel_newest"
    ) -> None:
        if stp not in STP_MODES:
            raise ConfigError("stp", stp, f"one of {', '.join(STP_MODES)}")
        self.instrument_id = instrument_id
        self.maker_fee = float(maker_fee)
        self.taker_fee = float(taker_fee)
        self.stp = stp
        self._bids = _BookSide(1)
        self._asks = _BookSide(-1)
        self._orders: dict[int, _Order] = {}
        self._next_trade_id = 1
        self.volume = 0  # total traded quantity
        self.trades = 0

    # ------------------------------------------------------------------ queries
    def best_bid(self) -> tuple[int, int] | None:
        """Best bid as (price ticks, total quantity), or None when no bids rest."""
        px = self._bids.best_price()
        return None if px is None else (px, self._bids.totals[px])

    def best_ask(self) -> tuple[int, int] | None:
        """Best ask as (price ticks, total quantity), or None when no asks rest."""
        px = self._asks.best_price()
        return None if px is None else (px, self._asks.totals[px])

    def depth(self, levels: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """Top ``levels`` price levels per side, best first: (bids, asks) of (price ticks, quantity)."""
        return self._bids.depth(levels), self._asks.depth(levels)

    def order(self, order_id: int) -> ExecReport | None:
        """The live state of a resting order as an ACCEPTED-shaped report, or None."""
        o = self._orders.get(order_id)
        if o is None:
            return None
        return _report(_ACCEPTED, o.order_id, o.owner, o.side, o.price, o.qty, o.leaves, o.cum)

    def queue_ahead(self, order_id: int) -> int | None:
        """Quantity resting ahead of ``order_id`` at its price (units), or None if it is not live."""
        o = self._orders.get(order_id)
        if o is None:
            return None
        side = self._bids if o.side == _BUY else self._asks
        ahead = 0
        for other in side.levels[o.price].values():
            if other is o:
                return ahead
            ahead += other.leaves
        return ahead  # pragma: no cover - an order is always in its level

    def __len__(self) -> int:
        return len(self._orders)

    # ------------------------------------------------------------------ order entry
    def submit(
        self,
        order_id: int,
        owner: int,
        side: Side,
        qty: int,
        price: int | None = None,
        ord_type: OrdType = OrdType.LIMIT,
        tif: TimeInForce = TimeInForce.GTC,
        post_only: bool = False,
        ts_ns: int = 0,
    ) -> list[ExecReport]:
        """Enter an order (price in ticks, qty in units); returns reports for it and every order it hit."""
        # enum conversion only when handed plain ints (it is a measurable part of the per-order cost)
        reason = ""
        if type(side) is not Side:
            try:
                side = Side(side)
            except ValueError:
                reason, side = "bad_side", _BUY
        if type(tif) is not TimeInForce:
            try:
                tif = TimeInForce(tif)
            except ValueError:
                reason, tif = reason or "bad_tif", _GTC
        if type(ord_type) is not OrdType:
            try:
                ord_type = OrdType(ord_type)
            except ValueError:
                reason, ord_type = reason or "bad_ord_type", OrdType.LIMIT
        is_market = ord_type == _MARKET
        limit = 0
        if not is_market and price is not None:
            if type(price) is int:  # the common case: no conversion
                limit = price
            else:
                whole = _whole(price)
                if whole is None:
                    reason = reason or "off_tick"
                else:
                    limit = whole
        if type(qty) is not int:
            whole = _whole(qty)
            if whole is None:
                reason, qty = reason or "fractional_qty", 0
            else:
                qty = whole
        if reason:
            pass  # a malformed request: rejected below without touching the book
        elif qty <= 0:
            reason = "bad_qty"
        elif ord_type > _MARKET:
            reason = "unsupported_ord_type"
        elif not is_market and price is None:
            reason = "missing_price"
        elif order_id in self._orders:
            reason = "duplicate_order_id"
        elif is_market and post_only:
            reason = "post_only_market"
        elif post_only and self._crosses(side, limit, is_market):
            reason = "post_only_would_cross"
        elif tif == _FOK and self._fillable(side, limit, is_market, owner, qty) < qty:
            reason = "fok_unfillable"
        if reason:
            return [_report(_REJECTED, order_id, owner, side, limit, qty, 0, 0, reason=reason, ts_ns=ts_ns)]

        order = _Order(order_id, owner, side, limit, qty, tif, post_only)
        reports = [_report(_ACCEPTED, order_id, owner, side, limit, qty, qty, 0, ts_ns=ts_ns)]
        stopped = self._match(order, is_market, reports, ts_ns)
        if order.leaves > 0 and not stopped:
            if is_market:
                reports.append(self._cancel_report(order, "no_liquidity", ts_ns))
            elif tif in (_IOC, _FOK):
                reports.append(self._cancel_report(order, "ioc_remainder", ts_ns))
            else:
                self._rest(order)
        return reports

    def cancel(self, order_id: int, ts_ns: int = 0) -> list[ExecReport]:
        """Cancel a resting order; ``REJECTED`` with reason ``unknown_order`` when it is not live."""
        o = self._orders.get(order_id)
        if o is None:
            return [self._unknown(order_id, ts_ns)]
        self._unrest(o)
        return [self._cancel_report(o, "canceled", ts_ns)]

    def replace(self, order_id: int, new_qty: int, new_price: int, ts_ns: int = 0) -> list[ExecReport]:
        """Cancel/replace: new total quantity (units, FIX OrderQty) and new limit (ticks).

        Priority is kept only when the price is unchanged and the open quantity does not grow. A new
        price that crosses trades at once (the order is the aggressor); a post-only order that would
        cross is rejected and left as it was.
        """
        o = self._orders.get(order_id)
        if o is None:
            return [self._unknown(order_id, ts_ns)]

        def reject(reason: str) -> list[ExecReport]:
            return [
                _report(_REJECTED, order_id, o.owner, o.side, o.price, o.qty, o.leaves, o.cum,
                           reason=reason, ts_ns=ts_ns)
            ]

        if type(new_price) is not int:
            whole = _whole(new_price)
            if whole is None:
                return reject("off_tick")
            new_price = whole
        if type(new_qty) is not int:
            whole = _whole(new_qty)
            if whole is None:
                return reject("fractional_qty")
            new_qty = whole
        new_leaves = new_qty - o.cum

        if new_qty <= 0:
            return reject("bad_qty")
        if new_leaves <= 0:
            return reject("qty_not_above_filled")
        side = self._bids if o.side == _BUY else self._asks
        if new_price == o.price and new_leaves <= o.leaves:
            # a size decrease at the same price keeps the queue position
            side.totals[o.price] -= o.leaves - new_leaves
            o.leaves, o.qty = new_leaves, new_qty
            return [self._replaced_report(o, ts_ns)]
        if o.post_only and self._crosses(o.side, new_price, False):
            return reject("post_only_would_cross")
        self._unrest(o)
        o.price, o.qty, o.leaves = new_price, new_qty, new_leaves
        reports = [self._replaced_report(o, ts_ns)]
        stopped = self._match(o, False, reports, ts_ns)
        if o.leaves > 0 and not stopped:
            self._rest(o)
        return reports

    def expire_day_orders(self, ts_ns: int = 0) -> list[ExecReport]:
        """End of day: every resting DAY order is ``EXPIRED`` (reason ``end_of_day``)."""
        out = []
        for o in [o for o in self._orders.values() if o.tif == _DAY]:
            self._unrest(o)
            out.append(
                _report(_EXPIRED, o.order_id, o.owner, o.side, o.price, o.qty, 0, o.cum,
                           reason="end_of_day", ts_ns=ts_ns)
            )
        return out

    # ------------------------------------------------------------------ internals
    def _rest(self, o: _Order) -> None:
        self._orders[o.order_id] = o
        (self._bids if o.side == _BUY else self._asks).add(o)

    def _unrest(self, o: _Order) -> None:
        del self._orders[o.order_id]
        (self._bids if o.side == _BUY else self._asks).remove(o)

    def _unknown(self, order_id: int, ts_ns: int) -> ExecReport:
        return _report(_REJECTED, order_id, 0, _BUY, 0, 0, 0, 0, reason="unknown_order", ts_ns=ts_ns)

    @staticmethod
    def _cancel_report(o: _Order, reason: str, ts_ns: int) -> ExecReport:
        return _report(_CANCELED, o.order_id, o.owner, o.side, o.price, o.qty, 0, o.cum,
                          reason=reason, ts_ns=ts_ns)

    @staticmethod
    def _replaced_report(o: _Order, ts_ns: int) -> ExecReport:
        return _report(_REPLACED, o.order_id, o.owner, o.side, o.price, o.qty, o.leaves, o.cum, ts_ns=ts_ns)

    def _crosses(self, side: Side, limit: int, is_market: bool) -> bool:
        opp = self._asks if side == _BUY else self._bids
        best = opp.best_price()
        if best is None:
            return False
        if is_market:
            return True
        return limit >= best if side == _BUY else limit <= best

    def _fillable(self, side: Side, limit: int, is_market: bool, owner: int, want: int) -> int:
        """Quantity the order could fill now, honouring self-trade prevention (stops at ``want``)."""
        opp = self._asks if side == _BUY else self._bids
        got = 0
        for key in reversed(opp.keys):
            px = key * opp.sign
            if not is_market and (px > limit if side == _BUY else px < limit):
                break
            for o in opp.levels[px].values():
                if o.owner == owner and self.stp != "none":
                    if self.stp == "cancel_oldest":
                        continue
                    return got
                got += o.leaves
                if got >= want:
                    return got
        return got

    def _match(self, taker: _Order, is_market: bool, reports: list[ExecReport], ts_ns: int) -> bool:
        """Trade ``taker`` against the opposite side; True when STP canceled the taker's remainder."""
        buy = taker.side == _BUY
        opp = self._asks if buy else self._bids
        while taker.leaves > 0 and opp.keys:
            px = opp.keys[-1] * opp.sign
            if not is_market and (px > taker.price if buy else px < taker.price):
                break
            level = opp.levels[px]
            while taker.leaves > 0 and level:
                maker = next(iter(level.values()))
                if maker.owner == taker.owner and self.stp != "none":
                    if self.stp in ("cancel_oldest", "cancel_both"):
                        self._unrest(maker)
                        reports.append(self._cancel_report(maker, "self_trade", ts_ns))
                    if self.stp in ("cancel_newest", "cancel_both"):
                        taker.leaves = 0
                        reports.append(self._cancel_report(taker, "self_trade", ts_ns))
                        return True
                    if px not in opp.levels:
                        break
                    continue
                q = min(taker.leaves, maker.leaves)
                trade_id = self._next_trade_id
                self._next_trade_id += 1
                self.volume += q
                self.trades += 1
                taker.leaves -= q
                taker.cum += q
                maker.leaves -= q
                maker.cum += q
                opp.totals[px] -= q
                reports.append(
                    _report(_TRADE, taker.order_id, taker.owner, taker.side, px, q, taker.leaves,
                               taker.cum, trade_id, "T", self.taker_fee * q, ts_ns=ts_ns)
                )
                reports.append(
                    _report(_TRADE, maker.order_id, maker.owner, maker.side, px, q, maker.leaves,
                               maker.cum, trade_id, "M", self.maker_fee * q, ts_ns=ts_ns)
                )
                if maker.leaves == 0:
                    del level[maker.order_id]
                    del self._orders[maker.order_id]
            if not level and px in opp.levels:
                opp._drop_level(px)
        return False
