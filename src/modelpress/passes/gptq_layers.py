"""Run GPTQ over a whole causal LM, one decoder layer at a time.

The calibration rows go through the model up to the first decoder layer; from there each layer
is run on its inputs with a hook on every linear layer that accumulates its Hessian, its
linears are quantized with GPTQ, and the layer is run again with the quantized weights to give
the next layer its inputs. Later layers are thus calibrated on what the quantized model really
computes, as in the paper. The LM head, when asked, is calibrated on the final norm's output.
"""

from __future__ import annotations

from modelpress.passes.gptq import Hessian, gptq
from modelpress.passes.quant_specs import GptqParams
from modelpress.quantized import Grid, dequantize


class _Captured(Exception):
    """Raised by the hook on the first layer once it has recorded its inputs."""


def _first_layer_inputs(model, layer, rows: list) -> list[tuple[tuple, dict]]:
    import torch

    captured = []

    def grab(_module, args, kwargs):
        captured.append((args, kwargs))
        raise _Captured

    handle = layer.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            for ids in rows:
                try:
                    model(input_ids=ids, use_cache=False)
                except _Captured:
                    pass
    finally:
        handle.remove()
    return captured


def _hidden(output):
    return output[0] if isinstance(output, tuple) else output


def _with_hidden(args: tuple, kwargs: dict, hidden) -> tuple[tuple, dict]:
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def _quantize_module(module, hessian: Hessian, grid: Grid, params: GptqParams, name: str) -> dict:
    import torch

    from modelpress.passes.torch_quant import packed_parts

    act_order = params.desc_act if params.desc_act is not None else grid.group_size == -1
    codes, scales, zeros = gptq(module.weight.data, hessian.h, grid, damp=params.damp_percent,
                                act_order=act_order and grid.group_size == -1)
    with torch.no_grad():
        module.weight.data = dequantize(codes, scales, zeros, grid).to(module.weight.dtype)
    return packed_parts(codes, scales, zeros, grid, name)


def _layer_hessians(layer, linears: dict, inputs: list) -> dict:
    """{module name: Hessian} of `linears` over `inputs`; modules that read the same tensor (q/k/v,
    gate/up) share one Hessian, computed once: the same sum over the same rows."""
    import torch

    seen: dict[str, list] = {}
    hooks = [m.register_forward_hook(lambda mod, args, out, name=name: seen.setdefault(name, []).append(args[0]))
             for name, m in linears.items()]
    shared: dict[tuple, Hessian] = {}
    try:
        with torch.no_grad():
            for args, kwargs in inputs:
                seen.clear()
                layer(*args, **kwargs)
                groups: dict[tuple, list[str]] = {}  # the inputs' identities -> the modules that read them
                for name, xs in seen.items():
                    groups.setdefault(tuple(id(x) for x in xs), []).append(name)
                for names in groups.values():
                    for x in seen[names[0]]:  # a module run twice in one call sees both inputs
                        shared.setdefault(tuple(names), Hessian(x.shape[-1])).add(x.detach().float())
    finally:
        for hook in hooks:
            hook.remove()
    return {name: h for names, h in shared.items() for name in names}


def quantize_layers(model, rows: list, plan: dict[str, Grid], params: GptqParams, show_progress: bool = False) -> dict:
    """GPTQ every module of `plan` that is a decoder linear (or the LM head); {module: packed tensors}."""
    import torch
    from tqdm.auto import tqdm

    from modelpress.passes.torch_quant import decoder_layers, module_name

    prefix, layers = decoder_layers(model)
    inputs = _first_layer_inputs(model, layers[0], rows)
    packed: dict[str, dict] = {}
    for index, layer in enumerate(tqdm(layers, desc="GPTQ", unit="layer", disable=not show_progress)):
        linears = {f"{prefix}.{index}.{name}": m for name, m in layer.named_modules()
                   if isinstance(m, torch.nn.Linear) and f"{prefix}.{index}.{name}" in plan}
        hessians = _layer_hessians(layer, linears, inputs)
        for name, module in linears.items():
            packed[name] = _quantize_module(module, hessians[name], plan[name], params, name)
        with torch.no_grad():
            inputs = [_with_hidden(args, kwargs, _hidden(layer(*args, **kwargs))) for args, kwargs in inputs]
    head = model.get_output_embeddings()
    head_name = module_name(model, head)
    if head_name in plan:
        norm = getattr(getattr(model, "model", model), "norm", None)
        hessian = Hessian(head.in_features)
        with torch.no_grad():
            for args, kwargs in inputs:
                hidden = args[0] if args else kwargs["hidden_states"]
                hessian.add((norm(hidden) if norm is not None else hidden).float())
        packed[head_name] = _quantize_module(head, hessian, plan[head_name], params, head_name)
    return packed
