"""The wheel's daily backtest harness: the same :class:`~.strategy.WheelStrategy` the engine runs, on a
:class:`BacktestContext` that plays the day's model market.

Each day of the :class:`~.market.DailyMarket`, at the close:

1. dividends going ex today are paid on the shares held (cash per share x shares);
2. options expiring today settle: in the money by at least ``ITM_EPS`` exercised (shares and cash move at
   the strike), otherwise expired; the strategy hears each through ``on_settlement``;
3. the strategy's ``cycle`` runs; its limit orders fill against the day's quotes: a sell when its limit
   <= bid + ``fill_fraction`` x spread, a buy when its limit >= ask - ``fill_fraction`` x spread, at the
   limit; commissions and fees per contract from the market's model; fills reach ``on_fill`` after the
   hook that sent them returns (as on the engine), and the orders those fills trigger (a roll's new leg)
   fill in turn;
4. early assignment (American exercise only: European where the market says so, such as SPX, see
   :func:`exercise_styles`): a short call in the money whose underlying goes ex-dividend the next trading
   day by more than the call's time value (mid - intrinsic), and a short put in the money whose time value
   is gone (<= ``PUT_TIME_VALUE_EPS``), are assigned at today's close;
5. unfilled day orders are canceled; the account is marked at the mids (intrinsic where no quote) and the
   day's equity, cash, premium and positions are recorded (and snapshot to the journal).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import numpy as np
import pandas as pd

from greekfire.strategies.wheel.config import WheelConfig
from greekfire.strategies.wheel.journal import Journal, MemoryJournal
from greekfire.strategies.wheel.market import DailyMarket, MarketDay
from greekfire.strategies.wheel.state import Transition
from greekfire.strategies.wheel.strategy import WheelStrategy
from greekfire.trading.strategy import (
    Denial,
    Fill,
    GreekRow,
    Instrument,
    InstrumentStats,
    OrderStatus,
    OrderType,
    PositionView,
    Quote,
    Reason,
    Settlement,
    SettlementKind,
    Side,
    StrategyContext,
    TimeInForce,
    TradingState,
)

ITM_EPS = 0.01  # currency per share: an option this far in the money or more is exercised at expiry
PUT_TIME_VALUE_EPS = 0.025  # currency per share: a put's time value at or under this is "gone"


@dataclass
class _BtOrder:
    """An order as the strategy reads it (the OrderView protocol)."""

    client_id: str
    instrument_id: int
    strategy_id: str
    side: Side
    qty: int
    price_ticks: int | None
    stop_ticks: int | None = None
    ord_type: OrderType = OrderType.LIMIT
    tif: TimeInForce = TimeInForce.DAY
    status: OrderStatus = OrderStatus.ACCEPTED
    filled_qty: int = 0
    avg_px: float = 0.0
    venue: str = "backtest"
    reason: str = ""

    @property
    def leaves_qty(self) -> int:
        return 0 if not self.is_open else self.qty - self.filled_qty

    @property
    def is_open(self) -> bool:
        return self.status in (OrderStatus.ACCEPTED, OrderStatus.PARTIALLY_FILLED)


class _Overlay(Mapping[int, Instrument]):
    """``first`` (held instruments) over ``then`` (the day's listing), iterated in that order; read-only."""

    def __init__(self, first: dict[int, Instrument], then: Mapping[int, Instrument]) -> None:
        self._first, self._then = first, then

    def __getitem__(self, key: int) -> Instrument:
        if key in self._then:
            return self._then[key]
        return self._first[key]

    def __contains__(self, key: object) -> bool:
        return key in self._first or key in self._then

    def __iter__(self) -> Iterator[int]:
        yield from self._first
        yield from (k for k in self._then if k not in self._first)

    def __len__(self) -> int:
        return len(self._first) + sum(1 for k in self._then if k not in self._first)


class _BySymbol(Mapping[str, Instrument]):
    """Symbol -> Instrument: the underlyings and held instruments at once; any other symbol by one scan of
    ``instruments`` on first need (a restart's open legs)."""

    def __init__(self, known: dict[str, Instrument], instruments: Mapping[int, Instrument]) -> None:
        self._known, self._instruments = known, instruments
        self._all: dict[str, Instrument] | None = None

    def _full(self) -> dict[str, Instrument]:
        if self._all is None:
            self._all = {i.symbol: i for i in self._instruments.values()}
        return self._all

    def __getitem__(self, key: str) -> Instrument:
        got = self._known.get(key)
        return got if got is not None else self._full()[key]

    def __contains__(self, key: object) -> bool:
        return key in self._known or key in self._full()

    def __iter__(self) -> Iterator[str]:
        return iter(self._full())

    def __len__(self) -> int:
        return len(self._full())


class _Marks(Mapping[int, float]):
    """Instrument id -> mid of its quote (the ask where there is no bid), computed on read."""

    def __init__(self, quotes: Mapping[int, Quote]) -> None:
        self._quotes = quotes

    def __getitem__(self, key: int) -> float:
        q = self._quotes[key]
        return 0.5 * (q.bid + q.ask) if q.bid > 0 else q.ask

    def __contains__(self, key: object) -> bool:
        return key in self._quotes

    def __iter__(self) -> Iterator[int]:
        return iter(self._quotes)

    def __len__(self) -> int:
        return len(self._quotes)


class BacktestContext(StrategyContext):
    """A :class:`StrategyContext` over a daily model market: positions, cash and fills kept here.

    ``fill_fraction``: how far into the spread a limit must reach to fill (0: at the touch, 1: at the far
    side); ``commission`` and ``fee``: currency per option contract; ``starting_cash``: currency."""

    def __init__(self, strategy_id: str = "wheel", *, starting_cash: float = 1_000_000.0, fill_fraction: float = 0.5,
                 commission: float = 0.0, fee: float = 0.0, params: Mapping[str, Any] | None = None) -> None:
        self.strategy_id = strategy_id
        self.params = dict(params or {})
        self.instruments: Mapping[int, Instrument] = {}
        self.known: dict[int, Instrument] = {}  # every instrument traded or settled (for the trade list)
        self.by_symbol: Mapping[str, Instrument] = {}
        self.positions: dict[int, int] = {}
        self.greeks: dict[str, GreekRow] = {}
        self.unit_greeks: dict[int, GreekRow] = {}
        self.spots: dict[str, float] = {}
        self.marks: Mapping[int, float] = {}
        self.quotes: Mapping[int, Quote] = {}
        self.venue_quotes: Mapping[str, Mapping[int, Quote]] = {}  # the one venue: the day's model market
        self.stats: Mapping[int, InstrumentStats] = {}
        self.vols: Mapping[int, float] = {}
        self.cash = float(starting_cash)
        self.starting_cash = float(starting_cash)
        self.fill_fraction = float(fill_fraction)
        self.commission = float(commission)
        self.fee = float(fee)
        self.fees = 0.0
        self.avg_cost: dict[int, float] = {}
        self.orders: dict[str, _BtOrder] = {}
        self._live: dict[str, _BtOrder] = {}  # the orders that may still be open (pruned each day)
        self.fills: list[Fill] = []
        self.settlements: list[Settlement] = []
        self.premium_today = 0.0
        self._events: list[Fill | Settlement] = []
        self._ids = itertools.count(1)
        self._fill_ids = itertools.count(1)
        self._now = 0
        self._after: list[Callable[[], None]] = []
        self._chains: dict[str, dict[str, np.ndarray]] = {}
        self.day: MarketDay | None = None

    # ---------------------------------------------------------------- the day
    def set_day(self, day: MarketDay) -> None:
        """Take the day's market: the instruments listed today (and those held or with an open order), quotes,
        marks, vols, stats. A :class:`DailyMarket` day's records are read lazily from its chain columns (one
        record built per contract actually read); :meth:`option_chain` serves the columns themselves."""
        self.day = day
        self._now = day.now_ns
        held = {iid: self.instruments[iid] for iid in self.positions}  # known until they are gone
        held |= {o.instrument_id: self.instruments[o.instrument_id] for o in self.open_orders()}
        self._chains = {}
        self.spots = dict(day.spots)
        self.premium_today = 0.0
        if day.from_chain:
            listed = day.instrument_map
            self.instruments = _Overlay(held, listed)
            self.by_symbol = _BySymbol({i.symbol: i for i in (*day.underlyings, *held.values())}, self.instruments)
            self.quotes, self.stats, self.vols = day.quotes, day.stats, day.vols
            self.marks = _Marks(self.quotes)
            self.venue_quotes = {"model": self.quotes}
            return
        self.instruments = {**held, **{inst.instrument_id: inst for inst in day.instruments}}
        self.by_symbol = {inst.symbol: inst for inst in self.instruments.values()}
        self.quotes = dict(day.quotes)
        self.venue_quotes = {"model": self.quotes}
        self.stats = dict(day.stats)
        self.vols = dict(day.vols)
        self.marks = {iid: 0.5 * (q.bid + q.ask) if q.bid > 0 else q.ask for iid, q in self.quotes.items()}

    def option_chain(self, underlying: str) -> dict[str, np.ndarray]:
        """The quoted options of ``underlying`` (see :meth:`StrategyContext.option_chain`), straight from the
        day's chain columns when the day has them."""
        day = self.day
        if day is None or not day.from_chain:
            return super().option_chain(underlying)
        got = self._chains.get(underlying)
        if got is None:
            c = day.chain
            si = next((u.instrument_id for u in day.underlyings if u.symbol == underlying), -1)
            sel = c["symbol"] == si
            got = {k: np.asarray(c[k][sel], dtype=np.int64 if k in ("id", "expiry_ns") else np.float64)
                   for k in ("id", "right", "strike", "expiry_ns", "bid", "ask", "open_interest", "volume")}
            got["vol"] = np.asarray(c["vol"][sel], dtype=np.float64)
            for v in got.values():
                v.flags.writeable = False
            self._chains[underlying] = got
        return got

    def mark(self, iid: int) -> float:
        """Mark of one unit (currency per share): the mid, or intrinsic value where there is no quote."""
        m = self.marks.get(iid)
        if m is not None:
            return m
        inst = self.instruments[iid]
        spot = self.spots.get(inst.underlying, 0.0)
        return max(inst.right * (spot - inst.strike), 0.0) if inst.is_option else spot

    def equity(self) -> float:
        """Cash plus every position at its mark (currency)."""
        return self.cash + sum(q * self.mark(i) * self.instruments[i].multiplier for i, q in self.positions.items())

    # ---------------------------------------------------------------- commands
    def submit(
        self, instrument_id: int, side: Side, qty: int, price_ticks: int | None = None,
        ord_type: OrderType = OrderType.LIMIT, tif: TimeInForce = TimeInForce.GTC, *,
        stop_ticks: int | None = None, expire_ns: int = 0, post_only: bool = False, reduce_only: bool = False,
    ) -> list[Any]:
        o = _BtOrder(f"bt-{next(self._ids)}", instrument_id, self.strategy_id, Side(side), int(qty), price_ticks,
                     stop_ticks, ord_type, tif)
        self.orders[o.client_id] = o
        self._live[o.client_id] = o
        inst = self.instruments.get(instrument_id)
        reason = ""
        if inst is None:
            reason = Reason.UNKNOWN_INSTRUMENT.value
        elif not isinstance(qty, int) or qty <= 0:
            reason = Reason.BAD_QTY.value
        elif ord_type == OrderType.LIMIT and (type(price_ticks) is not int or price_ticks <= 0):
            reason = Reason.BAD_TICK.value
        elif instrument_id not in self.quotes:
            reason = Reason.NO_REFERENCE_PRICE.value
        elif inst.is_option and side == Side.SELL and inst.right < 0 and not self._covered_put(inst, qty):
            reason = Reason.INSUFFICIENT_MARGIN.value
        if reason:
            o.status, o.reason = OrderStatus.DENIED, reason
            return [o]
        self._try_fill(o)
        return [o]

    def _covered_put(self, inst: Instrument, qty: int) -> bool:
        """Cash covers every short put's strike plus this one (cash-secured)."""
        need = qty * inst.strike * inst.multiplier
        for iid, q in self.positions.items():
            i = self.instruments[iid]
            if i.is_option and i.right < 0 and q < 0:
                need += -q * i.strike * i.multiplier
        return need <= self.cash + 1e-6

    def _try_fill(self, o: _BtOrder) -> None:
        q = self.quotes.get(o.instrument_id)
        if q is None or not o.is_open:
            return
        inst = self.instruments[o.instrument_id]
        limit = inst.from_ticks(o.price_ticks) if o.price_ticks is not None else (q.ask if o.side > 0 else q.bid)
        spread = max(q.ask - q.bid, 0.0)
        if o.side == Side.SELL:
            ok = q.bid > 0 and limit <= q.bid + self.fill_fraction * spread + 1e-9
        else:
            ok = limit >= q.ask - self.fill_fraction * spread - 1e-9
        if not ok:
            return
        n = o.qty - o.filled_qty
        fee = (self.commission + self.fee) * n if inst.is_option else 0.0
        self._apply(inst, int(o.side) * n, limit, fee)
        o.filled_qty, o.avg_px, o.status = o.qty, limit, OrderStatus.FILLED
        f = Fill(f"btf-{next(self._fill_ids)}", o.client_id, o.instrument_id, o.side, n, limit, fee, "T", "backtest",
                 self._now, self.strategy_id)
        self.fills.append(f)
        self._events.append(f)

    def _apply(self, inst: Instrument, signed: int, price: float, fee: float) -> None:
        iid = inst.instrument_id
        self.known[iid] = inst
        old = self.positions.get(iid, 0)
        new = old + signed
        if old == 0 or (old > 0) == (signed > 0):
            self.avg_cost[iid] = (self.avg_cost.get(iid, 0.0) * abs(old) + price * abs(signed)) / abs(new)
        self.cash -= signed * price * inst.multiplier + fee
        self.fees += fee
        if inst.is_option:
            self.premium_today += -signed * price * inst.multiplier
        if new:
            self.positions[iid] = new
        else:
            self.positions.pop(iid, None)
            self.avg_cost.pop(iid, None)

    def amend(self, order: Any, qty: int, price_ticks: int) -> Denial | None:
        o = self.orders.get(order if isinstance(order, str) else order.client_id)
        if o is not None and o.is_open:
            o.qty, o.price_ticks = qty, price_ticks
            self._try_fill(o)
        return None

    def amend_many(self, changes: Sequence[tuple[Any, int, int]]) -> list[Denial | None]:
        return [self.amend(o, q, p) for o, q, p in changes]

    def cancel(self, order: Any) -> bool:
        o = self.orders.get(order if isinstance(order, str) else order.client_id)
        if o is None or not o.is_open:
            return False
        o.status = OrderStatus.CANCELED
        return True

    def cancel_all(self, instrument_id: int | None = None) -> int:
        return sum(self.cancel(o) for o in self.open_orders(instrument_id))

    def set_timer(self, delay_s: float, fn: Callable[[int], None], *, repeat: bool = False) -> int:
        return 0  # the harness calls the strategy's cycle once a day; no intraday timers

    def cancel_timer(self, timer_id: int) -> bool:
        return False

    def after_batch(self, fn: Callable[[], None]) -> None:
        self._after.append(fn)

    def declare_vol(self, underlying: str, vol: float) -> None:
        return None

    def now_ns(self) -> int:
        return self._now

    def open_orders(self, instrument_id: int | None = None) -> list[Any]:
        return [o for o in self._live.values() if o.is_open and (instrument_id is None or o.instrument_id == instrument_id)]

    def order(self, client_id: str) -> Any:
        return self.orders.get(client_id)

    def position(self, instrument_id: int) -> PositionView:
        q = self.positions.get(instrument_id, 0)
        avg = self.avg_cost.get(instrument_id, 0.0)
        mult = self.instruments[instrument_id].multiplier if instrument_id in self.instruments else 1.0
        return PositionView(instrument_id, q, avg, 0.0, q * (self.mark(instrument_id) - avg) * mult if q else 0.0, 0.0)

    def pnl(self) -> dict[str, float]:
        total = self.equity() - self.starting_cash
        return {"realized": 0.0, "unrealized": total + self.fees, "fees": self.fees, "total": total}

    def vol(self, instrument_id: int) -> float:
        return self.vols.get(instrument_id, math.nan)

    def trading_state(self) -> TradingState:
        return TradingState.ACTIVE

    # ---------------------------------------------------------------- harness side
    def settle(self, inst: Instrument, kind: SettlementKind, reason: str = "", early: bool = False) -> Settlement:
        """Close the account's position in option ``inst`` by expiry or exercise at the strike."""
        iid = inst.instrument_id
        self.known[iid] = inst
        q = self.positions.pop(iid, 0)
        self.avg_cost.pop(iid, None)
        und = self.by_symbol[inst.underlying]
        shares, cash = 0, 0.0
        if kind != SettlementKind.EXPIRED:
            shares = int(round(q * inst.right * inst.multiplier))
            cash = -shares * inst.strike
            self.cash += cash
            new = self.positions.get(und.instrument_id, 0) + shares
            if new:
                self.positions[und.instrument_id] = new
            else:
                self.positions.pop(und.instrument_id, None)
        s = Settlement(iid, kind, q, inst.underlying, und.instrument_id, shares, inst.strike, cash, self._now, early, reason)
        self.settlements.append(s)
        self._events.append(s)
        return s

    def deliver(self, strategy: WheelStrategy) -> None:
        """Hand the strategy its queued fills and settlements (and what they trigger) in order."""
        while self._events or self._after:
            if self._events:
                ev = self._events.pop(0)
                if isinstance(ev, Fill):
                    strategy.on_fill(ev)
                else:
                    strategy.on_settlement(ev)
            else:
                self._after.pop(0)()

    def end_day(self) -> None:
        """Cancel the day orders still open."""
        for o in self.open_orders():
            if o.tif == TimeInForce.DAY:
                o.status = OrderStatus.CANCELED
        self._live = {k: o for k, o in self._live.items() if o.is_open}


@dataclass
class BacktestResult:
    """What a backtest produced: daily ``equity``, ``cash`` and ``premium`` (net option premium taken that
    day, buy-backs subtracted, before fees) as Series by date (currency); ``positions`` (date, symbol,
    shares, short_puts, short_calls); every ``transitions``; ``trades`` (fills and settlements: date, ts_ns,
    symbol, instrument, side, qty, price, fee, kind); the ``config``."""

    equity: pd.Series
    cash: pd.Series
    premium: pd.Series
    positions: pd.DataFrame
    transitions: list[Transition]
    trades: pd.DataFrame
    config: WheelConfig
    denials: list[dict[str, Any]] = field(default_factory=list)


def _settle_expiries(ctx: BacktestContext, day: MarketDay) -> None:
    for iid in list(ctx.positions):
        inst = ctx.instruments[iid]
        if not inst.is_option or inst.expiry_ns > day.now_ns:
            continue
        spot = day.spots.get(inst.underlying, 0.0)
        itm = inst.right * (spot - inst.strike)
        if itm >= ITM_EPS:
            kind = SettlementKind.ASSIGNED if ctx.positions[iid] < 0 else SettlementKind.EXERCISED
            ctx.settle(inst, kind, f"in the money at expiry ({spot:g} vs strike {inst.strike:g})")
        else:
            ctx.settle(inst, SettlementKind.EXPIRED, f"out of the money at expiry ({spot:g} vs strike {inst.strike:g})")


def _early_assign(ctx: BacktestContext, day: MarketDay, nxt: MarketDay | None, american: set[str]) -> None:
    for iid in list(ctx.positions):
        q = ctx.positions[iid]
        inst = ctx.instruments[iid]
        if not inst.is_option or q >= 0 or inst.expiry_ns <= day.now_ns or inst.underlying not in american:
            continue
        spot = day.spots.get(inst.underlying, 0.0)
        intrinsic = inst.right * (spot - inst.strike)
        if intrinsic <= 0 or iid not in ctx.quotes:
            continue
        time_value = ctx.marks[iid] - intrinsic
        if inst.right > 0 and nxt is not None:
            div = nxt.dividends.get(inst.underlying, 0.0)
            if div > 0 and div > time_value:
                ctx.settle(inst, SettlementKind.ASSIGNED, f"deep ITM before ex-dividend {nxt.date}: dividend {div:g} > "
                           f"time value {time_value:.3f}", early=True)
        elif inst.right < 0 and time_value <= PUT_TIME_VALUE_EPS:
            ctx.settle(inst, SettlementKind.ASSIGNED, f"deep ITM put with no time value ({time_value:.3f})", early=True)


def exercise_styles(config: WheelConfig, market: Any) -> tuple[WheelConfig, set[str]]:
    """The exercise style of each symbol's options: European where the market says so (``market.styles``:
    cash-settled index options such as SPX, which no one can exercise early), ``config.exercise``
    otherwise. Returns the config the strategy runs with (``exercise`` set to the symbols' style when they
    all share one, so its deltas match the chain's prices; as given for a mix) and the symbols with
    American exercise (the only ones assigned early)."""
    styles = dict(getattr(market, "styles", None) or {})
    per = {s: "european" if styles.get(s) == "european" else config.exercise for s in config.symbols}
    used = set(per.values())
    if len(used) == 1 and config.exercise not in used:
        config = config.model_copy(update={"exercise": used.pop()})
    return config, {s for s, st in per.items() if st == "american"}


def run_backtest(
    config: WheelConfig,
    market: DailyMarket,
    journal: Journal | None = None,
    progress: Callable[[int, int], None] | None = None,
    starting_cash: float = 1_000_000,
    *,
    fill_fraction: float | None = None,
) -> BacktestResult:
    """Run the wheel over every day of ``market`` (module doc) from ``starting_cash`` (currency);
    ``progress(done, total)`` after each day; ``fill_fraction`` defaults to the market model's (0.5 when
    it has none)."""
    model = market.model
    ff = fill_fraction if fill_fraction is not None else float(getattr(model, "fill_fraction", 0.5))
    ctx = BacktestContext(starting_cash=starting_cash, fill_fraction=ff,
                          commission=float(getattr(model, "commission_per_contract", 0.0)),
                          fee=float(getattr(model, "fee_per_contract", 0.0)))
    journal = journal if journal is not None else MemoryJournal()
    config, american = exercise_styles(config, market)
    strategy = WheelStrategy(config, journal, capital=starting_cash)
    strategy.ctx = ctx
    n = len(market.dates)
    eq: dict[date, float] = {}
    cash: dict[date, float] = {}
    prem: dict[date, float] = {}
    pos_rows: list[dict[str, Any]] = []
    for i in range(n):
        # today's chain plus every contract held or with an open order (a held strike off today's grid keeps
        # its quote); tomorrow's day only for its dividends (early assignment of calls)
        held = [*ctx.positions, *(o.instrument_id for o in ctx.open_orders())]
        day = market.day(i, extra=held)
        nxt = market.day(i + 1) if american and i + 1 < n else None
        ctx.set_day(day)
        if i == 0:
            strategy.on_start()
        for sym, div in day.dividends.items():  # ex today: paid on the shares held from yesterday
            und = ctx.by_symbol.get(sym)
            if und is not None and ctx.positions.get(und.instrument_id, 0) > 0:
                ctx.cash += ctx.positions[und.instrument_id] * div
        _settle_expiries(ctx, day)
        ctx.deliver(strategy)
        strategy.cycle(day.now_ns)
        ctx.deliver(strategy)
        if american:
            _early_assign(ctx, day, nxt, american)
            ctx.deliver(strategy)
        ctx.end_day()
        eq[day.date], cash[day.date], prem[day.date] = ctx.equity(), ctx.cash, ctx.premium_today
        snap: dict[str, Any] = {}
        for sym in config.symbols:
            row = {"date": day.date, "symbol": sym, "shares": strategy._shares(sym),
                   "short_puts": strategy._short_qty(sym, -1.0), "short_calls": strategy._short_qty(sym, 1.0)}
            pos_rows.append(row)
            snap[sym] = {k: row[k] for k in ("shares", "short_puts", "short_calls")} | {"state": strategy.state[sym].value}
        journal.snapshot(day.date, eq[day.date], ctx.cash, snap)
        if progress is not None:
            progress(i + 1, n)
    trades = [{"date": pd.Timestamp(f.ts_ns, unit="ns", tz="UTC").tz_convert("America/New_York").date(),
               "ts_ns": f.ts_ns, "symbol": ctx.known[f.instrument_id].underlying,
               "instrument": ctx.known[f.instrument_id].symbol, "side": int(f.side), "qty": f.qty,
               "price": f.price, "fee": f.fee, "kind": "fill"} for f in ctx.fills]
    trades += [{"date": pd.Timestamp(s.ts_ns, unit="ns", tz="UTC").tz_convert("America/New_York").date(),
                "ts_ns": s.ts_ns, "symbol": s.underlying, "instrument": ctx.known[s.instrument_id].symbol,
                "side": 1 if s.qty < 0 else -1, "qty": abs(s.qty), "price": s.price, "fee": 0.0,
                "kind": s.kind.value + ("_early" if s.early else "")} for s in ctx.settlements]
    cols = ["date", "ts_ns", "symbol", "instrument", "side", "qty", "price", "fee", "kind"]
    tdf = pd.DataFrame(trades, columns=cols).sort_values("ts_ns", kind="stable").reset_index(drop=True)
    return BacktestResult(
        equity=pd.Series(eq, name="equity", dtype=float), cash=pd.Series(cash, name="cash", dtype=float),
        premium=pd.Series(prem, name="premium", dtype=float),
        positions=pd.DataFrame(pos_rows, columns=["date", "symbol", "shares", "short_puts", "short_calls"]),
        transitions=list(strategy.transitions), trades=tdf, config=config, denials=list(strategy.denials),
    )
