# Shoal: the two commands a user needs are `make demo` and `make test`.
# Each installs what it needs itself: system packages (apt, as root) and a venv in .venv.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-unit test-sim test-lab test-slow bench bench-control system venv clean lab-down

system:
	@scripts/setup-system.sh

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip==25.3
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: system venv
	$(PY) -m shoal.lab demo

# The full suite: unit and simulation tiers (no root needed), then the lab tier (root).
test: system venv
	$(PY) -m pytest -q -m "not lab and not slow" tests
	$(PY) -m pytest -q -m "lab and not slow" tests
	$(PY) -m shoal.lab check        # prints the measured behaviour of every NAT type
	$(PY) -m shoal.lab check-clean

test-unit: venv
	$(PY) -m pytest -q -m "not lab and not sim and not slow" tests

test-sim: venv
	$(PY) -m pytest -q -m "sim" tests

test-lab: system venv
	$(PY) -m pytest -q -m "lab and not slow" tests

test-slow: system venv
	$(PY) -m pytest -q -m "slow" tests

# Data plane (Shoal vs wireguard-go side by side) and control plane (1,000 simulated nodes).
bench: system venv
	$(PY) -m shoal.bench; rc=$$?; $(PY) -m shoal.bench.control && exit $$rc

bench-control: venv
	$(PY) -m shoal.bench.control

lab-down: venv
	$(PY) -m shoal.lab down --all

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .hypothesis
