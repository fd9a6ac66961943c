# The README's two commands: `make demo` and `make test`. Both set up what they need.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export AIRFLOW__CORE__LOAD_EXAMPLES := False

.PHONY: setup demo up test bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	@bash scripts/demo.sh

# What each user sees, on the last demo's data: Airflow UI, DPO web app, PDF folder (Ctrl-C stops).
up: setup
	@bash scripts/demo.sh --serve

# Two pytest-xdist workers (one compute thread each, see conftest.py); each test module runs
# on one worker, and modules that share a resource carry one xdist_group mark. TEST_WORKERS=0
# runs serially.
TEST_WORKERS ?= 2
test: setup
	@$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

bench: setup
	@$(VENV)/bin/encoder-audit bench encoders

clean:
	rm -rf var .pytest_cache
