"""Trading engine throughput and internal latency (market event in -> risk-checked, routed order out).

The engine is built with ``build_engine`` exactly as in paper trading, with the sample options market
maker and every pre-trade risk check on, but the venues are in-process sinks that acknowledge orders at
once, so what is timed is our path only: bus dispatch, strategy decision, risk checks, routing, OMS
transitions and audit. The event stream is pre-generated: option quotes jittering around fair value (the
market maker re-quotes when its price moves by a tick) and one underlying quote in ``UNDERLYING_EVERY``
(the market maker moves its fair values by their delta-gamma step, re-quotes the chain at once in one mass
quote, and re-prices the chain through ``greekfire.quant`` only after a large move; the portfolio's Greeks
are revalued at the end of that batch, by the closed form for a chain this small). Peer: nautilus_trader's
published claim of 500k events/s (a figure from its documentation, not measured here).

Latency, as measured by the engine itself (``TradingEngine.latency`` / ``latency_first``):

- the clock starts when the engine takes the market event off its batch (``perf_counter_ns`` in
  ``TradingEngine.process``, before validation, marks and bus dispatch); time an event waits behind the
  earlier events of its batch is not counted (that is throughput's share);
- it stops for each order when the venue's ``submit``/``amend``/``amend_many`` call has returned (the
  order is in the venue's hands), after the strategy's decision and the order's risk check; a new order's
  OMS transition and audit entry come before the venue call, an amend's right after it (before any other
  event is handled);
- "every order": one sample per order or amend, all timed from the same event; an underlying quote that
  moves the chain (10 to 20 amends here) sends them in one mass quote, so they share one sample value, the
  whole chain's reaction time; "first order": one sample per event that sent anything;
- work the strategy defers to the batch end (``after_batch``: the full re-price) and the batch-end
  revaluation are not inside any sample; orders those send are not timed as event latency;
- cancels are not timed (they send no new risk).
"""

from __future__ import annotations

import gc
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import report  # noqa: E402
from hdrh.histogram import HdrHistogram  # noqa: E402
from peers import peer_python  # noqa: E402

from greekfire.core.settings import load_settings  # noqa: E402
from greekfire.strategies.market_maker import OptionsMarketMaker  # noqa: E402
from greekfire.trading import build_engine  # noqa: E402
from greekfire.trading.build import default_instruments  # noqa: E402
from greekfire.trading.model import Quote, VenueEvent, VenueEventKind, VenueOrderState  # noqa: E402
from greekfire.trading.orders import Order  # noqa: E402
from greekfire.trading.synthetic import SyntheticMarket  # noqa: E402
from greekfire.trading.venues import Venue  # noqa: E402

NAUTILUS_CLAIM_EVENTS_PER_S = 500_000.0
N_EVENTS = 200_000
BATCH = 100
UNDERLYING_EVERY = 500
_ACCEPTED, _REPLACED = VenueEventKind.ACCEPTED, VenueEventKind.REPLACED


class AckVenue(Venue):
    """Acknowledges every request at the next poll; never fills. Counts what it received.

    A request is only noted (one tuple; a mass quote, one tuple holding its amends) when the engine hands it
    over; the acknowledgement events are built at :meth:`poll`, as a venue would build them on its side, so
    the sink's own work stays off the timed path."""

    def __init__(self, name: str, maker_fee: float, taker_fee: float) -> None:
        self.name = name
        self._fees = (maker_fee, taker_fee)
        # (kind, client id, qty, limit in ticks, time), and for a mass quote its amends as a sixth item
        self._out: list[tuple[Any, ...]] = []
        self.received = 0

    def fees(self) -> tuple[float, float]:
        return self._fees

    def submit(self, order: Order, now_ns: int) -> None:
        self.received += 1
        self._out.append((_ACCEPTED, order.client_id, 0, 0, now_ns))

    def amend(self, order: Order, new_qty: int, new_price_ticks: int, now_ns: int) -> None:
        self.received += 1
        self._out.append((_REPLACED, order.client_id, new_qty, new_price_ticks, now_ns))

    def amend_many(self, amends: Sequence[tuple[Order, int, int]], now_ns: int) -> None:
        # a mass quote is one message: noted as one entry, its acknowledgements built at the poll
        self.received += len(amends)
        self._out.append(("mass", "", 0, 0, now_ns, amends))

    def cancel(self, order: Order, now_ns: int) -> None:
        self.received += 1
        self._out.append((VenueEventKind.CANCELED, order.client_id, 0, 0, now_ns))

    def poll(self, now_ns: int) -> list[Any]:
        out, self._out = self._out, []
        name = self.name
        events = []
        for k, cid, q, p, ts, *mass in out:
            if k == "mass":
                events += [VenueEvent(_REPLACED, name, o.client_id, qty=q2, price_ticks=p2, ts_ns=ts) for o, q2, p2 in mass[0]]
            else:
                events.append(VenueEvent(k, name, cid, qty=q, price_ticks=p, ts_ns=ts))
        return events

    def report(self) -> tuple[list[VenueOrderState], list[VenueEvent]]:
        return [], []


def make_events(n: int, seed: int = 1) -> tuple[list[Quote], Any, Any]:
    now = time.time_ns()
    insts = default_instruments(now)
    market = SyntheticMarket(insts, seed=seed)
    rng = random.Random(seed)
    opts = [i for i in insts if i.is_option]
    und = insts[0]
    spot = 100.0
    events: list[Quote] = []
    for k in range(n):
        if k % UNDERLYING_EVERY == 0:
            spot *= 1.0 + rng.gauss(0.0, 0.0004)
            market.set_spot(spot, now)  # option quotes follow the underlying
            events.append(Quote(und.instrument_id, round(spot - 0.01, 2), round(spot + 0.01, 2), 100, 100, 0,
                                f"V{k % 2 + 1}"))
            continue
        o = opts[rng.randrange(len(opts))]
        fair = market.fair_value(o.instrument_id)
        half = 0.05 + 0.01 * rng.randint(0, 3)
        bid = max(0.01, round(fair - half, 2))
        events.append(Quote(o.instrument_id, bid, round(max(bid + 0.01, fair + half), 2), rng.randint(1, 50),
                            rng.randint(1, 50), 0, f"V{k % 2 + 1}"))
    return events, insts, market


def run(n: int = N_EVENTS, stream: tuple[list[Quote], Any, Any] | None = None) -> dict[str, Any]:
    events, insts, market = stream or make_events(n)
    settings = load_settings(overrides={"trading.risk.max_orders_per_s": 10_000_000})
    venues = [AckVenue("V1", -0.20, 0.50), AckVenue("V2", -0.15, 0.45)]
    mm = OptionsMarketMaker(half_width_ticks=3)
    eng = build_engine(settings, instruments=insts, venues=venues, strategies=[mm], store=False, market=None)
    eng.portfolio.rate = market.rate
    eng.start()
    eng.process(events[:2000])  # warm up: first prices, first quotes on every option
    for v in venues:
        eng.process(v.poll(0))
    eng.reset_latency()
    eng.events = 0
    sent0 = eng.orders_out
    body = events[2000:]
    gc.collect()
    gc.disable()  # a collection inside the timed loop is noise, not our path
    # per batch, wall time and this thread's CPU time: where wall exceeds CPU by a lot, the OS took the
    # core away (the machine is shared), which is what latency tails on a loaded box are made of
    wall_ns, cpu_ns, preempted = time.perf_counter_ns, time.thread_time_ns, 0
    rec = eng.latency_recorder
    raw_all, raw_first = rec.samples, rec.first_samples  # undrained samples (ns), read-only here
    calm_all = HdrHistogram(100, 10_000_000_000, 3)
    calm_first = HdrHistogram(100, 10_000_000_000, 3)
    cpu0 = cpu_ns()
    t0 = time.perf_counter()
    for i in range(0, len(body), BATCH):
        w, c = wall_ns(), cpu_ns()
        na, nf = len(raw_all), len(raw_first)
        eng.process(body[i : i + BATCH])
        for v in venues:
            acks = v.poll(0)
            if acks:
                eng.process(acks)
        if (wall_ns() - w) - (cpu_ns() - c) > 1_000_000:
            preempted += 1
        else:  # the samples of batches that kept the core: our path without the machine's other tenants
            for x in raw_all[na:]:
                calm_all.record_value(max(100, x))
            for x in raw_first[nf:]:
                calm_first.record_value(max(100, x))
    elapsed = time.perf_counter() - t0
    cpu_s = (cpu_ns() - cpu0) / 1e9
    gc.enable()
    lat = eng.latency
    return {
        "market_events": len(body),
        "seconds": elapsed,
        "events_per_s": len(body) / elapsed,
        "events_per_cpu_s": len(body) / cpu_s,
        "batches": (len(body) + BATCH - 1) // BATCH,
        "preempted_batches": preempted,
        "orders_out": eng.orders_out - sent0,
        "p50_us": lat.get_value_at_percentile(50) / 1000.0,
        "p99_us": lat.get_value_at_percentile(99) / 1000.0,
        "p999_us": lat.get_value_at_percentile(99.9) / 1000.0,
        "first": eng.latency_us(first_only=True),
        "calm": {q: calm_all.get_value_at_percentile(p) / 1000.0 for q, p in (("p50", 50), ("p99", 99), ("p99.9", 99.9))},
        "calm_first": {q: calm_first.get_value_at_percentile(p) / 1000.0 for q, p in (("p50", 50), ("p99", 99), ("p99.9", 99.9))},
        "denials": dict(eng.risk.denials),
        "reprices": mm.reprices,
        "errors": dict(eng.bus.errors),
    }


REPEATS = 5


def measure_nautilus() -> dict[str, Any] | None:
    """Run peer_nautilus.py in the peers virtualenv (``make peers``) or the interpreter named by
    GREEKFIRE_BENCH_NAUTILUS_PYTHON (best of REPEATS)."""
    python, why = peer_python("GREEKFIRE_BENCH_NAUTILUS_PYTHON")
    if not python:
        print(f"  nautilus_trader peer not run: {why}")
        return None
    script = Path(__file__).resolve().parent / "peer_nautilus.py"
    best: dict[str, Any] | None = None
    for _ in range(REPEATS):
        proc = subprocess.run([python, str(script), str(N_EVENTS)], capture_output=True, text=True, timeout=600)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            print(f"  nautilus_trader peer run failed: {proc.stderr.strip()[-500:]}")
            return None
        res = dict(kv.split("=", 1) for kv in line.split()[1:])
        if best is None or float(res["events_per_s"]) > float(best["events_per_s"]):
            best = res
    return best


def main() -> int:
    # the machine is shared: run the same stream a few times and keep the fastest run (least disturbed)
    stream = make_events(N_EVENTS)
    runs = [run(stream=stream) for _ in range(REPEATS)]
    r = max(runs, key=lambda x: x["events_per_s"])
    # latency: each run's percentile, then their median over the runs. A run's p99 is about its fourth-slowest
    # chain re-quote (about 400 underlying quotes a run make nearly every sample), so one run's tail is a
    # handful of events; the median of REPEATS runs' tails is steadier than the tail of any one run
    med = statistics.median
    r = {**r, "p50_us": med(x["p50_us"] for x in runs), "p99_us": med(x["p99_us"] for x in runs),
         "p999_us": med(x["p999_us"] for x in runs),
         **{key: {q: med(x[key][q] for x in runs) for q in ("p50", "p99", "p99.9")}
            for key in ("first", "calm", "calm_first")}}
    nt = measure_nautilus()
    rows = [
        {"benchmark": "engine throughput (market events -> routed orders, risk on)", "ours": r["events_per_s"],
         "peer": "nautilus_trader (claim)", "peer_value": NAUTILUS_CLAIM_EVENTS_PER_S, "unit": "events/s",
         "ratio": r["events_per_s"] / NAUTILUS_CLAIM_EVENTS_PER_S, "goal": 200_000},
        *(
            [{"benchmark": "engine throughput vs nautilus_trader measured here (backtest, 1 equity, re-quote "
              "every 40 ticks)", "ours": r["events_per_s"], "peer": f"nautilus_trader {nt['version']} (measured)",
              "peer_value": float(nt["events_per_s"]), "unit": "events/s",
              "ratio": r["events_per_s"] / float(nt["events_per_s"])}]
            if nt else []
        ),
        {"benchmark": "internal latency p50", "ours": r["p50_us"], "peer": "goal", "peer_value": 50.0, "unit": "us",
         "ratio": r["p50_us"] / 50.0},
        {"benchmark": "internal latency p99", "ours": r["p99_us"], "peer": "goal", "peer_value": 50.0, "unit": "us",
         "ratio": r["p99_us"] / 50.0},
        {"benchmark": "internal latency p99.9", "ours": r["p999_us"], "peer": "goal (p99)", "peer_value": 50.0,
         "unit": "us", "ratio": r["p999_us"] / 50.0},
        {"benchmark": "first order of an event p50", "ours": r["first"]["p50"], "peer": "goal", "peer_value": 50.0,
         "unit": "us", "ratio": r["first"]["p50"] / 50.0},
        {"benchmark": "first order of an event p99", "ours": r["first"]["p99"], "peer": "goal", "peer_value": 50.0,
         "unit": "us", "ratio": r["first"]["p99"] / 50.0},
        {"benchmark": "first order of an event p99.9", "ours": r["first"]["p99.9"], "peer": "goal (p99)",
         "peer_value": 50.0, "unit": "us", "ratio": r["first"]["p99.9"] / 50.0},
        *(
            {"benchmark": f"{label} {q}, batches that kept the core", "ours": r[key][q], "peer": "goal",
             "peer_value": 50.0, "unit": "us", "ratio": r[key][q] / 50.0}
            for label, key in (("internal latency", "calm"), ("first order of an event", "calm_first"))
            for q in ("p50", "p99", "p99.9")
        ),
    ]
    notes = [
        f"{r['market_events']:,} market events in {r['seconds']:.2f} s, {r['orders_out']:,} orders/amends out, "
        f"{r['reprices']} full-chain re-prices, denials {r['denials'] or 'none'}, strategy errors {r['errors'] or 'none'}",
        "latency = market event taken off its batch -> order handed to the venue (its venue call returned), "
        "per order; an underlying quote moves the chain's quotes (up to 20 amends) in one mass quote, each "
        "amend timed from that event",
        "first peer figure is nautilus_trader's documented claim; "
        + ("the second was measured in this run with peer_nautilus.py in its own virtualenv (a different "
           "workload: its backtest matching engine, one equity, no options pricing)" if nt else
           "run `make peers` (or set GREEKFIRE_BENCH_NAUTILUS_PYTHON) to measure nautilus_trader beside ours"),
        f"throughput: best of {REPEATS} runs; all runs (events/s): "
        + ", ".join(f"{x['events_per_s']:,.0f}" for x in runs),
        f"latency rows: the median over the {REPEATS} runs of each run's percentile; each run's p50 / p99 (us): "
        + ", ".join(f"{x['p50_us']:.1f} / {x['p99_us']:.1f}" for x in runs),
        f"CPU-time throughput of the best run: {r['events_per_cpu_s']:,.0f} events per CPU-second; "
        f"{r['preempted_batches']} of {r['batches']} batches lost the core for more than 1 ms (wall - CPU time)",
    ]
    report("engine", rows, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
