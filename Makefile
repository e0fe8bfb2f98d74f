# FLIP on NVFlare. `make demo` and `make test` create .venv on first use (torch first, pinned: see README).
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH  := torch==2.13.0
# pytest-xdist workers, each test module on one (its simulator run or provisioned kits start once): tests wait on
# servers and subprocesses, so 3 on 2 cores beat 2; WORKERS=0 runs in one process
WORKERS ?= 3
PYTEST := $(PY) -m pytest -n $(WORKERS) --dist loadfile

.PHONY: demo test check lint format venv jobs bench clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (Python 3.11)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: an unpinned torch (or one pulled in by another package) downloads GBs of CUDA wheels
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/flip demo

# every test: lint, then unit, S3, the simulator, end to end (POC, the demo, provisioning); what CI runs (.ci/run)
test: lint
	$(PYTEST)

# the fast tier for development: lint, then unit, S3 and local-HTTP tests, no simulator and no end-to-end run
check: lint
	$(PYTEST) -m "(unit or s3 or http) and not simulator and not e2e"

# ruff (rules and format, pyproject.toml) and the import contracts between flip's layers (import-linter)
lint: $(STAMP)
	$(VENV)/bin/ruff check flip tests benchmarks
	$(VENV)/bin/ruff format --check flip tests benchmarks
	$(VENV)/bin/lint-imports

# rewrite the tree as the lint step wants it (import order, safe fixes, format)
format: $(STAMP)
	$(VENV)/bin/ruff check --fix flip tests benchmarks
	$(VENV)/bin/ruff format flip tests benchmarks

jobs: $(STAMP)
	$(VENV)/bin/flip jobs export --out jobs

bench: $(STAMP)
	$(PY) benchmarks/privacy_filter.py
	$(PY) benchmarks/s3_upload.py
	$(PY) benchmarks/dp_utility.py
	$(PY) benchmarks/swag_filter.py
	# whole runs in the simulator (minutes each; the 250M one needs ~10 GB of RAM)
	$(PY) benchmarks/round_overhead.py
	$(PY) benchmarks/sites_scale.py
	$(PY) benchmarks/large_model.py

clean:
	rm -rf $(VENV) .demo .pytest_cache
