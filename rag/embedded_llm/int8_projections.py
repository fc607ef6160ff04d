"""Read prompts with int8 matrix products: a built model's projections, re-quantized.

ONNX Runtime GenAI's builder stores every projection as 4-bit weights (``MatMulNBits``).
Reading a prompt, onnxruntime turns them back into float32 and multiplies in float32:
on a CPU without VNNI, asking it to multiply in int8 instead (accuracy level 4) reads
prompts no faster (24 against 25 tokens/s on the 1.5B, bench/RESULTS.md).
:func:`quantize_projections` stores every projection but the output layer as int8
weights, one scale per output column, and quantizes each token's activations to 8 bits
with a scale of its own before onnxruntime's ``MatMulInteger``, whose int8 product reads
a prompt about 1.8x as fast on this machine's AVX2 (``bench_projections`` in
bench/RESULTS.md).

Why each token has its own scale, though onnxruntime's ``DynamicQuantizeMatMul`` (one
scale for the whole prompt) is faster still:

- a few tokens carry values hundreds of times larger than the rest (the MLP's down
  projection reads them); one 8-bit scale for the prompt rounds every other token
  coarsely. Measured with one scale and the down projections kept in 4 bits, 2 of 39
  answers lost their right source and one question of the corpus set went unrefused;
- a token is then rounded alike whichever tokens are read with it, so a prompt read after
  a kept prefix (:mod:`rag.embedded_llm.generation`) is rounded as it is read whole; only
  attention's floats add up in another order, which can tip a near tie between two
  tokens (the engine's kept-prefix test).

The output layer keeps the builder's 4 bits: it reads one position only
(:mod:`rag.embedded_llm.last_logits`), and while an answer is written, its weights,
the largest of the model, are read once per token, twice as many bytes in int8.

The weights use 7 bits (-63..63): without VNNI, onnxruntime's int8 kernel adds two
products of an activation (up to 255) and a weight in 16 bits, which 127 would overflow.

The new weights go to their own file, then the graph file is renamed over the old one
and the old weights are deleted: a kill at any moment leaves one whole model. Tensors
are read with numpy at their recorded offsets rather than by ``onnx.load``, which
refuses a weights file with more than one hard link.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from rag.embedded_llm.model import replace_graph

if TYPE_CHECKING:
    import onnx

WEIGHTS = "model.int8.onnx.data"
_KEPT = "lm_head"  # the builder's name for the output layer; see the module docstring
_LIMIT = 63  # 7-bit weights: see the module docstring
# Constants the new nodes of every projection share, added to the graph once.
_AXES, _TINY, _STEPS, _ZERO = "i8_last_axis", "i8_tiny", "i8_steps", "i8_zero"
_ALIGN = 64
_OPSET = 21  # QuantizeLinear with a scale per block (here, per token)
_EXTERNAL = 1  # onnx.TensorProto.EXTERNAL, without importing onnx to read this module


def quantize_projections(model_file: Path) -> int:
    """Replace ``model_file``'s 4-bit projections (but the output layer) by int8 ones, in place.

    Returns how many were replaced; 0 leaves the files as they are (done already, or a
    graph without such projections).
    """
    import onnx

    model = onnx.load(model_file, load_external_data=False)
    folder = model_file.parent
    tensors = {t.name: t for t in model.graph.initializer}
    count = sum(_convertible(n, tensors) for n in model.graph.node)
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if not count or opset < _OPSET:
        return 0
    old_files = {_where(t)["location"] for t in tensors.values() if _is_external(t)}
    partial = folder / (WEIGHTS + ".partial")
    try:
        with partial.open("wb") as out:
            _rewrite(model.graph, tensors, folder, out)
    except BaseException:
        partial.unlink(missing_ok=True)  # a full disk leaves the model as it was
        raise
    os.replace(partial, folder / WEIGHTS)
    replace_graph(model, model_file)
    for name in old_files - {WEIGHTS}:
        (folder / name).unlink(missing_ok=True)
    return count


def _rewrite(
    graph: onnx.GraphProto, tensors: dict[str, onnx.TensorProto], folder: Path, out: BinaryIO
) -> None:
    """Swap every convertible node, and write every weight the graph still uses to ``out``."""
    graph.initializer.extend(_constants())
    nodes = [
        made
        for node in graph.node
        for made in (_swap(graph, node, tensors, folder, out) if _convertible(node, tensors)
                     else [node])
    ]  # fmt: skip
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for n in nodes for name in n.input}
    kept = [t for t in graph.initializer if t.name in used]  # the 4-bit ones go
    for tensor in kept:
        if _is_external(tensor) and _where(tensor)["location"] != WEIGHTS:
            _append(tensor, _raw(tensor, folder), out)
    del graph.initializer[:]
    graph.initializer.extend(kept)


def _convertible(node: onnx.NodeProto, tensors: dict[str, onnx.TensorProto]) -> bool:
    """A 4-bit ``MatMulNBits`` this module knows how to read, and not a kept one."""
    if node.op_type != "MatMulNBits" or _KEPT in node.name:
        return False
    g_idx = len(node.input) > 4 and node.input[4]  # a reordering of K this module ignores
    return _attributes(node).get("bits") == 4 and not g_idx and node.input[1] in tensors


def _swap(
    graph: onnx.GraphProto,
    node: onnx.NodeProto,
    tensors: dict[str, onnx.TensorProto],
    folder: Path,
    out: BinaryIO,
) -> list[onnx.NodeProto]:
    """The nodes that stand for ``node``, quantizing each token to 8 bits and multiplying by
    its weights as int8 columns, which are written to ``out`` and added to ``graph``."""
    from onnx import numpy_helper

    weight = _dequantized(node, tensors, folder)  # [K, N]
    scale = np.abs(weight).max(axis=0) / _LIMIT
    scale[scale == 0] = 1.0
    quantized = np.clip(np.round(weight / scale), -_LIMIT, _LIMIT).astype(np.int8)
    stem = node.input[1]
    for name, array in ((f"{stem}_int8", quantized), (f"{stem}_int8_scale", scale)):
        tensor = numpy_helper.from_array(array, name)
        raw = tensor.raw_data
        tensor.ClearField("raw_data")
        _append(tensor, raw, out)
        graph.initializer.append(tensor)
    return _int8_product(node, stem)


def _constants() -> list[onnx.TensorProto]:
    from onnx import numpy_helper

    return [
        numpy_helper.from_array(np.array([-1], np.int64), _AXES),
        numpy_helper.from_array(np.array(1e-12, np.float32), _TINY),  # a token of zeros
        numpy_helper.from_array(np.array(127, np.float32), _STEPS),
        numpy_helper.from_array(np.array(128, np.uint8), _ZERO),
    ]


def _int8_product(node: onnx.NodeProto, stem: str) -> list[onnx.NodeProto]:
    """``node``'s product: x [.., K] to uint8 around 128 with one scale per token (its largest
    magnitude over 127), times the int8 weights, scaled back per token and per column."""
    from onnx import TensorProto, helper

    x, k, at = node.input[0], _attributes(node)["K"], f"{node.name}/int8"
    bias = node.input[5] if len(node.input) > 5 and node.input[5] else None
    product = f"{at}/scaled" if bias else node.output[0]
    made = [
        helper.make_node("Abs", [x], [f"{at}/abs"], name=f"{at}/Abs"),
        helper.make_node("ReduceMax", [f"{at}/abs", _AXES], [f"{at}/largest"], keepdims=1),
        helper.make_node("Max", [f"{at}/largest", _TINY], [f"{at}/range"]),
        helper.make_node("Div", [f"{at}/range", _STEPS], [f"{at}/x_scale"]),
        helper.make_node("Shape", [f"{at}/x_scale"], [f"{at}/tokens"]),
        helper.make_node("Expand", [_ZERO, f"{at}/tokens"], [f"{at}/x_zero"]),
        helper.make_node("QuantizeLinear", [x, f"{at}/x_scale", f"{at}/x_zero"], [f"{at}/x"],
                         axis=-1, block_size=k),  # one block per token: a scale of its own
        helper.make_node("MatMulInteger", [f"{at}/x", f"{stem}_int8", _ZERO], [f"{at}/sums"],
                         name=f"{at}/MatMulInteger"),
        helper.make_node("Cast", [f"{at}/sums"], [f"{at}/float"], to=TensorProto.FLOAT),
        helper.make_node("Mul", [f"{at}/float", f"{at}/x_scale"], [f"{at}/per_token"]),
        helper.make_node("Mul", [f"{at}/per_token", f"{stem}_int8_scale"], [product]),
    ]  # fmt: skip
    if bias:
        made.append(helper.make_node("Add", [product, bias], [node.output[0]]))
    return made


def _dequantized(
    node: onnx.NodeProto, tensors: dict[str, onnx.TensorProto], folder: Path
) -> np.ndarray:
    """The float32 weight [K, N] a 4-bit ``MatMulNBits`` multiplies by."""
    attributes = _attributes(node)
    k, n, block = attributes["K"], attributes["N"], attributes["block_size"]
    blocks = -(-k // block)
    packed = _array(tensors[node.input[1]], folder).reshape(n, blocks, block // 2)
    scales = _array(tensors[node.input[2]], folder).astype(np.float32).reshape(n, blocks)
    codes = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(n, blocks, block)
    if len(node.input) > 3 and node.input[3]:  # zero points, two to a byte, low one first
        zp = _array(tensors[node.input[3]], folder).reshape(n, -1)
        zero = np.stack([zp & 0x0F, zp >> 4], axis=-1).reshape(n, -1)[:, :blocks]
    else:
        zero = np.full((n, blocks), 8, np.uint8)  # symmetric: the middle code is zero
    values = (codes.astype(np.float32) - zero[:, :, None]) * scales[:, :, None]
    return np.ascontiguousarray(values.reshape(n, blocks * block)[:, :k].T)


def _attributes(node: onnx.NodeProto) -> dict[str, int]:
    return {a.name: a.i for a in node.attribute}


def _array(tensor: onnx.TensorProto, folder: Path) -> np.ndarray:
    from onnx import helper, numpy_helper

    if not _is_external(tensor):
        return numpy_helper.to_array(tensor)
    dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
    return np.frombuffer(_raw(tensor, folder), dtype=dtype).reshape(tuple(tensor.dims))


def _raw(tensor: onnx.TensorProto, folder: Path) -> bytes:
    where = _where(tensor)
    with (folder / where["location"]).open("rb") as weights:
        weights.seek(int(where.get("offset", 0)))
        return weights.read(int(where["length"]))


def _append(tensor: onnx.TensorProto, raw: bytes, out: BinaryIO) -> None:
    """Write ``raw`` at the end of ``out`` and point ``tensor`` at it."""
    offset = out.seek(0, os.SEEK_END)
    padding = -offset % _ALIGN
    out.write(b"\0" * padding)
    out.write(raw)
    del tensor.external_data[:]
    for key, value in (("location", WEIGHTS), ("offset", offset + padding), ("length", len(raw))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, str(value)
    tensor.data_location = _EXTERNAL


def _is_external(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == _EXTERNAL


def _where(tensor: onnx.TensorProto) -> dict[str, str]:
    return {entry.key: entry.value for entry in tensor.external_data}
