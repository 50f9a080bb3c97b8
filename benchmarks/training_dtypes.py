"""What each LoRA training dtype costs per step on this machine: the choice behind `torch_dtype`'s warning.

    .venv/bin/python benchmarks/training_dtypes.py [--tokens 512] [--rounds 4]

A forward and backward (no optimizer step) of a 2 x `tokens` batch through the tiny Phi-3 (`modelpress create-tiny-model`) with
LoRA (r 8 on qkv_proj and o_proj; the adapters float32), for each way a base can train:
- float32;
- float16 weights (what `torch_dtype: float16` loaded before 2026-12-06);
- float32 weights under fp16 autocast (Olive's meaning of float16, and modelpress's since);
- bfloat16 weights (`bfloat16-if-native` where the CPU multiplies bfloat16 natively).
It prints the fastest of `rounds` - 1 passes (the first, warm-up, left out) for each, and the ratio to float32,
side by side in one run. Both float16 rows are emulated on CPUs without AMX-FP16 or a GPU.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def step_seconds(folder: Path, dtype, autocast: bool, tokens: int, rounds: int) -> tuple[float, float]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    ids = torch.randint(0, 1000, (2, tokens))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
    model = get_peft_model(model, LoraConfig(r=8, target_modules=["qkv_proj", "o_proj"]))
    for weight in model.parameters():
        if weight.requires_grad:
            weight.data = weight.data.float()
    times, loss = [], float("nan")
    for _ in range(rounds):
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.float16, enabled=autocast):
            out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        times.append(time.perf_counter() - started)
        loss = out.loss.item()
    return min(times[1:]), loss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be at least 2 (the first is a warm-up, left out)")
    warnings.filterwarnings("ignore", category=FutureWarning)  # peft reads transformers' deprecated alias
    import torch

    with tempfile.TemporaryDirectory(prefix="modelpress-dtypes-") as tmp:
        folder = Path(tmp) / "tiny-phi3"
        subprocess.run([sys.executable, "-m", "modelpress", "create-tiny-model", "--out", str(folder)], check=True,
                       capture_output=True)
        rows = [("float32", torch.float32, False), ("float16 weights", torch.float16, False),
                ("float32 under fp16 autocast", torch.float32, True), ("bfloat16 weights", torch.bfloat16, False)]
        results = [(name, *step_seconds(folder, dtype, autocast, args.tokens, args.rounds))
                   for name, dtype, autocast in rows]
    base = results[0][1]
    print(f"{'base':<30} {'s per pass':>10} {'x float32':>10} {'loss':>8}")
    for name, seconds, loss in results:
        print(f"{name:<30} {seconds:>10.3f} {seconds / base:>10.2f} {loss:>8.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
