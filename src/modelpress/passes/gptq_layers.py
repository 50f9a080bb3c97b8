"""Run GPTQ over a whole causal LM, one decoder layer at a time.

The calibration rows go through the model up to the first decoder layer; from there each layer
is run on its inputs with a hook on every linear layer that accumulates its Hessian, its
linears are quantized with GPTQ, and the layer is run again with the quantized weights to give
the next layer its inputs. Later layers are thus calibrated on what the quantized model really
computes, as in the paper. The LM head, when asked, is calibrated on the final norm's output.

The rows run in right-padded batches of similar length (a token budget each), and only their real
positions enter a Hessian: under the causal mask a real position never sees the padding after it,
so this computes what one row at a time does, in fewer and larger matrix products. Modules that
read the same tensor (q/k/v, gate/up) share their Hessian and are quantized as one matrix, their
rows stacked: GPTQ treats each row alike under one Hessian, so this is their own result, from one
factorization and one pass over the columns.
"""

from __future__ import annotations

import logging

from modelpress.errors import ModelpressError
from modelpress.passes.gptq import Hessian, gptq
from modelpress.passes.quant_specs import GptqParams
from modelpress.quantized import Grid, dequantize


log = logging.getLogger("modelpress")


class _Captured(Exception):
    """Raised by the hook on the first layer once it has recorded its inputs."""


TOKENS_PER_BATCH = 8192  # padded tokens of calibration rows run together
# keys of a config whose model routes tokens to experts: an expert's linears see only its tokens, so padding
# cannot be masked out of their Hessians, and such models calibrate one row at a time
MOE_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")


def pads_safely(config) -> bool:
    """Whether right-padded batches compute each row's real positions as the row alone does: not under
    length-dependent rotary scaling (the batch's width would set the frequencies) nor with routed experts."""
    from modelpress.passes.prefix import length_dependent_rope

    return not length_dependent_rope(config) and not any(getattr(config, key, None) for key in MOE_KEYS)


def batched(rows: list, budget: int | None = None) -> list[tuple]:
    """Rows (1, L) as right-padded batches of similar length, each (ids (B, T), mask (B, T) of real tokens),
    at most `budget` (TOKENS_PER_BATCH) padded tokens, or one row, each."""
    import torch

    budget = TOKENS_PER_BATCH if budget is None else budget
    batches, current = [], []
    for row in sorted(rows, key=lambda r: r.shape[1]):
        if current and (len(current) + 1) * row.shape[1] > budget:
            batches.append(current)
            current = []
        current.append(row[0])
    if current:
        batches.append(current)
    padded = []
    for batch in batches:
        width = max(len(ids) for ids in batch)
        ids = torch.zeros(len(batch), width, dtype=batch[0].dtype)
        mask = torch.zeros(len(batch), width, dtype=torch.bool)
        for i, row in enumerate(batch):
            ids[i, :len(row)], mask[i, :len(row)] = row, True
        padded.append((ids, mask))
    return padded


def _first_layer_inputs(model, layers, batches: list[tuple], kinds: list | None = None) -> dict:
    """{layer kind: the (args, kwargs) each batch hands the first layer of that kind}, from the model run up to
    the last such layer. One kind (None) unless the model mixes layer kinds (config.layer_types: sliding and
    full attention in Gemma 2/3, Cohere 2...), whose layers get their kind's mask and rotary tables."""
    import torch

    kinds = kinds or [None] * len(layers)
    first = {kind: kinds.index(kind) for kind in dict.fromkeys(kinds)}
    last = max(first.values())
    captured: dict = {kind: [] for kind in first}

    def grab(kind, stop):
        def hook(_module, args, kwargs):
            captured[kind].append((args, kwargs))
            if stop:
                raise _Captured
        return hook

    handles = [layers[index].register_forward_pre_hook(grab(kind, index == last), with_kwargs=True)
               for kind, index in first.items()]
    try:
        with torch.no_grad():
            for ids, _mask in batches:
                try:  # no attention mask: the causal mask alone, under which padding at the end changes nothing
                    model(input_ids=ids, use_cache=False)
                except _Captured:
                    pass
    finally:
        for handle in handles:
            handle.remove()
    return captured


def layer_kinds(config, n: int) -> list | None:
    """Each decoder layer's kind when the model mixes kinds that take different inputs, else None."""
    kinds = getattr(config, "layer_types", None)
    return list(kinds) if isinstance(kinds, (list, tuple)) and len(kinds) == n and len(set(kinds)) > 1 else None


def _hidden(output):
    return output[0] if isinstance(output, tuple) else output


def _hidden_of(args: tuple, kwargs: dict):
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden(args: tuple, kwargs: dict, hidden) -> tuple[tuple, dict]:
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def _quantize_group(modules: dict, hessian: Hessian, grid: Grid, params: GptqParams) -> dict:
    """GPTQ of the modules (reading one tensor) as one matrix, their rows stacked; {name: packed tensors}."""
    import torch

    from modelpress.passes.torch_quant import packed_parts

    act_order = params.desc_act if params.desc_act is not None else grid.group_size == -1
    weights = [m.weight.data for m in modules.values()]
    codes, scales, zeros = gptq(torch.cat(weights) if len(weights) > 1 else weights[0], hessian.h, grid,
                                damp=params.damp_percent, act_order=act_order and grid.group_size == -1)
    packed, start = {}, 0
    for (name, module), weight in zip(modules.items(), weights):
        part = slice(start, start + weight.shape[0])
        start = part.stop
        with torch.no_grad():
            module.weight.data = dequantize(codes[part], scales[part], zeros[part], grid).to(weight.dtype)
        packed[name] = packed_parts(codes[part], scales[part], zeros[part], grid, name)
    return packed


def _layer_hessians(layer, linears: dict, inputs: list, masks: list | None = None) -> dict:
    """{module name: Hessian} of `linears` over `inputs` (only the positions each of `masks` marks real);
    modules that read the same tensor (q/k/v, gate/up) share one Hessian, computed once: the same sum over
    the same rows."""
    import torch

    seen: dict[str, list] = {}
    hooks = [m.register_forward_hook(lambda mod, args, out, name=name: seen.setdefault(name, []).append(args[0]))
             for name, m in linears.items()]
    shared: dict[tuple, Hessian] = {}
    try:
        with torch.no_grad():
            for index, (args, kwargs) in enumerate(inputs):
                seen.clear()
                layer(*args, **kwargs)
                # the real positions of a batch that holds padding (None: every position is real)
                real = masks[index] if masks is not None and not bool(masks[index].all()) else None
                groups: dict[tuple, list[str]] = {}  # the inputs' identities -> the modules that read them
                for name, xs in seen.items():
                    groups.setdefault(tuple(id(x) for x in xs), []).append(name)
                for names in groups.values():
                    for x in seen[names[0]]:  # a module run twice in one call sees both inputs
                        x = x.detach().float().reshape(-1, x.shape[-1])
                        if real is not None:
                            if x.shape[0] != real.numel():
                                raise ModelpressError(f"Gptq: {names[0]} reads {x.shape[0]} rows for a padded batch "
                                                      f"of {real.numel()} tokens, so its padding cannot be left "
                                                      "out; this model needs calibrating one row at a time "
                                                      "(gptq_layers.pads_safely)")
                            x = x[real.reshape(-1)]
                        shared.setdefault(tuple(names), Hessian(x.shape[-1])).add(x)
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
    batches = batched(rows, None if pads_safely(model.config) else 1)
    masks = [mask for _ids, mask in batches]
    kinds = layer_kinds(model.config, len(layers))
    by_kind = _first_layer_inputs(model, layers, batches, kinds)
    inputs = by_kind[kinds[0] if kinds else None]
    # a kind's later layers reuse its mask and rotary tables, not its first layer's hidden states: let them go
    by_kind = {kind: [_with_hidden(*own, None) for own in captured] for kind, captured in by_kind.items()} \
        if kinds else {}
    packed: dict[str, dict] = {}
    for index, layer in enumerate(tqdm(layers, desc="GPTQ", unit="layer", disable=not show_progress)):
        if kinds:  # this layer's own mask and rotary tables, with the hidden states the layers before it gave
            inputs = [_with_hidden(*own, _hidden_of(*now)) for own, now in zip(by_kind[kinds[index]], inputs)]
        linears = {f"{prefix}.{index}.{name}": m for name, m in layer.named_modules()
                   if isinstance(m, torch.nn.Linear) and f"{prefix}.{index}.{name}" in plan}
        hessians = _layer_hessians(layer, linears, inputs, masks)
        _unseen_round_to_nearest(linears, hessians)
        groups: dict[tuple, dict] = {}  # one Hessian and one grid: quantized together
        for name, module in linears.items():
            groups.setdefault((hessians[name], plan[name]), {})[name] = module
        for (hessian, grid), modules in groups.items():
            packed.update(_quantize_group(modules, hessian, grid, params))
        with torch.no_grad():
            inputs = [_with_hidden(args, kwargs, _hidden(layer(*args, **kwargs))) for args, kwargs in inputs]
    head = model.get_output_embeddings()
    head_name = module_name(model, head)
    if head_name in plan:
        norm = final_norm(model)
        if head.weight is model.get_input_embeddings().weight:  # tied: the head's GPTQ must not rewrite the table
            head.weight = torch.nn.Parameter(head.weight.detach().clone(), requires_grad=False)
        hessian = Hessian(head.in_features)
        with torch.no_grad():
            for (args, kwargs), mask in zip(inputs, masks):
                hessian.add(norm(_hidden_of(args, kwargs)).float()[mask])
        packed.update(_quantize_group({head_name: head}, hessian, plan[head_name], params))
    return packed


def _unseen_round_to_nearest(linears: dict, hessians: dict) -> None:
    """A module no calibration token reached (an expert the router never chose) has no Hessian: it gets the
    identity, under which GPTQ is round-to-nearest, as GPTQ tools fall back for such experts."""
    import torch

    unseen = [name for name in linears if name not in hessians]
    if unseen:
        log.warning("Gptq: %d module(s) saw no calibration token (%s%s) and are rounded to nearest; more or "
                    "longer calibration rows reach more of them", len(unseen), ", ".join(unseen[:3]),
                    ", ..." if len(unseen) > 3 else "")
    for name in unseen:
        hessians[name] = Hessian(linears[name].in_features)
        hessians[name].h = torch.eye(linears[name].in_features)


FINAL_NORMS = ("norm", "ln_f", "final_layer_norm", "final_layernorm")  # Llama-likes, GPT-2/Falcon, OPT/NeoX, ...


def final_norm(model):
    """The norm between the last decoder layer and the LM head, which the head's calibration inputs pass through."""
    import torch

    base = getattr(model, "base_model", model)
    for owner in (base, getattr(base, "decoder", None)):
        for name in FINAL_NORMS:
            module = getattr(owner, name, None) if owner is not None else None
            if isinstance(module, torch.nn.Module):
                return module
    raise ModelpressError(f"Gptq lm_head: no final norm found in {type(model).__name__} (looked for "
                          f"{', '.join(FINAL_NORMS)}), so the head's calibration inputs are unknown. Quantize the "
                          "head with Rtn instead (lm_head: true there, false here).")
