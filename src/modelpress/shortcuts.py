"""`finetune`, `export`, `quantize` and `optimize`: commands that only build a workflow config, then run it.

`--dry-run` prints the config instead, so a user can save it and graduate to a file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# cli imports this module only inside a function
from modelpress.cli import add_progress_flag, print_error, print_findings, run_config, wants_bars
from modelpress.cli_args import data_format, fraction, non_empty, positive_int, template_text
from modelpress.errors import ConfigError, Problem


def add_shortcuts(sub) -> None:
    p = sub.add_parser("finetune", help="LoRA/QLoRA fine-tune a model folder on a data file (builds a config)")
    p.add_argument("--model", required=True, type=non_empty, help="Hugging Face model folder")
    p.add_argument("--data", required=True, nargs="+", help="JSON, JSONL, CSV or Parquet files")
    p.add_argument("--template", required=True, type=template_text,
                   help="text template, e.g. '### Text: {phrase}\\n### Tone:\\n{tone}' (\\n and \\t are a newline and a tab)")
    p.add_argument("--target-modules", nargs="+", type=non_empty, default=["all-linear"],
                   help="module names to adapt (default: all-linear, every linear layer but the output head)")
    p.add_argument("--method", choices=("LoRA", "QLoRA"), default="LoRA")
    p.add_argument("--max-steps", type=positive_int, default=300)
    p.add_argument("--learning-rate", type=float, default=2e-3)
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--max-seq-len", type=positive_int, default=256)
    p.add_argument("--strategy", choices=("line-by-line", "join", "join-sliding-window"), default="line-by-line")
    p.add_argument("--stride", type=positive_int, help="join-sliding-window: tokens from one window to the next")
    p.add_argument("--loss-on", choices=("all", "completion"), default="completion")
    p.add_argument("--eval-fraction", type=fraction, default=0.2,
                   help="share of the distinct rows held out for the eval loss and the final evaluation (0 to 1)")
    p.add_argument("--merge", action="store_true", help="also merge the adapter into the base")
    _common(p)
    p.set_defaults(handler=cmd_finetune)

    p = sub.add_parser("export", help="convert a Hugging Face folder to an onnxruntime-genai folder (builds a config)")
    p.add_argument("--model", required=True, type=non_empty, help="Hugging Face model folder")
    p.add_argument("--precision", choices=("int4", "int8", "fp16", "bf16", "fp32"), default="int4")
    p.add_argument("--execution-provider", choices=("cpu", "cuda", "dml"), default="cpu")
    p.add_argument("--block-size", type=int, choices=(16, 32, 64, 128, 256), default=None,
                   help="int4/int8 quantization block (default 32)")
    _common(p)
    p.set_defaults(handler=cmd_export)

    p = sub.add_parser("quantize", help="quantize a Hugging Face folder to int4 or int8 ONNX (builds a config)")
    _target_args(p)
    p.add_argument("--precision", choices=("int4", "int8"), default=None,
                   help="default: int8 for --method dynamic/static, else int4")
    p.add_argument("--method", choices=("auto", "rtn", "hqq", "dynamic", "static"), default="auto",
                   help="auto: the genai builder for text-generation; RTN (int4) or dynamic (int8) for classifiers")
    p.add_argument("--block-size", type=int, choices=(16, 32, 64, 128, 256), default=None,
                   help="weights per quantization block (default 32); not with --method dynamic or static")
    _common(p)
    p.set_defaults(handler=cmd_quantize)

    p = sub.add_parser("optimize", help="choose the passes for a target device and precision (builds a config)")
    _target_args(p)
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--precision", choices=("int4", "int8", "fp16", "fp32"), default=None,
                   help="default: int4 (not with --search, which tries int4 and int8 itself)")
    p.add_argument("--search", action="store_true",
                   help="search int4 and int8 variants under --max-accuracy-drop (needs --data)")
    p.add_argument("--max-accuracy-drop", type=float, default=None,
                   help="goal for --search: how far accuracy (0 to 1) may fall below the baseline's (default 0.02, "
                        "two points)")
    _common(p)
    p.set_defaults(handler=cmd_optimize)


def _target_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, type=non_empty, help="Hugging Face model folder")
    p.add_argument("--task", choices=("text-generation", "text-classification"), default="text-generation")
    p.add_argument("--data", nargs="+", help="data files to evaluate on (and to calibrate static quantization)")
    p.add_argument("--template", type=template_text, help="text template over the data's columns (\\n: a newline)")
    p.add_argument("--text-col", nargs="+", help="text-classification: the column(s) holding the text, read as they "
                   "are (instead of --template)")
    p.add_argument("--label-col", help="text-classification: the label column")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output-dir", type=non_empty, default="modelpress-output")
    p.add_argument("--cache-dir", type=non_empty, default=".modelpress-cache")
    p.add_argument("--dry-run", action="store_true", help="print the workflow config and stop")
    add_progress_flag(p)
    p.set_defaults(runs_workflow=True)


def finetune_config(args) -> dict:
    data = {"name": "train", "type": "HuggingfaceContainer",
            "load_dataset_config": {"data_name": data_format(args.data), "data_files": _abs(args.data),
                                    "split": "train"},
            "pre_process_data_config": {"text_template": args.template, "strategy": args.strategy,
                                        "max_seq_len": args.max_seq_len, "pad_to_max_len": False,
                                        "loss_on": args.loss_on,
                                        **({"stride": args.stride} if args.stride else {})}}
    if "all-linear" in args.target_modules and len(args.target_modules) > 1:  # peft reads it as one module's name
        raise _usage("--target-modules", f"all-linear names every linear layer and cannot be listed with others "
                     f"({' '.join(args.target_modules)})", "Give all-linear alone, or the module names alone.")
    targets = "all-linear" if args.target_modules == ["all-linear"] else args.target_modules
    passes = {"lora": {"type": args.method, "train_data_config": "train", "eval_dataset_size": args.eval_fraction,
                       "target_modules": targets,
                       "training_args": {"max_steps": args.max_steps, "learning_rate": args.learning_rate,
                                         "per_device_train_batch_size": args.batch_size}}}
    if args.merge:
        passes["merge"] = {"type": "MergeAdapterWeights"}
    return _workflow(args, passes, [data])


def export_config(args) -> dict:
    if args.block_size is not None and args.precision not in ("int4", "int8"):
        raise _usage("--block-size", f"{args.precision} weights have no quantization blocks",
                     "Drop --block-size, or export int4 or int8.")
    passes = {"builder": {"type": "ModelBuilder", "precision": args.precision, "block_size": args.block_size or 32,
                          "execution_provider": args.execution_provider}}
    config = _workflow(args, passes, [])
    config["evaluation"] = {"enabled": False}
    return config


def _eval_data(args) -> list:
    """The --data files as a data config named 'data' (for evaluation and calibration)."""
    if not args.data:
        given = [flag for flag, value in (("--template", args.template), ("--text-col", args.text_col),
                                          ("--label-col", args.label_col)) if value]
        if given:
            raise _usage(given[0], f"{', '.join(given)} describe{'s' if len(given) == 1 else ''} the rows of --data, "
                         "and no --data was given", "Pass --data with the files to evaluate on, or drop "
                         f"{', '.join(given)}.")
        return []
    if args.template and args.text_col:
        raise _usage("--text-col", "the text comes from --template or from --text-col, not both", "Pass one of them.")
    if args.task == "text-generation" and (args.label_col or args.text_col):
        flag = "--label-col" if args.label_col else "--text-col"
        raise _usage(flag, f"{flag} is for --task text-classification; a text-generation model is measured on the "
                     "answer its --template's last field holds", f"Drop {flag}, or pass --task text-classification.")
    if args.task == "text-classification" and not args.label_col and getattr(args, "search", False):
        raise _usage("--label-col", "--search compares accuracy, which needs the class of each row",
                     "Pass --label-col with the column holding it.")
    pre = {"text_template": args.template, "text_cols": args.text_col, "max_seq_len": 256}
    if args.label_col:
        pre["label_col"] = args.label_col
    return [{"name": "data", "type": "HuggingfaceContainer",
             "load_dataset_config": {"data_name": data_format(args.data), "data_files": _abs(args.data)},
             "pre_process_data_config": {k: v for k, v in pre.items() if v is not None}}]


def _quantizer(precision: str, method: str, block_size: int, has_data: bool) -> dict:
    if method == "auto":
        method = "rtn" if precision == "int4" else "dynamic"
    if precision == "int4" and method not in ("rtn", "hqq"):
        raise _usage("--method", f"{method} gives int8", "For int4 use rtn or hqq.")
    if precision == "int8" and method not in ("dynamic", "static"):
        raise _usage("--method", f"{method} gives int4", "For int8 use dynamic or static.")
    if method == "static" and not has_data:
        raise _usage("--method", "static calibrates on data", "Pass --data (and --template).")
    return {"rtn": {"type": "OnnxBlockWiseRtnQuantization", "block_size": block_size},
            "hqq": {"type": "OnnxHqqQuantization", "block_size": block_size},
            "dynamic": {"type": "OnnxDynamicQuantization", "per_channel": True},
            "static": {"type": "OnnxStaticQuantization", "data_config": "data"}}[method]


def quantize_config(args) -> dict:
    data = _eval_data(args)
    if args.precision is None:
        args.precision = "int8" if args.method in ("dynamic", "static") else "int4"
    builder = args.task == "text-generation" and args.method == "auto"  # the genai builder, whose int8 has blocks
    if args.block_size is not None and not builder and args.precision == "int8":
        raise _usage("--block-size", "int8 quantization of an ONNX model (dynamic or static) has no blocks",
                     "Drop --block-size, or quantize to int4 (--method rtn or hqq).")
    args.block_size = args.block_size or 32
    if builder:
        passes = {"builder": {"type": "ModelBuilder", "precision": args.precision, "block_size": args.block_size}}
    else:
        passes = {"conversion": {"type": "OnnxConversion"},
                  "quantize": _quantizer(args.precision, args.method, args.block_size, bool(data))}
    return _with_evaluation(_workflow(args, passes, data, args.task), data)


def optimize_config(args) -> dict:
    """The passes modelpress recommends for a device and precision; with --search, int4 and int8 are both tried."""
    data = _eval_data(args)
    ep = "cuda" if args.device == "gpu" else "cpu"
    if args.search and not data:
        raise _usage("--search", "compares accuracy on data", "Pass --data (and --template or --label-col).")
    if args.search and args.precision is not None:
        raise _usage("--precision", "--search tries int4 and int8 itself", "Drop --precision, or --search.")
    if args.max_accuracy_drop is not None and not args.search:
        raise _usage("--max-accuracy-drop", "is the goal of --search, and there is no search",
                     "Add --search (int4 and int8 tried under that goal), or drop --max-accuracy-drop.")
    args.max_accuracy_drop = 0.02 if args.max_accuracy_drop is None else args.max_accuracy_drop
    if not 0 <= args.max_accuracy_drop < 1:
        raise _usage("--max-accuracy-drop", f"{args.max_accuracy_drop:g} is not a share of accuracy (0 to 1)",
                     "Give a fraction: 0.02 lets accuracy fall two points.")
    args.precision = args.precision or "int4"
    if args.task == "text-generation":
        precisions = ["int4", "int8"] if args.search else [args.precision]
        if ep == "cpu" and "fp16" in precisions:
            raise _usage("--precision", "the CPU builds fp32, int8 or int4", "Use --device gpu for fp16.")
        passes = {"builder": {"type": "ModelBuilder", "precision": precisions if args.search else precisions[0],
                              "execution_provider": ep}}
    else:
        passes = {"conversion": {"type": "OnnxConversion"}, "fusion": {"type": "OrtTransformersOptimization"}}
        if args.search:
            passes["quantize"] = [_quantizer("int8", "dynamic", 32, True),
                                  {**_quantizer("int4", "rtn", 32, True), "block_size": [32, 128]}]
        elif args.precision in ("int4", "int8"):
            passes["quantize"] = _quantizer(args.precision, "auto", 32, bool(data))
        elif args.precision == "fp16":
            passes["fp16"] = {"type": "OnnxFloatToFloat16"}
        if ep == "cpu":
            passes["session"] = {"type": "OrtSessionParamsTuning"}
    config = _with_evaluation(_workflow(args, passes, data, args.task), data)
    config["execution_providers"] = ["CUDAExecutionProvider" if ep == "cuda" else "CPUExecutionProvider"]
    if args.search:
        baseline = "fusion" if args.task == "text-classification" else "input_model"
        config["search_strategy"] = {"sampler": "sequential"}
        config["evaluators"] = {"goals": {"baseline": baseline, "metrics": [
            {"name": "accuracy", "type": "accuracy", "sub_types": [
                {"name": "accuracy_score", "priority": 1,
                 "goal": {"type": "max-degradation", "value": args.max_accuracy_drop}}]},
            {"name": "latency", "type": "latency", "sub_types": [{"name": "p50", "priority": 2}]},
            {"name": "size", "type": "size_on_disk", "sub_types": [{"name": "size_on_disk"}]}]}}
    return config


def _with_evaluation(config: dict, data: list) -> dict:
    config["evaluation"] = {"data_config": "data"} if data else {"enabled": False}
    return config


def _workflow(args, passes: dict, data: list, task: str = "text-generation") -> dict:
    return {"input_model": {"type": "HfModel", "model_path": _model_path(args.model), "task": task},
            "data_configs": data, "passes": passes, "evaluation": {},
            "output_dir": _abs(args.output_dir), "cache_dir": _abs(args.cache_dir)}


def _model_path(value: str) -> str:
    """--model as the config reads it: a local folder or file made absolute; a Hub id (org/name) or a
    `package:` path that names no local path kept as given."""
    from modelpress.config.sources import PACKAGE_PREFIX
    from modelpress.hub import is_hub_id

    if not Path(value).exists() and (value.startswith(PACKAGE_PREFIX) or is_hub_id(value)):
        return value
    return _abs(value)


def _abs(paths):
    """Absolute paths, so a printed (--dry-run) config runs from any folder."""
    if isinstance(paths, list):
        return [_abs(p) for p in paths]
    from modelpress.config.paths import URL

    if URL.match(str(paths)):  # as given: the config check names it under its key (a folded URL read as a path)
        return str(paths)
    try:  # `--data=~/x`: the shell leaves a ~ after = as it is
        return str(Path(paths).expanduser().resolve())
    except RuntimeError:  # ~name of a user this machine does not have: as given, for the config check to name
        return str(paths)


def _usage(flag: str, message: str, hint: str) -> ConfigError:
    """A mistake in the command's flags: exit 2, as a config mistake."""
    return ConfigError([Problem(flag, message, hint)])


def _run(args, config: dict) -> int:
    """Print the config the flags made (--dry-run: also when it does not validate yet, with its problems, which
    name config keys, and exit 2), or validate and run it."""
    from modelpress.config import normalize

    if args.dry_run:
        print(json.dumps(config, indent=2))
    try:
        validated = normalize(config, base_dir=Path.cwd())
        if args.dry_run:  # what `validate` would warn of in the printed config (a run logs them itself)
            print_findings(validated, notes=False)
    except ConfigError as err:
        if not args.dry_run:
            raise ConfigError([_as_flags(p) for p in err.problems]) from None
        print_error(f"the config above does not validate yet: {err}")
        return 2
    if args.dry_run:
        return 0
    return run_config(validated, show_progress=wants_bars(args.progress), own_process=args.own_process)


# The config keys the shortcuts write, and the flag that sets each: a problem found in the config names the flag.
FLAGS = {
    "passes.builder.precision": "--precision", "passes.builder.execution_provider": "--execution-provider",
    "passes.builder.block_size": "--block-size", "passes.quantize": "--method", "passes.lora.type": "--method",
    "passes.lora.eval_dataset_size": "--eval-fraction", "passes.lora.target_modules": "--target-modules",
    "passes.lora.training_args.max_steps": "--max-steps", "passes.lora.training_args.learning_rate":
    "--learning-rate", "passes.lora.training_args.per_device_train_batch_size": "--batch-size",
    "data_configs[train].text_template": "--template", "data_configs[train].max_seq_len": "--max-seq-len",
    "data_configs[train].loss_on": "--loss-on", "data_configs[train].stride": "--stride",
    "data_configs[train]": "--data/--template", "data_configs[0]": "--data/--template",
    "data_configs[data].text_template": "--template", "data_configs[data].text_cols": "--text-col",
    "data_configs[data].label_col": "--label-col", "data_configs[data]": "--data/--template/--text-col",
    "data_configs[0].load_dataset_config": "--data",
    "input_model": "--model", "output_dir": "--output-dir", "cache_dir": "--cache-dir",
}


def _as_flags(problem: Problem) -> Problem:
    """The problem with the flag that set its key named first (the longest key that the path starts with)."""
    keys = [k for k in FLAGS if problem.path == k or problem.path.startswith((f"{k}.", f"{k}["))]
    if not keys:
        return problem
    return Problem(f"{FLAGS[max(keys, key=len)]} ({problem.path})", problem.message, problem.hint)


def cmd_finetune(args) -> int:
    return _run(args, finetune_config(args))


def cmd_export(args) -> int:
    return _run(args, export_config(args))


def cmd_quantize(args) -> int:
    return _run(args, quantize_config(args))


def cmd_optimize(args) -> int:
    return _run(args, optimize_config(args))
