# Vault MCP Bridge — every command a developer or CI needs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install run test unit lint fmt clean sysdeps bench

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## make run: embedded OpenBao dev server + demo agents + the bridge, in the foreground. Ctrl-C, SIGTERM, SIGHUP
## or the death of this make stop all of it (scripts/dev_run.py; README "make run").
run: $(STAMP)
	$(BIN)/python scripts/dev_run.py

## make test: lint, then the whole suite (unit + integration against a real OpenBao it starts itself)
test: $(STAMP) sysdeps
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

## make sysdeps: Debian packages some tests need; installed only as root, only when missing. Without them those
## tests are skipped. Each entry is a package that provides a command on PATH of the same name, or
## PACKAGE=PATH for one that installs elsewhere (Debian's PostgreSQL server: /usr/lib/postgresql/<major>/bin).
SYSDEPS ?= redis-server chromium nginx postgresql=/usr/lib/postgresql/*/bin/postgres
sysdeps:
	@missing=""; for d in $(SYSDEPS); do pkg=$${d%%=*}; probe=$${d#*=}; \
	  case "$$probe" in /*) set -- $$probe; [ -x "$$1" ] || missing="$$missing $$pkg";; \
	  *) command -v "$$probe" >/dev/null 2>&1 || missing="$$missing $$pkg";; esac; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "sysdeps: installing$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	else echo "sysdeps: missing$$missing (not root: the tests that need them are skipped)"; fi

## make bench: benchmark OpenBao direct vs the bridge with wrk (not part of make test); see docs/scale.md
bench: $(STAMP)
	$(MAKE) sysdeps SYSDEPS=wrk
	$(BIN)/python -m bench.run $(BENCH_ARGS)

unit: $(STAMP)
	$(BIN)/python -m pytest -q -m "not integration"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

fmt: $(STAMP)
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
