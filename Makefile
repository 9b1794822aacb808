# The two set-up commands of the README: `make serve` and `make test`. Both create the
# virtualenv on first use; torch comes as the CPU build pinned in constraints.txt.
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: install install-dev serve test lint audit bench clean proto

# The server alone (what `make serve` needs); the tests add their tools, the report's
# matplotlib and the Ray extra, which a user of the plain server does not carry.
$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,report,ray]'
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

serve: install
	$(PY) -m server $(ARGS)

lint: install-dev
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: lint
	$(PY) -m pytest

# Known vulnerabilities of the installed runtime dependencies (.ci/audit.py says why not
# pip-audit, and what it can and cannot audit here).
audit: install-dev
	$(PY) .ci/audit.py

bench: install-dev
	$(PY) -m benchmarks compare

# The Open Inference Protocol's gRPC messages are committed; regenerate after editing the .proto.
proto: install-dev
	$(PY) -m pip install --quiet -c constraints.txt 'grpcio-tools>=1.81.1' 'protobuf>=6.33.5,<7'
	$(PY) -m grpc_tools.protoc -I. --python_out=. --pyi_out=. \
		server/oip_proto/inference.proto

clean:
	rm -rf $(VENV) artifacts .pytest_cache .ruff_cache
