"""int4 methods on the fine-tuned SmolLM2 example: accuracy, perplexity and size against fp32.

    python benchmarks/quant_methods.py [--only NAME ...]

Each method is the SmolLM2 example's workflow (examples/smollm2-tone/workflow.json) with its
last step replaced, run through `modelpress run`; LoRA and the merge come from the example's
cache (run `make smollm2` first, or the first method trains them, ~5 minutes). Every model is
measured on the 229 held-out phrases and the 72 phrases in another style. It prints one
markdown row per model.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "smollm2-tone"
GPTQ = {"type": "Gptq", "bits": 4, "sym": False, "group_size": 32, "data_config": "tone", "calibration_samples": 128}
HEAD8 = {"type": "Rtn", "bits": 8, "sym": False, "group_size": 32, "lm_head": True}
BUILD = {"type": "ModelBuilder", "precision": "int4", "block_size": 32}
METHODS = {  # name -> the passes after merge
    "int4 RTN (builder default)": {"builder": dict(BUILD, algo_config="default")},
    "int4 k_quant (builder)": {"builder": dict(BUILD, algo_config="k_quant")},
    "int4 k_quant_last (builder; the example's until 2026-12-04)": {"builder": dict(BUILD, algo_config="k_quant_last")},
    "int4 k_quant_mixed (builder)": {"builder": dict(BUILD, algo_config="k_quant_mixed")},
    "int4 GPTQ g32, head 8-bit RTN": {"gptq": GPTQ, "head": HEAD8, "builder": dict(BUILD)},
    "int4 GPTQ g32, head 8-bit RTN, int8 embeddings": {
        "gptq": GPTQ, "head": HEAD8, "builder": dict(BUILD),
        "embeddings": {"type": "GraphSurgeries", "surgeries": [{"surgeon": "QuantizeEmbeddingInt8"}]}},
    "mixed: k_quant_mixed + GPTQ + 8-bit head": {
        "mixed": {"type": "SelectiveMixedPrecision", "algorithm": "k_quant_mixed"}, "gptq": GPTQ, "head": HEAD8,
        "builder": dict(BUILD)},
}


def config_for(tail: dict, name: str, with_fp32: bool) -> dict:
    config = json.loads((EXAMPLE / "workflow.json").read_text())
    passes = {k: v for k, v in config["passes"].items() if k in ("lora", "merge")}
    config["passes"] = {**passes, **copy.deepcopy(tail)}
    config["evaluation"] = {**config["evaluation"], "evaluate_input_model": False, "latency_samples": 8,
                            "evaluate_passes": ["merge"] if with_fp32 else []}
    config["output_dir"] = f"runs/quant/{slug(name)}"
    return config


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")[:40]


def row(name: str, result: dict, extra: dict | None) -> str:
    other = (extra or {}).get("accuracy")
    return (f"| {name} | {result['accuracy']:.3f} | {other:.3f} | {result['perplexity']:.3f} | "
            f"{result['size_mb']:.0f} |" if other is not None else f"| {name} | {result['accuracy']:.3f} | - | "
            f"{result['perplexity']:.3f} | {result['size_mb']:.0f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", help="run only the methods whose name contains one of these")
    args = parser.parse_args()
    chosen = [n for n in METHODS if not args.only or any(o.lower() in n.lower() for o in args.only)]
    rows = ["| model | held out (229) | other style (72) | completion perplexity | size MiB |", "|---|---|---|---|---|"]
    for i, name in enumerate(chosen):
        path = EXAMPLE / f".bench-{slug(name)}.json"
        path.write_text(json.dumps(config_for(METHODS[name], name, with_fp32=i == 0), indent=2))
        try:
            proc = subprocess.run([sys.executable, "-m", "modelpress", "run", "--config", path.name, "--no-progress"],
                                  cwd=EXAMPLE, capture_output=True, text=True)
        finally:
            path.unlink()
        if proc.returncode != 0:
            rows.append(f"| {name} | FAILED: {proc.stderr.strip().splitlines()[-1][:120]} | | | |")
            continue
        metrics = json.loads((EXAMPLE / "runs" / "quant" / slug(name) / "metrics.json").read_text())
        extra = metrics.get("extra_data", {}).get("other_style", {})
        if i == 0:
            rows.append(row("fp32 (merged)", metrics["models"]["merge"], extra.get("merge")))
        rows.append(row(name, metrics["models"]["final"], extra.get("final")))
        print(rows[-1], flush=True)
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
