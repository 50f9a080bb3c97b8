"""Checks across config sections, run once every section has been read (`check_workflow`).

Each section is validated on its own by `normalize`; what is checked here needs several at once:
that each step gets the kind of model it takes, that names point at defined data configs and
passes, that a search's choices split the data alike, and that outputs stay out of the input.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from modelpress.config.collector import Collector, did_you_mean
from modelpress.config.evaluator_schema import EvaluatorConfig
from modelpress.config.schema import (
    DataConfig,
    EngineConfig,
    EvaluationConfig,
    InputModelConfig,
    PassConfig,
    SearchConfig,
    SystemConfig,
    eval_data_name,
    training_pass,
)
from modelpress.config.templates import role_template, template_fields
from modelpress.models import MODEL_CARD
from modelpress.passes.catalog import BUILDER_PRECISIONS, CATALOG, HF, HF_ADAPTER, HF_QUANTIZED, ONNX, data_refs
from modelpress.redact import TOKEN_IN_CONFIG, is_secret_key


def check_workflow(model: InputModelConfig, data: dict[str, DataConfig], passes: list[PassConfig],
                   engine: EngineConfig, evaluation: EvaluationConfig, search: SearchConfig,
                   evaluator: EvaluatorConfig | None, c: Collector) -> None:
    """Every check that needs more than one section; each problem goes to `c` with its key path."""
    final_kind = _check_steps(model, data, passes, engine, c)
    _check_lm_eval_kind(evaluator, final_kind, passes, c)
    _check_evaluation(data, passes, evaluation, search, evaluator, c)
    _check_eval_task(model, data, passes, evaluation, evaluator, c)
    _check_search(passes, search, evaluator, data, c)
    _check_output_dirs(model, engine, c)


def _check_steps(model, data, passes, engine, c: Collector) -> str:
    """Each step's choices against the model the step before gives; returns the kind of the last step's model."""
    for name, config in data.items():
        _check_template(name, config, c)
    kind, previous = HF, "input_model"
    exported_by_torch = None  # the OnnxConversion the current model comes from, if any
    for p in passes:
        choices = p.choices()  # the step as written, its alternatives and every searched value
        for option in choices:
            _check_choice(option, model, data, engine, kind, previous, c)
        kinds = {CATALOG[option.type].output_kind(kind) for option in choices}
        if len(kinds) > 1:
            c.add(f"passes.{p.name}.alternatives", f"the alternatives give different kinds of model "
                  f"({', '.join(sorted(kinds))}), so the next step cannot take every one",
                  "Make every alternative of one step give the same kind of model, or split them into steps.")
        if p.trains:
            _check_same_split(p, choices, c)
        if p.type == "ModelBuilder" and kind == HF_ADAPTER and not any(q.type == "ExtractAdapters" for q in passes):
            c.warn(f"passes.{p.name}: ModelBuilder gets an unmerged adapter from '{previous}', so the LoRA is built "
                   "as extra MatMuls beside each weight (what ExtractAdapters turns into a swappable adapter). "
                   "For one merged model, put MergeAdapterWeights before ModelBuilder.")
        if p.type == "ExtractAdapters" and exported_by_torch:
            c.add(f"passes.{p.name}", f"ExtractAdapters reads the LoRA MatMuls the genai builder writes, and "
                  f"'{exported_by_torch}' exported the model with torch, whose adapter weights it does not find",
                  "Build the genai model with ModelBuilder from the adapter (LoRA -> ModelBuilder -> "
                  "ExtractAdapters), or merge the adapter (OnnxConversion merge_adapter_weights: true) and drop "
                  "ExtractAdapters.")
        if p.type == "OnnxConversion":
            exported_by_torch = p.name
        elif p.type == "ModelBuilder" and not getattr(p.params, "metadata_only", False):
            exported_by_torch = None
        kind, previous = CATALOG[p.type].output_kind(kind), p.name
    return kind


def _check_lm_eval_kind(evaluator: EvaluatorConfig | None, kind: str, passes: list[PassConfig],
                        c: Collector) -> None:
    """lm-eval runs Hugging Face and onnxruntime-genai models, and the evaluator measures the last step's."""
    if evaluator is None or kind != ONNX or not passes:
        return
    for i, m in enumerate(evaluator.metrics):
        if m.type == "lm_eval":
            c.add(f"evaluator.metrics[{i}]", f"the lm_eval metric {m.name!r} runs Hugging Face and onnxruntime-genai "
                  f"models, and the last step '{passes[-1].name}' gives a plain ONNX model",
                  "Build the model with ModelBuilder (onnxruntime-genai) instead of OnnxConversion, or measure the "
                  "model before OnnxConversion in another run.")


def _check_evaluation(data, passes, evaluation: EvaluationConfig, search: SearchConfig,
                      evaluator: EvaluatorConfig | None, c: Collector) -> None:
    _check_data_ref(evaluation.data_config, data, "evaluation.data_config", c)
    for i, name in enumerate(evaluation.extra_data_configs):
        _check_data_ref(name, data, f"evaluation.extra_data_configs[{i}]", c)
    for i, name in enumerate(evaluation.evaluate_passes):
        _check_pass_ref(name, passes, f"evaluation.evaluate_passes[{i}]", "", c)
    if evaluation.label_column:
        _check_label_column(data, passes, evaluation, c)
    _check_calibration_data(data, passes, evaluation, c)
    if (search.enabled or evaluator is not None) and (evaluation.evaluate_passes or evaluation.extra_data_configs):
        c.add("evaluation", "evaluate_passes and extra_data_configs are for a run without a search or evaluator",
              "A search measures each candidate with the evaluator's metrics: add a metric with that data_config "
              "there, or drop these keys.")


MODEL_RUNNING_METRICS = ("accuracy", "perplexity", "latency", "throughput", "lm_eval")  # size and custom run none


def _check_eval_task(model: InputModelConfig, data, passes, evaluation: EvaluationConfig,
                     evaluator: EvaluatorConfig | None, c: Collector) -> None:
    """The data the evaluation reads suits the model's task, as a training pass's data must (a generative model's
    prompt rendered with label_col would end with its answer; a classifier's rows without one measure no accuracy).
    A config a training pass reads is checked there already. With an evaluator, the configs its model-running
    metrics read (a metric's own data_config, else the evaluation's)."""
    default = eval_data_name(evaluation, passes, data)
    if evaluator is not None:
        runs = [m for m in evaluator.metrics if m.type in MODEL_RUNNING_METRICS]
        names = [m.data_config or default for m in runs if m.type != "lm_eval"]
        for i, m in enumerate(evaluator.metrics):  # lm_eval reads its own tasks' data
            if m.type in MODEL_RUNNING_METRICS and m.type != "lm_eval" and not (m.data_config or default):
                c.add(f"evaluator.metrics[{i}]", f"the {m.type} metric {m.name!r} runs the model on data rows, and "
                      "the workflow has none to give it (no data_configs)",
                      "Add a data config with the rows to measure on (data_configs), or leave this metric out.")
        measured = any(m.type == "lm_eval" or m.data_config or default for m in runs)
    else:
        names = [default, *evaluation.extra_data_configs] if evaluation.enabled else []
        measured = evaluation.enabled and default is not None
    fixed = next((p for p in passes if p.type == "DynamicToFixedShape"), None)
    if fixed is not None and measured:
        c.add(f"passes.{fixed.name}", "DynamicToFixedShape gives a model of fixed input shapes, and modelpress "
              "measures models on prompts of varying length in batches, which such a model refuses",
              "Leave the evaluator out and set evaluation.enabled to false for this run (measure the model before "
              "this step in another run), or leave the shapes dynamic.")
    trained = {p.params.train_data_config for p in passes if p.trains}
    for name in dict.fromkeys(names):
        config = data.get(name)
        if config is None or name in trained:
            continue
        if model.task == "text-generation" and config.label_col:
            _check_task_data(model.task, config, "evaluation", c)
        elif model.task == "text-classification" and not config.label_col:
            c.warn(f"data_configs[{name}]: the evaluation of this text-classification model reads it, and it names "
                   "no label column (label_col), so no accuracy is measured.")


def _check_calibration_data(data, passes, evaluation: EvaluationConfig, c: Collector) -> None:
    """A quantizer calibrated on the rows the evaluation then measures is flattered by it. Calibrating on the
    training data config is fine where the training pass holds out an eval split of it (that split is left out
    of calibration: `DataPlan.calibration_examples`)."""
    measured = {eval_data_name(evaluation, passes, data), *evaluation.extra_data_configs}
    trained = training_pass(passes)
    split_off = trained.splits_off if trained is not None and not evaluation.data_config else None
    for p in passes:
        if p.trains:
            continue
        names = {getattr(option.params, "data_config", None) for option in p.choices()} - {None, split_off}
        for name in sorted(names & measured):
            c.warn(f"passes.{p.name}.data_config: {p.type} calibrates on {name!r}, which the evaluation also "
                   "measures, so the accuracy reported flatters the quantized model. Give calibration rows of its "
                   "own (another data config, or the training data with an eval split held out).")


def _check_label_column(data, passes, evaluation: EvaluationConfig, c: Collector) -> None:
    """Accuracy compares each answer with what the eval data's template (or chat turn, or label_col) makes the
    model generate: a label_column naming another column would be reported as measured and was not."""
    name = eval_data_name(evaluation, passes, data)
    config = data.get(name)
    if config is None:
        return
    generated = config.answer_column
    answer_columns = {generated}
    if config.chat and (config.chat_columns or {}).get("assistant"):  # the column(s) the assistant turn is filled from
        answer_columns |= set(template_fields(role_template(config.chat_columns["assistant"])))
    if evaluation.label_column not in answer_columns:
        what = f"column {generated!r}" if generated else "no column"
        c.add("evaluation.label_column", f"{evaluation.label_column!r} is not what the model answers with: data "
              f"config {name!r} makes it generate {what} (its template's last field, label_col or the assistant "
              "turn), which accuracy compares the answers with",
              "Remove label_column, or make that column the template's last field (for chat data, the "
              "assistant turn's column).")


def _check_choice(p: PassConfig, model, data, engine, kind: str, previous: str, c: Collector) -> None:
    """The checks every concrete config of a step gets, so a search candidate cannot fail on a config mistake."""
    spec = CATALOG[p.type]
    if spec.trains():
        _check_task_data(model.task, data.get(p.params.train_data_config), f"passes.{p.name}", c)
        _check_training_args(p, model, data.get(p.params.train_data_config), c)
        if getattr(p.params, "class_weight", None) and model.task != "text-classification":
            c.add(f"passes.{p.name}.class_weight", "class_weight weighs the classes of a text-classification "
                  "model, and this model generates text", "Remove class_weight, or set input_model.task to "
                  "'text-classification'.")
    if p.type == "GgufExport":
        _check_gguf_export(p, model, kind, previous, c)
    if p.type == "ModelBuilder" and model.task == "text-classification":
        c.add(f"passes.{p.name}.type", "ModelBuilder builds generative (text-generation) models only",
              "For a classifier use OnnxConversion, then an ONNX quantization pass.")
    _check_kind(p, spec, kind, previous, c)
    for key, name in data_refs(p.params).items():
        _check_data_ref(name, data, f"passes.{p.name}.{key}", c)
    if p.type == "ModelBuilder":
        ep = p.params.execution_provider or engine.execution_provider
        if p.params.precision not in BUILDER_PRECISIONS[ep]:
            c.add(f"passes.{p.name}.precision", f"{p.params.precision} cannot run on the {ep} execution provider",
                  f"Allowed on {ep}: {', '.join(BUILDER_PRECISIONS[ep])}.")
        if kind == HF_QUANTIZED and p.params.precision not in ("int4", "int8"):
            c.add(f"passes.{p.name}.precision", f"'{previous}' gives a quantized checkpoint, which the builder "
                  f"writes as int4 or int8 MatMulNBits, not {p.params.precision}",
                  "Set precision to int4 (or int8, to match the checkpoint's bits).")
        _check_builder_options(p, model, c)


def _check_gguf_export(p: PassConfig, model: InputModelConfig, kind: str, previous: str, c: Collector) -> None:
    """GgufExport writes a generative model of an architecture it knows: a GGUF input's (read from the file's
    header where the file is here, not from the Hub), or a Hugging Face model's, with a RoPE scaling and tokenizer
    it writes (from a local folder's config.json and tokenizer.json; a Hub model's when the pass runs). A K-quant
    outtype needs llama-cpp-python, and float weights."""
    from modelpress.passes.gguf_hf import unwritten_folder
    from modelpress.passes.gguf_spec import LLAMA_CPP_TYPES, unwritten_architecture

    if p.params.outtype in LLAMA_CPP_TYPES:
        if kind == HF_QUANTIZED:
            c.add(f"passes.{p.name}.outtype", f"{p.params.outtype} is made by llama.cpp's quantizer from float "
                  f"weights, and '{previous}' gives a quantized checkpoint, whose codes GgufExport keeps",
                  "Use outtype q8_0 (the codes stay Q4_1/Q4_0/Q8_0 blocks), or export the float model before Gptq/Rtn.")
        elif importlib.util.find_spec("llama_cpp") is None:
            c.add(f"passes.{p.name}.outtype", f"{p.params.outtype} is made by llama.cpp's own quantizer, and "
                  "llama-cpp-python is not installed", "pip install 'modelpress[llama-cpp]' (PyPI has llama-cpp-python's "
                  "source, which compiles llama.cpp; make test installs it), or use q4_1, q5_1 or q8_0.")
    if model.task == "text-classification":
        c.add(f"passes.{p.name}.type", "GgufExport writes generative models (llama.cpp runs those), and this "
              "model is a text-classification one", "Remove GgufExport, or set input_model.task to text-generation.")
    if model.hub_id or not c.sources_here:  # a Hub model (validate stays offline), or a Ray worker: the pass checks
        return
    if not model.gguf_file:
        folder = Path(model.model_path)
        first = previous == "input_model"  # GgufExport reads the input folder itself
        found = unwritten_folder(folder, first) if (folder / "config.json").is_file() else None  # else the input's
        if found:                                                                              # own checks say it
            c.add(f"passes.{p.name}.type", *found)
        return
    path = Path(model.model_path) / model.gguf_file
    if path.is_file():
        from modelpress.gguf import file_architecture

        arch = file_architecture(path)
        why = unwritten_architecture(arch) if arch else None
        if why:
            c.add(f"passes.{p.name}.type", f"{path.name}: {why}", "Remove GgufExport from this workflow.")


def _check_training_args(p: PassConfig, model: InputModelConfig, train: DataConfig | None, c: Collector) -> None:
    """Training settings that the config asks for and that do nothing here (as in transformers and Olive)."""
    args, where = p.params.training_args, f"passes.{p.name}.training_args"
    notes = []
    if args.lr_scheduler_type == "constant" and (args.warmup_steps or args.warmup_ratio):
        notes.append(f"{where}: warmup has no effect under lr_scheduler_type 'constant' (transformers' constant "
                     "schedule reads none, in Olive too); use 'constant_with_warmup' to warm up")
    padded = train is not None and (train.strategy != "line-by-line" or train.pad_to_max_len)
    if args.group_by_length and model.task != "text-classification" and padded:
        notes.append(f"{where}.group_by_length: every training sequence of data config {train.name!r} is "
                     f"max_seq_len tokens long (strategy {train.strategy}"
                     + (", pad_to_max_len" if train.strategy == "line-by-line" else "")
                     + "), so there is nothing to group; with line-by-line and pad_to_max_len false it saves padding")
    for note in notes:
        if note not in c.warnings:  # each choice of a searched step is checked
            c.warn(note)


def _check_builder_options(p: PassConfig, model: InputModelConfig, c: Collector) -> None:
    """The genai builder's own options that carry a token or run the model's code: as safe as the rest."""
    extra = p.params.extra_options or {}
    for key in [k for k, v in extra.items() if is_secret_key(k) and str(v).lower() not in ("false", "true", "none")]:
        c.add(f"passes.{p.name}.extra_options.{key}", *TOKEN_IN_CONFIG)
    if str(extra.get("hf_remote", False)).lower() not in ("false", "0", "none") and not model.trust_remote_code:
        c.add(f"passes.{p.name}.extra_options.hf_remote", "makes the builder run the model's own Python code, and "
              "input_model.trust_remote_code is off", "Set input_model.load_kwargs.trust_remote_code: true if you "
              "trust that code, or remove hf_remote.")


SPLIT_PARAMS = ("train_data_config", "eval_data_config", "eval_dataset_size")  # and training_args.data_seed


def _check_same_split(p: PassConfig, choices: list[PassConfig], c: Collector) -> None:
    """Every choice of a training step must hold out the same rows: the candidates are all scored on them."""
    def split(option: PassConfig) -> tuple:
        return (*(getattr(option.params, k, None) for k in SPLIT_PARAMS), option.params.training_args.split_seed)

    if len({split(option) for option in choices}) > 1:
        c.add(f"passes.{p.name}", "the search choices of this training step split the data differently "
              f"({', '.join(SPLIT_PARAMS)}, training_args.data_seed), so candidates would be scored on rows "
              "that others trained on", "Give every alternative and searched value the same data settings.")


KIND_HINTS = {
    HF: "Put it after a pass that gives a Hugging Face folder (e.g. right after MergeAdapterWeights).",
    ONNX: "Add an OnnxConversion pass before it.",
}


def _check_kind(p: PassConfig, spec, kind: str, previous: str, c: Collector) -> None:
    if p.type == "ModelBuilder" and p.params.metadata_only:  # Olive's: the genai config of an exported model
        if kind != ONNX:
            c.add(f"passes.{p.name}.metadata_only", f"writes genai_config.json for an ONNX model, and '{previous}' "
                  f"gives {kind}", "Export the model first (OnnxConversion with use_kv_cache: true), or remove "
                  "metadata_only to build the whole model from this one.")
        return
    if kind in spec.accepts:
        return
    if kind == HF_ADAPTER and HF in spec.accepts:
        c.add(f"passes.{p.name}", f"{p.type} needs a full model but gets an adapter from '{previous}'",
              "Add a MergeAdapterWeights pass before it.")
        return
    c.add(f"passes.{p.name}", f"{p.type} takes {' or '.join(spec.accepts)} models but gets {kind} from '{previous}'",
          KIND_HINTS.get(spec.accepts[0], "Reorder the passes."))


def _check_task_data(task: str, config: DataConfig | None, path: str, c: Collector) -> None:
    if config is None:
        return
    where = f"data_configs[{config.name}].label_col"
    if task == "text-classification" and not config.label_col:
        c.add(where, "a text-classification model trains on labels, and this data config names no label column",
              "Set label_col to the column that holds the class (e.g. 'tone'); text_template gives the input text.")
    if task == "text-generation" and config.label_col:
        c.add(where, "label_col is for text-classification models; this model generates text",
              "Remove label_col (the template's last field is what the model learns to generate), "
              "or set input_model.task to 'text-classification'.")
    if task == "text-classification" and config.label_col:  # the input is the template, else text_cols
        key, read = ("text_template", template_fields(config.text_template)) if config.text_template else \
            ("text_cols", config.text_cols or [])
        if config.label_col in read:
            c.add(f"data_configs[{config.name}].{key}", f"the classifier's input holds label_col "
                  f"{config.label_col!r}: it would read its answer in every row",
                  f"Leave {config.label_col!r} out of {key} (the label is the class the classifier learns).")


CHAT_ROLES = ("system", "user", "assistant")


def _check_chat(name: str, config: DataConfig, c: Collector) -> None:
    roles = list(config.chat_columns or {})
    for role in roles:
        if role not in CHAT_ROLES:
            c.add(f"data_configs[{name}].chat_columns.{role}", f"unknown chat role {role!r}",
                  did_you_mean(role, CHAT_ROLES) or f"Roles: {', '.join(CHAT_ROLES)}.")
    if roles and roles[-1] != "assistant":
        c.add(f"data_configs[{name}].chat_columns", "the conversation must end with an assistant turn (the answer "
              "to learn and to measure)", "Map the answer column last, e.g. {\"user\": \"{phrase}\", "
              "\"assistant\": \"{tone}\"}.")
    if config.text_template:
        c.warn(f"data_configs[{name}]: text_template is not used: rows are rendered through the chat template.")


def _check_template(name: str, config: DataConfig, c: Collector) -> None:
    if config.stride and config.strategy != "join-sliding-window":
        c.warn(f"data_configs[{name}].stride: applies to strategy join-sliding-window only; with "
               f"{config.strategy!r} it is not used")
    if config.strategy == "join-sliding-window" and not config.stride:
        c.add(f"data_configs[{name}].stride", "join-sliding-window needs a stride", "Set stride, e.g. max_seq_len // 2.")
    elif config.strategy == "join-sliding-window" and config.stride > config.max_seq_len:
        c.add(f"data_configs[{name}].stride", f"{config.stride} is more than max_seq_len ({config.max_seq_len}), so "
              "the tokens between two windows would never be trained on", "Set stride to at most max_seq_len.")
    if config.chat:
        _check_chat(name, config, c)
        return
    if not config.text_template and not config.text_cols:
        c.add(f"data_configs[{name}]", "neither text_template nor text_cols is set",
              "Set text_template, e.g. '### Text: {phrase}\\n### The tone is:\\n{tone}'.")
    if config.loss_on == "completion" and not config.answer_column:
        c.add(f"data_configs[{name}].loss_on", "'completion' needs a text_template with a {field} (its last field "
              "is the completion)", "Put the field to predict in the template, or set loss_on to 'all'.")


def _check_data_ref(name: str | None, data: dict, path: str, c: Collector) -> None:
    if name is not None and name not in data and name not in c.failed_data:  # a refused one is reported already
        hint = did_you_mean(name, data) or (f"Defined: {', '.join(data)}." if data else "Define it in data_configs.")
        c.add(path, f"no data config named {name!r}", hint)


def _check_pass_ref(name: str, passes: list[PassConfig], path: str, lead: str, c: Collector) -> bool:
    """Whether `name` is a pass; if not, a problem at `path` with a 'did you mean' (after `lead`)."""
    names = [p.name for p in passes]
    if name in names:
        return True
    c.add(path, f"no pass named {name!r}", lead + (did_you_mean(name, names) or f"Passes: {', '.join(names) or 'none'}."))
    return False


def _check_output_dirs(model: InputModelConfig, engine: EngineConfig, c: Collector) -> None:
    """No output may land in the input model, nor replace it or a folder modelpress did not write."""
    replaced = engine.output_dir.resolve() / "model"  # the run replaces this folder with its final model
    if replaced.is_dir() and not (replaced / MODEL_CARD).is_file():
        c.add("output_dir", f"{replaced} exists and was not written by modelpress (it has no {MODEL_CARD}); a run "
              "replaces that folder with its final model", "Move it, or choose another output_dir.")
    if model.model_path is None:  # a Hub snapshot lives in the Hugging Face cache
        return
    source = model.model_path.resolve()
    if source == replaced or replaced in source.parents:
        c.add("output_dir", f"the input model {source} is in {replaced}, which the run replaces with its final "
              "model", "Copy the earlier run's model elsewhere and point model_path there, or choose another "
              "output_dir.")
    for key in ("output_dir", "cache_dir"):
        target = getattr(engine, key).resolve()
        if target == source or source in target.parents:
            c.add(key, f"{target} is inside the input model folder {source}",
                  "Choose a folder outside the model folder, so the model is never modified.")


def _check_search(passes: list[PassConfig], search: SearchConfig, evaluator: EvaluatorConfig | None,
                  data: dict, c: Collector) -> None:
    if evaluator is None:
        return
    for i, metric in enumerate(evaluator.metrics):
        _check_data_ref(metric.data_config, data, f"evaluator.metrics[{i}].data_config", c)
    if evaluator.baseline == "input_model":
        return
    names = [p.name for p in passes]
    if not _check_pass_ref(evaluator.baseline, passes, "evaluator.baseline", "Use input_model or a pass name. ", c):
        return
    upto = passes[: names.index(evaluator.baseline) + 1]
    varied = [p.name for p in upto if len(p.choices()) > 1]
    if varied:
        c.add("evaluator.baseline", f"the baseline {evaluator.baseline!r} comes after searched passes {varied}",
              "The baseline must be the same for every candidate: fix the values of the passes up to it.")


def check_hosts(passes: list[PassConfig], systems: dict[str, SystemConfig], host: str | None, target: str | None,
                c: Collector, gguf_input: bool = False) -> None:
    """A pass's own `host` names a defined system; a Ray system's `pass_resources` name passes; data-parallel
    training runs on a Ray system only where its workers can read the model and write checkpoints (a path)."""
    used = {host, target, *(p.host for p in passes)}
    for p in passes:
        if p.host is not None and p.host not in systems:
            c.add(f"passes.{p.name}.host", f"no system named {p.host!r} is defined",
                  did_you_mean(p.host, systems) or f"Define it under `systems`, or name one of: "
                  f"{', '.join(systems) or 'none defined'}.")
            continue
        name = p.host or host
        if p.type == "GgufExport" and gguf_input and name in systems and systems[name].ray is not None:
            c.add(f"passes.{p.name}.host", f"GgufExport reads the input GGUF file where it runs, and the workers of "
                  f"Ray system {name!r} are not given it", f"Run it on this machine: define a LocalSystem under "
                  f"`systems` and set passes.{p.name}.host to it.")
        if name not in systems or systems[name].ray is None:  # data-parallel training goes to the run's Ray system
            name = next((n for n, s in systems.items() if s.ray is not None and n in used), None)
        storage = systems[name].ray.storage if name is not None else None
        if storage and "://" in storage and any(getattr(o.params, "num_workers", 1) > 1 for o in p.choices()):
            c.add(f"passes.{p.name}.num_workers", f"data-parallel training on Ray system {name!r} needs "
                  f"a storage path every node mounts; its storage is a URL ({storage}), from which Ray Train's "
                  "workers on other nodes can read neither the model nor shared checkpoints",
                  f"Set systems.{name}.storage to a shared path (NFS, a mounted bucket), or num_workers to 1.")
    names = [p.name for p in passes]
    for system_name, system in systems.items():
        for name in system.ray.pass_resources if system.ray else ():
            if name not in names:
                c.add(f"systems.{system_name}.pass_resources.{name}", "no pass has this name",
                      did_you_mean(name, names) or f"Passes: {', '.join(names) or 'none'}.")
