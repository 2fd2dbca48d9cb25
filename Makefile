# The two commands: `make demo` and `make test`. Both (re)create .venv and
# install everything, idempotently, every time.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q

.PHONY: install demo test lint typecheck model audit lock bench bench-sticky bench-engine bench-e2e bench-hot bench-ingest bench-adapters bench-push bench-webhooks bench-history clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first: 2.13.0 is a CPU build on this disk; installing it before the
# project keeps pip from resolving torch to a multi-GB CUDA build.
install: $(PY)
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[dev]'

demo: install
	$(VENV)/bin/loraq demo

test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest

# The locked dependency set (what `make install` resolved), and a scan of it for known
# vulnerabilities (needs PyPI's vulnerability data or osv.dev, so it is not part of `make test`).
lock: install
	$(PY) -m pip freeze --exclude-editable | grep -v '^-e' > .ci/requirements.lock

audit: install
	$(VENV)/bin/pip-audit -r .ci/requirements.lock --no-deps --disable-pip --progress-spinner off

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

# Rebuild the shipped demo model from scratch (CPU, fixed seeds, ~20 min).
model: install
	$(PY) -m workers.demo_model.build

# Benchmarks: run by hand, never by CI; each prints one JSON line per figure.
bench: bench-sticky bench-engine bench-e2e bench-hot bench-ingest bench-adapters bench-push bench-webhooks bench-history

bench-sticky: install
	$(PY) bench/sticky.py

bench-engine: install
	$(PY) bench/engine.py

bench-e2e: install
	$(PY) bench/e2e.py

bench-hot: install
	$(PY) bench/hot.py

bench-ingest: install
	$(PY) bench/ingest.py

bench-adapters: install
	$(PY) bench/adapters.py

bench-push: install
	$(PY) bench/push.py

bench-webhooks: install
	$(PY) bench/webhooks.py

# 1M job rows on SQLite and PostgreSQL: ~10 min on 2 cores; --rows 100000 for a quick look.
bench-history: install
	$(PY) bench/history.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
