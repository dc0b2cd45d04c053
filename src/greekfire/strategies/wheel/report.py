"""The backtest's HTML report: one self-contained file (plots as embedded PNG, no scripts, no links out).

Plots: the equity curve against buy-and-hold and the PUT-index replica, drawdowns, premium per month,
positions over time (shares and short contracts per symbol) and the state timeline (each underlying's
wheel state over time, from the transitions). Tables: the summary figures of the three curves and the
data problems found in the inputs. Needs matplotlib (the ``wheel`` extra).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from greekfire.core.extras import require_extra
from greekfire.strategies.wheel.analytics import SUMMARY_KEYS, SUMMARY_UNITS, dated, drawdown

STATE_COLOURS = {"cash": "#9e9e9e", "short_put": "#1f77b4", "shares": "#2ca02c", "short_call": "#ff7f0e"}


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _state_name(s: Any) -> str:
    return str(getattr(s, "value", s)).lower()


def render_report(equity: pd.Series, *, benchmarks: Mapping[str, pd.Series] | None = None,
                  premium: pd.Series | None = None, positions: pd.DataFrame | None = None,
                  transitions: Sequence[Any] = (), figures: Mapping[str, Mapping[str, float]] | None = None,
                  problems: Sequence[Any] = (), title: str = "wheel backtest", notes: Sequence[str] = ()) -> str:
    """The report as one HTML string. ``equity`` and each of ``benchmarks`` date -> value (currency);
    ``premium`` date -> premium collected (currency); ``positions`` rows (date, symbol, shares,
    short_puts, short_calls); ``transitions`` records with symbol, new (a state), ts_ns; ``figures``
    name -> :func:`~greekfire.strategies.wheel.analytics.summary`; ``problems`` the inputs' bad rows."""
    require_extra("wheel", "the wheel backtest report")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    equity = dated(equity)
    curves = {"wheel": equity, **{k: dated(v) for k, v in (benchmarks or {}).items()}}
    images: list[tuple[str, str]] = []

    fig, ax = plt.subplots(figsize=(11, 4))
    for name, s in curves.items():
        ax.plot(s.index, s.to_numpy(), label=name, lw=1.2)
    ax.set_yscale("log")
    ax.set_ylabel("account value (log scale)")
    ax.legend()
    ax.grid(alpha=0.3)
    images.append(("Equity: the wheel, buy-and-hold and the PUT-index replica", _png(fig)))

    fig, ax = plt.subplots(figsize=(11, 3))
    for name, s in curves.items():
        ax.plot(s.index, 100 * drawdown(s).to_numpy(), label=name, lw=1.0)
    ax.set_ylabel("drawdown, %")
    ax.legend()
    ax.grid(alpha=0.3)
    images.append(("Drawdown from the running peak", _png(fig)))

    if premium is not None and len(premium):
        premium = dated(premium)
        monthly = premium.groupby(premium.index.to_period("M")).sum()
        fig, ax = plt.subplots(figsize=(11, 3))
        ax.bar(monthly.index.to_timestamp(), monthly.to_numpy(), width=25, color="#1f77b4")
        ax.set_ylabel("premium collected per month")
        ax.grid(alpha=0.3)
        images.append(("Premium per month", _png(fig)))

    if positions is not None and not positions.empty:
        fig, ax = plt.subplots(figsize=(11, 3))
        p = positions.copy()
        p["date"] = pd.to_datetime(p["date"])
        for sym, g in p.groupby("symbol"):
            for col, style in (("short_puts", "-"), ("short_calls", "--")):
                if col in g:
                    ax.plot(g["date"], g[col].to_numpy(), style, lw=1.0, label=f"{sym} {col.replace('_', ' ')}")
        ax.set_ylabel("contracts")
        ax2 = ax.twinx()
        for sym, g in p.groupby("symbol"):
            if "shares" in g:
                ax2.plot(g["date"], g["shares"].to_numpy(), ":", lw=1.0, color="#2ca02c", label=f"{sym} shares")
        ax2.set_ylabel("shares")
        ax.legend(loc="upper left")
        ax.grid(alpha=0.3)
        images.append(("Positions over time", _png(fig)))

    if transitions:
        images.append(("State timeline (each underlying's wheel state)", _png(_timeline(plt, transitions, equity.index[-1]))))

    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th:first-child,td:first-child"
             "{text-align:left}img{max-width:100%}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>",
             f"<p>{html.escape(str(equity.index[0].date()))} to {html.escape(str(equity.index[-1].date()))}; "
             f"written {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.</p>"]
    if figures:
        parts.append(_figures_table(figures))
    for n in notes:
        parts.append(f"<p>{html.escape(n)}</p>")
    for caption, png in images:
        parts.append(f"<h2>{html.escape(caption)}</h2><img alt='{html.escape(caption)}' src='data:image/png;base64,{png}'>")
    parts.append(f"<h2>Input problems ({len(problems)})</h2>")
    if problems:
        parts.append("<table><tr><th>file</th><th>line</th><th>field</th><th>value</th><th>problem</th><th>action</th></tr>")
        for p in list(problems)[:200]:
            d = p.as_dict() if hasattr(p, "as_dict") else dict(p)
            parts.append("<tr>" + "".join(f"<td>{html.escape(str(d[k]))}</td>" for k in
                                           ("file", "line", "field", "value", "problem", "action")) + "</tr>")
        parts.append("</table>")
    else:
        parts.append("<p>none</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _timeline(plt: Any, transitions: Sequence[Any], last: pd.Timestamp) -> Any:
    by_symbol: dict[str, list[tuple[pd.Timestamp, str]]] = {}
    for t in transitions:
        by_symbol.setdefault(t.symbol, []).append((pd.Timestamp(t.ts_ns, unit="ns"), _state_name(t.new)))
    fig, ax = plt.subplots(figsize=(11, 0.6 + 0.5 * len(by_symbol)))
    end = pd.Timestamp(last)
    for row, (_sym, events) in enumerate(sorted(by_symbol.items())):
        events.sort()
        for (t0, state), nxt in zip(events, [*events[1:], (end, "")], strict=True):
            width = max((nxt[0] - t0).days, 1)
            ax.barh(row, width, left=t0, color=STATE_COLOURS.get(state, "#cccccc"), height=0.6)
    ax.set_yticks(range(len(by_symbol)), sorted(by_symbol))
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in STATE_COLOURS.values()]
    ax.legend(handles, list(STATE_COLOURS), ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.25))
    return fig


def _fmt(key: str, v: float) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    if key in ("cagr", "vol", "max_drawdown", "win_rate", "premium_yield"):
        return f"{100 * v:.2f}%"
    if key in ("start_value", "end_value", "premium_per_year"):
        return f"{v:,.0f}"
    if key == "max_dd_days":
        return f"{v:.0f}"
    return f"{v:.2f}"


def _figures_table(figures: Mapping[str, Mapping[str, float]]) -> str:
    names = list(figures)
    rows = ["<table><tr><th>figure</th>" + "".join(f"<th>{html.escape(n)}</th>" for n in names) + "<th>unit</th></tr>"]
    for key in SUMMARY_KEYS:
        cells = "".join(f"<td>{_fmt(key, figures[n].get(key, float('nan')))}</td>" for n in names)
        rows.append(f"<tr><td>{key}</td>{cells}<td>{html.escape(SUMMARY_UNITS[key])}</td></tr>")
    rows.append("</table>")
    return "\n".join(rows)


def write_report(path: str | Path, **kwargs: Any) -> Path:
    """:func:`render_report` written to ``path`` (UTF-8); returns the path."""
    p = Path(path)
    p.write_text(render_report(**kwargs), encoding="utf-8")
    return p
