"""The HTML report: one self-contained file with every plot, the figures and the input problems."""

from __future__ import annotations

import base64
import re
from types import SimpleNamespace

import pandas as pd

from greekfire.strategies.wheel.analytics import summary
from greekfire.strategies.wheel.market import RowProblem
from greekfire.strategies.wheel.report import render_report


def test_report_has_every_plot_the_figures_and_the_problems() -> None:
    days = pd.bdate_range("2020-01-01", periods=60)
    equity = pd.Series([1e6 * (1 + 0.001 * i) for i in range(60)], index=[d.date() for d in days])  # plain dates
    bench = pd.Series([1e6 * (1 + 0.002 * i) for i in range(60)], index=days)
    premium = pd.Series(0.0, index=days)
    premium.iloc[[5, 25, 45]] = 1000.0
    positions = pd.DataFrame({"date": days, "symbol": "SPX", "shares": [0] * 30 + [100] * 30,
                              "short_puts": [1] * 30 + [0] * 30, "short_calls": [0] * 30 + [1] * 30})
    ns = [int(days[i].value) for i in (0, 30, 40)]
    transitions = [SimpleNamespace(symbol="SPX", new=s, ts_ns=t) for s, t in zip(("short_put", "shares", "short_call"), ns, strict=True)]
    problem = RowProblem("p.csv", 7, "close", "x", "is not a positive price", "skipped")
    page = render_report(equity, benchmarks={"buy and hold": bench}, premium=premium, positions=positions,
                         transitions=transitions, figures={"wheel": summary(equity), "buy and hold": summary(bench)},
                         problems=[problem], title="t <x>")
    pngs = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(pngs) == 5 and all(base64.b64decode(p)[:4] == b"\x89PNG" for p in pngs)
    for caption in ("Equity", "Drawdown", "Premium per month", "Positions over time", "State timeline"):
        assert caption in page
    assert "t &lt;x&gt;" in page and "<td>p.csv</td><td>7</td><td>close</td>" in page
    assert "<td>cagr</td>" in page and "http://" not in page and "https://" not in page
