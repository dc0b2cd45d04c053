"""The fused (torch.compile) kernels give the eager kernels' answers: prices, Greeks and implied vols.

Large batches take the compiled path by default; here it is forced on a small grid of extreme cases so
the suite checks it without pricing a million options.
"""

from __future__ import annotations

import math

import torch

from greekfire.quant import bsm_greeks, bsm_price, implied_vol


def _grid() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(11)
    n = 4096
    spot = torch.full((n,), 100.0, dtype=torch.float64)
    ttm = torch.exp(torch.empty(n, dtype=torch.float64).uniform_(torch.log(torch.tensor(1 / 365)).item(), 2.3, generator=g))
    vol = torch.exp(torch.empty(n, dtype=torch.float64).uniform_(-4.6, 1.6, generator=g))  # 1% .. 500%
    z = torch.empty(n, dtype=torch.float64).uniform_(-5, 5, generator=g)  # standard deviations of moneyness
    strike = spot * torch.exp(z * vol * torch.sqrt(ttm))
    rate = torch.empty(n, dtype=torch.float64).uniform_(-0.01, 0.08, generator=g)
    div = torch.empty(n, dtype=torch.float64).uniform_(0.0, 0.04, generator=g)
    right = torch.where(torch.rand(n, generator=g) < 0.5, 1.0, -1.0).to(torch.float64)
    return right, spot, strike, ttm, rate, div, vol


def test_compiled_greeks_equal_eager() -> None:
    args = _grid()
    eager = bsm_greeks(*args, compile=False)
    fused = bsm_greeks(*args, compile=True)
    for k, v in eager.items():
        scale = v.abs().clamp_min(1e-12 * 100.0)
        assert torch.all((fused[k] - v).abs() / scale < 1e-9), k
    # the fused value (textbook, far out-of-the-money rows repriced) against the fused accurate price
    price = bsm_price(*args, compile=True)
    assert ((fused["value"] - price).abs() / price.abs().clamp_min(1e-300)).max() < 2e-11


def test_compiled_implied_vol_reprices_and_matches_eager() -> None:
    right, spot, strike, ttm, rate, div, vol = _grid()
    price = bsm_price(right, spot, strike, ttm, rate, div, vol)
    eager = implied_vol(price, right, spot, strike, ttm, rate, div, compile=False)
    fused = implied_vol(price, right, spot, strike, ttm, rate, div, compile=True)
    assert torch.equal(eager.code, fused.code)
    ok = fused.code == 0
    assert ok.float().mean() > 0.9  # most of the grid has time value worth solving
    repriced = bsm_price(right[ok], spot[ok], strike[ok], ttm[ok], rate[ok], div[ok], fused.vol[ok])
    rel = (repriced - price[ok]).abs() / price[ok]
    assert rel.max() < 1e-12
    # where the price says something about vol (price elasticity to vol not tiny), the vols agree too;
    # elsewhere many vols reprice to the same 1e-12 and only the repricing test above is meaningful
    vega = bsm_greeks(right, spot, strike, ttm, rate, div, vol)["vega"]
    informative = ok & (vega * vol / price > 1e-2)
    assert informative.sum() > 1000
    assert torch.allclose(fused.vol[informative], eager.vol[informative], rtol=1e-8, atol=0)


def test_vectorisable_normal_quantile_matches_the_library() -> None:
    """The compiled kernels' starting guesses use ndtri_lower: within 1.2e-9 of ndtri from 1e-300 to 1/2,
    and 0 (not NaN) above 1/2, as the guesses expect."""
    from greekfire.quant._tensors import ndtri_lower

    p = torch.cat([torch.logspace(-300, -1, 20_000, dtype=torch.float64),
                   torch.linspace(0.02, 0.5, 20_000, dtype=torch.float64)])
    ref = torch.special.ndtri(p)
    got = ndtri_lower(p)
    rel = ((got - ref).abs() / ref.abs().clamp(min=1e-300))[p < 0.5]
    assert rel.max().item() < 1.2e-9
    assert (got[p == 0.5] == 0).all()
    assert torch.equal(ndtri_lower(torch.tensor([0.7, 1.0], dtype=torch.float64)), torch.zeros(2, dtype=torch.float64))
    assert torch.isfinite(ndtri_lower(torch.tensor([0.0], dtype=torch.float64))).all()


def test_price_at_the_inflection_point_is_the_general_price_there() -> None:
    from greekfire.quant._black import log_otm_price_at_inflection, otm_parts

    # |x| from 1e-12 to 100 (the small-t series, the crossover at t = SMALL_T, far wings) and x = 0
    x = torch.cat([-torch.logspace(-12, 2, 4001, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])
    s_c = torch.sqrt(-2.0 * x)
    general = torch.log(otm_parts(x, torch.where(s_c > 0, s_c, torch.ones_like(s_c)))[0])
    for fn in (log_otm_price_at_inflection, torch.compile(log_otm_price_at_inflection, dynamic=True)):
        got = fn(x)
        assert got[-1].item() == -math.inf
        assert ((got - general).abs() / general.abs().clamp(min=1.0))[:-1].max().item() < 1e-13
        # float32 (the implied-vol start) keeps float32 accuracy, in log space far past float32's underflow
        got32 = fn(x.float()).double()
        assert ((got32 - general).abs() / general.abs().clamp(min=1.0))[:-1].max().item() < 1e-6


def test_log_objective_matches_the_direct_price_and_holds_in_float32() -> None:
    """``otm_log_objective`` is ``ln b`` / ``ln(b_max - b)`` and its s-derivative, on both sides of the
    inflection point and in the small-t series; in float32 it stays finite (and close) where ``b`` itself
    underflows float32."""
    from greekfire.quant._black import otm_log_objective, otm_parts

    x, s = (a.reshape(-1) for a in torch.meshgrid(
        -torch.logspace(-6, 1.5, 60, dtype=torch.float64), torch.logspace(-3, 1, 60, dtype=torch.float64),
        indexing="ij"))
    b, c, db = otm_parts(x, s)
    b_max = torch.exp(0.5 * x)
    for objective, g, dg in ((1.0, b, db), (-1.0, c, -db)):
        obj = torch.full_like(x, objective)
        sel = (g > 1e-300) & (g < 0.999 * b_max) if objective > 0 else (g > 1e-300) & (b > 1e-3 * b_max)
        for fn in (otm_log_objective, torch.compile(otm_log_objective, dynamic=True)):
            ln_g, rr = fn(x, s, b_max, obj)
            want = torch.log(g)
            assert ((ln_g - want).abs() / want.abs().clamp(min=1.0))[sel].max().item() < 1e-11
            assert ((rr - dg / g).abs() / (dg / g).abs())[sel].max().item() < 1e-9
            ln32, rr32 = fn(x.float(), s.float(), b_max.float(), obj.float())
            deep = sel & (want < -100.0)  # b under float32's smallest normal number
            if objective > 0:
                assert deep.sum() > 100
            assert torch.isfinite(ln32[sel]).all()
            assert ((ln32.double() - want).abs() / want.abs().clamp(min=1.0))[sel].max().item() < 1e-5
