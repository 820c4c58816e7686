# tfattr: `make demo` and `make test` work on a fresh clone (they create/reuse .venv).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench venv clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m tfattr.demo --out demo_out

test: $(STAMP)
	$(PY) -m pytest tests

bench: $(STAMP)
	$(PY) tools/bench_interweave.py
	$(PY) tools/bench_serving.py
	$(PY) tools/bench_latency.py
	$(PY) tools/bench_lite.py
	$(PY) tools/bench_training_step.py

clean:
	rm -rf demo_out build *.egg-info
