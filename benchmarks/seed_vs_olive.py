"""The seed's config in modelpress against Olive 0.13, repeated: how the cold-run ratio spreads.

    .venv/bin/python benchmarks/seed_vs_olive.py [--rounds 5] [--olive-venv /tmp/olive-peer/venv]
        [--base-venv /tmp/modelpress-base/venv]

`benchmarks/run.py` runs each row once, and one run of Olive's eager-attention workflow has taken
anywhere from 61 to 74 s on the same machine. This script runs the cold commands that the
issue's target compares, round after round, rotating their order so that no row always runs first
or last on a machine that speeds up or slows down:
- Olive 0.13 on `examples/phi3-tone/olive-0.13-config.json` as written (eager attention);
- Olive 0.13 on the same file without its `attn_implementation: eager` line (PyTorch SDPA);
- modelpress on the seed's own config as written (`examples/phi3-tone/seed-config.json`, old schema,
  PyTorch SDPA), with its evaluation of the input and final models, from this venv (`make setup`'s, which
  carries the test extras, bitsandbytes among them);
- the same from `--base-venv` when it exists: modelpress as `pip install modelpress` installs it, no extras
  (`benchmarks/setup_modelpress.sh`; `make bench` builds it). Olive's venv has no bitsandbytes either, and peft
  imports it whenever it is installed, so this row is the like-for-like install.
Every command starts from empty cache and output folders (the workflow files and the tiny Phi-3 are
those of `run.py`). Before the first round both venvs are warmed, untimed (`run.warm_up`: each venv's
python imports torch, transformers, peft and onnxruntime_genai once), so the first timed command of
either tool does not pay the first load from disk. It prints each round's wall times and peak memory, then for
each pair of an Olive row and a modelpress row the ratio Olive / modelpress of each round, their median, and in
how many rounds it reached 2x.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import (MODELPRESS, add_olive_venv, measure, olive_binary, seed_workflow,  # noqa: E402  (a sibling script)
                 warm_up, workflow)

OLIVE, OLIVE_SDPA, SEED = "Olive 0.13 (as written, eager)", "Olive 0.13 (without the eager line)", "modelpress (seed config)"
SEED_BASE = "modelpress (seed config, no extras)"
FOLDERS = {OLIVE: "olive", OLIVE_SDPA: "olive-sdpa", SEED: "seed", SEED_BASE: "seed"}


def command(row: str, model: Path, work: Path, olive_bin: Path, steps: int, base_python: Path | None) -> list[str]:
    if row in (SEED, SEED_BASE):
        python = [str(base_python), "-m", "modelpress"] if row == SEED_BASE else MODELPRESS
        return [*python, "run", "--config", str(seed_workflow(model, work, steps)), "--no-progress"]
    config = workflow(model, work, "olive" if row == OLIVE else "olive-sdpa", steps, eager=row == OLIVE)
    return [str(olive_bin), "run", "--config", str(config)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    add_olive_venv(parser)
    parser.add_argument("--base-venv", default=os.environ.get("MODELPRESS_BASE_VENV", "/tmp/modelpress-base/venv"),
                        help="modelpress installed with no extras (benchmarks/setup_modelpress.sh); skipped if absent")
    args = parser.parse_args()
    olive_bin = olive_binary(args)
    if olive_bin is None:
        return 1
    base_python = Path(args.base_venv) / "bin" / "python"
    if not base_python.exists():
        print(f"No venv at {args.base_venv}: the no-extras row is left out (benchmarks/setup_modelpress.sh makes it)")
        base_python = None
    root = Path(tempfile.mkdtemp(prefix="modelpress-seed-olive-"))
    model = root / "tiny-phi3"
    subprocess.run([*MODELPRESS, "create-tiny-model", "--out", str(model)], check=True, capture_output=True)
    warm_up(olive_bin, base_python)  # every venv, untimed, before the first timed round
    rows = [OLIVE, OLIVE_SDPA, SEED] + ([SEED_BASE] if base_python else [])
    runs: dict[str, list[dict]] = {row: [] for row in rows}
    print(f"{'round':<6} {'row':<38} {'cold wall s':>11} {'peak RSS MiB':>12}")
    for i in range(args.rounds):
        for row in rows[i % len(rows):] + rows[:i % len(rows)]:
            work = root / f"round-{i}"
            shutil.rmtree(work / FOLDERS[row], ignore_errors=True)
            work.mkdir(exist_ok=True)
            result = measure(command(row, model, work, olive_bin, args.steps, base_python), work)
            runs[row].append(result)
            print(f"{i + 1:<6} {row:<38} {result['wall_s']:>11.1f} {result['peak_mb']:>12.0f}", flush=True)
    print()
    for olive_row, seed_row in itertools.product((OLIVE, OLIVE_SDPA), rows[2:]):
        ratios = [o["wall_s"] / s["wall_s"] for o, s in zip(runs[olive_row], runs[seed_row])]
        memory = [s["peak_mb"] / o["peak_mb"] for o, s in zip(runs[olive_row], runs[seed_row])]
        print(f"{olive_row} / {seed_row}: cold " + ", ".join(f"{r:.2f}x" for r in ratios)
              + f"; median {statistics.median(ratios):.2f}x; >= 2x in {sum(r >= 2 for r in ratios)} of "
              f"{len(ratios)}; peak memory {min(memory):.2f}-{max(memory):.2f} of Olive's")
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
