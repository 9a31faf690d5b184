# Two commands on a fresh machine: `make demo` and `make test`. Each sets up its own virtualenv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-unit lint typecheck proto bench clean wheelhouse images docker-smoke chromium

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt torch
	$(PIP) install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: venv
	$(VENV)/bin/splitft demo

# Two workers (pytest-xdist): most of the suite's time is waiting on the processes it starts (edges,
# control planes, agents, benchmark workers importing torch), so two workers halve it on two cores.
# Tests stay independent of order and of each other's ports, temp dirs and databases.
test: venv chromium
	$(PY) -m pytest -q -ra -n 2 --dist worksteal

# Debian's headless Chromium for the dashboard's browser test (tests/e2e/test_dashboard_browser.py,
# skipped without it); Playwright (a dev extra) drives it, never downloading a browser of its own.
# Best effort, so `make test` installs it where it can: without root or the index the test skips.
chromium:
	@command -v chromium >/dev/null || (apt-get update -q && apt-get install -y -q chromium) \
		|| echo "make chromium: Debian's chromium not installed; the dashboard's browser test will skip"

# The fast loop: pure modules and in-process units (tests/unit), under a minute.
test-unit: venv
	$(PY) -m pytest -q -ra tests/unit

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

typecheck: venv
	$(VENV)/bin/mypy splitft device_client edge_server services

proto: venv
	PATH=$(VENV)/bin:$$PATH bash proto/generate.sh

bench: venv
	$(VENV)/bin/splitft bench step

# --- Deploy (docs/deploy.md). Not part of `make test` or CI: they need a Docker engine. ---
DOCKER ?= docker
BASE_IMAGE ?= python:3.11-slim
WHEELHOUSE ?= 0
IMAGE_TAG ?= 0.1.0
DOCKER_BUILD_FLAGS ?=

# Every wheel both images need (torch at the constraints.txt pin), for builds with no index access.
# Build it with the Python version and platform of the image's base (3.11, Linux).
wheelhouse: venv
	$(PIP) wheel --quiet --wheel-dir wheelhouse -c constraints.txt 'setuptools>=68' torch '.[edge,control]'
	rm -f wheelhouse/splitft-*.whl  # the images build splitft itself from the sources they copy
	@ls wheelhouse | wc -l | xargs echo "wheels in wheelhouse:"

# The two images; `make images WHEELHOUSE=1` installs only from ./wheelhouse (no index access).
images:
	mkdir -p wheelhouse  # the Dockerfiles copy it (empty unless WHEELHOUSE=1)
	$(DOCKER) build $(DOCKER_BUILD_FLAGS) -f deploy/control-plane.Dockerfile -t splitft-control:$(IMAGE_TAG) \
	    --build-arg BASE_IMAGE=$(BASE_IMAGE) --build-arg WHEELHOUSE=$(WHEELHOUSE) .
	$(DOCKER) build $(DOCKER_BUILD_FLAGS) -f deploy/edge.Dockerfile -t splitft-edge:$(IMAGE_TAG) \
	    --build-arg BASE_IMAGE=$(BASE_IMAGE) --build-arg WHEELHOUSE=$(WHEELHOUSE) .

# Build both images for real, bring the compose stack up, train one device job against it from this
# host, fetch the adapter over REST, tear everything down. Slow (minutes); run before a release.
docker-smoke: venv
	PYTHON=$(PY) DOCKER=$(DOCKER) bash deploy/smoke.sh

clean:
	rm -rf $(VENV) build *.egg-info
