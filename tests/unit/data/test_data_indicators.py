"""Indicators against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from greekfire.data.indicators import ema, realized_vol, rsi, sma


def test_sma_and_ema_by_hand() -> None:
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    np.testing.assert_allclose(sma(x, 3), [np.nan, np.nan, 2.0, 3.0, 4.0])
    # alpha = 2 / (3 + 1) = 0.5, seeded with the first value
    np.testing.assert_allclose(ema(x, 3), [1.0, 1.5, 2.25, 3.125, 4.0625])


def test_rsi_by_hand() -> None:
    close = np.array([10.0, 11.0, 10.5, 11.5, 11.0, 12.0])
    # n = 3: changes +1, -0.5, +1, -0.5, +1
    out = rsi(close, 3)
    assert np.isnan(out[:3]).all()
    g, loss = (1 + 0 + 1) / 3, (0 + 0.5 + 0) / 3
    assert out[3] == pytest.approx(100 - 100 / (1 + g / loss))
    g, loss = (g * 2 + 0) / 3, (loss * 2 + 0.5) / 3
    assert out[4] == pytest.approx(100 - 100 / (1 + g / loss))
    g, loss = (g * 2 + 1) / 3, (loss * 2 + 0) / 3
    assert out[5] == pytest.approx(100 - 100 / (1 + g / loss))
    assert rsi(np.arange(1.0, 20.0), 14)[-1] == 100.0  # only gains


def test_realized_vol_by_hand() -> None:
    close = np.array([100.0, 101.0, 99.0, 102.0, 103.0])
    r = np.log(close[1:] / close[:-1])
    out = realized_vol(close, 3)
    assert np.isnan(out[:3]).all()
    assert out[3] == pytest.approx(np.std(r[0:3], ddof=1) * math.sqrt(252))
    assert out[4] == pytest.approx(np.std(r[1:4], ddof=1) * math.sqrt(252))
