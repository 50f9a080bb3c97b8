"""The tone each SmolLM2 model gives the example's other-style phrases when it must pick one of the four
labels: the label whose tokens (and the turn end) are most likely after the prompt. A look at the ceiling of
the other-style bar, not part of the example.

    .venv/bin/python benchmarks/smollm2_labels.py [--merged FOLDER]

Rows: the untrained SmolLM2-135M-Instruct (the example's GGUF, converted) with the example's prompts (the
chat template's default system prompt), and with a system prompt and a question that name the four labels;
the fine-tuned merged fp32 model (default: the merge pass of the last `make smollm2`, found through
runs/output/run_history.json) with the example's prompts, as it is, and with its training data's label
frequencies divided out (score - a * log prior, a = 1 and 2: the correction for a test set whose classes are
balanced, which the other-style phrases are). Each row prints accuracy on the 72 phrases and the misses
(expected -> picked). Float32, PyTorch; about 30 s a row on 2 cores. Needs `make smollm2`'s install.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "smollm2-tone"
sys.path.insert(0, str(Path(__file__).resolve().parent))

LABELS = ["joy", "surprise", "fear", "sadness"]
TASK = "Classify the emotional tone of the user's phrase. Answer with exactly one word: joy, surprise, fear, or sadness."
QUESTION = "What is the tone of this phrase: joy, surprise, fear or sadness?\n"


def label_scores(folder: Path, prompts: list[str]) -> list[list[float]]:
    """log p(label, turn end | prompt) for each prompt and label, one forward of the four per prompt."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tails = [tokenizer(label, add_special_tokens=False).input_ids + [tokenizer.eos_token_id] for label in LABELS]
    scores = []
    for prompt in prompts:
        head = tokenizer(prompt, add_special_tokens=False).input_ids
        width = len(head) + max(map(len, tails))
        ids = torch.tensor([head + t + [tokenizer.eos_token_id] * (width - len(head) - len(t)) for t in tails])
        with torch.inference_mode():
            logp = model(input_ids=ids).logits.double().log_softmax(-1)
        scores.append([sum(float(logp[i, len(head) - 1 + k, token]) for k, token in enumerate(t))
                       for i, t in enumerate(tails)])
    return scores


def report(name: str, scores: list[list[float]], gold: list[str], prior: list[float] | None = None, a: float = 0.0):
    picked = [LABELS[max(range(len(LABELS)), key=lambda i: s[i] - (a * prior[i] if prior else 0.0))] for s in scores]
    misses = Counter((g, p) for g, p in zip(gold, picked) if g != p)
    accuracy = sum(g == p for g, p in zip(gold, picked)) / len(gold)
    print(f"{name:<58} {accuracy:>6.3f}   " + ", ".join(f"{g}->{p} {n}" for (g, p), n in misses.most_common()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--merged", type=Path, help="the fine-tuned merged model folder")
    args = parser.parse_args()

    from smollm2 import converted_model
    from transformers import AutoTokenizer

    from modelpress.config.normalize import load_config
    from modelpress.context import DataPlan

    merged = args.merged
    if merged is None:
        history = json.loads((EXAMPLE / "runs" / "output" / "run_history.json").read_text())
        merge = next(step["output_id"] for step in history["steps"] if step["pass"] == "merge")
        merged = ROOT / "examples" / "model-cache" / "passes" / merge / "model"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        config = load_config(EXAMPLE / "workflow.json")
        base = converted_model(work)
        plan = DataPlan(config, work / "cache", base)
        examples = plan.examples("other_style")
        train = plan.examples("tone")
        gold = [ex.completion for ex in examples]
        counts = Counter(ex.completion for ex in train)
        prior = [math.log(counts[label] / len(train)) for label in LABELS]
        tokenizer = AutoTokenizer.from_pretrained(base)
        phrases = [json.loads(line)["phrase"] for f in ("other-style.jsonl", "other-style-dev.jsonl")
                   for line in (ROOT / "examples" / "minilm-tone" / "data" / f).read_text().splitlines()]
        assert len(phrases) == len(examples) and all(p in ex.prompt for p, ex in zip(phrases, examples))
        task = [tokenizer.apply_chat_template([{"role": "system", "content": TASK},
                                               {"role": "user", "content": QUESTION + p}],
                                              tokenize=False, add_generation_prompt=True) for p in phrases]
        print(f"{len(examples)} other-style phrases; training rows' label frequencies: "
              + ", ".join(f"{label} {counts[label] / len(train):.2f}" for label in LABELS) + "\n")
        print(f"{'model, prompt':<58} {'acc':>6}   misses (expected->picked)")
        report("untrained, the example's prompts", label_scores(base, [ex.prompt for ex in examples]), gold)
        report("untrained, system prompt and question naming the labels", label_scores(base, task), gold)
        tuned = label_scores(merged, [ex.prompt for ex in examples])
        report("fine-tuned merged, the example's prompts", tuned, gold)
        for a in (1.0, 2.0):
            report(f"  the same, training label frequencies divided out (a={a:g})", tuned, gold, prior, a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
