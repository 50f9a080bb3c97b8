"""Graph surgeons of Olive's GraphSurgeries that LLM recipes name, written on onnx protos.

Each surgeon takes a ModelProto (weights loaded) and returns the changed model and a note.
- `TieWordEmbeddings`: when the LM head's weight is the transposed embedding table, the head
  reads the embedding table (Gemm with transB) instead of its own copy; the file shrinks by one
  vocab x hidden matrix and the logits do not change. Quantized, when an 8-bit MatMulNBits head
  holds the same codes, scales and zero points as a GatherBlockQuantized embedding, the head
  reads the embedding's (the same logits).
- `QuantizeEmbeddingInt8`: the embedding lookup becomes GatherBlockQuantized over int8 blocks of
  32 values along the hidden axis (asymmetric, uint8 with zero points).
- `ShareEmbeddingLmHead` (after QuantizeEmbeddingInt8, for a model whose head is its embedding
  table): the head becomes an 8-bit MatMulNBits over the int8 embedding's codes, so the file holds
  one table. Unlike Olive's, it first checks that the head (dequantized) is the embedding table.
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
    head = _logits_head(model)
    quantized = _quantized_embedding(model)
    if quantized is not None and head is not None and head.op_type == "MatMulNBits":
        why = "the head already reads the embedding table" if _reads_table(model, head, quantized) \
            else _tied_quantized(model, quantized, head)
        if why:
            return model, f"skipped ({why})"
        _head_reads_embedding(model, head, quantized)
        return model, "the 8-bit head reads the int8 embedding table's codes, scales and zero points"
    inits = _initializers(model)
    if gather is None or head is None or head.op_type != "MatMul" or head.input[1] not in inits:
        return model, "skipped (needs a float Gather embedding and a float MatMul head producing logits, or an " \
                      "int8 GatherBlockQuantized one and an 8-bit MatMulNBits head)"
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
    if not _still_read(model.graph, head.input[1]):
        _drop_initializer(model.graph, inits[head.input[1]])
    return model, f"the head reads the {vocab}x{hidden} embedding table"


# onnxruntime's defaults for the attributes these surgeons read, where a node leaves them out
ATTRIBUTE_DEFAULTS = {"GatherBlockQuantized": {"bits": 4, "block_size": 128, "gather_axis": 0, "quantize_axis": 1},
                      "MatMulNBits": {"bits": 4, "accuracy_level": 0}}


def _attrs(node) -> dict:
    from onnx import helper

    return {**ATTRIBUTE_DEFAULTS.get(node.op_type, {}),
            **{a.name: helper.get_attribute_value(a) for a in node.attribute}}


def _logits_head(model):
    return next((n for n in model.graph.node if "logits" in n.output), None)


def _quantized_embedding(model):
    """The GatherBlockQuantized node that looks rows of an int8 table up with the input ids (gather axis 0,
    blocks along the hidden axis), or None."""
    inits = _initializers(model)
    ids = next((i.name for i in model.graph.input if i.name == "input_ids"), None)
    for node in model.graph.node:
        if node.op_type == "GatherBlockQuantized" and len(node.input) > 2 and node.input[1] == ids \
                and node.input[0] in inits and len(inits[node.input[0]].dims) == 2:
            attrs = _attrs(node)
            if attrs["bits"] == 8 and attrs["gather_axis"] == 0 and attrs["quantize_axis"] in (1, -1):
                return node
    return None


def _reads_table(model, head, gather) -> bool:
    """Whether `head` already reads `gather`'s table (through the Reshape `_head_reads_embedding` adds)."""
    return len(head.input) > 1 and any(n.op_type == "Reshape" and n.input[0] == gather.input[0]
                                       and head.input[1] in n.output for n in model.graph.node)


def _tied_quantized(model, gather, head) -> str | None:
    """Why the 8-bit MatMulNBits `head` cannot read `gather`'s table as its own (None when its codes, scales and
    zero points are the table's, byte for byte)."""
    import numpy as np
    from onnx import numpy_helper

    inits, attrs, block = _initializers(model), _attrs(head), _attrs(gather)["block_size"]
    if attrs.get("bits") != 8 or attrs.get("block_size") != block:
        return f"the head is not 8-bit in blocks of {block} as the embedding is"
    ours, theirs = list(head.input[1:4]), list(gather.input[:1]) + list(gather.input[2:4])
    if len(ours) != len(theirs) or any(name not in inits for name in ours + theirs) or len(head.input) > 4:
        return "the head's and the embedding's quantized inputs differ in kind"
    for mine, its in zip(ours, theirs):
        if inits[mine].data_type != inits[its].data_type or not np.array_equal(
                numpy_helper.to_array(inits[mine]).ravel(), numpy_helper.to_array(inits[its]).ravel()):
            return "the head's codes, scales or zero points are not the embedding's"
    return None


def _head_reads_embedding(model, head, gather) -> None:
    """Replace `head` with an 8-bit MatMulNBits over the int8 embedding's codes (reshaped to the blocks
    MatMulNBits reads), scales and zero points; the head's own weights go."""
    import numpy as np
    from onnx import helper, numpy_helper

    inits = _initializers(model)
    table, block = gather.input[0], _attrs(gather)["block_size"]
    vocab, hidden = inits[table].dims
    name = head.name or "lm_head"
    shape = numpy_helper.from_array(np.array([vocab, hidden // block, block], dtype=np.int64), f"{name}_tied_shape")
    model.graph.initializer.append(shape)
    reshape = helper.make_node("Reshape", [table, shape.name], [f"{name}_tied_codes"], name=f"{name}_tied_reshape")
    extra = {k: v for k, v in _attrs(head).items() if k == "accuracy_level"}
    new = helper.make_node("MatMulNBits", [head.input[0], reshape.output[0], *gather.input[2:4]], list(head.output),
                           name=f"{name}_tied", domain="com.microsoft", bits=8, block_size=block, K=hidden, N=vocab,
                           **extra)
    position = list(model.graph.node).index(head)
    model.graph.node.remove(head)
    model.graph.node.insert(position, reshape)
    model.graph.node.insert(position + 1, new)
    for weight in head.input[1:]:
        if weight in inits and not _still_read(model.graph, weight):
            _drop_initializer(model.graph, inits[weight])


def _head_rows(model, head, rows, vocab: int, hidden: int):
    """Rows `rows` of the head's weight as (len(rows), hidden) float32, dequantized from a MatMulNBits head (uint8
    zero points or none, no g_idx or bias) or read from a float MatMul's; None for any other head, or one whose
    weight is not vocab x hidden."""
    import numpy as np
    from onnx import numpy_helper

    inits = _initializers(model)
    if head.op_type == "MatMul" and head.input[1] in inits:
        weight = inits[head.input[1]]
        if tuple(weight.dims) != (hidden, vocab):
            return None
        return numpy_helper.to_array(weight)[:, rows].T.astype(np.float32)
    if head.op_type != "MatMulNBits" or len(head.input) > 4 or any(n not in inits for n in head.input[1:]):
        return None
    attrs = _attrs(head)
    bits, block, width = attrs["bits"], attrs["block_size"], attrs["K"]
    if (attrs["N"], width) != (vocab, hidden) or bits not in (2, 4, 8):
        return None
    codes = _unpacked(numpy_helper.to_array(inits[head.input[1]]).reshape(vocab, -1)[rows], bits)
    blocks = codes.shape[1] // block
    scales = numpy_helper.to_array(inits[head.input[2]]).reshape(vocab, blocks)[rows].astype(np.float32)
    if len(head.input) > 3:
        zeros = numpy_helper.to_array(inits[head.input[3]])
        if zeros.dtype != np.uint8:
            return None
        zeros = _unpacked(zeros.reshape(vocab, -1)[rows], bits)[:, :blocks]
    else:
        zeros = np.full(scales.shape, 2 ** (bits - 1), dtype=np.float32)
    values = (codes.reshape(len(rows), blocks, block) - zeros[..., None]) * scales[..., None]
    return values.reshape(len(rows), -1)[:, :width]


def _unpacked(packed, bits: int):
    """uint8 rows holding 8 // bits values a byte, first value in the low bits, as float32 values."""
    import numpy as np

    parts = [(packed >> (bits * i)) & (2**bits - 1) for i in range(8 // bits)]
    return np.stack(parts, axis=-1).reshape(packed.shape[0], -1).astype(np.float32)


def _embedding_rows(model, gather, rows):
    import numpy as np
    from onnx import numpy_helper

    inits, block = _initializers(model), _attrs(gather)["block_size"]
    codes = numpy_helper.to_array(inits[gather.input[0]])[rows].astype(np.float32)
    scales = numpy_helper.to_array(inits[gather.input[2]])[rows].astype(np.float32)
    zeros = (numpy_helper.to_array(inits[gather.input[3]])[rows].astype(np.float32) if len(gather.input) > 3
             else np.full(scales.shape, 128.0, dtype=np.float32))
    step = np.repeat(scales, block, axis=1)[:, :codes.shape[1]]
    return (codes - np.repeat(zeros, block, axis=1)[:, :codes.shape[1]]) * step


# ShareEmbeddingLmHead: the largest distance between head and table, relative to the table's norm, taken as one
# matrix quantized twice (a 4-bit head of a tied model is about 0.1 away; an untied head about 1.4)
TIED_AT = 0.25
SAMPLED_ROWS = 4096  # rows of the vocabulary compared (spread over it), to keep the check cheap on big vocabularies


def share_embedding_lm_head(model) -> tuple[object, str]:
    import numpy as np

    gather, head = _quantized_embedding(model), _logits_head(model)
    if gather is None or head is None:
        return model, "skipped (needs QuantizeEmbeddingInt8's int8 GatherBlockQuantized embedding and a head " \
                      "producing logits)"
    table = _initializers(model)[gather.input[0]]
    vocab, hidden = table.dims
    block = _attrs(gather)["block_size"]
    if hidden % block:
        return model, f"skipped (MatMulNBits reads whole blocks; the hidden size {hidden} is not a multiple of {block})"
    if _reads_table(model, head, gather):
        return model, "skipped (the head already reads the embedding table)"
    rows = np.unique(np.linspace(0, vocab - 1, min(vocab, SAMPLED_ROWS)).astype(np.int64))
    weight = _head_rows(model, head, rows, vocab, hidden)
    if weight is None:
        return model, f"skipped (the head, a {head.op_type}, is not a float MatMul or a MatMulNBits (2, 4 or 8 " \
                      f"bits, uint8 or no zero points) over the {vocab}x{hidden} table's shape)"
    inits = _initializers(model)
    head_dtype = inits[head.input[2] if head.op_type == "MatMulNBits" else head.input[1]].data_type
    if inits[gather.input[2]].data_type != head_dtype:
        return model, "skipped (the table's scales and the head's activations differ in type)"
    embed = _embedding_rows(model, gather, rows)
    distance = float(np.linalg.norm(weight - embed) / max(np.linalg.norm(embed), 1e-12))
    if distance > TIED_AT:
        return model, f"skipped (the head is not the embedding table: they differ by {distance:.2f} of its norm; " \
                      "the model does not tie its word embeddings)"
    before = f"{_attrs(head)['bits']}-bit" if head.op_type == "MatMulNBits" else "float"
    _head_reads_embedding(model, head, gather)
    return model, f"the head ({before}) reads the int8 embedding table (they differed by {distance:.3f} of " \
                  "its norm)"


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
        if not _still_read(model.graph, table):
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


def _still_read(graph, name: str) -> bool:
    """Whether a node (inside If/Loop/Scan bodies too) reads `name`, or the graph outputs it."""
    if any(o.name == name for o in graph.output):
        return True
    for node in graph.node:
        if name in node.input:
            return True
        for attribute in node.attribute:
            bodies = [attribute.g] if attribute.HasField("g") else list(attribute.graphs)
            if any(_still_read(body, name) for body in bodies):
                return True
    return False


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
    "ShareEmbeddingLmHead": share_embedding_lm_head,
    "RenameInputs": _renamer("Inputs"),
    "RenameOutputs": _renamer("Outputs"),
}
# The options each surgeon takes (checked when the config is read).
SURGEON_OPTIONS: dict[str, tuple[str, ...]] = {
    "TieWordEmbeddings": (), "QuantizeEmbeddingInt8": (), "ShareEmbeddingLmHead": (),
    "RenameInputs": ("old_names", "new_names"),
    "RenameOutputs": ("old_names", "new_names"),
}
