"""The sample market maker is a credible example: in a seeded paper run on simulated time almost nothing it
sends is denied by risk or rejected post-only, every quote posts, and it makes money. Plus the two causes of
the denials and rejections it used to have: a clamp against one venue's book while the order went to another,
and an inventory/Greek skew with no bound."""

from __future__ import annotations

from typing import Any

import pytest
from sink_venue import Sink

from greekfire.core.clock import ManualClock
from greekfire.core.errors import ConfigError
from greekfire.core.settings import load_settings
from greekfire.strategies.market_maker import OptionsMarketMaker
from greekfire.trading import Quote, build_engine
from greekfire.trading.build import default_instruments, simulated_venues
from greekfire.trading.model import OrderEvent, VenueEvent, VenueEventKind
from greekfire.trading.synthetic import SyntheticMarket

T0 = 1_800_000_000 * 10**9
POLL_NS = 10_000_000  # one engine poll every 10 ms of simulated time
TIMER_NS = 250_000_000



def test_a_seeded_paper_run_is_almost_never_denied_or_rejected_and_makes_money() -> None:
    settings = load_settings()
    clock = ManualClock(T0)
    insts = default_instruments(T0)
    market = SyntheticMarket(insts, seed=settings.trading.seed, now_ns=T0)
    venues = simulated_venues(settings, insts, market.fair_value)
    mm = OptionsMarketMaker()
    eng = build_engine(settings, instruments=insts, venues=list(venues), strategies=[mm], store=False,
                       clock_ns=clock.now_ns, market=market)
    denied: list[str] = []
    would_cross: list[str] = []  # new orders rejected and amends refused by a venue: post-only, would cross
    eng.bus.subscribe("risk", lambda m: denied.append(m["reason"]) if m.get("event") in ("denied", "amend_denied") else None,
                      "test")
    eng.bus.subscribe("orders", lambda e: would_cross.append(e.client_id)
                      if isinstance(e, OrderEvent) and e.info.get("reason") == "post_only_would_cross" else None, "test")
    eng.start()
    next_timer = T0 + TIMER_NS
    for _ in range(2000):  # 20 s of simulated time
        clock.advance(POLL_NS)
        eng.poll_once()
        if clock.now_ns() >= next_timer:
            eng.on_timer(clock.now_ns())
            next_timer += TIMER_NS
    eng.stop()
    tried = eng.orders_out + len(denied)
    assert eng.orders_out > 2000 and eng.fill_count > 50
    assert len(denied) + len(would_cross) < 0.01 * tried, (denied[:5], len(would_cross), tried)
    # a quote inside every venue's best bid/ask is never marketable anywhere: the router posts it whole
    # (a take or a sweep of a post-only quote is rejected, or leaves child orders the strategy does not track)
    assert set(eng.router.decided) == {"post"}
    assert eng.portfolio.pnl()["total"] > 0


def started(*venues: Sink, **params: Any) -> tuple[Any, OptionsMarketMaker, ManualClock]:
    clock = ManualClock(T0)
    mm = OptionsMarketMaker(**params)
    eng = build_engine(load_settings(), instruments=default_instruments(T0), venues=list(venues), strategies=[mm],
                       store=False, clock_ns=clock.now_ns)
    eng.start()
    eng.process([Quote(1, 99.99, 100.01, 100, 100, T0, venues[0].name)])
    eng.poll_once()  # the first full price, every quote submitted and acknowledged
    return eng, mm, clock


def test_a_bid_stays_below_the_lowest_ask_of_every_venue_whichever_venue_quoted_last() -> None:
    v1, v2 = Sink("V1"), Sink("V2")
    eng, mm, clock = started(v1, v2)
    iid = 6  # the 100 call
    fair = mm.fair[iid]
    low_ask = round(fair - 0.06, 2)  # V2 offers below the bid the strategy wants (fair - 4 ticks)
    eng.process([Quote(iid, round(fair - 0.30, 2), low_ask, 10, 10, clock.now_ns(), "V2")])
    eng.poll_once()
    # V1 then quotes wide: the last quote seen no longer shows V2's low offer, but V2 still has it
    eng.process([Quote(iid, round(fair - 0.50, 2), round(fair + 0.50, 2), 10, 10, clock.now_ns(), "V1")])
    eng.poll_once()
    bid = mm._legs[iid].orders[0]
    assert bid is not None and bid.price_ticks is not None
    # a post-only bid at or above V2's ask is rejected there (prices in ticks: exact)
    assert bid.price_ticks <= eng.instruments[iid].ticks(low_ask) - 1
    assert set(eng.router.decided) == {"post"}


def test_the_skew_never_takes_a_quote_past_fair_value() -> None:
    # a skew of 1.00 a contract: a 5-lot fill would move the reservation 5.00 (500 ticks) uncapped
    v1 = Sink("V1")
    eng, mm, clock = started(v1, inventory_skew=1.0, delta_skew=1e-3, vega_skew=1e-4)
    iid = 6
    order = mm._legs[iid].orders[0]
    assert order is not None and order.price_ticks is not None
    eng.process([VenueEvent(VenueEventKind.FILL, "V1", order.client_id, qty=order.qty, price_ticks=order.price_ticks, leaves_qty=0,
                            cum_qty=order.qty, fill_id="f1", liquidity="M", ts_ns=clock.now_ns())])
    eng.poll_once()
    eng.process([Quote(1, 99.99, 100.01, 100, 100, clock.now_ns(), "V1")])
    eng.poll_once()
    hw = mm.half_width_ticks
    for leg in mm._legs.values():
        fair = mm.fair[leg.iid]
        bid_t, ask_t = leg.live if leg.live is not None else (None, None)
        bid = None if bid_t is None else leg.inst.from_ticks(bid_t)  # the quotes in ticks, compared in currency
        ask = None if ask_t is None else leg.inst.from_ticks(ask_t)
        if bid is not None:
            assert fair - (2 * hw + 1) * leg.tick - 1e-9 <= bid <= fair + 1e-9, (leg.iid, bid, fair)
        if ask is not None:
            assert fair - 1e-9 <= ask <= fair + (2 * hw + 1) * leg.tick + 1e-9, (leg.iid, ask, fair)
    assert mm._legs[iid].live is not None and mm._legs[iid].live[1] is not None  # long: the ask is shown


def test_a_negative_skew_cap_is_refused_naming_the_parameter() -> None:
    with pytest.raises(ConfigError, match="max_skew_ticks"):
        OptionsMarketMaker(max_skew_ticks=-1)
