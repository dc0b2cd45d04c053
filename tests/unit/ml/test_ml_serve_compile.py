"""The served network compiled (TorchScript trace, frozen) prices as the eager module does, at every batch size."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import pricing_checkpoint
from greekfire.core.errors import ConfigError
from greekfire.ml.serving import compile_model, load_pricing_model


def _inputs(n: int, n_c: int, window: int, n_s: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    g = torch.Generator().manual_seed(n)
    contract = 0.5 + torch.rand(n, n_c, generator=g)
    seq = torch.randn(n, window, n_s, generator=g) if window else None
    return contract, seq


@pytest.mark.parametrize(("preset", "overrides"), [("smoke", ["data.n_samples=300"]),
                                                    ("lstm_tiny", ["data.n_samples=300"])])
def test_script_model_matches_eager(tmp_path: Path, preset: str, overrides: list[str]) -> None:
    ckpt = pricing_checkpoint(tmp_path, preset, overrides)
    eager = load_pricing_model(ckpt, device="cpu")
    compiled = compile_model(load_pricing_model(ckpt, device="cpu"), "script")
    assert compiled.runner is not None and compiled.info["compile"] == "script"
    for n in (1, 3, 8, 257):  # other batch sizes than the traced example's 8
        contract, seq = _inputs(n, len(eager.contract_names), eager.window, len(eager.seq_names))
        want, got = eager(contract, seq), compiled(contract, seq)
        assert got.shape == want.shape == (n,)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert not torch.equal(compiled(*_inputs(4, len(eager.contract_names), eager.window, len(eager.seq_names))),
                           compiled(*_inputs(5, len(eager.contract_names), eager.window, len(eager.seq_names)))[:4])


def test_compile_none_runs_eager_and_unknown_mode_names_setting(tmp_path: Path) -> None:
    model = load_pricing_model(pricing_checkpoint(tmp_path, "smoke", ["data.n_samples=300"]), device="cpu")
    assert compile_model(model, "script").runner is not None
    assert compile_model(model, "none").runner is None
    with pytest.raises(ConfigError) as err:
        compile_model(model, "onnx")
    assert "training.serve_compile" in str(err.value) and "onnx" in str(err.value)
