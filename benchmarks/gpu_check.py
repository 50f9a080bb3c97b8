"""The GPU check (run by benchmarks/gpu_check.sh on a machine with one CUDA GPU; CI never has one).

At Phi-3-mini's shapes (32 layers, random bf16 weights made as benchmarks/scale.py makes them):
1. LoRA and QLoRA steps on CUDA at batch 4 x 1024 tokens: tokens/s and peak GPU memory;
2. the int4 export for the CUDA execution provider (modelpress's bounded builder path), then greedy
   decoding with onnxruntime-genai on CUDA: tokens/s;
3. the same LoRA step through Olive 0.13's LoRA pass, if Olive is installed there.
Each part that cannot run (no CUDA torch, no bitsandbytes, no onnxruntime-genai-cuda, no Olive)
prints why and the check goes on. The result is one table on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

BATCH, TOKENS, STEPS = 4, 1024, 4


def lora_step(src: Path, quantized: bool) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    torch.cuda.reset_peak_memory_stats()
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                               bnb_4bit_compute_dtype=torch.bfloat16) if quantized else None
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16, quantization_config=quant,
                                                 device_map={"": 0})
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, task_type="CAUSAL_LM",
                                             target_modules=["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]))
    model.train()  # checkpointing is active in training mode only
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    ids = torch.randint(0, 32000, (BATCH, TOKENS), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    times = []
    for _ in range(STEPS):
        torch.cuda.synchronize()
        start = time.perf_counter()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    steady = sum(times[1:]) / (len(times) - 1)
    return {"tokens_per_s": BATCH * TOKENS / steady, "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30}


def export_and_decode(src: Path, out: Path) -> dict:
    import contextlib
    import io

    import numpy as np
    import onnxruntime_genai as og
    from onnxruntime_genai.models.builder import create_model, parse_extra_options

    from modelpress.passes.builder_memory import bounded_builder

    stats: dict = {}
    start = time.perf_counter()
    options = parse_extra_options("m", str(src), str(out), "int4", "cuda", str(out) + ".cache", [], search=None)
    with contextlib.redirect_stdout(io.StringIO()), bounded_builder(stats):
        create_model("m", str(src), str(out), "int4", "cuda", str(out) + ".cache", **options)
    result = {"export_s": time.perf_counter() - start, "bounded": stats.get("bounded")}
    try:
        result["decode_tokens_per_s"] = _decode(og, np, out)
    except Exception as err:  # the export stands on its own: report it, and why decoding did not run
        result["decode not run"] = f"{type(err).__name__}: {str(err).strip().splitlines()[-1][:160]}"
    return result


def _decode(og, np, out: Path) -> float:
    model = og.Model(str(out))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=1024 + 128, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(np.arange(5, 5 + 1024, dtype=np.int32)[None, :])
    start, new = time.perf_counter(), 0
    while not generator.is_done() and new < 128:
        generator.generate_next_token()
        new += 1
    return new / (time.perf_counter() - start)


def olive_lora(src: Path, out: Path) -> dict:
    import importlib.util
    import subprocess

    if importlib.util.find_spec("olive") is None:
        raise ModuleNotFoundError("Olive is not installed here")

    out.mkdir(parents=True, exist_ok=True)
    (out / "data.jsonl").write_text("".join(json.dumps({"text": f"row {i} " * 200}) + "\n" for i in range(64)))
    start = time.perf_counter()
    proc = subprocess.run(["olive", "finetune", "--method", "lora", "-m", str(src), "-o", str(out),
                           "--max_steps", str(STEPS), "--per_device_train_batch_size", str(BATCH),
                           "--data_name", "json", "--data_files", str(out / "data.jsonl"), "--text_field", "text"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-1500:])
    return {"seconds": time.perf_counter() - start}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("/tmp/modelpress-gpu-check"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    from scale import make_checkpoint

    src = make_checkpoint(32, args.out / "phi3-mini-32")
    results = {}
    parts = {"LoRA bf16 (CUDA)": lambda: lora_step(src, False), "QLoRA nf4 (CUDA)": lambda: lora_step(src, True),
             "int4 export + genai decode (CUDA)": lambda: export_and_decode(src, args.out / "int4-cuda"),
             "Olive 0.13 LoRA": lambda: olive_lora(src, args.out / "olive")}
    for name, part in parts.items():
        try:
            results[name] = part()
        except Exception as err:  # each part reports what stopped it; the check goes on
            results[name] = {"not run": f"{type(err).__name__}: {str(err).strip().splitlines()[-1][:200]}"}
            traceback.print_exc(file=sys.stderr)
        print(f"{name}: {json.dumps(results[name])}", flush=True)
    print("\n| part | result |\n|---|---|")
    for name, result in results.items():
        print(f"| {name} | {', '.join(f'{k} {v:.1f}' if isinstance(v, float) else f'{k} {v}' for k, v in result.items())} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
