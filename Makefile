# hakit: the two commands of the README (make demo, make test) both start with `make install`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
APT_PACKAGES := iproute2 nftables fuse3 libfuse3-dev pkg-config util-linux procps psmisc \
                iputils-ping arping curl ca-certificates python3-venv fio gcc

.PHONY: install demo test unit lint typecheck bench clean

install: $(STAMP)

$(STAMP): pyproject.toml csrc/fuseshim.c csrc/fuseshim.map
	@if [ "$$(id -u)" != 0 ]; then echo "make install: run as root (apt-get, network namespaces)"; exit 1; fi
	@missing=""; for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "apt-get install:$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 required"'
	[ -x $(VENV)/bin/python ] || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/demo.sh

test: install
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/pytest -q tests

unit: install
	$(VENV)/bin/pytest -q tests/unit

lint: install
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

typecheck: install
	$(VENV)/bin/mypy

clean:
	-PATH="$(CURDIR)/$(VENV)/bin:$$PATH" hakit lab down
	rm -rf $(VENV) build *.egg-info src/*.egg-info
