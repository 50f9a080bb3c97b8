"""OnnxPeepholeOptimizer's targeted rewrites on small hand-made graphs, each on its own switch as in Olive."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from modelpress.passes import peephole  # noqa: E402


def _run(model, x):
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _model(nodes, inits, out_type=TensorProto.FLOAT, out_shape=None):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
                              [helper.make_tensor_value_info("y", out_type, out_shape)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_a_reshape_feeding_only_a_flatten_is_bypassed_with_the_same_output():
    shape = numpy_helper.from_array(np.array([6, 4], dtype=np.int64), "shape")
    flat = numpy_helper.from_array(np.array([-1], dtype=np.int64), "flat")
    model = _model([helper.make_node("Reshape", ["x", "shape"], ["r"], name="first"),
                    helper.make_node("Reshape", ["r", "flat"], ["y"], name="flatten")], [shape, flat], out_shape=[24])
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    expected = _run(model, x)
    fused, count = peephole.fuse_reshapes(model)
    assert count == 1 and [n.name for n in fused.graph.node] == ["flatten"]
    np.testing.assert_array_equal(_run(fused, x), expected)


def test_a_reshape_read_elsewhere_too_stays():
    shape = numpy_helper.from_array(np.array([6, 4], dtype=np.int64), "shape")
    flat = numpy_helper.from_array(np.array([-1], dtype=np.int64), "flat")
    model = _model([helper.make_node("Reshape", ["x", "shape"], ["r"]),
                    helper.make_node("Reshape", ["r", "flat"], ["f"]),
                    helper.make_node("ReduceSum", ["r"], ["s"], keepdims=0),
                    helper.make_node("Add", ["f", "s"], ["y"])], [shape, flat])
    assert peephole.fuse_reshapes(model)[1] == 0


def test_what_an_if_branch_reads_is_neither_bypassed_nor_deleted():
    """Consumers and dead nodes were counted in the main graph only: a Reshape read by an If branch was bypassed
    and a node only the branches read was deleted, leaving a graph onnxruntime refuses."""
    shape = numpy_helper.from_array(np.array([6, 4], dtype=np.int64), "shape")
    flat = numpy_helper.from_array(np.array([-1], dtype=np.int64), "flat")
    cond = numpy_helper.from_array(np.array(True), "cond")

    def branch(name: str, source: str):
        return helper.make_graph([helper.make_node("Identity", [source], [f"{name}_out"])], name, [],
                                 [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, None)])

    model = _model([helper.make_node("Reshape", ["x", "shape"], ["r"]),
                    helper.make_node("Reshape", ["r", "flat"], ["f"]),
                    helper.make_node("Mul", ["f", "f"], ["sq"]),
                    helper.make_node("If", ["cond"], ["y"], then_branch=branch("then", "sq"),
                                     else_branch=branch("else", "r"))], [shape, flat, cond])
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    expected = _run(model, x)
    fused, count = peephole.fuse_reshapes(model)
    assert count == 0 and len(fused.graph.node) == 4  # r is read by the else branch: the chain stays
    np.testing.assert_array_equal(_run(fused, x), expected)


def test_a_cast_round_trip_becomes_identity_and_a_narrowing_one_to_another_type_stays():
    trip = _model([helper.make_node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16),
                   helper.make_node("Cast", ["h"], ["y"], to=TensorProto.FLOAT)], [])
    done = peephole.eliminate_cast_chains(trip)
    assert [n.op_type for n in done.graph.node] == ["Identity"]
    x = np.full((2, 3, 4), 1.0001, dtype=np.float32)  # float16 would round it
    np.testing.assert_array_equal(_run(done, x), x)
    to_int = _model([helper.make_node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16),
                     helper.make_node("Cast", ["h"], ["y"], to=TensorProto.INT32)], [], out_type=TensorProto.INT32)
    assert [n.op_type for n in peephole.eliminate_cast_chains(to_int).graph.node] == ["Cast", "Cast"]


def test_the_com_microsoft_import_is_added_where_a_graph_or_function_uses_it():
    gelu = helper.make_node("FastGelu", ["x"], ["y"], domain="com.microsoft")
    model = _model([gelu], [])
    function = helper.make_function("local", "f", ["a"], ["b"],
                                    [helper.make_node("FastGelu", ["a"], ["b"], domain="com.microsoft")],
                                    [helper.make_opsetid("", 18)])
    model.functions.append(function)
    assert peephole.fix_com_microsoft_opset(model) == 2
    assert "com.microsoft" in {o.domain for o in model.opset_import}
    assert "com.microsoft" in {o.domain for o in model.functions[0].opset_import}
    assert peephole.fix_com_microsoft_opset(model) == 0
