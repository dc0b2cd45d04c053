"""Pricing networks, experiment configs and the resumable sampler (fast; no training loop)."""

from __future__ import annotations

import math

import pytest
import torch

from greekfire.core.errors import ConfigError, ConfigErrors, DataError
from greekfire.data.features import Normalizer
from greekfire.data.loaders import ResumableBatchSampler
from greekfire.ml.config import compose_experiment, config_hash
from greekfire.ml.data import bs_culkin_samples, bs_liu_samples, load_pricing_data
from greekfire.ml.models import MLPPricer, OptionsPricingLSTM
from greekfire.ml.train import resolve_accelerator, resolve_precision


def test_mlp_shapes_and_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    net = MLPPricer(4, hidden=16, layers=3, activation="silu", positive_output=True)
    x = torch.rand(32, 4)
    out = net(x)
    assert out.shape == (32,)
    assert bool((out >= 0).all())  # softplus head
    out.square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name


def test_lstm_shapes_and_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    net = OptionsPricingLSTM(n_seq=5, n_contract=3, proj_dim=8, lstm_hidden=16, lstm_layers=2, attn_heads=4,
                             head_hidden=(12,), dropout=0.0)
    seq, contract = torch.randn(7, 10, 5), torch.randn(7, 3)
    out = net(contract, seq)
    assert out.shape == (7,)
    out.sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
    with pytest.raises(ValueError, match="seq"):
        net(contract)


def test_lstm_output_depends_on_history_and_contract() -> None:
    torch.manual_seed(1)
    net = OptionsPricingLSTM(n_seq=2, n_contract=2, proj_dim=4, lstm_hidden=8, lstm_layers=1, attn_heads=2,
                             head_hidden=(8,)).eval()
    seq, contract = torch.randn(3, 6, 2), torch.randn(3, 2)
    base = net(contract, seq)
    assert not torch.allclose(base, net(contract, seq.flip(1)))
    assert not torch.allclose(base, net(contract + 1.0, seq))


def test_heads_must_divide_hidden() -> None:
    with pytest.raises(ValueError, match="divisible"):
        OptionsPricingLSTM(n_seq=2, n_contract=2, lstm_hidden=10, attn_heads=4)


def test_model_normalizer_standardises_and_keeps_constant_columns_finite() -> None:
    x = torch.stack([torch.linspace(0, 10, 101), torch.full((101,), 3.0)], dim=1)
    sc = Normalizer([], ["moneyness", "ttm"])
    sc.fit_tensors(x)
    z = sc.scale_contract(x)
    assert abs(float(z[:, 0].mean())) < 1e-5 and abs(float(z[:, 0].std(unbiased=False)) - 1) < 1e-4
    assert bool(torch.isfinite(z).all()) and float(z[:, 1].abs().max()) == 0.0
    # saved in checkpoints with the weights, the feature names with them
    assert set(sc.state_dict()) == {"contract_mean", "contract_std", "seq_mean", "seq_std", "_extra_state"}
    assert sc.state_dict()["_extra_state"]["contract_names"] == ["moneyness", "ttm"]


def test_model_normalizer_uses_the_data_layers_rule_for_unit_scale_features() -> None:
    # one class for both: the model's scaler is the data layer's Normalizer, one-hot/cyclical left alone
    x = torch.stack([torch.linspace(0, 10, 101), (torch.arange(101) % 2).float()], dim=1)
    sc = Normalizer([], ["moneyness", "is_call"])
    sc.fit_tensors(x)
    z = sc.scale_contract(x)
    assert torch.equal(z[:, 1], x[:, 1])
    assert abs(float(z[:, 0].std(unbiased=False)) - 1) < 1e-4
    with pytest.raises(DataError, match="feature_names"):
        Normalizer([], ["moneyness"]).fit_tensors(x)
    net = MLPPricer(2, hidden=4, layers=1, contract_names=["moneyness", "is_call"])
    assert isinstance(net.normalizer, Normalizer) and net.normalizer.contract_names == ["moneyness", "is_call"]


def test_normalizer_fit_from_batches_matches_the_fit_on_all_rows() -> None:
    # a streamed training split is fitted batch by batch; the statistics must be those of the whole split
    g = torch.Generator().manual_seed(3)
    contract = torch.randn(1000, 3, generator=g) * torch.tensor([1.0, 5.0, 0.1]) + torch.tensor([0.0, 2.0, -1.0])
    seq = torch.randn(1000, 6, 2, generator=g) * 3.0 + 1.0
    names_c, names_s = ["moneyness", "ttm", "is_put"], ["s0", "s1"]
    whole, batched = Normalizer(names_s, names_c), Normalizer(names_s, names_c)
    whole.fit_tensors(contract, seq)
    batched.fit_batches({"contract": contract[a : a + 96], "seq": seq[a : a + 96]} for a in range(0, 1000, 96))
    for name in ("contract_mean", "contract_std", "seq_mean", "seq_std"):
        torch.testing.assert_close(getattr(batched, name), getattr(whole, name), rtol=1e-5, atol=1e-6)
    assert float(whole.contract_mean[2]) == 0.0 and float(whole.contract_std[2]) == 1.0  # is_put untouched


def _bs_call_over_k(m: float, t: float, r: float, q: float, v: float) -> float:
    d1 = (math.log(m) + (r - q + 0.5 * v * v) * t) / (v * math.sqrt(t))
    d2 = d1 - v * math.sqrt(t)
    n = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))  # noqa: E731
    return m * math.exp(-q * t) * n(d1) - math.exp(-r * t) * n(d2)


def test_paper_samples_lie_in_the_paper_ranges_and_price_like_black_scholes() -> None:
    x, y, names = bs_liu_samples(2000, seed=3)
    assert names == ["moneyness", "ttm", "rate", "vol"]
    lo, hi = x.min(0).values, x.max(0).values
    assert float(lo[0]) >= 0.4 and float(hi[0]) <= 1.6 and float(lo[1]) >= 0.2 and float(hi[1]) <= 1.1
    assert float(lo[2]) >= 0.02 and float(hi[2]) <= 0.1 and float(lo[3]) >= 0.01 and float(hi[3]) <= 1.0
    for i in range(0, 2000, 397):
        m, t, r, v = (float(a) for a in x[i])
        assert float(y[i]) == pytest.approx(_bs_call_over_k(m, t, r, 0.0, v), abs=1e-10)
    xc, yc, names_c = bs_culkin_samples(1000, seed=4)
    assert names_c == ["moneyness", "ttm", "div_yield", "rate", "vol"]
    m, t, q, r, v = (float(a) for a in xc[5])
    assert float(yc[5]) == pytest.approx(_bs_call_over_k(m, t, r, q, v), abs=1e-10)
    assert float(xc[:, 1].max()) <= 3.0 and float(xc[:, 4].min()) >= 0.05


def test_compose_smoke_preset_and_overrides() -> None:
    cfg = compose_experiment("smoke", ["optim.lr=0.01", "trainer.checkpoint_every_n_steps=5"])
    assert cfg.name == "smoke" and cfg.optim.lr == 0.01 and cfg.trainer.checkpoint_every_n_steps == 5
    assert cfg.model.kind == "mlp"


def test_bad_override_names_the_field() -> None:
    with pytest.raises(ConfigErrors) as exc:
        compose_experiment("smoke", ["optim.lr=-1"])
    assert "optim.lr" in str(exc.value)
    with pytest.raises(ConfigErrors) as exc:
        compose_experiment("smoke", ["model.widht=3"])
    assert "model.widht" in str(exc.value)
    with pytest.raises(ConfigError, match="--preset"):
        compose_experiment("no_such_preset")


def test_version_hash_follows_learning_config_and_data_not_run_length() -> None:
    a = compose_experiment("smoke")
    assert config_hash(a, "d1") == config_hash(compose_experiment("smoke", ["trainer.max_epochs=99"]), "d1")
    assert config_hash(a, "d1") != config_hash(compose_experiment("smoke", ["optim.lr=0.5"]), "d1")
    assert config_hash(a, "d1") != config_hash(a, "d2")


def test_sampler_epochs_ranks_and_resume_position() -> None:
    s = ResumableBatchSampler(100, 10, seed=1)
    e0 = list(s)
    s.set_epoch(1)
    e1 = list(s)
    assert len(e0) == 10 and e0 != e1 and sorted(sum(e0, [])) == list(range(100))
    s.position = lambda: (1, 4)
    s.arm_resume()
    assert list(s) == e1[4:]  # resumes at batch 4 of epoch 1
    assert list(s) == e1  # only once
    r0 = ResumableBatchSampler(100, 10, seed=1, num_replicas=2, rank=0)
    r1 = ResumableBatchSampler(100, 10, seed=1, num_replicas=2, rank=1)
    a, b = set(sum(list(r0), [])), set(sum(list(r1), []))
    assert not a & b and len(a) == len(b) == 50


def test_random_source_splits_without_overlap() -> None:
    cfg = compose_experiment("lstm_tiny", ["data.n_samples=500"])
    data = load_pricing_data(cfg.data)
    n = {k: len(getattr(data, k)["target"]) for k in ("train", "val", "test")}
    assert sum(n.values()) == 500 and min(n.values()) > 0
    assert data.window == 8 and data.train["seq"].shape[2] == 3


def test_lstm_residual_form_starts_from_the_baseline_feature() -> None:
    torch.manual_seed(2)
    net = OptionsPricingLSTM(n_seq=2, n_contract=3, proj_dim=4, lstm_hidden=8, lstm_layers=1, attn_heads=2,
                             head_hidden=(8,), baseline_index=2).eval()
    last = net.head[-1]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    contract, seq = torch.rand(5, 3), torch.randn(5, 4, 2)
    torch.testing.assert_close(net(contract, seq), contract[:, 2])


def test_the_trainer_asks_the_gpu_manager_for_its_accelerator() -> None:
    if torch.cuda.is_available():
        assert resolve_accelerator("auto", 1, 0.0)[0] == "gpu"
        assert resolve_accelerator("auto", 1, 10.0**12) == ("cpu", 1)  # no GPU has a petabyte free
    else:
        assert resolve_accelerator("auto", 1, 512.0) == ("cpu", 1)
        assert resolve_precision("auto-mixed", "auto") == "bf16-mixed"
    assert resolve_accelerator("cuda", 2) == ("gpu", 2)
    assert resolve_accelerator("gpu", 1) == ("gpu", 1)
    assert resolve_accelerator("cpu", 3) == ("cpu", 3)
    assert resolve_precision("32", "gpu") == "32"
