"""A quantized LM head that is the embedding table: TieWordEmbeddings on quantized tables and ShareEmbeddingLmHead,
on small graphs quantized by onnxruntime's own MatMulNBits quantizer and run in onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelpress.passes.surgeons import SURGEONS, _block_int8

VOCAB, HIDDEN = 96, 64
IDS = np.array([[3, 17, 42, 95, 0]], dtype=np.int64)


def _float_model(head_weight: np.ndarray, table: np.ndarray) -> onnx.ModelProto:
    """input_ids -> Gather(table) -> MatMul(head_weight) -> logits."""
    graph = helper.make_graph(
        [helper.make_node("Gather", ["model.embed_tokens.weight", "input_ids"], ["h"], name="embed"),
         helper.make_node("MatMul", ["h", "lm_head.weight"], ["logits"], name="lm_head/MatMul")], "g",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, None])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, None, VOCAB])],
        [numpy_helper.from_array(table, "model.embed_tokens.weight"),
         numpy_helper.from_array(head_weight, "lm_head.weight")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _ort_quantized_head(model: onnx.ModelProto, bits: int, symmetric: bool = False) -> onnx.ModelProto:
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    config = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=symmetric, bits=bits)
    quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=32, is_symmetric=symmetric, algo_config=config)
    quantizer.process()
    return quantizer.model.model


def _logits(model: onnx.ModelProto) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input_ids": IDS})[0]


def _apply(model: onnx.ModelProto, *surgeons: str) -> tuple[onnx.ModelProto, list[str]]:
    model = onnx.ModelProto.FromString(model.SerializeToString())
    notes = []
    for surgeon in surgeons:
        model, note = SURGEONS[surgeon](model)
        notes.append(note)
    return model, notes


def _weights(model: onnx.ModelProto) -> int:
    return sum(int(np.prod(t.dims)) * (1 if t.data_type == TensorProto.UINT8 else 4) for t in model.graph.initializer)


def _head(model: onnx.ModelProto):
    return next(n for n in model.graph.node if "logits" in n.output)


@pytest.fixture(scope="module")
def table() -> np.ndarray:
    return (np.random.default_rng(0).standard_normal((VOCAB, HIDDEN)) * 0.05).astype(np.float32)


@pytest.mark.parametrize("bits", [4, 8])
def test_share_puts_the_int8_table_in_an_int4_or_int8_heads_place(table, bits):
    """The head onnxruntime quantized becomes an 8-bit MatMulNBits over QuantizeEmbeddingInt8's codes: its logits are
    those of a float model whose embedding and head are both the dequantized int8 table, and the file holds one
    vocab x hidden table instead of two."""
    quantized = _ort_quantized_head(_float_model(table.T.copy(), table), bits)
    assert _head(quantized).op_type == "MatMulNBits"
    embedded, _ = _apply(quantized, "QuantizeEmbeddingInt8")
    shared, notes = _apply(embedded, "ShareEmbeddingLmHead")
    assert notes[0].startswith(f"the head ({bits}-bit) reads the int8 embedding table"), notes
    head = _head(shared)
    assert head.op_type == "MatMulNBits" and next(a.i for a in head.attribute if a.name == "bits") == 8
    assert not any(t.name.startswith("lm_head") and t.data_type == TensorProto.UINT8 for t in shared.graph.initializer)
    codes, scales, zeros = _block_int8(table, 32, False)
    dequantized = ((codes.reshape(VOCAB, -1, 32) - zeros[..., None].astype(np.float32)) * scales[..., None]) \
        .reshape(VOCAB, HIDDEN)
    np.testing.assert_allclose(_logits(shared), _logits(_float_model(dequantized.T.copy(), dequantized)),
                               rtol=1e-5, atol=1e-6)
    assert _weights(shared) < _weights(embedded) - VOCAB * HIDDEN * bits // 8 + 64  # the head's codes are gone


def test_share_leaves_a_head_that_is_not_the_embedding_table(table):
    """Olive's surgeon replaces the head with the embedding whatever the head was: on a model that does not tie its
    embeddings that is another model. Here it is left, with a note saying why."""
    other = (np.random.default_rng(1).standard_normal((HIDDEN, VOCAB)) * 0.05).astype(np.float32)
    embedded, _ = _apply(_ort_quantized_head(_float_model(other, table), 4), "QuantizeEmbeddingInt8")
    shared, notes = _apply(embedded, "ShareEmbeddingLmHead")
    assert notes[0].startswith("skipped (the head is not the embedding table"), notes
    np.testing.assert_array_equal(_logits(shared), _logits(embedded))
    assert shared.SerializeToString() == embedded.SerializeToString()


def test_share_needs_an_int8_embedding_and_runs_once(table):
    quantized = _ort_quantized_head(_float_model(table.T.copy(), table), 4)
    unchanged, notes = _apply(quantized, "ShareEmbeddingLmHead")
    assert notes[0].startswith("skipped (needs QuantizeEmbeddingInt8's"), notes
    twice, notes = _apply(quantized, "QuantizeEmbeddingInt8", "ShareEmbeddingLmHead", "ShareEmbeddingLmHead")
    assert notes[2] == "skipped (the head already reads the embedding table)"
    np.testing.assert_array_equal(_logits(twice), _logits(_apply(quantized, "QuantizeEmbeddingInt8",
                                                                 "ShareEmbeddingLmHead")[0]))


def _int8_head() -> onnx.NodeProto:
    return helper.make_node("MatMulNBits", ["h", "lm_head.q", "lm_head.scales", "lm_head.zeros"], ["logits"],
                            name="lm_head/MatMulNBits", domain="com.microsoft", bits=8, block_size=32, K=HIDDEN,
                            N=VOCAB, accuracy_level=0)


def _quantized_model(table: np.ndarray, head_codes: np.ndarray | None = None) -> onnx.ModelProto:
    """An int8 GatherBlockQuantized embedding and an 8-bit MatMulNBits head holding the same codes, scales and zero
    points as separate initializers (or `head_codes` instead of the table's codes)."""
    codes, scales, zeros = _block_int8(table, 32, False)
    head_codes = codes if head_codes is None else head_codes
    inits = [numpy_helper.from_array(codes, "embed.q"), numpy_helper.from_array(scales, "embed.scales"),
             numpy_helper.from_array(zeros, "embed.zeros"),
             numpy_helper.from_array(head_codes.reshape(VOCAB, -1, 32), "lm_head.q"),
             numpy_helper.from_array(scales.copy(), "lm_head.scales"),
             numpy_helper.from_array(zeros.copy(), "lm_head.zeros")]
    graph = helper.make_graph(
        [helper.make_node("GatherBlockQuantized", ["embed.q", "input_ids", "embed.scales", "embed.zeros"], ["h"],
                          name="embed", domain="com.microsoft", bits=8, block_size=32, gather_axis=0, quantize_axis=1),
         _int8_head()], "g",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, None])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, None, VOCAB])], inits)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets)


def test_tie_on_quantized_tables_with_the_same_bytes_keeps_the_logits_exactly(table):
    model = _quantized_model(table)
    tied, notes = _apply(model, "TieWordEmbeddings")
    assert notes[0] == "the 8-bit head reads the int8 embedding table's codes, scales and zero points", notes
    np.testing.assert_array_equal(_logits(tied), _logits(model))
    assert {t.name for t in tied.graph.initializer} >= {"embed.q", "embed.scales", "embed.zeros"}
    assert not {"lm_head.q", "lm_head.scales", "lm_head.zeros"} & {t.name for t in tied.graph.initializer}
    assert _weights(tied) < _weights(model) - VOCAB * HIDDEN


def test_tie_leaves_quantized_tables_whose_bytes_differ(table):
    codes, _, _ = _block_int8(table, 32, False)
    codes = codes.copy()
    codes[5, 7] ^= 1
    model = _quantized_model(table, codes)
    tied, notes = _apply(model, "TieWordEmbeddings")
    assert notes[0] == "skipped (the head's codes, scales or zero points are not the embedding's)"
    assert tied.SerializeToString() == model.SerializeToString()


def test_onnxruntimes_8bit_head_and_quantize_embedding_int8_write_the_same_bytes_so_they_tie(table):
    """QuantizeEmbeddingInt8's asymmetric grid is onnxruntime's MatMulNBits quantizer's at 8 bits: a tied model whose
    head onnxruntime quantized and whose table QuantizeEmbeddingInt8 did ties exactly."""
    embedded, _ = _apply(_ort_quantized_head(_float_model(table.T.copy(), table), 8), "QuantizeEmbeddingInt8")
    tied, notes = _apply(embedded, "TieWordEmbeddings")
    assert notes[0] == "the 8-bit head reads the int8 embedding table's codes, scales and zero points", notes
    np.testing.assert_array_equal(_logits(tied), _logits(embedded))
    assert _weights(tied) < _weights(embedded) - VOCAB * HIDDEN


def test_share_reads_a_symmetric_head_without_zero_points_and_a_float_head(table):
    """Heads whose zero point is MatMulNBits' default (onnxruntime's symmetric quantizer writes none) are dequantized
    with it, and a float head is compared as it is: both are the table, so both are shared; a symmetric int8 table
    (no zero points: GatherBlockQuantized's default) is read with its own default."""
    from modelpress.passes.surgeons import _embedding_gather, quantize_gathers_int8

    symmetric = _ort_quantized_head(_float_model(table.T.copy(), table), 4, symmetric=True)
    assert len(_head(symmetric).input) == 3  # no zero points
    _, notes = _apply(symmetric, "QuantizeEmbeddingInt8", "ShareEmbeddingLmHead")
    assert notes[1].startswith("the head (4-bit) reads the int8 embedding table"), notes
    float_head = _float_model(table.T.copy(), table)
    quantize_gathers_int8(float_head, [_embedding_gather(float_head)[0]], 32, symmetric=True)
    shared, [note] = _apply(float_head, "ShareEmbeddingLmHead")
    assert note.startswith("the head (float) reads the int8 embedding table"), note
    codes, scales, _ = _block_int8(table, 32, True)
    dequantized = ((codes.reshape(VOCAB, -1, 32).astype(np.float32) - 128) * scales[..., None]).reshape(VOCAB, HIDDEN)
    np.testing.assert_allclose(_logits(shared), _logits(_float_model(dequantized.T.copy(), dequantized)),
                               rtol=1e-5, atol=1e-6)


def test_share_leaves_a_head_over_another_vocabulary(table):
    """A head whose vocabulary is not the table's (a resized head) is left with a note, not an indexing error."""
    head = (np.random.default_rng(2).standard_normal((HIDDEN, VOCAB - 8)) * 0.05).astype(np.float32)
    model = _float_model(head, table)
    model.graph.output[0].type.tensor_type.shape.dim[2].dim_value = VOCAB - 8
    _, notes = _apply(model, "QuantizeEmbeddingInt8", "ShareEmbeddingLmHead")
    assert notes[1].startswith("skipped (the head, a MatMul, is not"), notes
