# Two commands on a fresh machine:  `make run` (main job) and `make test` (test suite).
# Both create .venv and install the pinned environment first (once; redone when a
# requirements file changes).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup system-deps run test matrix clean

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
	$(PY) -m pytest -q -p no:cacheprovider --durations=15

# The parity matrix as a CI gate: both backends against the NumPy reference and each other
# over a representative subset of the configuration space; exits 1 when any cell fails.
matrix: setup
	$(VENV)/bin/ptyparity matrix --quick

clean:
	rm -rf $(VENV) mlflow.db mlruns mlartifacts data outputs
