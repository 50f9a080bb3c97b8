"""Weight-only quantized Hugging Face checkpoints: the grid, the packing, and the folder format.

Rtn and Gptq write, and ModelBuilder reads, the checkpoint format Olive's torch-level
quantizers use and onnxruntime-genai's builder loads (`quant_method: "olive"`):
- `config.json` gains `quantization_config` = {quant_method, bits, group_size, symmetric,
  lm_head, embeds, overrides: {module: {bits, group_size, symmetric}}};
- a quantized `nn.Linear` named M is stored as `M.qweight` (out, in * bits / 8) uint8,
  `M.scales` (out, groups) float and `M.qzeros` (out, ceil(groups * bits / 8)) uint8, values
  packed along the last axis with the first value in the low bits, as MatMulNBits reads them;
- the weight of a value is `(q - zero) * scale`, with q and zero unsigned (0 .. 2^bits - 1).
`dequantized_state` turns such a folder back into float weights, so every tool that loads
a plain Hugging Face model (evaluation, generation, lm-eval) reads the quantized model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

QUANT_METHOD = "olive"
PARTS = ("qweight", "scales", "qzeros")


@dataclass(frozen=True)
class Grid:
    """How one weight matrix is quantized: bits, values per group along the input axis, symmetry."""

    bits: int = 4
    group_size: int = 128  # -1: one group per row
    symmetric: bool = False

    @property
    def maxq(self) -> int:
        return 2**self.bits - 1

    def groups(self, in_features: int) -> int:
        return 1 if self.group_size == -1 else in_features // self.group_size

    def check(self, name: str, in_features: int) -> None:
        if self.group_size != -1 and in_features % self.group_size:
            fits = [g for g in (256, 128, 64, 32, 16) if in_features % g == 0]
            hint = (f", such as {fits[0]} (onnxruntime's MatMulNBits takes powers of two of at least 16)" if fits
                    else " (or -1 for one group per row)")
            raise ValueError(f"{name}: {in_features} inputs do not split into groups of {self.group_size}; "
                             f"choose a group_size that divides it{hint}")
        if in_features * self.bits % 8:  # packed rows are whole bytes, read back as bytes * 8 // bits inputs
            raise ValueError(f"{name}: {in_features} inputs at {self.bits} bits do not fill whole bytes, which the "
                             "checkpoint format (and onnxruntime's MatMulNBits) packs rows into; leave this module "
                             "out or quantize it at 8 bits")

    def qparams(self, w):
        """(scale, zero) per row of `w` (out, k): the range of the row, 0 included.

        Symmetric grids put zero at the middle level 2^(bits-1) and spread the range [-max|w|, max|w|] over all
        2^bits - 1 steps (scale = 2 max|w| / (2^bits - 1)), as the GPTQ reference code (and Olive) does for a row
        or group holding a negative weight: the largest positive weight lands half a step past the top code and is
        clipped to it, and in exchange the grid is finer than max|w| / (2^(bits-1) - 1), which leaves the lowest
        code unused (4-bit RTN: 12% more squared error). A group of only non-negative weights gets the same grid
        here; the reference keeps its minimum at 0 there (scale max / (2^bits - 1)) and clips its upper half, so
        such groups' codes differ from Olive's.
        """
        import torch

        lo = torch.clamp(w.min(dim=1).values, max=0)
        hi = torch.clamp(w.max(dim=1).values, min=0)
        if self.symmetric:
            scale = 2 * torch.maximum(-lo, hi) / self.maxq
            zero = torch.full_like(scale, 2 ** (self.bits - 1))
        else:
            scale = (hi - lo) / self.maxq
            zero = torch.round(-lo / torch.where(scale > 0, scale, torch.ones_like(scale)))
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return scale, zero.clamp(0, self.maxq)

    def quantize(self, w, scale, zero):
        """Unsigned codes of `w` (out, k) for per-row `scale`/`zero` of shape (out,)."""
        import torch

        return torch.clamp(torch.round(w / scale[:, None]) + zero[:, None], 0, self.maxq)

    @staticmethod
    def dequantize(q, scale, zero):
        return (q - zero[:, None]) * scale[:, None]


def rtn(w, grid: Grid):
    """Round-to-nearest: codes (out, in), scales and zeros (out, groups) of a float weight."""
    import torch

    w = w.float()
    out, k = w.shape
    size = k if grid.group_size == -1 else grid.group_size
    codes, scales, zeros = [], [], []
    for start in range(0, k, size):
        block = w[:, start:start + size]
        scale, zero = grid.qparams(block)
        codes.append(grid.quantize(block, scale, zero))
        scales.append(scale)
        zeros.append(zero)
    return torch.cat(codes, dim=1), torch.stack(scales, dim=1), torch.stack(zeros, dim=1)


def dequantize(codes, scales, zeros, grid: Grid):
    """Float weights (out, in) from codes (out, in) and per-group scales and zeros (out, groups)."""
    size = codes.shape[1] // scales.shape[1]
    return (codes - zeros.repeat_interleave(size, dim=1)) * scales.repeat_interleave(size, dim=1)


def pack(values, bits: int):
    """Unsigned values (rows, n) into uint8 (rows, ceil(n * bits / 8)), first value in the low bits."""
    import torch

    if bits not in PACKED_BITS:
        raise ValueError(f"{bits}-bit values do not pack into whole bytes; 2, 4 or 8 do")
    per_byte = 8 // bits
    values = values.to(torch.uint8)
    pad = (-values.shape[1]) % per_byte
    if pad:
        values = torch.nn.functional.pad(values, (0, pad))
    values = values.reshape(values.shape[0], -1, per_byte)
    packed = torch.zeros(values.shape[:2], dtype=torch.uint8)
    for i in range(per_byte):
        packed |= values[:, :, i] << (bits * i)
    return packed


def unpack(packed, bits: int, n: int):
    """The inverse of `pack`: (rows, n) unsigned values as float32."""
    import torch

    if bits not in PACKED_BITS:
        raise ValueError(f"{bits}-bit values do not pack into whole bytes; 2, 4 or 8 do")
    per_byte = 8 // bits
    mask = 2**bits - 1
    parts = [(packed >> (bits * i)) & mask for i in range(per_byte)]
    return torch.stack(parts, dim=2).reshape(packed.shape[0], -1)[:, :n].float()


def quant_config(folder: Path) -> dict | None:
    """The folder's `quantization_config` when it is a checkpoint in this format, else None."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        return None
    config = json.loads(path.read_text(encoding="utf-8")).get("quantization_config")
    return config if isinstance(config, dict) and config.get("quant_method") == QUANT_METHOD else None


def grid_of(config: dict, module: str) -> Grid:
    """The grid of one module: the checkpoint's defaults with the module's overrides."""
    override = (config.get("overrides") or {}).get(module) or {}
    bits = override.get("bits", config["bits"])
    if bits not in PACKED_BITS:  # a checkpoint made elsewhere: 3 bits do not pack into whole bytes this way
        raise ValueError(f"{module}: {bits}-bit weights; this checkpoint format (and MatMulNBits) packs 2, 4 or 8")
    return Grid(bits=bits, group_size=override.get("group_size", config["group_size"]),
                symmetric=override.get("symmetric", config["symmetric"]))


PACKED_BITS = (2, 4, 8)  # the widths that pack whole values into a byte, low bits first


EMBEDDINGS = ("embed_tokens", "wte", "word_embeddings")


def load_state(folder: Path) -> dict:
    """Every tensor of a checkpoint folder's safetensors files."""
    from safetensors.torch import load_file

    state: dict = {}
    for file in sorted(Path(folder).glob("*.safetensors")):
        state.update(load_file(str(file)))
    return state


def quantized_modules(state: dict) -> set[str]:
    """Names of the modules stored as qweight/scales/qzeros."""
    return {name.rsplit(".", 1)[0] for name in state if name.endswith(".qweight")}


def dequantize_module(state: dict, config: dict, module: str):
    """Take one module's packed tensors out of `state` and return its float weight."""
    codes, scales, zeros, grid = module_codes(state, config, module)
    for part in PARTS:
        state.pop(f"{module}.{part}", None)
    return dequantize(codes, scales, zeros, grid)


def module_codes(state: dict, config: dict, module: str):
    """One module's codes (out, in), scales and zeros (out, groups), all float32, and its grid; `state` keeps them."""
    grid = grid_of(config, module)
    scales = state[f"{module}.scales"].float()
    qweight = state[f"{module}.qweight"]
    codes = unpack(qweight, grid.bits, qweight.shape[1] * 8 // grid.bits)
    qzeros = state.get(f"{module}.qzeros")
    if qzeros is None:  # Olive writes none for a symmetric grid: the middle level
        return codes, scales, torch_full_like(scales, 2 ** (grid.bits - 1)), grid
    qzeros = qzeros.reshape(qweight.shape[0], -1)  # see torch_quant.packed_parts
    return codes, scales, unpack(qzeros, grid.bits, scales.shape[1]), grid


def midpoint_zeros(scales, bits: int):
    """The packed zero points of a symmetric grid (its middle level), for a module stored without them."""
    return pack(torch_full_like(scales, 2 ** (bits - 1)), bits)


def torch_full_like(tensor, value):
    import torch

    return torch.full(tuple(tensor.shape), value, dtype=torch.float32)


def blocks_the_builder_refuses(folder: Path) -> list[str]:
    """Modules whose block of weights (group_size, or the whole row for -1) onnxruntime's MatMulNBits cannot take:
    a power of two of at least 16 only. Read from the safetensors headers."""
    from safetensors import safe_open

    config = quant_config(folder)
    if not config:
        return []
    bad = []
    for file in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            for name in [n for n in f.keys() if n.endswith(".qweight")]:
                module = name.removesuffix(".qweight")
                if module.rsplit(".", 1)[-1] in EMBEDDINGS:  # the builder gets them as float (with_float_embeddings)
                    continue
                grid = grid_of(config, module)
                block = grid.group_size if grid.group_size != -1 else \
                    f.get_slice(name).get_shape()[1] * 8 // grid.bits
                if block < 16 or block & (block - 1):
                    bad.append(f"{module} (blocks of {block})")
    return bad


def with_float_embeddings(folder: Path, out: Path) -> bool:
    """Copy a checkpoint to `out` with quantized embeddings stored as float (their quantized values).

    onnxruntime-genai 0.18's builder reads quantized linears but no quantized embeddings. Returns
    False (and writes nothing) when the checkpoint's embeddings are not quantized.
    """
    import shutil

    from safetensors.torch import save_file

    config = quant_config(folder)
    if not config or not config.get("embeds"):
        return False
    state = load_state(folder)
    for module in [m for m in quantized_modules(state) if m.rsplit(".", 1)[-1] in EMBEDDINGS]:
        state[f"{module}.weight"] = dequantize_module(state, config, module)
        (config.get("overrides") or {}).pop(module, None)
    shutil.copytree(folder, out, ignore=shutil.ignore_patterns("*.safetensors", "model.safetensors.index.json"))
    save_file(state, str(Path(out) / "model.safetensors"), metadata={"format": "pt"})
    full = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    full["quantization_config"] = {**config, "embeds": False}
    (Path(out) / "config.json").write_text(json.dumps(full, indent=2), encoding="utf-8")
    return True


def dequantized_state(folder: Path, dtype=None) -> dict:
    """Every tensor of a quantized checkpoint, with each quantized module's weight restored to float."""
    config = quant_config(folder)
    state = load_state(folder)
    for module in quantized_modules(state):
        weight = dequantize_module(state, config, module)
        state[f"{module}.weight"] = weight.to(dtype) if dtype is not None else weight
    return state
