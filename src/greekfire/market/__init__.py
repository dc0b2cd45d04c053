"""Market core: order books (L3/L2, many at once), the matching engine, feed codecs (ITCH 5.0, MoldUDP64,
LOBSTER), the options quote book on tensors and microstructure features and signals.

Import the submodules directly (``from greekfire.market.matching import MatchingEngine``); this package
imports nothing heavy so that the matching engine loads without numba or torch.
"""
