# The two set-up commands of the README: `make serve` and `make test`. Both create the
# virtualenv on first use; torch comes as the CPU build pinned in constraints.txt.
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: install serve test lint bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,ray]'
	touch $@

install: $(VENV)/.installed

serve: install
	$(PY) -m server $(ARGS)

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: lint
	$(PY) -m pytest

bench: install
	$(PY) -m benchmarks compare

clean:
	rm -rf $(VENV) artifacts .pytest_cache .ruff_cache
