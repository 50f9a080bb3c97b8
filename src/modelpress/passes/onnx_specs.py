"""Parameters and catalog entries of the passes that work on plain ONNX models.

Names follow Microsoft Olive 0.13 where Olive has the same pass. Every pass here writes
`model.onnx` with its weights in `model.onnx.data`, except that a model converted with
`save_as_external_data: false` stays one file through the passes after it. The
implementations are in `modelpress.passes.onnx_passes`; nothing here imports torch or
onnxruntime.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, NonNegativeInt, field_validator, model_validator

from modelpress.passes.spec_base import HF, HF_ADAPTER, ONNX, ONNX_GENAI, SAME_KIND, PassSpec, Strict, searchable

BlockSize = Literal[16, 32, 64, 128, 256]
AccuracyLevel = Literal[0, 1, 2, 3, 4]
QuantType = Literal["QInt8", "QUInt8"]
StaticQuantType = Literal["QInt8", "QUInt8", "QInt16", "QUInt16"]  # 16-bit types: QDQ format only
OLIVE_QUANT_TYPES = {"int8": "QInt8", "uint8": "QUInt8", "int16": "QInt16", "uint16": "QUInt16"}  # Olive 0.13's
OptLevelName = Literal["disable", "basic", "extended", "layout", "all"]
ExecutionModeName = Literal["sequential", "parallel"]
# Olive's configs give onnxruntime's enum values (GraphOptimizationLevel, ExecutionMode) as numbers
OLIVE_NUMBERS = {"opt_level_list": {0: "disable", 1: "basic", 2: "extended", 3: "layout", 99: "all"},
                 "execution_mode_list": {0: "sequential", 1: "parallel"}}


class OnnxConversionParams(Strict):
    """Export a Hugging Face model to ONNX with torch.onnx.export (the dynamo exporter)."""

    target_opset: int = Field(18, ge=18, description="ONNX opset of the graph (the dynamo exporter needs 18 or more; "
                              "Olive's default is 20).")
    use_kv_cache: bool = Field(
        False, description="text-generation only: add past_key_values.{i}.key/value inputs and present.{i}.key/value "
        "outputs for incremental decoding. An empty past (length 0) scores the whole sequence. Left out, true when "
        "the input model's task is Olive's text-generation-with-past (its default task in Olive's schemas).",
    )
    save_as_external_data: bool = Field(
        True, description="Keep the weights in model.onnx.data beside model.onnx (needed above 2 GB); false writes "
        "one self-contained model.onnx.",
    )
    merge_adapter_weights: bool = Field(
        False, description="An adapter input (base + LoRA, LoKr, ...): false exports the adapter's layers as their "
        "own nodes beside the base weights, as Olive does; true merges the adapter into its base first.")


class WeightOnlyParams(Strict):
    """What the int4 weight-only quantizers share: every MatMul with a constant 2-D weight, but these."""

    nodes_to_exclude: list[str] = Field(default_factory=list, description="Names of MatMul nodes to keep in float.")
    nodes_to_include: list[str] | None = Field(None, description="Quantize only these nodes (default: every one); "
                                               "nodes_to_exclude still wins.")


class OnnxBlockWiseRtnQuantizationParams(WeightOnlyParams):
    """int4 weight-only quantization by round-to-nearest per block (MatMulNBits), no data needed."""

    bits: Literal[4, 8] = searchable(4, 8, default=4, description="Bits per weight, embedding tables included (at 8 "
                                     "bits modelpress writes their GatherBlockQuantized, as Olive does).")
    block_size: BlockSize = searchable(32, 128, default=128, description="Weights per quantization block (along K).")
    axis: Literal[0] = Field(0, description="Olive's key: MatMul weights are blocked along K (axis 0), embedding "
                             "tables along their last axis, as GatherBlockQuantized requires.")
    is_symmetric: bool = searchable(True, False, default=True,
                                    description="Symmetric (signed, no zero point) or asymmetric blocks.")
    accuracy_level: AccuracyLevel | None = Field(
        None, description="MatMulNBits compute accuracy level (0-4, 4 = int8 compute on CPU); default: unset.")
    op_types_to_quantize: list[Literal["MatMul", "Gather"]] = Field(
        ["MatMul", "Gather"], min_length=1, description="MatMul weights (MatMulNBits) and, as in Olive, embedding "
        "tables read by Gather (GatherBlockQuantized); [\"MatMul\"] keeps the embeddings float.")


class OnnxHqqQuantizationParams(WeightOnlyParams):
    """int4 weight-only quantization with Half-Quadratic Quantization (HQQ), no data needed."""

    block_size: BlockSize = searchable(32, 128, default=128, description="Weights per quantization block (along K).")
    axis: Literal[0] = Field(0, description="Olive's key: weights are blocked along K (axis 0), the one axis "
                             "MatMulNBits and Olive's HQQ take.")
    accuracy_level: AccuracyLevel | None = Field(
        None, description="MatMulNBits compute accuracy level written on each node HQQ makes (0-4, 4 = int8 compute "
        "on CPU), as Olive writes it; default: unset.")


class QuantExtraOptions(Strict):
    """onnxruntime quantizer `extra_options`, typed (onnxruntime's own spelling); unset keys keep its defaults."""

    MatMulConstBOnly: bool | None = Field(None, description="Quantize only MatMuls whose B is a constant.")
    WeightSymmetric: bool | None = Field(None, description="Symmetric weight ranges.")
    ActivationSymmetric: bool | None = Field(None, description="Symmetric activation ranges.")
    EnableSubgraph: bool | None = Field(None, description="Also quantize inside If/Loop subgraphs.")
    ForceQuantizeNoInputCheck: bool | None = Field(
        None, description="Quantize latent ops (Transpose, Reshape...) even when their input is not quantized.")

    def to_dict(self) -> dict:
        return self.model_dump(exclude_none=True)


class StaticExtraOptions(QuantExtraOptions):
    """Extra options of static quantization, with the calibration ones."""

    CalibMovingAverage: bool | None = Field(None, description="MinMax calibration: moving average of min/max.")
    CalibPercentile: float | None = Field(None, gt=0, le=100, description="Percentile calibration: the percentile.")


class OnnxDynamicQuantizationParams(Strict):
    """int8 weights with activations quantized at run time (onnxruntime quantize_dynamic); no data needed."""

    @model_validator(mode="before")
    @classmethod
    def _olive_type_names(cls, data):
        """Olive 0.13 writes types as int8/uint16... and the weight type as `precision`."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if "precision" in data and "weight_type" not in data:
            data["weight_type"] = data.pop("precision")
        for key, option in (("activation_symmetric", "ActivationSymmetric"), ("weight_symmetric", "WeightSymmetric")):
            if key in data:  # Olive's pass keys for two extra options (None: onnxruntime's default)
                value = data.pop(key)
                extra = dict(data.get("extra_options") or {})
                if value is not None:  # the pass key wins over extra_options, as in Olive
                    extra[option] = value
                data["extra_options"] = extra
        for key in ("weight_type", "activation_type"):
            if isinstance(data.get(key), str):
                data[key] = OLIVE_QUANT_TYPES.get(data[key].lower(), data[key])
        return data

    quant_preprocess: bool = Field(
        True, description="Run onnxruntime's quant_pre_process (symbolic shape inference and graph optimization) "
        "on the model first, as Olive does; if it fails, the model is quantized as it is, with a note.")
    weight_type: QuantType = searchable("QInt8", "QUInt8", default="QInt8", description="int8 type of the weights.")
    per_channel: bool = searchable(False, True, default=False, description="One scale per output channel.")
    reduce_range: bool = Field(False, description="7-bit weights, for CPUs without VNNI (avoids saturation).")
    op_types_to_quantize: list[str] | None = Field(
        None, description="Operator types to quantize, e.g. ['MatMul']; default: every type onnxruntime supports.")
    op_types_to_exclude: list[str] | None = Field(None, description="Operator types to leave in float: taken out "
                                                  "of op_types_to_quantize (every supported type where that is null; "
                                                  "Olive's static pass starts from every type even when it is not).")
    nodes_to_quantize: list[str] | None = Field(None, description="Quantize only these nodes.")
    nodes_to_exclude: list[str] = Field(default_factory=list, description="Nodes to keep in float.")
    extra_options: QuantExtraOptions = Field(default_factory=QuantExtraOptions,
                                             description="onnxruntime quantizer extra options.")


class OnnxStaticQuantizationParams(OnnxDynamicQuantizationParams):
    """int8 weights and activations with ranges calibrated on the workflow's data (quantize_static)."""

    weight_type: StaticQuantType = searchable("QInt8", "QUInt8", default="QInt8", description=(
        "Type of the weights (Olive: `precision`, int8/uint8/int16/uint16); 16-bit types need quant_format QDQ."))

    data_config: str = Field(description="Name of the data config whose rows calibrate the activation ranges.")
    calibration_samples: int = Field(64, gt=0, description="Rows used for calibration (the first N).")
    quant_format: Literal["QDQ", "QOperator"] = searchable(
        "QDQ", "QOperator", default="QDQ",
        description="QuantizeLinear/DequantizeLinear pairs around float ops, or quantized operators.")
    activation_type: StaticQuantType = searchable("QInt8", "QUInt8", default="QInt8", description=(
        "Type of the activations (int8/uint8/int16/uint16 in Olive's spelling); 16-bit types need QDQ."))

    @model_validator(mode="after")
    def _sixteen_bits_need_qdq(self) -> "OnnxStaticQuantizationParams":
        if "16" in self.weight_type + self.activation_type and self.quant_format != "QDQ":
            raise ValueError("16-bit weight or activation types need quant_format 'QDQ'")
        return self
    op_types_to_quantize: list[str] | None = Field(
        ["MatMul", "Gemm"], description="Operator types to quantize; null: every type onnxruntime supports. The "
        "default keeps the attention-mask arithmetic (huge negative constants) in float: quantizing it with one "
        "int8 range per tensor wrecks a transformer's output (measured on the tiny Phi-3: cosine 0.29 vs 0.99).")
    calibrate_method: Literal["MinMax", "Entropy", "Percentile"] = searchable(
        "MinMax", "Entropy", "Percentile", default="MinMax",
        description="How activation ranges are chosen from calibration.")
    extra_options: StaticExtraOptions = Field(default_factory=StaticExtraOptions,
                                              description="onnxruntime quantizer extra options.")


class FusionOptionsParams(Strict):
    """onnxruntime.transformers FusionOptions switches (Olive's `optimization_options`); unset keeps the default."""

    enable_gelu: bool | None = None
    enable_layer_norm: bool | None = None
    enable_attention: bool | None = None
    enable_rotary_embeddings: bool | None = None
    use_multi_head_attention: bool | None = None
    disable_multi_head_attention_bias: bool | None = None
    enable_skip_layer_norm: bool | None = None
    enable_embed_layer_norm: bool | None = None
    enable_bias_skip_layer_norm: bool | None = None
    enable_bias_gelu: bool | None = None
    enable_gelu_approximation: bool | None = None
    enable_qordered_matmul: bool | None = None
    enable_shape_inference: bool | None = None
    enable_gemm_fast_gelu: bool | None = None
    group_norm_channels_last: bool | None = None


class OrtTransformersOptimizationParams(Strict):
    """Fuse transformer subgraphs (attention, layer norm, GELU...) with onnxruntime.transformers.optimizer."""

    model_type: str | None = Field(
        None, description="onnxruntime's model type (bert, gpt2, phi...); default: from config.json's model_type. "
        "A type onnxruntime has no fusions for gets onnxruntime's graph optimizations only.")
    num_heads: int = Field(0, ge=0, description="Attention heads; 0: from config.json.")
    hidden_size: int = Field(0, ge=0, description="Hidden size; 0: from config.json.")
    opt_level: Literal[0, 1, 2, 99] | None = searchable(
        None, 1, 2, default=None,
        description="onnxruntime graph optimization level run before fusion (0 off, 1 basic, 2 extended, 99 all); "
        "default: onnxruntime's choice for the model type.")
    only_onnxruntime: bool = Field(False, description="Only onnxruntime's graph optimizations, no Python fusions.")
    float16: bool = Field(False, description="Also convert the fused model to float16.")
    keep_io_types: bool = Field(True, description="With float16: keep float32 graph inputs and outputs.")
    optimization_options: FusionOptionsParams | None = Field(
        None, description="Which fusions run (onnxruntime FusionOptions); default: onnxruntime's for the model type.")
    force_fp32_ops: list[str] | None = Field(None, description="With float16: op types kept in float32.")
    force_fp32_nodes: list[str] | None = Field(None, description="With float16: node names kept in float32.")
    force_fp16_inputs: dict[str, list[int]] | None = Field(
        None, description="With float16: {op type: input indices} forced to float16 even in a float32 op.")


class OnnxFloatToFloat16Params(Strict):
    """Convert float32 weights and compute to float16 (onnxruntime.transformers.float16)."""

    keep_io_types: bool | list[str] = Field(
        False, description="Keep float32 graph inputs and outputs (Cast at the edges): true for all, or their names. "
        "Default false, as Olive: float16 logits.")
    op_block_list: list[str] | None = Field(
        None, description="Operator types kept in float32; default: onnxruntime's list of ops without fp16 kernels.")
    op_include_list: list[str] | None = Field(
        None, description="Operator types converted, every other kept in float32 (instead of op_block_list).")
    node_block_list: list[str] | None = Field(None, description="Node names kept in float32.")
    node_include_list: list[str] | None = Field(
        None, description="Node names converted, every other kept in float32 (instead of node_block_list).")
    min_positive_val: float = Field(1e-7, gt=0, description="Constants smaller in size are clipped up to this.")
    max_finite_val: float = Field(1e4, gt=0, description="Constants larger in size are clipped down to this.")
    use_symbolic_shape_infer: bool = Field(
        True, description="onnxruntime's symbolic shape inference (else onnx's) to find the types at the edges.")

    @model_validator(mode="after")
    def _exclusive(self) -> "OnnxFloatToFloat16Params":
        for kind in ("op", "node"):
            if getattr(self, f"{kind}_include_list") and getattr(self, f"{kind}_block_list") is not None:
                raise ValueError(f"{kind}_include_list and {kind}_block_list exclude each other: give one")
        return self


class OrtSessionParamsTuningParams(Strict):
    """Time the model under candidate onnxruntime session options and keep the fastest (ort_session.json)."""

    intra_thread_num_list: list[NonNegativeInt] | None = Field(
        None, min_length=1, description="intra_op_num_threads candidates (0: onnxruntime's choice); default: 1, 2 "
        "and the CPU count.")
    inter_thread_num_list: list[NonNegativeInt] = Field(
        [0], min_length=1, description="inter_op_num_threads candidates, tried in parallel mode only.")
    execution_mode_list: list[ExecutionModeName] = Field(["sequential", "parallel"], min_length=1,
                                                         description="Execution mode candidates.")
    opt_level_list: list[OptLevelName] = Field(["all", "extended", "basic"], min_length=1,
                                               description="graph_optimization_level candidates.")
    batch_size: int = Field(1, gt=0, description="Rows of the synthetic timing input.")
    sequence_length: int = Field(32, gt=0, description="Tokens per row of the synthetic timing input.")

    @field_validator("opt_level_list", "execution_mode_list", mode="before")
    @classmethod
    def _olive_numbers(cls, value, info):
        """Olive's numbers (opt_level_list [99], execution_mode_list [0]) read as the names they stand for."""
        numbers = OLIVE_NUMBERS[info.field_name]
        items = value if isinstance(value, list) else [value] if isinstance(value, int) else value
        if not isinstance(items, list):
            return value
        return [numbers.get(v, v) if isinstance(v, int) and not isinstance(v, bool) else v for v in items]
    warmup_num: int = Field(3, ge=0, description="Untimed runs before timing each candidate.")
    repeat_test_num: int = Field(10, gt=0, description="Timed runs per candidate (the median is compared).")
    seed: int = Field(0, description="Seed of the random token ids.")


class KQuantNodeSettings(Strict):
    """One node's overrides in k-quant's customized_weight_config: the keys onnxruntime reads (any other was ignored)."""

    bits: Literal[4, 8] | None = Field(None, description="Bits for this node's weight.")
    group_size: BlockSize | None = Field(None, description="Weights per block for this node.")
    scheme: Literal["sym", "asym"] | None = Field(None, description="Symmetric or asymmetric blocks for this node.")


class OnnxKQuantQuantizationParams(WeightOnlyParams):
    """Weight-only k-quant quantization (onnxruntime's MatMulNBits quantizer, k_quant algorithm), no data needed."""

    bits: Literal[4, 8] = searchable(4, 8, default=4, description="Bits per weight.")
    block_size: BlockSize = searchable(32, 128, default=32, description="Weights per quantization block (along K).")
    accuracy_level: AccuracyLevel | None = Field(None, description="MatMulNBits compute accuracy level (0-4).")
    customized_weight_config: dict[str, KQuantNodeSettings] | None = Field(
        None, description="Per-node settings by MatMul node name (bits, group_size, scheme), e.g. "
        "{\"/lm_head/MatMul\": {\"bits\": 8}}.")


class DynamicToFixedShapeParams(Strict):
    """Fix named dynamic dimensions to values (for runtimes that need static shapes)."""

    dim_param: list[str] = Field(min_length=1, description="Names of dynamic dimensions, e.g. [\"batch_size\"].")
    dim_value: list[int] = Field(min_length=1, description="Their fixed values, in the same order.")

    @model_validator(mode="after")
    def _pairs(self) -> "DynamicToFixedShapeParams":
        if len(self.dim_param) != len(self.dim_value) or any(v < 1 for v in self.dim_value):
            raise ValueError("dim_param and dim_value must be lists of the same length, with values of at least 1")
        return self


class OnnxPeepholeOptimizerParams(Strict):
    """Clean the graph up with onnxscript's optimizer: constant folding, dead nodes, cast and reshape chains."""

    onnxscript_optimize: bool = Field(True, description="Run onnxscript's optimizer (constant folding, dead code, "
                                      "its rewrites).")
    fuse_reshape_operations: bool = Field(True, description="Bypass a Reshape whose only consumer is a Reshape to "
                                          "[-1].")
    cast_chain_elimination: bool = Field(False, description="Cast(Cast(x)) back to x's own type becomes x (as in "
                                         "Olive: the middle type's rounding is dropped too).")
    fix_com_microsoft_opset: bool = Field(False, description="Add the com.microsoft opset import where the graph or "
                                          "a function uses its operators and lacks it.")
    onnxoptimizer_optimize: bool = Field(False, description="Olive's onnxoptimizer run; modelpress does not use "
                                         "the onnxoptimizer package and warns when this is true.")


class GraphSurgeriesParams(Strict):
    """Named graph surgeries, applied in order (see modelpress.passes.surgeons)."""

    surgeries: list[dict] = Field(min_length=1, description="[{\"surgeon\": NAME, ...options}]; surgeons: "
                                  "TieWordEmbeddings, QuantizeEmbeddingInt8, ShareEmbeddingLmHead, RenameInputs, "
                                  "RenameOutputs.")

    @model_validator(mode="after")
    def _known(self) -> "GraphSurgeriesParams":
        from modelpress.passes.surgeons import SURGEON_OPTIONS

        canonical = {name.lower(): name for name in SURGEON_OPTIONS}
        for i, surgery in enumerate(self.surgeries):
            name = canonical.get(str(surgery.get("surgeon")).lower())  # Olive matches surgeon names in lower case
            if name is None:
                raise ValueError(f"surgeries[{i}]: no surgeon {surgery.get('surgeon')!r} in modelpress; it has "
                                 f"{', '.join(SURGEON_OPTIONS)}")
            surgery["surgeon"] = name
            extra = set(surgery) - {"surgeon", *SURGEON_OPTIONS[name]}
            if extra:
                raise ValueError(f"surgeries[{i}]: {name} takes no {', '.join(sorted(extra))}")
            missing = [k for k in SURGEON_OPTIONS[name] if k not in surgery]
            if missing:
                raise ValueError(f"surgeries[{i}]: {name} needs {', '.join(missing)}")
        return self


class ExtractAdaptersParams(Strict):
    """Move a built model's LoRA weights to graph inputs and an adapter file (multi-LoRA serving)."""

    adapter_type: Literal["lora", "dora", "loha"] = Field(
        "lora", description="The adapter in the graph. The genai builder writes LoRA only: a DoRA or LoHa adapter "
        "is merged (MergeAdapterWeights) before ModelBuilder.")
    make_inputs: bool = Field(True, description="Make the adapter weights graph inputs (Olive's false, external "
                              "initializers, is not offered: the weights would still be fixed at session creation).")
    dynamic_lora_r: bool = Field(True, description="Give the inputs' rank axis the symbolic size lora_r, so one "
                                 "model serves adapters of any rank.")
    optional_inputs: bool = Field(True, description="Give each input a default (rank 0 when dynamic_lora_r, "
                                  "else zeros): the model runs as its base with no adapter.")
    save_format: Literal["onnx_adapter", "numpy", "safetensors"] = Field(
        "onnx_adapter", description="The adapter file: onnxruntime's .onnx_adapter (what onnxruntime-genai loads), "
        ".npz or .safetensors.")

    @model_validator(mode="after")
    def _supported(self) -> "ExtractAdaptersParams":
        if self.adapter_type != "lora":
            raise ValueError(f"adapter_type {self.adapter_type!r}: the genai builder writes only LoRA adapters into "
                             "the graph. Merge a DoRA or LoHa adapter with MergeAdapterWeights before ModelBuilder, "
                             "or train LoRA")
        if not self.make_inputs:
            raise ValueError("make_inputs false (adapter weights as external initializers) is not offered; set it "
                             "to true, or merge the adapter with MergeAdapterWeights")
        return self


_ENTRY = "modelpress.passes.onnx_passes:"
_GRAPH = "modelpress.passes.onnx_graph:"

ONNX_SPECS: tuple[PassSpec, ...] = (
    PassSpec("OnnxConversion", "export a Hugging Face model to ONNX (torch dynamo exporter)",
             OnnxConversionParams, "modelpress.passes.onnx_conversion:run_conversion", (HF, HF_ADAPTER), ONNX,
             False),
    PassSpec("OnnxBlockWiseRtnQuantization", "int4 weight-only round-to-nearest quantization (MatMulNBits)",
             OnnxBlockWiseRtnQuantizationParams, _ENTRY + "run_rtn", (ONNX, ONNX_GENAI), SAME_KIND, False),
    PassSpec("OnnxHqqQuantization", "int4 weight-only HQQ quantization (MatMulNBits)",
             OnnxHqqQuantizationParams, _ENTRY + "run_hqq", (ONNX, ONNX_GENAI), SAME_KIND, False),
    PassSpec("OnnxDynamicQuantization", "int8 dynamic quantization (onnxruntime quantize_dynamic)",
             OnnxDynamicQuantizationParams, _ENTRY + "run_dynamic", (ONNX,), ONNX, False),
    PassSpec("OnnxStaticQuantization", "int8 static quantization calibrated on a data config",
             OnnxStaticQuantizationParams, _ENTRY + "run_static", (ONNX,), ONNX, True),
    PassSpec("OrtTransformersOptimization", "fuse transformer subgraphs with onnxruntime's optimizer",
             OrtTransformersOptimizationParams, _ENTRY + "run_transformers_optimization", (ONNX,), ONNX, False,
             reads_execution_provider=True),
    PassSpec("OnnxFloatToFloat16", "convert an ONNX model to float16", OnnxFloatToFloat16Params,
             _ENTRY + "run_float16", (ONNX,), ONNX, False),
    PassSpec("OrtSessionParamsTuning", "pick the fastest onnxruntime session options (ort_session.json)",
             OrtSessionParamsTuningParams, _ENTRY + "run_session_tuning", (ONNX,), ONNX, False),
    PassSpec("OnnxKQuantQuantization", "int4/int8 weight-only k-quant quantization (MatMulNBits)",
             OnnxKQuantQuantizationParams, _GRAPH + "run_kquant", (ONNX, ONNX_GENAI), SAME_KIND, False),
    PassSpec("DynamicToFixedShape", "fix named dynamic dimensions of an ONNX model", DynamicToFixedShapeParams,
             _GRAPH + "run_dynamic_to_fixed", (ONNX, ONNX_GENAI), SAME_KIND, False),
    PassSpec("OnnxPeepholeOptimizer", "onnxscript's graph clean-up (folding, dead nodes, cast/reshape chains)",
             OnnxPeepholeOptimizerParams, _GRAPH + "run_peephole", (ONNX, ONNX_GENAI), SAME_KIND, False),
    PassSpec("GraphSurgeries", "named graph surgeries (tie or quantize the embeddings, rename inputs/outputs)",
             GraphSurgeriesParams, _GRAPH + "run_graph_surgeries", (ONNX, ONNX_GENAI), SAME_KIND, False),
    PassSpec("ExtractAdapters", "LoRA weights as graph inputs plus an adapter file (multi-LoRA)",
             ExtractAdaptersParams, "modelpress.passes.extract_adapters:run_extract_adapters", (ONNX_GENAI,),
             ONNX_GENAI, False),
)
