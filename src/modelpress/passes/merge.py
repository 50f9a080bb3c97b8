"""Merge a LoRA adapter into its base model, giving a plain Hugging Face folder."""

from __future__ import annotations

import logging
from pathlib import Path

from modelpress.context import PassContext
from modelpress.models import ADAPTER_DIR, ModelRef, load_hf_model, load_tokenizer
from modelpress.passes.catalog import HF, HF_ADAPTER, MergeAdapterWeightsParams
from modelpress.passes.merge_stream import merge_streamed, why_not_streamed

log = logging.getLogger("modelpress")


def run_merge(ctx: PassContext, params: MergeAdapterWeightsParams) -> ModelRef:
    """Fold the adapter into the base weights; a model without an adapter passes through unchanged."""
    if ctx.model.kind != HF_ADAPTER:
        ctx.notes.append("no adapter to merge: the input model passes through unchanged")
        return ctx.model
    trust = ctx.input_model.trust_remote_code
    adapter, base_folder = Path(ctx.model.path) / ADAPTER_DIR, Path(ctx.model.base)
    why = why_not_streamed(adapter, base_folder)
    if why is None:
        merged = merge_streamed(adapter, base_folder, ctx.out)
        load_tokenizer(base_folder, trust).save_pretrained(str(ctx.out))
        ctx.notes.append(f"merged the adapter into {merged} weights one tensor at a time (float32; memory: one shard)")
        return ModelRef(HF, ctx.out, id="", task=dict(ctx.model.task))
    log.info("merging with peft, which loads the whole model in float32: %s", why)
    from peft import PeftModel

    # A QLoRA adapter is merged into the full-precision base: the merged model is never 4-bit.
    base = load_hf_model(ctx.model.base, ctx.task, ctx.model.task.get("labels"), "float32", trust)
    merged = PeftModel.from_pretrained(base, str(Path(ctx.model.path) / ADAPTER_DIR)).merge_and_unload()
    merged.save_pretrained(str(ctx.out), safe_serialization=True)
    load_tokenizer(ctx.model.base, trust).save_pretrained(str(ctx.out))
    return ModelRef(HF, ctx.out, id="", task=dict(ctx.model.task))
