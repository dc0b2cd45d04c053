"""The production trainer: distributed and elastic runs, the model registry, search and the model pipeline over
greekfire.ml."""
