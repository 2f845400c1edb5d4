"""Measuring a deployed node from outside: its memory over a run, its ClientApp start cost."""
