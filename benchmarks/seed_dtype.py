"""The seed's workflow with a float32 and a bfloat16 training base, in modelpress and in Olive 0.13: does the dtype
move the cold-run ratio?

    .venv/bin/python benchmarks/seed_dtype.py [--olive-venv /tmp/olive-peer/venv]

The seed's config leaves the LoRA pass's torch_dtype out. modelpress then trains on a float32 base, Olive 0.13 on
a bfloat16 one (its default); `examples/phi3-tone/olive-0.13-config.json` writes float32, so that the benchmark
compares the same work. This runs each side once with float32 and once with bfloat16 (modelpress: torch_dtype
"bfloat16" added to the seed's config; Olive: the file without its torch_dtype line, eager attention as written),
from empty caches, one after the other, and prints the wall times, the LoRA pass's seconds, peak memory, and the
ratio Olive / modelpress per dtype. modelpress's LoRA seconds are its run history's LoRA step, imports and model
load included; Olive's are its log's pass time. Needs Olive (`benchmarks/setup_olive.sh`) and the tiny Phi-3 that
`make demo` writes (examples/phi3-tone/models/tiny-phi3); `make bench` runs neither this script nor `make demo`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import (EXAMPLE, MODELPRESS, add_olive_venv, lora_seconds_modelpress, lora_seconds_olive,  # noqa: E402
                 measure, olive_binary, seed_workflow, workflow)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_olive_venv(parser)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    olive_bin = olive_binary(args)
    if olive_bin is None:
        return 1
    root = Path(tempfile.mkdtemp(prefix="modelpress-seed-dtype-"))
    model = (EXAMPLE / "models" / "tiny-phi3").resolve()
    if not (model / "config.json").is_file():
        print(f"{model} not found: run `make demo` first (it writes the tiny Phi-3).")
        return 1
    rows = []
    for dtype in ("float32", "bfloat16"):
        work = root / dtype
        seed = seed_workflow(model, work, args.steps)
        config = json.loads(seed.read_text())
        if dtype == "bfloat16":
            config["passes"]["lora"]["config"]["torch_dtype"] = "bfloat16"
        seed.write_text(json.dumps(config, indent=2))
        mp = measure([*MODELPRESS, "run", "--config", str(seed), "--no-progress"], work / "seed")
        rows.append((f"modelpress, seed config, {dtype} base", mp, lora_seconds_modelpress(seed)))
        olive = workflow(model, work, "olive", args.steps)
        config = json.loads(olive.read_text())
        if dtype == "bfloat16":
            del config["passes"]["lora"]["torch_dtype"]  # Olive's default
        olive.write_text(json.dumps(config, indent=2))
        ov = measure([str(olive_bin), "run", "--config", str(olive)], work / "olive")
        rows.append((f"Olive 0.13, eager, {dtype} base", ov, lora_seconds_olive(ov["log"])))
        print(f"{dtype}: Olive / modelpress cold {ov['wall_s'] / mp['wall_s']:.2f}x", flush=True)
    print(f"\n{'run':<44} {'cold wall s':>11} {'LoRA s':>7} {'peak RSS MiB':>12}")
    for name, result, lora in rows:
        print(f"{name:<44} {result['wall_s']:>11.1f} {lora:>7.1f} {result['peak_mb']:>12.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
