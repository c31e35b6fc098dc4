# kdlib: two commands do everything on a fresh machine (2 CPU cores, no GPU needed).
#   make study      set up .venv (the study's packages only), run the study's notebooks (params/default.yaml) with papermill into
#                   outputs/<run-id>/ and print where its report.html is
#   make test       set up .venv (the study's and the tests' packages), run the test suite and nbval on the committed notebooks
# Other targets: setup, setup-study, test-fast (the tests not marked slow), notebooks (regenerate the committed outputs), world, grid, benchmarks, clean.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PARAMS ?= params/default.yaml
STAMP  := $(VENV)/.installed
STUDY_STAMP := $(VENV)/.installed-study

NBVAL  := --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg
# make test runs tests/ on two pytest-xdist workers, one per core, each test file whole on one worker (its
# module fixtures built once); TEST_WORKERS=0 runs them in one process. The notebooks build on each other
# and share the checkout's outputs/, so nbval runs them afterwards, in order, in one process.
TEST_WORKERS ?= 2
XDIST  := -n $(TEST_WORKERS) --dist loadfile

.PHONY: setup setup-study study test test-fast notebooks world grid benchmarks study-time clean

setup: $(STAMP)
setup-study: $(STUDY_STAMP)

# Re-installs when pyproject.toml changes. torch comes from the machine's local package cache. make study
# installs only what the study runs (kdlib and its notebooks' packages: 129 s in a fresh venv against
# 157 s with the tests' packages too); make test adds pytest, nbval, playwright and quantus to the same venv.
# --no-compile: pip does not byte-compile every installed file (144 s -> 78 s for the study's packages);
# Python compiles what it imports, once, on first import (17.7 s the first time, 18.9 s the second).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --no-compile -e '.[notebooks,test]'
	touch $@ $(STUDY_STAMP)

$(STUDY_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --no-compile -e '.[notebooks]'
	touch $@

world: setup-study
	$(PY) -m kdlib.data.world --params $(PARAMS)

# The runner prints the run folder and, last, "report: outputs/<run-id>/report.html".
study: setup-study
	$(PY) -m kdlib.runs run $(PARAMS)

# The unit tests, then nbval: the notebooks re-run from scratch on the tiny profile, every printed
# number compared with the committed outputs (tests/nbval_sanitize.cfg replaces times, paths, run ids).
# Both always run; the status is the first failure's.
test: setup
	$(PY) -m pytest tests $(XDIST); status=$$?; $(PY) -m pytest notebooks $(NBVAL) && exit $$status

# Re-execute the notebooks in place on the tiny profile, from scratch, without timestamps: the
# committed outputs that nbval compares. An unchanged checkout regenerates them byte for byte.
notebooks: setup
	$(PY) -m kdlib.runs notebooks

test-fast: setup
	$(PY) -m pytest -m "not slow"

grid: world
	$(PY) scripts/world_grid.py --world $$($(PY) -c "from kdlib.params import load_study; print(load_study('$(PARAMS)').world_dir())") --out docs/world_grid.png

# Every benchmark but study_time.py (make study-time: a fresh clone's make study, about 45 minutes).
benchmarks: setup
	@for b in benchmarks/*.py; do [ $$b = benchmarks/study_time.py ] && continue; echo "== $$b"; $(PY) $$b || exit 1; done

study-time: setup
	$(PY) benchmarks/study_time.py --params $(PARAMS)

clean:
	rm -rf $(VENV) data outputs/*/ .pytest_cache
