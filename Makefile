# One place for every developer command. `make run` and `make check` set everything up first.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
SOURCES = bot adapters cloud commands

.PHONY: install run console check lint typecheck test bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/.installed

# The bot on the embedded default: console adapter + local backend, no account needed.
run: install
	@$(BIN)/sdbot run

console: run

# Every check and test, as CI runs them.
check: lint typecheck test

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

test: install
	$(BIN)/pytest

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache sdbot-data sdbot-output
