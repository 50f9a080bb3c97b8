"""OnnxConversion: export a Hugging Face model to ONNX with torch.onnx.export (the dynamo exporter).

A classifier gives per-row logits; a causal LM gives logits for every position, and with
`use_kv_cache` position ids and past key/values in and present key/values out, the layout onnxruntime-genai
reads (`past_key_values.{i}.key|value` -> `present.{i}.key|value`). The folder it writes holds
model.onnx (+ model.onnx.data), config.json and the tokenizer, as every plain ONNX pass expects.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from modelpress.context import PassContext
from modelpress.errors import ModelpressError, is_disk_full
from modelpress.models import ADAPTER_DIR, ModelRef, load_hf_model, load_tokenizer
from modelpress.onnx_model import MODEL_FILE, model_bytes
from modelpress.passes.onnx_passes import GENERATE, _mib, _output
from modelpress.passes.onnx_specs import OnnxConversionParams
from modelpress.passes.spec_base import HF_ADAPTER


def run_conversion(ctx: PassContext, params: OnnxConversionParams) -> ModelRef:
    """Export with torch.onnx.export(dynamo=True): logits for every position (causal LM) or per row."""
    task = ctx.task
    if params.use_kv_cache and task != GENERATE:
        raise ModelpressError(f"use_kv_cache applies to text-generation models; this model is {task}. "
                              "Set use_kv_cache to false.")
    trust = ctx.input_model.trust_remote_code
    folder = ctx.model.base if ctx.model.kind == HF_ADAPTER else ctx.model.path
    model = load_hf_model(folder, task, ctx.model.task.get("labels"), "float32", trust).eval()
    tokenizer = load_tokenizer(folder, trust)
    if ctx.model.kind == HF_ADAPTER:
        model = _with_adapter(ctx, model, params.merge_adapter_weights)
    plan = _export_plan(model, tokenizer, task, params.use_kv_cache)
    try:
        _export(plan, params, ctx.out / MODEL_FILE)
    except Exception as err:
        if is_disk_full(err):
            raise
        hint = " For a generative model, the ModelBuilder pass is the other way to ONNX." if task == GENERATE else ""
        raise ModelpressError(f"torch.onnx.export failed on {ctx.model.path} ({task}"
                              f"{', with KV cache' if params.use_kv_cache else ''}): "
                              f"{type(err).__name__}: {str(err).strip().splitlines()[0][:400]}.{hint}") from err
    model.config.save_pretrained(str(ctx.out))  # carries a new classifier head's labels
    tokenizer.save_pretrained(str(ctx.out))
    if task == GENERATE and getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(str(ctx.out))
    ctx.notes.append(f"exported {task} model to ONNX opset {params.target_opset}"
                     f"{' with KV cache' if params.use_kv_cache else ''} ({_mib(model_bytes(ctx.out))})")
    return _output(ctx)


def _with_adapter(ctx: PassContext, base, merge: bool):
    """The base with its adapter: merged into the weights, or (as Olive exports it) as layers of their own that the
    graph computes beside the base weights."""
    from peft import PeftModel

    adapter = PeftModel.from_pretrained(base, str(Path(ctx.model.path) / ADAPTER_DIR)).eval()
    kind = adapter.peft_config["default"].peft_type.value
    if merge:
        ctx.notes.append(f"the {kind} adapter merged into its base before the export")
        return adapter.merge_and_unload()
    ctx.notes.append(f"the {kind} adapter exported as nodes of its own beside the base weights (merge_adapter_weights "
                     "false, as in Olive)" + ("" if kind == "LORA" else f"; a {kind} adapter so left rebuilds its "
                     "full-size weight change at every forward: merge_adapter_weights true folds it in once"))
    return adapter.get_base_model()


def _export_plan(model, tokenizer, task: str, use_kv_cache: bool) -> dict:
    """The module to trace, its example arguments, dynamic axes and input/output names."""
    import inspect

    import torch

    vocab = min(len(tokenizer), model.config.vocab_size)
    ids = torch.randint(0, vocab, (2, 8), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, -2:] = 0  # trace the padded path, not an all-ones special case
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in inspect.signature(model.forward).parameters and \
            "token_type_ids" in tokenizer.model_input_names:
        names.append("token_type_ids")
    if use_kv_cache:
        return _kv_plan(model, ids, mask, batch, seq)
    extra = {"use_cache": False} if task == GENERATE else {}
    args = (ids, mask, torch.zeros_like(ids))[:len(names)]
    return {"module": _logits_module(model, extra), "args": args, "inputs": names, "outputs": ["logits"],
            "dynamic": tuple({0: batch, 1: seq} for _ in names)}


def _logits_module(model, extra: dict):
    import torch

    class Logits(torch.nn.Module):
        """The model's logits as one tensor, from positional inputs (what the exporter traces)."""

        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            more = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            return self.model(input_ids=input_ids, attention_mask=attention_mask, **more, **extra).logits

    return Logits().eval()


def _kv_plan(model, ids, mask, batch, seq) -> dict:
    """A causal LM with positions and past key/values in and present key/values out, traced with a 3-token past."""
    import torch

    with torch.no_grad():
        past = model(input_ids=ids[:, :3], attention_mask=mask[:, :3], use_cache=True).past_key_values
    flat = tuple(t for layer in past.layers for t in (layer.keys, layer.values))
    layers = len(past.layers)
    kv_names = [f"{{}}.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    past_len, total = torch.export.Dim("past_sequence"), torch.export.Dim("total_sequence")
    # positions are an input, as the builder's graphs take them: a padded row's new tokens sit at its own length
    # (counted from its mask), not at the batch's padded width
    positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, 3:]
    return {"module": _cached_module(model, layers), "args": (ids[:, 3:], mask, positions, flat),
            "inputs": ["input_ids", "attention_mask", "position_ids"] + [n.format("past_key_values") for n in kv_names],
            "outputs": ["logits"] + [n.format("present") for n in kv_names],
            "dynamic": ({0: batch, 1: seq}, {0: batch, 1: total}, {0: batch, 1: seq},
                        tuple({0: batch, 2: past_len} for _ in flat))}


def _cached_module(model, layers: int):
    import torch
    from transformers import DynamicCache

    class CachedLogits(torch.nn.Module):
        """Logits and the updated cache, with the cache as flat (key, value) tensors per layer."""

        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, position_ids, past_key_values):
            # full layers whatever the config's sliding_window: a sliding layer would keep only its window of the
            # past and hand back a shorter present (the window is in the attention mask, from the config)
            cache = DynamicCache()
            for i in range(layers):
                cache.update(past_key_values[2 * i], past_key_values[2 * i + 1], i)
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             past_key_values=cache, use_cache=True)
            present = out.past_key_values.layers
            return (out.logits, *(t for layer in present for t in (layer.keys, layer.values)))

    return CachedLogits().eval()


def _export(plan: dict, params: OnnxConversionParams, path: Path) -> None:
    import torch

    with warnings.catch_warnings(), torch.no_grad():
        # The exporter warns about axis renames and deprecated pytree helpers: nothing a user can act on.
        warnings.simplefilter("ignore")
        program = torch.onnx.export(plan["module"], plan["args"], dynamo=True, opset_version=params.target_opset,
                                    dynamic_shapes=plan["dynamic"], input_names=plan["inputs"],
                                    output_names=plan["outputs"], verbose=False)
    program.save(str(path), external_data=params.save_as_external_data)
