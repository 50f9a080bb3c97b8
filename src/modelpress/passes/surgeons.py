"""Graph surgeons of Olive's GraphSurgeries that LLM recipes name, written on onnx protos.

Each surgeon takes a ModelProto (weights loaded) and returns the changed model and a note.
- `TieWordEmbeddings`: when the LM head's weight is the transposed embedding table, the head
  reads the embedding table (Gemm with transB) instead of its own copy; the file shrinks by one
  vocab x hidden matrix and the logits do not change.
- `QuantizeEmbeddingInt8`: the embedding lookup becomes GatherBlockQuantized over int8 blocks of
  32 values along the hidden axis (asymmetric, uint8 with zero points).
- `RenameInputs` / `RenameOutputs`: rename graph inputs or outputs.
"""

from __future__ import annotations

from collections.abc import Callable

from modelpress.errors import ModelpressError

BLOCK = 32  # QuantizeEmbeddingInt8's block size along the hidden axis


def _initializers(model) -> dict:
    return {t.name: t for t in model.graph.initializer}


def _embedding_gather(model):
    """The Gather node that reads the embedding table with the input ids, and its table's name."""
    inits = _initializers(model)
    ids = next((i.name for i in model.graph.input if i.name in ("input_ids",)), None)
    for node in model.graph.node:
        if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] == ids and node.input[0] in inits:
            return node, node.input[0]
    return None, None


def tie_word_embeddings(model) -> tuple[object, str]:
    import numpy as np
    from onnx import helper, numpy_helper

    gather, table = _embedding_gather(model)
    head = next((n for n in model.graph.node if "logits" in n.output), None)
    inits = _initializers(model)
    if gather is None or head is None or head.op_type != "MatMul" or head.input[1] not in inits:
        return model, "skipped (needs a float Gather embedding and a float MatMul head producing logits)"
    embed = numpy_helper.to_array(inits[table])
    weight = numpy_helper.to_array(inits[head.input[1]])
    if weight.shape != embed.T.shape or not np.array_equal(weight, embed.T):
        return model, "skipped (the head's weight is not the transposed embedding table)"
    hidden, vocab = weight.shape
    x, out, name = head.input[0], head.output[0], head.name or "lm_head"
    consts = {f"{name}_flat_shape": np.array([-1, hidden], dtype=np.int64),
              f"{name}_vocab": np.array([vocab], dtype=np.int64),
              f"{name}_start": np.array([0], dtype=np.int64), f"{name}_end": np.array([-1], dtype=np.int64)}
    model.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items())
    nodes = [
        helper.make_node("Reshape", [x, f"{name}_flat_shape"], [f"{name}_flat"], name=f"{name}_reshape_in"),
        helper.make_node("Gemm", [f"{name}_flat", table], [f"{name}_gemm"], name=f"{name}_gemm", transB=1),
        helper.make_node("Shape", [x], [f"{name}_in_shape"], name=f"{name}_shape"),
        helper.make_node("Slice", [f"{name}_in_shape", f"{name}_start", f"{name}_end"], [f"{name}_lead"],
                         name=f"{name}_lead_dims"),
        helper.make_node("Concat", [f"{name}_lead", f"{name}_vocab"], [f"{name}_out_shape"], name=f"{name}_concat",
                         axis=0),
        helper.make_node("Reshape", [f"{name}_gemm", f"{name}_out_shape"], [out], name=f"{name}_reshape_out"),
    ]
    position = list(model.graph.node).index(head)
    model.graph.node.remove(head)
    for offset, node in enumerate(nodes):
        model.graph.node.insert(position + offset, node)
    if not any(head.input[1] in n.input for n in model.graph.node):
        _drop_initializer(model.graph, inits[head.input[1]])
    return model, f"the head reads the {vocab}x{hidden} embedding table"


def quantize_embedding_int8(model) -> tuple[object, str]:
    gather, table = _embedding_gather(model)
    if gather is None:
        return model, "skipped (no float Gather on input_ids)"
    embed = _initializers(model)[table]
    if embed.data_type not in FLOAT_TYPES or len(embed.dims) != 2 or embed.dims[1] % BLOCK:
        return model, f"skipped (needs a float table whose hidden size is a multiple of {BLOCK})"
    quantize_gathers_int8(model, [gather], BLOCK, symmetric=False)
    return model, f"embedding {embed.dims[0]}x{embed.dims[1]} -> int8 blocks of {BLOCK}"


FLOAT_TYPES = (1, 10)  # onnx TensorProto FLOAT, FLOAT16


def int8_gathers(model, skip: set[str]) -> list:
    """Gather nodes that look rows up (axis 0, which GatherBlockQuantized takes for 8-bit data) in a constant
    float table of rank 2 (embeddings), not named in `skip`."""
    inits = _initializers(model)
    return [n for n in model.graph.node if n.op_type == "Gather" and n.name not in skip and n.input[0] in inits
            and inits[n.input[0]].data_type in FLOAT_TYPES and len(inits[n.input[0]].dims) == 2
            and next((a.i for a in n.attribute if a.name == "axis"), 0) == 0]


def quantize_gathers_int8(model, gathers: list, block: int, symmetric: bool) -> int:
    """Each Gather becomes GatherBlockQuantized over its table at 8 bits, in blocks of `block` values along the
    last axis (a shorter last block where the row does not divide). Asymmetric: uint8 codes with zero points;
    symmetric, as onnxruntime and Olive store it: the block's largest-magnitude value maps to -128, the codes
    shifted by 128 and no zero points (the operator's default). A table two Gathers read is quantized once."""
    import numpy as np
    from onnx import helper, numpy_helper

    inits, done = _initializers(model), {}
    for gather in gathers:
        table = gather.input[0]
        if table not in done:
            embed = numpy_helper.to_array(inits[table])
            codes, scale, zero = _block_int8(embed.astype(np.float32), block, symmetric, embed.dtype)
            names = [f"{table}_q8", f"{table}_scales"] + ([] if symmetric else [f"{table}_zero_points"])
            arrays = [codes, scale.astype(embed.dtype)] + ([] if symmetric else [zero])
            model.graph.initializer.extend(numpy_helper.from_array(a, n) for a, n in zip(arrays, names))
            done[table] = names
        data, scales, *zeros = done[table]
        node = helper.make_node("GatherBlockQuantized", [data, gather.input[1], scales, *zeros], list(gather.output),
                                name=f"{gather.name or 'embed'}_q8", domain="com.microsoft", bits=8,
                                block_size=block, gather_axis=0, quantize_axis=1)
        position = list(model.graph.node).index(gather)
        model.graph.node.remove(gather)
        model.graph.node.insert(position, node)
    for table in done:
        if not any(table in n.input for n in model.graph.node):
            _drop_initializer(model.graph, inits[table])
    if done and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return len(gathers)


def _block_int8(table, block: int, symmetric: bool, scale_dtype="float32"):
    """(uint8 codes shaped like `table`, scales (rows, blocks), uint8 zero points or None). The codes are computed
    with each scale as `scale_dtype` stores it (a float16 table keeps float16 scales), not the float32 before."""
    import numpy as np

    rows, width = table.shape
    n = -(-width // block)
    blocks = np.pad(table, ((0, 0), (0, n * block - width))).reshape(rows, n, block)  # zeros change no min/max
    if symmetric:
        hi, lo = blocks.max(axis=-1), blocks.min(axis=-1)
        scale = _as_stored(np.where(np.abs(hi) > np.abs(lo), hi, lo) / -128.0, scale_dtype)
        q = np.where(scale[..., None] == 0, 0, blocks / np.where(scale == 0, 1, scale)[..., None])
        codes = (np.clip(np.round(q), -128, 127) + 128).astype(np.uint8)
        zero = None
    else:
        lo = np.minimum(blocks.min(axis=-1), 0.0)
        hi = np.maximum(blocks.max(axis=-1), 0.0)
        scale = _as_stored(np.where(hi > lo, (hi - lo) / 255.0, 1.0), scale_dtype)
        scale = np.where(scale > 0, scale, 1.0)  # a range too small for a float16 scale: its values are ~0
        zero = np.clip(np.round(-lo / scale), 0, 255)
        codes = np.clip(np.round(blocks / scale[..., None]) + zero[..., None], 0, 255).astype(np.uint8)
        zero = zero.astype(np.uint8)
    return codes.reshape(rows, n * block)[:, :width], scale.astype(np.float32), zero


def _as_stored(scale, dtype):
    """`scale` (float32) as `dtype` stores it, rounded away from zero where rounding would shrink it (a smaller step
    would push the block's extreme value past the last code), back in float32."""
    import numpy as np

    stored = scale.astype(dtype)
    short = np.abs(stored.astype(np.float32)) < np.abs(scale)
    away = np.nextafter(stored, np.copysign(np.array(np.inf, dtype=stored.dtype), stored))
    return np.where(short, away, stored).astype(np.float32)


def _renamer(kind: str) -> Callable:
    def rename(model, old_names: list[str], new_names: list[str]) -> tuple[object, str]:
        if len(old_names) != len(new_names):
            raise ModelpressError(f"Rename{kind}: old_names and new_names differ in length")
        values = model.graph.input if kind == "Inputs" else model.graph.output
        names = {v.name for v in values}
        missing = [n for n in old_names if n not in names]
        if missing:
            raise ModelpressError(f"Rename{kind}: the model has no {kind.lower()[:-1]} {', '.join(missing)}")
        mapping = dict(zip(old_names, new_names))
        for value in values:
            value.name = mapping.get(value.name, value.name)
        for init in model.graph.initializer:  # an initializer that is also an input (older exporters) goes with it
            init.name = mapping.get(init.name, init.name) if kind == "Inputs" else init.name
        _rename_uses(model.graph, mapping)
        return model, ", ".join(f"{a} -> {b}" for a, b in mapping.items())
    return rename


def _drop_initializer(graph, init) -> None:
    """Remove an initializer no node reads any more, and the graph input of its name that older exporters
    (keep_initializers_as_inputs) declare beside it: left alone, that input becomes a required one."""
    graph.initializer.remove(init)
    for value in [v for v in graph.input if v.name == init.name]:
        graph.input.remove(value)


def _rename_uses(graph, mapping: dict[str, str]) -> None:
    """Every node's inputs and outputs renamed, inside If/Loop/Scan bodies too (they read outer names)."""
    for node in graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = mapping.get(name, name)
        for i, name in enumerate(node.output):
            node.output[i] = mapping.get(name, name)
        for attribute in node.attribute:
            for body in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
                _rename_uses(body, mapping)


def rename_in_genai_config(config: dict, surgeries: list[dict]) -> bool:
    """genai_config.json's decoder input/output maps follow the graph's renamed inputs and outputs; whether any
    changed (onnxruntime-genai feeds the graph by the names this map gives). A per-layer name template
    ("past_key_values.%d.key") becomes the template every renamed layer's name fits; a rename that no one
    template expresses (some layers only, or each its own way) is an error: genai could not name them."""
    decoder = config.get("model", {}).get("decoder", {})
    layers = decoder.get("num_hidden_layers")
    changed = False
    for surgery in surgeries:
        section = {"RenameInputs": "inputs", "RenameOutputs": "outputs"}.get(surgery["surgeon"])
        if section is None or section not in decoder:
            continue
        mapping = dict(zip(surgery["old_names"], surgery["new_names"]))
        for key, name in decoder[section].items():
            new = _renamed_template(name, mapping, layers, surgery["surgeon"]) if "%d" in name else mapping.get(name)
            if new is not None:
                decoder[section][key], changed = new, True
    return changed


def _renamed_template(template: str, mapping: dict[str, str], layers: int | None, surgeon: str) -> str | None:
    names = [template % i for i in range(layers or 0)]
    renamed = [mapping[n] for n in names if n in mapping]
    if not renamed:
        return None
    if len(renamed) == len(names):
        first = renamed[0]  # layer 0's new name, with one of its "0"s standing for the layer
        for at in [i for i in range(len(first)) if first.startswith("0", i)]:
            candidate = first[:at].replace("%", "%%") + "%d" + first[at + 1:].replace("%", "%%")
            if all(candidate % i == new for i, new in enumerate(renamed)):
                return candidate
    raise ModelpressError(
        f"{surgeon}: onnxruntime-genai names the {template!r} {'inputs' if surgeon == 'RenameInputs' else 'outputs'} "
        f"of all {layers} layers with one template, and these new names ({', '.join(renamed[:3])}"
        f"{', ...' if len(renamed) > 3 else ''}) fit none: rename every layer's the same way, its index where "
        f"{template!r} has %d")


SURGEONS: dict[str, Callable] = {
    "TieWordEmbeddings": tie_word_embeddings,
    "QuantizeEmbeddingInt8": quantize_embedding_int8,
    "RenameInputs": _renamer("Inputs"),
    "RenameOutputs": _renamer("Outputs"),
}
# The options each surgeon takes (checked when the config is read).
SURGEON_OPTIONS: dict[str, tuple[str, ...]] = {
    "TieWordEmbeddings": (), "QuantizeEmbeddingInt8": (), "RenameInputs": ("old_names", "new_names"),
    "RenameOutputs": ("old_names", "new_names"),
}
