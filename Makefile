# The README's commands, for convenience. Run inside your virtual environment.
.PHONY: install quickstart test test-fast lint format digits

install:
	pip install -e ".[test]"

quickstart:
	python -m simulations.run simulations/experiments/quickstart.yaml

digits:
	python -m simulations.run simulations/experiments/digits.yaml

test:
	python -m pytest

test-fast:
	python -m pytest -m "not slow"

lint:
	ruff check . && ruff format --check .

format:
	ruff format . && ruff check --fix .
