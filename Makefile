# Two commands do all the set-up on a fresh clone: `make test` and `make demo`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
# Parallel workers for pytest-xdist ("auto" = one per core).
PYTEST_WORKERS ?= auto
PYTEST_ARGS ?=
MARKS ?=
PORT ?= 8000

.PHONY: install test lint format migrations-check demo lb-demo bench bench-http clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade --quiet pip

$(STAMP): requirements.txt requirements-bench.txt pyproject.toml | $(PY)
	$(PIP) install --quiet -r requirements-bench.txt
	$(PIP) install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

migrations-check: install
	DJANGO_SETTINGS_MODULE=tests.settings $(PY) manage.py makemigrations --check --dry-run

# Timing-sensitive tests (marked `alone`) run after the parallel suite, one at
# a time. MARKS selects tests in both runs, e.g. MARKS="not slow"; PYTEST_ARGS
# go to both runs too. Exit code 5 (nothing selected) is not a failure.
test: lint migrations-check
	$(VENV)/bin/pytest -n $(PYTEST_WORKERS) -m "not alone$(if $(MARKS), and ($(MARKS)))" $(PYTEST_ARGS)
	$(VENV)/bin/pytest -p no:xdist -m "alone$(if $(MARKS), and ($(MARKS)))" $(PYTEST_ARGS) || [ $$? -eq 5 ]

demo: install
	$(PY) -m demo_project.run --port $(PORT)

# Two gunicorn instances behind nginx, ab -n 1000 -c 100: exactly 100 allowed.
lb-demo: install
	$(PY) -m demo_project.lb_demo

bench: install
	$(PY) -m bench.report --readme

bench-http: install
	$(PY) -m bench.http

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
