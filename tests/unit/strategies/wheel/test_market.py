"""The backtest's market: loaders (bad rows reported with their line), the model chain (expiries, ids,
quotes, skew, liquidity, styles)."""

from __future__ import annotations

import gzip
import math
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from greekfire.core.errors import DataError, InputFileError
from greekfire.quant import bsm_price
from greekfire.strategies.wheel.market import (
    ChainModel,
    DailyMarket,
    contract_id,
    decode_id,
    default_prices_path,
    load_prices,
    load_rates,
    load_vol,
    third_friday,
)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def business_days(start: str, end: str) -> pd.DatetimeIndex:
    return pd.bdate_range(start, end)


def synthetic(days: pd.DatetimeIndex, spot: float = 100.0, vix: float = 20.0) -> tuple[pd.DataFrame, pd.Series]:
    prices = pd.DataFrame({"date": days, "close": spot, "open": spot, "high": spot, "low": spot, "dividend": 0.0})
    vol = pd.Series(vix, index=days, name="vol")
    return prices, vol


def test_prices_bad_rows_are_reported_with_their_line_and_skipped(tmp_path: Path) -> None:
    f = write(tmp_path / "p.csv", "date,close,open\n2020-01-02,100,99\n2020-01-03,-5,99\nnot-a-date,101,1\n"
                                  "2020-01-06,102,abc\n\n2020-01-06,103,1\n2020-01-07,104,104\n")
    df = load_prices(f)
    assert list(df["date"]) == [date(2020, 1, 2), date(2020, 1, 6), date(2020, 1, 7)]
    probs = {(p.line, p.field): p for p in df.attrs["problems"]}
    assert set(probs) == {(3, "close"), (4, "date"), (5, "open"), (6, "date"), (7, "date")}
    assert probs[(3, "close")].action == "skipped"
    assert probs[(5, "open")].action == "filled with close"
    assert df.loc[1, "open"] == 102.0  # the bad open took the close
    assert not df[["close", "open", "high", "low", "dividend"]].isna().any().any()


def test_prices_fill_takes_the_previous_close(tmp_path: Path) -> None:
    f = write(tmp_path / "p.csv", "Date,Close\n1/2/2020,100\n1/3/2020,x\n1/6/2020,102\n")
    df = load_prices(f, bad_rows="fill")
    assert df["close"].tolist() == [100.0, 100.0, 102.0]
    (p,) = df.attrs["problems"]
    assert (p.line, p.field, p.value, p.action) == (3, "close", "x", "filled with the previous value")


def test_prices_missing_column_and_file(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="close"):
        load_prices(write(tmp_path / "p.csv", "date,price\n2020-01-02,1\n"))
    with pytest.raises(InputFileError, match="no such file"):
        load_prices(tmp_path / "absent.csv")
    with pytest.raises(InputFileError, match="no usable rows"):
        load_prices(write(tmp_path / "q.csv", "date,close\n2020-01-02,-1\n"))


def test_default_prices_are_arch_sp500_close() -> None:
    df = load_prices()
    with gzip.open(default_prices_path(), "rt") as fh:
        raw = pd.read_csv(fh)
    assert len(df) == len(raw) == 5031 and df.attrs["problems"] == []
    assert df["date"].iloc[0] == date(1999, 1, 4) and df["date"].iloc[-1] == date(2018, 12, 31)
    np.testing.assert_allclose(df["close"].to_numpy(), raw["Close"].to_numpy())
    assert (df["dividend"] == 0).all() and not df.attrs["has_dividends"]


def test_default_vol_is_the_shared_vix(shared_data: Path) -> None:
    v = load_vol()
    assert v.index[0] == pd.Timestamp("1990-01-02") and v.attrs["problems"] == []
    assert v.min() > 5 and v.max() < 100


def test_vol_and_rates(tmp_path: Path) -> None:
    v = load_vol(write(tmp_path / "v.csv", "DATE,CLOSE\n2020-01-02,15\n2020-01-03,0\n2020-01-06,400\n2020-01-07,16\n"))
    assert v.tolist() == [15.0, 16.0]
    assert [p.line for p in v.attrs["problems"]] == [3, 4]
    r = load_rates(2.0)
    assert r.iloc[0] == pytest.approx(math.log(1.02))
    r = load_rates(write(tmp_path / "r.csv", "date,rate\n2020-01-02,1.5\n2020-01-03,99\n"))
    assert r.tolist() == [pytest.approx(math.log(1.015))] and r.attrs["problems"][0].line == 3
    with pytest.raises(DataError):
        load_rates(80.0)


def test_ids_are_stable_and_decode() -> None:
    i = contract_id(0, date(2020, 3, 20), 2875.5, -1.0)
    assert decode_id(i) == (0, date(2020, 3, 20), 2875.5, -1.0)
    assert contract_id(0, date(2020, 3, 20), 2875.5, 1.0) != i and i >= 2 * 10**12


def test_chain_expiries_ids_quotes_and_liquidity() -> None:
    days = business_days("2020-01-02", "2020-06-30")
    days = days[days != pd.Timestamp(third_friday(2020, 4))]  # a holiday on an expiry Friday
    px, vol = synthetic(days)
    m = DailyMarket({"SPX": px}, vol, 0.01)
    monthly = m.monthly_expiries()
    assert date(2020, 4, 16) in monthly and date(2020, 4, 17) not in monthly  # the Thursday before
    assert date(2020, 2, 21) in monthly
    d0, d1 = m.day(0), m.day(5)
    c0 = d0.chain
    assert set(np.unique(c0["monthly"])) == {False, True}  # weeklies and monthlies
    common = np.intersect1d(c0["id"], d1.chain["id"])
    assert len(common) > 100
    inst = m.instrument(int(common[0]))
    _, exp, strike, right = decode_id(int(common[0]))
    assert (inst.strike, inst.right, inst.underlying) == (strike, right, "SPX")
    row = d1.row(int(common[0]))
    assert row is not None and inst.expiry_ns == row["expiry_ns"]  # the record and the chain agree to the ns
    assert d0.instruments[0].instrument_id == 0 and d0.quotes[0].bid < d0.quotes[0].ask
    assert (c0["bid"] <= c0["value"] + 1e-9).all() and (c0["ask"] >= c0["value"]).all()
    assert np.allclose(np.round(c0["bid"] / 0.05), c0["bid"] / 0.05)
    q = d0.quotes[int(c0["id"][10])]
    assert q.bid == c0["bid"][10] and d0.stats[int(c0["id"][10])].open_interest == c0["open_interest"][10]
    # open interest falls away from the money and with time to expiry
    puts = (c0["right"] < 0) & c0["monthly"]
    near = puts & (c0["expiry_ns"] == c0["expiry_ns"][puts].min())
    atm = near & (c0["strike"] == 100.0)
    far = near & (c0["strike"] == 80.0)
    assert c0["open_interest"][atm][0] > c0["open_interest"][far][0] > 0
    later = puts & (c0["strike"] == 100.0)
    oi_by_dte = c0["open_interest"][later][np.argsort(c0["ttm"][later])]
    assert (np.diff(oi_by_dte) < 0).all()


def test_surface_atm_ratio_skew_and_bsm_values() -> None:
    model = ChainModel()
    t30 = 30 / 365
    assert model.atm_vol(20.0, t30).item() == pytest.approx(0.20 * model.atm_ratio)
    v = model.implied_vol(20.0, torch.tensor([-0.1, 0.0, 0.1]), t30)
    assert v[0] > v[1] > v[2]  # puts below the money dearer (equity skew)
    # term structure: a high index is above the long-run vol and the curve falls with maturity
    assert model.atm_vol(40.0, 0.5).item() < model.atm_vol(40.0, t30).item()
    assert model.atm_vol(10.0, 0.5).item() > model.atm_vol(10.0, t30).item()
    days = business_days("2020-01-02", "2020-03-31")
    px, vol = synthetic(days)
    m = DailyMarket({"SPX": px}, vol, 0.01, model, div_yield=0.0)
    c = m.day(0).chain
    live = c["ttm"] > 0
    ref = bsm_price(torch.from_numpy(c["right"][live]), 100.0, torch.from_numpy(c["strike"][live]),
                    torch.from_numpy(c["ttm"][live]), m.rate(0), 0.0, torch.from_numpy(c["vol"][live])).numpy()
    np.testing.assert_allclose(c["value"][live], ref, rtol=1e-9, atol=1e-9)


def test_equity_options_are_american() -> None:
    days = business_days("2020-01-02", "2020-02-28")
    px, vol = synthetic(days)
    m = DailyMarket({"SPX": px, "AAPL": px}, vol, 0.05, div_yield=0.0)
    assert m.styles == {"SPX": "european", "AAPL": "american"}
    c = m.day(0).chain
    spx = (c["symbol"] == 0) & (c["right"] < 0) & (c["ttm"] > 0.1)
    aapl = (c["symbol"] == 1) & (c["right"] < 0) & (c["ttm"] > 0.1)
    # same strikes and expiries, same vol: the American put is worth at least the European one
    assert (c["value"][aapl] >= c["value"][spx] - 1e-9).all() and (c["value"][aapl] > c["value"][spx] + 1e-6).any()


def test_plain_date_columns_and_indexes_are_accepted() -> None:
    days = business_days("2020-01-02", "2020-02-28")
    px, _ = synthetic(days)
    px["date"] = [d.date() for d in days]
    vol = pd.Series(25.0, index=px["date"])  # an index of datetime.date
    m = DailyMarket({"SPX": px}, vol, 0.01)
    assert len(m.dates) == len(days) and m.problems == [] and m.vol_index(5, "SPX") == 25.0
    assert np.isfinite(m.day(5).chain["value"]).all()


def test_missing_dates_filled_or_skipped_and_reported() -> None:
    days = business_days("2020-01-02", "2020-02-28")
    px, vol = synthetic(days)
    gap = days[3]
    vol = vol.drop(gap)
    filled = DailyMarket({"SPX": px}, vol, 0.01, missing="fill")
    assert gap.date() in filled.dates and filled.vol_index(3, "SPX") == 20.0
    (p,) = filled.problems
    assert p.value == gap.date().isoformat() and p.action == "filled from the day before"
    skipped = DailyMarket({"SPX": px}, vol, 0.01, missing="skip")
    assert gap.date() not in skipped.dates and len(skipped.dates) == len(days) - 1


def test_held_contract_off_the_grid_is_still_quoted() -> None:
    days = business_days("2020-01-02", "2020-02-28")
    px, vol = synthetic(days)
    m = DailyMarket({"SPX": px}, vol, 0.01)
    odd = contract_id(0, m.monthly_expiries()[1], 250.0, -1.0)  # far outside strikes_pct
    c = m.day(0, extra=[odd]).chain
    assert odd in c["id"].tolist() and odd not in m.day(0).chain["id"].tolist()
    row = m.day(0, extra=[odd]).row(odd)
    assert row is not None and row["value"] > 140  # deep in the money
    assert m.day(1).dividends["SPX"] == pytest.approx(100.0 * 0.02 * (days[1] - days[0]).days / 365)
    assert date.fromisoformat(str(days[0].date())) + timedelta(days=0) == m.dates[0]


def test_a_day_built_by_hand_has_the_interface_fields() -> None:
    from greekfire.strategies.wheel.market import MarketDay
    from greekfire.trading.model import Instrument, InstrumentStats, Quote

    spx = Instrument(0, "SPX")
    day = MarketDay(date(2020, 1, 2), 1, {"SPX": 3000.0}, rate=0.01, instruments=[spx],
                    quotes={0: Quote(0, 2999.0, 3001.0)}, vols={}, stats={0: InstrumentStats(0)})
    assert day.instruments == [spx] and day.quotes[0].ask == 3001.0 and day.opens == {"SPX": 3000.0}
    assert day.dividends == {"SPX": 0.0} and day.styles == {"SPX": "european"} and len(day.chain["id"]) == 0


def test_a_frame_with_only_date_and_close() -> None:
    days = business_days("2020-01-02", "2020-02-28")
    m = DailyMarket({"SPX": pd.DataFrame({"date": days, "close": 100.0})}, pd.Series(20.0, index=days), 0.01)
    d = m.day(3)
    assert d.opens == d.highs == d.lows == {"SPX": 100.0} and d.dividends["SPX"] > 0  # the 2% yield, paid daily
    with pytest.raises(DataError, match="NaN"):
        DailyMarket({"SPX": pd.DataFrame({"date": days, "close": np.nan})}, pd.Series(20.0, index=days), 0.01)
