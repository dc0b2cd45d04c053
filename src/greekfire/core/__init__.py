"""Core: settings, logging, metrics registry, errors and clocks. Imports nothing else of greekfire."""
