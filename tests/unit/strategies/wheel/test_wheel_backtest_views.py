"""The backtest context's fast views: the chain columns it serves equal the strategy API's default view built
from records, records are read lazily and equal the columns, held contracts reach the market as extras, and
each symbol's exercise style comes from the market."""

from __future__ import annotations

import numpy as np
import pandas as pd
from wheel_days import gbm_prices

from greekfire.strategies.wheel.backtest import BacktestContext, exercise_styles, run_backtest
from greekfire.strategies.wheel.config import WheelConfig
from greekfire.strategies.wheel.market import ChainModel, DailyMarket, MarketDay
from greekfire.trading.strategy import CHAIN_VIEW_COLUMNS, StrategyContext


def _market(symbols: tuple[str, ...] = ("AAA",), days: int = 40) -> DailyMarket:
    prices = {s: gbm_prices(days, seed=3 + k, sigma=0.3) for k, s in enumerate(symbols)}
    vol = pd.Series(25.0, index=prices[symbols[0]]["date"])
    return DailyMarket(prices, vol, 0.02, ChainModel())


def test_option_chain_view_equals_the_default_built_from_records() -> None:
    market = _market(("AAA", "BBB"))
    ctx = BacktestContext()
    ctx.set_day(market.day(5))
    for sym in ("AAA", "BBB"):
        fast = ctx.option_chain(sym)
        slow = StrategyContext.option_chain(ctx, sym)  # the API's default: instruments, quotes, stats, vol()
        assert set(fast) == set(slow) == set(CHAIN_VIEW_COLUMNS)
        assert len(fast["id"]) > 100
        for k in CHAIN_VIEW_COLUMNS:
            np.testing.assert_array_equal(fast[k], slow[k], err_msg=k)
            assert not fast[k].flags.writeable and not slow[k].flags.writeable
        assert {ctx.instruments[int(i)].underlying for i in fast["id"]} == {sym}


def test_lazy_records_equal_the_chain_columns() -> None:
    market = _market()
    day = market.day(3)
    c = day.chain
    ctx = BacktestContext()
    ctx.set_day(day)
    for r in (0, 7, len(c["id"]) - 1):
        iid = int(c["id"][r])
        q, st = ctx.quotes[iid], ctx.stats[iid]
        assert (q.bid, q.ask) == (float(c["bid"][r]), float(c["ask"][r]))
        assert (st.open_interest, st.volume) == (int(c["open_interest"][r]), int(c["volume"][r]))
        assert ctx.vol(iid) == float(c["vol"][r])
        assert ctx.marks[iid] == (0.5 * (q.bid + q.ask) if q.bid > 0 else q.ask)
        assert ctx.instruments[iid].strike == float(c["strike"][r])
    assert ctx.by_symbol["AAA"].instrument_id == 0 and 0 in ctx.quotes
    assert len(ctx.instruments) == len(c["id"]) + 1 and list(ctx.instruments)[0] == 0
    assert 123 not in ctx.quotes and ctx.quotes.get(123) is None


class _Recording:
    """A DailyMarket that records the ``extra`` ids the harness asks each day for."""

    def __init__(self, market: DailyMarket) -> None:
        self.inner = market
        self.asked: list[tuple[int, list[int]]] = []
        self.dates, self.model, self.styles = market.dates, market.model, market.styles

    def day(self, i: int, extra: tuple[int, ...] = ()) -> MarketDay:
        self.asked.append((i, sorted(int(x) for x in extra)))
        return self.inner.day(i, extra)


def test_the_harness_passes_held_contracts_to_the_market() -> None:
    market = _Recording(_market(days=60))
    cfg = WheelConfig(symbols={"AAA": 1.0}, exercise="european", dte=20, max_dte=60, put_write_when="always")
    r = run_backtest(cfg, market, starting_cash=500_000)  # type: ignore[arg-type]
    sold = [t for t in r.trades.itertuples() if t.kind == "fill" and t.side < 0 and " " in t.instrument]
    assert sold
    first = sold[0]
    i = market.dates.index(first.date)
    held_next = dict(market.asked)[i + 1]
    ids = {iid for iid in held_next if iid >= 1}
    names = {market.inner.instrument(iid).symbol for iid in ids}
    assert first.instrument in names


def test_exercise_style_from_the_market() -> None:
    spx, aaa = _market(("SPX",)), _market(("AAA",))
    cfg, american = exercise_styles(WheelConfig(symbols={"SPX": 1.0}, exercise="american"), spx)
    assert cfg.exercise == "european" and american == set()
    given = WheelConfig(symbols={"AAA": 1.0}, exercise="european")
    cfg, american = exercise_styles(given, aaa)
    assert cfg is given and american == set()
    cfg, american = exercise_styles(WheelConfig(symbols={"AAA": 1.0}, exercise="american"), aaa)
    assert cfg.exercise == "american" and american == {"AAA"}
    both = _market(("SPX", "AAA"))
    mixed = WheelConfig(symbols={"SPX": 1.0, "AAA": 1.0}, exercise="american")
    cfg, american = exercise_styles(mixed, both)
    assert cfg is mixed and american == {"AAA"}
