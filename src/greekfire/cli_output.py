"""What the ``greekfire`` commands show: their summary tables, every value with its unit, and the live
displays a long run draws on a terminal (a spinner, a status line). Kept beside ``cli.py`` so the command
module stays a list of thin commands. Every live display here draws only when its console is a terminal:
piped output and ``--json`` stay clean."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.table import Table


@contextmanager
def spinner(console: Console, text: str, enabled: bool = True) -> Iterator[None]:
    """A spinner with ``text`` and the elapsed time while the block runs (cleared afterwards); nothing
    where ``enabled`` is false or ``console`` is not a terminal."""
    if not enabled or not console.is_terminal:
        yield
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                  transient=True) as bar:
        bar.add_task(text, total=None)
        yield


@contextmanager
def status_line(console: Console, first: str, enabled: bool = True) -> Iterator[Callable[[str], None] | None]:
    """A one-line status the caller rewrites (``line(text)`` redraws it at once; cleared at the end), or
    ``None`` where ``enabled`` is false or ``console`` is not a terminal."""
    if not enabled or not console.is_terminal:
        yield None
        return
    from rich.live import Live
    from rich.text import Text

    with Live(Text(first), console=console, auto_refresh=False, transient=True) as live:
        yield lambda text: live.update(Text(text), refresh=True)


def print_lobster(console: Console, data: dict[str, Any]) -> None:
    """``market lobster-check`` / ``lobster-replay``: agreement per level in %, the time and throughput."""
    table = Table(title=f"LOBSTER {data['mode']}: {data['name']} ({data['messages']:,} messages)")
    for c in ("level", "both sides %", "bid %", "ask %", "must match"):
        table.add_column(c, justify="right")
    for i, rate in enumerate(data["match_rate_pct"]):
        table.add_row(str(i + 1), f"{rate:.2f}", f"{data['bid_rate_pct'][i]:.2f}", f"{data['ask_rate_pct'][i]:.2f}",
                      "yes" if i < data["checked_levels"] else "no")
    console.print(table)
    for m in data["first_mismatches"][:5]:
        console.print(f"  row {m['row']} level {m['level']}: ours {m['ours']} file {m['file']} message {m['message']}")
    if data.get("note"):
        console.print(f"  [yellow]{data['note']}[/yellow]")
    console.print(f"  {data['mode']}: {data['seconds']:.3f} s for {data['messages']:,} messages "
                  "(levels are 1 = best; rates are % of rows that agree with the file)")
    if "throughput" in data:
        console.print(f"  replay: {data['throughput']['messages_per_s']:,.0f} messages/s on one core")


def print_itch(console: Console, data: dict[str, Any]) -> None:
    """``market itch``'s summary: counts, bad input, and the top of book per stock with its units."""
    table = Table(title=f"ITCH {data['file']} ({data['framing']} framing)", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    rows = {
        "messages": f"{data['messages']:,}",
        "messages by type": ", ".join(f"{t} {n:,}" for t, n in data["counts"].items()),
        "input errors (bytes at)": f"{data['input_errors']:,} {json.dumps(data['first_input_errors'])}",
        "book events": f"{data['book_events']:,}",
        "bad book events (message index)": f"{data['bad_book_events']:,} {json.dumps(data['bad_by_reason'])} "
                                           f"first {json.dumps(data['first_bad_book_events'][:5])}",
        "live orders": f"{data['live_orders']:,}",
        "seconds": f"{data['seconds']:.3f} s",
    }
    for k, v in rows.items():
        table.add_row(k, v)
    console.print(table)
    books = Table(title="top of book per stock (price USD x size shares)")
    for col in ("stock", "messages", "traded shares", "bids", "asks"):
        books.add_column(col, justify="right" if col in ("messages", "traded shares") else "left")
    for name, st in data["stocks"].items():
        books.add_row(name, f"{st['messages']:,}", f"{st['traded_shares']:,}",
                      " ".join(f"{px:,.4f}x{q:,}" for px, q in st["bids"]),
                      " ".join(f"{px:,.4f}x{q:,}" for px, q in st["asks"]))
    console.print(books)


def print_trade(console: Console, out: dict[str, Any]) -> None:
    """The paper run's summary table, every value with its unit."""
    table = Table(title=f"greekfire trade --paper ({out['strategy']}, {out['duration_s']} s)")
    table.add_column("what", style="bold")
    table.add_column("value")
    for key in ("events", "orders", "orders_out", "fills", "denials"):
        table.add_row(key, json.dumps(out[key], default=str))
    pnl = out["pnl"]
    table.add_row("P&L realized (USD)", f"{pnl['realized']:,.2f}")
    table.add_row("P&L unrealized (USD)", f"{pnl['unrealized']:,.2f}")
    fees = pnl["fees"]
    table.add_row("fees (USD; negative = rebate)", f"{fees:,.2f}" + (" (net rebate received)" if fees < 0 else ""))
    table.add_row("P&L total (USD, after fees)", f"{pnl['total']:,.2f}")
    table.add_row("equity (USD)", f"{out['equity']:,.2f}")
    table.add_row("VaR 1 day (USD)", f"{out['var_1d']:,.2f}")
    table.add_row("trading_state", str(out["trading_state"]))
    lat = out["latency_us"]
    table.add_row("latency event -> order (µs)",
                  ", ".join(f"{k} {v:,.1f}" if k != "count" else f"{v:,} orders" for k, v in lat.items()) or "-")
    table.add_row("errors", json.dumps(out["errors"], default=str))
    for und, g in out["greeks"].items():
        table.add_row(f"greeks {und}", ", ".join(f"{k}={v:,.2f}" for k, v in g.items()))
    console.print(table)
    console.print("  greeks: delta in shares, gamma in shares per 1.00 of spot, vega USD per 1.00 vol, theta USD per "
                  "year; delta_cash = delta x spot and gamma_cash = gamma x spot^2 / 100, in USD")


def print_mapping(console: Console, title: str, data: dict[str, Any], units: dict[str, str] | None = None) -> None:
    """A two-column table of ``data``; a key with an entry in ``units`` shows it: ``seconds (s)``."""
    table = Table(title=title, show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    for k, v in data.items():
        unit = (units or {}).get(k)
        table.add_row(f"{k} ({unit})" if unit else str(k), json.dumps(v, default=str) if isinstance(v, dict | list) else str(v))
    console.print(table)


def print_gpu_status(console: Console, data: dict[str, Any]) -> None:
    """``greekfire gpu status``: one row per device (memory in MiB), then driver, cloud, placement, notes."""
    table = Table(title=f"greekfire gpu status: {data['status']}")
    for col in ("device", "name", "memory used/total MiB", "health", "details"):
        table.add_column(col)
    for d in data["devices"]:
        details = f"CC {d['compute_capability']}, {d['pci_bus_id']}, {d['uuid']}" if d["kind"] != "cpu" else f"{d['cpu_count']} cores"
        health = "[green]healthy[/green]" if d["healthy"] else "[red]unhealthy[/red] " + "; ".join(d["reasons"])
        table.add_row(d["torch_device"], d["name"], f"{d['memory_used_mb']:.0f}/{d['memory_total_mb']:.0f}", health, details)
    console.print(table)
    cloud = data["cloud"]
    console.print(f"driver {data['driver_version'] or '-'}, CUDA driver {data['cuda_driver_version'] or '-'}, "
                  f"CUDA runtime {data['cuda_runtime_version'] or '-'}; cloud {cloud['provider']} "
                  f"{cloud['instance_type'] or ''} {cloud['region'] or ''}".rstrip())
    console.print(f"placement: {data['placement']['torch_device']} ({data['placement']['reason']})")
    for reason in data["reasons"] + cloud["reasons"]:
        console.print(f"[yellow]note[/yellow]: {reason}")


def print_training(console: Console, name: str, version: str, summary: dict[str, Any], scores: dict[str, Any]) -> None:
    """``greekfire train pricing``: the run's items and test scores (the paths are printed after it as
    plain lines, never cut by a table)."""
    table = Table(title=f"trained {name} ({version})")
    table.add_column("item", style="bold")
    table.add_column("value")
    paths = ("run_dir", "best_checkpoint", "last_checkpoint", "resumed_from")
    for k, v in summary.items():
        if k != "scores" and k not in paths:
            table.add_row(k, str(v))
    for k, v in scores.items():
        table.add_row(k, f"{v:.6g}" if isinstance(v, float) else str(v))
    console.print(table)


def print_hpo(console: Console, result: Any) -> None:
    """``greekfire train hpo``: one row per trial (state, value, epochs, seconds, params), then the best
    trial, its full run and its registration; the final run's folder as a plain line."""
    table = Table(title=f"study {result.study}: {result.complete} complete, {result.pruned} pruned, "
                        f"{result.failed} failed ({result.workers} worker{'s' if result.workers != 1 else ''}, "
                        f"{result.trials_per_hour:.0f} trials/h)")
    for col in ("trial", "state", "value", "epochs", "seconds", "worker", "params"):
        table.add_column(col, justify="right" if col in {"trial", "value", "epochs", "seconds", "worker"} else "left")
    for r in result.trials:
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["params"].items())
        mark = " (best)" if r["number"] == result.best_trial else ""
        table.add_row(str(r["number"]), r["state"].lower() + mark, f"{r['value']:.4g}" if r["value"] is not None else "-",
                      str(r["epochs"]), f"{r['seconds']:.1f}" if r["seconds"] is not None else "-",
                      str(r.get("worker", "-")), params if not r.get("error") else f"{params} error: {r['error']}")
    console.print(table)
    for line in result.errors:
        console.print(f"[red]{line}[/red]")
    if result.final is not None:
        scores = result.final.get("scores", {})
        shown = ", ".join(f"{k}={scores[k]:.4g}" for k in ("test_rmse", "test_r2", "val_rmse") if k in scores)
        print(f"best trial {result.best_trial}: {result.best_value:.6g}; trained in full: {shown}")
        print(f"run: {result.final.get('run_dir')}")
    if result.registered is not None:
        reg = result.registered
        print(f"registered: {reg['name']} version {reg['version']} alias {reg['alias']}")


def print_preview(console: Console, result: Any, rows: int = 10) -> None:
    """``greekfire price`` without ``-o``: the first priced rows, headers with units (``ttm (years)``,
    ``vega (per 1.00 vol)``); on a narrow terminal the last columns are left out (the caption says so)
    rather than cut to ellipses."""
    from greekfire.data.pricing import preview  # loads torch: only the price command gets here

    shown = preview(result, rows)
    cells = [["-" if isinstance(v, float) and v != v else f"{v:.4g}" if isinstance(v, float) else str(v) for v in rec]
             for rec in shown.itertuples(index=False)]
    # a column needs its widest cell, its name and the longest word of its unit (the unit wraps on spaces)
    need = [max([len(str(col).split(" (")[0]), *(len(w) + 2 for w in str(col).split(" (")[1:2]),
                 *(len(r[i]) for r in cells)]) for i, col in enumerate(shown.columns)]
    keep = len(need)
    while keep > 2 and sum(need[:keep]) + 3 * keep + 1 > console.width:
        keep -= 1
    left_out = list(shown.columns[keep:])
    caption = f"not shown on this terminal: {', '.join(left_out)}" if left_out else None
    table = Table(title=f"first {len(cells)} of {len(result)} rows (all of them: -o FILE.csv, or -o - for stdout)",
                  caption=caption)
    for col in shown.columns[:keep]:  # the unit on a line of its own
        table.add_column(str(col).replace(" (", "\n("), justify="left" if col in ("right", "error") else "right")
    for r in cells:
        table.add_row(*r[:keep])
    console.print(table)
