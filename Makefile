# Developer and CI entry points. `make test` runs what CI runs (.ci/run).

PYTHON ?= python3
VENV := .venv
VENV_PYTHON := $(VENV)/bin/python
# Extra options for `make serve`, for example: make serve ARGS='--port 11113 -v'
ARGS ?=

.PHONY: venv serve test lint bench-move

venv: $(VENV)/.installed

# The stamp is newer than pyproject.toml once the install succeeded, so the
# install runs again only after pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	test -x $(VENV_PYTHON) || $(PYTHON) -m venv $(VENV)
	$(VENV_PYTHON) -m pip install -e '.[test]'
	touch $@

serve: venv
	$(VENV)/bin/dicomvault serve $(ARGS)

test: venv
	bash tests/services.sh
	$(VENV_PYTHON) -m pytest tests/

lint: venv
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests
	$(VENV)/bin/mypy src

# C-MOVE throughput beside Orthanc; results go to docs/benchmarks.md by hand.
bench-move: venv
	bash tests/services.sh
	bash bench/run_move_bench.sh $(ARGS)
