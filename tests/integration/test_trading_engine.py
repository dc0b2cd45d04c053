"""The engine end to end on simulated venues (in-process exchanges built on the matching engine).

A scripted scenario on two venues from quote to fill to P&L; the kill switch; malformed events and a
failing strategy are counted while the engine goes on.
"""

from __future__ import annotations

import pytest

from greekfire.core.clock import ManualClock
from greekfire.core.metrics import sample_value
from greekfire.core.settings import load_settings
from greekfire.strategies.market_maker import OptionsMarketMaker
from greekfire.trading import OrderStatus, Quote, Side, Strategy, build_engine
from greekfire.trading.build import default_instruments
from greekfire.trading.engine import TradingEngine
from greekfire.trading.model import VenueEvent
from greekfire.trading.simvenue import SimulatedVenue
from greekfire.trading.synthetic import SyntheticMarket

pytestmark = pytest.mark.integration

T0 = 1_800_000_000 * 10**9


def settings():
    return load_settings(overrides={"trading.snapshot_interval_s": 1.0})


def run_for(engine: TradingEngine, clock: ManualClock, ms: int, timer_ms: int = 250) -> None:
    for k in range(ms):
        clock.advance(1_000_000)
        engine.poll_once(clock.now_ns())
        if k % timer_ms == timer_ms - 1:
            engine.on_timer(clock.now_ns())


class BuyThenSell(Strategy):
    """Buys 15 calls when both venues show an ask, then sells them when a bid at 2.80 shows."""

    name = "scripted"

    def __init__(self) -> None:
        super().__init__()
        self.asks: dict[str, float] = {}
        self.bought = self.sold = False
        self.fills: list = []

    def on_quote(self, q: Quote) -> None:
        if q.instrument_id != 2:
            return
        self.asks[q.venue] = q.ask
        if not self.bought and len(self.asks) == 2:
            self.bought = True
            self.submit(2, Side.BUY, 15, self.ctx.ticks(2, 2.50))
        if self.bought and not self.sold and q.bid == 2.80:
            self.sold = True
            self.submit(2, Side.SELL, 15, self.ctx.ticks(2, 2.80))

    def on_fill(self, fill) -> None:
        self.fills.append(fill)


def test_scripted_two_venue_scenario_from_quote_to_fill_to_pnl() -> None:
    clock = ManualClock(T0)
    insts = default_instruments(T0, spot=100.0)
    fair = {i.instrument_id: 2.5 for i in insts}
    a = SimulatedVenue("A", insts, fair.get, latency_us=100, jitter_us=0, taker_fee=0.50, maker_fee=-0.1, flow_rate_hz=0)
    b = SimulatedVenue("B", insts, fair.get, latency_us=300, jitter_us=0, taker_fee=0.30, maker_fee=-0.1, flow_rate_hz=0)
    strat = BuyThenSell()
    eng = build_engine(settings(), instruments=insts, venues=[a, b], strategies=[strat], store=False, clock_ns=clock.now_ns)
    updates: list[dict] = []
    eng.bus.subscribe("portfolio", updates.append)
    eng.start()
    a.add_liquidity(1, Side.SELL, 100, 100.02, T0)
    a.add_liquidity(1, Side.BUY, 100, 99.98, T0)
    a.add_liquidity(2, Side.SELL, 10, 2.50, T0)
    b.add_liquidity(2, Side.SELL, 10, 2.50, T0)
    a.add_liquidity(2, Side.BUY, 10, 2.30, T0)
    run_for(eng, clock, 5)
    # the router swept: the cheaper venue B (taker 0.30) first for its 10, then 5 at A
    kids = [o for o in eng.oms.orders.values() if o.parent_id]
    assert sorted((o.venue, o.qty) for o in kids) == [("A", 5), ("B", 10)]
    assert all(o.status == OrderStatus.FILLED for o in kids)
    pos = eng.portfolio.positions[2]
    assert pos.qty == 15 and pos.avg_cost == pytest.approx(2.50)
    # the portfolio (positions, Greeks from quant) was published on the bus after the fills
    assert updates[-1]["positions"] == {2: 15} and updates[-1]["greeks"]["GFX"][0] > 0
    assert eng.portfolio.cash == pytest.approx(1_000_000 - 15 * 250.0 - 10 * 0.30 - 5 * 0.50)
    # the market moves up: a bid at 2.80 appears on B, we sell into it
    b.add_liquidity(2, Side.SELL, 20, 2.90, clock.now_ns())
    b.add_liquidity(2, Side.BUY, 20, 2.80, clock.now_ns())
    run_for(eng, clock, 5)
    assert eng.risk.denials == {}
    assert eng.portfolio.positions[2].qty == 0
    pnl = eng.portfolio.pnl()
    assert pnl["realized"] == pytest.approx(15 * 100 * 0.30)
    assert pnl["fees"] == pytest.approx(3.0 + 2.5 + 15 * 0.30)
    assert pnl["total"] == pytest.approx(450.0 - 10.0)
    assert eng.portfolio.equity() - 1_000_000 == pytest.approx(pnl["total"])
    assert len(strat.fills) == 3 and eng.fill_count == 3
    # Greeks were revalued: flat book, so zero delta; the latency of the internal path was measured
    assert eng.portfolio.totals["GFX"][0] == pytest.approx(0.0, abs=1e-9)
    assert eng.latency_us()["count"] >= 2
    summary = eng.summary()
    assert summary["fills"] == 3 and summary["errors"]["malformed_events"] == 0
    # every transition is in the audit log in order
    first = kids[0].client_id
    assert [e[4]["new"] for e in eng.audit.entries(ref=first)][:2] == ["SUBMITTED", "ACCEPTED"]


def paper_engine(clock: ManualClock, flow: float = 1500.0) -> tuple[TradingEngine, OptionsMarketMaker]:
    insts = default_instruments(T0)
    market = SyntheticMarket(insts, seed=3, now_ns=T0)
    venues = []
    for k in range(2):
        v = SimulatedVenue(f"SIM{k + 1}", insts, market.fair_value, latency_us=150 * (k + 1), jitter_us=50,
                           flow_rate_hz=flow, seed=11 + k)
        v.seed_books(now_ns=T0)
        venues.append(v)
    mm = OptionsMarketMaker(half_width_ticks=2)
    eng = build_engine(settings(), instruments=insts, venues=venues, strategies=[mm], store=False,
                       clock_ns=clock.now_ns, market=market)
    return eng, mm


def test_kill_switch_cancels_every_open_order_and_blocks_new_ones() -> None:
    clock = ManualClock(T0)
    eng, mm = paper_engine(clock)
    eng.start()
    run_for(eng, clock, 300)
    open_before = eng.oms.open_orders()
    assert len(open_before) >= 10
    eng.kill("test")
    assert all(o.status in (OrderStatus.PENDING_CANCEL, OrderStatus.CANCELED) or not o.is_open for o in open_before)
    run_for(eng, clock, 20)
    assert eng.oms.open_orders() == []
    assert all(o.status in (OrderStatus.CANCELED, OrderStatus.FILLED) for o in open_before)
    sent = mm.submit(2, Side.BUY, 1, 100)
    assert sent[0].status == OrderStatus.DENIED and sent[0].reason == "KILL_SWITCH"
    assert eng.audit.entries(kind="risk", ref="kill_switch")[0][4]["canceled"] == len(open_before)
    eng.reset_kill()
    run_for(eng, clock, 300)
    assert eng.oms.open_orders(), "quoting resumes after the reset"


class Fragile(Strategy):
    name = "fragile"

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0

    def on_quote(self, q: Quote) -> None:
        self.seen += 1
        if self.seen % 3 == 0:
            raise ValueError("strategy bug")


def test_malformed_events_and_a_failing_strategy_are_counted_and_the_engine_goes_on() -> None:
    clock = ManualClock(T0)
    eng, _mm = paper_engine(clock, flow=300.0)
    fragile = Fragile()
    eng.add_strategy(fragile)
    eng.start()
    before = sample_value("greekfire_trading_malformed_events_total", {"topic": "market"}) or 0.0
    bad = [
        Quote(999, 1.0, 1.1, 1, 1, T0, "SIM1"),  # unknown instrument
        Quote(2, 2.0, 1.0, 1, 1, T0, "SIM1"),  # crossed
        Quote(2, -1.0, 1.0, 1, 1, T0, "SIM1"),  # negative price
        "garbage",
    ]
    eng.process(bad)
    eng.on_venue_event(VenueEvent("bogus", "SIM1", "no-such-order"))
    assert eng.malformed == 4 and eng.unknown_events == 1
    assert (sample_value("greekfire_trading_malformed_events_total", {"topic": "market"}) or 0) - before == 4
    run_for(eng, clock, 300)
    assert fragile.seen > 10 and eng.bus.errors["strategy:fragile"] == fragile.seen // 3
    assert eng.oms.open_orders(), "the market maker kept quoting"
    s = eng.summary()
    assert s["errors"]["malformed_events"] == 4 and s["errors"]["strategy_exceptions"]["strategy:fragile"] >= 3
