"""Shared core: settings, data, models, meta-learning math, array transport."""
