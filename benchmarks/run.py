"""modelpress vs Microsoft Olive 0.13 on the same workflow, side by side in one run.

    .venv/bin/python benchmarks/run.py [--olive-venv /tmp/olive-peer/venv] [--steps 10]

The workflow is the seed's (LoRA -> merge -> int4 ModelBuilder) written in Olive 0.13's
schema (`examples/phi3-tone/olive-0.13-config.json`): both tools run the very same file,
on the same tiny Phi-3 and the same tokens (join to 2048-token sequences, 10 optimizer
steps of 4 sequences = 81,920 training tokens). Olive is installed by
`benchmarks/setup_olive.sh` into its own venv; without it only modelpress rows are printed.

Rows:
- Olive 0.13, the config as written (it asks for eager attention);
- Olive 0.13, the same file without its `attn_implementation: eager` line: PyTorch SDPA, the attention
  that the seed's config gets in modelpress (it names none), so the seed row has an equal-attention peer;
- modelpress, the seed's own config as written (`examples/phi3-tone/seed-config.json`, the old Olive
  schema): the same workflow, plus what that config asks for beyond Olive's file (a 30% eval split
  and its eval loss) and modelpress's evaluation of the input and final models (accuracy, latency);
- modelpress, the config as written (it also evaluates the input and final model: extra work);
- modelpress, the same config with `"evaluation": {"enabled": false}`: exactly Olive's work;
- the same, with `THP_MEM_ALLOC_ENABLE=0`: without the huge-page tensors that the `modelpress`
  command turns on (`modelpress/runtime.py`), to show what that setting contributes;
- modelpress, the same config without the `attn_implementation: eager` line (PyTorch SDPA):
  what a modelpress user gets by default; not the same settings as Olive, shown apart.
Wall times are for whole commands, including Python start-up; peak RSS is the largest sum
of resident memory over the command's process tree, sampled every 50 ms. Before the first timed
command both tools are warmed, untimed: each venv's python imports torch, transformers, peft and
onnxruntime_genai once (`warm_up`), so neither pays the first load from disk in a timed run.
The "LoRA pass s" column (and the "LoRA pass" ratio) is not the same span for both: modelpress's is its
LoRA step in the run history, which includes the step's imports and model load; Olive's is the time its
log's "Pass lora:... finished in" line gives.

Then each pass's time and peak memory (modelpress's run history; Olive logs times only), and a
search: `examples/phi3-tone/search.json` (LoRA, merge, then 6 ModelBuilder candidates, each
measured on the held-out rows) cold and fully cached. Olive's ModelBuilder declares no search
space, so the search has no Olive row.

Last, evaluation with and without batching: the demo's fp32 input model (PyTorch) and its int4
output (onnxruntime-genai) generate the answers of the demo's 229 held-out rows one at a time and
16 at a time, side by side, with the count of answers that agree (`eval_batching`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "phi3-tone"
MODELPRESS = [sys.executable, "-m", "modelpress"]
SEQ_LEN, BATCH, ACCUM = 2048, 1, 4
OLIVE_SDPA = "Olive 0.13 (same file without the eager line)"
SEED_ROW, SDPA_ROW = "modelpress (the seed's config as written)", "modelpress (no evaluation, default SDPA attention)"
SDPA_ROWS = (SEED_ROW, SDPA_ROW)  # the modelpress rows that run PyTorch SDPA, as OLIVE_SDPA does


def measure(cmd: list[str], cwd: Path, env: dict | None = None) -> dict:
    """Wall time, peak process-tree RSS and output of one command (`env`: extra variables)."""
    started = time.perf_counter()
    log = cwd / f"log-{int(started * 1000)}.txt"
    with open(log, "w") as out:
        proc = psutil.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        peak = 0
        while proc.poll() is None:
            try:
                tree = [proc, *proc.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.05)
    wall = time.perf_counter() - started
    text = log.read_text(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{text[-3000:]}")
    return {"wall_s": wall, "peak_mb": peak / 2**20, "log": text}


def workflow(model: Path, work: Path, tag: str, steps: int, *, evaluation: bool = True, eager: bool = True) -> Path:
    raw = (EXAMPLE / "olive-0.13-config.json").read_text()
    config = json.loads(raw)
    config["input_model"]["model_path"] = str(model)
    config["data_configs"][0]["load_dataset_config"]["data_files"] = [str(EXAMPLE / "data" / "dataset-classification.json")]
    config["passes"]["lora"]["training_args"]["max_steps"] = steps
    config["cache_dir"], config["output_dir"] = str(work / tag / "cache"), str(work / tag / "out")
    if not evaluation:
        config["evaluation"] = {"enabled": False}
    if not eager:
        del config["input_model"]["load_kwargs"]["attn_implementation"]
    (work / tag).mkdir(parents=True)
    path = work / tag / "config.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def seed_workflow(model: Path, work: Path, steps: int) -> Path:
    """The seed's own config (old Olive schema, `examples/phi3-tone/seed-config.json`) as written, with
    only the model and data paths, the step count and the output folders pointed at this run."""
    config = json.loads((EXAMPLE / "seed-config.json").read_text())
    config["input_model"]["config"]["hf_config"]["model_name"] = str(model)
    config["data_configs"][0]["load_dataset_config"]["params"]["data_files"] = str(EXAMPLE / "data" /
                                                                                  "dataset-classification.json")
    config["passes"]["lora"]["config"]["training_args"]["max_steps"] = steps
    config["engine"]["cache_dir"], config["engine"]["output_dir"] = str(work / "seed" / "cache"), str(work / "seed" / "out")
    (work / "seed").mkdir(parents=True)
    path = work / "seed" / "config.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def _output_dir(config: Path) -> Path:
    raw = json.loads(config.read_text())
    return Path(raw.get("output_dir") or raw["engine"]["output_dir"])


def lora_seconds_modelpress(config: Path) -> float:
    out = _output_dir(config)
    steps = json.loads((Path(out) / "run_history.json").read_text())["steps"]
    return next(s["seconds"] for s in steps if s["type"] == "LoRA")


def lora_seconds_olive(log: str) -> float:
    return pass_seconds_olive(log).get("lora", float("nan"))


def pass_seconds_olive(log: str) -> dict[str, float]:
    return {name: float(sec) for name, sec in re.findall(r"Pass (\w+):\w+ finished in ([\d.]+) seconds", log)}


def pass_rows_modelpress(config: Path) -> list[dict]:
    out = _output_dir(config)
    return json.loads((Path(out) / "run_history.json").read_text())["steps"]


WARM_UP = "import torch, transformers, peft, onnxruntime_genai"


def warm_up(olive_bin: Path | None, *others: Path | None) -> None:
    """Untimed: import the heavy libraries once in modelpress's venv and, when given, Olive's (the python beside
    `olive_bin`) and the `others` pythons, so that no timed command is the first to read them from disk."""
    pythons = [sys.executable] + ([str(olive_bin.parent / "python")] if olive_bin is not None else [])
    pythons += [str(python) for python in others if python is not None]
    for python in pythons:
        subprocess.run([python, "-c", WARM_UP], check=True, capture_output=True)


def help_time(cmd: list[str], cwd: Path, repeats: int = 3) -> float:
    return min(measure(cmd, cwd)["wall_s"] for _ in range(repeats))


def run_modelpress(model: Path, work: Path, tag: str, steps: int, env: dict | None = None, **kw) -> dict:
    config = seed_workflow(model, work, steps) if tag == "seed" else workflow(model, work, tag, steps, **kw)
    cold = measure([*MODELPRESS, "run", "--config", str(config), "--no-progress"], work, env)
    lora_s = lora_seconds_modelpress(config)  # read before the re-run overwrites the history
    steps = pass_rows_modelpress(config)
    warm = measure([*MODELPRESS, "run", "--config", str(config), "--no-progress"], work, env)
    return {"cold": cold, "warm": warm, "lora_s": lora_s, "steps": steps}


def run_olive(olive_bin: Path, model: Path, work: Path, steps: int, eager: bool = True) -> dict:
    config = workflow(model, work, "olive" if eager else "olive-sdpa", steps, eager=eager)
    cold = measure([str(olive_bin), "run", "--config", str(config)], work)
    warm = measure([str(olive_bin), "run", "--config", str(config)], work)
    steps = [{"pass": name, "seconds": sec, "peak_rss_mb": None} for name, sec in pass_seconds_olive(cold["log"]).items()]
    return {"cold": cold, "warm": warm, "lora_s": lora_seconds_olive(cold["log"]), "steps": steps}


def run_search(model: Path, work: Path, steps: int) -> dict:
    """The phi3-tone search example on the benchmark's tiny model, cold then fully cached."""
    config = json.loads((EXAMPLE / "search.json").read_text())
    config["input_model"]["model_path"] = str(model)
    config["data_configs"][0]["load_dataset_config"]["data_files"] = [str(EXAMPLE / "data" / "dataset-classification.json")]
    config["passes"]["lora"]["training_args"]["max_steps"] = steps
    config["cache_dir"], config["output_dir"] = str(work / "search" / "cache"), str(work / "search" / "out")
    (work / "search").mkdir()
    path = work / "search" / "config.json"
    path.write_text(json.dumps(config, indent=2))
    cmd = [*MODELPRESS, "run", "--config", str(path), "--no-progress"]
    cold = measure(cmd, work)
    result = json.loads((work / "search" / "out" / "metrics.json").read_text())["search"]
    history = pass_rows_modelpress(path)
    warm = measure(cmd, work)
    return {"cold": cold, "warm": warm, "search": result, "steps": history}


def eval_batching(model: Path, work: Path, batch_size: int = 16) -> dict:
    """The demo's input (fp32 PyTorch) and final (int4 genai) models on its eval split: every answer generated
    one at a time, then `batch_size` at a time, in this process with each model loaded once; then one whole
    `evaluate` as a run does it (batched answers, the loss, latency on its sample), model load included.
    """
    from modelpress.config import load_config
    from modelpress.context import DataPlan
    from modelpress.models import ModelRef
    from modelpress.passes.catalog import HF

    path, new_tokens = _demo_without_evaluation(model, work / "eval-batching")
    examples = DataPlan(load_config(path), path.parent / "data-cache").eval_set().examples
    models = {"input (fp32 PyTorch)": ModelRef(HF, model, id="input", task={"task": "text-generation"}),
              "final (int4 genai)": ModelRef.load(path.parent / "out" / "model")}
    rows = {name: _time_answers(ref, examples, new_tokens, batch_size) for name, ref in models.items()}
    import torch  # loaded by now; its thread count matters most on a shared CPU (OMP_NUM_THREADS sets it)

    return {"batch_size": batch_size, "torch_threads": torch.get_num_threads(), "rows": rows}


def _demo_without_evaluation(model: Path, folder: Path) -> tuple[Path, int]:
    """Run the demo (reused from `folder`'s cache when it is there); its config and max_new_tokens."""
    folder.mkdir(exist_ok=True)
    config = json.loads((EXAMPLE / "demo.json").read_text())
    config["input_model"]["model_path"] = str(model)
    config["data_configs"][0]["load_dataset_config"]["data_files"] = [str(EXAMPLE / "data" / "dataset-classification.json")]
    config["cache_dir"], config["output_dir"] = str(folder / "cache"), str(folder / "out")
    new_tokens = config["evaluation"]["max_new_tokens"]
    config["evaluation"] = {"enabled": False}  # evaluation is what is timed, below
    path = folder / "config.json"
    path.write_text(json.dumps(config, indent=2))
    measure([*MODELPRESS, "run", "--config", str(path), "--no-progress"], folder)
    return path, new_tokens


def _time_answers(ref, examples: list, new_tokens: int, batch_size: int) -> dict:
    from modelpress.evaluate import evaluate, predict
    from modelpress.runners import make_runner

    runner = make_runner(ref)
    predict(runner, examples[:4], True, new_tokens, batch_size)  # warm-up, untimed
    answers, seconds = {}, {}
    for size in (1, batch_size):
        started = time.perf_counter()
        answers[size] = predict(runner, examples, True, new_tokens, size)
        seconds[size] = time.perf_counter() - started
    started = time.perf_counter()
    evaluate(ref, examples, True, new_tokens, with_accuracy=True, show_progress=False, batch_size=batch_size)
    return {"examples": len(examples), "one_at_a_time_s": seconds[1], "batched_s": seconds[batch_size],
            "same_predictions": sum(a == b for a, b in zip(answers[1], answers[batch_size])),
            "evaluate_s": time.perf_counter() - started}


def eval_batching_table(result: dict) -> str:
    size = result["batch_size"]
    lines = [["model", "examples", "one at a time s", f"batch {size} s", "speed-up", "same predictions",
              "whole evaluate s"]]
    for name, r in result["rows"].items():
        lines.append([name, str(r["examples"]), f"{r['one_at_a_time_s']:.2f}", f"{r['batched_s']:.2f}",
                      f"{r['one_at_a_time_s'] / r['batched_s']:.1f}x", f"{r['same_predictions']} of {r['examples']}",
                      f"{r['evaluate_s']:.2f}"])
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def step_table(rows: list[tuple[str, dict]]) -> str:
    """Each pass's time and peak RSS for each run (cold)."""
    lines = [["run", "pass", "seconds", "peak RSS MiB"]]
    for name, r in rows:
        for step in r["steps"]:
            if step.get("cache", "miss") == "miss" and not step["pass"].startswith("evaluate"):
                peak = step.get("peak_rss_mb")
                lines.append([name, step["pass"], f"{step['seconds']:.1f}", "-" if peak is None else f"{peak:.0f}"])
    widths = [max(len(line[i]) for line in lines) for i in range(4)]
    out = ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def table(rows: list[tuple[str, dict]], tokens: int) -> str:
    headers = ["run", "cold wall s", "LoRA pass s (modelpress incl. imports, load)", "train tok/s", "peak RSS MiB",
               "cached re-run s"]
    lines = [headers]
    for name, r in rows:
        lines.append([name, f"{r['cold']['wall_s']:.1f}", f"{r['lora_s']:.1f}", f"{tokens / r['lora_s']:.0f}",
                      f"{r['cold']['peak_mb']:.0f}", f"{r['warm']['wall_s']:.1f}"])
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    out = ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def add_olive_venv(parser: argparse.ArgumentParser) -> None:
    """`--olive-venv`: where `benchmarks/setup_olive.sh` installed Olive 0.13 (default: OLIVE_VENV or /tmp)."""
    parser.add_argument("--olive-venv", default=os.environ.get("OLIVE_VENV", "/tmp/olive-peer/venv"))


def olive_binary(args, needed: bool = True) -> Path | None:
    """The `olive` command of `--olive-venv`; when it is missing, None after saying how to install it (`needed`:
    the script cannot run without it)."""
    olive_bin = Path(args.olive_venv) / "bin" / "olive"
    if olive_bin.exists():
        return olive_bin
    print(f"Olive not found at {olive_bin}: run benchmarks/setup_olive.sh " + ("first." if needed else "to compare.\n"))
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_olive_venv(parser)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--search-steps", type=int, default=300, help="LoRA steps in the search benchmark")
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args()
    olive_bin = olive_binary(args, needed=False)
    work = Path(tempfile.mkdtemp(prefix="modelpress-bench-"))
    model = work / "tiny-phi3"
    subprocess.run([*MODELPRESS, "create-tiny-model", "--out", str(model)], check=True, capture_output=True)
    warm_up(olive_bin)  # both venvs, untimed, before the first timed run
    tokens = args.steps * SEQ_LEN * BATCH * ACCUM
    rows = []
    if olive_bin is not None:
        rows.append(("Olive 0.13 (config as written)", run_olive(olive_bin, model, work, args.steps)))
        rows.append((OLIVE_SDPA, run_olive(olive_bin, model, work, args.steps, eager=False)))
    rows.append((SEED_ROW, run_modelpress(model, work, "seed", args.steps)))
    rows.append(("modelpress (config as written, + evaluation)", run_modelpress(model, work, "mp", args.steps)))
    rows.append(("modelpress (same work as Olive: no evaluation)",
                 run_modelpress(model, work, "mp-noeval", args.steps, evaluation=False)))
    rows.append(("modelpress (same work, huge-page tensors off)",
                 run_modelpress(model, work, "mp-nothp", args.steps, evaluation=False,
                                env={"THP_MEM_ALLOC_ENABLE": "0"})))
    rows.append((SDPA_ROW, run_modelpress(model, work, "mp-sdpa", args.steps, evaluation=False, eager=False)))
    print(f"workflow: LoRA {args.steps} steps x {BATCH * ACCUM} x {SEQ_LEN} tokens ({tokens} tokens) -> merge -> "
          f"int4 ModelBuilder, tiny Phi-3, {os.cpu_count()} CPU cores\n")
    print(table(rows, tokens))
    print("\nper pass (cold runs; Olive logs no per-pass memory):\n" + step_table(rows))
    search = run_search(model, work, args.search_steps)
    found = search["search"]
    evals = [s for s in search["steps"] if s["pass"].startswith("evaluate") and s["cache"] == "miss"]
    print(f"\nsearch (examples/phi3-tone/search.json, LoRA {args.search_steps} steps): {found['evaluated']} candidates, "
          f"{found['failed']} failed, best #{found['best']}\n"
          f"  wall {search['cold']['wall_s']:.1f} s cold (search loop {found['seconds']:.1f} s; "
          f"{len(evals)} evaluations took {sum(s['seconds'] for s in evals):.1f} s), "
          f"{search['warm']['wall_s']:.1f} s fully cached; peak RSS {search['cold']['peak_mb']:.0f} MiB")
    print(step_table([("search", search)]))
    batching = eval_batching(model, work)
    print(f"\nevaluation answers, demo eval split (examples/phi3-tone/demo.json, LoRA 600 steps), one at a time "
          f"against batched (PyTorch on {batching['torch_threads']} threads):\n" + eval_batching_table(batching))
    helps = {"modelpress --help": help_time([*MODELPRESS, "--help"], work)}
    if olive_bin is not None:
        helps["olive --help"] = help_time([str(olive_bin), "--help"], work)
    print("\n" + "\n".join(f"{name}: {seconds:.2f} s" for name, seconds in helps.items()))
    if rows[0][0].startswith("Olive"):
        olive, olive_sdpa = rows[0][1], dict(rows)[OLIVE_SDPA]
        for name, r in rows[2:]:
            print(f"Olive / {name}: cold {olive['cold']['wall_s'] / r['cold']['wall_s']:.2f}x, "
                  f"LoRA pass (modelpress incl. imports, load) {olive['lora_s'] / r['lora_s']:.2f}x, "
                  f"peak memory {r['cold']['peak_mb'] / olive['cold']['peak_mb']:.2f} of Olive's, "
                  f"cached re-run {olive['warm']['wall_s'] / r['warm']['wall_s']:.2f}x")
        print("with the same attention on both sides (PyTorch SDPA):")
        for name, r in rows[2:]:
            if name in SDPA_ROWS:
                print(f"Olive (SDPA) / {name}: cold {olive_sdpa['cold']['wall_s'] / r['cold']['wall_s']:.2f}x, "
                      f"LoRA pass (modelpress incl. imports, load) {olive_sdpa['lora_s'] / r['lora_s']:.2f}x, "
                      f"peak memory {r['cold']['peak_mb'] / olive_sdpa['cold']['peak_mb']:.2f} of Olive's")
    if args.json:
        def clean(r: dict) -> dict:
            return {k: ({x: y for x, y in v.items() if x != "log"} if k in ("cold", "warm") else v) for k, v in r.items()}

        Path(args.json).write_text(json.dumps({name: clean(r) for name, r in rows}
                                              | {"search": clean(search), "help_s": helps,
                                                 "eval_batching": batching}, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
