"""ONNX graph passes of Olive's LLM recipes: k-quant int4/int8, fixed shapes, peephole clean-up and
graph surgeries on embeddings and the LM head.

Each works on a plain ONNX folder or on the decoder of an onnxruntime-genai folder. The changed model is
loaded in onnxruntime before it is kept (a graph it cannot load is refused); its outputs are not compared
with the input's here, since some rules change them by design (Olive's cast-chain elimination drops an
integer cast): the parity tests in tests/test_onnx_graph.py compare them on the tiny model.
"""

from __future__ import annotations

import logging
from pathlib import Path

from modelpress.context import PassContext
from modelpress.errors import ModelpressError
from modelpress.models import ModelRef
from modelpress.onnx_model import copy_model_folder, model_bytes, save_onnx, uses_external_file
from modelpress.passes.onnx_passes import _decoder_file, _mib, _output, _quiet_ort, _weight_only
from modelpress.passes.onnx_specs import (
    DynamicToFixedShapeParams,
    GraphSurgeriesParams,
    OnnxKQuantQuantizationParams,
    OnnxPeepholeOptimizerParams,
)

log = logging.getLogger("modelpress")


def run_kquant(ctx: PassContext, params: OnnxKQuantQuantizationParams) -> ModelRef:
    """onnxruntime's k-quant weight-only quantizer (MatMulNBits), per node bits and block size allowed."""
    from onnxruntime.quantization.matmul_nbits_quantizer import KQuantWeightOnlyQuantConfig

    from modelpress.passes.model_builder import _quiet_quantizer_logs

    _quiet_quantizer_logs()
    logging.getLogger("neural_compressor").setLevel(logging.WARNING)
    # onnxruntime's k-quant takes bits per node only (its default is 4): give every weight MatMul the pass's bits
    import onnx

    graph = onnx.load(str(ctx.model.path / _decoder_file(ctx.model)), load_external_data=False).graph
    weights = {t.name for t in graph.initializer} - {i.name for i in graph.input}  # a fed input is no weight
    nodes = {n.name: {"bits": params.bits} for n in graph.node if n.op_type == "MatMul" and set(n.input) & weights}
    unknown = [name for name in params.customized_weight_config or {} if name not in nodes]
    if unknown:
        raise ModelpressError(
            f"OnnxKQuantQuantization: customized_weight_config names {', '.join(map(repr, unknown[:3]))}, which "
            f"{'is not a' if len(unknown) == 1 else 'are not'} weight MatMul node of the model (it has "
            f"{len(nodes)}, such as {', '.join(map(repr, list(nodes)[-3:]))}). Use the node names the exported "
            "graph has (Netron, or onnx.load(...).graph.node).")
    for name, override in (params.customized_weight_config or {}).items():
        nodes.setdefault(name, {"bits": params.bits}).update(override.model_dump(exclude_none=True))
    algo = KQuantWeightOnlyQuantConfig(customized_weight_config=nodes)
    return _weight_only(ctx, params, algo, f"k-quant int{params.bits} (block {params.block_size})",
                        bits=params.bits, block_size=params.block_size, accuracy_level=params.accuracy_level)


def _load(ctx: PassContext):
    import onnx

    model_file = _decoder_file(ctx.model)
    return onnx.load(str(ctx.model.path / model_file)), model_file


def _save(ctx: PassContext, model, model_file: str) -> None:
    copy_model_folder(ctx.model.path, ctx.out, model_file)
    save_onnx(model, ctx.out, uses_external_file(ctx.model.path, model_file), model_file)


def _check_runs(ctx: PassContext, model_file: str, what: str) -> None:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        ort.InferenceSession(str(ctx.out / model_file), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime's own error types
        raise ModelpressError(f"{what}: the changed model does not load in onnxruntime: "
                              f"{str(err).strip().splitlines()[0][:300]}") from err


def run_dynamic_to_fixed(ctx: PassContext, params: DynamicToFixedShapeParams) -> ModelRef:
    """Give named dynamic dimensions (batch_size, sequence_length...) fixed values (onnxruntime's tool)."""
    from onnxruntime.tools.onnx_model_utils import make_dim_param_fixed

    model, model_file = _load(ctx)
    found = {d.dim_param for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]
             for d in value.type.tensor_type.shape.dim if d.dim_param}
    missing = [p for p in params.dim_param if p not in found]
    if missing:
        raise ModelpressError(f"DynamicToFixedShape: the model has no dynamic dimension {', '.join(missing)} "
                              f"(it has: {', '.join(sorted(found)) or 'none'})")
    for name, value in zip(params.dim_param, params.dim_value):
        make_dim_param_fixed(model.graph, name, value)  # inputs, outputs and value_info (no shape inference:
        # genai graphs use onnxruntime-only operators that onnx's checker does not know)
    _save(ctx, model, model_file)
    _check_runs(ctx, model_file, "DynamicToFixedShape")
    ctx.notes.append("fixed " + ", ".join(f"{n}={v}" for n, v in zip(params.dim_param, params.dim_value)))
    return _output(ctx, ctx.model.kind)


def run_peephole(ctx: PassContext, params: OnnxPeepholeOptimizerParams) -> ModelRef:
    """onnxscript's optimizer, reshape and cast chains, an opset fix: each on its switch (`passes.peephole`)."""
    from modelpress.passes import peephole

    model, model_file = _load(ctx)
    before = len(model.graph.node)
    if params.onnxoptimizer_optimize:
        log.warning("OnnxPeepholeOptimizer: onnxoptimizer_optimize is not used (modelpress does not depend on the "
                    "onnxoptimizer package); onnxscript's optimizer does the same folding")
    fused = 0
    with _quiet_ort():
        if params.onnxscript_optimize:
            model = peephole.onnxscript_optimize(model)
        if params.fuse_reshape_operations:
            model, fused = peephole.fuse_reshapes(model)
        if params.cast_chain_elimination:
            model = peephole.eliminate_cast_chains(model)
    if params.fix_com_microsoft_opset:
        peephole.fix_com_microsoft_opset(model)
    _save(ctx, model, model_file)
    _check_runs(ctx, model_file, "OnnxPeepholeOptimizer")
    ctx.notes.append(f"peephole: {before} -> {len(model.graph.node)} nodes"
                     + (f" ({fused} Reshape chain(s) fused)" if fused else ""))
    return _output(ctx, ctx.model.kind)


def run_graph_surgeries(ctx: PassContext, params: GraphSurgeriesParams) -> ModelRef:
    """Apply the named surgeons in order (see `modelpress.passes.surgeons`)."""
    from modelpress.passes.surgeons import SURGEONS

    model, model_file = _load(ctx)
    done = []
    for surgery in params.surgeries:
        options = {k: v for k, v in surgery.items() if k != "surgeon"}
        model, note = SURGEONS[surgery["surgeon"]](model, **options)
        done.append(f"{surgery['surgeon']}: {note}")
    _save(ctx, model, model_file)
    _rename_adapter_weights(ctx.out, params.surgeries)
    genai_config = ctx.out / "genai_config.json"
    if genai_config.is_file():
        from modelpress.fsutil import atomic_write_json, read_json
        from modelpress.passes.surgeons import rename_in_genai_config

        config = read_json(genai_config)
        if rename_in_genai_config(config, params.surgeries):
            atomic_write_json(genai_config, config)
    _check_runs(ctx, model_file, "GraphSurgeries")
    ctx.notes.append("; ".join(done) + f" ({_mib(model_bytes(ctx.model.path, model_file))} -> "
                     f"{_mib(model_bytes(ctx.out, model_file))})")
    return _output(ctx, ctx.model.kind)


def _rename_adapter_weights(folder: Path, surgeries: list[dict]) -> None:
    """RenameInputs of inputs that ExtractAdapters made: the folder's adapter file is keyed by the graph's input
    names, so its keys are renamed with them (onnxruntime would feed the old names to no input)."""
    from modelpress.onnx_adapters import adapter_file, read_adapter, write_adapter

    path = adapter_file(folder)
    renames = [dict(zip(s["old_names"], s["new_names"])) for s in surgeries if s["surgeon"] == "RenameInputs"]
    if path is None or not renames:
        return
    values = read_adapter(path)
    keys = list(values)
    for mapping in renames:  # in the order the surgeries ran
        keys = [mapping.get(key, key) for key in keys]
    if keys != list(values):
        write_adapter(dict(zip(keys, values.values())), path)


def output_dims(model_path: Path) -> dict:
    """{output name: its dims} of an ONNX file, for tests and notes."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    return {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output}
