"""``greekfire wheel run --paper``: the wheel on the trading engine with simulated (or FIX) venues, persisted
in the position database and resumed from it (see docs/wheel.md, "Paper trading").

:func:`run` is the command; :func:`register` adds it to the ``wheel`` sub-app.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from greekfire.cli_errors import UsageProblem, fail, require_file, venues_option
from greekfire.core.errors import ConfigError, ConfigErrors

console = Console()
log = logging.getLogger("greekfire.cli")


def _format(st: dict[str, Any]) -> str:
    states = ", ".join(f"{k} {v}" for k, v in st.get("states", {}).items()) or "-"
    return (f"wheel paper {st['elapsed_s']:.0f}/{st['duration_s']:.0f} s | market {st.get('market_time', '-')} | "
            f"{states} | fills {st['fills']:,} | P&L {st['pnl_total']:,.2f} USD")


def _print(out: dict[str, Any]) -> None:
    w = out["wheel"]
    t = Table(title=f"greekfire wheel run --paper ({w['run_id']})", show_header=False)
    t.add_column("what", style="bold")
    t.add_column("value")
    t.add_row("market time", f"{w['market_start']} -> {w['market_end']}")
    t.add_row("cycles", str(w["cycles"]))
    t.add_row("fills / orders", f"{out['fills']} / {out['orders']}")
    t.add_row("settlements", "\n".join(f"{s['kind']} {s['instrument']} x{s['qty']}" for s in w["settlements"]) or "none")
    t.add_row("states", ", ".join(f"{k}: {v}" for k, v in w["states"].items()) or "-")
    t.add_row("positions", ", ".join(f"{k}: {v}" for k, v in w["positions"].items()) or "flat")
    t.add_row("P&L (USD)", ", ".join(f"{k} {v:,.2f}" for k, v in out["pnl"].items()))
    t.add_row("premium (USD)", f"{w['premium']:,.2f}")
    t.add_row("retries / rejections", f"{len(w['retries'])} / {len(w['rejections'])}")
    t.add_row("database", f"{w['database']} (account {w['account']})")
    console.print(t)


def run(
    paper: Annotated[bool, typer.Option("--paper", help="trade on the engine with simulated venues (the only mode so far)")] = False,
    duration: Annotated[float | None, typer.Option("--duration", help="wall seconds to run (default trading.duration_s)")] = None,
    db: Annotated[str | None, typer.Option("--db", help="position database URL (default sqlite:///.greekfire/wheel.db under the home folder)")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="wheel configuration YAML (default: the settings' wheel section)")] = None,
    venues: Annotated[str | None, typer.Option("--venues", help="simulated venues (1-16), or `fix`: a `greekfire fix exchange` at fix.host:fix.port")] = None,
    account: Annotated[str, typer.Option("--account", help="the account whose positions are traded and resumed")] = "paper",
    time_scale: Annotated[float, typer.Option("--time-scale", help="market seconds per wall second on simulated venues (default: a day in 3 s)")] = 28_800.0,
    fresh: Annotated[bool, typer.Option("--fresh", help="forget the account's positions and history first")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
    metrics_port: Annotated[int | None, typer.Option("--metrics-port", min=0, max=65535, help="serve Prometheus /metrics on 127.0.0.1:PORT while the run lasts (0: a free port)")] = None,
) -> None:
    """Paper-trade the wheel: cycles on the XNYS calendar, expiry and assignment on the engine, every step in
    the position database; run it again to resume."""
    from greekfire import cli
    from greekfire.cli_output import status_line

    if not paper:
        raise UsageProblem("only paper trading is available: run `greekfire wheel run --paper`")
    if duration is not None and not duration > 0:
        raise UsageProblem(f"--duration {duration!r}: must be a positive number of seconds")
    if not time_scale >= 1:
        raise UsageProblem(f"--time-scale {time_scale!r}: market seconds per wall second, >= 1")
    require_file(config, "--config")
    where = venues_option(venues)
    from greekfire.strategies.wheel.config import WheelConfig
    from greekfire.strategies.wheel.paper import run_wheel_paper

    s = cli.settings()
    if metrics_port is not None:
        from prometheus_client import start_http_server

        from greekfire.core.metrics import REGISTRY

        server, _thread = start_http_server(metrics_port, "127.0.0.1", registry=REGISTRY)
        cli.err_console.print(f"greekfire wheel run: metrics on http://127.0.0.1:{server.server_port}/metrics")
    try:
        cfg = WheelConfig.from_yaml(config) if config is not None else getattr(s, "wheel", None) or WheelConfig(
            symbols={"GFX": 1.0})
        with status_line(console, "wheel paper: starting", not as_json) as line:
            out = run_wheel_paper(s, cfg, db, duration, where, account=account, time_scale=time_scale, fresh=fresh,
                                  status=lambda st: line(_format(st)) if line else log.info("%s", _format(st)),
                                  status_interval_s=1.0 if line else 10.0)
    except (ConfigError, ConfigErrors) as exc:
        raise fail("wheel run", exc) from None
    if as_json:
        cli.print_json(out)
        return
    _print(out)


def register(app: typer.Typer) -> None:
    """Add ``run`` to the ``wheel`` sub-app."""
    app.command("run")(run)
