# The README's two commands: `make demo` (the main job) and `make test`.
# Both create .venv with the pinned dependencies on first use. They run torch on one thread: the models
# are tiny, and on 2 shared cores a second OpenMP thread makes steps up to 20x slower when another job runs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# verl's environment (requirements/verl.txt): what verl 0.9.1 resolves differently from .venv, installed
# beside it and put ahead of it on the path for the verl tests only (its antlr4 conflicts with math-verify's)
VERL := .verl
VERL_STAMP := $(VERL)/.installed

.PHONY: demo demo-quick test test-verl setup gpu-bundle gpu-dry-run

$(VERL_STAMP): requirements/verl.txt $(STAMP)
	rm -rf $(VERL)
	$(PY) -m pip install -q --no-deps --target $(VERL) -r requirements/verl.txt
	@touch $(VERL_STAMP)

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

# pytest-xdist with one worker per core, each torch on one thread (tests/conftest.py); the long
# end-to-end tests come first and idle workers steal queued ones (worksteal), so none is left with a queue
# of long tests while the others wait. verl's environment installs meanwhile (about 35 s, mostly download);
# the verl tests, skipped in the first run, then run in it.
test: $(STAMP)
	@$(MAKE) -s $(VERL_STAMP) > .verl-install.log 2>&1 & installing=$$!; \
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n auto --dist worksteal; status=$$?; \
	wait $$installing || { echo "installing verl's environment failed:"; cat .verl-install.log; exit 1; }; \
	[ $$status -eq 0 ] || exit $$status; \
	echo "verl's environment ($(VERL)/ ahead of $(VENV)): the verl tests"; \
	OMP_NUM_THREADS=1 PYTHONPATH=$(VERL) $(PY) -m pytest -q -n auto -p no:cacheprovider --require-verl tests/test_verl_*.py

# verl's tests alone, in verl's environment
test-verl: $(VERL_STAMP)
	OMP_NUM_THREADS=1 PYTHONPATH=$(VERL) $(PY) -m pytest -q -n auto -p no:cacheprovider --require-verl tests/test_verl_*.py

# The GPU check (README "GPU check"): the wheel folder gpu-bundle/ for the GPU machine's Python 3.12, and its
# dry run here (fresh venv with only torch, no network, `benchmarks/gpu/run.py --cpu`; tests/test_gpu_bundle.py).
gpu-bundle: $(STAMP)
	$(PY) benchmarks/gpu/bundle.py --omit numpy

gpu-dry-run: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) benchmarks/gpu/dry_run.py --out runs/gpu-dry-run
