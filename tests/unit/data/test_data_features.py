"""Features: windows and splits never look ahead; normaliser fit on train only (indicators: test_data_indicators)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from greekfire.core.errors import DataError
from greekfire.data.features import (
    CONTRACT_NAMES,
    SEQ_NAMES,
    Normalizer,
    build_samples,
    time_split,
    underlying_features,
)


def make_bars(n: int = 150, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    return pd.DataFrame(
        {"date": pd.bdate_range("2023-01-02", periods=n), "underlying": "XYZ", "close": close}
    )


def make_quotes(bars: pd.DataFrame, dates: list[pd.Timestamp]) -> pd.DataFrame:
    rows = []
    close = bars.set_index("date")["close"]
    for d in dates:
        s = float(close.get(d, 100.0))
        for k in (0.9 * s, s, 1.1 * s):
            for right in ("C", "P"):
                rows.append(
                    {
                        "quote_date": d,
                        "underlying": "XYZ",
                        "spot": s,
                        "expiry": d + pd.Timedelta(days=30),
                        "strike": round(k, 2),
                        "right": right,
                        "style": "E",
                        "bid": 2.0,
                        "ask": 2.2,
                    }
                )
    return pd.DataFrame(rows)


def test_underlying_features_use_only_the_past() -> None:
    bars = make_bars()
    base = underlying_features(bars)
    changed = bars.copy()
    changed.loc[100:, "close"] *= 1.5  # rewrite the future from day 100
    after = underlying_features(changed)
    pd.testing.assert_frame_equal(base.iloc[:100], after.iloc[:100])


def test_build_samples_shapes_windows_and_drops() -> None:
    bars = make_bars()
    dates = list(bars["date"].iloc[[10, 80, 90, 100, 110, 120, 130, 140]])
    q = make_quotes(bars, [*dates, pd.Timestamp("2030-01-02")])  # last date has no bar
    q.loc[0, ["bid", "ask"]] = [3.0, 2.0]
    s = build_samples(q, bars, window=20)
    assert s.seq.shape[1:] == (20, len(SEQ_NAMES)) and s.seq.dtype == np.float32
    assert s.contract.shape[1] == len(CONTRACT_NAMES)
    assert s.dropped["crossed"] == 1
    assert s.dropped["no_underlying_bar"] == 6
    assert s.dropped["insufficient_history"] == 5  # day 10: too little history (one row already crossed)
    assert len(s) == 7 * 6
    assert np.isfinite(s.seq).all() and np.isfinite(s.contract).all()
    np.testing.assert_allclose(s.target, 2.1 / (q["strike"].to_numpy()[6:-6]), rtol=1e-6)
    # the window ends on the quote date: its last row is that day's features
    feats = underlying_features(bars).set_index("date")
    last = feats.loc[pd.Timestamp(s.quote_date[0]), list(SEQ_NAMES)].to_numpy(dtype=np.float32)
    np.testing.assert_allclose(s.seq[0, -1], last, rtol=1e-6)
    # Black-Scholes baseline is a price / strike, positive, of the same order as the target
    assert (s.bs_baseline > 0).all() and s.bs_baseline.max() < 0.2


def test_windows_do_not_look_ahead() -> None:
    bars = make_bars()
    q = make_quotes(bars, list(bars["date"].iloc[[90, 100]]))
    a = build_samples(q, bars, window=10)
    future = bars.copy()
    future.loc[101:, "close"] *= 2.0
    b = build_samples(q, future, window=10)
    np.testing.assert_array_equal(a.seq, b.seq)
    np.testing.assert_array_equal(a.contract, b.contract)


def test_time_split_by_date_no_overlap() -> None:
    bars = make_bars()
    q = make_quotes(bars, list(bars["date"].iloc[80:140]))
    s = build_samples(q, bars, window=5)
    tr, va, te = time_split(s, val_frac=0.2, test_frac=0.2)
    assert len(tr) + len(va) + len(te) == len(s)
    assert tr.quote_date.max() < va.quote_date.min() <= va.quote_date.max() < te.quote_date.min()
    assert len(np.unique(te.quote_date)) == 12 and len(np.unique(va.quote_date)) == 12
    with pytest.raises(DataError, match="val_frac"):
        time_split(s, val_frac=1.5)


def test_normalizer_fit_on_train_and_saved() -> None:
    bars = make_bars()
    s = build_samples(make_quotes(bars, list(bars["date"].iloc[80:140])), bars, window=5)
    tr, va, _ = time_split(s)
    norm = Normalizer.fit(tr)
    t = norm.transform(tr)
    i = CONTRACT_NAMES.index("ttm")
    assert abs(float(t.contract[:, i].mean())) < 1e-4
    j = CONTRACT_NAMES.index("is_call")
    np.testing.assert_array_equal(t.contract[:, j], tr.contract[:, j])  # one-hots untouched
    # fit on train only: the val statistics differ from what the normaliser holds
    assert not np.allclose(Normalizer.fit(va).seq_mean, norm.seq_mean)
    again = Normalizer.from_state_dict(norm.state_dict())
    np.testing.assert_array_equal(again.transform(va).seq, norm.transform(va).seq)


def test_more_than_one_underlying_is_refused() -> None:
    bars = pd.concat([make_bars(), make_bars().assign(underlying="ABC")])
    with pytest.raises(DataError, match="one underlying"):
        build_samples(make_quotes(make_bars(), []), bars)


def test_row_id_points_back_to_the_input_rows() -> None:
    bars = make_bars()
    q = make_quotes(bars, list(bars["date"].iloc[[100, 90]]))  # out of date order on purpose
    q.loc[1, ["bid", "ask"]] = [0.0, 0.0]
    s = build_samples(q, bars, window=5)
    assert 1 not in s.row_id and len(s) == len(q) - 1
    back = q.iloc[s.row_id]
    np.testing.assert_array_equal(back["quote_date"].to_numpy().astype("datetime64[D]"), s.quote_date)
    np.testing.assert_allclose(s.target, (2.1 / back["strike"]).to_numpy(), rtol=1e-6)


def test_drops_are_counted_on_the_metrics_registry() -> None:
    from greekfire.core.metrics import sample_value

    def crossed() -> float:
        return sample_value("greekfire_data_rows_dropped_total", {"reason": "crossed"}) or 0.0

    before = crossed()
    bars = make_bars()
    q = make_quotes(bars, list(bars["date"].iloc[[100]]))
    q.loc[[0, 1], ["bid", "ask"]] = [3.0, 2.0]
    build_samples(q, bars, window=5)
    assert crossed() == before + 2
