"""Do the emotion words in the cookbook's rows hold the SmolLM2 example back on phrases in another style?

    .venv/bin/python benchmarks/smollm2_label_words.py

Most training rows name their tone or a near word ("..., a moment of pure joy"); none of the 72
other-style phrases do, so the model might learn to copy the word instead of reading the phrase. This
trains the example's LoRA (as shipped: `examples/smollm2-tone/workflow.json`, merged fp32, no int4 step) twice
on the same eval split (the example's: 20% of the distinct phrases, data_seed 42, held out with modelpress's
own `split_examples`): on every training-split row, and on only the rows that name no emotion. It prints
how many rows name one and each run's accuracy on the eval split and on the other-style phrases. About
4 minutes a run on 2 cores.
"""

from __future__ import annotations

import collections
import copy
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

from modelpress.data import Example
from modelpress.data_split import split_examples

sys.path.insert(0, str(Path(__file__).resolve().parent))
from smollm2_seeds import EXAMPLE, ROOT, run_beside_example  # noqa: E402  (a sibling script)

DATA = ROOT / "examples" / "phi3-tone" / "data" / "dataset-classification.json"
# Each tone's word and its near forms, and a few near synonyms (whole words, any case).
EMOTION = re.compile(r"\b(joy\w*|happ\w*|delight\w*|cheer\w*|surpris\w*|astonish\w*|amaz\w*|shock\w*|fear\w*|"
                     r"terrif\w*|scar\w*|afraid|fright\w*|sad\w*|sorrow\w*|grie\w*|heartbr\w*)\b", re.IGNORECASE)


def write_rows(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def run(config: dict, train: str, held_out: str, work: Path, name: str) -> dict:
    config = copy.deepcopy(config)
    tone, other = config["data_configs"]  # the other style's paths resolve from the example's folder
    held = copy.deepcopy(tone)
    tone["load_dataset_config"]["data_files"] = [train]
    held.update(name="tone_eval")
    held["load_dataset_config"]["data_files"] = [held_out]
    config["data_configs"] = [tone, held, other]
    lora = config["passes"]["lora"]
    lora.pop("eval_dataset_size")
    lora["eval_data_config"] = "tone_eval"
    config["passes"] = {"lora": lora, "merge": config["passes"]["merge"]}
    config["evaluation"].update(evaluate_input_model=False, latency_samples=1, evaluate_passes=[])
    config["cache_dir"], config["output_dir"] = str(work / "cache"), str(work / f"out-{name}")
    metrics = run_beside_example(config, f"label-words-{name}")
    return {"eval": metrics["models"]["final"]["accuracy"],
            "other": metrics["extra_data"]["other_style"]["final"]["accuracy"]}


def main() -> int:
    config = json.loads((EXAMPLE / "workflow.json").read_text())
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    lora = config["passes"]["lora"]
    train, held = split_examples([Example(r["phrase"], r["tone"], f"row {i}") for i, r in enumerate(rows)],
                                 lora["eval_dataset_size"], lora["training_args"].get("data_seed", 42))
    held_phrases = {ex.prompt for ex in held}
    train_rows = [r for r in rows if r["phrase"] not in held_phrases]
    plain = [r for r in train_rows if not EMOTION.search(r["phrase"])]
    named = collections.Counter(r["tone"] for r in train_rows if EMOTION.search(r["phrase"]))
    total = collections.Counter(r["tone"] for r in train_rows)
    print("training rows naming an emotion: " + ", ".join(f"{t} {named[t]}/{total[t]}" for t in sorted(total)))
    work = Path(tempfile.mkdtemp(prefix="modelpress-label-words-"))
    held_file = write_rows(work / "eval.jsonl", [{"phrase": ex.prompt, "tone": ex.completion} for ex in held])
    print(f"{'trained on':<42} {'rows':>5} {'eval split':>10} {'other style':>11}")
    for name, subset in (("all", train_rows), ("no-emotion-word", plain)):
        result = run(config, write_rows(work / f"{name}.jsonl", subset), held_file, work, name)
        label = "every training-split row" if name == "all" else "only the rows naming no emotion"
        print(f"{label:<42} {len(subset):>5} {result['eval']:>10.3f} {result['other']:>11.3f}", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
