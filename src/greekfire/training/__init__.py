"""Production training: distributed runs, tracking, the model registry, A/B serving, hyper-parameter search."""
