# The README's two commands: `make demo` and `make test`. Both set up what they need.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export AIRFLOW__CORE__LOAD_EXAMPLES := False

.PHONY: setup demo test bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	@bash scripts/demo.sh

test: setup
	@$(PY) -m pytest -q $(PYTEST_ARGS)

bench: setup
	@$(VENV)/bin/encoder-audit bench encoders

clean:
	rm -rf var .pytest_cache
