"""Shared-memory rings: order and content across processes, wrap-around, full rings, batches, broadcast to
several consumers, attach by name (from an unrelated process too), wait strategies and the device stager."""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from greekfire.core.errors import ConfigError, DataError
from greekfire.hft.ring import BroadcastRing, DeviceStager, Ring
from greekfire.market.book import EVENT_DTYPE

CTX = mp.get_context("fork")
SRC = Path(__file__).resolve().parents[3] / "src"
N_MILLION = 1_000_000


def _records(start: int, n: int) -> np.ndarray:
    r = np.zeros(n, EVENT_DTYPE)
    seq = np.arange(start, start + n, dtype=np.int64)
    r["order_id"] = seq
    r["price"] = (seq * 2654435761) % 1_000_003  # a value that is not the sequence, for the checksum
    r["kind"] = seq % 7
    return r


def _checksum(recs: np.ndarray) -> int:
    return int((recs["price"].astype(np.int64) * (recs["order_id"] % 1009 + 1)).sum() + recs["kind"].sum())


def _produce(name: str, total: int, out) -> None:  # child process
    ring = Ring.attach(name, EVENT_DTYPE)
    rng = np.random.default_rng(7)
    sent, check = 0, 0
    while sent < total:
        n = int(min(rng.integers(1, 200), total - sent))
        recs = _records(sent, n)
        check += _checksum(recs)
        if n < 4:  # some single publishes between the batches
            for r in recs:
                while not ring.publish(r):
                    pass
        else:
            k = 0
            while k < n:
                k += ring.publish_batch(recs[k:])
        sent += n
    out.send((sent, check, ring.full))
    ring.close()


def test_two_processes_a_million_records_in_order_with_checksum() -> None:
    ring = Ring.create(EVENT_DTYPE, 1 << 12)
    recv, send = CTX.Pipe(duplex=False)
    p = CTX.Process(target=_produce, args=(ring.name, N_MILLION, send))
    p.start()
    try:
        got, check, expect = 0, 0, 0
        while got < N_MILLION:
            assert ring.wait(1, "yield", timeout_s=30) >= 1, f"producer stalled after {got} records"
            view = ring.consume(257)
            seq = view["order_id"]
            assert seq[0] == expect and np.array_equal(seq, np.arange(expect, expect + len(view))), "out of order"
            check += _checksum(view)
            got += len(view)
            expect += len(view)
            ring.release(len(view))
        sent, their_check, _ = recv.recv()
        assert (sent, their_check) == (got, check)
        assert ring.available() == 0 and ring.published() == N_MILLION
    finally:
        p.join(30)
        ring.close()
        ring.unlink()


def test_wrap_around_keeps_every_record() -> None:
    with Ring.create(EVENT_DTYPE, 8) as ring:
        sent = got = 0
        for step in range(200):
            n = 1 + step % 7
            assert ring.publish_batch(_records(sent, n)) == n  # consumed right after: never full
            sent += n
            while ring.available():
                view = ring.consume(100)
                assert len(view) <= 8  # a view never runs past the end of the buffer
                assert np.array_equal(view["order_id"], np.arange(got, got + len(view)))
                got += len(view)
                ring.release(len(view))
        assert got == sent > 8 * 50


def test_full_ring_refuses_and_counts() -> None:
    with Ring.create(EVENT_DTYPE, 4) as ring:
        recs = _records(0, 6)
        assert all(ring.publish(r) for r in recs[:4])
        assert ring.publish(recs[4]) is False
        assert ring.full == 1
        assert ring.publish_batch(recs[4:]) == 0
        assert ring.full == 2
        view = ring.consume(2)
        assert list(view["order_id"]) == [0, 1]
        ring.release(2)
        assert ring.publish_batch(_records(4, 3)) == 2  # a prefix: two slots were free
        assert ring.full == 3
        other = Ring.attach(ring.name, EVENT_DTYPE)  # another process's view of the count (monitoring)
        assert other.refused() == 3 and other.full == 3
        assert other.stats() == {"name": ring.name, "capacity": 4, "published": 6, "refused": 3,
                                 "released": [2], "backlog": 4}
        other.close()
        rest = []
        while ring.available():
            v = ring.consume(4)
            rest += list(v["order_id"])
            ring.release(len(v))
        assert rest == [2, 3, 4, 5]


def test_batches_are_views_in_place_and_tuples_publish() -> None:
    with Ring.create(EVENT_DTYPE, 64) as ring:
        assert ring.publish_batch(_records(0, 40)) == 40
        view = ring.consume(16)
        assert len(view) == 16 and view.dtype == EVENT_DTYPE
        assert np.shares_memory(view, ring._data)  # zero copy: the records in the segment
        assert not view.flags.owndata
        again = ring.consume(16)  # nothing released: the same records
        assert np.array_equal(again["order_id"], view["order_id"])
        ring.release(16)
        assert ring.consume(100)["order_id"][0] == 16
        with pytest.raises(DataError):
            ring.release(25)  # only 24 are there
        ring.release(24)
        assert ring.publish((1, -1, 0, 3, 99, 123, 456, 7, 0, 0, 0))
        rec = ring.consume(1)[0]
        assert (rec["kind"], rec["side"], rec["book"], rec["ts"], rec["order_id"], rec["price"]) == (1, -1, 3, 99, 123, 456)
        with pytest.raises(DataError):
            ring.publish_batch(np.zeros(2, [("a", "i8")]))


def test_any_record_dtype() -> None:
    dt = np.dtype([("x", "f8"), ("n", "i4"), ("tag", "S4")], align=True)
    with Ring.create(dt, 16) as ring:
        recs = np.array([(1.5, 1, b"ab"), (2.5, 2, b"cd"), (3.5, 3, b"ef")], dtype=dt)
        assert ring.publish_batch(recs) == 3
        assert ring.publish(recs[1])
        out = ring.consume(8)
        assert out.tolist() == recs.tolist() + [recs[1].tolist()]


def _broadcast_consumer(name: str, index: int, total: int, out, go) -> None:
    ring = BroadcastRing.attach(name, EVENT_DTYPE, consumer=index)
    if index == 2:
        go.wait(60)  # a slow consumer: it starts once the ring has filled up behind it
    got, check, in_order = 0, 0, True
    while got < total:
        if ring.wait(1, "block", timeout_s=30) < 1:
            break
        view = ring.consume(100)
        in_order &= bool(np.array_equal(view["order_id"], np.arange(got, got + len(view))))
        check += _checksum(view)
        got += len(view)
        ring.release(len(view))
    out.send((index, got, check, in_order))
    ring.close()


def test_broadcast_three_consumers_each_see_everything() -> None:
    total = 100_000
    ring = BroadcastRing.create(EVENT_DTYPE, 256, consumers=3)
    recv, send = CTX.Pipe(duplex=False)
    go = CTX.Event()
    procs = [CTX.Process(target=_broadcast_consumer, args=(ring.name, i, total, send, go)) for i in range(3)]
    for p in procs:
        p.start()
    try:
        sent, check = 0, 0
        while sent < total:
            recs = _records(sent, min(64, total - sent))
            k = ring.publish_batch(recs)
            check += _checksum(recs[:k])
            sent += k
            if k < len(recs) and not go.is_set():
                assert sent == 256  # full: consumer 2 has released nothing, so nothing was overwritten
                go.set()
        results = sorted(recv.recv() for _ in range(3))
        assert results == [(i, total, check, True) for i in range(3)]
        assert go.is_set() and ring.full > 0
        with pytest.raises(ConfigError):
            ring.consume(1)  # the producer's object has no cursor of its own
    finally:
        for p in procs:
            p.join(30)
        ring.close()
        ring.unlink()


def test_broadcast_retired_consumer_stops_holding_the_producer_back() -> None:
    with BroadcastRing.create(EVENT_DTYPE, 8, consumers=2) as ring:
        fast = BroadcastRing.attach(ring.name, EVENT_DTYPE, consumer=0)
        dead = BroadcastRing.attach(ring.name, EVENT_DTYPE, consumer=1)  # reads nothing, then "dies"
        got: list[int] = []

        def drain() -> None:
            while fast.available():
                v = fast.consume(8)
                got.extend(v["order_id"].tolist())
                fast.release(len(v))

        assert ring.publish_batch(_records(0, 8)) == 8
        drain()
        assert ring.publish_batch(_records(8, 1)) == 0  # consumer 1 holds all 8 slots
        assert ring.stats()["backlog"] == 8
        ring.retire(1)
        assert ring.stats()["released"] == [8, None]
        sent = 8
        for _ in range(5):  # laps of the ring with only consumer 0 reading
            sent += ring.publish_batch(_records(sent, 8))
            drain()
        assert sent == 48 and got == list(range(48))
        dead.close()
        back = BroadcastRing.attach(ring.name, EVENT_DTYPE, consumer=1)  # rejoins from the next record
        assert back.available() == 0 and ring.stats()["released"] == [48, 48]
        ring.publish_batch(_records(48, 2))
        assert back.consume(8)["order_id"].tolist() == [48, 49]
        with pytest.raises(ConfigError):
            ring.retire(2)
        back.close()
        fast.close()


def test_attach_by_name_and_its_errors() -> None:
    with Ring.create(EVENT_DTYPE, 16, name=f"gf-test-{time.monotonic_ns()}") as ring:
        ring.publish_batch(_records(0, 3))
        code = (
            "import sys, numpy as np\n"
            "from greekfire.hft.ring import Ring\n"
            "from greekfire.market.book import EVENT_DTYPE\n"
            f"r = Ring.attach({ring.name!r}, EVENT_DTYPE)\n"
            "v = r.consume(10); print(v['order_id'].tolist()); r.release(len(v))\n"
            "r.publish_batch(np.zeros(2, EVENT_DTYPE)); r.close()\n"
        )
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "PYTHONPATH": str(SRC)})
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip() == "[0, 1, 2]"
        # the other process has exited: the segment is still there (only the creator unlinks it)
        again = Ring.attach(ring.name, EVENT_DTYPE)
        assert again.available() == 2 and again.published() == 5
        again.close()
        with pytest.raises(ConfigError, match="dtype"):
            Ring.attach(ring.name, np.dtype([("a", "i8")]))
    with pytest.raises(ConfigError, match="name"):
        Ring.attach(ring.name, EVENT_DTYPE)  # unlinked on leaving the block
    with pytest.raises(ConfigError, match="capacity"):
        Ring.create(EVENT_DTYPE, 12)
    with BroadcastRing.create(EVENT_DTYPE, 8, consumers=2) as b:
        with pytest.raises(ConfigError, match="consumer"):
            BroadcastRing.attach(b.name, EVENT_DTYPE, consumer=2)
        with pytest.raises(ConfigError, match="broadcast ring for 2 consumers"):
            Ring.attach(b.name, EVENT_DTYPE)


def _publish_later(name: str, delay: float, n: int) -> None:
    ring = Ring.attach(name, EVENT_DTYPE)
    time.sleep(delay)
    ring.publish_batch(_records(0, n))
    ring.close()


@pytest.mark.parametrize("strategy", ["busy", "yield", "block"])
def test_wait_strategies(strategy: str) -> None:
    with Ring.create(EVENT_DTYPE, 64) as ring:
        assert ring.wait(1, strategy, timeout_s=0.05) == 0  # timeout on an empty ring
        ring.publish_batch(_records(0, 3))
        assert ring.wait(5, strategy, timeout_s=0.05) == 3  # timeout: what is there
        assert ring.wait(2, strategy, timeout_s=0.0) == 3
        ring.release(len(ring.consume(3)))
        p = CTX.Process(target=_publish_later, args=(ring.name, 0.2, 4))
        p.start()
        try:
            assert ring.wait(4, strategy, timeout_s=60) == 4  # woken by another process's publish
            assert ring.wait(4, strategy) == 4  # no limit
            assert list(ring.consume(4)["order_id"]) == [0, 1, 2, 3]
        finally:
            p.join(30)
        with pytest.raises(ConfigError, match="strategy"):
            ring.wait(1, "spin")


def test_device_stager_moves_a_batch_in_one_copy() -> None:
    import torch

    with Ring.create(EVENT_DTYPE, 64) as ring:
        ring.publish_batch(_records(10, 20))
        batch = ring.consume(20)
        stager = DeviceStager(EVENT_DTYPE, max_n=32, device="cpu")
        t = stager.stage(batch)
        assert t.shape == (20, 64) and t.dtype == torch.uint8 and t.device.type == "cpu"
        cols = t.view(torch.int64)  # 8 int64 words per 64-byte event: order_id is word 2, price word 3
        assert cols[:, 2].tolist() == list(range(10, 30))
        assert cols[:, 3].tolist() == batch["price"].tolist()
        with pytest.raises(DataError):
            stager.stage(np.zeros(33, EVENT_DTYPE))


def test_ring_bench_reports_every_row() -> None:
    from greekfire.hft.ringbench import ring_bench

    res = ring_bench(0.1, latency_rate=2_000)  # what `greekfire hft bench --json` prints, short rows
    assert set(res["throughput"]) == {"ring", "mp_queue", "faster_fifo"}
    for name, tp in res["throughput"].items():
        if "error" in tp:  # a peer that is not installed says why
            assert name == "faster_fifo" and tp["error"]
            continue
        assert tp["single"] > 0 and tp["batch64"] > 0, name
    for name in ("ring_busy", "ring_block", "mp_queue"):
        lat = res["latency_us"][name]
        assert lat["n"] > 0 and 0 < lat["p50_us"] <= lat["p99_us"] <= lat["p999_us"], name
