"""The static catalog of passes: what each accepts, produces and needs, and its parameters.

Each pass parameter is declared exactly once, here, as a pydantic field with a description;
validation, `modelpress passes` and the docs all read these declarations. Nothing in this
module imports torch, so `modelpress validate` stays fast.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import AliasChoices, Field, field_validator, model_validator

from modelpress.passes.gguf_spec import GGUF_SPECS
from modelpress.passes.onnx_specs import ONNX_SPECS
from modelpress.passes.quant_specs import QUANT_SPECS
from modelpress.passes.spec_base import (DATA_PARAMS, GGUF, HF, HF_ADAPTER, HF_QUANTIZED,  # noqa: F401
                                         ONNX, ONNX_GENAI, SAME_KIND, SEARCH, PassSpec, Strict, keyed_when_set,
                                         output_neutral, searchable)

# Each learning-rate schedule and the settings its transformers function takes beyond the optimizer and step counts
# (tests/test_config.py checks this table against transformers' own signatures).
SCHEDULE_SETTINGS: dict[str, tuple[str, ...]] = {
    "linear": (), "cosine": ("num_cycles",), "constant": (), "constant_with_warmup": (),
    "cosine_with_restarts": ("num_cycles",), "polynomial": ("lr_end", "power"), "inverse_sqrt": ("timescale",),
    "cosine_with_min_lr": ("num_cycles", "min_lr", "min_lr_rate"),
}


class TrainingArgs(Strict):
    """The subset of Hugging Face `TrainingArguments` that modelpress honours."""

    seed: int = Field(0, description="Seed for model init and dropout.")
    data_seed: int | None = Field(42, description="Seed for data shuffling and the eval split (null: `seed`, as "
                                  "transformers does).")
    per_device_train_batch_size: int = Field(1, gt=0, description="Training batch size.")
    per_device_eval_batch_size: int = Field(1, gt=0, description="Evaluation batch size.")
    gradient_accumulation_steps: int = Field(1, gt=0, description="Batches per optimizer step.")
    gradient_checkpointing: bool = Field(False, description="Trade compute for activation memory.")
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate.")
    num_train_epochs: float = Field(1.0, gt=0, description="Epochs; ignored when max_steps > 0.")
    max_steps: int = Field(-1, description="Optimizer steps; -1 means use num_train_epochs.")
    logging_steps: int = output_neutral(10, gt=0, description="Log the training loss every N steps.")
    eval_strategy: Literal["no", "steps", "epoch"] = Field(
        "no",
        validation_alias=AliasChoices("eval_strategy", "evaluation_strategy"),
        description="When to compute the eval loss during training.",
    )
    eval_steps: int | None = Field(None, gt=0, description="Eval every N steps (eval_strategy 'steps'); default: "
                                   "logging_steps, as in transformers.")
    group_by_length: bool = Field(False, description="Batch examples of similar length together.")
    bf16: bool = Field(
        False, description="Compute in bfloat16 under autocast (weights and adapters stay float32); fast on CPUs "
        "with AVX512-BF16/AMX and on recent GPUs.")
    adam_beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1.")
    adam_beta2: float = Field(0.999, ge=0, lt=1, description="AdamW beta2.")
    adam_epsilon: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Fraction of steps for LR warmup.")
    warmup_steps: int = Field(0, ge=0, description="LR warmup steps (overrides warmup_ratio).")
    lr_scheduler_type: Literal[tuple(SCHEDULE_SETTINGS)] = Field(  # type: ignore[valid-type]
        "linear", description=f"Learning-rate schedule (transformers' get_scheduler): {', '.join(SCHEDULE_SETTINGS)}.")
    lr_scheduler_kwargs: dict[str, float | int] = Field(
        default_factory=dict, description="The schedule's own settings, as transformers takes them: num_cycles "
        "(cosine_with_restarts), lr_end and power (polynomial), timescale (inverse_sqrt), min_lr or min_lr_rate "
        "(cosine_with_min_lr, which needs one).")
    save_strategy: Literal["steps", "epoch", "no"] = output_neutral(
        "steps", description="Save resumable checkpoints while training: every save_steps, at each epoch's end "
        "('epoch'), or not ('no').")
    save_steps: float = output_neutral(
        0.1, gt=0, description="Checkpoint every N steps, or every fraction of the run when below 1."
    )
    load_best_model_at_end: bool = keyed_when_set(
        False, description="Keep the adapter of the evaluation with the lowest eval loss, not the last step's "
        "(transformers' option). Needs eval data and eval_strategy 'steps' or 'epoch'; checkpoints are then saved "
        "at each evaluation instead (save_strategy and save_steps follow eval_strategy and eval_steps), so with "
        "'epoch' an interrupted run resumes from its last epoch's end.")

    @model_validator(mode="before")
    @classmethod
    def _no_fp16_key(cls, data):
        if isinstance(data, dict) and data.get("fp16"):  # Olive drops it with a warning: torch_dtype says it
            raise ValueError("training_args.fp16 is set through the pass's torch_dtype: 'float16' trains a float32 "
                             "base under fp16 mixed precision, as in Olive; remove fp16 from training_args")
        if isinstance(data, dict) and "fp16" in data:  # false: what not asking says
            data = {k: v for k, v in data.items() if k != "fp16"}
        return data

    @model_validator(mode="after")
    def _schedule_settings(self) -> "TrainingArgs":
        taken, given = SCHEDULE_SETTINGS[self.lr_scheduler_type], set(self.lr_scheduler_kwargs)
        extra = sorted(given - set(taken))
        if extra:
            raise ValueError(f"lr_scheduler_kwargs: {self.lr_scheduler_type!r} takes "
                             f"{', '.join(taken) or 'no settings'}, not {', '.join(extra)}")
        if self.lr_scheduler_type == "cosine_with_min_lr" and len({"min_lr", "min_lr_rate"} & given) != 1:
            raise ValueError("lr_scheduler_type 'cosine_with_min_lr' needs one of lr_scheduler_kwargs min_lr and "
                             "min_lr_rate")
        lr_end = self.lr_scheduler_kwargs.get("lr_end", 1e-7)  # transformers' default
        if self.lr_scheduler_type == "polynomial" and lr_end >= self.learning_rate:
            raise ValueError(f"lr_scheduler_kwargs.lr_end ({lr_end:g}) must be below learning_rate "
                             f"({self.learning_rate:g}): the polynomial schedule decays to it")
        return self

    @field_validator("max_steps")
    @classmethod
    def _steps_positive_or_unset(cls, value: int) -> int:
        if value == 0 or value < -1:
            raise ValueError("max_steps must be a positive number of steps, or -1 to train by epochs")
        return value

    @property
    def split_seed(self) -> int:
        """The seed of the eval split: data_seed, or the run's seed where it is null (transformers shuffles the
        training data so too)."""
        return self.data_seed if self.data_seed is not None else self.seed

    @model_validator(mode="after")
    def _eval_steps_resolved(self) -> "TrainingArgs":
        # transformers evaluates every logging_steps when eval_steps is unset; resolved here, so the cache key
        # (which leaves logging_steps out) holds the evaluations, which move the random state training draws from
        if self.eval_strategy == "steps" and self.eval_steps is None:
            self.eval_steps = self.logging_steps
        return self

    @model_validator(mode="after")
    def _checkpoint_each_evaluation(self) -> "TrainingArgs":
        """load_best_model_at_end restores the checkpoint of the best evaluation, so every evaluation saves one: the
        save schedule follows the eval schedule (an explicit other one is refused, as transformers refuses it)."""
        if not self.load_best_model_at_end:
            return self
        if self.eval_strategy == "no":
            raise ValueError("load_best_model_at_end picks the evaluation with the lowest eval loss: set "
                             "eval_strategy to 'steps' (with eval_steps) or 'epoch'")
        given = self.model_fields_set
        if "save_strategy" in given and self.save_strategy != self.eval_strategy:
            raise ValueError(f"load_best_model_at_end saves a checkpoint at every evaluation: save_strategy "
                             f"{self.save_strategy!r} must be eval_strategy's {self.eval_strategy!r} (or left out)")
        if self.eval_strategy == "steps" and "save_steps" in given and self.save_steps != self.eval_steps:
            raise ValueError(f"load_best_model_at_end saves a checkpoint at every evaluation: save_steps "
                             f"{self.save_steps:g} must equal eval_steps {self.eval_steps} (or be left out)")
        self.save_strategy = self.eval_strategy
        if self.eval_strategy == "steps":
            self.save_steps = self.eval_steps
        return self


TorchDtype = Literal["float32", "bfloat16", "float16"]
TrainingDtype = Literal[TorchDtype, "bfloat16-if-native"]


class LoRAParams(Strict):
    """LoRA fine-tuning (peft) on a Hugging Face causal LM."""

    r: int = searchable(16, 32, 64, default=16, gt=0, validation_alias=AliasChoices("r", "lora_r"),
                        description="LoRA rank.")
    alpha: float = Field(
        32, gt=0, validation_alias=AliasChoices("alpha", "lora_alpha"), description="LoRA scaling alpha."
    )
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] | Literal["all-linear"] | None = Field(
        None, description="Module names to adapt, or 'all-linear' (every linear layer but the output head); "
        "default: peft's choice for the architecture."
    )
    modules_to_save: list[str] | None = Field(None, description="Modules trained in full and saved.")
    layers_to_transform: list[int] | None = Field(
        None, min_length=1, description="Adapt only these decoder layers (peft's layers_to_transform); a negative "
        "index counts from the last layer, so [-10, -9, ..., -1] adapts the top ten. Backward then stops at the "
        "lowest adapted layer: training is faster, and the lower layers keep what pretraining taught them.")
    train_data_config: str = Field(description="Name of the data config to train on.")
    eval_data_config: str | None = Field(None, description="Name of a data config for the eval loss.")
    eval_dataset_size: float | None = Field(
        None, gt=0, description="Hold out this fraction (0-1) or count (>=1) of the training rows for eval."
    )
    share_prompt_prefix: bool = Field(
        True, description="Run the leading tokens that every row of a batch shares (a chat template's system "
        "prompt and turn header) once per batch and reuse their keys and values for every row: the same loss "
        "and gradients with less compute. Applies to causal LMs when nothing in the model drops out (the adapter's "
        "dropout 0: lora_dropout, or LoHa's and LoKr's rank_dropout and module_dropout), without "
        "gradient_checkpointing, in one process; false turns it off.")
    torch_dtype: TrainingDtype = Field(
        "float32", description="Dtype of the frozen base weights while training (adapters stay float32). "
        "'bfloat16-if-native': bfloat16 on a CUDA GPU with bf16 or a CPU with AVX512-BF16/AMX, float32 elsewhere "
        "(CPUs without them emulate bfloat16, several times slower); the choice is in training_log.json. "
        "'float16', as in Olive: a float32 base trained under fp16 mixed precision (a float16 base trains "
        "unstably); CPUs without AMX-FP16 emulate float16, about 20x slower than float32.")
    class_weight: Literal["balanced"] | None = Field(
        None, description="text-classification: 'balanced' weights each class's loss by n_rows / (n_classes * "
                          "n_rows_of_class), so a rare class counts as much as a common one.")
    training_args: TrainingArgs = Field(default_factory=TrainingArgs, description="Trainer settings.")
    early_stopping_patience: int | None = keyed_when_set(
        None, gt=0, description="Stop training once the eval loss has not improved on its best (by more than "
        "early_stopping_threshold) for this many evaluations in a row (transformers' EarlyStoppingCallback). Needs "
        "eval data and training_args.eval_strategy 'steps' or 'epoch'. The adapter kept is the last step's, or the "
        "best evaluation's with training_args.load_best_model_at_end.")
    early_stopping_threshold: float = keyed_when_set(
        0.0, ge=0, description="How much an evaluation must lower the best eval loss so far, and more, to count "
        "as an improvement for early_stopping_patience.")
    num_workers: int = Field(
        1, ge=1, description="Train data-parallel in this many processes (PyTorch DDP through Ray Train's "
        "TorchTrainer: gloo on CPUs, nccl on GPUs), each with per_device_train_batch_size rows per step; on a Ray "
        "system they go to its nodes, elsewhere to a local Ray cluster started for the training.")
    double_quant: bool | None = Field(None, description="QLoRA only: accepted and ignored, with a warning.")
    quant_type: Literal["nf4", "fp4"] | None = Field(None, description="QLoRA only: accepted and ignored.")
    compute_dtype: TorchDtype | None = Field(None, description="QLoRA only: accepted and ignored.")

    @field_validator("target_modules", mode="before")
    @classmethod
    def _all_linear(cls, value):
        """["all-linear"] (a command line's list of one) is peft's "all-linear", not a module of that name."""
        return "all-linear" if value == ["all-linear"] else value

    @property
    def adapter_dropout(self) -> float:
        """The adapter's own dropout while training (LoHa and LoKr override it)."""
        return self.lora_dropout

    @model_validator(mode="after")
    def _evaluations_to_stop_on(self) -> "LoRAParams":
        ta, evals = self.training_args, self.eval_dataset_size or self.eval_data_config
        if self.early_stopping_threshold and not self.early_stopping_patience:
            raise ValueError("early_stopping_threshold applies with early_stopping_patience: set the patience (a "
                             "count of evaluations), or leave the threshold out")
        if self.early_stopping_patience and ta.eval_strategy == "no":
            raise ValueError("early_stopping_patience counts evaluations: set training_args.eval_strategy to "
                             "'steps' (with eval_steps) or 'epoch'")
        if (self.early_stopping_patience or ta.load_best_model_at_end) and not evals:
            key = "early_stopping_patience" if self.early_stopping_patience else "load_best_model_at_end"
            raise ValueError(f"{key} needs an eval loss: set eval_dataset_size (a fraction or count of the "
                             "training rows held out) or eval_data_config")
        return self

    @model_validator(mode="after")
    def _one_mixed_precision(self) -> "LoRAParams":
        if self.torch_dtype == "float16" and self.training_args.bf16:
            raise ValueError("torch_dtype 'float16' trains under fp16 mixed precision and training_args.bf16 under "
                             "bfloat16: choose one (torch_dtype 'bfloat16-if-native' for bfloat16)")
        return self


class QLoRAParams(LoRAParams):
    """LoRA on a base model quantized to 4 bits by bitsandbytes."""

    double_quant: bool = Field(False, description="Quantize the quantization constants too.")
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type.")
    compute_dtype: TorchDtype | None = Field(None, description="Dtype of the 4-bit matmul compute; default: "
                                             "torch_dtype's (as in Olive).")


class DoRAParams(LoRAParams):
    """DoRA: LoRA with the weight split into magnitude and direction (peft `use_dora`)."""

    adapter_type: ClassVar[str] = "dora"


class LoHaParams(LoRAParams):
    """LoHa: a low-rank Hadamard-product adapter (peft)."""

    adapter_type: ClassVar[str] = "loha"
    target_modules: list[str] | str = Field(
        "all-linear", description="Module names to adapt, or 'all-linear' (every linear layer but the output head)."
    )
    rank_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout over the adapter's rank dimension while "
                                "training (peft's; lora_dropout does not apply to this adapter, as in Olive).")
    module_dropout: float = Field(0.0, ge=0, lt=1, description="Probability of leaving an adapted module out of "
                                  "a training step (peft's).")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="Not used by this adapter (nor by Olive's): its "
                                "dropouts are rank_dropout and module_dropout; a warning says so when it is set.")

    use_effective_conv2d: bool = Field(True, description="peft's effective decomposition of a Conv2d with a kernel "
                                       "over 1 (a language model has none).")
    exclude_modules: list[str] | str | None = Field(None, description="Module names (or a regex) left out of "
                                                    "target_modules (peft's).")
    init_weights: bool = Field(True, description="Start the adapter as no change (peft's default); false draws "
                               "both factors at random.")
    layers_pattern: list[str] | str | None = Field(None, description="The name of the module list that "
                                                   "layers_to_transform indexes, where peft cannot find it (peft's).")
    rank_pattern: dict[str, int] = Field(default_factory=dict, description="Module name (or regex) -> its rank, "
                                         "where it differs from r (peft's).")
    alpha_pattern: dict[str, float] = Field(default_factory=dict, description="Module name (or regex) -> its "
                                            "alpha, where it differs from alpha (peft's).")
    peft_keys: ClassVar[tuple[str, ...]] = ("use_effective_conv2d", "exclude_modules", "init_weights",
                                            "layers_pattern", "rank_pattern", "alpha_pattern")  # to peft as named

    @property
    def adapter_dropout(self) -> float:
        return max(self.rank_dropout, self.module_dropout)

    @model_validator(mode="after")
    def _pattern_with_layers(self) -> "LoHaParams":
        if self.layers_pattern and not self.layers_to_transform:
            raise ValueError("layers_pattern names the module list that layers_to_transform indexes: give "
                             "layers_to_transform too, or leave layers_pattern out")
        return self


class LoKrParams(LoHaParams):
    """LoKr: a low-rank Kronecker-product adapter (peft)."""

    adapter_type: ClassVar[str] = "lokr"
    decompose_both: bool = Field(False, description="Decompose the left Kronecker factor to rank r too (peft's).")
    decompose_factor: int = Field(-1, description="The Kronecker decomposition factor; -1: as square as the "
                                  "shape allows (peft's).")
    rank_dropout_scale: bool = Field(False, description="Scale the rank dropout while training (peft's).")
    peft_keys: ClassVar[tuple[str, ...]] = (*LoHaParams.peft_keys, "decompose_both", "decompose_factor",
                                            "rank_dropout_scale")


class MergeAdapterWeightsParams(Strict):
    """Merge a LoRA adapter into its base model; a no-op on a model with no adapter."""


class ModelBuilderParams(Strict):
    """Convert a Hugging Face folder into an onnxruntime-genai folder with the genai model builder."""

    precision: Literal["int4", "int8", "fp16", "bf16", "fp32"] = searchable(
        "int4", "int8", default="fp32", description="Weight precision of the ONNX model."
    )
    block_size: Literal[16, 32, 64, 128, 256] = searchable(
        32, 64, 128, default=32,
        validation_alias=AliasChoices("block_size", "int4_block_size"),
        description="Quantization block size (int4/int8).",
    )
    accuracy_level: Literal[0, 1, 2, 3, 4] | None = Field(
        None,
        validation_alias=AliasChoices("accuracy_level", "int4_accuracy_level"),
        description="MatMulNBits compute accuracy level; default: the builder's (4 on CPU).",
    )
    is_symmetric: bool = Field(
        True,
        validation_alias=AliasChoices("is_symmetric", "int4_is_symmetric"),
        description="Symmetric quantization.",
    )
    algo_config: Literal["default", "rtn", "k_quant", "k_quant_last", "k_quant_mixed", "k_quant_linear",
                         "rtn_last"] | None = searchable(
        "default", "rtn", "k_quant_mixed", "k_quant_last", default=None,
        validation_alias=AliasChoices("algo_config", "int4_algo_config"),
        description="The builder's int4 weight algorithm: default/rtn (round to nearest), k_quant; the _last "
        "forms keep the last MatMul (the LM head) at int8, k_quant_mixed some layers too. Default: the builder's.",
    )
    execution_provider: Literal["cpu", "cuda", "dml"] | None = Field(
        None, description="Target EP; default: the engine's execution provider."
    )
    int4_op_types_to_quantize: list[str] | None = Field(
        None, description="Op types to quantize (builder op_types_to_quantize), e.g. [\"MatMul\", \"Gather\"]; "
        "default: the builder's (MatMul).")
    int4_nodes_to_exclude: list[str] | None = Field(None, description="Node names the builder keeps in float.")
    use_qdq: bool | None = Field(None, description="QuantizeLinear/DequantizeLinear ops instead of MatMulNBits.")
    use_8bits_moe: bool | None = Field(None, description="int8 for mixture-of-experts layers.")
    use_webgpu_fp32: bool | None = Field(None, description="float32 I/O for the WebGPU EP.")
    use_cuda_bf16: bool | None = Field(None, description="bfloat16 I/O for quantized models on the CUDA EP.")
    include_hidden_states: bool | None = Field(None, description="Also output the last hidden states.")
    exclude_embeds: bool | None = Field(None, description="Leave the embedding layer out of the ONNX model.")
    exclude_lm_head: bool | None = Field(None, description="Leave the LM head out of the ONNX model.")
    enable_cuda_graph: bool | None = Field(
        None, description="CUDA EP: let onnxruntime-genai capture CUDA graphs (written to genai_config.json).")
    metadata_only: bool = Field(
        False, description="On an ONNX model exported with its KV cache (OnnxConversion use_kv_cache, optimized or "
        "quantized since): copy it as it is and write only genai_config.json and the tokenizer files (the builder's "
        "config_only), so onnxruntime-genai runs it.")
    bounded_memory: bool = Field(
        True, description="int4/int8: feed the builder one layer at a time from the checkpoint and quantize each "
        "MatMul as it is made (same output; peak memory about one layer plus the int4 model instead of the whole "
        "model in float). Set false for the builder's own path.")
    search: dict[str, int | float | bool] | None = Field(
        None, description="Generation settings written to genai_config.json's search section, e.g. "
        "{\"max_length\": 2048}.")
    extra_options: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="More builder KEY=VALUE options, passed as written (Olive's "
        "extra_options); an Olive parameter name here (int4_accuracy_level...) sets that parameter.")


    @model_validator(mode="before")
    @classmethod
    def _lift_named_extra_options(cls, data):
        """Olive lets `extra_options` carry the pass's own parameters (int4_accuracy_level...): set them; as in
        Olive, a value there wins over the same parameter given beside it."""
        if not isinstance(data, dict) or not isinstance(data.get("extra_options"), dict):
            return data
        names = {alias: name for name, info in cls.model_fields.items()
                 for alias in (name, *getattr(info.validation_alias, "choices", ()))}
        extra, data = dict(data["extra_options"]), dict(data)
        for key in [k for k in extra if k in names and k != "extra_options"]:
            for alias in [a for a, name in names.items() if name == names[key]]:
                data.pop(alias, None)  # the parameter under any of its names
            data[key] = extra.pop(key)
        data["extra_options"] = extra
        return data


# Precisions the genai builder can produce for each execution provider.
BUILDER_PRECISIONS = {
    "cpu": ("fp32", "int8", "int4"),
    "cuda": ("fp32", "fp16", "bf16", "int8", "int4"),
    "dml": ("fp16", "int4"),
}


CATALOG: dict[str, PassSpec] = {
    spec.name: spec
    for spec in (
        PassSpec("LoRA", "LoRA fine-tuning with peft", LoRAParams,
                 "modelpress.passes.lora:run_lora", (HF,), HF_ADAPTER, True),
        PassSpec("QLoRA", "LoRA on a 4-bit (bitsandbytes) base", QLoRAParams,
                 "modelpress.passes.lora:run_qlora", (HF,), HF_ADAPTER, True,
                 ("bitsandbytes", "qlora")),
        PassSpec("DoRA", "DoRA fine-tuning with peft (weight-decomposed LoRA)", DoRAParams,
                 "modelpress.passes.lora:run_lora", (HF,), HF_ADAPTER, True),
        PassSpec("LoHa", "LoHa fine-tuning with peft (Hadamard-product adapter)", LoHaParams,
                 "modelpress.passes.lora:run_lora", (HF,), HF_ADAPTER, True),
        PassSpec("LoKr", "LoKr fine-tuning with peft (Kronecker-product adapter)", LoKrParams,
                 "modelpress.passes.lora:run_lora", (HF,), HF_ADAPTER, True),
        PassSpec("MergeAdapterWeights", "merge a LoRA adapter into its base", MergeAdapterWeightsParams,
                 "modelpress.passes.merge:run_merge", (HF, HF_ADAPTER), HF, False),
        PassSpec("ModelBuilder", "onnxruntime-genai model builder (ONNX, int4/int8/fp16/fp32)",
                 ModelBuilderParams, "modelpress.passes.model_builder:run_model_builder",
                 (HF, HF_QUANTIZED, HF_ADAPTER), ONNX_GENAI, False, reads_execution_provider=True),
    )
}


def _register(specs) -> None:
    for spec in specs:
        CATALOG[spec.name] = spec


# The ONNX, torch-quantization and GGUF passes declare their params in their own modules.
_register(ONNX_SPECS)
_register(QUANT_SPECS)
_register(GGUF_SPECS)


def data_refs(params: Strict) -> dict[str, str]:
    """{param: data config name} for every param of a pass that names a data config."""
    return {k: getattr(params, k) for k in DATA_PARAMS if getattr(params, k, None)}
