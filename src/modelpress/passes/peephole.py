"""OnnxPeepholeOptimizer's steps, each on its own switch as in Olive 0.13.

- `onnxscript_optimize`: onnxscript's optimizer (constant folding, dead code, its own rewrites);
- `fuse_reshape_operations`: a Reshape whose only consumer is a Reshape to [-1] (a flatten) adds
  nothing: the flatten reads the first Reshape's input instead;
- `cast_chain_elimination`: Cast(Cast(x, to=a), to=b) where x is already of type b becomes
  Identity(x) (Olive's rule; a narrower `a` rounded the values, which the chain no longer does);
- `fix_com_microsoft_opset`: the com.microsoft opset import, in the graph and in every function,
  where their nodes use that domain and the import is missing.
"""

from __future__ import annotations


def onnxscript_optimize(model):
    import onnx_ir
    import onnxscript.optimizer

    ir_model = onnx_ir.from_proto(model)
    onnxscript.optimizer.optimize(ir_model, onnx_shape_inference=False)  # genai graphs use ORT-only ops
    return onnx_ir.to_proto(ir_model)


def fuse_reshapes(model) -> tuple[object, int]:
    """(the model, the Reshapes bypassed)."""
    import numpy as np
    from onnx import numpy_helper

    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    for name in read_in_subgraphs(graph):  # an If/Loop/Scan body reads it too: not its only consumer
        consumers[name] = consumers.get(name, 0) + 1
    constants = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = node.attribute[0].t
    bypassed = 0
    for node in graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] not in constants:
            continue
        before = producer.get(node.input[0])
        flattens = np.array_equal(numpy_helper.to_array(constants[node.input[1]]).reshape(-1), [-1])
        if before is not None and before.op_type == "Reshape" and flattens and consumers[node.input[0]] == 1:
            node.input[0] = before.input[0]
            bypassed += 1
    if bypassed:
        model = _without_dead_nodes(model)
    return model, bypassed


def _without_dead_nodes(model):
    """The model without the nodes none of whose outputs is read (by a node or as a graph output)."""
    graph = model.graph
    while True:
        read = {name for node in graph.node for name in node.input} | {o.name for o in graph.output} | \
            read_in_subgraphs(graph)
        dead = [node for node in graph.node if not any(out in read for out in node.output)]
        if not dead:
            return model
        for node in dead:
            graph.node.remove(node)


def read_in_subgraphs(graph) -> set[str]:
    """Names the bodies of the graph's If, Loop and Scan nodes read (at any depth), the outer graph's included."""
    from onnx import AttributeProto

    read: set[str] = set()
    for node in graph.node:
        for attr in node.attribute:
            bodies = [attr.g] if attr.type == AttributeProto.GRAPH else list(attr.graphs)
            for body in bodies:
                read |= {name for inner in body.node for name in inner.input} | {o.name for o in body.output}
                read |= read_in_subgraphs(body)
    return read


def eliminate_cast_chains(model):
    import onnx_ir
    from onnxscript.rewriter import RewriteRule, rewrite

    def chain(op, x, to, to_ignored):
        return op.Cast(op.Cast(x, to=to_ignored), to=to)

    def round_trip(context, x, to, to_ignored, **_) -> bool:
        return x.dtype is not None and x.dtype == to.as_int()

    def identity(op, x, **_):
        return op.Identity(x)

    ir_model = onnx_ir.from_proto(model)
    rewrite(ir_model, pattern_rewrite_rules=[RewriteRule(chain, identity, round_trip, name="CastRoundTrip")])
    return onnx_ir.to_proto(ir_model)


def fix_com_microsoft_opset(model) -> int:
    """Add the missing imports in place; returns how many were added."""
    from onnx import helper

    added = 0
    scopes = [(model.graph.node, model.opset_import), *((f.node, f.opset_import) for f in model.functions)]
    for nodes, imports in scopes:
        if any(n.domain == "com.microsoft" for n in nodes) and "com.microsoft" not in {o.domain for o in imports}:
            imports.append(helper.make_opsetid("com.microsoft", 1))
            added += 1
    return added
