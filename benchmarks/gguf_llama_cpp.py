"""GGUF files that GgufExport wrote, answered by llama.cpp itself: accuracy and time per answer on labelled phrases.

    python benchmarks/gguf_llama_cpp.py FILE.gguf [FILE.gguf ...] [--data F.jsonl ...] [--threads 2]

Needs llama-cpp-python, which is not a modelpress dependency (PyPI has only its source, which compiles llama.cpp:
4 minutes on a 2-core AMD EPYC Zen 4); `make test` installs it in .venv. The script imports nothing from
modelpress, so any python with llama-cpp-python runs it. Each row of the data files (`phrase`, `tone`, the tone
example's columns) is sent as one user turn through the file's own chat template, answered greedily with at most
4 new tokens, and counted right when the stripped answer is the label, as `modelpress evaluate` counts it for
this example. Defaults: the 72 phrases in another style of the MiniLM example.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OTHER_STYLE = [ROOT / "examples" / "minilm-tone" / "data" / name
               for name in ("other-style.jsonl", "other-style-dev.jsonl")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--data", nargs="+", type=Path, default=OTHER_STYLE)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    from llama_cpp import Llama, __version__

    rows = [json.loads(line) for path in args.data for line in path.read_text().splitlines() if line.strip()]
    print(f"llama-cpp-python {__version__}, {args.threads} threads, {len(rows)} rows of "
          f"{', '.join(p.name for p in args.data)}\n")
    print(f"{'file':<60} {'accuracy':>8} {'ms/answer':>9}")
    for path in args.files:
        llm = Llama(model_path=str(path), n_ctx=512, n_threads=args.threads, verbose=False)
        right, started = 0, time.perf_counter()
        for row in rows:
            out = llm.create_chat_completion(messages=[{"role": "user", "content": row["phrase"]}], max_tokens=4,
                                             temperature=0)
            right += out["choices"][0]["message"]["content"].strip() == row["tone"]
        ms = (time.perf_counter() - started) / len(rows) * 1000
        print(f"{str(path)[-60:]:<60} {right / len(rows):>8.3f} {ms:>9.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
