"""Peer measurement for bench_engine.py: nautilus_trader's BacktestEngine fed quote ticks, with a strategy
that cancels and re-posts a post-only limit order every ``every`` ticks (most events produce no order, as in
our benchmark), its risk engine on and logging bypassed.

Run it in the peers virtualenv (nautilus_trader pins pandas<3, so it never goes into .venv):

    make peers
    .venv-peers/bin/python benchmarks/peer_nautilus.py 200000

bench_engine.py runs it there by itself (``GREEKFIRE_BENCH_NAUTILUS_PYTHON`` names another interpreter).
It prints one line:
``RESULT events=... seconds=... events_per_s=... orders=... version=...``.
"""

import random
import sys
import time

import nautilus_trader
from nautilus_trader.backtest.engine import BacktestEngine, BacktestEngineConfig
from nautilus_trader.config import LoggingConfig, RiskEngineConfig, StrategyConfig
from nautilus_trader.model.currencies import USD
from nautilus_trader.model.data import QuoteTick
from nautilus_trader.model.enums import AccountType, OmsType, OrderSide
from nautilus_trader.model.identifiers import InstrumentId, Venue
from nautilus_trader.model.objects import Money
from nautilus_trader.test_kit.providers import TestInstrumentProvider
from nautilus_trader.trading.strategy import Strategy


class RequoteConfig(StrategyConfig, frozen=True):
    instrument_id: str
    every: int = 40


class Requote(Strategy):
    def __init__(self, config: RequoteConfig) -> None:
        super().__init__(config)
        self.n = 0
        self.sent = 0

    def on_start(self) -> None:
        self.iid = InstrumentId.from_str(self.config.instrument_id)
        self.instrument = self.cache.instrument(self.iid)
        self.subscribe_quote_ticks(self.iid)

    def on_quote_tick(self, tick: QuoteTick) -> None:
        self.n += 1
        if self.n % self.config.every == 0:
            self.cancel_all_orders(self.iid)
            px = self.instrument.make_price(float(tick.bid_price) - 0.05)
            order = self.order_factory.limit(self.iid, OrderSide.BUY, self.instrument.make_qty(1), px, post_only=True)
            self.submit_order(order)
            self.sent += 1


def main(n: int) -> None:
    engine = BacktestEngine(BacktestEngineConfig(logging=LoggingConfig(bypass_logging=True), risk_engine=RiskEngineConfig(bypass=False)))
    venue = Venue("XNAS")
    engine.add_venue(venue=venue, oms_type=OmsType.NETTING, account_type=AccountType.CASH, base_currency=USD,
                     starting_balances=[Money(10_000_000, USD)])
    inst = TestInstrumentProvider.equity("AAPL", "XNAS")
    engine.add_instrument(inst)
    rng = random.Random(1)
    mid = 100.0
    ticks = []
    t0 = 1_700_000_000_000_000_000
    for k in range(n):
        mid += rng.choice((-0.01, 0.0, 0.01))
        ticks.append(QuoteTick(inst.id, inst.make_price(mid - 0.01), inst.make_price(mid + 0.01),
                               inst.make_qty(rng.randint(1, 50)), inst.make_qty(rng.randint(1, 50)), t0 + k * 1000, t0 + k * 1000))
    engine.add_data(ticks)
    strat = Requote(RequoteConfig(instrument_id=str(inst.id)))
    engine.add_strategy(strat)
    t = time.perf_counter()
    engine.run()
    el = time.perf_counter() - t
    print(f"RESULT events={n} seconds={el:.3f} events_per_s={n / el:.0f} orders={strat.sent} "
          f"version={nautilus_trader.__version__}")
    engine.dispose()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200_000)
