"""The production trainer: distributed runs, the model registry, HPO and the model pipeline."""
