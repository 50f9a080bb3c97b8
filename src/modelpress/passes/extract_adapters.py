"""ExtractAdapters: a model's LoRA weights become graph inputs and a separate adapter file.

The genai builder, given a LoRA adapter (ModelBuilder on a LoRA pass's output), writes the
adapter as its own MatMul pair beside each adapted weight: `<module>.lora_A.MatMul.weight`
([in, r]) and `<module>.lora_B.MatMul.weight` ([r, out], already scaled by alpha / r). This pass
takes those initializers out of the graph, makes each one a graph input, and writes their values to
`adapter_weights.onnx_adapter` (onnxruntime's adapter format; numpy and safetensors on request).

- With `optional_inputs` (the default), each input keeps a default of rank 0: the model run with no
  adapter is exactly the base model, and the same model serves every adapter trained on the same
  base, modules and rank ("multi-LoRA"): `og.Adapters(model).load(file, name)` then
  `generator.set_active_adapter(adapters, name)` in onnxruntime-genai, or
  `RunOptions.add_active_adapter(LoraAdapter)` in onnxruntime.
- modelpress's own runners (evaluation, `modelpress generate`) activate the folder's adapter file.
- The pass checks its output: with the adapter active its logits equal its input's; without it (optional
  inputs) it is run, not compared (the tests compare it with the base model on the tiny Phi-3).
"""

from __future__ import annotations

import logging
import re

from modelpress.context import PassContext
from modelpress.errors import ModelpressError
from modelpress.models import ModelRef
from modelpress.onnx_adapters import ADAPTER_FILES, write_adapter
from modelpress.onnx_model import copy_model_folder, save_onnx, uses_external_file
from modelpress.passes.onnx_passes import _decoder_file, _output
from modelpress.passes.onnx_specs import ExtractAdaptersParams

log = logging.getLogger("modelpress")

# The adapter weight names the genai builder writes, and the axis of each that is the LoRA rank
# (its MatMul layout: A is [in, r], B is [r, out]).
RANK_AXIS = ((re.compile(r"\.lora_A\.MatMul\.weight$"), 1), (re.compile(r"\.lora_B\.MatMul\.weight$"), 0))
RANK_DIM = "lora_r"


def adapter_weights(graph) -> dict[str, int]:
    """{initializer name: its rank axis} for every LoRA weight in the graph."""
    found = {}
    for init in graph.initializer:
        for pattern, axis in RANK_AXIS:
            if pattern.search(init.name) and len(init.dims) == 2:
                found[init.name] = axis
                break
    return found


def run_extract_adapters(ctx: PassContext, params: ExtractAdaptersParams) -> ModelRef:
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model_file = _decoder_file(ctx.model)
    model = onnx.load(str(ctx.model.path / model_file))
    weights = adapter_weights(model.graph)
    if not weights:
        quantized = any(n.op_type == "MatMulNBits" and "/lora_" in n.name for n in model.graph.node)
        raise ModelpressError(
            f"ExtractAdapters found no LoRA weights in {ctx.model.path / model_file}"
            + (": its LoRA MatMuls were quantized (ModelBuilder keeps them float when it reads the adapter "
               "itself; with extra_options.adapter_path it does not)" if quantized else
               ". Its input must carry an unmerged adapter: run ModelBuilder on a LoRA pass's output "
               "(not on a merged model)") + ".")
    values, kept = {}, []
    for init in model.graph.initializer:
        axis = weights.get(init.name)
        if axis is None:
            kept.append(init)
            continue
        values[init.name] = numpy_helper.to_array(init)
        shape = list(init.dims)
        dims = [RANK_DIM if (params.dynamic_lora_r and i == axis) else d for i, d in enumerate(shape)]
        model.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, dims))
        if params.optional_inputs:  # a default the caller may override: rank 0 (dynamic) or zeros
            default = [0 if (params.dynamic_lora_r and i == axis) else d for i, d in enumerate(shape)]
            kept.append(numpy_helper.from_array(np.zeros(default, dtype=values[init.name].dtype), init.name))
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    if model.ir_version < 4:  # inputs with a default initializer need IR 4
        model.ir_version = 4
    copy_model_folder(ctx.model.path, ctx.out, model_file)
    save_onnx(model, ctx.out, uses_external_file(ctx.model.path, model_file), model_file)
    adapter = ctx.out / ADAPTER_FILES[params.save_format]
    write_adapter(values, adapter)
    _check(ctx, params)
    size = sum(v.nbytes for v in values.values())
    ctx.notes.append(f"{len(values)} LoRA weights ({size / 2**20:.1f} MiB) moved to graph inputs and written to "
                     f"{adapter.name}; with no adapter active the model is its base")
    return _output(ctx, ctx.model.kind)


def _check(ctx: PassContext, params: ExtractAdaptersParams) -> None:
    """With its adapter active, the output's logits equal the input's on a synthetic prompt."""
    import numpy as np

    from modelpress.runners import GenaiRunner

    ids = [int(i) for i in np.random.default_rng(0).integers(3, 60, size=12)]
    before = GenaiRunner(ctx.model.path, prepack=False).logits(ids)
    after = GenaiRunner(ctx.out, prepack=False).logits(ids)
    drift = float(np.abs(after - before).max() / max(float(np.abs(before).max()), 1e-6))
    if not drift < 1e-5:
        raise ModelpressError(f"ExtractAdapters: the model with its adapter active differs from its input "
                              f"(relative logit drift {drift:.2e})")
    if params.optional_inputs:
        GenaiRunner(ctx.out, use_adapter=False).logits(ids)  # the base model runs with no adapter
