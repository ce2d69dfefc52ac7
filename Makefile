# make test / lint / migrate / demo. Everything installs into .venv on first use.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install test lint migrate demo bench clean

install: $(INSTALLED)

$(INSTALLED): python/pyproject.toml
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -e 'python[dev]'
	touch $(INSTALLED)

test: $(INSTALLED)
	$(PYTHON) -m pytest tests -p no:cacheprovider $(PYTEST_ARGS)

lint: $(INSTALLED)
	$(VENV)/bin/sqlfluff lint sql
	$(VENV)/bin/ruff check python tests
	$(VENV)/bin/ruff format --check python tests
	$(VENV)/bin/mypy python/hopper

migrate: $(INSTALLED)
	@test -n "$(DATABASE_URL)" || (echo "make migrate needs DATABASE_URL=postgresql://..." >&2; exit 2)
	$(VENV)/bin/hopper --database-url "$(DATABASE_URL)" migrate

demo: $(INSTALLED)
	$(PYTHON) -m hopper.demo

# a throwaway PostgreSQL unless DATABASE_URL is set; BENCH_ARGS="--compare graphile-worker"
BENCH_ARGS ?=
bench: $(INSTALLED)
	$(VENV)/bin/hopper bench --output bench-results.json $(BENCH_ARGS)

clean:
	rm -rf $(VENV)
