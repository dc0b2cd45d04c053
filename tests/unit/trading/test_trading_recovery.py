"""Recovery with integer-tick prices: a snapshot stores order prices as ticks, and a snapshot written in the
older format (order prices in currency) still restores, its prices read as ticks, and is written back in
the new format."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from greekfire.core.clock import ManualClock
from greekfire.core.settings import load_settings
from greekfire.trading import OrderStatus, OrderType, Side, build_engine
from greekfire.trading.build import default_instruments
from greekfire.trading.engine import TradingEngine
from greekfire.trading.simvenue import SimulatedVenue
from greekfire.trading.store import SnapshotStore, orders_table

T0 = 1_800_000_000 * 10**9


def stored_orders(store: SnapshotStore) -> dict[str, dict[str, Any]]:
    with store.db.connect() as conn:
        return {r.client_id: r.data for r in conn.execute(select(orders_table))}


def test_a_snapshot_of_the_older_currency_format_restores_as_ticks(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'engine.db'}"
    clock = ManualClock(T0)
    insts = default_instruments(T0)
    venue = SimulatedVenue("A", insts, {i.instrument_id: 2.5 for i in insts}.get, latency_us=100, jitter_us=0,
                           flow_rate_hz=0)
    venue.add_liquidity(1, Side.BUY, 100, 99.99, T0)
    venue.add_liquidity(1, Side.SELL, 100, 100.01, T0)

    def build() -> TradingEngine:
        return build_engine(load_settings(), instruments=insts, venues=[venue], store=SnapshotStore(url, "old"),
                            clock_ns=clock.now_ns, engine_id="old", restore=True)

    first = build()

    def step() -> None:
        for _ in range(3):
            clock.advance(1_000_000)
            first.poll_once(clock.now_ns())

    step()  # the underlying's first quote: a stop needs its reference price
    (bid,) = first.submit(first.new_order(2, Side.BUY, 5, 245, post_only=True))
    (stop,) = first.submit(first.new_order(1, Side.BUY, 3, None, OrderType.STOP, stop_ticks=10150))
    step()
    assert bid.status == OrderStatus.ACCEPTED and stop.status == OrderStatus.ACCEPTED
    first.snapshot()
    rows = stored_orders(first.store)  # type: ignore[arg-type]
    assert (rows[bid.client_id]["price_ticks"], rows[stop.client_id]["stop_ticks"]) == (245, 10150)
    # rewrite the rows as the older format wrote them: prices in currency, under the old keys
    with first.store.db.begin() as conn:  # type: ignore[union-attr]
        for cid, d in rows.items():
            old = {k: v for k, v in d.items() if k not in ("price_ticks", "stop_ticks")}
            old["price"] = None if d["price_ticks"] is None else d["price_ticks"] * 0.01
            old["stop_price"] = None if d["stop_ticks"] is None else d["stop_ticks"] * 0.01
            conn.execute(update(orders_table).where(orders_table.c.client_id == cid).values(data=old))
    first.store.close()  # type: ignore[union-attr]

    second = build()  # restores, then reconciles with the venue, which still has the bid at 245 ticks
    bid2, stop2 = second.oms.orders[bid.client_id], second.oms.orders[stop.client_id]
    assert (bid2.price_ticks, bid2.status, stop2.stop_ticks, stop2.status) == (245, OrderStatus.ACCEPTED, 10150,
                                                                               OrderStatus.ACCEPTED)
    assert type(bid2.price_ticks) is int and type(stop2.stop_ticks) is int
    assert second.audit.entries(kind="reconcile", ref=bid.client_id) == []  # the venue's terms agree exactly
    rows = stored_orders(second.store)  # type: ignore[arg-type]  # restore wrote them back, in ticks
    assert all("price_ticks" in d and "price" not in d for d in rows.values())
    assert (rows[bid.client_id]["price_ticks"], rows[stop.client_id]["stop_ticks"]) == (245, 10150)
    second.store.close()  # type: ignore[union-attr]
