"""Start, stop and re-parameterise the engine's strategies while the trading API serves it."""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import HTTPException

from greekfire.api.trading_models import unprocessable
from greekfire.core.errors import ConfigError, DataError
from greekfire.trading.engine import TradingEngine
from greekfire.trading.strategy import Strategy

log = logging.getLogger(__name__)

_HOOKS = (("quotes.*", "on_quote"), ("trades.*", "on_trade"), ("books.*", "on_book"), ("timers", "on_timer"))


class StrategyControl:
    """Start, stop and re-parameterise the engine's strategies while it runs.

    Stopping a strategy leaves the bus (its hooks no longer hear anything), cancels its timers and its open
    orders and calls its ``on_stop``. Starting one attaches a fresh instance built from its class and
    parameters (so it starts from a clean state) and calls its ``on_start``. Parameters are the strategy's
    public scalar attributes (int, float, bool, str); a change is checked by building a new instance with it
    (its constructor's checks apply) and then set on the running one.
    """

    def __init__(self, engine: TradingEngine) -> None:
        self.engine = engine
        self.running: dict[str, bool] = {s.name: True for s in engine.strategies}  # they start with the engine

    def get(self, name: str) -> Strategy:
        """The strategy called ``name``; HTTP 404 when there is none."""
        for s in self.engine.strategies:
            if s.name == name:
                return s
        raise HTTPException(404, f"no strategy {name!r} (have: {', '.join(self.running) or 'none'})")

    @staticmethod
    def parameters(s: Strategy) -> dict[str, Any]:
        """Public scalar attributes of a strategy: what GET/PUT .../parameters show and change."""
        return {k: v for k, v in vars(s).items()
                if not k.startswith("_") and k not in ("name", "ctx", "params")
                and isinstance(v, bool | int | float | str) and not (isinstance(v, float) and not math.isfinite(v))}

    def describe(self, s: Strategy) -> dict[str, Any]:
        cls = type(s)
        return {"name": s.name, "cls": f"{cls.__module__}:{cls.__qualname__}", "running": self.running.get(s.name, False),
                "parameters": self.parameters(s)}

    def _isolated(self, s: Strategy, hook: str) -> None:
        try:
            getattr(s, hook)()
        except Exception:  # a strategy's own bug must not fail the request that stopped or started it
            self.engine.bus.errors[f"strategy:{s.name}"] += 1
            log.exception("strategy %s failed in %s", s.name, hook)

    def stop(self, name: str) -> dict[str, Any]:
        """Detach ``name`` from the engine (idempotent); returns its description plus ``canceled`` orders."""
        s = self.get(name)
        n = 0
        if self.running.get(name):
            eng, owner = self.engine, f"strategy:{name}"
            for topic, hook in (*_HOOKS, (f"fills.{name}", "on_fill")):
                eng.bus.unsubscribe(topic, getattr(s, hook))
            for _due, tid, who, _fn, _every in list(eng.timers.heap):
                if who == owner:
                    eng.timers.cancel(tid)
            n = eng.cancel_all(strategy_id=name)
            self._isolated(s, "on_stop")
            self.running[name] = False
        return {**self.describe(s), "canceled": n}

    def start(self, name: str) -> dict[str, Any]:
        """Attach a fresh instance of ``name`` (idempotent: a running one is left as it is)."""
        s = self.get(name)
        if not self.running.get(name):
            fresh = type(s)(name=s.name, **s.params)
            idx = self.engine.strategies.index(s)
            self.engine.strategies.pop(idx)
            self.engine.add_strategy(fresh)  # appended, subscribed, given its context
            self.engine.strategies.insert(idx, self.engine.strategies.pop())
            self.running[name] = True
            self._isolated(fresh, "on_start")
            s = fresh
        return {**self.describe(s), "canceled": 0}

    def set_parameters(self, name: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Check and apply parameter changes; HTTP 422 naming ``parameters.<name>`` and the value when bad."""
        s = self.get(name)
        current = self.parameters(s)
        for k, v in changes.items():
            if k not in current:
                raise unprocessable("body", f"parameters.{k}", v, f"not a parameter of {name} "
                                     f"(one of {', '.join(sorted(current))})")
            old = current[k]
            ok = (type(v) is bool) if type(old) is bool else (
                isinstance(v, int) and not isinstance(v, bool) if type(old) is int else
                (isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)) if type(old) is float
                else isinstance(v, str))
            if not ok:
                raise unprocessable("body", f"parameters.{k}", v, f"must be a {type(old).__name__} like {old!r}")
        merged = {**s.params, **changes}
        try:
            trial = type(s)(name=s.name, **merged)
        except (ConfigError, DataError) as exc:
            field = getattr(exc, "field", "parameters").rsplit(".", 1)[-1]
            raise unprocessable("body", f"parameters.{field}", getattr(exc, "value", None), str(exc)) from None
        except (TypeError, ValueError, OverflowError) as exc:
            raise unprocessable("body", "parameters", changes, str(exc)) from None
        trial_params = self.parameters(trial)
        for k in changes:
            if k in trial_params and trial_params[k] != changes[k] and k not in s.params:
                # the constructor ignores this one as a keyword: it is derived state, not a parameter
                raise unprocessable("body", f"parameters.{k}", changes[k], f"{name} does not take {k} as a parameter")
        for k, v in changes.items():
            setattr(s, k, trial_params.get(k, v))
        s.params.update(changes)  # a restart builds the fresh instance with them
        return {"name": name, "parameters": self.parameters(s)}


