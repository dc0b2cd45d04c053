"""Acceptance: the kill switch, tripped by a signal, by HTTP and by a file while a trading loop runs with orders
resting on the OUCH exchange simulator, cancels every one of them and stops the gateway within one loop
iteration (counted in iterations, not time)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from greekfire.hft.killswitch import KillSwitch, guard_loop
from greekfire.hft.orders import OrderPool
from greekfire.hft.ouch_gateway import OuchGateway
from greekfire.hft.ouch_server import OuchServer
from greekfire.market.matching import Side
from greekfire.trading.orders import OrderStatus

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
N_ORDERS = 8


@pytest.fixture()
def server() -> Iterator[OuchServer]:
    srv = OuchServer("127.0.0.1", 0, symbols=["AAPL", "MSFT"])
    srv.start()
    yield srv
    srv.stop()


def post_kill(port: int) -> dict[str, object]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/kill", data=b"test says stop", method="POST")
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def trip_by(how: str, kill: KillSwitch, tmp_path: Path) -> Callable[[], None]:
    if how == "signal":
        return lambda: os.kill(os.getpid(), signal.SIGUSR1)
    if how == "http":
        assert kill.http_port
        port = kill.http_port
        return lambda: None if post_kill(port)["tripped"] else pytest.fail("POST /kill did not trip")
    return lambda: (tmp_path / "KILL").touch()


@pytest.mark.parametrize("how", ["signal", "http", "file"])
def test_kill_switch_cancels_everything_within_one_iteration(server: OuchServer, tmp_path: Path, how: str) -> None:
    assert threading.current_thread() is threading.main_thread()  # signal handlers live there
    # someone else's order rests too: the kill cancels ours only
    server.rest("MSFT", Side.SELL, 10, 50_000)
    pool = OrderPool(64)
    gw = OuchGateway("127.0.0.1", server.port, pool, symbols=["AAPL", "MSFT"], username="HFT")
    gw.connect()
    kill = KillSwitch(file=tmp_path / "KILL", http_port=0).start()
    try:
        trip = trip_by(how, kill, tmp_path)
        steps: list[int] = []
        tripped_at: list[int] = []
        killed_after: list[int] = []
        sent = 0

        def step() -> None:
            nonlocal sent
            i = len(steps)
            steps.append(i)
            if sent < N_ORDERS:  # a quoting loop: one new resting order per iteration
                s = pool.alloc(sent % 2, 1 if sent % 2 else -1, 5, 20_000 + sent if sent % 2 == 0 else 10_000 - sent)
                gw.enter(s)
                sent += 1
            gw.poll()
            if not tripped_at and all(pool.status(s) is OrderStatus.ACCEPTED for s in range(sent)) and sent == N_ORDERS:
                assert server.open_orders("HFT") == N_ORDERS  # all resting: now pull the switch
                tripped_at.append(i)
                trip()
            time.sleep(0.0005)

        def on_kill() -> None:
            killed_after.append(len(steps))
            gw.cancel_all()
            gw.stop()

        ran = guard_loop(step, kill, on_kill, max_iterations=20_000)
    finally:
        kill.stop()
        if not gw.stopped:
            gw.stop()

    # the step that tripped it was the last one; on_kill ran right after it, once
    assert tripped_at, "the orders never all rested"
    assert ran == tripped_at[0] + 1 and steps[-1] == tripped_at[0] and killed_after == [ran]
    assert kill.tripped and kill.reason.startswith({"signal": "signal SIGUSR1", "http": "http:", "file": "file"}[how])
    # every one of our orders is canceled at the exchange, and the pool knows it; the gateway is stopped
    assert server.open_orders("HFT") == 0 and server.open_orders() == 1
    assert [pool.status(s) for s in range(N_ORDERS)] == [OrderStatus.CANCELED] * N_ORDERS
    assert gw.stopped and not gw.connected


def test_status_endpoint_and_reset(tmp_path: Path) -> None:
    kill = KillSwitch(file=tmp_path / "KILL", http_port=0, signals=()).start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{kill.http_port}/status", timeout=5) as r:
            assert json.loads(r.read())["tripped"] is False
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{kill.http_port}/nope", method="POST"))
        assert e.value.code == 404
        assert not kill.poll()
        (tmp_path / "KILL").touch()
        assert kill.poll() and kill.reason.startswith("file")
        kill.reset()
        assert kill.poll()  # the file is still there
        (tmp_path / "KILL").unlink()
        kill.reset()
        assert not kill.poll()
    finally:
        kill.stop()


def test_signal_outside_the_main_thread_is_reported() -> None:
    out: list[list[str]] = []

    def run() -> None:
        k = KillSwitch().start()
        out.append(k.problems)
        k.stop()

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert out and "SIGUSR1" in out[0][0]


CHILD = r"""
import json, sys, time
from greekfire.hft.killswitch import KillSwitch, guard_loop
from greekfire.hft.orders import OrderPool
from greekfire.hft.ouch_gateway import OuchGateway
from greekfire.hft.ouch_server import OuchServer

srv = OuchServer("127.0.0.1", 0, symbols=["AAPL"])
pool = OrderPool(16)
gw = OuchGateway("127.0.0.1", srv.start(), pool, symbols=["AAPL"], username="HFT")
gw.connect()
for k in range(5):
    gw.enter(pool.alloc(0, 1, 1, 10_000 - k))
kill = KillSwitch().start()
ended_tripped = []  # per step: was the switch tripped when the step ended?
started_after_trip = 0

def step():
    global started_after_trip
    if ended_tripped and ended_tripped[-1]:
        started_after_trip += 1
    gw.poll(0.001)
    if len(ended_tripped) == 50:
        print("READY", flush=True)
    ended_tripped.append(kill.tripped)

def on_kill():
    gw.cancel_all()
    gw.stop()

n = guard_loop(step, kill, on_kill, max_iterations=200_000)
print(json.dumps({"steps": n, "started_after_trip": started_after_trip, "open": srv.open_orders(),
                  "stopped": gw.stopped, "reason": kill.reason,
                  "statuses": [pool.status(s).value for s in range(5)]}), flush=True)
srv.stop()
"""


def test_signal_from_another_process_stops_the_loop_within_one_iteration() -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    with subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True, env=env) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "READY"
            os.kill(proc.pid, signal.SIGUSR1)  # from outside, at any point of the loop
            out = json.loads(proc.stdout.readline())
        finally:
            if proc.wait(30) is None:
                proc.kill()
    assert out["started_after_trip"] == 0  # no step began once a step had ended with the switch tripped
    assert out["reason"] == "signal SIGUSR1" and out["stopped"] and out["open"] == 0
    assert out["statuses"] == ["CANCELED"] * 5
