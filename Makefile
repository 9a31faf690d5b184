# Two commands on a fresh machine: `make demo` and `make test`. Each sets up its own virtualenv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint typecheck proto bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt torch
	$(PIP) install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: venv
	$(VENV)/bin/splitft demo

test: venv
	$(PY) -m pytest -q -ra

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: venv
	$(VENV)/bin/mypy proto/splitft device_client edge_server services

proto: venv
	PATH=$(VENV)/bin:$$PATH bash proto/generate.sh

bench: venv
	$(VENV)/bin/splitft bench step

clean:
	rm -rf $(VENV) build *.egg-info
