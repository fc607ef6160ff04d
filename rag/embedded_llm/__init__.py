"""The embedded offline LLM engine: ONNX Runtime GenAI behind an OpenAI-compatible API.

The app uses it when no model server is configured or discovered, so it still
answers on a machine without Foundry Local, Ollama or a network.

- ``python -m rag.embedded_llm build``: convert a tier's packaged GGUF (or another GGUF /
  Hugging Face folder) to an ONNX Runtime GenAI model (4-bit, its projections then stored
  in int8 to read prompts faster), checked by sha256;
- ``python -m rag.embedded_llm serve``: serve it on 127.0.0.1 (``/v1/models``, ``/v1/chat/completions``);
- :func:`shared_engine` / :class:`EngineProcess`: run the server as a child of the app
  and get a :class:`rag.llm.Endpoint` for it; :func:`engine_available` says if the model is built.

Importing this package loads neither torch nor onnxruntime_genai.
"""

from rag.embedded_llm.model import ModelInfo
from rag.embedded_llm.process import EngineProcess, engine_available, shared_engine

__all__ = ["EngineProcess", "ModelInfo", "engine_available", "shared_engine"]
