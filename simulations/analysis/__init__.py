"""Analysis: tables and plots read from finished runs (``python -m simulations.analysis.NAME``)."""
