"""Black-Scholes-Merton Greeks for a handful of options in plain float math (no tensors).

A tensor call costs a fixed few hundred microseconds of dispatch whatever its size; for a chain of a few
dozen options, as a trading engine revalues on every underlying move, the closed form in Python floats is
about 3 us an option. Same formulas and units as :func:`greekfire.quant.european.bsm_greeks`, which stays
the reference (the tests compare the two) and handles the edge cases (zero time or vol, bad input).
"""

from __future__ import annotations

import math

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def bsm_greeks_scalar(
    rights: list[float], spot: float, strikes: list[float], ttms: list[float], rate: float, div_yield: float,
    vols: list[float],
) -> list[tuple[float, float, float, float]] | None:
    """(delta, gamma, vega, theta) of one unit of each European option by the Black-Scholes-Merton closed
    form in plain float math, for a few options at a time: the formulas and units of ``bsm_greeks``
    (delta per 1.00 of spot, gamma per 1.00 of spot squared, vega per 1.00 vol, theta per year; ``ttms``
    in years, ``rate`` and ``div_yield`` continuously compounded, ``vols`` annualised, ``rights`` +1.0
    call / -1.0 put).

    Returns None when any input is outside the plain domain (spot, strike, time or vol not finite and > 0,
    a right other than +/-1): the caller then uses :func:`bsm_greeks`, which defines those edge cases."""
    if not (0.0 < spot < math.inf and math.isfinite(rate) and math.isfinite(div_yield)):
        return None
    exp, log, sqrt, erfc = math.exp, math.log, math.sqrt, math.erfc
    out = []
    for w, k, t, v in zip(rights, strikes, ttms, vols, strict=True):
        if not (0.0 < k < math.inf and 0.0 < t < math.inf and 0.0 < v < math.inf and (w == 1.0 or w == -1.0)):
            return None
        sqrt_t = sqrt(t)
        sd = v * sqrt_t
        dq = exp(-div_yield * t)
        ln_fk = log(spot / k) + (rate - div_yield) * t
        d1 = ln_fk / sd + 0.5 * sd
        n1 = 0.5 * erfc(-w * d1 * _INV_SQRT2)
        n2 = 0.5 * erfc(-w * (d1 - sd) * _INV_SQRT2)
        pdf = exp(-0.5 * d1 * d1) * _INV_SQRT_2PI
        sdq = spot * dq
        out.append((
            w * dq * n1,
            dq * pdf / (spot * sd),
            sdq * pdf * sqrt_t,
            -sdq * pdf * v / (2.0 * sqrt_t) - w * rate * k * exp(-rate * t) * n2 + w * div_yield * sdq * n1,
        ))
    return out
