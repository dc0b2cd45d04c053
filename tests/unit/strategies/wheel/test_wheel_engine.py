"""The same WheelStrategy on the trading engine: its cycle sends a put sale through risk and the router to a
venue, the fill comes back as an event, and the state machine and the journal follow, as in the backtest."""

from __future__ import annotations

from typing import Any

from wheel_days import D0, SPY, close_ns, day, opt

from greekfire.core.clock import ManualClock
from greekfire.core.settings import load_settings
from greekfire.strategies.wheel.config import WheelConfig
from greekfire.strategies.wheel.journal import MemoryJournal
from greekfire.strategies.wheel.state import WheelState
from greekfire.strategies.wheel.strategy import WheelStrategy
from greekfire.trading import Quote, build_engine
from greekfire.trading.model import VenueEvent, VenueEventKind, VenueOrderState
from greekfire.trading.orders import Order
from greekfire.trading.venues import Venue


class FillingVenue(Venue):
    """Accepts and fills every new order in full at its limit at the next poll."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sent: list[tuple[int, int, int, int]] = []  # (instrument id, side, qty, limit ticks)
        self._out: list[VenueEvent] = []

    def submit(self, order: Order, now_ns: int) -> None:
        self._accept(order, now_ns)
        self._fill(order, order.qty, now_ns)

    def _accept(self, order: Order, now_ns: int) -> None:
        self.sent.append((order.instrument_id, int(order.side), order.qty, order.price_ticks or 0))
        self._out.append(VenueEvent(VenueEventKind.ACCEPTED, self.name, order.client_id, "v1", ts_ns=now_ns))

    def _fill(self, order: Order, qty: int, now_ns: int) -> None:
        """``qty`` of ``order`` filled at its limit (the first fill of the order)."""
        self._out.append(VenueEvent(VenueEventKind.FILL, self.name, order.client_id, "v1", qty=qty,
                                    price_ticks=order.price_ticks or 0, leaves_qty=order.qty - qty, cum_qty=qty,
                                    fill_id=f"f{len(self.sent)}", ts_ns=now_ns, instrument_id=order.instrument_id,
                                    side=int(order.side)))

    def amend(self, order: Order, new_qty: int, new_price_ticks: int, now_ns: int) -> None:
        pass

    def cancel(self, order: Order, now_ns: int) -> None:
        self._out.append(VenueEvent(VenueEventKind.CANCELED, self.name, order.client_id, ts_ns=now_ns))

    def poll(self, now_ns: int) -> list[Any]:
        out, self._out = self._out, []
        return out

    def report(self) -> tuple[list[VenueOrderState], list[VenueEvent]]:
        return [], []


def wheel_on_engine(instruments: list[Any], venues: list[Venue], now: int, overrides: dict[str, Any] | None = None,
                    **config: Any) -> tuple[WheelStrategy, MemoryJournal, Any, ManualClock]:
    """A WheelStrategy on SPY (European, 20-60 days, no open-interest floor, ``config`` on top) on a started
    engine over ``venues``, its clock at ``now``; the settings with ``overrides``."""
    clock = ManualClock(now)
    journal = MemoryJournal()
    cfg = WheelConfig(symbols={"SPY": 1.0}, exercise="european", dte=20, max_dte=60, min_open_interest=0, **config)
    wheel = WheelStrategy(cfg, journal, capital=1_000_000)
    eng = build_engine(load_settings(overrides=overrides), instruments=[SPY, *instruments], venues=venues,
                       strategies=[wheel], store=False, clock_ns=clock.now_ns)
    eng.start()
    return wheel, journal, eng, clock


def quote_v1(eng: Any, ts: int, *legs: tuple[Any, float, float], spy_size: int = 100) -> None:
    """SPY at 99.99 / 100.01 and each ``(option, bid, ask)`` (10 a side) quoted on venue V1 at ``ts``."""
    eng.process([Quote(SPY.instrument_id, 99.99, 100.01, spy_size, spy_size, ts, "V1"),
                 *(Quote(i.instrument_id, bid, ask, 10, 10, ts, "V1") for i, bid, ask in legs)])


def test_the_strategy_runs_unchanged_on_the_engine() -> None:
    put = opt(day(35), 95.0, "P")
    now = close_ns(D0)
    venue = FillingVenue("V1")
    wheel, journal, eng, _ = wheel_on_engine([put], [venue], now, max_contracts=2)
    quote_v1(eng, now, (put, 1.00, 1.10))
    assert put.instrument_id not in wheel.ctx.stats  # no liquidity source here: the minimums let it pass
    wheel.on_timer(now - 3_600 * 10**9)  # 15:00 New York: before the cycle time (15:30)
    assert venue.sent == []
    wheel.on_timer(now)  # 16:00: the first timer at or after the cycle time runs the day's cycle
    assert venue.sent == [(put.instrument_id, -1, 2, 21)]  # 2 contracts (max_contracts) at 1.05 = 21 ticks
    eng.poll_once()
    assert wheel.state["SPY"] == WheelState.SHORT_PUT and wheel.ctx.positions[put.instrument_id] == -2
    assert [t.event for t in journal.transitions] == ["put_sold"]
    assert 200.0 < journal.premium("SPY") <= 210.0  # 2 x 100 x 1.05, less the venue's fees
    assert journal.open_legs("SPY")[0]["premium"] == 1.05
    wheel.on_timer(now + 3_600 * 10**9)  # same New York day: no second cycle
    assert len(venue.sent) == 1
    assert wheel.reconcile() == []


def test_a_sweep_over_two_venues_moves_the_state_once_and_rolls_once() -> None:
    """Orders the router splits into child orders (one per venue): the put sale moves CASH -> SHORT_PUT once,
    when its last child fills, and a roll's buy-back in two children sends the new leg once."""
    old, new = opt(day(35), 95.0, "P"), opt(day(42), 95.0, "P")
    now = close_ns(D0)
    venues: list[Venue] = [FillingVenue("V1"), FillingVenue("V2")]
    # sell at the bid, buy at the ask: takes on both venues
    wheel, journal, eng, clock = wheel_on_engine([old, new], venues, now, max_contracts=2, limit_fraction=0.0)

    def quote(inst: Any, bid: float, ask: float, ts: int) -> list[Quote]:
        return [Quote(inst.instrument_id, bid, ask, 1, 1, ts, v.name) for v in venues]  # one contract a venue

    eng.process(quote(SPY, 99.99, 100.01, now) + quote(old, 1.00, 1.10, now))
    wheel.on_timer(now)
    assert [(v.name, v.sent) for v in venues] == [("V1", [(old.instrument_id, -1, 1, 20)]),
                                                  ("V2", [(old.instrument_id, -1, 1, 20)])]
    eng.poll_once()
    assert wheel.state["SPY"] == WheelState.SHORT_PUT and wheel.ctx.positions[old.instrument_id] == -2
    assert [(t.event, t.data["qty"]) for t in journal.transitions] == [("put_sold", 2)]

    later = close_ns(day(1))  # the put bought back for 0.05 of its 1.00: P&L 95% >= roll_pnl 90%
    clock.advance(later - now)
    eng.process(quote(SPY, 99.99, 100.01, later) + quote(old, 0.04, 0.05, later) + quote(new, 1.00, 1.10, later))
    wheel.on_timer(later)
    buys = [s for v in venues for s in v.sent if s[0] == old.instrument_id and s[1] == 1]
    assert buys == [(old.instrument_id, 1, 1, 1), (old.instrument_id, 1, 1, 1)]  # the buy-back, swept
    eng.poll_once()  # both buy-back children fill: the new leg goes out once (itself swept over both venues)
    eng.poll_once()
    sells = [s for v in venues for s in v.sent if s[0] == new.instrument_id]
    assert sum(s[2] for s in sells) == 2, sells
    assert wheel.ctx.positions.get(old.instrument_id, 0) == 0 and wheel.ctx.positions[new.instrument_id] == -2
    assert [t.event for t in journal.transitions] == ["put_sold", "put_rolled"]
    assert wheel.state["SPY"] == WheelState.SHORT_PUT
    assert wheel.reconcile() == []


def test_a_new_leg_denied_for_its_size_is_sent_again_at_half_the_contracts() -> None:
    """The wheel sizes a put by its cash budget; the engine's risk limits may allow less. A sale denied for
    its size (here MAX_QTY, at most 3 contracts an order) goes out again at once with half the contracts:
    8 denied, 4 denied, 2 sent and filled; the denials stay on the engine's record."""
    put = opt(day(35), 95.0, "P")
    now = close_ns(D0)
    venue = FillingVenue("V1")
    wheel, _, eng, _ = wheel_on_engine([put], [venue], now, {"trading.risk.max_order_qty": 3}, max_contracts=8)
    quote_v1(eng, now, (put, 1.00, 1.10))
    wheel.on_timer(now)
    assert venue.sent == [(put.instrument_id, -1, 2, 21)]
    assert [o.reason for o in eng.oms.orders.values() if o.status.name == "DENIED"] == ["MAX_QTY", "MAX_QTY"]
    assert wheel.denials == []  # the leg went out: nothing left for the next cycle
    eng.poll_once()
    assert wheel.state["SPY"] == WheelState.SHORT_PUT and wheel.ctx.positions[put.instrument_id] == -2


class PartFillingVenue(FillingVenue):
    """Fills one contract of every new order and leaves the rest working until canceled."""

    def submit(self, order: Order, now_ns: int) -> None:
        self._accept(order, now_ns)
        self._fill(order, 1, now_ns)


def test_a_put_sale_partly_filled_then_canceled_at_the_close_moves_the_state_for_what_was_sold() -> None:
    """3 puts offered, 1 sold, the rest canceled at the close (what the paper runner does): the next cycle
    records put_sold for 1 contract at its price, with the put's entry spot (the drawdown stop's reference),
    not a reconcile repair."""
    put = opt(day(35), 95.0, "P")
    now = close_ns(D0)
    venue = PartFillingVenue("V1")
    wheel, journal, eng, clock = wheel_on_engine([put], [venue], now, max_contracts=3)
    quote_v1(eng, now, (put, 1.00, 1.10))
    wheel.on_timer(now)
    eng.poll_once()
    assert venue.sent == [(put.instrument_id, -1, 3, 21)] and wheel.ctx.positions[put.instrument_id] == -1
    assert wheel.state["SPY"] == WheelState.CASH  # still working: the state waits for the order to end
    eng.cancel_all(wheel.name)  # the session closes
    eng.poll_once()
    later = close_ns(day(1))
    clock.advance(later - now)
    quote_v1(eng, later, (put, 1.00, 1.10))
    wheel.on_timer(later)
    assert [(t.event, t.data["qty"], t.data["price"]) for t in journal.transitions] == [("put_sold", 1, 1.05)]
    assert "1 of 3 filled" in journal.transitions[0].reason
    assert wheel.state["SPY"] == WheelState.SHORT_PUT and wheel.entry_spot["SPY"] == 100.0
    assert wheel.reconcile() == []


class SellsNothingVenue(FillingVenue):
    """Fills every order in full, until ``buyers`` is False: then sell orders rest unfilled until canceled."""

    buyers = True

    def submit(self, order: Order, now_ns: int) -> None:
        self._accept(order, now_ns)
        if self.buyers or int(order.side) > 0:
            self._fill(order, order.qty, now_ns)


def test_a_roll_whose_new_leg_ends_unfilled_closes_the_leg() -> None:
    """The old put bought back, the new one offered and canceled unfilled at the close: put_closed, with the
    roll's reason, not a reconcile repair."""
    old, new = opt(day(35), 95.0, "P"), opt(day(42), 95.0, "P")
    now = close_ns(D0)
    venue = SellsNothingVenue("V1")
    wheel, journal, eng, clock = wheel_on_engine([old, new], [venue], now, max_contracts=2, limit_fraction=0.0)
    quote_v1(eng, now, (old, 1.00, 1.10), spy_size=10)
    wheel.on_timer(now)
    eng.poll_once()
    assert wheel.state["SPY"] == WheelState.SHORT_PUT
    venue.buyers = False  # from now on, nobody buys our puts
    later = close_ns(day(1))
    clock.advance(later - now)
    quote_v1(eng, later, (old, 0.04, 0.05), (new, 1.00, 1.10), spy_size=10)
    wheel.on_timer(later)  # P&L 95% >= 90%: roll; the buy-back fills, the new leg rests
    eng.poll_once()
    eng.poll_once()
    assert wheel.ctx.positions.get(old.instrument_id, 0) == 0 and not wheel.ctx.positions.get(new.instrument_id)
    assert [s for s in venue.sent if s[0] == new.instrument_id and s[1] < 0]  # the new leg went out
    eng.cancel_all(wheel.name)  # the session closes
    eng.poll_once()
    assert wheel.reconcile() == []
    assert [t.event for t in journal.transitions] == ["put_sold", "put_closed"]
    assert "the new leg ended unfilled" in journal.transitions[-1].reason and wheel.state["SPY"] == WheelState.CASH
