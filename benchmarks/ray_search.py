"""The 6-candidate search on a local Ray cluster against the sequential search, wall time, side by side.

    .venv/bin/python benchmarks/ray_search.py [--steps 300]

Trains the search's shared prefix (the demo's LoRA, `--steps` steps, and the merge) once on the
tiny Phi-3; then runs `examples/phi3-tone/search.json` three ways, each from a copy of that cache
(so each builds its six int4/int8 candidates and measures them and the input model afresh):
here, one candidate at a time; on a local Ray cluster started for the run with max_concurrency 1
(what the cluster itself costs); and with max_concurrency 2 (candidates two at a time, one CPU
each). Prints wall time, the search loop's own time, the best candidate and whether every
candidate measured the same accuracy as the sequential run; then each candidate's p50 latency as each
run timed it (two evaluations at once on one node share its cores).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "phi3-tone"
MODELPRESS = [sys.executable, "-m", "modelpress"]


def _config(model: Path, work: Path, tag: str, steps: int, ray: dict | None, prefix_only: bool = False) -> Path:
    raw = json.loads((EXAMPLE / "search.json").read_text())
    raw["input_model"]["model_path"] = str(model)
    raw["data_configs"][0]["load_dataset_config"]["data_files"] = [str(EXAMPLE / "data" / "dataset-classification.json")]
    raw["passes"]["lora"]["training_args"]["max_steps"] = steps
    if prefix_only:
        raw["passes"] = {k: v for k, v in raw["passes"].items() if k != "builder"}
        raw["evaluation"] = {"enabled": False}
        for key in ("evaluators", "evaluator", "search_strategy"):
            raw.pop(key)
    if ray is not None:
        raw["systems"] = {"cluster": {"type": "Ray", "pass_resources": {"lora": {"num_cpus": 2}}, **ray}}
        raw["host"] = raw["target"] = "cluster"
    raw["cache_dir"], raw["output_dir"] = str(work / tag / "cache"), str(work / tag / "out")
    path = work / f"{tag}.json"
    path.write_text(json.dumps(raw))
    return path


def _run(path: Path) -> float:
    started = time.perf_counter()
    proc = subprocess.run([*MODELPRESS, "run", "--config", str(path), "--no-progress"], capture_output=True, text=True)
    if proc.returncode not in (0, 3):
        sys.exit(f"{path.name} failed:\n{proc.stdout}\n{proc.stderr}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="LoRA steps of the shared prefix")
    args = parser.parse_args()
    from modelpress.tiny import create_tiny_model

    with tempfile.TemporaryDirectory(prefix="modelpress-ray-bench-") as tmp:
        work = Path(tmp)
        model = create_tiny_model(work / "tiny-phi3")
        prefix = _config(model, work, "prefix", args.steps, None, prefix_only=True)
        print(f"training the shared prefix (LoRA {args.steps} steps, merge) once ... {_run(prefix):.1f} s")
        runs = {"sequential, here": None, "Ray, max_concurrency 1": {"max_concurrency": 1},
                "Ray, max_concurrency 2": {"max_concurrency": 2}}
        rows = []
        for tag, (name, ray) in zip(("seq", "ray1", "ray2"), runs.items()):
            shutil.copytree(work / "prefix" / "cache", work / tag / "cache")
            seconds = _run(_config(model, work, tag, args.steps, ray))
            search = json.loads((work / tag / "out" / "metrics.json").read_text())["search"]
            rows.append((name, seconds, search))
        reference = [c["metrics"].get("accuracy-accuracy_score") for c in rows[0][2]["candidates"]]
        print(f"\n6-candidate search (examples/phi3-tone/search.json), {_cpus()} CPUs, tiny Phi-3, "
              "builds and evaluations from cold (the LoRA prefix cached)")
        header = ("run", "wall s", "search loop s", "vs sequential", "best", "same accuracies")
        table = [header] + [(name, f"{s:.1f}", f"{r['seconds']:.1f}", f"{rows[0][1] / s:.2f}x", f"#{r['best']}",
                             "yes" if [c["metrics"].get("accuracy-accuracy_score") for c in r["candidates"]]
                             == reference else "no") for name, s, r in rows]
        _print(table)
        latency = "latency-p50"
        print("\nlatency p50 ms of each candidate (the goal it is judged by), as each run timed it")
        _print([("run", *(f"#{c['id']}" for c in rows[0][2]["candidates"]))]
               + [(name, *(f"{c['metrics'][latency]:.2f}" if c["metrics"].get(latency) else "-"
                           for c in r["candidates"])) for name, _, r in rows])


def _print(table: list[tuple]) -> None:
    widths = [max(len(row[i]) for row in table if i < len(row)) for i in range(max(map(len, table)))]  # ragged rows too
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    main()
