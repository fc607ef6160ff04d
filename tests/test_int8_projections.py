"""The build's int8 projections: the products the 4-bit graph computed, within int8's error,
the down projection kept, written so that a failure or a hard link loses nothing, and made
in place for a model of an older recipe."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from rag.embedded_llm.build import MANIFEST, RECIPE, build, checksums
from rag.embedded_llm.int8_projections import WEIGHTS, quantize_projections
from tests.support import make_settings

HIDDEN, INNER, VOCAB, BLOCK = 64, 96, 48, 32
UP = "/model/layers.0/mlp/up_proj/MatMul_Q4"
DOWN = "/model/layers.0/mlp/down_proj/MatMul_Q4"
HEAD = "/lm_head/MatMul_Q4"


def _four_bit(name: str, weight: np.ndarray) -> tuple[list[TensorProto], np.ndarray]:
    """``weight`` [K, N] as MatMulNBits stores it (symmetric 4 bits, blocks of 32 along K),
    and the float weight those 4 bits stand for."""
    k, n = weight.shape
    blocks = weight.T.reshape(n, k // BLOCK, BLOCK)
    scales = np.abs(blocks).max(axis=-1) / 7
    codes = (np.clip(np.round(blocks / scales[..., None]), -8, 7) + 8).astype(np.uint8)
    packed = codes[..., 0::2] | (codes[..., 1::2] << 4)
    exact = ((codes.astype(np.float32) - 8) * scales[..., None]).reshape(n, k).T
    tensors = [numpy_helper.from_array(packed, f"{name}.q4"),
               numpy_helper.from_array(scales.astype(np.float32), f"{name}.scales")]  # fmt: skip
    return tensors, exact


def _model(folder: Path) -> tuple[Path, np.ndarray]:
    """An MLP and an output layer as the GenAI builder writes them, weights in
    ``model.onnx.data``; and the float weight the three 4-bit ones stand for."""
    rng = np.random.default_rng(3)
    shapes = {UP: (HIDDEN, INNER), DOWN: (INNER, HIDDEN), HEAD: (HIDDEN, VOCAB)}
    nodes, tensors, product, x = [], [], np.eye(HIDDEN, dtype=np.float32), "x"
    for number, (name, (k, n)) in enumerate(shapes.items()):
        stored, exact = _four_bit(f"w{number}", rng.standard_normal((k, n)).astype(np.float32))
        y = "y" if name == HEAD else f"h{number}"
        nodes.append(helper.make_node(
            "MatMulNBits", [x, *(t.name for t in stored)], [y], name=name,
            domain="com.microsoft", K=k, N=n, bits=4, block_size=BLOCK,
        ))  # fmt: skip
        tensors, product, x = tensors + stored, product @ exact, y
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", HIDDEN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", VOCAB])],
        tensors,
    )  # fmt: skip
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=10)
    path = folder / "model.onnx"
    onnx.save(model, path, save_as_external_data=True, location="model.onnx.data",
              size_threshold=0)  # fmt: skip
    return path, product


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_int8_projections_compute_what_the_four_bit_graph_did(tmp_path: Path) -> None:
    path, product = _model(tmp_path)
    x = np.random.default_rng(4).standard_normal((2, 5, HIDDEN)).astype(np.float32)
    before = _run(path, x)
    assert np.allclose(before, x @ product, rtol=1e-4, atol=1e-3)  # the 4-bit graph as built

    assert quantize_projections(path) == 2
    after = _run(path, x)
    assert np.abs(after - before).max() < 0.03 * np.abs(before).max()
    assert not np.array_equal(after, before)  # the projections really run in int8
    nodes = onnx.load(path, load_external_data=False).graph.node
    assert [n.name for n in nodes if n.op_type == "MatMulNBits"] == [HEAD]  # output layer kept
    assert sum(n.op_type == "MatMulInteger" for n in nodes) == 2
    assert {p.name for p in tmp_path.iterdir()} == {"model.onnx", WEIGHTS}

    graph, weights = path.read_bytes(), (tmp_path / WEIGHTS).read_bytes()
    assert quantize_projections(path) == 0  # once is enough
    assert path.read_bytes() == graph and (tmp_path / WEIGHTS).read_bytes() == weights


def test_a_token_is_computed_alike_whatever_is_read_with_it(tmp_path: Path) -> None:
    # What keeps an answer after a kept prefix the answer to the whole prompt: with one
    # scale for all the tokens read at once, the loud first token would round the others.
    path, _ = _model(tmp_path)
    x = np.random.default_rng(5).standard_normal((1, 6, HIDDEN)).astype(np.float32)
    x[0, 0] *= 40
    quantize_projections(path)
    whole = _run(path, x)
    parts = np.concatenate([_run(path, x[:, :1]), _run(path, x[:, 1:])], axis=1)
    assert np.abs(parts - whole).max() < 1e-5 * np.abs(whole).max()  # float rounding only


def test_weights_with_a_second_hard_link_are_read_and_the_link_keeps_them(
    tmp_path: Path,
) -> None:
    # onnx.load refuses such a file; a test copy or a backup can make one.
    (tmp_path / "model").mkdir()
    path, _ = _model(tmp_path / "model")
    link = tmp_path / "backup.data"
    link.hardlink_to(path.parent / "model.onnx.data")
    old = link.read_bytes()
    assert quantize_projections(path) == 2
    assert link.read_bytes() == old and os.stat(link).st_nlink == 1


def test_a_failed_write_leaves_the_model_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = _model(tmp_path)
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def full(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("rag.embedded_llm.int8_projections._append", full)
    with pytest.raises(OSError):
        quantize_projections(path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == files


def test_a_model_of_recipe_two_gets_its_int8_projections_in_place(tmp_path: Path) -> None:
    source = tmp_path / "source.gguf"
    source.write_bytes(b"GGUF")
    out = tmp_path / "models" / "old-int4"
    out.mkdir(parents=True)
    path, _ = _model(out)
    (out / "genai_config.json").write_text('{"model": {"decoder": {"filename": "model.onnx"}}}')
    manifest = {"source": str(source), "recipe": 2, "files": checksums(out)}
    (out / MANIFEST).write_text(json.dumps(manifest))
    settings = make_settings(tmp_path)

    result = build(settings, source=str(source), out=out, log=lambda _: None)
    assert result.status == "updated"
    assert "MatMulInteger" in {n.op_type for n in onnx.load(path).graph.node}
    written = json.loads((out / MANIFEST).read_text())
    assert written["recipe"] == RECIPE and set(written["files"]) == {
        "genai_config.json", "model.onnx", WEIGHTS,
    }  # fmt: skip
    assert build(settings, source=str(source), out=out, log=lambda _: None).status == "up to date"
