"""Which training settings make SmolLM2-135M-Instruct generalise to phrases in another style?

    .venv/bin/python benchmarks/smollm2_settings.py --lr 2e-4 --steps 150 [--seed 0] [--system-prompt TEXT]
                                                    [--dropout 0.1] [--neftune 5] [--top-layers 10] [--rank 16]
                                                    [--targets q_proj,v_proj] [--balanced] [--full] [--casual 0.5]
                                                    [--scales 0.5,0.75,1]

A plain PyTorch + peft loop (not modelpress), so settings can be tried without touching the example:
LoRA r 16 / alpha 32 on all seven projections, batch 16, AdamW at a constant learning rate, the loss
on the answer only, the model's chat template with its default system prompt (or --system-prompt),
a bfloat16 frozen base with float32 adapters and eager attention (the example's speed settings).
The split is 80/20 over distinct phrases (seeded); after training the adapter is merged and the
float32 model answers greedily, 4 new tokens, on the held-out phrases and on the 72 phrases of
`examples/minilm-tone/data/other-style*.jsonl`. Prints both accuracies and every miss on the
other-style set. Needs `make smollm2`'s install.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from smollm2 import DATA, ROOT, TARGETS, _pad, converted_model  # noqa: E402

OTHER = [ROOT / "examples" / "minilm-tone" / "data" / name for name in ("other-style.jsonl", "other-style-dev.jsonl")]


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def split(rows: list[dict], seed: int = 42) -> tuple[list[dict], list[dict]]:
    """80/20 over distinct phrases: no held-out phrase is trained on, in any copy."""
    phrases = sorted({r["phrase"] for r in rows})
    random.Random(seed).shuffle(phrases)
    held = set(phrases[: int(0.2 * len(phrases))])
    return [r for r in rows if r["phrase"] not in held], list({r["phrase"]: r for r in rows if r["phrase"] in held}.values())


def casual(phrase: str) -> str:
    """The phrase as typed in a chat: lower case, without its closing full stop."""
    return phrase.lower().rstrip().removesuffix(".")


def main() -> int:
    import tempfile

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--system-prompt", default=None)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--neftune", type=float, default=0.0, help="NEFTune noise alpha on the embeddings (0: off)")
    parser.add_argument("--top-layers", type=int, default=0, help="LoRA on the last N decoder layers only (0: all)")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated projections to adapt")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="the frozen base's dtype")
    parser.add_argument("--balanced", action="store_true", help="draw each row's class uniformly (oversample rare tones)")
    parser.add_argument("--full", action="store_true", help="train every weight (float32, no adapter) instead of LoRA")
    parser.add_argument("--casual", type=float, default=0.0,
                        help="share of training rows whose phrase is written casually: lower case, no closing stop")
    parser.add_argument("--augment", type=Path, default=None,
                        help="JSON Lines of rewritten training phrases ({phrase, tone, source}); only rewrites of "
                             "training-split phrases are used")
    parser.add_argument("--augment-share", type=float, default=0.5,
                        help="share of training rows swapped for one of their rewrites (with --augment)")
    parser.add_argument("--scales", default="1",
                        help="comma-separated factors on the adapter's weight change, each measured (WiSE-FT: "
                             "Wortsman et al. 2022 interpolate between the base and the fine-tuned weights)")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory(prefix="mp-smollm2-") as tmp:
        folder = converted_model(Path(tmp))
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32 if args.full else getattr(torch, args.dtype),
                                                     attn_implementation="eager")
    n_layers = model.config.num_hidden_layers
    layers = list(range(n_layers - args.top_layers, n_layers)) if args.top_layers else None
    if not args.full:
        model = get_peft_model(model, LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=args.dropout,
                                                 target_modules=args.targets.split(","), layers_to_transform=layers,
                                                 task_type="CAUSAL_LM"))  # peft keeps the adapters in float32
    if args.neftune:
        def noise(module, _inputs, out):
            if not module.training:
                return out
            scale = args.neftune / (out.size(1) * out.size(2)) ** 0.5
            return out + torch.zeros_like(out).uniform_(-1, 1) * scale
        model.get_input_embeddings().register_forward_hook(noise)

    def messages(phrase: str) -> list[dict]:
        system = [{"role": "system", "content": args.system_prompt}] if args.system_prompt else []
        return [*system, {"role": "user", "content": phrase}]

    def prompt(phrase: str) -> str:
        return tokenizer.apply_chat_template(messages(phrase), tokenize=False, add_generation_prompt=True)

    def encode(row: dict) -> tuple[list[int], list[int]]:
        full = tokenizer.apply_chat_template(messages(row["phrase"]) + [{"role": "assistant", "content": row["tone"]}],
                                             tokenize=False)
        head = tokenizer(prompt(row["phrase"]), add_special_tokens=False)["input_ids"]
        ids = tokenizer(full, add_special_tokens=False)["input_ids"]
        return ids, [-100] * len(head) + ids[len(head):]

    train, held_out = split(rows_of(DATA))
    rewrites: dict[str, list[dict]] = {}
    if args.augment:
        kept = {r["phrase"] for r in train}
        for r in rows_of(args.augment):
            if r["source"] in kept and r["phrase"].strip():
                rewrites.setdefault(r["source"], []).append({"phrase": r["phrase"], "tone": r["tone"]})
        print(f"rewrites of {len(rewrites)} training phrases from {args.augment}", flush=True)
    tones = sorted({r["tone"] for r in train})
    by_tone = {t: [i for i, r in enumerate(train) if r["tone"] == t] for t in tones}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    order, rng, started = [], random.Random(args.seed), time.perf_counter()
    styles = random.Random(args.seed + 1)  # its own stream: the batch order is the same with or without --casual
    model.train()
    for step in range(args.steps):
        if args.balanced:
            batch = [rng.choice(by_tone[rng.choice(tones)]) for _ in range(16)]
        else:
            if len(order) < 16:
                more = list(range(len(train)))
                rng.shuffle(more)
                order += more
            batch, order = order[:16], order[16:]
        rows = [dict(train[i], phrase=casual(train[i]["phrase"])) if args.casual and styles.random() < args.casual
                else train[i] for i in batch]
        rows = [styles.choice(rewrites[r["phrase"]]) if r["phrase"] in rewrites
                and styles.random() < args.augment_share else r for r in rows]
        ids, labels, mask = _pad([encode(row) for row in rows], tokenizer.pad_token_id)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % 25 == 0 or step == args.steps - 1:
            print(f"step {step}: loss {loss.item():.4f} ({time.perf_counter() - started:.0f} s)", flush=True)
    train_s = time.perf_counter() - started
    model = model.float().eval()
    scales = [float(x) for x in args.scales.split(",")]
    if args.full and scales != [1.0]:
        parser.error("--scales needs LoRA (it scales the adapter's weight change)")
    lora_b = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}

    def answers(rows: list[dict]) -> list[str]:
        tokenizer.padding_side = "left"
        out = []
        for i in range(0, len(rows), 32):
            part = rows[i:i + 32]
            batch = tokenizer([prompt(r["phrase"]) for r in part], return_tensors="pt", padding=True,
                              add_special_tokens=False)
            with torch.no_grad():
                new = model.generate(**batch, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            out += [tokenizer.decode(t, skip_special_tokens=True).strip().lower()
                    for t in new[:, batch["input_ids"].shape[1]:]]
        return out

    other = [r for path in OTHER for r in rows_of(path)]
    dev = rows_of(OTHER[1])
    for scale in scales:
        if lora_b:  # W + scale * B A: the adapter's B scaled, merged, measured, unmerged
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if n in lora_b:
                        p.copy_(lora_b[n] * scale)
            model.merge_adapter()
        scores = {}
        for name, rows in (("held-out", held_out), ("other-style", other), ("other-style-dev", dev)):
            said = answers(rows)
            scores[name] = sum(s.startswith(r["tone"]) for s, r in zip(said, rows)) / len(rows)
            if name == "other-style":
                for s, r in zip(said, rows):
                    if not s.startswith(r["tone"]):
                        print(f"  miss: {r['tone']:<8} answered {s!r:<12} {r['phrase']}")
        if lora_b:
            model.unmerge_adapter()
        print(f"lr {args.lr:g}, {args.steps} steps, seed {args.seed}, dropout {args.dropout:g}, neftune {args.neftune:g}, "
              f"top layers {args.top_layers or 'all'}, {'full fine-tuning' if args.full else f'rank {args.rank}'}, "
              f"targets {args.targets}, balanced {args.balanced}, {train_s / args.steps:.2f} s/step, "
              f"casual {args.casual:g}, augment {args.augment} x {args.augment_share:g}, system prompt {args.system_prompt!r}, adapter scale {scale:g}: held-out "
              f"{scores['held-out']:.3f} ({len(held_out)}), other style {scores['other-style']:.3f} ({len(other)}; "
              f"its dev file {scores['other-style-dev']:.3f} of {len(dev)})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
