# Developer and CI entry points. `make test` runs what CI runs (.ci/run).

PYTHON ?= python3
VENV := .venv
VENV_PYTHON := $(VENV)/bin/python
# Extra options for `make serve`, for example: make serve ARGS='--port 11113 -v'
ARGS ?=

.PHONY: venv serve test lint bench bench-move bench-dicomweb

venv: $(VENV)/.installed

# The stamp is newer than pyproject.toml once the install succeeded, so the
# install runs again only after pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	test -x $(VENV_PYTHON) || $(PYTHON) -m venv $(VENV)
	$(VENV_PYTHON) -m pip install -e '.[test]'
	touch $@

serve: venv
	$(VENV)/bin/dicomvault serve $(ARGS)

# Test files are spread over 3 worker processes (pytest-xdist), each file
# on one worker, so that module-scoped servers start once: many tests wait
# on servers and subprocesses, so 3 workers suit a 2-core machine.
test: venv
	bash tests/services.sh
	$(VENV_PYTHON) -m pytest tests/ --durations=25 -n 3 --dist loadfile

lint: venv
	$(VENV)/bin/ruff check src tests bench deploy
	$(VENV)/bin/ruff format --check src tests bench deploy
	$(VENV)/bin/mypy src
	$(VENV)/bin/mypy bench

# Benchmarks beside DCMTK storescp and Orthanc (bench/run.py; root, for the
# network namespace). The quick set by default, the 100,000-instance C-FIND
# index with ARGS='--large'; the tables also go to bench/results/latest.md.
bench: venv
	bash tests/services.sh
	bash bench/run.sh --markdown bench/results/latest.md $(ARGS)

# The C-MOVE section alone.
bench-move: venv
	bash tests/services.sh
	bash bench/run.sh --only move $(ARGS)

# DICOMweb beside Orthanc with its DICOMweb plugin: QIDO-RS study search
# latency and WADO-RS study retrieve throughput (bench/dicomweb_bench.py;
# root, for the network namespace). The tables also go to
# bench/results/dicomweb-latest.md.
bench-dicomweb: venv
	bash tests/services.sh
	bash bench/run_dicomweb_bench.sh --markdown bench/results/dicomweb-latest.md $(ARGS)
