"""Demo stage "pricing": a synthetic chain priced with Greeks, implied vols recovered, American prices,
portfolio risk. Pure computation (no files)."""

from __future__ import annotations

import time
from typing import Any

import torch

from greekfire.core.settings import Settings
from greekfire.quant.american import american_price
from greekfire.quant.european import bsm_greeks, bsm_price
from greekfire.quant.iv import implied_vol
from greekfire.quant.portfolio import parametric_var, portfolio_greeks


def run_demo(settings: Settings) -> dict[str, Any]:
    """Price a 2-right x 41-strike x 6-expiry chain on a skewed smile and summarise what came out."""
    t0 = time.perf_counter()
    dtype = torch.float64 if settings.quant.dtype == "float64" else torch.float32
    spot, rate, div = 100.0, 0.04, 0.015
    strikes = torch.linspace(60.0, 140.0, 41, dtype=dtype)
    ttms = torch.tensor([7, 30, 60, 91, 182, 365], dtype=dtype) / 365.0
    rights = torch.tensor([1.0, -1.0], dtype=dtype)
    w, K, T = (a.reshape(-1) for a in torch.meshgrid(rights, strikes, ttms, indexing="ij"))
    moneyness = torch.log(K / spot) / torch.sqrt(T)
    smile = 0.2 - 0.05 * moneyness + 0.03 * moneyness**2  # a skewed smile in vol space
    greeks = bsm_greeks(w, spot, K, T, rate, div, smile)
    iv = implied_vol(greeks["value"], w, spot, K, T, rate, div)
    ok = iv.code == 0
    # the repriced value is what an implied vol must reproduce (deep in the money the vol itself is
    # barely determined by the price)
    repriced = bsm_price(w[ok], spot, K[ok], T[ok], rate, div, iv.vol[ok])
    reprice_err = ((repriced - greeks["value"][ok]).abs() / greeks["value"][ok]).max().item()
    amer = american_price(w, spot, K, T, rate, div, smile, model="qdfp")
    premium = (amer - greeks["value"]).max().item()
    qty = torch.where(K == 100.0, 10.0, -1.0).to(dtype)
    book = portfolio_greeks(greeks, qty, 100.0, torch.zeros_like(K, dtype=torch.long), 1)
    var, es = parametric_var(book["delta"] * spot, book["gamma"] * spot * spot, spot, 0.2 / 252**0.5)
    return {
        "options": int(w.numel()),
        "ivs recovered": f"{int(ok.sum())}/{w.numel()}",
        "max reprice error (rel)": f"{reprice_err:.1e}",
        "max early-exercise premium": round(premium, 4),
        "book delta": round(book["delta"].item(), 2),
        "book vega": round(book["vega"].item(), 2),
        "1d 99% VaR / ES": f"{var.item():,.0f} / {es.item():,.0f}",
        "seconds": round(time.perf_counter() - t0, 2),
    }
