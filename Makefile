# mlplat: `make demo` runs the main job end to end, `make test` runs the tests.
# Both set everything up themselves on a fresh Debian/Ubuntu machine.

# Debian's interpreter when there is one: every OS account can run it, so a hub that runs workspaces as their
# users' own accounts (MLPLAT_HUB_ACCOUNTS=1) can run this venv; a pyenv python under /root cannot be.
PYTHON    ?= $(firstword $(wildcard /usr/bin/python3) python3)
VENV      ?= .venv
PY        := $(VENV)/bin/python
STAMP     := $(VENV)/.installed
# Triton's python-backend stub needs numpy < 2: the server side gets its own venv beside .venv.
TRITON    := .venv-triton
# The stamp names the package set: a venv made for an older set gets what it lacks on the next `make`.
TRITON_STAMP := $(TRITON)/.installed-hiredis
DEMO_HOME ?= $(CURDIR)/.mlplat-demo
TEST_WORKERS ?= 3

.PHONY: install system triton demo test bench lint clean

install: system $(STAMP) $(TRITON_STAMP)

triton: $(TRITON_STAMP)

system:
	@PYTHON=$(PYTHON) bash scripts/setup-system.sh

# A venv made by another interpreter (pyenv's, before PYTHON preferred Debian's) is made anew: `venv` over it
# would point its python at the other interpreter's standard library.
BASE_PREFIX := -c 'import sys; print(sys.base_prefix)'
$(STAMP): pyproject.toml
	@[ "$$($(PY) $(BASE_PREFIX) 2>/dev/null)" = "$$($(PYTHON) $(BASE_PREFIX))" ] || rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

$(TRITON_STAMP):
	$(PYTHON) -m venv $(TRITON)
	$(TRITON)/bin/python -m pip install -q --upgrade pip
	$(TRITON)/bin/python -m pip install -q "nvidia-pytriton==0.7.0" onnxruntime "numpy<2" "redis[hiredis]"
	@touch $(TRITON_STAMP)

demo: install
	-MLPLAT_HOME=$(DEMO_HOME) $(VENV)/bin/mlplat hub --stop
	MLPLAT_HOME=$(DEMO_HOME) $(PY) -m mlplat.demo --fresh --keep-services
	MLPLAT_HOME=$(DEMO_HOME) $(PY) -m mlplat_hub.demo

test: install
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

bench: install
	bash benchmarks/setup_feast.sh
	$(PY) benchmarks/feature_store.py --feast-python .venv-feast/bin/python
	$(PY) benchmarks/training.py
	bash benchmarks/setup_perf_analyzer.sh
	$(PY) benchmarks/serving.py
	$(PY) benchmarks/concurrency.py
	$(PY) benchmarks/models.py
	$(PY) benchmarks/missing_policy.py
	$(PY) benchmarks/monitoring.py
	$(PY) benchmarks/services.py
	$(PY) benchmarks/backfill.py
	$(PY) benchmarks/streaming.py
	$(PY) benchmarks/server.py
	$(PY) benchmarks/isolation.py
	$(PY) benchmarks/categorical.py

lint: install
	$(VENV)/bin/ruff check mlplat mlplat_magics hub extension/mlplat_lab tests benchmarks
	$(VENV)/bin/lint-imports

clean:
	-MLPLAT_HOME=$(DEMO_HOME) $(VENV)/bin/mlplat hub --stop
	-MLPLAT_HOME=$(DEMO_HOME) $(VENV)/bin/mlplat down
	rm -rf $(VENV) $(TRITON) .venv-feast .venv-perf .node extension/node_modules $(DEMO_HOME) .pytest_cache

# JupyterHub's proxy (an npm package), in .node beside .venv, where mlplat_hub finds it.
PROXY_STAMP := .node/.installed
.PHONY: hub-proxy
install: hub-proxy
hub-proxy: $(PROXY_STAMP)
$(PROXY_STAMP): | system
	npm install --prefix .node --no-audit --no-fund --silent configurable-http-proxy@4
	@touch $@

# The JupyterLab extension: `pip install -e` builds it with npm (the jupyter-builder hook in pyproject.toml) and
# copies it into the venv, so the venv is reinstalled when its sources change; node_modules follows the lock file.
LAB_SOURCES := extension/package.json extension/tsconfig.json $(wildcard extension/src/*.ts extension/style/*)
$(STAMP): extension/node_modules/.package-lock.json $(LAB_SOURCES)
extension/node_modules/.package-lock.json: extension/package-lock.json | system
	cd extension && npm ci --no-audit --no-fund
