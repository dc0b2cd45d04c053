"""The production trainer: distributed and elastic runs, registry, search and pipelines over greekfire.ml."""
