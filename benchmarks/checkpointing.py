"""The cost of resumable checkpoints: LoRA time per step with and without them, side by side.

    .venv/bin/python benchmarks/checkpointing.py [--steps 100] [--every 10]

Runs the demo's LoRA settings on the tiny Phi-3 twice in one go (fresh caches): once with
`save_strategy: "no"`, once saving a checkpoint (adapter, optimizer, scheduler, RNG state)
every `--every` steps, and prints seconds per step for both.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "phi3-tone"
MODELPRESS = [sys.executable, "-m", "modelpress"]


def config(model: Path, work: Path, tag: str, steps: int, every: int | None) -> Path:
    raw = json.loads((EXAMPLE / "demo.json").read_text())
    raw["input_model"]["model_path"] = str(model)
    raw["data_configs"][0]["load_dataset_config"]["data_files"] = [str(EXAMPLE / "data" / "dataset-classification.json")]
    raw["passes"] = {"lora": raw["passes"]["lora"]}
    args = raw["passes"]["lora"]["training_args"]
    args["max_steps"] = steps
    args.update({"save_strategy": "steps", "save_steps": every} if every else {"save_strategy": "no"})
    raw["evaluation"] = {"enabled": False}
    raw["cache_dir"], raw["output_dir"] = str(work / tag / "cache"), str(work / tag / "out")
    path = work / f"{tag}.json"
    path.write_text(json.dumps(raw))
    return path


def seconds_per_step(path: Path) -> tuple[float, int]:
    subprocess.run([*MODELPRESS, "run", "--config", str(path), "--no-progress"], check=True, capture_output=True)
    cache = Path(json.loads(path.read_text())["cache_dir"])
    log = json.loads(next(cache.glob("passes/*/model/training_log.json")).read_text())
    return log["train_seconds"] / log["steps"], log["steps"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--every", type=int, default=10)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="modelpress-ckpt-"))
    model = work / "tiny-phi3"
    subprocess.run([*MODELPRESS, "create-tiny-model", "--out", str(model)], check=True, capture_output=True)
    rows = [("no checkpoints", *seconds_per_step(config(model, work, "off", args.steps, None))),
            (f"checkpoint every {args.every} steps", *seconds_per_step(config(model, work, "on", args.steps, args.every)))]
    print(f"LoRA, demo settings (batch 16, r 16, attention + MLP), tiny Phi-3, {args.steps} steps\n")
    print(f"{'run':<28}  {'s/step':>7}  {'steps':>5}")
    print(f"{'-' * 28}  {'-' * 7}  {'-' * 5}")
    for name, per_step, steps in rows:
        print(f"{name:<28}  {per_step:>7.3f}  {steps:>5}")
    print(f"\ncheckpointing cost: {100 * (rows[1][1] / rows[0][1] - 1):+.1f}% time per step")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
