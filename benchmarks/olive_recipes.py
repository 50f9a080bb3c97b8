"""How many of Microsoft's published Olive LLM recipes does `modelpress validate` accept?

Point it at a checkout of github.com/microsoft/olive-recipes:

    python benchmarks/olive_recipes.py --recipes ../olive-recipes [--show-errors]

It takes every JSON config there whose input model is an `HfModel` for text generation and whose
systems name no vendor/NPU execution provider (the LLM recipes for CPU, CUDA and DirectML), validates
each one without touching the network, and prints how many are accepted, how many are
refused because they name a vendor pass (a clear refusal, by design), and the first problem
of every problem in the rest, most frequent first.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

LLM_TASKS = (None, "text-generation", "text-generation-with-past")
VENDOR_EPS = {"OpenVINOExecutionProvider", "QNNExecutionProvider", "WebGpuExecutionProvider",
              "NvTensorRTRTXExecutionProvider", "VitisAIExecutionProvider", "MIGraphXExecutionProvider"}


def llm_recipes(root: Path) -> list[Path]:
    found = []
    for path in sorted(root.rglob("*.json")):
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            continue
        if not (isinstance(raw, dict) and "passes" in raw and isinstance(raw.get("input_model"), dict)):
            continue
        if str(raw["input_model"].get("type", "")).lower() != "hfmodel":
            continue
        if raw["input_model"].get("task") not in LLM_TASKS:  # speech, vision and embedding models
            continue
        eps = {ep for system in (raw.get("systems") or {}).values() if isinstance(system, dict)
               for acc in system.get("accelerators") or [] if isinstance(acc, dict)
               for ep in acc.get("execution_providers") or []}
        if not eps & VENDOR_EPS:
            found.append(path)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", type=Path, required=True, help="a checkout of microsoft/olive-recipes")
    parser.add_argument("--show-errors", action="store_true", help="print every refused recipe's first problem")
    args = parser.parse_args()
    from modelpress.config.normalize import load_config
    from modelpress.config.olive_tables import TARGETS
    from modelpress.errors import ConfigError

    recipes = llm_recipes(args.recipes)
    accepted, vendor, refused = [], [], collections.Counter()
    for path in recipes:
        try:
            load_config(path)
            accepted.append(path)
        except ConfigError as err:
            if any(TARGETS in (p.hint or "") for p in err.problems):
                vendor.append(path)
                continue
            first = err.problems[0]
            for problem in err.problems:
                refused[f"{problem.path.split('.')[-1]}: {problem.message}"[:110]] += 1
            if args.show_errors:
                print(f"{path.relative_to(args.recipes)}\n    {first}", file=sys.stderr)
    print(f"| LLM recipes (HfModel text generation, CPU/CUDA/DML systems) | {len(recipes)} |")
    print("|---|---|")
    print(f"| accepted by `modelpress validate` | {len(accepted)} |")
    print(f"| refused: they name a vendor/NPU pass (clear refusal by design) | {len(vendor)} |")
    print(f"| refused for another reason | {len(recipes) - len(accepted) - len(vendor)} |")
    print("\nproblems in the refused recipes, most frequent first:")
    for reason, count in refused.most_common():
        print(f"|   {reason} | {count} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
