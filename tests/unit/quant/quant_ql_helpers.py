"""QuantLib reference prices for the quant tests (QuantLib is a test extra)."""

from __future__ import annotations

import QuantLib as ql

TODAY = ql.Date(15, 6, 2021)
DC = ql.Actual365Fixed()


def _setup() -> None:
    ql.Settings.instance().evaluationDate = TODAY


def bsm_process(spot: float, rate: float, div: float, vol: float) -> ql.BlackScholesMertonProcess:
    _setup()
    rts = ql.YieldTermStructureHandle(ql.FlatForward(TODAY, rate, DC))
    dts = ql.YieldTermStructureHandle(ql.FlatForward(TODAY, div, DC))
    vts = ql.BlackVolTermStructureHandle(ql.BlackConstantVol(TODAY, ql.NullCalendar(), vol, DC))
    return ql.BlackScholesMertonProcess(ql.QuoteHandle(ql.SimpleQuote(spot)), dts, rts, vts)


def option(right: float, strike: float, days: int, american: bool = False) -> ql.VanillaOption:
    _setup()
    payoff = ql.PlainVanillaPayoff(ql.Option.Call if right > 0 else ql.Option.Put, strike)
    ex = ql.AmericanExercise(TODAY, TODAY + days) if american else ql.EuropeanExercise(TODAY + days)
    return ql.VanillaOption(payoff, ex)


def european(right: float, spot: float, strike: float, days: int, rate: float, div: float, vol: float) -> dict[str, float]:
    """QuantLib's analytic European engine: value and the Greeks it has, in its own units."""
    opt = option(right, strike, days)
    opt.setPricingEngine(ql.AnalyticEuropeanEngine(bsm_process(spot, rate, div, vol)))
    return {
        "value": opt.NPV(),
        "delta": opt.delta(),
        "gamma": opt.gamma(),
        "vega": opt.vega(),  # per 1.00 vol
        "theta": opt.theta(),  # per year
        "theta_per_day": opt.thetaPerDay(),
        "rho": opt.rho(),  # per 1.00 rate
        "epsilon": opt.dividendRho(),
    }


def american(right: float, spot: float, strike: float, days: int, rate: float, div: float, vol: float, engine: str,
             steps: int = 200) -> float:
    opt = option(right, strike, days, american=True)
    proc = bsm_process(spot, rate, div, vol)
    if engine == "crr":
        eng = ql.BinomialVanillaEngine(proc, "crr", steps)
    elif engine == "baw":
        eng = ql.BaroneAdesiWhaleyApproximationEngine(proc)
    elif engine == "qdfp_hp":
        eng = ql.QdFpAmericanEngine(proc, ql.QdFpAmericanEngine.highPrecisionScheme())
    elif engine == "qdfp_acc":
        eng = ql.QdFpAmericanEngine(proc, ql.QdFpAmericanEngine.accurateScheme())
    else:
        raise ValueError(engine)
    opt.setPricingEngine(eng)
    return opt.NPV()


def heston(right: float, spot: float, strike: float, days: int, rate: float, div: float, v0: float, kappa: float,
           theta: float, sigma: float, rho: float) -> float:
    _setup()
    rts = ql.YieldTermStructureHandle(ql.FlatForward(TODAY, rate, DC))
    dts = ql.YieldTermStructureHandle(ql.FlatForward(TODAY, div, DC))
    proc = ql.HestonProcess(rts, dts, ql.QuoteHandle(ql.SimpleQuote(spot)), v0, kappa, theta, sigma, rho)
    opt = option(right, strike, days)
    opt.setPricingEngine(ql.AnalyticHestonEngine(ql.HestonModel(proc), 1e-12, 100_000))
    return opt.NPV()
