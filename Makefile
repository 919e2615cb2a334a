# Two set-up commands for a fresh Debian machine (see README.md):
#   make demo   install everything, then run the default experiment on a local virtual fleet
#   make test   install everything, then lint (ruff, mypy) and run the tests
# Both are idempotent: the virtualenv is rebuilt only when pyproject.toml changes.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast test-long lint format bench protos dashboards system-deps clean

demo: $(STAMP)
	$(BIN)/fleet run

test: lint
	$(BIN)/python -m pytest --durations=12

# ruff (lint + format check) and mypy (strict on the kernel), configured in pyproject.toml
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

# the suites of several minutes, which `make test` leaves out: the 100-kill fault campaign, an
# experiment across a two-host Ray cluster of emulated adb phones, the SIGINT and SIGTERM cases of
# the coordinator's resume (SIGKILL stays in `make test`), two runs read by every dashboard panel
# through a standing Prometheus, and the 10,000-case fuzzers of the wire and of experiment files
# (`make test` runs 300 cases of each). CI runs them all.
test-long: $(STAMP)
	$(BIN)/python -m pytest -s -m long

bench: $(STAMP)
	$(BIN)/python bench/engine_speed.py
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/fleet_scale.py

protos: $(STAMP)
	$(BIN)/python scripts/gen_protos.py

dashboards: $(STAMP)
	$(BIN)/fleet dashboards build

# Debian packages the run needs: a Python >= 3.11 with venv and pip, git (run manifests record the
# revision), openssl (the TLS test makes a certificate), prometheus (fleet run embeds it; the
# tests scrape with it and use its promtool), adb (each lab host's adb server reaches its
# phones; the tests reach emulated ones through it), chromium (the report is checked in a real
# browser) and g++ with ninja-build (the engine compiles its native bf16/int8 row products,
# agents/llm/native.cpp; without them it runs PyTorch's). Installed only when missing, so a
# machine that has them needs no root.
system-deps:
	@if ! $(PYTHON) -c 'import sys, venv, ensurepip; assert sys.version_info >= (3, 11)' 2>/dev/null \
	    || ! command -v git >/dev/null || ! command -v openssl >/dev/null \
	    || ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null \
	    || ! command -v adb >/dev/null || ! command -v chromium >/dev/null \
	    || ! command -v g++ >/dev/null || ! command -v ninja >/dev/null; then \
	  echo "installing Debian packages: python3 python3-venv python3-pip git openssl prometheus adb chromium g++ ninja-build"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    python3 python3-venv python3-pip git openssl prometheus adb chromium g++ ninja-build; \
	fi

$(STAMP): pyproject.toml | system-deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[coordinator,dev]'
	$(BIN)/python -m agents.llm.native  # compile the native row products once (about 15 s)
	touch $(STAMP)

clean:
	rm -rf $(VENV) runs .pytest_cache
