"""``greekfire wheel``: the wheel strategy (cash-secured puts, covered calls). ``backtest`` runs it on
daily history and compares it with buy-and-hold and the PUT-index replica.

:data:`wheel_app` is registered on the main app by :mod:`greekfire.cli`; the library (torch, pandas, the
pricing registry) is imported inside the command, so ``greekfire --help`` stays quick.
"""

from __future__ import annotations

import contextlib
import math
import time
from datetime import date
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from greekfire.cli_errors import UsageProblem, fail
from greekfire.core.errors import ConfigError, ConfigErrors, GreekfireError
from greekfire.core.progress import terminal_bars

wheel_app = typer.Typer(help="The wheel: cash-secured puts and covered calls; backtests on history.",
                        no_args_is_help=True)


def _cli() -> ModuleType:
    """The main command module (consoles, JSON printer); imported when a command runs (it imports us)."""
    import greekfire.cli

    return greekfire.cli


def parse_prices(values: list[str] | None, symbols: list[str]) -> dict[str, Path | None]:
    """``--prices``: ``FILE`` (for the config's first symbol) or ``SYMBOL=FILE``, repeatable. Every symbol
    of the config needs a file, except the first, which defaults to the S&P 500 history."""
    out: dict[str, Path | None] = {}
    for v in values or []:
        sym, sep, path = v.partition("=")
        if sep and sym and "/" not in sym and not Path(v).exists():
            out[sym.strip()] = Path(path)
        else:
            out[symbols[0]] = Path(v)
    for sym, p in out.items():
        if sym not in symbols:
            raise UsageProblem(f"--prices {sym}={p}: {sym!r} is not a symbol of the wheel config ({', '.join(symbols)})")
        if p is not None and not p.is_file():
            raise UsageProblem(f"--prices {str(p)!r} {'is a folder, not a file' if p.is_dir() else 'does not exist'}")
    for sym in symbols:
        if sym not in out:
            if sym != symbols[0]:
                raise UsageProblem(f"no prices for {sym!r}: pass --prices {sym}=FILE.csv (columns date,close)")
            out[sym] = None
    return out


def parse_rates(value: str) -> Any:
    """``--rates``: a number (percent, constant), ``tbill`` (annual 3-month T-bill averages) or a CSV."""
    from greekfire.strategies.wheel.market import load_rates
    from greekfire.strategies.wheel.putindex import tbill_rates

    if value.strip().lower() == "tbill":
        return tbill_rates()
    try:
        float(value)
    except ValueError:
        p = Path(value)
        if not p.is_file():
            raise UsageProblem(f"--rates {value!r}: not a number (percent), `tbill`, nor an existing CSV (date,rate)") from None
        return load_rates(p)
    try:
        return load_rates(float(value))
    except GreekfireError as exc:
        raise UsageProblem(f"--rates {value!r}: {exc}") from None


def _date(value: str | None, name: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise UsageProblem(f"{name} {value!r}: not a date (YYYY-MM-DD)") from None


def _clean(v: Any) -> Any:
    """NaN/inf -> None so the JSON is valid."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_clean(x) for x in v]
    return v


def run_wheel_backtest(*, prices: list[str] | None, vol: Path | None, rates: str, start: str | None, end: str | None,
                       config: Path | None, report: Path | None, bad_rows: str, missing: str, div_yield: float,
                       cash: float, progress: Any = None) -> dict[str, Any]:
    """Load the inputs, run the wheel's backtest, evaluate it against the benchmarks and write the report;
    the summary the command prints."""
    from greekfire.strategies.wheel.analytics import evaluate
    from greekfire.strategies.wheel.backtest import run_backtest
    from greekfire.strategies.wheel.config import WheelConfig
    from greekfire.strategies.wheel.market import DailyMarket, load_prices, load_vol, one_torch_thread

    if bad_rows not in ("skip", "fill") or missing not in ("skip", "fill"):
        raise UsageProblem(f"--bad-rows {bad_rows!r} / --missing {missing!r}: each is skip or fill")
    lo, hi = _date(start, "--start"), _date(end, "--end")
    if lo and hi and lo >= hi:
        raise UsageProblem(f"--start {start} is not before --end {end}")
    if not (math.isfinite(div_yield) and 0 <= div_yield < 0.5):
        raise UsageProblem(f"--div-yield {div_yield!r}: a yearly yield as a decimal in [0, 0.5)")
    if not (math.isfinite(cash) and cash > 0):
        raise UsageProblem(f"--cash {cash!r}: must be > 0")
    if config is not None and not config.is_file():
        raise UsageProblem(f"--config {str(config)!r} does not exist")
    if vol is not None and not vol.is_file():
        raise UsageProblem(f"--vol {str(vol)!r} does not exist")
    cfg = WheelConfig.from_yaml(config) if config is not None else WheelConfig(symbols={"SPX": 1.0})
    symbols = list(cfg.symbols)
    files = parse_prices(prices, symbols)
    t0 = time.perf_counter()
    frames = {s: load_prices(p, bad_rows=bad_rows) for s, p in files.items()}  # type: ignore[arg-type]
    vol_series = load_vol(vol, bad_rows=bad_rows)  # type: ignore[arg-type]
    rate_series = parse_rates(rates)
    market = DailyMarket(frames, vol_series, rate_series, div_yield=div_yield, start=lo, end=hi, missing=missing)  # type: ignore[arg-type]
    hook = (lambda done, total: progress("backtest", done, total, "days")) if progress else None
    with one_torch_thread():  # the day's batches are small: worker threads would only wait (market.py)
        result = run_backtest(cfg, market, progress=hook, starting_cash=cash)
    seconds = time.perf_counter() - t0
    figures = evaluate(result.equity, market, premium=result.premium, trades=result.trades, rf=rate_series)
    out: dict[str, Any] = {
        "period": {"start": str(market.dates[0]), "end": str(market.dates[-1]), "days": len(market)},
        "symbols": cfg.symbols,
        "inputs": {"prices": {s: frames[s].attrs.get("source") for s in symbols}, "vol": vol_series.attrs.get("source"),
                   "rates": rate_series.attrs.get("source"), "div_yield": div_yield},
        **figures,
        "transitions": len(result.transitions),
        "trades": len(result.trades),
        "data_problems": {"count": len(market.problems), "first": [p.as_dict() for p in market.problems[:20]]},
        "seconds": round(seconds, 2),
        "years_per_second": round((market.index[-1] - market.index[0]).days / 365.25 / seconds, 2),
    }
    if report is not None:
        from greekfire.strategies.wheel.analytics import buy_and_hold, dated
        from greekfire.strategies.wheel.putindex import put_replica
        from greekfire.strategies.wheel.report import write_report

        e = dated(result.equity)
        bh = buy_and_hold(market, starting_value=float(e.iloc[0]))
        benches = {"buy and hold": bh}
        with contextlib.suppress(GreekfireError):
            benches["PUT replica"] = put_replica(market, e.index[0], e.index[-1], starting_value=float(e.iloc[0]))["equity"]
        write_report(report, equity=e, benchmarks=benches, premium=result.premium, positions=result.positions,
                     transitions=result.transitions, figures=figures, problems=market.problems,
                     title=f"wheel backtest: {', '.join(symbols)} {market.dates[0]}..{market.dates[-1]}")
        out["report"] = str(report)
    return _clean(out)


def print_backtest(console: Console, out: dict[str, Any]) -> None:
    """The summary table: each figure for the wheel, buy-and-hold and the PUT replica, with its unit."""
    from greekfire.strategies.wheel.analytics import SUMMARY_KEYS, SUMMARY_UNITS
    from greekfire.strategies.wheel.report import _fmt

    p = out["period"]
    table = Table(title=f"wheel backtest {', '.join(out['symbols'])}: {p['start']}..{p['end']} ({p['days']:,} days)")
    for c in ("figure", "wheel", "buy and hold", "PUT replica", "unit"):
        table.add_column(c, justify="left" if c in ("figure", "unit") else "right")
    for key in SUMMARY_KEYS:
        vals = [_fmt(key, out[n].get(key) if out[n].get(key) is not None else float("nan"))
                for n in ("wheel", "buy_and_hold", "put_replica")]
        table.add_row(key, *vals, SUMMARY_UNITS[key])
    console.print(table)
    probs = out["data_problems"]
    if probs["count"]:
        console.print(f"[yellow]{probs['count']} input row problem(s)[/yellow], first:")
        for d in probs["first"][:5]:
            where = f"line {d['line']}" if d["line"] else "missing row"
            console.print(f"  {d['file']} {where}: {d['field']}={d['value']!r} {d['problem']} ({d['action']})",
                          soft_wrap=True, highlight=False)
    console.print(f"{out['trades']:,} trades, {out['transitions']:,} transitions; {out['seconds']:.1f} s "
                  f"({out['years_per_second']:.2f} simulated years/s)")
    if out.get("report"):
        console.print(f"report: {out['report']}", soft_wrap=True, highlight=False)


@wheel_app.command("backtest")
def wheel_backtest(
    prices: Annotated[list[str] | None, typer.Option("--prices", help="daily prices CSV (date,close; optional open,high,low,dividend), or SYMBOL=FILE per symbol; default: the S&P 500 1999-2018 shipped with arch")] = None,
    vol: Annotated[Path | None, typer.Option("--vol", help="implied-vol index CSV (date,close in vol points, VIX-like); default: ../shared/data/vix/vix-daily.csv")] = None,
    rates: Annotated[str, typer.Option("--rates", help="risk-free rate: a constant in percent, a CSV (date,rate in percent), or tbill (built-in annual 3-month T-bill averages)")] = "tbill",
    start: Annotated[str | None, typer.Option("--start", help="first day, YYYY-MM-DD (default: the first in the files)")] = None,
    end: Annotated[str | None, typer.Option("--end", help="last day, YYYY-MM-DD (default: the last in the files)")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="wheel configuration YAML (default: SPX, weight 1)")] = None,
    report: Annotated[Path | None, typer.Option("--report", help="write the HTML report here (one self-contained file)")] = None,
    bad_rows: Annotated[str, typer.Option("--bad-rows", help="a bad row: skip it, or fill it with the previous value")] = "skip",
    missing: Annotated[str, typer.Option("--missing", help="a date one input lacks: fill from the day before, or skip the date")] = "fill",
    div_yield: Annotated[float, typer.Option("--div-yield", help="dividend yield (decimal per year) of a price file without a dividend column")] = 0.02,
    cash: Annotated[float, typer.Option("--cash", help="starting cash (currency)")] = 1_000_000.0,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON only")] = False,
) -> None:
    """Backtest the wheel on daily history; figures beside buy-and-hold and the PUT-index replica."""
    cli = _cli()
    try:
        with terminal_bars(cli.err_console, not as_json) as progress:
            out = run_wheel_backtest(prices=prices, vol=vol, rates=rates, start=start, end=end, config=config,
                                     report=report, bad_rows=bad_rows, missing=missing, div_yield=div_yield,
                                     cash=cash, progress=progress)
    except (ConfigError, ConfigErrors) as exc:
        raise fail("wheel backtest", exc) from None
    except GreekfireError as exc:  # bad data in an input file: exit 1, one line
        cli.say_error("wheel backtest", str(exc))
        raise typer.Exit(1) from None
    if as_json:
        cli.print_json(out)
    else:
        print_backtest(cli.console, out)
