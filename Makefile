# Every target creates or reuses .venv by itself. The venv lives in a cache keyed on the dependency
# pins (pyproject.toml), so a fresh clone with the same pins reuses it; .venv is a link to it.
SHELL := /bin/bash
PY ?= python3
PINS := $(shell $(PY) tools/requirements.py test dev aws azure gcp spark | sha256sum | cut -c1-16)
CACHE ?= $(HOME)/.cache/churnkit
VENV_DIR := $(CACHE)/venv-$(PINS)
VENV := .venv
BIN := $(VENV)/bin
EXTRAS := test dev aws azure gcp spark
# templates/azureml/score.py loads model.skops with the skops version MLflow wrote it with (mlflow 3.17.2 -> 0.16.0).
AZML_PACKAGES := azureml-inference-server-http==1.5.1 scikit-learn==1.9.1 pandas==3.1.1 numpy==2.4.6 PyYAML==6.0.4 skops==0.16.0
AZML_PINS := $(shell echo $(AZML_PACKAGES) | sha256sum | cut -c1-16)
AZML_DIR := $(CACHE)/azml-$(AZML_PINS)
export MPLBACKEND := Agg

.PHONY: venv demo test lab serve bench lint clean test-setup image

venv:
	@if [ ! -f "$(VENV_DIR)/.complete" ]; then \
	  echo "creating $(VENV_DIR) (pinned dependencies; a few minutes the first time)"; \
	  rm -rf "$(VENV_DIR)" && $(PY) -m venv "$(VENV_DIR)" && \
	  $(PY) tools/requirements.py $(EXTRAS) > "$(VENV_DIR)/requirements.txt" && \
	  "$(VENV_DIR)/bin/pip" install -q -r "$(VENV_DIR)/requirements.txt" && \
	  touch "$(VENV_DIR)/.complete"; \
	fi
	@ln -sfn "$(VENV_DIR)" $(VENV)
	@$(BIN)/python -I -c "import churnkit, sys; sys.exit(0 if churnkit.__file__.startswith('$(CURDIR)/') else 1)" 2>/dev/null \
	  || $(BIN)/pip install -q --no-deps -e .

# azureml-inference-server-http pins opentelemetry/pydantic below the kit's pins: it gets its own venv.
$(AZML_DIR)/.complete:
	rm -rf "$(AZML_DIR)" && $(PY) -m venv "$(AZML_DIR)" && \
	"$(AZML_DIR)/bin/pip" install -q $(AZML_PACKAGES) && \
	touch "$@"

test-setup: venv $(AZML_DIR)/.complete
	@ln -sfn "$(AZML_DIR)" .venv-azml
	@{ command -v chromium >/dev/null || command -v chromium-browser >/dev/null; } && command -v chromedriver >/dev/null || \
	  { (apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null) || echo "chromium could not be installed; the browser tests will skip with this reason"; }
	@command -v azurite-blob >/dev/null || npm install -g -s azurite@3.37.0  # Azure Blob emulator (model reads)
	@command -v java >/dev/null || { (apt-get update -qq && apt-get install -y -qq openjdk-17-jre-headless >/dev/null) || \
	  echo "Java 17 could not be installed; the Spark scoring tests will fail with this reason"; }  # pyspark's JVM
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  { (apt-get update -qq && apt-get install -y -qq postgresql >/dev/null) || echo "postgresql could not be installed; the PostgreSQL-backed registry tests will skip with this reason"; }

# The monthly story on synthetic data, in a fresh runs/demo-<UTC time>/ each time: month 1 deploys v1
# locally (router on DEMO_PORT), month 2's challenger is promoted under replayed traffic, a month with
# concept drift (shifted predictions) has its challenger rolled back; then the runs; the endpoint stops.
DEMO_PORT ?= 8000
demo: venv
	@runs="runs/demo-$$(date -u +%Y%m%dT%H%M%SZ)"; ck="$(BIN)/churnkit"; \
	trap '"$$ck" endpoint stop --target local --runs-dir "$$runs" >/dev/null 2>&1' EXIT; set -e; \
	echo "== month 1: train, gate, register v1 as champion, deploy it to the local endpoint"; \
	"$$ck" pipeline --runs-dir "$$runs" -p month 1 -p port $(DEMO_PORT); \
	echo "== month 2: v2 is the challenger; it rolls out step by step under replayed traffic"; \
	"$$ck" pipeline --runs-dir "$$runs" -p month 2 -p port $(DEMO_PORT); \
	echo "== month 3 with concept drift: the challenger's predictions shift, the rollout rolls it back"; \
	"$$ck" pipeline --runs-dir "$$runs" -p month 3 -p drift concept -p port $(DEMO_PORT); \
	"$$ck" runs --runs-dir "$$runs"; \
	echo "== the reviewer's index of these runs (executed notebooks rendered, gate and rollout decisions):"; \
	"$$ck" report --runs-dir "$$runs"; \
	"$$ck" endpoint stop --target local --runs-dir "$$runs"

test: test-setup
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=15 tests

# JupyterLab on notebooks/. MPLBACKEND (exported above for the headless targets) is removed so kernels
# draw figures inline. The store and its artifacts stay in runs/ of the checkout whatever the kernel's
# folder (a relative CHURNKIT_RUNS_DIR is taken from here). Jupyter refuses to start as root unless told
# to; root is what containers and CI images usually run as, so --allow-root is passed then and only then.
LAB_PORT ?= 8888
lab: venv
	@runs="$${CHURNKIT_RUNS_DIR:-runs}"; case "$$runs" in /*) ;; *) runs="$(CURDIR)/$$runs";; esac; \
	root=""; [ "$$(id -u)" = 0 ] && root="--allow-root"; \
	sockets="$$($(BIN)/jupyter --runtime-dir)/lab-kernel-ipc"; mkdir -p "$$(dirname "$$sockets")"; \
	env -u MPLBACKEND CHURNKIT_RUNS_DIR="$$runs" $(BIN)/jupyter lab --port=$(LAB_PORT) $$root \
	  --KernelManager.transport=ipc --KernelManager.ip="$$sockets" notebooks/

serve: venv
	$(BIN)/churnkit serve --model models:/churn@champion --port 8080

# The serving image for linux/amd64 (prints its name); IMAGE_ARGS="--push --target sagemaker" pushes it to ECR
# (azureml: ACR, vertex: Artifact Registry) with the registry named by templates/terraform/<cloud>'s outputs.
IMAGE_ARGS ?=
image: venv
	$(BIN)/churnkit image build $(IMAGE_ARGS)

bench: venv
	for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

lint: venv
	$(BIN)/ruff check churnkit tests bench
	$(BIN)/lint-imports
	$(BIN)/nbstripout --verify --keep-metadata-keys cell.metadata.tags --keep-id notebooks/*.ipynb

clean:
	rm -rf .venv .venv-azml runs/*/ runs/mlflow.db runs/artifacts build *.egg-info
