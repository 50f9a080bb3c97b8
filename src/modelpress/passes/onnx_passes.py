"""The passes on plain ONNX models: int4/int8 quantization, fusion, float16, session tuning.

The export (OnnxConversion) is in `modelpress.passes.onnx_conversion`.

Each pass reads `ctx.model.path`, writes a complete model folder under `ctx.out` (a new
model.onnx plus the config and tokenizer files copied with `copy_model_folder`) and passes the
model's task (and classifier labels) through.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import statistics
import time
import warnings
from pathlib import Path

from modelpress.context import PassContext
from modelpress.data import encode_texts
from modelpress.errors import ModelpressError
from modelpress.fsutil import atomic_write_json
from modelpress.models import ModelRef, load_tokenizer
from modelpress.onnx_model import (
    MODEL_FILE,
    SESSION_FILE,
    SessionSettings,
    apply_settings,
    copy_model_files,
    copy_model_folder,
    graph_feeds,
    hf_config,
    input_specs,
    logit_drift,
    logits_name,
    model_bytes,
    op_counts,
    pad_batch,
    save_onnx,
    synthetic_ids,
    uses_external_file,
)
from modelpress.passes.catalog import ONNX, ONNX_GENAI
from modelpress.passes.model_builder import _quiet_quantizer_logs
from modelpress.passes.peephole import fix_com_microsoft_opset
from modelpress.passes.onnx_specs import (
    OnnxBlockWiseRtnQuantizationParams,
    OnnxDynamicQuantizationParams,
    OnnxFloatToFloat16Params,
    OnnxHqqQuantizationParams,
    OnnxStaticQuantizationParams,
    OrtSessionParamsTuningParams,
    OrtTransformersOptimizationParams,
    WeightOnlyParams,
)
from modelpress.runtime import compute_threads

log = logging.getLogger("modelpress")
CLASSIFY = "text-classification"
GENERATE = "text-generation"


def _output(ctx: PassContext, kind: str = ONNX) -> ModelRef:
    return ModelRef(kind, ctx.out, id="", task=dict(ctx.model.task))


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _plain_onnx(ctx: PassContext, what: str) -> Path:
    """The input folder, when it is a plain ONNX model (an onnx-genai folder has its own runtime)."""
    if ctx.model.kind != ONNX:
        raise ModelpressError(f"{what} works on plain ONNX models (made by OnnxConversion), but gets a "
                              f"{ctx.model.kind} model ({ctx.model.path}). Use OnnxConversion instead of ModelBuilder "
                              "before this pass.")
    return ctx.model.path


# --- int4 weight-only quantization ------------------------------------------------------------

def run_rtn(ctx: PassContext, params: OnnxBlockWiseRtnQuantizationParams) -> ModelRef:
    """Round-to-nearest int4 per block of `block_size` weights (onnxruntime's default MatMulNBits quantizer)."""
    _quiet_quantizer_logs()
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig

    op_types, post = tuple(params.op_types_to_quantize), None
    if params.bits == 8 and "Gather" in op_types:  # onnxruntime 1.32 quantizes Gather at 4 bits only: here, as Olive
        from modelpress.passes.surgeons import int8_gathers, quantize_gathers_int8

        op_types = tuple(t for t in op_types if t != "Gather")
        post = lambda model, skip: quantize_gathers_int8(  # noqa: E731
            model, int8_gathers(model, skip), params.block_size, params.is_symmetric)
    algo = DefaultWeightOnlyQuantConfig(block_size=params.block_size, is_symmetric=params.is_symmetric,
                                        accuracy_level=params.accuracy_level, bits=params.bits,
                                        op_types_to_quantize=op_types,
                                        quant_axes=(("MatMul", 0), ("Gather", 1))) if op_types else None
    kind = "symmetric" if params.is_symmetric else "asymmetric"
    return _weight_only(ctx, params, algo, f"RTN int{params.bits} ({kind}, block {params.block_size})", post,
                        matmuls="MatMul" in op_types)


def run_hqq(ctx: PassContext, params: OnnxHqqQuantizationParams) -> ModelRef:
    """Half-Quadratic Quantization to int4 per block (zero points fitted by a proximal solver)."""
    _quiet_quantizer_logs()
    from onnxruntime.quantization.matmul_nbits_quantizer import HQQWeightOnlyQuantConfig

    algo = HQQWeightOnlyQuantConfig(block_size=params.block_size, bits=4)
    level = params.accuracy_level  # onnxruntime's HQQ writes none; Olive's sets it on the nodes it makes

    def post(model, skip):
        import onnx

        for node in model.graph.node:
            if node.op_type == "MatMulNBits" and node.name.endswith("_Q4") \
                    and not any(a.name == "accuracy_level" for a in node.attribute):
                node.attribute.append(onnx.helper.make_attribute("accuracy_level", level))

    return _weight_only(ctx, params, algo, f"HQQ int4 (block {params.block_size})", post if level else None)


def _weight_only(ctx: PassContext, params: WeightOnlyParams, algo, label: str, post=None, matmuls: bool = True,
                 **quantizer_options) -> ModelRef:
    """onnxruntime's quantizer with `algo` (None: it has nothing to do), then `post(model, skip)` for what it
    does not quantize (8-bit embedding tables); `matmuls` false: the MatMul nodes stay float
    (op_types_to_quantize names Gather alone). Quantizing nothing at all is an error."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model_file = _decoder_file(ctx.model)
    src = ctx.model.path / model_file
    counts = op_counts(src)
    before = counts.get("MatMul", 0)
    had = {op: counts.get(op, 0) for op in ("MatMulNBits", "GatherBlockQuantized")}  # quantized already: not done here
    model = onnx.load(str(src))
    fed = _fed_weights(model)
    if fed:
        ctx.notes.append(f"{len(fed)} MatMul nodes whose weight is a graph input (ExtractAdapters' adapter weights) "
                         "stay float")
    skip = [*params.nodes_to_exclude, *fed]
    if params.nodes_to_include:  # onnxruntime adds these to its op types; Olive quantizes only these (empty: all)
        skip += [n.name for n in model.graph.node if n.op_type in ("MatMul", "Gather")
                 and n.name not in params.nodes_to_include]
    if algo is not None:
        quantizer = MatMulNBitsQuantizer(model, nodes_to_exclude=skip, algo_config=algo, **quantizer_options)
        with _quiet_ort(), warnings.catch_warnings():
            # HQQ hands torch a read-only numpy view of each weight; it only reads it.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            quantizer.process()
        model = quantizer.model.model
    if post is not None:
        post(model, set(skip))
    fix_com_microsoft_opset(model)  # onnxruntime's k-quant path writes MatMulNBits without the domain's import
    done = sum(n.op_type == "MatMulNBits" for n in model.graph.node) - had["MatMulNBits"]
    tables = sum(n.op_type == "GatherBlockQuantized" for n in model.graph.node) - had["GatherBlockQuantized"]
    if done == 0 and (matmuls or tables == 0):
        keys = "nodes_to_include and nodes_to_exclude" if params.nodes_to_include else "nodes_to_exclude"
        quantized = f"; {had['MatMulNBits']} are MatMulNBits already: a quantized model is not quantized again" \
            if had["MatMulNBits"] else ""
        what = f"no MatMul in {src} was quantized (it has {before} MatMul nodes; only those with a constant 2-D " \
               f"weight qualify{quantized})" if matmuls else f"no embedding Gather in {src} was quantized (only " \
               "one over a constant 2-D float table qualifies)"
        raise ModelpressError(f"{label}: {what}. Check {keys} and op_types_to_quantize.")
    copy_model_folder(ctx.model.path, ctx.out, model_file)
    save_onnx(model, ctx.out, uses_external_file(ctx.model.path, model_file), model_file)
    ctx.notes.append(f"{label}: {done} of {before} MatMul nodes -> MatMulNBits"
                     + (f", {tables} embedding Gather(s) -> GatherBlockQuantized" if tables else "") + "; "
                     f"{_mib(model_bytes(ctx.model.path, model_file))} -> {_mib(model_bytes(ctx.out, model_file))}")
    return _output(ctx, ctx.model.kind)


def _fed_weights(model) -> list[str]:
    """MatMul nodes whose second input is a graph input: a weight fed at run time (an adapter's, after
    ExtractAdapters), whose initializer is only its default. onnxruntime's quantizers would fold it in as a
    constant and cut the input off."""
    inputs = {i.name for i in model.graph.input}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and len(n.input) > 1 and n.input[1] in inputs]


def _decoder_file(ref: ModelRef) -> str:
    """The ONNX file to quantize: model.onnx, or the decoder named in an onnxruntime-genai folder's config."""
    if ref.kind != ONNX_GENAI:
        return MODEL_FILE
    config = json.loads((ref.path / "genai_config.json").read_text(encoding="utf-8"))
    return config["model"]["decoder"]["filename"]


@contextlib.contextmanager
def _quiet_ort():
    # onnxruntime's quantizers log advice ("consider pre-processing") through the root logger and
    # print calibration progress; both are shown only in --verbose runs.
    root = logging.getLogger()
    level = root.level
    verbose = log.getEffectiveLevel() <= logging.DEBUG
    root.setLevel(level if verbose else max(level, logging.ERROR))
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            yield
    finally:
        root.setLevel(level)
        if printed.getvalue().strip():
            log.debug("onnxruntime output:\n%s", printed.getvalue())


# --- int8 quantization ------------------------------------------------------------------------

def _quant_kwargs(params: OnnxDynamicQuantizationParams, src_folder: Path) -> dict:
    from onnxruntime.quantization import QuantType

    op_types = params.op_types_to_quantize
    if params.op_types_to_exclude:
        from onnxruntime.quantization.registry import IntegerOpsRegistry, QDQRegistry, QLinearOpsRegistry

        every = op_types or sorted({*IntegerOpsRegistry, *QLinearOpsRegistry, *QDQRegistry})
        op_types = [op for op in every if op not in params.op_types_to_exclude]
    return {"weight_type": QuantType[params.weight_type], "per_channel": params.per_channel,
            "reduce_range": params.reduce_range, "op_types_to_quantize": op_types,
            "nodes_to_quantize": params.nodes_to_quantize, "nodes_to_exclude": list(params.nodes_to_exclude),
            "use_external_data_format": uses_external_file(src_folder),
            "extra_options": params.extra_options.to_dict()}


@contextlib.contextmanager
def _own_folder(ctx: PassContext):
    """A folder of this pass's own for the model file it quantizes, removed after: onnxruntime's quantizers write a
    shape-inferred copy beside the file they are given, which must not land in the previous step's cache entry
    (it would look damaged, and two runs sharing the cache would clash)."""
    import shutil

    folder = ctx.out.parent / f"{ctx.out.name}.quant-input"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _prepared(ctx: PassContext, params: OnnxDynamicQuantizationParams, own: Path, src: Path) -> Path:
    """The model file to quantize, in the pass's own folder: onnxruntime's quant_pre_process of the input when
    `quant_preprocess` (Olive's default; it only reads the input), else a copy of the input's files (copied, not
    linked: onnx refuses external data with several hard links). A preprocessing that fails falls back to the copy,
    with a note, as in Olive."""
    import shutil

    if params.quant_preprocess:
        from onnxruntime.quantization.preprocess import quant_pre_process

        out = own / "preprocessed.onnx"
        try:
            quant_pre_process(src / MODEL_FILE, out, auto_merge=True, save_as_external_data=uses_external_file(src))
            return out
        except Exception as err:  # noqa: BLE001  (any failure of the optional step: quantize the model as it is)
            ctx.notes.append(f"quant_pre_process failed ({type(err).__name__}: {err}); quantized without it")
            for leftover in own.iterdir():
                leftover.unlink()
    for f in src.iterdir():
        if f.is_file():
            shutil.copyfile(f, own / f.name)
    return own / MODEL_FILE


def run_dynamic(ctx: PassContext, params: OnnxDynamicQuantizationParams) -> ModelRef:
    """int8 weights; activation scales computed at run time (DynamicQuantizeLinear + MatMulInteger)."""
    _quiet_quantizer_logs()
    from onnxruntime.quantization import quantize_dynamic

    src = _plain_onnx(ctx, "OnnxDynamicQuantization")
    copy_model_folder(src, ctx.out)
    with _quiet_ort(), _own_folder(ctx) as own:
        quantize_dynamic(_prepared(ctx, params, own, src), ctx.out / MODEL_FILE, **_quant_kwargs(params, src))
    ctx.notes.append(f"dynamic int8 ({params.weight_type} weights{', per channel' if params.per_channel else ''}): "
                     f"{_mib(model_bytes(src))} -> {_mib(model_bytes(ctx.out))}")
    return _output(ctx)


def run_static(ctx: PassContext, params: OnnxStaticQuantizationParams) -> ModelRef:
    """int8 weights and activations; activation ranges calibrated on the first rows of `data_config`."""
    _quiet_quantizer_logs()
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    src = _plain_onnx(ctx, "OnnxStaticQuantization")
    feeds = calibration_feeds(ctx, params)
    copy_model_folder(src, ctx.out)
    with _quiet_ort(), _own_folder(ctx) as own:
        quantize_static(_prepared(ctx, params, own, src), ctx.out / MODEL_FILE, _FeedReader(feeds),
                        quant_format=QuantFormat[params.quant_format],
                        activation_type=QuantType[params.activation_type],
                        calibrate_method=CalibrationMethod[params.calibrate_method], **_quant_kwargs(params, src))
    ctx.notes.append(f"static int8 ({params.quant_format}, {params.calibrate_method}) calibrated on {len(feeds)} "
                     f"rows of {params.data_config!r}: {_mib(model_bytes(src))} -> {_mib(model_bytes(ctx.out))}")
    return _output(ctx)


def calibration_feeds(ctx: PassContext, params: OnnxStaticQuantizationParams) -> list[dict]:
    """One feed dict per calibration row: its text tokenized (cut to the data config's max_seq_len)."""
    if ctx.data is None or params.data_config not in ctx.data.config.data_configs:
        known = ", ".join(ctx.data.config.data_configs) if ctx.data is not None else "none"
        raise ModelpressError(f"OnnxStaticQuantization: no data config named {params.data_config!r} "
                              f"(defined: {known}). Set data_config to one of the workflow's data configs.")
    config = ctx.data.data_config(params.data_config)
    examples = ctx.data.calibration_examples(params.data_config)[:params.calibration_samples]
    # A classifier reads the input text (the prompt); a causal LM reads prompt and completion together.
    texts = [ex.prompt if ctx.task == CLASSIFY else ex.prompt + ex.completion for ex in examples]
    tokenizer = load_tokenizer(ctx.model.path, ctx.input_model.trust_remote_code)
    specs = input_specs(ctx.model.path / MODEL_FILE)
    encoded = encode_texts(tokenizer, texts, truncation=True, max_length=config.max_seq_len,
                           add_special_tokens=config.add_special_tokens)
    kept = [i for i, ids in enumerate(encoded["input_ids"]) if ids]
    rows = [encoded["input_ids"][i] for i in kept]
    segments = [encoded["token_type_ids"][i] for i in kept] if "token_type_ids" in encoded else None
    if params.calibrate_method == "MinMax":
        return [graph_feeds(specs, [ids], None, None if segments is None else [segments[i]])
                for i, ids in enumerate(rows)]
    # onnxruntime's histogram calibrators stack each tensor across rows: pad the rows to one length
    ids, mask = pad_batch(rows, tokenizer.pad_token_id or 0)
    segs = pad_batch(segments, 0)[0] if segments is not None else None
    return [graph_feeds(specs, ids[i:i + 1], mask[i:i + 1], None if segs is None else segs[i:i + 1])
            for i in range(len(rows))]


class _FeedReader:
    """onnxruntime's CalibrationDataReader protocol over a list of feed dicts."""

    def __init__(self, feeds: list[dict]):
        self.feeds = feeds
        self.position = 0

    def get_next(self) -> dict | None:
        if self.position >= len(self.feeds):
            return None
        self.position += 1
        return self.feeds[self.position - 1]

    def rewind(self) -> None:
        self.position = 0


# --- fusion and float16 -----------------------------------------------------------------------

# Hugging Face model types that onnxruntime's optimizer handles under another name.
_ORT_MODEL_TYPES = {"roberta": "bert", "xlm-roberta": "bert", "distilbert": "bert", "electra": "bert",
                    "camembert": "bert"}
FUSION_RTOL = 1e-3  # max |fused - unfused| logit difference allowed, relative to the largest |logit|


def _fusion_options(params: OrtTransformersOptimizationParams, model_type: str):
    from onnxruntime.transformers.fusion_options import FusionOptions

    options = FusionOptions(model_type)
    chosen = params.optimization_options.model_dump(exclude_none=True) if params.optimization_options else {}
    for key, value in chosen.items():
        setattr(options, key, value)
    return options


def _float16_options(params: OrtTransformersOptimizationParams) -> dict:
    """onnxruntime's convert_float_to_float16 keywords; force_fp32_ops extend its default block list."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST

    options: dict = {"keep_io_types": params.keep_io_types}
    if params.force_fp32_ops:
        options["op_block_list"] = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(params.force_fp32_ops))
    if params.force_fp32_nodes:
        options["node_block_list"] = list(params.force_fp32_nodes)
    if params.force_fp16_inputs:
        options["force_fp16_inputs"] = dict(params.force_fp16_inputs)
    return options


def run_transformers_optimization(ctx: PassContext, params: OrtTransformersOptimizationParams) -> ModelRef:
    """Fuse with onnxruntime.transformers.optimizer, then check the fused logits against the input's."""
    from onnxruntime.transformers.optimizer import MODEL_TYPES, optimize_model

    src = _plain_onnx(ctx, "OrtTransformersOptimization")
    config = hf_config(src)
    model_type = params.model_type or _ORT_MODEL_TYPES.get(config.get("model_type"), config.get("model_type"))
    if params.model_type and params.model_type not in MODEL_TYPES:
        raise ModelpressError(f"onnxruntime's optimizer has no model_type {params.model_type!r}. "
                              f"Known: {', '.join(MODEL_TYPES)}; or leave model_type unset.")
    fuse = model_type in MODEL_TYPES and not params.only_onnxruntime
    if not fuse and params.opt_level == 0:
        raise ModelpressError(f"model type {model_type!r} gets onnxruntime's graph optimizations only, and "
                              "opt_level 0 turns them off: set opt_level to 1, 2 or 99.")
    with _quiet_ort():
        optimized = optimize_model(
            str(src / MODEL_FILE), model_type=model_type if fuse else "bert",
            num_heads=params.num_heads or config.get("num_attention_heads", 0),
            hidden_size=params.hidden_size or config.get("hidden_size", 0),
            opt_level=params.opt_level if fuse else (params.opt_level or 1),
            optimization_options=_fusion_options(params, model_type) if fuse else None,
            use_gpu=ctx.execution_provider != "cpu", only_onnxruntime=not fuse,
            # named, as Olive does: without it onnxruntime looks for CUDA alone, and under DirectML skips its step
            provider=None if ctx.execution_provider == "cpu" else ctx.execution_provider)
        if params.float16:
            optimized.convert_float_to_float16(**_float16_options(params))
    copy_model_folder(src, ctx.out)
    save_onnx(optimized.model, ctx.out, uses_external_file(src))
    drift = logit_drift(src, ctx.out, "the optimized model")
    if not params.float16 and drift > FUSION_RTOL:
        raise ModelpressError(f"the fused model's logits differ from its input's (max difference {drift:.1e} of the "
                              f"largest logit, allowed {FUSION_RTOL:g}). Set only_onnxruntime to true, or another "
                              "model_type.")
    fused = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v} if fuse else {}
    ctx.notes.append(f"onnxruntime optimizer ({model_type if fuse else 'graph optimizations only'}): "
                     f"{', '.join(f'{k} x{v}' for k, v in fused.items()) or 'no fusions'}; "
                     f"logit drift {drift:.1e}")
    return _output(ctx)


def run_float16(ctx: PassContext, params: OnnxFloatToFloat16Params) -> ModelRef:
    """float16 weights and compute; ops in op_block_list (onnxruntime's default list) stay float32."""
    import onnx
    from onnxruntime.transformers.onnx_model import OnnxModel as OrtOnnxModel

    src = _plain_onnx(ctx, "OnnxFloatToFloat16")
    model = OrtOnnxModel(onnx.load(str(src / MODEL_FILE)))
    op_block, node_block = params.op_block_list, params.node_block_list
    if params.op_include_list:  # as Olive (an empty list means none given): every other type kept in float32
        op_block = sorted({n.op_type for n in model.nodes()} - set(params.op_include_list))
    if params.node_include_list:
        node_block = [n.name for n in model.nodes() if n.name not in params.node_include_list]
    with _quiet_ort():
        model.convert_float_to_float16(
            keep_io_types=params.keep_io_types, op_block_list=op_block, node_block_list=node_block,
            min_positive_val=params.min_positive_val, max_finite_val=params.max_finite_val,
            use_symbolic_shape_infer=params.use_symbolic_shape_infer)
    copy_model_folder(src, ctx.out)
    save_onnx(model.model, ctx.out, uses_external_file(src))
    try:  # fail here, not at evaluation, when onnxruntime has no float16 kernel for an op
        drift = logit_drift(src, ctx.out, "the float16 model")
    except ModelpressError as err:
        raise ModelpressError(f"{err}. Keep the failing operator type in float32 with op_block_list "
                              "(or the node with node_block_list).") from err
    ctx.notes.append(f"float16: {_mib(model_bytes(src))} -> {_mib(model_bytes(ctx.out))}; logit drift {drift:.1e}")
    return _output(ctx)


# --- session tuning ---------------------------------------------------------------------------

def run_session_tuning(ctx: PassContext, params: OrtSessionParamsTuningParams) -> ModelRef:
    """Time each candidate setting on synthetic ids; keep the model and write the fastest to ort_session.json.

    Timing runs on the CPU execution provider, which is where modelpress runs plain ONNX models.
    """
    src = _plain_onnx(ctx, "OrtSessionParamsTuning")
    ids = synthetic_ids(src, params.batch_size, params.sequence_length, params.seed)
    table = [{"session_options": s.model_dump(), "latency_ms": _latency(src, s, ids, params)}
             for s in candidates(params)]
    best = min(table, key=lambda row: row["latency_ms"]["median"])
    copy_model_folder(src, ctx.out)
    copy_model_files(src, ctx.out)
    atomic_write_json(ctx.out / SESSION_FILE, {
        "session_options": best["session_options"], "measurements": table,
        "input": {"batch_size": params.batch_size, "sequence_length": params.sequence_length}})
    chosen = ", ".join(f"{k}={v}" for k, v in best["session_options"].items())
    ctx.notes.append(f"session options: {chosen} ({best['latency_ms']['median']:.2f} ms median of "
                     f"{len(table)} candidates)")
    return _output(ctx)


def candidates(params: OrtSessionParamsTuningParams) -> list[SessionSettings]:
    """Every combination of the candidate lists; inter-op threads vary only in parallel mode. The default
    thread counts are 1, 2 and every core this process may compute on (a Ray task: the CPUs it reserved)."""
    cores = compute_threads()
    intra = params.intra_thread_num_list or [n for n in (1, 2, cores) if n <= cores]
    settings = {}
    for threads in dict.fromkeys(intra):
        for mode in dict.fromkeys(params.execution_mode_list):
            for inter in dict.fromkeys(params.inter_thread_num_list if mode == "parallel" else [0]):
                for level in dict.fromkeys(params.opt_level_list):
                    s = SessionSettings(intra_op_num_threads=threads, inter_op_num_threads=inter,
                                        execution_mode=mode, graph_optimization_level=level)
                    settings[s.model_dump_json()] = s
    return list(settings.values())


def _latency(folder: Path, settings: SessionSettings, ids, params: OrtSessionParamsTuningParams) -> dict:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(folder / MODEL_FILE), apply_settings(options, settings),
                                   providers=["CPUExecutionProvider"])
    feeds = graph_feeds(session.get_inputs(), ids)
    for _ in range(params.warmup_num):
        session.run([logits_name(session)], feeds)
    times = []
    for _ in range(params.repeat_test_num):
        start = time.perf_counter()
        session.run([logits_name(session)], feeds)
        times.append((time.perf_counter() - start) * 1000)
    return {"median": statistics.median(times), "min": min(times)}
