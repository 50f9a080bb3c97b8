"""Merge a LoRA adapter into its base model, giving a plain Hugging Face folder."""

from __future__ import annotations

from pathlib import Path

from modelpress.context import PassContext
from modelpress.models import ADAPTER_DIR, ModelRef, load_hf_model, load_tokenizer
from modelpress.passes.catalog import HF, HF_ADAPTER, MergeAdapterWeightsParams


def run_merge(ctx: PassContext, params: MergeAdapterWeightsParams) -> ModelRef:
    """Fold the adapter into the base weights; a model without an adapter passes through unchanged."""
    if ctx.model.kind != HF_ADAPTER:
        ctx.notes.append("no adapter to merge: the input model passes through unchanged")
        return ctx.model
    from peft import PeftModel

    trust = ctx.input_model.trust_remote_code
    # A QLoRA adapter is merged into the full-precision base: the merged model is never 4-bit.
    base = load_hf_model(ctx.model.base, ctx.task, ctx.model.task.get("labels"), "float32", trust)
    merged = PeftModel.from_pretrained(base, str(Path(ctx.model.path) / ADAPTER_DIR)).merge_and_unload()
    merged.save_pretrained(str(ctx.out), safe_serialization=True)
    load_tokenizer(ctx.model.base, trust).save_pretrained(str(ctx.out))
    return ModelRef(HF, ctx.out, id="", task=dict(ctx.model.task))
