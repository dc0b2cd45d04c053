"""The sample market maker on an underlying move: fair values by their delta-gamma step from the last full
price (close to the pricing core's exact value), and re-quotes sent largest |delta| first."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from sink_venue import Sink

from greekfire.core.clock import ManualClock
from greekfire.core.settings import load_settings
from greekfire.quant import bsm_greeks
from greekfire.strategies.market_maker import OptionsMarketMaker
from greekfire.trading import Quote, build_engine
from greekfire.trading.build import default_instruments

T0 = 1_800_000_000 * 10**9



def test_underlying_move_steps_fair_values_and_requotes_largest_delta_first() -> None:
    clock = ManualClock(T0)
    insts = default_instruments(T0)
    venue = Sink("V1")
    mm = OptionsMarketMaker(half_width_ticks=3)
    eng = build_engine(load_settings(), instruments=insts, venues=[venue], strategies=[mm], store=False,
                       clock_ns=clock.now_ns)
    eng.start()
    eng.process([Quote(1, 99.99, 100.01, 100, 100, T0, "V1")])  # first price: a full re-price after the batch
    eng.poll_once()
    assert mm.reprices == 1 and len(venue.sent) == 20 and {k for k, _, _ in venue.sent} == {"submit"}
    assert all(type(p) is int and p > 0 for _, _, p in venue.sent)  # quotes leave in whole ticks
    venue.sent.clear()

    eng.process([Quote(1, 100.29, 100.31, 100, 100, T0, "V1")])  # +30 bp: below the full re-price threshold
    assert mm.reprices == 1
    opts = [i for i in insts if i.is_option]
    exact = bsm_greeks(torch.tensor([i.right for i in opts], dtype=torch.float64), 100.30,
                       torch.tensor([i.strike for i in opts], dtype=torch.float64),
                       torch.tensor([i.ttm(T0) for i in opts], dtype=torch.float64), mm.rate, 0.0, mm.vol)["value"]
    stepped = [mm.fair[i.instrument_id] for i in opts]
    assert stepped == pytest.approx(exact.tolist(), abs=2e-3)  # second-order step over 0.30 of spot
    # every moved quote is amended, options in order of |delta| at the last full price (largest first)
    amended = [iid for kind, iid, _ in venue.sent if kind == "amend"]
    assert len(amended) >= 10
    firsts = list(dict.fromkeys(amended))
    deltas = [abs(mm._legs[iid].base[2]) for iid in firsts]  # type: ignore[index]
    assert deltas == sorted(deltas, reverse=True)
    assert eng.latency_us(first_only=True)["count"] == 1 and eng.latency_us()["count"] == len(venue.sent)


class MassSink(Sink):
    """A Sink that records each mass quote (one ``amend_many`` call) as one message."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.messages: list[list[int]] = []  # instrument ids of each mass quote

    def amend_many(self, amends: Any, now_ns: int) -> None:
        self.messages.append([o.instrument_id for o, _, _ in amends])
        super().amend_many(amends, now_ns)


def started(venue: Sink) -> tuple[Any, OptionsMarketMaker, ManualClock]:
    clock = ManualClock(T0)
    mm = OptionsMarketMaker(half_width_ticks=3)
    eng = build_engine(load_settings(), instruments=default_instruments(T0), venues=[venue], strategies=[mm],
                       store=False, clock_ns=clock.now_ns)
    eng.start()
    eng.process([Quote(1, 99.99, 100.01, 100, 100, T0, "V1")])
    eng.poll_once()
    eng.process(venue.poll(0))
    venue.sent.clear()
    return eng, mm, clock


def test_an_underlying_move_requotes_the_chain_in_one_mass_quote_timed_as_one() -> None:
    venue = MassSink("V1")
    eng, mm, _ = started(venue)
    eng.reset_latency()
    eng.process([Quote(1, 100.29, 100.31, 100, 100, T0, "V1")])
    amended = [iid for kind, iid, _ in venue.sent if kind == "amend"]
    assert len(amended) >= 10 and venue.messages == [amended]  # one message, in the order of |delta|
    lat = eng.latency
    assert lat.get_total_count() == len(amended)
    assert lat.get_max_value() == pytest.approx(lat.get_min_value(), rel=2e-3)  # all left in the same call


def test_a_denied_requote_is_tried_again_on_the_next_quote_of_that_option() -> None:
    venue = MassSink("V1")
    eng, mm, clock = started(venue)
    eng.risk.set_limits(max_orders_per_s=1)  # the bucket holds one token: the move's other amends are denied
    eng.process([Quote(1, 100.29, 100.31, 100, 100, T0, "V1")])
    amended = [iid for kind, iid, _ in venue.sent if kind == "amend"]
    assert len(amended) == 1 and eng.risk.denials["ORDER_RATE"] >= 9
    chain = [leg.iid for leg in mm._by_delta["GFX"]]
    denied = [iid for iid in chain if iid not in amended and mm._legs[iid].want != mm._legs[iid].live]
    assert denied  # the strategy knows those quotes do not show what it wants
    iid = denied[0]
    eng.risk.set_limits(max_orders_per_s=1000)
    clock.advance(1_000_000_000)  # a second: the bucket refills
    venue.sent.clear()
    fair = mm.fair[iid]
    eng.process([Quote(iid, round(fair * 0.5, 2), round(fair * 1.5, 2), 10, 10, clock.now_ns(), "V1")])
    assert [k for k, _, _ in venue.sent] in (["amend"], ["amend", "amend"])
    assert {i for _, i, _ in venue.sent} == {iid} and mm._legs[iid].want == mm._legs[iid].live


def test_a_quote_never_crosses_the_market_it_is_kept_one_tick_inside() -> None:
    venue = MassSink("V1")
    eng, mm, clock = started(venue)
    iid = mm._by_delta["GFX"][0].iid
    leg = mm._legs[iid]
    assert leg.want is not None and leg.want == leg.live
    wb, wa = leg.want
    assert wb is not None and wa is not None
    inst = eng.instruments[iid]
    # the market's ask comes down to our bid (prices on the grid, in currency, as a venue sends them)
    eng.process([Quote(iid, inst.from_ticks(wb - 3), inst.from_ticks(wb), 10, 10, clock.now_ns(), "V1")])
    assert venue.sent == [("amend", iid, wb - 1)]  # the bid steps one tick under that ask, in whole ticks
    venue.sent.clear()
    eng.process(venue.poll(0))
    # and the market's bid comes up to our ask: the ask steps one tick over it, the bid goes back to its target
    eng.process([Quote(iid, inst.from_ticks(wa), inst.from_ticks(wa + 3), 10, 10, clock.now_ns(), "V1")])
    assert sorted(venue.sent) == [("amend", iid, wb), ("amend", iid, wa + 1)]
    venue.sent.clear()
    eng.process(venue.poll(0))
    # a market clear of both targets: the ask goes back to its target too
    eng.process([Quote(iid, inst.from_ticks(wb - 1), inst.from_ticks(wa + 1), 10, 10, clock.now_ns(), "V1")])
    assert venue.sent == [("amend", iid, wa)] and leg.live == leg.want == (wb, wa)
