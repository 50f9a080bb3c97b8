"""Does a bf16 base change what LoRA learns? The demo trained with a float32 and a bfloat16 base, three seeds each.

    python benchmarks/bf16_training.py [--seeds 0 1 2] [--steps 600]

Runs examples/phi3-tone/demo.json as written (LoRA -> merge -> int4 -> evaluation on the 229
held-out phrases) with the LoRA pass's `torch_dtype` set to float32 or bfloat16 (the adapters
stay float32 either way) and `training_args.seed` varied, in a copy of the example folder. It
prints each run's held-out accuracy and loss, and for each dtype the mean and the spread between
seeds: a bf16 effect smaller than the seed spread is noise.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "phi3-tone"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--work", type=Path, help="a folder to work in (reused: finished runs come from its cache)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="modelpress-bf16-"))
    if not (work / "data").is_dir():
        shutil.copytree(EXAMPLE / "data", work / "data")
    if not (work / "models" / "tiny-phi3" / "config.json").is_file():
        subprocess.run([sys.executable, "-m", "modelpress", "create-tiny-model", "--out",
                        str(work / "models" / "tiny-phi3")], check=True, capture_output=True)
    demo = json.loads((EXAMPLE / "demo.json").read_text())
    results: dict[str, list[tuple[int, float, float, float]]] = {}
    for dtype in ("float32", "bfloat16"):
        for seed in args.seeds:
            config = json.loads(json.dumps(demo))
            lora = config["passes"]["lora"]
            lora["torch_dtype"] = dtype
            lora["training_args"].update(seed=seed, max_steps=args.steps)
            config["output_dir"] = f"runs/{dtype}-{seed}"
            path = work / f"{dtype}-{seed}.json"
            path.write_text(json.dumps(config))
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "modelpress", "run", "--config", str(path), "--no-progress"],
                                  cwd=work, capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stderr[-3000:], file=sys.stderr)
                return 1
            final = json.loads((work / config["output_dir"] / "metrics.json").read_text())["models"]["final"]
            results.setdefault(dtype, []).append((seed, final["accuracy"], final["completion_loss"], time.perf_counter() - start))
            print(f"  {dtype} seed {seed}: accuracy {final['accuracy']:.3f}", file=sys.stderr)
    print(f"\nthe demo's LoRA ({args.steps} steps) on a float32 or bfloat16 base; int4 model, 229 held-out phrases\n")
    print("| base dtype | seed | accuracy | loss | run seconds |\n|---|---|---|---|---|")
    for dtype, rows in results.items():
        for seed, accuracy, loss, seconds in rows:
            print(f"| {dtype} | {seed} | {accuracy:.3f} | {loss:.3f} | {seconds:.0f} |")
    print("\n| base dtype | mean accuracy | spread between seeds (max - min) |\n|---|---|---|")
    for dtype, rows in results.items():
        accuracies = [r[1] for r in rows]
        print(f"| {dtype} | {statistics.mean(accuracies):.3f} | {max(accuracies) - min(accuracies):.3f} |")
    means = {d: statistics.mean(r[1] for r in rows) for d, rows in results.items()}
    spread = max(max(r[1] for r in rows) - min(r[1] for r in rows) for rows in results.values())
    effect = means["bfloat16"] - means["float32"]
    print(f"\nbf16 - fp32 mean accuracy: {effect:+.3f}; largest seed spread: {spread:.3f}: "
          + ("within the noise between seeds" if abs(effect) <= spread else "LARGER than the noise between seeds"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
