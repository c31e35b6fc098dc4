# kdlib: two commands do everything on a fresh machine (2 CPU cores, no GPU needed).
#   make study   set up .venv, generate the default world, run the study (params/default.yaml)
#   make test    set up .venv, run the test suite
# Other targets: test-fast (the tests not marked slow, for the edit loop), setup, world, grid, benchmarks, clean.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PARAMS ?= params/default.yaml
STAMP  := $(VENV)/.installed

.PHONY: setup study test test-fast world grid benchmarks clean

setup: $(STAMP)

# Re-installs when pyproject.toml changes. torch comes from the machine's local package cache.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[notebooks,test]'
	touch $@

world: setup
	$(PY) -m kdlib.data.world --params $(PARAMS)

study: setup
	$(PY) -m kdlib.runs run $(PARAMS)

test: setup
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not slow"

grid: world
	$(PY) scripts/world_grid.py --world $$($(PY) -c "from kdlib.params import load_study; print(load_study('$(PARAMS)').world_dir())") --out docs/world_grid.png

benchmarks: setup
	@for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) data outputs/*/ .pytest_cache
