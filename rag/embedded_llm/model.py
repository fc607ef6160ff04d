"""What an ONNX Runtime GenAI model folder is: its id, context size, tier and size.

A model folder is anything with a ``genai_config.json`` next to its ONNX files:
the one ``python -m rag.embedded_llm build`` makes, or one Foundry Local cached. This
module only reads JSON, so the app can ask about the model without loading it.
A folder built by ``rag.embedded_llm build`` from a tier also has a ``manifest.json``
naming the tier and its approximate parameter count; for any other folder both are None.

>>> info = ModelInfo.read(Path(".data/models/qwen2.5-coder-1.5b-instruct-int4"))  # doctest: +SKIP
>>> info.id, info.context_tokens, info.tier, info.parameters                       # doctest: +SKIP
('qwen2.5-coder-1.5b-instruct-int4', 4096, 'qwen2.5-1.5b', 1540000000)
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rag.errors import ModelMissing

if TYPE_CHECKING:
    import onnx

GENAI_CONFIG = "genai_config.json"
MANIFEST = "manifest.json"
BUILD_HINT = "run `make models` (or `python -m rag.embedded_llm build`)"


@dataclass(frozen=True)
class ModelInfo:
    """The served model: folder, OpenAI model id, how many tokens prompt + answer may use,
    and, for a model built from a tier, the tier's name and approximate parameter count."""

    path: Path
    id: str
    context_tokens: int
    tier: str | None = None
    parameters: int | None = None  # from the build manifest, else estimated from the config

    @classmethod
    def read(cls, path: Path) -> ModelInfo:
        """Read ``genai_config.json`` in ``path``; raises :class:`ModelMissing` when absent."""
        config_file = path / GENAI_CONFIG
        if not config_file.is_file():
            raise ModelMissing(
                f"The embedded model is not built ({config_file} is missing): {BUILD_HINT}."
            )
        config = json.loads(config_file.read_text(encoding="utf-8"))
        tier, parameters = built_tier(path)
        return cls(
            path=path,
            id=model_id(path),
            context_tokens=context_tokens(config),
            tier=tier,
            parameters=parameters or approximate_parameters(config),
        )


def built_tier(path: Path) -> tuple[str | None, int | None]:
    """(tier name, parameters) from the build manifest in ``path``; (None, None) without one."""
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        tier = manifest.get("tier") or {}
        return tier.get("name"), tier.get("parameters")
    except (OSError, ValueError, AttributeError):
        # Foundry Local's cache and hand-made folders have no manifest: nothing to say.
        return None, None


def model_id(path: Path) -> str:
    """The id clients use: the folder name, lower-cased, with spaces/odd characters as dashes."""
    name = path.resolve().name.lower()
    return re.sub(r"[^a-z0-9._-]+", "-", name).strip("-") or "embedded"


def context_tokens(config: dict) -> int:
    """Prompt + answer limit: ``search.max_length`` or ``model.context_length``, the smaller."""
    search = config.get("search", {})
    model = config.get("model", {})
    limits = [v for v in (search.get("max_length"), model.get("context_length")) if v]
    # max_length is what the generator enforces; a smaller context_length is the model's real limit.
    return int(min(limits)) if limits else 2048


def approximate_parameters(config: dict) -> int | None:
    """About how many weights the model has: 12·layers·hidden² plus the embedding table.

    Exact enough to tell a 135M model from a 1.5B one (the prompt style depends
    on it, :func:`rag.prompt.style_for`); None when the config lacks the sizes.
    """
    model = config.get("model", {})
    decoder = model.get("decoder", {})
    hidden, layers, vocab = (
        decoder.get("hidden_size"),
        decoder.get("num_hidden_layers"),
        model.get("vocab_size"),
    )
    if not (hidden and layers and vocab):
        return None
    return int(12 * layers * hidden * hidden + vocab * hidden)


def replace_graph(model: onnx.ModelProto, model_file: Path) -> None:
    """Write ``model`` (its weights already in place) over ``model_file``, atomically.

    Written beside the old file and renamed over it: a kill leaves the old graph whole.
    The weights' path is relative to the graph's folder, so the copy finds them too.
    """
    import onnx

    partial = model_file.with_name(model_file.name + ".partial")
    onnx.save(model, partial)
    os.replace(partial, model_file)
