# The README's two commands: `make demo` (the main job) and `make test`.
# Both create .venv with the pinned dependencies on first use. They run torch on one thread: the models
# are tiny, and on 2 shared cores a second OpenMP thread makes steps up to 20x slower when another job runs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo demo-quick test setup

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "popo needs Python 3.11+"'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m popo demo --out runs/demo

demo-quick: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m popo demo --quick --out runs/demo-quick

test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q
