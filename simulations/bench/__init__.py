"""Benchmarks: speed, memory and cost of runs, each a ``python -m simulations.bench.NAME``."""
