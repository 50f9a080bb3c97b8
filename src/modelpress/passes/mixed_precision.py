"""Which modules keep more bits: llama.cpp's k-quant layer rules, or a KL-divergence gradient score.

- `k_quant_last`: the LM head.
- `k_quant_down`: the LM head and the MLP down projection of the first and last eighth of the
  layers and of every third layer between (the rule llama.cpp's Q4_K_M applies to ffn_down).
- `k_quant_mixed`: those, and the attention input projections (q, k, v) of the same layers.
- `kld_gradient` (after mlx-lm's dynamic quantization): every linear layer of the decoder is rounded
  to the low grid (the LM head, quantized only when the quantizer is asked to, keeps `high_bits`); on calibration rows the gradient g of KL(original || low-bit) with respect to each
  weight gives, to first order, what moving that layer to the high grid would change:
  g . (W_high - W_low). Units (a layer, or the q/k/v of one attention block, which the ONNX
  builder fuses and so must share precision) are promoted from the largest expected gain per
  million weights down, until `ratio` of the weights are left at the low grid.
"""

from __future__ import annotations

import re

from modelpress.quantized import Grid, dequantize, rtn

ATTENTION_INPUTS = re.compile(r"\.(q_proj|k_proj|v_proj|qkv_proj|query_key_value)$")
MLP_OUTPUTS = re.compile(r"\.(down_proj|fc2|dense_4h_to_h|w2)$")


def k_quant_layers(count: int) -> list[int]:
    """The layers llama.cpp's Q4_K_M keeps at more bits (its `use_more_bits`): the first and last eighth, and every
    third between, with the eighths compared as fractions and the thirds counted from count // 8, as Olive's
    SelectiveMixedPrecision does (llama.cpp divides in integers, which differs for some counts not a multiple of
    8: at 30 layers Olive's rule also takes layer 3; onnxruntime-genai 0.18's k_quant_mixed counts the thirds from
    round(count / 8), which picks other middle layers at 22, 28 or 30 layers)."""
    return [i for i in range(count) if i < count / 8 or i >= 7 * count / 8 or (i - count // 8) % 3 == 2]


def choose(ctx, model, tokenizer, params) -> tuple[dict, dict[str, dict]]:
    """(default grid settings, {module: overrides}) for the quantizer that follows."""
    from modelpress.passes.torch_quant import decoder_layers, decoder_linears, module_name

    high = {"bits": params.high_bits}
    lm_head = module_name(model, model.get_output_embeddings())
    if params.algorithm.startswith("k_quant"):
        overrides = {lm_head: dict(high)}
        if params.algorithm != "k_quant_last":
            prefix, layers = decoder_layers(model)
            chosen = {f"{prefix}.{i}." for i in k_quant_layers(len(layers))}
            pattern = MLP_OUTPUTS if params.algorithm == "k_quant_down" else re.compile(
                f"{MLP_OUTPUTS.pattern}|{ATTENTION_INPUTS.pattern}")
            for name in decoder_linears(model):
                if any(name.startswith(c) for c in chosen) and pattern.search(name):
                    overrides[name] = dict(high)
        default = {"bits": params.bits}
    else:
        low = Grid(params.bits, params.group_size, params.sym)
        high_grid = Grid(params.high_bits, params.group_size, params.sym)
        from modelpress.passes.torch_quant import calibration_rows

        rows = calibration_rows(ctx, params.data_config, params.calibration_samples, params.max_seq_len, tokenizer)
        # the decoder's linears, which every quantizer after this quantizes: the LM head is quantized only when
        # asked (lm_head: true), so it is neither scored nor counted in the ratio, and keeps high_bits as in k_quant
        gains, sizes = kld_gains(model, rows, low, high_grid, set(decoder_linears(model)))
        units = _units(list(gains))
        chosen = promote(units, {u: sum(gains[n] for n in u) for u in units},
                         {u: sum(sizes[n] for n in u) for u in units}, params.ratio)
        overrides = {name: {"bits": params.high_bits, "group_size": params.group_size, "symmetric": params.sym}
                     for unit in chosen + [(lm_head,)] for name in unit}
        default = {"bits": params.bits, "group_size": params.group_size, "symmetric": params.sym}
    if getattr(model.config, "tie_word_embeddings", False) and lm_head in overrides:
        overrides[module_name(model, model.get_input_embeddings())] = dict(overrides[lm_head])
    return default, dict(sorted(overrides.items()))


def _units(names: list[str]) -> list[tuple[str, ...]]:
    """Modules that must share precision: the q/k/v of one attention block; every other module alone."""
    groups: dict[str, list[str]] = {}
    units = []
    for name in names:
        if ATTENTION_INPUTS.search(name):
            groups.setdefault(name.rsplit(".", 1)[0], []).append(name)
        else:
            units.append((name,))
    return units + [tuple(group) for group in groups.values()]


def promote(units: list[tuple], gains: dict, sizes: dict, ratio: float) -> list[tuple]:
    """Units with the largest gain per million weights first, until at most `ratio` stay low."""
    total = sum(sizes.values())
    target = total * (1 - ratio) * (1 - 1e-9)  # the tolerance keeps 1 - 0.7 = 0.30000000000000004 from adding one more
    chosen, promoted = [], 0
    for unit in sorted(units, key=lambda u: -gains[u] / (sizes[u] / 1e6)):
        if promoted >= target:
            break
        chosen.append(unit)
        promoted += sizes[unit]
    return chosen


def kld_gains(model, rows: list, low: Grid, high: Grid, names: set[str] | None = None
              ) -> tuple[dict[str, float], dict[str, int]]:
    """{linear: -g . (W_high - W_low) averaged over calibration rows}, and each linear's size, for the
    linears in `names` (default: every one).

    g is the gradient of KL(model || model with those linears on the low grid) at the low-grid
    weights, so a gain is the first-order drop of that divergence when one linear moves to the
    high grid.
    """
    import copy

    import torch

    student = copy.deepcopy(model)
    student.requires_grad_(False)
    linears = {name: m for name, m in student.named_modules()
               if isinstance(m, torch.nn.Linear) and (names is None or name in names)}
    toward_high = {}
    with torch.no_grad():
        for name, module in linears.items():
            weight = module.weight.float()
            low.check(name, weight.shape[1])
            low_w = dequantize(*rtn(weight, low), low)
            toward_high[name] = dequantize(*rtn(weight, high), high) - low_w
            module.weight.data = low_w.to(module.weight.dtype)
            module.weight.requires_grad_(True)
    gains = dict.fromkeys(linears, 0.0)
    for ids in rows:
        with torch.no_grad():
            teacher = torch.log_softmax(model(input_ids=ids).logits.float(), dim=-1)
        student_logp = torch.log_softmax(student(input_ids=ids).logits.float(), dim=-1)
        kl = (teacher.exp() * (teacher - student_logp)).sum(-1).mean()
        kl.backward()
        for name, module in linears.items():
            gains[name] -= float((module.weight.grad * toward_high[name]).sum()) / len(rows)
            module.weight.grad = None
    return gains, {name: m.weight.numel() for name, m in linears.items()}
