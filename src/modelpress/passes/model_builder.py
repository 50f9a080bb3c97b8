"""Convert a Hugging Face folder into an onnxruntime-genai folder with the genai model builder."""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

from modelpress.context import PassContext
from modelpress.errors import ModelpressError, is_disk_full
from modelpress.fsutil import read_json
from modelpress.models import ADAPTER_DIR, ModelRef
from modelpress.passes.builder_memory import bounded_builder
from modelpress.passes.catalog import BUILDER_PRECISIONS, HF_ADAPTER, HF_QUANTIZED, ONNX_GENAI, ModelBuilderParams
from modelpress.quantized import blocks_the_builder_refuses, with_float_embeddings
from modelpress.runtime import resolve_execution_provider

log = logging.getLogger("modelpress")


# Typed params passed to the builder as KEY=VALUE options: param -> the builder's key. Lists are
# joined with the separator the builder splits on.
BUILDER_KEYS = {
    "int4_op_types_to_quantize": ("op_types_to_quantize", "/"),
    "int4_nodes_to_exclude": ("nodes_to_exclude", ","),
    "use_qdq": ("use_qdq", None), "use_8bits_moe": ("use_8bits_moe", None),
    "use_webgpu_fp32": ("use_webgpu_fp32", None), "use_cuda_bf16": ("use_cuda_bf16", None),
    "include_hidden_states": ("include_hidden_states", None), "exclude_embeds": ("exclude_embeds", None),
    "exclude_lm_head": ("exclude_lm_head", None), "enable_cuda_graph": ("enable_cuda_graph", None),
    "metadata_only": ("config_only", None),
}


def _option(key: str, value) -> str:
    return f"{key}={str(value).lower() if isinstance(value, bool) else value}"


def builder_options(params: ModelBuilderParams) -> list[str]:
    """The builder's KEY=VALUE options for these typed params (the builder's own spelling)."""
    options = [f"is_symmetric={str(params.is_symmetric).lower()}"]
    if params.precision in ("int4", "int8"):
        options.append(f"block_size={params.block_size}")
        if params.accuracy_level is not None:
            options.append(f"accuracy_level={params.accuracy_level}")
        if params.algo_config is not None:
            options.append(f"algo_config={params.algo_config}")
    extra = dict(params.extra_options)
    for name, (key, joiner) in BUILDER_KEYS.items():
        value = getattr(params, name)
        if value is None or (value is False and name == "metadata_only"):
            continue
        if joiner and key in extra:  # the same builder option in extra_options too: one list of both (the builder
            given = [v for v in str(extra.pop(key)).split(joiner) if v]  # keeps only the last of two)
            value = [*value, *(v for v in given if v not in value)]
        options.append(_option(key, joiner.join(value) if joiner else value))
    options += [_option(key, value) for key, value in extra.items()]
    return options


def _quiet_quantizer_logs() -> None:
    # onnxruntime's int4 quantizer calls logging.basicConfig(level=INFO) on import, which turns
    # on INFO output for every logger in the process; put the root back to Python's default and
    # keep the quantizer's per-node lines for --verbose runs.
    import onnxruntime.quantization.matmul_nbits_quantizer  # noqa: F401  (its import is what calls basicConfig)

    debug = log.getEffectiveLevel() <= logging.DEBUG
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("onnxruntime.quantization").setLevel(logging.DEBUG if debug else logging.WARNING)


@contextlib.contextmanager
def _graph_logs_to(stream):
    """onnx_ir's log lines while the builder runs go to `stream` (builder.log), shown only with --verbose.

    With a tied LM head kept at int8 (k_quant_last), the builder's embedding lookup names the head's
    initializers before they are declared, and onnx_ir warns "The model is invalid" for each while
    saving; the saved model is complete (onnxruntime-genai loads and runs it, tests/test_smollm2.py).
    """
    logger = logging.getLogger("onnx_ir")
    if log.getEffectiveLevel() <= logging.DEBUG:
        yield
        return
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(name)s [%(levelname)s] %(message)s"))
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def run_model_builder(ctx: PassContext, params: ModelBuilderParams) -> ModelRef:
    """Call `onnxruntime_genai.models.builder` from Python (its CLI's --help crashes in 0.18)."""
    from onnxruntime_genai.models.builder import create_model, parse_extra_options

    _quiet_quantizer_logs()

    # the engine's provider was resolved at the start (no GPU: the CPU, with a warning); the pass's own is here
    ep = resolve_execution_provider(params.execution_provider) if params.execution_provider else ctx.execution_provider
    if params.precision not in BUILDER_PRECISIONS[ep]:  # asked for a GPU this machine lacks: the CPU took over
        raise ModelpressError(f"ModelBuilder precision {params.precision} runs on a GPU, and this machine runs the "
                              f"{ep} execution provider (the one the config names is not available here). Build "
                              f"{' or '.join(BUILDER_PRECISIONS[ep])} here, or run this step on a machine with the "
                              "GPU.")
    if params.metadata_only:  # an exported ONNX model: only its genai config and tokenizer are written
        from modelpress.passes.builder_metadata import build_metadata

        return build_metadata(ctx, params.precision, ep, builder_options(params), params.search)
    source, extra = _source(ctx, params)
    refused = blocks_the_builder_refuses(source) if ctx.model.kind == HF_QUANTIZED else []
    if refused:
        raise ModelpressError(f"{len(refused)} quantized modules have blocks onnxruntime's MatMulNBits cannot take "
                              f"(a power of two of at least 16): {', '.join(refused[:3])}. Quantize them with such "
                              "a group_size that divides their inputs (64 or 32 for most models; -1, one block a "
                              "row, only where the rows' length is such a power).")
    src = str(source)
    out = str(ctx.out)
    work = str(ctx.out.parent / f"{ctx.out.name}.builder-cache")
    staged = ctx.out.parent / f"{ctx.out.name}.builder-input"
    if with_float_embeddings(source, staged):
        src = str(staged)
        ctx.notes.append("the input's embeddings are quantized, which onnxruntime-genai 0.18's builder cannot read: "
                         "they are given to it as float holding the quantized values (same outputs, larger file)")
    if source.joinpath("config.json").is_file() and ctx.input_model.trust_remote_code:
        log.info("the genai builder reads config.json itself; trust_remote_code is not passed to it")
    captured = io.StringIO()
    bounded: dict = {}
    try:
        # The builder prints its own progress; shown on stderr only when progress is wanted.
        quiet_stderr = contextlib.redirect_stderr(captured) if not ctx.show_progress else contextlib.nullcontext()
        with contextlib.redirect_stdout(captured), quiet_stderr, _graph_logs_to(captured):
            options = parse_extra_options(ctx.model.path.name, src, out, params.precision, ep, work,
                                          builder_options(params) + extra, search=params.search)
            with bounded_builder(bounded) if params.bounded_memory else contextlib.nullcontext():
                create_model(ctx.model.path.name, src, out, params.precision, ep, work, **options)
    except Exception as err:
        log.debug("builder output:\n%s", captured.getvalue())
        if is_disk_full(err):
            raise
        raise ModelpressError(f"the genai model builder failed on {src} ({params.precision}, {ep}): "
                              f"{type(err).__name__}: {err}") from err
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(staged, ignore_errors=True)
    (ctx.out / "builder.log").write_text(captured.getvalue(), encoding="utf-8")
    if bounded.get("bounded"):
        ctx.notes.append(f"exported in bounded memory: the builder read one layer at a time and "
                         f"{bounded.get('streamed', 0)} MatMuls were quantized as they were made"
                         + ("; per-node bit settings were quantized by the builder's whole-graph pass"
                            if bounded.get("whole_graph_nbits") else ""))
    elif params.bounded_memory and bounded.get("why_not") and params.precision in ("int4", "int8"):
        log.info("ModelBuilder: the builder's own (whole-model) path: %s", bounded["why_not"])
    ctx.notes.append(f"built {params.precision} ONNX for {ep}"
                     + (" with the LoRA adapter as its own MatMuls (ExtractAdapters makes them inputs)" if extra else ""))
    return ModelRef(ONNX_GENAI, ctx.out, id="")


def _source(ctx: PassContext, params: ModelBuilderParams) -> tuple[Path, list[str]]:
    """The folder the builder reads, and the adapter option for a base + LoRA adapter input."""
    if ctx.model.kind != HF_ADAPTER:
        return ctx.model.path, []
    adapter = ctx.model.path / ADAPTER_DIR
    settings = read_json(adapter / "adapter_config.json")
    peft_type = "DORA" if settings.get("use_dora") else settings.get("peft_type")
    if peft_type != "LORA":
        raise ModelpressError(f"ModelBuilder reads LoRA adapters only; this input's adapter is {peft_type} "
                              f"({adapter}). Merge it first: MergeAdapterWeights before ModelBuilder.")
    if "adapter_path" in params.extra_options:
        raise ModelpressError("ModelBuilder: extra_options.adapter_path is set, but the input already carries an "
                              f"adapter ({adapter}). Remove one of the two.")
    extra = [f"adapter_path={adapter}"]
    if params.precision in ("int4", "int8"):  # the adapter stays float: it is small, and ExtractAdapters needs it so
        layers = int(read_json(Path(ctx.model.base) / "config.json").get("num_hidden_layers", 0))
        given = str(params.extra_options.get("nodes_to_exclude") or "")  # the builder's own key: kept too
        names = [*(params.int4_nodes_to_exclude or []), *filter(None, given.split(",")), *lora_matmul_names(layers)]
        extra.append(f"nodes_to_exclude={','.join(names)}")
    return Path(ctx.model.base), extra


# The linears the builder may give a LoRA branch, under the names it gives their nodes.
LORA_MODULES = ("attn/q_proj", "attn/k_proj", "attn/v_proj", "attn/qkv_proj", "attn/o_proj", "mlp/gate_proj",
                "mlp/up_proj", "mlp/gate_up_proj", "mlp/down_proj")


def lora_matmul_names(layers: int) -> list[str]:
    """The genai builder's node names of every LoRA MatMul a model of `layers` layers may have."""
    return [f"/model/layers.{i}/{module}/lora_{ab}/MatMul" for i in range(layers) for module in LORA_MODULES
            for ab in "AB"]
