"""Olive's keys and names as data: what each means here, one table per section.

`normalize` walks these tables; the one function here only looks a name up in its table. A key
listed as inert is accepted and reported in a warning that says why it has no effect here;
no key is ever dropped silently.
"""

from __future__ import annotations

# Engine keys of Olive 0.13 (top level or under `engine`) that change nothing in modelpress.
INERT_ENGINE_KEYS: dict[str, str] = {
    "no_artifacts": "modelpress always writes the output model with its metrics.json, run history and report "
                    "(a few kB); Olive's footprint files do not exist here",
    "plot_pareto_frontier": "report.html always draws the accuracy/latency chart with the Pareto front",
    "ort_log_severity_level": "onnxruntime logs only warnings and errors here; use --verbose for more",
    "ort_py_log_severity_level": "onnxruntime logs only warnings and errors here; use --verbose for more",
    "log_to_file": "modelpress logs to the terminal; redirect it to a file (progress bars then become plain lines)",
    "packaging_config": "the output folder is the package: the model, its card, metrics.json and report.html",
    "enable_shared_cache": "there is no shared (cloud) cache; cache_dir is a local folder",
    "workflow_id": "Olive names a run's cache folder with it; modelpress keys every cache entry by its content, "
                   "so runs share one cache_dir safely",
    "output_name": "the output model is output_dir/model, beside metrics.json and report.html",
}

# search_strategy keys of Olive 0.13 that change nothing here, with why.
INERT_SEARCH_KEYS: dict[str, str] = {
    "output_model_num": "the search keeps the one best model in output_dir/model; metrics.json holds every "
                        "candidate with its pass settings and the Pareto front",
}

# Keys every ONNX pass of Olive takes about how weights are stored; modelpress always keeps them in
# model.onnx.data beside model.onnx (a model converted with save_as_external_data false stays one file).
EXTERNAL_DATA_KEYS: dict[str, str] = dict.fromkeys(
    ("save_as_external_data", "all_tensors_to_one_file", "external_data_name", "size_threshold", "convert_attribute"),
    "modelpress keeps ONNX weights in model.onnx.data beside model.onnx (OnnxConversion's save_as_external_data "
    "false keeps one file through the passes after it)")

# Keys of a pass that change nothing here, by pass type (lower case), with why.
INERT_PASS_KEYS: dict[str, dict[str, str]] = {
    "onnxconversion": {
        "use_dynamo_exporter": "modelpress always exports with torch's dynamo exporter (the TorchScript exporter "
                               "is deprecated in torch 2.9+)",
        "save_metadata_for_token_generation": "modelpress writes the tokenizer and generation config beside every "
                                              "ONNX model",
        "torch_dtype": "the export runs in float32 on CPU; convert afterwards with OnnxFloatToFloat16",
        "device": "the export runs on the CPU",
        "dynamic": "batch and sequence axes are always dynamic",
        "optimize": "torch's dynamo exporter always folds constants and removes redundancies (its optimize=True); "
                    "OnnxPeepholeOptimizer does more",
        "past_key_value_name": "the KV cache inputs are named past_key_values.{i}.key/value (use_kv_cache)",
        "parallel_jobs": "the export runs in one process",
    },
    "orttransformersoptimization": {
        "use_gpu": "fusions are the same for CPU and CUDA; the execution provider comes from the system",
    },
    "onnxstaticquantization": {
        "calibration_providers": "calibration runs on the CPU execution provider",
    },
    "qlora": {
        "save_quant_config": "the adapter is saved without bitsandbytes' quantization config (what `olive finetune` "
                             "asks with false); MergeAdapterWeights merges it into the full-precision base",
    },
}
# Earlier Olive training passes' loading keys (olive-recipes' Llama-3.2 QLoRA recipe writes device_map).
_TRAINING_LOAD_KEYS = {
    "device_map": "the model is trained on one device, the pass's execution provider's (a CUDA GPU or the CPU); "
                  "it is not split across GPUs",
    "allow_tf32": "training runs in the pass's torch_dtype; TF32 matrix products are torch's default choice",
    "ephemeral_gpu_offload": "nothing is offloaded: the model is trained on one device",
}
for _training in ("lora", "qlora", "dora", "loha", "lokr"):
    INERT_PASS_KEYS[_training] = {**INERT_PASS_KEYS.get(_training, {}), **_TRAINING_LOAD_KEYS}

# transformers TrainingArguments that an Olive training pass passes through and that change nothing here, with why
# (`olive finetune` writes any it is given); `extra_args` (Olive's nested extra arguments) is read as training_args.
INERT_TRAINING_KEYS: dict[str, str] = {
    "output_dir": "checkpoints go to the pass's folder in cache_dir, where a rerun resumes from them",
    "overwrite_output_dir": "checkpoints go to the pass's folder in cache_dir, where a rerun resumes from them",
    "save_total_limit": "the pass keeps its latest checkpoint alone (and the best evaluation's, with early stopping "
                        "or load_best_model_at_end)",
    "report_to": "the training log goes to modelpress's log and the pass's training_log.json",
    "logging_dir": "the training log goes to modelpress's log and the pass's training_log.json",
    "disable_tqdm": "modelpress draws its own progress, on a terminal only",
    "run_name": "the pass is named by its key in the config",
    "remove_unused_columns": "modelpress hands the Trainer tokenized rows alone",
    "resume_from_checkpoint": "a rerun resumes from the pass's own latest checkpoint in cache_dir",
}

# Olive data keys (by section) that change nothing here, with why
INERT_DATA_KEYS: dict[str, dict[str, str]] = {
    "load_dataset_config": {
        "trust_remote_code": "modelpress reads a dataset's data files, never a dataset script",
    },
    "pre_process_data_config": {
        "model_name": "rows are tokenized by the tokenizer of the model each pass or evaluation reads",
        "padding_side": "training pads on the right and batched generation on the left, as each needs",
        "processing_batch_size": "rows are tokenized in one pass, not in batches",
    },
}

# Olive's names of a pass key modelpress calls otherwise, renamed before search values are read (so a list of them is
# searched): pass type (lower case) -> Olive's key -> modelpress's.
RENAMED_PASS_KEYS: dict[str, dict[str, str]] = {
    "onnxdynamicquantization": {"precision": "weight_type"},
    "onnxstaticquantization": {"precision": "weight_type"},
}


# Values of a pass key that cannot be honoured here, read as another value with a warning:
# pass type (lower case) -> key -> (values, what they are read as, why).
VALUE_FALLBACKS: dict[str, dict[str, tuple[tuple, object, str]]] = {
    "onnxconversion": {
        "target_opset": ((14, 15, 16, 17), 18, "torch's dynamo exporter writes opset 18, and onnx's version converter "
                         "fails to take these LLM graphs lower (measured on the tiny Phi-3: ReduceMean's axes); "
                         "onnxruntime 1.14 and later run opset 18"),
    },
}

# Keys of an input model that change nothing here.
INERT_MODEL_KEYS: dict[str, str] = {
    "io_config": "ONNX inputs and outputs are derived from the model's config.json",
}

# Passes for hardware modelpress does not target: pass type -> the hardware it is for.
VENDOR_PASSES: dict[str, str] = {
    "QuarkQuantizationVitisAI": "AMD Ryzen AI NPUs (Quark for VitisAI)",
    "QuarkQuantization": "AMD GPUs and NPUs (AMD Quark)",
    "VitisGenerateModelLLM": "AMD Ryzen AI NPUs (VitisAI)",
    "VitisGenerateModelSD": "AMD Ryzen AI NPUs (VitisAI)",
    "VitisAIAddMetaData": "AMD Ryzen AI NPUs (VitisAI)",
    "VitisAIQuantization": "AMD Ryzen AI NPUs (VitisAI)",
    "RyzenGenerateModelLLM": "AMD Ryzen AI NPUs",
    "QairtPreparation": "Qualcomm NPUs (QAIRT)",
    "QairtGenAIBuilder": "Qualcomm NPUs (QAIRT)",
    "QairtEncapsulation": "Qualcomm NPUs (QAIRT)",
    "QNNPreprocess": "Qualcomm NPUs (QNN)",
    "QNNConversion": "Qualcomm NPUs (QNN)",
    "QNNModelLibGenerator": "Qualcomm NPUs (QNN)",
    "QNNContextBinaryGenerator": "Qualcomm NPUs (QNN)",
    "StaticLLM": "NPUs that need static shapes (QNN, VitisAI)",
    "MatMulNBitsToQDQ": "NPUs that run QDQ graphs (QNN)",
    "CaptureSplitInfo": "NPUs that run a model split in parts (QNN)",
    "SplitModel": "NPUs that run a model split in parts (QNN)",
    "ComposeOnnxModels": "NPUs that run a model split in parts (QNN)",
    "EPContextBinaryGenerator": "NPU execution providers that load precompiled EPContext binaries",
    "OpenVINOConversion": "Intel CPUs, GPUs and NPUs (OpenVINO)",
    "OpenVINOQuantization": "Intel CPUs, GPUs and NPUs (OpenVINO)",
    "OpenVINOOptimumConversion": "Intel CPUs, GPUs and NPUs (OpenVINO)",
    "OpenVINOIoUpdate": "Intel CPUs, GPUs and NPUs (OpenVINO)",
    "OpenVINOEncapsulation": "Intel CPUs, GPUs and NPUs (OpenVINO)",
    "IncStaticQuantization": "Intel CPUs (Intel Neural Compressor)",
    "IncDynamicQuantization": "Intel CPUs (Intel Neural Compressor)",
    "IncQuantization": "Intel CPUs (Intel Neural Compressor)",
    "NVModelOptQuantization": "NVIDIA TensorRT-RTX (TensorRT Model Optimizer)",
    "TensorRTConversion": "NVIDIA TensorRT",
    "AitkPython": "the AI Toolkit for VS Code's own scripts",
    "MobiusBuilder": "the Mobius model builder's runtimes (not onnxruntime-genai)",
}

# Execution providers modelpress does not target -> the hardware they are for.
VENDOR_EPS: dict[str, str] = {
    "QNNExecutionProvider": "Qualcomm NPUs (QNN)",
    "VitisAIExecutionProvider": "AMD Ryzen AI NPUs (VitisAI)",
    "OpenVINOExecutionProvider": "Intel CPUs, GPUs and NPUs (OpenVINO)",
    "NvTensorRTRTXExecutionProvider": "NVIDIA TensorRT-RTX",
    "TensorrtExecutionProvider": "NVIDIA TensorRT",
    "MIGraphXExecutionProvider": "AMD GPUs (MIGraphX)",
    "ROCMExecutionProvider": "AMD GPUs (ROCm)",
    "WebGpuExecutionProvider": "WebGPU in browsers and native apps",
    "JsExecutionProvider": "browsers (onnxruntime-web)",
    "CoreMLExecutionProvider": "Apple devices (Core ML)",
    "NnapiExecutionProvider": "Android NPUs (NNAPI)",
}

TARGETS = "modelpress targets CPU, CUDA and DirectML"

# Olive passes that have a modelpress counterpart under another name.
OLIVE_ONLY_PASSES: dict[str, str] = {
    "OnnxQuantization": "OnnxDynamicQuantization or OnnxStaticQuantization",
    "OnnxMatMul4Quantizer": "OnnxBlockWiseRtnQuantization (int4 MatMulNBits)",
    "GptqQuantizer": "Gptq (torch-level GPTQ), then ModelBuilder",
    "AutoAWQQuantizer": "Gptq or Rtn, then ModelBuilder; or OnnxBlockWiseRtnQuantization",
    "GptqModel": "Gptq (torch-level GPTQ), then ModelBuilder",
}

# Defaults of the training passes that Olive 0.13 sets otherwise (olive/passes/pytorch/lora.py, its
# HFTrainingArguments, transformers' TrainingArguments): an Olive config that leaves them out trains otherwise
# here, and is told so. modelpress keeps its own for a CPU: one row a step and one epoch unless asked, no
# recomputation, float32 (bfloat16-if-native on request: bfloat16 where the CPU computes it natively).
OLIVE_TRAINING_DEFAULTS: dict[str, object] = {"r": 64, "alpha": 16, "torch_dtype": "bfloat16"}
OLIVE_TRAINING_ARGS_DEFAULTS: dict[str, object] = {
    "per_device_train_batch_size": 8, "num_train_epochs": 3, "seed": 42, "lr_scheduler_type": "constant",
    "warmup_ratio": 0.03, "gradient_checkpointing": True}

# Sub-metric names Olive (torchmetrics) spells differently: metric type -> {Olive's name: modelpress's}.
SUB_METRIC_ALIASES: dict[str, dict[str, str]] = {
    "accuracy": {"accuracy": "accuracy_score", "f1": "f1_score", "precision_score": "precision",
                 "recall_score": "recall"},
    "latency": {"mean": "avg"},
    "throughput": {"mean": "avg"},
}

# Olive's accuracy sub-types modelpress does not compute under accuracy: what to use instead.
_BY_CUSTOM = "a custom metric (type custom, with user_config.user_script and evaluate_func) can compute it"
OLIVE_ONLY_SUB_METRICS: dict[str, dict[str, str]] = {
    "accuracy": {"perplexity": "modelpress measures it as its own metric: {\"type\": \"perplexity\", \"sub_types\": "
                               "[{\"name\": \"perplexity\"}]}",
                 "exact_match": "accuracy_score is already the share of answers that match the label exactly",
                 **dict.fromkeys(("auroc", "wer", "rtfx", "relaxed_accuracy", "word_sort_ratio"),
                                 f"modelpress does not compute it; {_BY_CUSTOM}")},
}

# lm-evaluation-harness metrics and whether a higher value is better, so that goals on them are
# checked before anything runs; a filtered metric ("exact_match_strict_match") goes by its prefix.
LM_EVAL_HIGHER_IS_BETTER: dict[str, bool] = {
    "acc": True, "acc_norm": True, "acc_mutual_info": True, "exact_match": True, "f1": True, "mcc": True,
    "bleu": True, "chrf": True, "ter": False, "perplexity": False, "word_perplexity": False,
    "byte_perplexity": False, "bits_per_byte": False, "brier_score": False,
}


def lm_eval_higher_is_better(name: str) -> bool | None:
    """Whether a higher value of this lm-eval metric is better; None for a metric not in the table."""
    known = [m for m in LM_EVAL_HIGHER_IS_BETTER if name == m or name.startswith(m + "_")]
    return LM_EVAL_HIGHER_IS_BETTER[max(known, key=len)] if known else None
