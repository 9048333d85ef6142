# Two commands on a fresh machine:  `make run` (main job) and `make test` (test suite).
# Both create .venv and install the pinned environment first (once; redone when a
# requirements file changes).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup system-deps run test clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt -c constraints.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

run: setup
	$(VENV)/bin/ptyparity pipeline

# Debian's chromium drives the MLflow UI test (through Playwright's Python package;
# no browser download). Installed with apt when missing (needs root, as on CI).
system-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the MLflow UI test"; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }

test: setup system-deps
	$(PY) -m pytest -q -p no:cacheprovider --durations=15

clean:
	rm -rf $(VENV) mlflow.db mlruns mlartifacts data outputs
