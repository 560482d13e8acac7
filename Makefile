# edge-runtime: make run | make test | make check | make bench
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= edge-runtime.toml
TORCH_VERSION ?= 2.13.0

.PHONY: run test check lint typecheck bench bench-anchors install clean system-deps \
	install-service uninstall-service

# Real peers the tests talk to, as tool:Debian-package pairs.
DEB_TOOLS := mosquitto:mosquitto mosquitto_rr:mosquitto-clients mosquitto_sub:mosquitto-clients \
	coap-client-notls:libcoap3-bin systemd-analyze:systemd

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Editable install with the export extra (torch CPU, transformers, optimum) and the dev tools:
# the tests check the export path and parity against PyTorch and optimum.
# torch is pinned first so the export extra's range resolves to the CPU build, not a CUDA one.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet 'torch==$(TORCH_VERSION)'
	$(BIN)/pip install --quiet -e '.[export,dev]'
	touch $@

install: $(STAMP)

# onnxruntime-genai, the reference `bench model` compares against, in an environment of its own:
# its model builder needs transformers >= 5, which optimum-onnx (the export extra) rules out.
ANCHORS := .venv-anchors
ANCHORS_STAMP := $(ANCHORS)/.installed
GENAI_VERSION ?= 0.18.0

$(ANCHORS_STAMP):
	$(PYTHON) -m venv $(ANCHORS)
	$(ANCHORS)/bin/pip install --quiet --upgrade pip
	$(ANCHORS)/bin/pip install --quiet 'torch==$(TORCH_VERSION)'
	$(ANCHORS)/bin/pip install --quiet 'onnxruntime-genai==$(GENAI_VERSION)' \
	  'transformers>=5,<6' onnx onnx-ir
	touch $@

bench-anchors: $(ANCHORS_STAMP)

run: $(STAMP)
	$(BIN)/edge-runtime doctor --config $(CONFIG)
	@if ! (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null; then \
	  if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then \
	    echo "no MQTT broker on 127.0.0.1:1883: starting a local mosquitto for this run"; \
	    PATH="$$PATH:/usr/sbin" mosquitto -p 1883 -d && sleep 0.5; \
	  else \
	    echo "no MQTT broker on 127.0.0.1:1883 and mosquitto is not installed (apt-get install mosquitto)"; \
	    exit 1; \
	  fi; \
	fi
	$(BIN)/edge-runtime serve --config $(CONFIG)

system-deps:
	@need=""; \
	for pair in $(DEB_TOOLS); do \
	  tool=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$tool >/dev/null 2>&1 || [ -x /usr/sbin/$$tool ] || need="$$need $$pkg"; \
	done; \
	if [ -n "$$need" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$need"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$need >/dev/null; \
	  else \
	    echo "missing Debian packages:$$need (install them, or run make test as root)"; exit 1; \
	  fi; \
	fi

test: $(STAMP) $(ANCHORS_STAMP) system-deps
	PATH="$$PATH:/usr/sbin" $(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff format --check edge_runtime tests
	$(BIN)/ruff check edge_runtime tests

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

bench: $(STAMP) $(ANCHORS_STAMP)
	$(BIN)/edge-runtime bench model

# As root: the package in a venv under /opt/edge-runtime, models and filters beside it, the
# config in /etc/edge-runtime (kept if present), the unit, then systemctl daemon-reload.
install-service:
	packaging/install.sh

# Undoes install-service; the config and the state directory stay unless PURGE=1.
uninstall-service:
	packaging/uninstall.sh

clean:
	rm -rf $(VENV) $(ANCHORS) .mypy_cache .ruff_cache .pytest_cache .hypothesis *.egg-info
