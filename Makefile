# One place for every developer command. `make run` and `make check` set everything up first.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
SOURCES = bot adapters cloud commands transport

.PHONY: install run console check lint typecheck test bench clean

# Quiet, and on stderr: stdout belongs to the console adapter's line protocol.
$(BIN)/.installed: pyproject.toml
	@echo "setting up $(VENV) (first run only) …" >&2
	@$(PYTHON) -m venv $(VENV) >&2
	@$(BIN)/pip install --quiet --upgrade pip >&2
	@$(BIN)/pip install --quiet -e '.[dev]' >&2
	@touch $@

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
	$(BIN)/lint-imports

# Source and tests alike: the files are listed in pyproject's [tool.mypy].
typecheck: install
	$(BIN)/mypy

test: install
	$(BIN)/pytest

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache sdbot-data sdbot-output
