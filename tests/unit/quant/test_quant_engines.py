"""The registry of pricing engines: each built-in engine gives exactly what the function it wraps gives, the
capability table says what an engine does and the registry enforces it, and callers find engines by name."""

from __future__ import annotations

import ast
import inspect
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pytest
import torch

import greekfire.quant.american as american_module
from greekfire.core.errors import DataError
from greekfire.quant import (
    BUMP_GREEKS,
    GREEK_NAMES,
    Capabilities,
    MarketInputs,
    OptionBatch,
    american_greeks,
    american_implied_vol,
    american_price,
    as_tensors,
    black76_greeks,
    black76_price,
    bsm_greeks,
    bsm_price,
    capability_table,
    crr_price,
    engine_names,
    get_engine,
    heston_price,
    implied_vol,
    mc_european,
    price,
    qdfp_price,
    register_engine,
    unregister_engine,
)

BUILT_IN = ("bsm", "black76", "heston", "mc", "qdfp", "crr", "baw", "bs2002")


def _chain(n: int = 64, seed: int = 7) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def u(a: float, b: float) -> torch.Tensor:
        return a + (b - a) * torch.rand(n, generator=g, dtype=torch.float64)

    return {"w": torch.where(u(0, 1) < 0.5, 1.0, -1.0).double(), "S": u(80, 120), "K": u(70, 130), "T": u(0.05, 2.0),
            "r": u(0.0, 0.06), "q": u(0.0, 0.04), "v": u(0.1, 0.5)}


@pytest.fixture
def toy() -> Iterator[str]:
    """A toy engine (intrinsic value, any style, CPU only), removed again after the test."""

    @register_engine("toy_intrinsic", Capabilities(inputs=(), styles=("european", "american"), devices=("cpu",)))
    def intrinsic(batch: OptionBatch, market: MarketInputs, outputs: tuple[str, ...], options: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Intrinsic value"""
        w, S, K = as_tensors(batch.right, market.spot, batch.strike)
        return {"value": torch.clamp(w * (S - K), min=0.0)}

    yield "toy_intrinsic"
    unregister_engine("toy_intrinsic")


def test_every_built_in_engine_is_registered_with_its_capabilities() -> None:
    assert set(BUILT_IN) <= set(engine_names())
    assert set(engine_names("american")) >= {"qdfp", "crr", "baw", "bs2002"}
    assert "bsm" not in engine_names("american") and "qdfp" not in engine_names("european")
    table = capability_table()
    for name in BUILT_IN:
        assert f"| `{name}` |" in table
    assert get_engine("heston").capabilities.params == ("v0", "kappa", "theta", "sigma", "rho")
    assert get_engine("crr").capabilities.greeks == "bump" and get_engine("bsm").capabilities.greeks == "analytic"


def test_european_engines_give_exactly_what_the_wrapped_functions_give() -> None:
    c = _chain()
    batch = OptionBatch(c["w"], c["K"], c["T"])
    market = MarketInputs(c["S"], c["r"], c["q"], vol=c["v"])
    got = price("bsm", batch, market, outputs=GREEK_NAMES)
    want = bsm_greeks(c["w"], c["S"], c["K"], c["T"], c["r"], c["q"], c["v"])
    assert list(got) == list(GREEK_NAMES)
    for name in GREEK_NAMES:
        assert torch.equal(got[name], want[name]), name
    assert torch.equal(price("bsm", batch, market)["value"], bsm_price(c["w"], c["S"], c["K"], c["T"], c["r"], c["q"], c["v"]))
    b76 = price("black76", batch, market, outputs=("value", "delta"))
    assert torch.equal(b76["delta"], black76_greeks(c["w"], c["S"], c["K"], c["T"], c["r"], c["v"], names=("value", "delta"))["delta"])
    assert torch.equal(price("black76", batch, market)["value"], black76_price(c["w"], c["S"], c["K"], c["T"], c["r"], c["v"]))
    params = {"v0": 0.04, "kappa": 1.5, "theta": 0.05, "sigma": 0.4, "rho": -0.6}
    hv = price("heston", batch, MarketInputs(c["S"], c["r"], c["q"], params=params), nodes=128)["value"]
    assert torch.equal(hv, heston_price(c["w"], c["S"], c["K"], c["T"], c["r"], c["q"], *params.values(), nodes=128))
    mc = price("mc", batch, market, outputs=("value", "stderr"), n_paths=2000, seed=3)
    ref = mc_european(c["w"], c["S"], c["K"], c["T"], c["r"], c["q"], c["v"], n_paths=2000, seed=3)
    assert torch.equal(mc["value"], ref.price) and torch.equal(mc["stderr"], ref.stderr)


def test_american_engines_give_exactly_what_the_wrapped_functions_give() -> None:
    c = _chain(40)
    args = (c["w"], c["S"], c["K"], c["T"], c["r"], c["q"], c["v"])
    batch = OptionBatch(c["w"], c["K"], c["T"], "american")
    market = MarketInputs(c["S"], c["r"], c["q"], vol=c["v"])
    assert torch.equal(price("qdfp", batch, market)["value"], qdfp_price(*args))
    assert torch.equal(price("crr", batch, market, steps=80)["value"], crr_price(*args, steps=80))
    assert torch.equal(american_price(*args, model="crr", steps=80), crr_price(*args, steps=80))
    for model in ("qdfp", "crr", "baw", "bs2002"):
        # a tree gives every bump Greek but the second differences in vol and time
        names = BUMP_GREEKS if model != "crr" else tuple(n for n in BUMP_GREEKS if n not in ("vanna", "volga", "charm"))
        got = price(model, batch, market, outputs=names, steps=60)
        want = american_greeks(*args, model=model, steps=60)
        assert set(want) == set(names), model
        for name in names:
            assert torch.equal(got[name], want[name]), (model, name)


def test_implied_vols_through_the_registry() -> None:
    c = _chain(50)
    batch = OptionBatch(c["w"], c["K"], c["T"])
    p = bsm_price(c["w"], c["S"], c["K"], c["T"], c["r"], c["q"], c["v"])
    out = price("bsm", batch, MarketInputs(c["S"], c["r"], c["q"], price=p), outputs=("iv",))
    ref = implied_vol(p, c["w"], c["S"], c["K"], c["T"], c["r"], c["q"])
    torch.testing.assert_close(out["iv"], ref.vol, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(out["iv_code"], ref.code)
    both = price("bsm", batch, MarketInputs(c["S"], c["r"], c["q"], vol=c["v"], price=p), outputs=("value", "iv"))
    assert list(both) == ["value", "iv", "iv_code"] and torch.equal(both["value"], p)
    # heston quotes in Black-Scholes vols (the market's convention), through the bsm engine
    heston = price("heston", batch, MarketInputs(c["S"], c["r"], c["q"], price=p), outputs="iv")
    torch.testing.assert_close(heston["iv"], ref.vol, rtol=0, atol=0, equal_nan=True)
    # Black-76 inverts its own prices: spot is the forward
    p76 = black76_price(c["w"], c["S"], c["K"], c["T"], c["r"], c["v"])
    iv76 = price("black76", batch, MarketInputs(c["S"], c["r"], c["q"], price=p76), outputs="iv")["iv"]
    ok = torch.isfinite(iv76)
    assert ok.sum() >= 45
    assert torch.allclose(black76_price(c["w"], c["S"], c["K"], c["T"], c["r"], iv76)[ok], p76[ok], rtol=1e-9)
    # American engines invert themselves
    am = american_price(c["w"], c["S"], c["K"], c["T"], c["r"], c["q"], c["v"], model="baw")
    amb = OptionBatch(c["w"], c["K"], c["T"], "american")
    got = price("baw", amb, MarketInputs(c["S"], c["r"], c["q"], price=am), outputs="iv")
    want = american_implied_vol(am, c["w"], c["S"], c["K"], c["T"], c["r"], c["q"], model="baw")
    torch.testing.assert_close(got["iv"], want.vol, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(got["iv_code"], want.code) and (want.code == 0).sum() >= 40


def test_registry_errors_name_what_is_wrong(toy: str) -> None:
    batch = OptionBatch(1.0, 100.0, 0.5)
    market = MarketInputs(100.0, 0.02, 0.0, vol=0.2)
    with pytest.raises(DataError, match=r"model='nope'.*'bsm'.*'toy_intrinsic'"):
        get_engine("nope")
    with pytest.raises(DataError, match="style"):
        price("qdfp", batch, market)
    with pytest.raises(DataError, match="style"):
        get_engine("bsm")(OptionBatch(1.0, 100.0, 0.5, "american"), market)
    with pytest.raises(DataError, match="outputs='vanna'"):
        price("crr", OptionBatch(1.0, 100.0, 0.5, "american"), market, outputs=("vanna",))
    with pytest.raises(DataError, match="params='v0'"):
        price("heston", batch, market)
    with pytest.raises(DataError, match="vol=None"):
        price("bsm", batch, MarketInputs(100.0, 0.02))
    with pytest.raises(DataError, match="price=None"):
        price("bsm", batch, market, outputs="iv")
    with pytest.raises(DataError, match="gives no implied vol"):
        price(toy, batch, MarketInputs(100.0, price=5.0), outputs="iv")
    with pytest.raises(DataError, match="already a registered"):
        register_engine(toy, Capabilities())(lambda *a: {})
    with pytest.raises(DataError, match="style='bermudan'"):
        OptionBatch(1.0, 100.0, 0.5, "bermudan")
    with pytest.raises(DataError, match="outputs"):
        Capabilities(outputs=("delta",))
    with pytest.raises(DataError, match="model"):
        american_price(1.0, 100.0, 100.0, 0.5, 0.02, 0.0, 0.2, model="bsm")
    # options an engine does not take are ignored, so one call serves every engine
    assert torch.equal(price("bsm", batch, market, steps=7)["value"], bsm_price(1.0, 100.0, 100.0, 0.5, 0.02, 0.0, 0.2))


def test_a_registered_engine_prices_through_every_entry_point(toy: str) -> None:
    w = torch.tensor([1.0, -1.0, 1.0])
    K = torch.tensor([90.0, 110.0, 120.0])
    out = price(toy, OptionBatch(w, K, 0.5, "american"), MarketInputs(100.0))
    assert out["value"].tolist() == [10.0, 10.0, 0.0]
    # the American dispatcher finds it by name like a built-in engine
    assert american_price(w, 100.0, K, 0.5, 0.0, 0.0, 0.2, model=toy).tolist() == [10.0, 10.0, 0.0]
    assert toy in engine_names("american") and f"| `{toy}` | Intrinsic value |" in capability_table()
    meta = torch.empty(3, device="meta")
    with pytest.raises(DataError, match="device='meta'"):
        price(toy, OptionBatch(meta, K, 0.5), MarketInputs(100.0))


def test_dtype_and_device_follow_the_inputs() -> None:
    out = price("bsm", OptionBatch(1.0, 100.0, 0.5), MarketInputs(100.0, 0.02, 0.0, vol=0.2))["value"]
    assert out.dtype == torch.float64 and out.device.type == "cpu"
    f32 = price("baw", OptionBatch(torch.tensor([1.0]), 100.0, 0.5, "american"), MarketInputs(100.0, 0.02, 0.01, vol=0.2))
    assert f32["value"].dtype == torch.float32


def test_batch_from_dates_is_act_365() -> None:
    b = OptionBatch.from_dates([1.0, -1.0], [100.0, 100.0], ["2025-03-21", "2025-12-19"], "2024-12-20")
    assert np.allclose(np.asarray(b.ttm), [91 / 365, 364 / 365])


def test_american_module_does_not_import_the_qdfp_engine() -> None:
    tree = ast.parse(inspect.getsource(american_module))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "greekfire.quant.qdfp" not in imported
    assert "greekfire.quant.registry" in imported
