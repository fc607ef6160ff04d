"""Sentence embeddings with the exported all-MiniLM-L6-v2, on onnxruntime and tokenizers only.

The model is exported once by ``python -m rag.export_embedder`` (``make models``) into
``settings.embedder_dir``; this module only runs it, so the query path never loads torch.
Vectors are mean-pooled over real tokens and L2-normalised, exactly as sentence-transformers
does for this model, so a dot product is a cosine similarity.

The example needs the exported model (``make models``):

>>> embedder = get_embedder(Settings(_env_file=None))
>>> vectors = embedder.embed(["How do I add my own files?", "Copy them into docs/ and ingest."])
>>> vectors.shape, round(float(vectors[0] @ vectors[0]), 3)
((2, 384), 1.0)
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from rag.errors import ModelMissing
from rag.settings import Settings

# The exported directory's layout; rag.export_embedder writes it, this module reads it.
MANIFEST_NAME = "manifest.json"
TOKENIZER_NAME = "tokenizer.json"
MODEL_FILES: dict[str, str] = {"fp32": "model.onnx", "int8": "model_int8.onnx"}
MANIFEST_VERSION = 1

_INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


def _missing(embedder_dir: Path, what: str) -> ModelMissing:
    return ModelMissing(
        f"The embedding model is not ready ({what} in {embedder_dir}): run `make models` "
        "(or `python -m rag.export_embedder`) to export it."
    )


def read_manifest(embedder_dir: Path) -> dict[str, Any]:
    """The export's manifest as a dict; raises :class:`ModelMissing` when absent or unreadable."""
    path = embedder_dir / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _missing(embedder_dir, f"no {MANIFEST_NAME}") from None
    except (OSError, ValueError) as exc:
        raise _missing(embedder_dir, f"unreadable {MANIFEST_NAME}: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("manifest_version") != MANIFEST_VERSION:
        raise _missing(embedder_dir, f"{MANIFEST_NAME} from another exporter version")
    return manifest


def load_tokenizer(settings: Settings) -> Tokenizer:
    """The model's tokenizer with truncation and padding switched off (for chunking by tokens).

    The shipped ``tokenizer.json`` truncates and pads to 128; a chunker must see every token,
    so both are disabled here. ``encode(text).ids`` includes ``[CLS]``/``[SEP]``; pass
    ``add_special_tokens=False`` to count only the text's tokens.
    """
    return tokenizer_at(settings.embedder_dir)


def tokenizer_at(embedder_dir: Path) -> Tokenizer:
    """:func:`load_tokenizer` for the exported model in ``embedder_dir``."""
    read_manifest(embedder_dir)
    path = embedder_dir / TOKENIZER_NAME
    if not path.is_file():
        raise _missing(embedder_dir, f"no {TOKENIZER_NAME}")
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def session_options(threads: int, *, spin: bool = True) -> ort.SessionOptions:
    """onnxruntime options for the embedder: ``threads`` inside each op, full graph optimisation.

    :class:`Embedder` asks for one thread: it runs whole batches side by side instead
    (see :meth:`Embedder.embed`). ``spin`` lets idle worker threads busy-wait for the
    next op (onnxruntime's default); with one thread there are no workers to spin.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    # Ops of one run go one after another; the model is a plain chain of them.
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return options


class Embedder:
    """Embeds texts into L2-normalised float32 vectors with the exported ONNX model.

    ``embed(texts)`` gives one row per text in input order, ``embed_query(text)``
    one vector; their dot product is the cosine similarity.
    ``settings.embed_precision`` picks the int8 graph (default) or the fused fp32 one;
    texts longer than ``settings.embed_max_tokens`` tokens are truncated, as sentence-transformers
    does. One instance is safe to share between threads (onnxruntime sessions are).

    Batches run side by side on ``settings.threads`` threads (0: one per core), each on one
    core, rather than one batch at a time with every op split over the cores: the small ops
    of this model spend much of their time waiting for each other's threads. On 2 shared
    cores bench_embed measured int8 side by side 1.1-2.0x as fast as one batch at a time.
    """

    def __init__(self, settings: Settings) -> None:
        self.embedder_dir = settings.embedder_dir
        manifest = read_manifest(self.embedder_dir)
        self.precision = settings.embed_precision
        entry = manifest.get("files", {}).get(self.precision)
        if not entry:
            raise _missing(self.embedder_dir, f"no {self.precision} model listed in the manifest")
        model_path = self.embedder_dir / entry["path"]
        # A full sha256 of 90 MB costs ~0.2 s per process; the size catches truncated copies,
        # and the exporter verifies checksums on every `make models`.
        try:
            size = model_path.stat().st_size
        except FileNotFoundError:
            raise _missing(self.embedder_dir, f"no {entry['path']}") from None
        if size != entry["size"]:
            raise _missing(
                self.embedder_dir,
                f"{entry['path']} is {size} bytes, the manifest says {entry['size']}: damaged",
            )

        self.dim: int = int(manifest["dimension"])
        self.max_tokens: int = settings.embed_max_tokens
        self.batch_size: int = settings.embed_batch
        self.model_name: str = manifest["model"]

        self._tokenizer = load_tokenizer(settings)
        self._tokenizer.enable_truncation(max_length=self.max_tokens)
        # Padding is done per batch after sorting by length (see embed), not by the tokenizer.

        self.workers: int = settings.threads or os.cpu_count() or 1
        # One thread per run; embed() runs up to `workers` batches at once (runs release the GIL).
        self._session = ort.InferenceSession(
            str(model_path), sess_options=session_options(1), providers=["CPUExecutionProvider"]
        )
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="embed")
        self._inputs = [i.name for i in self._session.get_inputs()]
        unknown = set(self._inputs) - set(_INPUT_NAMES)
        if unknown:
            raise _missing(self.embedder_dir, f"unexpected model inputs {sorted(unknown)}")

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts``: an ``(len(texts), dim)`` float32 array, row i for ``texts[i]``."""
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of texts; use embed_query() for one text")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        encodings = self._tokenizer.encode_batch(list(texts))
        # Batches of similar length waste little on padding, which dominates CPU time otherwise.
        order = sorted(range(len(encodings)), key=lambda i: len(encodings[i].ids))
        # A few texts are split evenly over the workers rather than left to one of them.
        size = min(self.batch_size, -(-len(order) // self.workers))
        batches = [order[i : i + size] for i in range(0, len(order), size)]
        if len(batches) == 1:  # a query: no hand-over to a worker thread
            out[batches[0]] = self._embed_encoded([encodings[i] for i in batches[0]])
            return out
        embedded = self._pool.map(
            lambda batch: self._embed_encoded([encodings[i] for i in batch]), batches
        )
        for batch, rows in zip(batches, embedded, strict=True):
            out[batch] = rows
        return out

    def embed_query(self, text: str) -> np.ndarray:
        """Embed one text: a ``(dim,)`` float32 unit vector."""
        return self.embed([text])[0]

    def _embed_encoded(self, encodings: list[Any]) -> np.ndarray:
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(encodings), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        types = np.zeros_like(ids)
        for row, enc in enumerate(encodings):
            n = len(enc.ids)
            ids[row, :n] = enc.ids
            mask[row, :n] = enc.attention_mask
            types[row, :n] = enc.type_ids
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        (hidden,) = self._session.run(
            ["last_hidden_state"], {name: feeds[name] for name in self._inputs}
        )
        # Mean over real tokens only, then unit length: the model's sentence-transformers recipe.
        weights = mask[:, :, None].astype(np.float32)
        summed = (hidden * weights).sum(axis=1)
        pooled = summed / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.clip(norms, 1e-12, None)).astype(np.float32, copy=False)


def get_embedder(settings: Settings) -> Embedder:
    """The process-wide :class:`Embedder` for these settings (one per model dir and precision).

    Loading takes ~0.5 s and ~100 MB, so ingest and every query share one session,
    whatever else differs between their settings (a data dir, an LLM endpoint).
    """
    return _shared_embedder(_embedder_part(settings))


@functools.cache
def _shared_embedder(settings: Settings) -> Embedder:
    return Embedder(settings)


def _embedder_part(settings: Settings) -> Settings:
    """Only the settings an :class:`Embedder` reads, the rest left at their defaults."""
    return Settings.model_construct(
        models_dir_override=settings.models_dir.resolve(),
        embed_precision=settings.embed_precision,
        embed_max_tokens=settings.embed_max_tokens,
        embed_batch=settings.embed_batch,
        threads=settings.threads,
    )
