# Two entry points: `make run` (the main job) and `make test` (the whole suite). Both install what is missing.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
RUN_DIR ?= runs/main
N ?= 4

.PHONY: setup run test lint typecheck bench clean

setup:
	@bash rolegraph/bootstrap.sh

run: setup
	@$(VENV)/bin/rolegraph main --run-dir $(RUN_DIR) --n $(N)

test: setup
	@$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/ruff format --check .
	@$(PY) -m rolegraph.devtools.typecheck

bench: setup
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf .typecheck .pytest_cache .mypy_cache .ruff_cache
