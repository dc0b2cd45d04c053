"""Portfolio: average cost, realized/unrealized P&L, cash, and incrementally kept Greeks; the bus."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import torch

from greekfire.quant import bsm_greeks
from greekfire.trading.bus import MessageBus
from greekfire.trading.model import Fill, Instrument, InstrumentKind, Side, option
from greekfire.trading.portfolio import SMALL_CHAIN, Portfolio

NOW = 1_800_000_000 * 10**9
EXP = datetime.fromtimestamp(NOW / 1e9, UTC) + timedelta(days=60)


def fill(fid: str, iid: int, side: Side, qty: int, px: float, fee: float = 0.0) -> Fill:
    return Fill(fid, "c", iid, side, qty, px, fee)


def test_average_cost_realized_unrealized_and_cash() -> None:
    pf = Portfolio(10_000.0)
    pf.add_instrument(Instrument(1, "ABC", InstrumentKind.EQUITY))
    pf.apply_fill(fill("1", 1, Side.BUY, 10, 100.0, fee=1.0))
    pf.apply_fill(fill("2", 1, Side.BUY, 10, 110.0))
    assert pf.positions[1].avg_cost == pytest.approx(105.0)
    assert pf.apply_fill(fill("3", 1, Side.SELL, 15, 120.0)) == pytest.approx(15 * 15.0)
    pf.apply_fill(fill("4", 1, Side.SELL, 10, 100.0))  # through zero: short 5 opened at 100
    pos = pf.positions[1]
    assert pos.qty == -5 and pos.avg_cost == pytest.approx(100.0)
    assert pos.realized_pnl == pytest.approx(225.0 + 5 * -5.0)
    pf.mark(1, 90.0)
    pnl = pf.pnl()
    assert pnl["unrealized"] == pytest.approx(50.0) and pnl["fees"] == pytest.approx(1.0)
    assert pf.cash == pytest.approx(10_000 - 1000 - 1 - 1100 + 1800 + 1000)
    assert pf.equity() == pytest.approx(pf.cash - 5 * 90.0)
    assert pf.equity() - 10_000.0 == pytest.approx(pnl["total"])


def test_greeks_are_incremental_and_match_a_full_revaluation() -> None:
    pf = Portfolio(0.0, rate=0.01)
    pf.add_instrument(Instrument(1, "AAA", InstrumentKind.EQUITY))
    pf.add_instrument(Instrument(10, "BBB", InstrumentKind.EQUITY))
    c = option(2, "AAA", 100.0, EXP, "C")
    p = option(3, "AAA", 95.0, EXP, "P")
    q = option(11, "BBB", 50.0, EXP, "C")
    for inst in (c, p, q):
        pf.add_instrument(inst)
    pf.mark(1, 101.0)
    pf.mark(10, 49.0)
    assert sorted(pf.revalue(NOW)) == ["AAA", "BBB"]
    pf.apply_fill(fill("a", 2, Side.BUY, 3, 4.0))
    pf.apply_fill(fill("b", 3, Side.SELL, 2, 2.0))
    pf.apply_fill(fill("c", 1, Side.SELL, 100, 101.0))
    pf.apply_fill(fill("d", 11, Side.BUY, 1, 2.0))
    incremental = [list(pf.totals["AAA"]), list(pf.totals["BBB"])]
    pf.mark(1, 101.0)  # only AAA moves
    assert pf.revalue(NOW) == ["AAA"]
    assert pf.totals["AAA"] == pytest.approx(incremental[0]) and pf.totals["BBB"] == pytest.approx(incremental[1])
    ttm = torch.tensor([c.ttm(NOW), p.ttm(NOW)], dtype=torch.float64)
    g = bsm_greeks(torch.tensor([1.0, -1.0], dtype=torch.float64), 101.0, ttm.new_tensor([100.0, 95.0]), ttm, 0.01, 0.0, 0.20)
    want_delta = 300 * g["delta"][0].item() - 200 * g["delta"][1].item() - 100
    assert pf.totals["AAA"][0] == pytest.approx(want_delta, rel=1e-9)
    assert pf.totals["AAA"][2] == pytest.approx(300 * g["vega"][0].item() - 200 * g["vega"][1].item(), rel=1e-9)
    under, after = pf.greeks_after(2, -3)  # what-if: selling the calls back
    assert under == "AAA" and after[0] == pytest.approx(want_delta - 300 * g["delta"][0].item())


def test_small_and_large_chains_revalue_to_the_same_greeks() -> None:
    def chain(n: int) -> Portfolio:
        pf = Portfolio(0.0, rate=0.02, div_yield=0.01)
        pf.add_instrument(Instrument(1, "AAA", InstrumentKind.EQUITY))
        for j in range(n):
            pf.add_instrument(option(2 + j, "AAA", 80.0 + j, EXP, "C" if j % 2 else "P"))
            pf.set_vol(2 + j, 0.15 + 0.01 * (j % 7))
        pf.mark(1, 100.0)
        pf.revalue(NOW)
        return pf
    small, large = chain(SMALL_CHAIN), chain(SMALL_CHAIN + 1)  # closed form / one tensor call
    for iid in range(2, 2 + SMALL_CHAIN):
        assert small.unit[iid] == pytest.approx(large.unit[iid], rel=1e-9, abs=1e-12)
    assert small.unit[2][0] < 0 < small.unit[3][0] and small.unit[2][2] > 0  # a put, a call, positive vega


def test_bus_isolates_a_failing_handler_and_matches_prefixes() -> None:
    bus = MessageBus()
    got: list[tuple[str, object]] = []

    def boom(msg: object) -> None:
        raise RuntimeError("strategy bug")

    bus.subscribe("quotes.*", boom, owner="bad")
    bus.subscribe("quotes.*", lambda m: got.append(("prefix", m)), owner="good")
    bus.subscribe("quotes.ABC", lambda m: got.append(("exact", m)))
    bus.publish("quotes.ABC", 1)
    bus.publish("trades.ABC", 2)
    assert got == [("exact", 1), ("prefix", 1)]
    assert bus.errors["bad"] == 1 and bus.has_subscribers("quotes.X") and not bus.has_subscribers("fills")
