"""FIX 4.4: messages and framing (:mod:`~greekfire.fix.message`), the data dictionary
(:mod:`~greekfire.fix.dictionary`), the session layer (:mod:`~greekfire.fix.session`) with its store
(:mod:`~greekfire.fix.store`), asyncio transport (:mod:`~greekfire.fix.transport`), sessions from the
settings (:mod:`~greekfire.fix.setup`) and the QuickFIX acceptance-script runner
(:mod:`~greekfire.fix.conformance`). The trading core's FIX venue and the FIX exchange gateway build on it
(:mod:`greekfire.trading.fixvenue`, :mod:`greekfire.trading.fixexchange`).
"""
