"""``greekfire hft``: the HFT engine -- run the pipeline, replay a file through it, serve a feed, check the
machine, read a running pipeline's status, benchmark.

:data:`hft_app` is registered on the main app by :mod:`greekfire.cli`; each command imports the engine inside
its own function (numba kernels, torch and the rings load only for the command that needs them).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from greekfire.cli_errors import UsageProblem, fail
from greekfire.core.errors import DataError, GreekfireError

hft_app = typer.Typer(help="HFT engine: pipeline over shared-memory rings, multicast feed, doctor, bench.",
                      no_args_is_help=True)


def _cli() -> ModuleType:
    """The main command module (settings, consoles, JSON printer); imported late (it imports this module)."""
    import greekfire.cli

    return greekfire.cli


def _itch_file(path: Path, what: str = "ITCH_FILE") -> Path:
    if not path.is_file():
        raise UsageProblem(f"{what} {str(path)!r}: no such file (give an ITCH 5.0 file, e.g. from "
                           "`greekfire market demo` or Nasdaq's samples)")
    return path


def _overrides(workers: int | None, wait: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if workers is not None:
        out["workers"] = workers
    if wait is not None:
        if wait not in ("busy", "yield", "block"):
            raise UsageProblem(f"--wait {wait!r}: one of busy, yield, block")
        out["wait"] = wait
    return out


def _hft_settings(overrides: dict[str, Any]) -> Any:
    cli = _cli()
    s = cli.settings()
    return s.hft.model_copy(update=overrides) if overrides else s.hft


def print_run(console: Console, out: dict[str, Any]) -> None:
    """The summary of a run: orders by outcome, losses, stage latency."""
    t = Table(title="hft run: orders")
    t.add_column("outcome")
    t.add_column("orders", justify="right")
    for k, v in out["orders"].items():
        t.add_row(k, str(v))
    console.print(t)
    lat = Table(title="stage latency, µs")
    for c in ("stage", "count", "p50", "p99", "p99.9", "max"):
        lat.add_column(c, justify="left" if c == "stage" else "right")
    for stage, q in out["latency_us"].items():
        lat.add_row(stage, str(q.get("count", 0)), *(f"{q[k]:,.1f}" if k in q else "" for k in ("p50", "p99", "p99.9", "max")))
    console.print(lat)
    for loss in out.get("losses", []):
        console.print(f"[yellow]worker{loss['worker']} lost (exit code {loss['exit_code']}): instruments moved to "
                      f"{loss['moved_to']}, replayed after sequence {loss['acked_seq']}[/yellow]")
    if "equal_to_replay" in out:
        ok = out["equal_to_replay"]
        console.print(("[green]" if ok else "[red]") + f"books and fills equal to a single-process replay: {ok}"
                      + ("[/green]" if ok else "[/red]"))


def _run_pipeline(itch: Path, source: str, rate: float, serve: bool, workers: int | None,
                  wait: str | None, timeout: float, check: bool, external_venue: bool = False) -> dict[str, Any]:
    import numpy as np

    from greekfire.hft.pipeline import Pipeline, reference_run

    cfg = _hft_settings(_overrides(workers, wait))
    if cfg.metrics_port is not None:
        from greekfire.hft.metrics import serve as serve_metrics

        bound = serve_metrics(cfg.metrics_port, cfg.metrics_host)
        _cli().err_console.print(f"greekfire hft: metrics on http://{cfg.metrics_host}:{bound}/metrics")
    # a stage that dies or a feed that never ends: one line and exit 1 (the greekfire group)
    venue = (cfg.venue_host, cfg.venue_port) if external_venue and cfg.gateway == "ouch" else None
    result = Pipeline(cfg, itch=itch, source=source, rate=rate, serve=serve, venue=venue).run(timeout_s=timeout)
    out = result.summary()
    if check:
        ref = reference_run(itch, cfg)
        out["equal_to_replay"] = bool(np.array_equal(result.depth, ref.depth) and result.fills() == ref.fills())
    return out


@hft_app.command("replay")
def hft_replay(
    itch_file: Annotated[Path, typer.Argument(help="ITCH 5.0 file (length-framed, plain or gzipped)")],
    rate: Annotated[float, typer.Option("--rate", min=0, help="messages per second (0: as fast as possible)")] = 100_000,
    source: Annotated[str, typer.Option("--source", help="multicast (a feed server on loopback) or file")] = "multicast",
    workers: Annotated[int | None, typer.Option("--workers", min=1, max=64, help="feature workers (default: hft.workers)")] = None,
    wait: Annotated[str | None, typer.Option("--wait", help="busy, yield or block (default: hft.wait)")] = None,
    timeout: Annotated[float, typer.Option("--timeout", min=1, help="seconds before the run is abandoned")] = 600,
    check: Annotated[bool, typer.Option("--check", help="also replay in one process and compare books and fills")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
) -> None:
    """Replay a file through the whole pipeline on this machine: a multicast feed server, the feed handler,
    the book/feature workers, the strategy, the gateway and the exchange simulator."""
    if source not in ("multicast", "file"):
        raise UsageProblem(f"--source {source!r}: one of multicast, file")
    out = _run_pipeline(_itch_file(itch_file), source, rate, True, workers, wait, timeout, check)
    cli = _cli()
    cli.print_json(out) if as_json else print_run(cli.console, out)
    if check and not out["equal_to_replay"]:
        raise typer.Exit(1)


@hft_app.command("run")
def hft_run(
    itch: Annotated[Path, typer.Option("--itch", help="the ITCH file the exchange simulator trades against (the "
                                       "one the feed server replays; hft.gateway sim)")],
    workers: Annotated[int | None, typer.Option("--workers", min=1, max=64, help="feature workers (default: hft.workers)")] = None,
    wait: Annotated[str | None, typer.Option("--wait", help="busy, yield or block (default: hft.wait)")] = None,
    timeout: Annotated[float, typer.Option("--timeout", min=1, help="seconds before the run is abandoned")] = 3600,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
) -> None:
    """Run the pipeline on the feed at hft.feed_group:hft.feed_port (start `greekfire hft feed-server` for it)
    until the feed's session ends, trading with the exchange simulator (hft.gateway sim) or the OUCH venue at
    hft.venue_host:hft.venue_port (ouch); status in hft.status_file, metrics on hft.metrics_port."""
    cfg = _hft_settings(_overrides(workers, wait))
    _cli().err_console.print(f"greekfire hft run: listening to {cfg.feed_group}:{cfg.feed_port} on {cfg.feed_iface}")
    out = _run_pipeline(_itch_file(itch, "--itch"), "multicast", 0.0, False, workers, wait, timeout, False,
                        external_venue=True)
    cli = _cli()
    cli.print_json(out) if as_json else print_run(cli.console, out)


@hft_app.command("feed-server")
def hft_feed_server(
    itch_file: Annotated[Path, typer.Argument(help="ITCH 5.0 file to replay")],
    rate: Annotated[float, typer.Option("--rate", min=0, help="messages per second (0: as fast as possible)")] = 100_000,
    group: Annotated[str | None, typer.Option("--group", help="multicast group (default: hft.feed_group)")] = None,
    port: Annotated[int | None, typer.Option("--port", min=1, max=65535, help="UDP port (default: hft.feed_port)")] = None,
    duration: Annotated[float | None, typer.Option("--duration", min=0.001, help="seconds to serve (default: until Ctrl-C)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the server's counters as JSON at the end")] = False,
) -> None:
    """Replay a file as an ITCH 5.0 / MoldUDP64 multicast feed, answering re-requests on
    hft.rerequest_host:hft.rerequest_port, until --duration or Ctrl-C."""
    from greekfire.hft.feed import serve_feed

    cfg = _hft_settings({})
    path = _itch_file(itch_file)
    err = _cli().err_console

    def log(line: str) -> None:
        err.print(f"greekfire hft feed-server: {line}", soft_wrap=True, highlight=False)

    try:
        out = serve_feed(path, group or cfg.feed_group, port or cfg.feed_port, rate, cfg.rerequest_port, duration,
                         session=cfg.feed_session, iface=cfg.feed_iface, rerequest_host=cfg.rerequest_host, log=log)
    except (GreekfireError, OSError) as exc:
        raise fail("hft feed-server", exc) from None
    if as_json:
        _cli().print_json(out)


@hft_app.command("doctor")
def hft_doctor(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """This machine's settings against the recommended values for low latency, with the fix for each (it
    changes nothing)."""
    from dataclasses import asdict

    from greekfire.hft.doctor import checks

    found = checks()
    cli = _cli()
    if as_json:
        cli.print_json([asdict(c) for c in found])
        return
    t = Table(title="greekfire hft doctor")
    for col in ("check", "value", "recommended", "ok", "fix"):
        t.add_column(col)
    for c in found:
        t.add_row(c.name, str(c.value), str(c.recommended), "[green]ok[/green]" if c.ok else "[yellow]no[/yellow]",
                  "" if c.ok else c.fix)
    cli.console.print(t)


def read_status(path: Path, interval_s: float) -> dict[str, Any]:
    """The status file a running pipeline writes (hft.status_file), with ``stale`` set when it has not been
    updated for three intervals while it says running. DataError when it is absent or unreadable."""
    if not path.is_file():
        raise DataError("hft.status_file", str(path), "no status file: is `greekfire hft run` (or replay) running "
                        "with this hft.status_file?")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError("hft.status_file", str(path), f"not a status file: {exc}") from None
    data["stale"] = data.get("state") == "running" and time.time() - float(data.get("updated", 0)) > 3 * interval_s
    return data


@hft_app.command("status")
def hft_status(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """The running (or last) pipeline: stages, workers, orders, losses, latency (from hft.status_file)."""
    cfg = _hft_settings({})
    try:
        data = read_status(Path(cfg.status_file), cfg.status_interval_s)
    except DataError as exc:
        raise fail("hft status", exc) from None
    cli = _cli()
    if as_json:
        cli.print_json(data)
        return
    state = data["state"] + (" (stale: no update for a while, the pipeline may have died)" if data["stale"] else "")
    cli.console.print(f"pipeline {state}, pid {data.get('pid')}")
    t = Table(title="stages")
    for c in ("stage", "pid", "alive", "messages", "drops", "errors", "stalls"):
        t.add_column(c, justify="left" if c == "stage" else "right")
    for name, st in data.get("stages", {}).items():
        t.add_row(name, *(str(st.get(c, "")) for c in ("pid", "alive", "messages", "drops", "errors", "stalls")))
    cli.console.print(t)
    print_run(cli.console, {"orders": data.get("orders", {}), "latency_us": data.get("latency_us", {}),
                            "losses": data.get("losses", [])})


def _peer_bench(name: str) -> dict[str, Any]:
    """The ring figures (greekfire.hft.ringbench.ring_bench) or the feed figures (feed_bench of
    benchmarks/bench_hft_feed.py, present in a source checkout); ``{"skipped": why}`` where absent."""
    if name == "ring_bench":
        from greekfire.hft.ringbench import ring_bench

        return ring_bench()
    import importlib.util

    import greekfire

    script = Path(greekfire.__file__).resolve().parents[2] / "benchmarks" / "bench_hft_feed.py"
    if not script.is_file():
        return {"skipped": "benchmarks/bench_hft_feed.py is not here (a source checkout has it)"}
    spec = importlib.util.spec_from_file_location("bench_hft_feed", script)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    result: dict[str, Any] = mod.feed_bench()
    return result


@hft_app.command("bench")
def hft_bench(
    messages: Annotated[int, typer.Option("--messages", min=10_000, help="synthetic ITCH messages per run")] = 200_000,
    rates: Annotated[str, typer.Option("--rates", help="feed rates, messages per second, comma-separated")] = "100000,1000000",
    workers: Annotated[int, typer.Option("--workers", min=1, max=64, help="feature workers")] = 1,
    wait: Annotated[str, typer.Option("--wait", help="busy, yield or block")] = "yield",
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Ring and pipeline figures: ring hops (where greekfire.hft.ring has its bench), feed throughput (where
    greekfire.hft.feed has its bench) and tick-to-order latency through the whole pipeline at each rate."""
    from greekfire.hft.pipeline import bench_tick_to_order

    try:
        rate_list = [float(r) for r in rates.split(",") if r.strip()]
    except ValueError:
        raise UsageProblem(f"--rates {rates!r}: numbers separated by commas, e.g. 100000,1000000") from None
    _overrides(None, wait)
    out: dict[str, Any] = {"ring_bench": _peer_bench("ring_bench"), "feed_bench": _peer_bench("feed_bench")}
    cfg = _hft_settings({"workers": workers, "wait": wait})
    out["tick_to_order"] = [bench_tick_to_order(cfg, rate=r, messages=messages) for r in rate_list]
    cli = _cli()
    if as_json:
        cli.print_json(out)
        return
    t = Table(title="tick-to-order latency through the whole pipeline, µs")
    for c in ("rate msgs/s", "achieved msgs/s", "orders", "p50", "p99", "p99.9", "feed drops", "feed gaps", "stalls"):
        t.add_column(c, justify="right")
    for r in out["tick_to_order"]:
        t.add_row(f"{r['rate']:,.0f}", f"{r['achieved_rate']:,.0f}", str(r["orders"]), *(f"{r[k]:,.1f}" for k in ("p50_us", "p99_us", "p99.9_us")),
                  str(r["feed_drops"]), str(r["feed_gaps"]), str(r["stalls"]))
    cli.console.print(t)
    for k in ("ring_bench", "feed_bench"):
        cli.console.print(f"{k}: {json.dumps(out[k], default=str)}")
