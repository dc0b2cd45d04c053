"""The production trainer: experiments, distributed runs, registry, hyperparameter search, pipelines."""
