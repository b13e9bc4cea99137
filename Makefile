# The AutoBot cluster toolkit. On a fresh machine, as root:
#   make up     the local six-machine cluster (embedded default), converged, with a health table
#   make test   lint, Molecule (six systemd containers) and the Python tests
#   make down   remove the local cluster
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV := $(CURDIR)/.venv
BIN := $(VENV)/bin
export PATH := $(BIN):$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export PYTHONDONTWRITEBYTECODE := 1
# Tests and `make up` only ever use the local inventory; production is never named here.
LOCAL_INVENTORY := inventory/local
# Debian packages the tests and the local cluster need: command -> package.
SYSTEM_PACKAGES := redis-server:redis-server debootstrap:debootstrap dockerd:docker.io sqlite3:sqlite3 \
	nginx:nginx chromium:chromium

.PHONY: help up test down status deps system-packages venv docker image lint pytest molecule bench lock

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

up: deps docker image ## create the local cluster, converge site.yml, print the health table
	ansible-playbook -i $(LOCAL_INVENTORY) playbooks/local-cluster.yml
	ansible-playbook -i $(LOCAL_INVENTORY) playbooks/site.yml
	autobot ops status -i $(LOCAL_INVENTORY)

status: venv ## print the health table of the local cluster
	autobot ops status -i $(LOCAL_INVENTORY)

down: venv ## remove the local cluster (containers and network)
	ansible-playbook -i $(LOCAL_INVENTORY) playbooks/local-cluster.yml -e autobot_local_state=absent

test: deps docker image lint molecule pytest ## lint, molecule test, the Python tests

deps: system-packages venv ## install what is missing (Debian packages, the virtualenv)

system-packages:
	@missing=""; for pair in $(SYSTEM_PACKAGES); do \
	  command -v "$${pair%%:*}" >/dev/null 2>&1 || missing="$$missing $${pair##*:}"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,lint,deploy]'
	touch $@

docker: ## make sure a Docker engine answers
	molecule/resources/ensure-docker.sh >/dev/null

image: docker ## build the node image (only when its recipe changed)
	molecule/resources/node-image/build.sh >/dev/null

lint: venv ## ruff, mypy, yamllint, ansible-lint (production profile)
	ruff check src tests molecule ansible
	ruff format --check src tests molecule ansible
	mypy
	yamllint --strict .
	ansible-lint --nocolor -q

molecule: venv docker image ## every Molecule scenario (create, converge, idempotence, verify, destroy)
	molecule test --all

pytest: venv ## unit, integration and security tests (a real redis-server is started by the tests)
	pytest -q -p no:cacheprovider tests

lock: venv ## pin the services' dependencies with hashes (services.lock, what the machines install)
	uv pip compile pyproject.toml --quiet --generate-hashes --no-header --python-version 3.11 \
	  --python-platform x86_64-manylinux_2_28 --output-file services.lock

bench: venv ## the benchmarks (print numbers; nothing asserts on time)
	@for b in tests/perf/bench_*.py; do echo "== $$b"; python "$$b"; done
