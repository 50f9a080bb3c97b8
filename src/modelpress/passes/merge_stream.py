"""Merge a LoRA adapter into its base one tensor at a time, straight from checkpoint to checkpoint.

`W' = W + scaling * (B @ A)` for every adapted linear, computed in float32 as peft's
`merge_and_unload` computes it, written to safetensors shards of at most SHARD_BYTES: the peak
is one shard plus one tensor, whatever the model's size (peft's merge loads the whole model in
float32: 15 GB for Phi-3-mini). Adapters this does not cover (DoRA, LoHa/LoKr, per-module
ranks, trained embeddings or heads, bias training, fan-in-fan-out layers) are merged by peft.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

SHARD_BYTES = 1 << 30
PREFIX = "base_model.model."
# adapter_config.json keys whose non-default values change what a merge means here
UNSUPPORTED = {"use_dora": False, "fan_in_fan_out": False, "bias": "none", "rank_pattern": {}, "alpha_pattern": {},
               "modules_to_save": None, "trainable_token_indices": None, "lora_bias": False}


def why_not_streamed(adapter: Path, base: Path) -> str | None:
    """None when this adapter and base can be merged tensor by tensor; otherwise the reason."""
    config = json.loads((adapter / "adapter_config.json").read_text())
    if config.get("peft_type") != "LORA":
        return f"a {config.get('peft_type')} adapter"
    for key, default in UNSUPPORTED.items():
        value = config.get(key)
        if value is not None and value != default and value not in ({}, [], False):
            return f"adapter_config {key}={value!r}"
    if not (adapter / "adapter_model.safetensors").is_file():
        return "no adapter_model.safetensors"
    from safetensors import safe_open

    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as f:  # reads the header only
        keys = list(f.keys())
    other = [key for key in keys if not key.endswith((".lora_A.weight", ".lora_B.weight"))]
    if other:  # an embedding's lora_embedding_A/B, a trained head: not a linear layer's W + s * B @ A
        return f"adapter tensor {other[0]}"
    if not ((base / "model.safetensors").is_file() or (base / "model.safetensors.index.json").is_file()):
        return "the base has no safetensors checkpoint"
    base_config = json.loads((base / "config.json").read_text()) if (base / "config.json").is_file() else {}
    if base_config.get("auto_map"):  # the base's own Python files, which peft's save_pretrained carries along
        return "the base ships its own model code (auto_map)"
    if base_config.get("quantization_config"):  # packed integer tensors, which a float merge would cast
        return "the base is quantized (quantization_config)"
    from modelpress.passes.builder_memory import Checkpoint

    stored = set(Checkpoint(base).weight_map)
    missing = [k for k in adapted_weights(keys) if k not in stored]
    if missing:  # a tied head stored only as the embeddings, a key spelt otherwise: peft merges by module
        return f"the base checkpoint stores no {missing[0]}"
    return None


def adapted_weights(keys) -> list[str]:
    """The base weight names an adapter's lora_A tensors adapt."""
    out = []
    for key in keys:
        if key.endswith(".lora_A.weight"):
            module = key[len(PREFIX):-len(".lora_A.weight")] if key.startswith(PREFIX) else key[:-len(".lora_A.weight")]
            out.append(module + ".weight")
    return out


def merge_streamed(adapter: Path, base: Path, out: Path) -> int:
    """Write base + adapter to `out` (float32 safetensors shards, config, index); returns tensors merged."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from modelpress.passes.builder_memory import Checkpoint

    config = json.loads((adapter / "adapter_config.json").read_text())
    r, alpha = config["r"], config["lora_alpha"]
    scaling = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    lora = load_file(str(adapter / "adapter_model.safetensors"))
    deltas = {}
    for key in lora:
        if key.endswith(".lora_A.weight"):
            [weight] = adapted_weights([key])
            deltas[weight] = (lora[key], lora[key.replace(".lora_A.", ".lora_B.")])
    checkpoint = Checkpoint(base)
    missing = set(deltas) - set(checkpoint.weight_map)
    if missing:
        raise KeyError(f"the adapter adapts {sorted(missing)[:3]}, which the base checkpoint lacks")
    out.mkdir(parents=True, exist_ok=True)
    shards, current, size, merged = [], {}, 0, 0

    def flush():
        nonlocal current, size
        if current:
            name = f"model-{len(shards) + 1:05d}.safetensors"
            save_file(current, str(out / name), metadata={"format": "pt"})
            shards.append((name, list(current)))
            current, size = {}, 0

    by_file: dict[str, list[str]] = {}
    for name, file in checkpoint.weight_map.items():
        by_file.setdefault(file, []).append(name)
    for file, names in sorted(by_file.items()):
        for name in sorted(names):
            # opened per tensor: the pages safetensors maps stay resident while its file is open
            with safe_open(str(base / file), "pt") as f:
                tensor = f.get_tensor(name)
            if tensor.is_floating_point():  # an integer buffer (position ids) keeps its dtype, as peft's merge does
                tensor = tensor.to(torch.float32)
            if name in deltas:
                a, b = deltas[name]
                tensor += (b.to(torch.float32) @ a.to(torch.float32)) * scaling
                merged += 1
            current[name] = tensor.contiguous()
            size += tensor.numel() * tensor.element_size()
            if size >= SHARD_BYTES:
                flush()
    flush()
    total = len(shards)
    weight_map = {}
    for i, (name, keys) in enumerate(shards, 1):
        final = f"model-{i:05d}-of-{total:05d}.safetensors" if total > 1 else "model.safetensors"
        (out / name).rename(out / final)
        weight_map.update({k: final for k in keys})
    if total > 1:
        total_size = sum((out / f).stat().st_size for f in set(weight_map.values()))
        (out / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": total_size}, "weight_map": weight_map}, indent=2))
    model_config = json.loads((base / "config.json").read_text())
    model_config["dtype"] = "float32"
    model_config.pop("torch_dtype", None)
    (out / "config.json").write_text(json.dumps(model_config, indent=2))
    if (base / "generation_config.json").is_file():
        shutil.copy(base / "generation_config.json", out / "generation_config.json")
    return merged
