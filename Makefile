# Two commands on a fresh machine:  `make run` (main job) and `make test` (test suite).
# Both create .venv and install the pinned environment first (once; redone when a
# requirements file changes).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup system-deps run test test-mlflow-env test-bench matrix clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt -c constraints.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

run: setup
	$(VENV)/bin/ptyparity pipeline

# Debian packages some tests drive, installed with apt when missing (needs root, as on CI):
# chromium for the MLflow UI test (through Playwright's Python package; no browser
# download), postgresql for the team-server test (it starts its own throwaway cluster).
system-deps:
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || \
	  missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian's$$missing for the tests"; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && apt-get install -y -qq $$missing >/dev/null; \
	fi

test: setup system-deps
	$(PY) -m pytest -q -p no:cacheprovider --durations=15 -m "not mlflow_env and not bench"

# `mlflow run . -e inspect` through MLflow's default env manager (virtualenv): MLflow builds
# python_env.yaml's pinned environment under ~/.mlflow/envs itself (pyenv's Python, pip; a few
# minutes the first time, seconds once built). Its own CI step, after `make test`.
test-mlflow-env: setup
	$(PY) -m pytest -q -p no:cacheprovider -rP -m mlflow_env tests/test_mlflow_run.py

# scripts/bench.py --quick, checked for every figure of issue 13 (no timing asserted); minutes,
# so its own CI step after `make test`.
test-bench: setup
	$(PY) -m pytest -q -p no:cacheprovider -m bench tests/test_bench.py

# The parity matrix as a CI gate: both backends against the NumPy reference and each other
# over a representative subset of the configuration space; exits 1 when any cell fails.
matrix: setup
	$(VENV)/bin/ptyparity matrix --quick

clean:
	rm -rf $(VENV) mlflow.db mlruns mlartifacts data outputs
