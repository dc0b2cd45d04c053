"""The normalised Black price of an out-of-the-money option, accurate far in the wings.

With ``x = ln(F/K) <= 0`` and total vol ``s = vol * sqrt(ttm)``, the undiscounted out-of-the-money price
divided by ``sqrt(F K)`` is ``b(x, s) = exp(x/2) N(x/s + s/2) - exp(-x/2) N(x/s - s/2)``. Written that way
its two terms cancel when the option is far out of the money; below the inflection point ``s^2 < 2|x|``
we use the scaled complementary error function instead, which keeps full relative accuracy:
``b = 1/2 exp(-(h^2 + t^2)/2) (erfcx(-(h+t)/sqrt2) - erfcx(-(h-t)/sqrt2))`` with ``h = x/s``, ``t = s/2``.
Above it, ``b = b_max - c`` where the gap to the cap ``c`` is a sum of two positive tails.
"""

from __future__ import annotations

import torch

from greekfire.quant._tensors import INV_SQRT_2, INV_SQRT_2PI, SQRT_2PI, norm_cdf

SMALL_T = 0.21  # below this half total vol the Taylor series in t is summed (truncation < 1e-15)
LARGE_H = 10.0  # ... as long as |x|/s stays below this (its coefficients cancel beyond)

# Chebyshev coefficients of g(u) = (1 + 2y) erfcx(y) on u = (y - 3.75) / (y + 3.75) in [-1, 1] for y >= 0,
# fitted here by projection at 120 Chebyshev nodes with 40-digit mpmath; the mapping sends y -> inf to
# u = 1, where g tends smoothly to 2 / sqrt(pi), and the coefficients fall below 1e-17 after 25 terms
_ERFCX_MAP = 3.75
_ERFCX_CHEB = (
    1.1775789345674017, -0.004590054580646478, -0.08424913336651792, 0.05920993999819189,
    -0.026658668435305753, 0.009074997670705265, -0.002413163540417608, 0.0004907758365258086,
    -6.916973302501207e-05, 4.13902798607301e-06, 7.74038306619849e-07, -2.1886401049234397e-07,
    1.076499946567091e-08, 4.521959811218287e-09, -7.754400208831351e-10, -6.318088340886684e-11,
    2.86879501093067e-11, 1.9455868545777347e-13, -9.65469674843344e-13, 3.25254814814874e-14,
    3.3478119482868056e-14, -1.864562880419313e-15, -1.2507950530688648e-15, 7.418235256624043e-17,
    5.068148904796111e-17, -2.237056659436e-18,
)
_ERFCX_TERMS_F32 = 13  # the terms after these sum to under 1e-8 (float32 rounds at 6e-8)


def erfcx_nonneg(y: torch.Tensor) -> torch.Tensor:
    """Scaled complementary error function ``exp(y^2) erfc(y)`` for ``y >= 0`` from arithmetic only.

    ``torch.special.erfcx`` is a scalar call that inductor cannot vectorise (about 20 ns an element on
    one core, most of the implied-vol step); this Chebyshev sum (Clenshaw) fuses and vectorises, with
    the same accuracy (a few units in the last place; in float32 the first 13 terms, whose tail is under
    float32 rounding). Used inside compiled kernels only: eager, its 50 elementwise passes would cost more
    than the library call.
    """
    u = 1.0 - 2.0 * _ERFCX_MAP / (y + _ERFCX_MAP)  # (y - k) / (y + k); tends to 1 (not NaN) as y -> inf
    two_u = 2.0 * u
    b1 = torch.zeros_like(y)
    b2 = torch.zeros_like(y)
    coefs = _ERFCX_CHEB if y.dtype != torch.float32 else _ERFCX_CHEB[:_ERFCX_TERMS_F32]
    for coef in coefs[:0:-1]:
        b1, b2 = two_u * b1 - b2 + coef, b1
    return (u * b1 - b2 + _ERFCX_CHEB[0]) / (1.0 + 2.0 * y)


def _erfcx(y: torch.Tensor) -> torch.Tensor:
    """``erfcx`` for ``y >= 0``: the vectorisable sum when traced by torch.compile, the library call eager."""
    if torch.compiler.is_compiling():
        return erfcx_nonneg(y)
    return torch.special.erfcx(y)


def norm_cdf_given_density(z: torch.Tensor, density: torch.Tensor | None = None) -> torch.Tensor:
    """Standard normal CDF ``N(z)`` with full relative accuracy in the left tail; ``density`` is
    ``exp(-z^2/2)`` where the caller has it already (e.g. for the normal density).

    Compiled, ``N(z) = exp(-z^2/2) erfcx(|z|/sqrt2) / 2`` (reflected for ``z > 0``) from the Chebyshev
    ``erfcx``: Sleef's vectorised ``erfc`` costs about 10 ns an element, several times this sum plus
    an ``exp`` that is often shared. Eager, the library's ``erfc`` (see :func:`norm_cdf`), which is
    the faster one there. Both keep about 1e-13 relative at ``z = -37``, the limit the rounding of ``z``
    allows.
    """
    if not torch.compiler.is_compiling():
        return norm_cdf(z)
    e = torch.exp(-0.5 * z * z) if density is None else density
    tail = 0.5 * e * erfcx_nonneg(z.abs() * INV_SQRT_2)
    return torch.where(z < 0, tail, 1.0 - tail)


def _small_t_series(h: torch.Tensor, t: torch.Tensor, e1: torch.Tensor) -> torch.Tensor:
    """``b`` for a small total vol, where the two tails cancel as t -> 0: the Taylor series in t,
    ``b = 2 phi(h) sum_{n odd} t^n (h^n Y(h) + P_n(h)) / n!`` with the Mills ratio ``Y = N(h) / phi(h)``,
    given ``e1 = erfcx(-h / sqrt2)`` (so ``Y = e1 sqrt(2 pi) / 2``)."""
    return 2.0 * torch.exp(-0.5 * h * h) * INV_SQRT_2PI * _small_t_sum(h, t, e1)


def _small_t_sum(h: torch.Tensor, t: torch.Tensor, e1: torch.Tensor) -> torch.Tensor:
    """The sum of :func:`_small_t_series` without its prefactor ``2 phi(h)`` (positive)."""
    mills = 0.5 * e1 * SQRT_2PI
    h2 = h * h
    t2 = t * t
    # P_n(h) for n = 1, 3, ..., 11, and h^n Y
    p_n = (
        torch.ones_like(h),
        h2 - 1.0,
        h2 * h2 - h2 + 3.0,
        h2 * (h2 * h2 - h2 + 3.0) - 15.0,
        h2 * (h2 * (h2 * h2 - h2 + 3.0) - 15.0) + 105.0,
        h2 * (h2 * (h2 * (h2 * h2 - h2 + 3.0) - 15.0) + 105.0) - 945.0,
    )
    series = torch.zeros_like(h)
    hn_y = h * mills
    tn = t
    for k, (p, fact) in enumerate(zip(p_n, (1.0, 6.0, 120.0, 5040.0, 362880.0, 39916800.0), strict=True)):
        if k:
            hn_y = hn_y * h2
            tn = tn * t2
        series = series + tn * (hn_y + p) / fact
    return series


def _scaled_tails(x: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``h = x/s``, ``t = s/2``, the small-t mask and the two scaled tails ``e1``, ``e2`` (``erfcx``) that
    every form of ``b`` here is written on (slot 1 holds the Mills-ratio argument where the series is summed)."""
    h = x / s
    t = 0.5 * s
    # (t < SMALL_T) and (h > -LARGE_H or h t > -1/2), as one blend: inductor vectorises blends but
    # lowers and/or of masks to scalar code
    small_t = torch.where(t < SMALL_T, torch.maximum(h + LARGE_H, h * t + 0.5), -1.0) > 0
    e1 = _erfcx(torch.where(small_t, -h, (h + t).abs()) * INV_SQRT_2)
    e2 = _erfcx((t - h) * INV_SQRT_2)
    return h, t, small_t, e1, e2


def _parts(x: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``b``, ``c`` and the scale ``exp(-(h^2 + t^2)/2)`` with two ``erfcx`` calls per element.

    Every branch is written on the same two scaled tails: with ``h t = x / 2``,
    ``exp(x/2) N(-(h+t)) = scale erfcx((h+t)/sqrt2) / 2`` and ``exp(-x/2) N(h-t) = scale erfcx((t-h)/sqrt2) / 2``.
    """
    h, t, small_t, e1, e2 = _scaled_tails(x, s)
    lower = h + t < 0
    h2 = h * h
    scale = torch.exp(-0.5 * (h2 + t * t))
    b_max = torch.exp(0.5 * x)
    # below the inflection point: the difference of the two positive scaled tails keeps relative accuracy
    b_low = 0.5 * scale * (e1 - e2)
    # above it: the gap to the cap is the sum of the two tails (no cancellation); b = cap - gap loses
    # under a digit there, outside the small-t region
    c_up = 0.5 * scale * (e1 + e2)
    b_up = b_max - c_up
    b_series = _small_t_series(h, t, e1)
    b = torch.where(small_t, b_series, torch.where(lower, b_low, b_up))
    c = torch.where(small_t, b_max - b, torch.where(lower, b_max - b, c_up))
    return b, c, scale


def otm_price(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Normalised out-of-the-money price ``b(x, s)`` for ``x <= 0``, ``s > 0`` (full relative accuracy)."""
    return _parts(x, s)[0]


def otm_parts(x: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For ``x <= 0`` and ``s > 0``: the normalised OTM price ``b``, its gap to the cap
    ``c = exp(x/2) - b`` and ``db/ds`` (the normalised vega)."""
    b, c, scale = _parts(x, s)
    return b, c, scale * INV_SQRT_2PI


def otm_log_objective(
    x: torch.Tensor, s: torch.Tensor, b_max: torch.Tensor, objective: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The implied-vol objective in log space, for ``x <= 0``, ``s > 0``: ``(ln g, d ln g / ds)`` with
    ``g = b`` where ``objective`` is +1, and the gap to the cap ``g = c = b_max - b`` where it is -1
    (``b_max = exp(x/2)``).

    Unlike :func:`otm_parts` nothing underflows: ``ln b`` is formed as ``-(h^2 + t^2)/2 + ln((e1 - e2)/2)``
    (or the series' ``-h^2/2 + ln(2 sum / sqrt(2 pi))``), so it holds in float32 where ``b`` itself would
    be below the smallest float (``ln b < -87``). One ``exp``, one ``log`` and two ``erfcx`` an element;
    the other side of the cap (``b`` above the inflection point, ``c`` below it) by subtraction.
    """
    h, t, small_t, e1, e2 = _scaled_tails(x, s)
    # +1 where b is a scaled mantissa (below the inflection point, or the series), -1 where c is
    low_or_small = torch.where(h + t < 0, 1.0, torch.where(small_t, 1.0, -1.0))
    h2 = h * h
    t2 = t * t
    ln_scale = -0.5 * (h2 + t2)
    # b = exp(b_off) b_mant where low_or_small; c = exp(ln_scale) c_mant elsewhere
    b_off = torch.where(small_t, -0.5 * h2, ln_scale)
    b_mant = torch.where(small_t, 2.0 * INV_SQRT_2PI * _small_t_sum(h, t, e1), 0.5 * (e1 - e2))
    c_mant = 0.5 * (e1 + e2)
    direct = objective * low_or_small > 0  # g is the scaled mantissa itself, not b_max minus the other
    e = torch.exp(torch.where(low_or_small > 0, b_off, ln_scale))
    log_b = objective > 0
    mant = torch.where(
        direct, torch.where(log_b, b_mant, c_mant), b_max - e * torch.where(log_b, c_mant, b_mant)
    )
    ln_g = torch.log(mant) + torch.where(direct, torch.where(log_b, b_off, ln_scale), 0.0)
    # d b / d s = exp(ln_scale) / sqrt(2 pi); where b_off = -h^2/2 that is e exp(-t^2/2) / sqrt(2 pi), the
    # last factor by its Taylor polynomial (t^2 / 2 < 0.023 there: the error is under 1e-16)
    z = 0.5 * t2
    exp_neg_z = 1.0 - z * (1.0 - z * (0.5 - z * (1.0 / 6.0 - z * (1.0 / 24.0 - z * (1.0 / 120.0 - z / 720.0)))))
    vega_factor = torch.where(small_t, exp_neg_z, 1.0) * INV_SQRT_2PI
    rr = torch.where(direct, vega_factor / mant, vega_factor * e / mant)
    return ln_g, objective * rr


def log_otm_price_at_inflection(x: torch.Tensor) -> torch.Tensor:
    """``ln b(x, s_c)`` at the inflection point ``s_c = sqrt(-2x)`` (``x <= 0``) with one ``erfcx`` call from
    the scaled tails: there ``h = -t``, so one tail is ``erfcx(0) = 1`` and the scale is ``exp(x/2)``, giving
    ``b = exp(x/2) (1 - erfcx(sqrt2 t)) / 2`` (the series in t below ``SMALL_T``); in log space, so float32
    holds far from the money. ``-inf`` at ``x = 0``."""
    t = 0.5 * torch.sqrt(-2.0 * x)
    small_t = t < SMALL_T
    e = _erfcx(torch.where(small_t, t * INV_SQRT_2, t * (2.0 * INV_SQRT_2)))
    mant = torch.where(small_t, 2.0 * INV_SQRT_2PI * _small_t_sum(-t, t, e), 0.5 * (1.0 - e))
    return torch.log(mant) + torch.where(small_t, -0.5 * t * t, 0.5 * x)
