"""`finetune` and `export`: commands that only build a workflow config, then run it.

`--dry-run` prints the config instead, so a user can save it and graduate to a file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_shortcuts(sub) -> None:
    p = sub.add_parser("finetune", help="LoRA/QLoRA fine-tune a model folder on a data file (builds a config)")
    p.add_argument("--model", required=True, help="Hugging Face model folder")
    p.add_argument("--data", required=True, nargs="+", help="JSON, JSONL, CSV or Parquet files")
    p.add_argument("--template", required=True, help="text template, e.g. '### Text: {phrase}\\n### Tone:\\n{tone}'")
    p.add_argument("--method", choices=("LoRA", "QLoRA"), default="LoRA")
    p.add_argument("--max-steps", type=int, default=300)
    p.add_argument("--learning-rate", type=float, default=2e-3)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-seq-len", type=int, default=256)
    p.add_argument("--strategy", choices=("line-by-line", "join", "join-sliding-window"), default="line-by-line")
    p.add_argument("--loss-on", choices=("all", "completion"), default="completion")
    p.add_argument("--eval-fraction", type=float, default=0.2)
    p.add_argument("--merge", action="store_true", help="also merge the adapter into the base")
    _common(p)
    p.set_defaults(handler=cmd_finetune)

    p = sub.add_parser("export", help="convert a Hugging Face folder to an onnxruntime-genai folder (builds a config)")
    p.add_argument("--model", required=True, help="Hugging Face model folder")
    p.add_argument("--precision", choices=("int4", "int8", "fp16", "bf16", "fp32"), default="int4")
    p.add_argument("--execution-provider", choices=("cpu", "cuda", "dml"), default="cpu")
    p.add_argument("--block-size", type=int, choices=(16, 32, 64, 128, 256), default=32)
    _common(p)
    p.set_defaults(handler=cmd_export)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output-dir", default="modelpress-output")
    p.add_argument("--cache-dir", default=".modelpress-cache")
    p.add_argument("--dry-run", action="store_true", help="print the workflow config and stop")
    p.add_argument("--no-progress", action="store_true")


def finetune_config(args) -> dict:
    from modelpress.data import format_of  # imported here: `modelpress --help` must stay light

    data = {"name": "train", "type": "HuggingfaceContainer",
            "load_dataset_config": {"data_name": format_of(args.data[0]) or "json", "data_files": args.data,
                                    "split": "train"},
            "pre_process_data_config": {"text_template": args.template, "strategy": args.strategy,
                                        "max_seq_len": args.max_seq_len, "pad_to_max_len": False,
                                        "loss_on": args.loss_on}}
    passes = {"lora": {"type": args.method, "train_data_config": "train", "eval_dataset_size": args.eval_fraction,
                       "training_args": {"max_steps": args.max_steps, "learning_rate": args.learning_rate,
                                         "per_device_train_batch_size": args.batch_size}}}
    if args.merge:
        passes["merge"] = {"type": "MergeAdapterWeights"}
    return _workflow(args, passes, [data])


def export_config(args) -> dict:
    passes = {"builder": {"type": "ModelBuilder", "precision": args.precision, "block_size": args.block_size,
                          "execution_provider": args.execution_provider}}
    config = _workflow(args, passes, [])
    config["evaluation"] = {"enabled": False}
    return config


def _workflow(args, passes: dict, data: list) -> dict:
    return {"input_model": {"type": "HfModel", "model_path": args.model, "task": "text-generation"},
            "data_configs": data, "passes": passes, "evaluation": {},
            "output_dir": args.output_dir, "cache_dir": args.cache_dir}


def _run(args, config: dict) -> int:
    if args.dry_run:
        print(json.dumps(config, indent=2))
        return 0
    from modelpress.cli import run_config
    from modelpress.config import normalize

    return run_config(normalize(config, base_dir=Path.cwd()), show_progress=not args.no_progress)


def cmd_finetune(args) -> int:
    return _run(args, finetune_config(args))


def cmd_export(args) -> int:
    return _run(args, export_config(args))
