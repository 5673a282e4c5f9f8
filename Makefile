# The two user commands are `make train` and `make test`; both install into .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
FAKE_DEVICES := XLA_FLAGS=--xla_force_host_platform_device_count=8
WORKDIR ?= runs/tiny_cpu

.PHONY: install test train bench lint scaling-demo bench-samplers

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .[dev]
	touch $@

install: $(VENV)/.installed

test: install
	$(FAKE_DEVICES) $(PY) -m pytest -q -n 2 --dist=loadfile --no-loadscope-reorder --durations=15 tests
	$(VENV)/bin/ruff check dlmjax tests tools experiments

train: install
	$(PY) -m dlmjax.main --config=experiments/tiny_cpu.py --workdir=$(WORKDIR)

bench: install
	$(PY) tools/bench.py

lint: install
	$(VENV)/bin/ruff check dlmjax tests tools experiments

scaling-demo: install
	$(PY) tools/scaling_demo.py --out=runs/scaling_demo

# Samplers on a quality-versus-speed frontier (trains tiny_cpu and its AR judge if needed).
bench-samplers: install
	$(PY) tools/bench_samplers.py --out=runs/bench_samplers
