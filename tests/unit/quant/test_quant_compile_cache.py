"""Pricing before this machine has compiled its kernels: eager with the same results, the kernels that
would have compiled named, the compile cache's built-set markers and build lock, and the warm-up chain."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import poll_until, run_in_pty
from greekfire.core import compile_cache
from greekfire.data.compile_warmup import kernel_set_key, synthetic_chain
from greekfire.data.pricing import price_file, price_frame
from greekfire.quant import _fused, qdfp_price
from greekfire.quant._fused import eager_until_compiled


def _grid(n: int = 256) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(3)
    spot = torch.full((n,), 100.0, dtype=torch.float64)
    strike = torch.empty(n, dtype=torch.float64).uniform_(70.0, 130.0, generator=g)
    ttm = torch.empty(n, dtype=torch.float64).uniform_(0.05, 2.0, generator=g)
    rate = torch.empty(n, dtype=torch.float64).uniform_(0.01, 0.06, generator=g)
    div = torch.empty(n, dtype=torch.float64).uniform_(0.0, 0.04, generator=g)
    vol = torch.empty(n, dtype=torch.float64).uniform_(0.1, 0.6, generator=g)
    right = torch.where(torch.rand(n, generator=g) < 0.5, 1.0, -1.0).to(torch.float64)
    return right, spot, strike, ttm, rate, div, vol


def test_eager_until_compiled_prices_eagerly_and_names_the_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    args = _grid()
    eager = qdfp_price(*args)  # small: eager throughout
    # every batch counts as large, so each kernel would take the compiled path by default
    monkeypatch.setattr(_fused, "DEFAULT_MIN_SIZE", 1)
    announced: list[str] = []
    polls: list[int] = []

    def ready() -> bool:
        polls.append(1)
        return False

    with eager_until_compiled(on_want=announced.append, ready=ready) as wanted:
        held = qdfp_price(*args)
    assert torch.equal(held, eager)
    assert {"_setup", "_fp_update", "_premium"} <= wanted
    assert sorted(announced) == sorted(wanted)  # once per kernel
    assert polls  # asked whether the kernels had been built meanwhile
    # outside the block the default applies again
    assert _fused.wants_compile(None, 10, "k") is True
    assert _fused.wants_compile(False, 10, "k") is False


def test_small_batches_want_no_compile() -> None:
    with eager_until_compiled() as wanted:
        qdfp_price(*_grid(64))
    assert wanted == set()


def test_built_markers_and_build_lock(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(compile_cache.CACHE_ENV, str(tmp_path / "cache"))
    assert compile_cache.compile_cache_dir() == tmp_path / "cache"
    key = "american-qdfp-float64-cpu-2t-abc"
    assert not compile_cache.kernels_built(key)
    assert compile_cache.built_seconds(key) is None
    assert compile_cache.take_build_lock(key)
    assert not compile_cache.take_build_lock(key)  # a second builder stands back
    compile_cache.mark_built(key, 123.4)
    compile_cache.release_build_lock(key)
    assert compile_cache.kernels_built(key)
    assert compile_cache.built_seconds(key) == 123.4
    assert compile_cache.take_build_lock(key)
    compile_cache.release_build_lock(key)
    # a lock left by a build that died (its process is gone) does not hold back the next one
    lock = compile_cache.compile_cache_dir() / "greekfire" / f"{key}.lock"
    lock.write_text("999999999")
    assert compile_cache.take_build_lock(key)


def test_default_cache_is_greekfires_own(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(compile_cache.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compile_cache.compile_cache_dir() == tmp_path / "greekfire" / "torch-compile"


def test_kernel_set_key_names_what_compiles_differently() -> None:
    cpu = torch.device("cpu")
    key = kernel_set_key("american", "qdfp", "float64", cpu, 2)
    assert key == kernel_set_key("american", "qdfp", "float64", cpu, 2)
    others = {kernel_set_key("american", "qdfp", "float64", cpu, 1), kernel_set_key("american", "qdfp", "float32", cpu, 2),
              kernel_set_key("american", "bs2002", "float64", cpu, 2), kernel_set_key("european", "bsm", "float64", cpu, 2)}
    assert key not in others and len(others) == 4


def test_warmup_chain_runs_the_implied_vol_and_greeks_paths() -> None:
    chain = synthetic_chain(64)
    assert "vol" not in chain.columns
    out = price_frame(chain, style="american")
    ok = out["error"] == ""
    assert ok.all()
    assert np.isfinite(out.loc[ok, ["iv", "value", "delta", "vega"]].to_numpy()).all()
    # the American puts were given a premium over the European price: their implied vols are below the
    # European ones used to build the prices, and positive
    assert (out.loc[ok, "iv"] > 0).all()


def test_small_american_file_starts_no_build(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(compile_cache.CACHE_ENV, str(tmp_path / "cache"))
    src = tmp_path / "chain.csv"
    synthetic_chain(32).to_csv(src, index=False)
    summary = price_file(src, tmp_path / "out.csv", style="american")
    assert summary["priced"] == 32
    assert capsys.readouterr().err == ""  # nothing compiled, nothing to say
    assert not (tmp_path / "cache" / "greekfire" / "build.log").exists()
    assert len(pd.read_csv(tmp_path / "out.csv")) == 32


def test_small_american_run_shows_a_progress_bar(tmp_path: Path) -> None:
    src = tmp_path / "chain.csv"
    synthetic_chain(64).to_csv(src, index=False)
    rc, out = run_in_pty([sys.executable, "-m", "greekfire.cli", "price", str(src), "-o", str(tmp_path / "o.csv"),
                          "--style", "american", "--model", "baw"], env={compile_cache.CACHE_ENV: str(tmp_path / "c")},
                         timeout_s=120)
    assert rc == 0, out
    assert "pricing" in out and "100%" in out


def test_first_american_run_prices_eagerly_says_so_and_starts_a_build(tmp_path: Path) -> None:
    """A chain large enough to compile, on an empty compile cache: the run prices without compiled kernels
    (numbers equal to eager pricing), prints the one-line notice and starts the background build. This
    process holds the build lock, so the build it starts stands back at once instead of compiling."""
    cache = tmp_path / "cache"
    cpu = torch.device("cpu")
    (cache / "greekfire").mkdir(parents=True)
    for threads in range(1, (os.cpu_count() or 1) + 1):
        (cache / "greekfire" / f"{kernel_set_key('american', 'qdfp', 'float64', cpu, threads)}.lock").write_text(
            str(os.getpid()))
    chain = synthetic_chain(2_048)
    src, dst = tmp_path / "chain.csv", tmp_path / "out.csv"
    chain.to_csv(src, index=False)
    rc, out = run_in_pty([sys.executable, "-m", "greekfire.cli", "price", str(src), "-o", str(dst),
                          "--style", "american", "--device", "cpu"],
                         env={compile_cache.CACHE_ENV: str(cache), "GREEKFIRE_QUANT__BACKGROUND_COMPILE": "true"},
                         timeout_s=300)
    assert rc == 0, out
    assert "compiling pricing kernels in the background (first run on this machine" in " ".join(out.split())
    log = cache / "greekfire" / "build.log"
    assert poll_until(lambda: "being built" in log.read_text(), timeout_s=120, step_s=0.5, ignore=(OSError,))
    assert not list((cache / "greekfire").glob("*.built"))
    with eager_until_compiled() as wanted:
        expected = price_frame(pd.read_csv(src), style="american")
    assert wanted  # a chain this size would compile by default
    got = pd.read_csv(dst)
    for name in ("value", "delta", "gamma", "vega", "iv"):
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-12, atol=0)
