"""Crash and restart: an engine killed mid-run resumes from its database snapshot (SQLite file and the
PostgreSQL server on loopback) and reconciles with the venues, with no lost and no duplicated fill."""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path

import pytest

from greekfire.core.clock import ManualClock
from greekfire.core.settings import load_settings
from greekfire.strategies.market_maker import OptionsMarketMaker
from greekfire.trading import build_engine
from greekfire.trading.build import default_instruments
from greekfire.trading.engine import TradingEngine
from greekfire.trading.simvenue import SimulatedVenue
from greekfire.trading.store import SnapshotStore
from greekfire.trading.synthetic import SyntheticMarket

pytestmark = pytest.mark.integration

T0 = 1_800_000_000 * 10**9


def run_for(engine: TradingEngine, clock: ManualClock, ms: int) -> None:
    for k in range(ms):
        clock.advance(1_000_000)
        engine.poll_once(clock.now_ns())
        if k % 250 == 249:
            engine.on_timer(clock.now_ns())


def crash_and_restart(url: str) -> None:
    settings = load_settings(overrides={"trading.snapshot_interval_s": 1.0})
    clock = ManualClock(T0)
    insts = default_instruments(T0)
    market = SyntheticMarket(insts, seed=5, now_ns=T0)
    venues = []
    for k in range(2):
        v = SimulatedVenue(f"SIM{k + 1}", insts, market.fair_value, latency_us=200, jitter_us=100,
                           flow_rate_hz=2000.0, seed=21 + k)
        v.seed_books(now_ns=T0)
        venues.append(v)
    engine_id = f"t{uuid.uuid4().hex[:8]}"

    def build(restore: bool) -> TradingEngine:
        store = SnapshotStore(url, engine_id)
        return build_engine(settings, instruments=insts, venues=venues, strategies=[OptionsMarketMaker(half_width_ticks=1)],
                            store=store, clock_ns=clock.now_ns, market=market, engine_id=engine_id, restore=restore)

    first = build(restore=True)  # empty database: nothing to restore, writes the first snapshot
    first.start()
    run_for(first, clock, 2100)  # snapshots at 1 s and 2 s
    saved = set(first.store.fills() and [f["fill_id"] for f in first.store.fills()])
    run_for(first, clock, 600)  # more fills, not snapshotted
    in_memory = {fid for o in first.oms.orders.values() for fid in o.fill_ids}
    assert len(in_memory - saved) > 0, "the crash must lose some fills from the database"
    first.store.close()
    del first  # crash: no stop(), no final snapshot; venue reports for it are still in flight

    second = build(restore=True)
    second.start()
    run_for(second, clock, 1000)
    # the restarted market maker took over its restored quotes: never two working orders on one side
    per_side = Counter((o.instrument_id, o.side) for o in second.oms.open_orders(strategy_id="market_maker"))
    assert per_side and max(per_side.values()) == 1
    second.kill("end of test")  # cancel everything and stop quoting, then let in-flight reports arrive
    run_for(second, clock, 50)
    second.stop()

    venue_fills = [f for v in venues for f in v.report()[1]]
    ours = [f for f in venue_fills if f.client_id.startswith(engine_id + ".")]
    assert len(ours) == len(venue_fills) and len(ours) > 10
    stored = second.store.fills()
    stored_ids = [f["fill_id"] for f in stored]
    assert len(stored_ids) == len(set(stored_ids)), "a fill was stored twice"
    assert set(stored_ids) == {f.fill_id for f in ours}, "a venue fill is missing from the database"
    # positions equal the venue's fills, each counted once
    want: Counter[int] = Counter()
    for f in ours:
        want[f.instrument_id] += f.side * f.qty
    got = {iid: p.qty for iid, p in second.portfolio.positions.items() if p.qty}
    assert got == {k: v for k, v in want.items() if v}
    assert sum(o.filled_qty for o in second.oms.orders.values()) == sum(f.qty for f in ours)
    # fills that arrived twice (in flight at the crash, then recovered by reconciliation) were caught
    assert set(second.oms.fill_problems) <= {"duplicate_fill"}
    assert second.store.audit_count() > 0
    second.store.clear()
    second.store.close()


def test_restart_from_sqlite_loses_and_duplicates_no_fill(tmp_path: Path) -> None:
    crash_and_restart(f"sqlite:///{tmp_path / 'engine.db'}")


def test_restart_from_postgresql_loses_and_duplicates_no_fill(postgres_url: str) -> None:
    crash_and_restart(postgres_url)
