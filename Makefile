# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test bench bench-tenancy bench-failover lint install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/promptbus up

test: $(STAMP)
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python bench/overhead.py

bench-tenancy: $(STAMP)
	$(BIN)/python bench/overhead.py --tenancy on

bench-failover: $(STAMP)
	$(BIN)/python bench/failover.py

lint: $(STAMP)
	$(BIN)/ruff check schemas broker workers ingress tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .promptbus .pytest_cache .mypy_cache .ruff_cache *.egg-info
