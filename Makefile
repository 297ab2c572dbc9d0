# braincap: set-up, book, tests and benchmarks in a local virtualenv (.venv).
# `make book` and `make test` do all set-up themselves on a fresh machine.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PARAMS ?= notebooks/params/toy.yaml
PRESET ?= toy
SEED   ?= 0
# the notebooks on a Dask LocalCluster (the two subjects' chapters side by side); SCHEDULER=
# (empty) runs them one after another in one process
SCHEDULER ?= local
# one test process more than the cores (at most 4): the suite's processes often wait on notebook
# kernels, Java and Dask; `auto` (one per core) before the set-up has made the virtualenv
TEST_WORKERS ?= $(shell $(PY) -c 'from lib.config import physical_cores; print(min(4, physical_cores() + 1))' 2>/dev/null || echo auto)
MATHJAX_VERSION := 3.2.2
VENDOR := book/_static/vendor

.PHONY: setup vendor toyworld notebooks book lab test lint bench clean help

help:
	@echo "make book   - build the toy world, run every notebook (papermill), build _build/html"
	@echo "make lab    - open the notebooks in JupyterLab (BRAINCAP_PARAMS=micro make lab: micro preset)"
	@echo "make test   - run the test suite (unit tests, micro notebooks, offline browser check)"
	@echo "make lint   - ruff (lib, tests, bench, notebooks) and the notebooks-without-outputs check"
	@echo "make bench  - run the benchmarks in bench/"
	@echo "Variables: PARAMS=$(PARAMS) PRESET=$(PRESET) SEED=$(SEED) SCHEDULER=$(SCHEDULER) TEST_WORKERS=$(TEST_WORKERS)"

# --- set-up ---------------------------------------------------------------
# tools/install.py: uv (pip's settings passed on), or pip where uv cannot be used; torch pinned
# (a CPU build here, the CUDA build of the same version on a GPU machine).
$(VENV)/.installed: pyproject.toml tools/install.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) tools/install.py
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

setup: $(VENV)/.installed vendor

# Local copies of plotly.js and MathJax so the built pages make no request off the machine.
vendor: $(VENDOR)/plotly.min.js $(VENDOR)/mathjax/tex-chtml.js

$(VENDOR)/plotly.min.js: $(VENV)/.installed
	mkdir -p $(VENDOR)
	cp "$$($(PY) -c 'import plotly, os; print(os.path.join(os.path.dirname(plotly.__file__), "package_data", "plotly.min.js"))')" $@

$(VENDOR)/mathjax/tex-chtml.js:
	mkdir -p build/npm $(VENDOR)
	cd build/npm && npm pack --silent mathjax@$(MATHJAX_VERSION) >/dev/null && tar xzf mathjax-$(MATHJAX_VERSION).tgz
	rm -rf $(VENDOR)/mathjax && cp -r build/npm/package/es5 $(VENDOR)/mathjax

# --- the book -------------------------------------------------------------
toyworld: setup
	$(PY) -m lib.toyworld build --preset $(PRESET) --seed $(SEED)

notebooks: toyworld
	$(PY) -m lib.run --params $(PARAMS) $(if $(SCHEDULER),--scheduler $(SCHEDULER))

book: notebooks
	$(VENV)/bin/jupyter-book build . --quiet
	@echo "Book: $(CURDIR)/_build/html/index.html"

# JupyterLab at the repository root with the project's kernel (.venv). Kernels start in
# notebooks/; the notebooks resolve their paths from the repository root (lib.config).
lab: setup
	$(VENV)/bin/jupyter lab --ServerApp.root_dir="$(CURDIR)"

# --- checks ---------------------------------------------------------------
# Tests in TEST_WORKERS processes (pytest-xdist; by default one more than the cores, at most 4:
# on 2 cores the suite took 543-569 s in 2 processes, 434-531 s in 3, 561 s in 4). Each micro
# book is run once, by the first process that needs it (tests/conftest.py: `once`). The
# JupyterLab test runs afterwards on its own: beside the other processes it failed twice in
# CI (a modal dialog over the notebook; a kernel replaced at start), never alone.
# `--dist loadgroup`: tests marked `xdist_group` share one process (tests/test_metrics.py: one
# METEOR start for the module).
test: setup
	$(PY) -m pytest -n $(TEST_WORKERS) --maxprocesses 4 --dist loadgroup --ignore=tests/test_lab.py
	$(PY) -m pytest tests/test_lab.py

# The style checks alone (tests/test_style.py also runs them within `make test`).
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q tests/test_style.py

bench: setup
	$(PY) -m bench

clean:
	rm -rf _build book/run build
