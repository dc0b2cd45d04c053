"""The built-in pricing engines, registered by name: each wraps the pricing functions of its module (the
numbers are theirs to the bit) behind the registry's one call signature.

| name | wraps |
|---|---|
| ``bsm`` | :func:`bsm_price`, :func:`bsm_greeks`, :func:`implied_vol` |
| ``black76`` | :func:`black76_price`, :func:`black76_greeks` (``spot`` is the forward; implied vol on the forward) |
| ``heston`` | :func:`heston_price` (Black-Scholes implied vols, the market's quoting convention) |
| ``mc`` | :func:`mc_european` (value and its standard error) |
| ``qdfp``, ``crr``, ``baw``, ``bs2002`` | the American engines, Greeks by :func:`bump_greeks`, implied vols by :func:`american_inversion` |
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from greekfire.quant.american import (
    BUMP_GREEKS,
    american_inversion,
    baw_price,
    bs2002_price,
    bump_greeks,
    crr_price,
)
from greekfire.quant.european import GREEK_NAMES, black76_greeks, black76_price, bsm_greeks, bsm_price
from greekfire.quant.heston import heston_price
from greekfire.quant.iv import IVResult, implied_vol
from greekfire.quant.montecarlo import mc_european
from greekfire.quant.qdfp import qdfp_price
from greekfire.quant.registry import Capabilities, MarketInputs, OptionBatch, register_engine

HESTON_PARAMS = ("v0", "kappa", "theta", "sigma", "rho")
AMERICAN_IV_OPTIONS = ("iv_evaluations", "iv_rtol")


def _renamed(options: Mapping[str, Any], **names: str) -> dict[str, Any]:
    """The ``options`` given among ``names`` (engine option -> keyword of the wrapped function), renamed, so
    that a missing option leaves the wrapped function's own default."""
    return {kw: options[opt] for opt, kw in names.items() if opt in options}


# ---------------------------------------------------------------------------------------------------
# European, closed form
def _bsm_iv(batch: OptionBatch, market: MarketInputs, options: Mapping[str, Any]) -> IVResult:
    return implied_vol(market.require_price(), batch.right, market.spot, batch.strike, batch.ttm, market.rate, market.div_yield,
                       **_renamed(options, iv_iterations="iterations", compile="compile"))


@register_engine(
    "bsm",
    Capabilities(outputs=GREEK_NAMES, greeks="analytic", implied_vol="bsm", options=("compile", "iv_iterations")),
    implied_vol=_bsm_iv,
)
def _bsm(batch: OptionBatch, market: MarketInputs, outputs: tuple[str, ...], options: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Black-Scholes-Merton, closed form"""
    args = (batch.right, market.spot, batch.strike, batch.ttm, market.rate, market.div_yield, market.require_vol())
    kw = _renamed(options, compile="compile")
    if outputs == ("value",):
        return {"value": bsm_price(*args, **kw)}
    return bsm_greeks(*args, names=outputs, **kw)


def _black76_iv(batch: OptionBatch, market: MarketInputs, options: Mapping[str, Any]) -> IVResult:
    # Black-76 on the forward F is Black-Scholes-Merton on spot F with the yield equal to the rate
    return implied_vol(market.require_price(), batch.right, market.spot, batch.strike, batch.ttm, market.rate, market.rate,
                       **_renamed(options, iv_iterations="iterations", compile="compile"))


@register_engine(
    "black76",
    Capabilities(outputs=GREEK_NAMES, greeks="analytic", implied_vol="black76", options=("compile", "iv_iterations")),
    implied_vol=_black76_iv,
)
def _black76(batch: OptionBatch, market: MarketInputs, outputs: tuple[str, ...], options: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Black-76 on a forward (spot is the forward), closed form"""
    args = (batch.right, market.spot, batch.strike, batch.ttm, market.rate, market.require_vol())
    kw = _renamed(options, compile="compile")
    if outputs == ("value",):
        return {"value": black76_price(*args, **kw)}
    return black76_greeks(*args, names=outputs, **kw)


@register_engine(
    "heston",
    Capabilities(implied_vol="bsm", inputs=HESTON_PARAMS, options=("nodes",)),
)
def _heston(batch: OptionBatch, market: MarketInputs, outputs: tuple[str, ...], options: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Heston stochastic vol, Fourier integral (Lewis)"""
    p = market.params
    value = heston_price(batch.right, market.spot, batch.strike, batch.ttm, market.rate, market.div_yield,
                         *(p[name] for name in HESTON_PARAMS), **_renamed(options, nodes="nodes"))
    return {"value": value}


@register_engine(
    "mc",
    Capabilities(outputs=("value", "stderr"), implied_vol="bsm", options=("n_paths", "seed", "antithetic"),
                 max_batch=64),
)
def _mc(batch: OptionBatch, market: MarketInputs, outputs: tuple[str, ...], options: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Monte Carlo on the exact log-normal law, with standard errors"""
    res = mc_european(batch.right, market.spot, batch.strike, batch.ttm, market.rate, market.div_yield, market.require_vol(),
                      **_renamed(options, n_paths="n_paths", seed="seed", antithetic="antithetic"))
    both = {"value": res.price, "stderr": res.stderr}
    return {k: both[k] for k in outputs}


# ---------------------------------------------------------------------------------------------------
# American
def _register_american(
    name: str, summary: str, value_fn: Callable[..., torch.Tensor], takes: tuple[str, ...],
    bumps: tuple[float, float, float] = (1e-3, 1e-4, 1e-5), outputs: tuple[str, ...] = BUMP_GREEKS,
) -> None:
    """Register an American engine pricing with ``value_fn(w, S, K, T, r, q, vol, **options)`` (the options
    it ``takes``); ``bumps``: (relative spot, vol, rate) bumps of its Greeks; ``outputs``: those it gives."""

    def compute(batch: OptionBatch, market: MarketInputs, outputs: tuple[str, ...], options: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        kw = {k: v for k, v in options.items() if k in takes}
        args = (batch.right, market.spot, batch.strike, batch.ttm, market.rate, market.div_yield, market.require_vol())
        if outputs == ("value",):
            return {"value": value_fn(*args, **kw)}

        def value(*a: torch.Tensor) -> torch.Tensor:
            return value_fn(*a, **kw)

        return bump_greeks(value, *args, spot_bump=bumps[0], vol_bump=bumps[1], rate_bump=bumps[2],
                           names=outputs)

    caps = Capabilities(outputs=outputs, greeks="bump", implied_vol=name, styles=("american",),
                        options=(*takes, *AMERICAN_IV_OPTIONS))
    register_engine(name, caps, summary=summary, implied_vol=american_inversion(value_fn))(compute)


def _crr(*args: torch.Tensor, steps: int = 200) -> torch.Tensor:
    return crr_price(*args, steps=steps)


_register_american("qdfp", "Andersen-Lake-Offengenden fixed point (the default American engine)", qdfp_price,
                   ("scheme", "compile"))
# a tree needs bumps wider than its node spacing, and its price jumps as nodes cross the strike: second
# differences in vol and time (volga, vanna, charm) are noise there (volga off by thousands), so it gives none
_register_american("crr", "Cox-Ross-Rubinstein binomial tree", _crr, ("steps",), bumps=(0.02, 1e-3, 1e-4),
                   outputs=tuple(n for n in BUMP_GREEKS if n not in ("vanna", "volga", "charm")))
_register_american("baw", "Barone-Adesi-Whaley quadratic approximation", baw_price, ("iterations",))
_register_american("bs2002", "Bjerksund-Stensland (2002)", bs2002_price, ())

DEFAULT_ENGINES = {"european": "bsm", "american": "qdfp"}
"""The engine a caller gets for each style when it names none."""
