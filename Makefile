# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run cluster test test-reliability bench bench-tenancy bench-failover bench-peers lint install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/promptbus up

cluster: $(STAMP)
	$(BIN)/promptbus cluster -c deploy/cluster.yaml

test: $(STAMP)
	$(BIN)/pytest -q

# The long runs: 10,000 requests per failure, 10,000 fuzzed bodies, a 60 s soak.
test-reliability: $(STAMP)
	$(BIN)/pytest -q -s -m reliability tests/reliability

bench: $(STAMP)
	$(BIN)/python bench/overhead.py

bench-tenancy: $(STAMP)
	$(BIN)/python bench/overhead.py --tenancy on

bench-failover: $(STAMP)
	$(BIN)/python bench/failover.py

bench-peers: $(STAMP)
	$(BIN)/python bench/peers/run.py

lint: $(STAMP)
	$(BIN)/ruff check schemas broker workers ingress cli tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .promptbus .pytest_cache .mypy_cache .ruff_cache *.egg-info
