"""Compute a built model's logits for its last position only.

ONNX Runtime GenAI's builder writes models whose output layer (the ``lm_head``, a
vocabulary of 151,936 by 1,536 in Qwen2.5-1.5B) runs over every position of the
prompt, though generation reads only the last position's logits. Reading a prompt
of 370 tokens, that layer is about 15% of the 1.5B's work (about 27% of the 0.5B's)
and writes 225 MB of logits nobody reads.

:func:`keep_last_position` edits the graph so the output layer sees the last
position alone. ONNX Runtime GenAI still binds a ``logits`` output as long as the
input (it allocates it before the run), so that one row is broadcast to the
output's shape, which costs a memory copy instead of a matrix product. Measured on
the 1.5B over 10 of the app's prompts (``bench_logits`` in ``bench/RESULTS.md``): the
first token came 0.85-0.89x as late, and the greedy answers were the same text.

Only the graph file changes (a few hundred kilobytes); the weights stay where they
are. ``onnx`` is imported by these functions alone: serving never needs it.
"""

from __future__ import annotations

from pathlib import Path

from rag.embedded_llm.model import replace_graph

LOGITS = "logits"
# Names of what the edit adds start with this; the broadcast's name marks a graph as edited.
_ADDED = "lp"
LAST_POSITION = "/lm_head/LastPosition"
EVERY_POSITION = "/lm_head/EveryPosition"
_HEADS = ("MatMulNBits", "MatMul")


def keep_last_position(model_file: Path) -> bool:
    """Make ``model_file``'s output layer run on the last position only, in place.

    Returns False, leaving the file as it is, when the graph is edited already or its
    logits do not come straight from a matrix product (a graph this edit does not know).
    """
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(model_file, load_external_data=False)
    graph = model.graph
    head = next((n for n in graph.node if LOGITS in n.output), None)  # an edited one: Expand
    output = next((o for o in graph.output if o.name == LOGITS), None)
    if head is None or head.op_type not in _HEADS or output is None:
        return False
    vocabulary = output.type.tensor_type.shape.dim[-1].dim_value  # the broadcast's last size
    if not vocabulary:
        return False
    hidden = head.input[0]  # [batch, sequence, hidden]
    constants = {"lp_last": -1, "lp_end": 2**62, "lp_axis": 1, "lp_zero": 0, "lp_two": 2,
                 "lp_vocabulary": vocabulary}  # fmt: skip
    for name, value in constants.items():
        graph.initializer.append(helper.make_tensor(name, TensorProto.INT64, [1], [value]))
    before = helper.make_node(
        "Slice", [hidden, "lp_last", "lp_end", "lp_axis"], ["lp/last"], name=LAST_POSITION
    )
    head.input[0], head.output[0] = "lp/last", "lp/last_logits"
    after = [
        helper.make_node("Shape", [hidden], ["lp/shape"], name="/lm_head/HiddenShape"),
        helper.make_node("Slice", ["lp/shape", "lp_zero", "lp_two"], ["lp/batch_sequence"]),
        helper.make_node(
            "Concat", ["lp/batch_sequence", "lp_vocabulary"], ["lp/logits_shape"], axis=0
        ),
        helper.make_node(
            "Expand", ["lp/last_logits", "lp/logits_shape"], [LOGITS], name=EVERY_POSITION
        ),
    ]
    nodes = list(graph.node)
    at = nodes.index(head)
    del graph.node[:]
    graph.node.extend([*nodes[:at], before, head, *after, *nodes[at + 1 :]])
    replace_graph(model, model_file)
    return True


def every_position(model_file: Path) -> bool:
    """Undo :func:`keep_last_position` in place, giving back the graph the builder wrote
    (for measuring the edit against it); False when ``model_file`` is not edited."""
    import onnx

    model = onnx.load(model_file, load_external_data=False)
    nodes = list(model.graph.node)
    made = {out: n for n in nodes for out in n.output}
    expand = made.get(LOGITS)
    if expand is None or expand.name != EVERY_POSITION:
        return False
    head = made[expand.input[0]]
    head.input[0], head.output[0] = made[head.input[0]].input[0], LOGITS
    kept = [
        n for n in nodes if n is head or not (n is expand or n.output[0].startswith(f"{_ADDED}/"))
    ]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    constants = [t for t in model.graph.initializer if not t.name.startswith(f"{_ADDED}_")]
    del model.graph.initializer[:]
    model.graph.initializer.extend(constants)
    replace_graph(model, model_file)
    return True


def keeps_last_position(model_file: Path) -> bool:
    """True when ``model_file``'s logits come from the last position alone."""
    import onnx

    graph = onnx.load(model_file, load_external_data=False).graph
    return any(n.name == EVERY_POSITION and LOGITS in n.output for n in graph.node)
