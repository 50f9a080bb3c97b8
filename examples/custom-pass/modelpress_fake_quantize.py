"""A modelpress plugin pass: simulated k-bit weight quantization of a Hugging Face model.

Every linear layer except the output head has its weights rounded to `bits` bits per group of
`group_size` inputs (symmetric, absmax scale), then stored back as float32. The model keeps its
format, so it loads with plain transformers and flows into MergeAdapterWeights, ModelBuilder or
OnnxConversion as usual; the search shows how accuracy falls as the bits shrink.

Use it from a config in one of two ways:
- name this file: {"type": "FakeQuantize", "user_script": "modelpress_fake_quantize.py", "bits": 4}
- or install this folder (pip install ./examples/custom-pass), which declares the entry point
  modelpress.passes: FakeQuantize, and write {"type": "FakeQuantize", "bits": 4}.
"""

from __future__ import annotations

from modelpress.plugin import HF, Field, ModelRef, Pass, Strict, searchable


class FakeQuantizeParams(Strict):
    bits: int = searchable(8, 6, 4, default=8, ge=2, le=16, description="Bits per weight (symmetric).")
    group_size: int = Field(64, gt=0, description="Input columns that share one scale; must divide each layer's inputs.")
    skip: list[str] = Field(["lm_head"], description="Linear layers whose name contains one of these stay as they are.")


class FakeQuantize(Pass):
    """Round linear weights to k bits per group (simulated quantization; the model stays float32)."""

    Params = FakeQuantizeParams
    accepts = (HF,)
    produces = HF
    version = "1"

    def run(self, ctx, params: FakeQuantizeParams) -> ModelRef:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(str(ctx.model.path), dtype=torch.float32)
        levels = 2 ** (params.bits - 1) - 1
        count = 0
        with torch.no_grad():
            for name, module in model.named_modules():
                if not isinstance(module, torch.nn.Linear) or any(s in name for s in params.skip):
                    continue
                rows, cols = module.weight.shape
                if cols % params.group_size:
                    raise ValueError(f"group_size {params.group_size} does not divide the {cols} inputs of {name}")
                groups = module.weight.view(rows, cols // params.group_size, params.group_size)
                scale = groups.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / levels
                module.weight.copy_(((groups / scale).round().clamp(-levels, levels) * scale).view(rows, cols))
                count += 1
        model.save_pretrained(str(ctx.out), safe_serialization=True)
        AutoTokenizer.from_pretrained(str(ctx.model.path)).save_pretrained(str(ctx.out))
        ctx.notes.append(f"rounded {count} linear layers to {params.bits} bits (groups of {params.group_size})")
        return ModelRef(HF, ctx.out, id="")
