"""The wheel: cash-secured puts, then covered calls on assigned shares (docs/wheel.md).

- :mod:`.config`: :class:`WheelConfig` (the ``wheel`` settings section);
- :mod:`.state`: the per-underlying state machine (:data:`TRANSITIONS`, :class:`Transition`);
- :mod:`.select`: strike selection on tensors (and its row-by-row pandas twin);
- :mod:`.journal`: the :class:`Journal` protocol and :class:`MemoryJournal`;
- :mod:`.strategy`: :class:`WheelStrategy`;
- :mod:`.backtest`: :func:`run_backtest` on a :class:`BacktestContext`.

Modules are imported on use: ``from greekfire.strategies.wheel.strategy import WheelStrategy``.
"""
