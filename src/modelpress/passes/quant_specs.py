"""Parameters and catalog entries of the torch-level weight quantizers of Olive's LLM recipes.

`SelectiveMixedPrecision -> Gptq -> Rtn -> ModelBuilder` is the chain those recipes use: the
first picks the layers that keep more bits, Gptq quantizes the decoder's linear layers on
calibration data, Rtn rounds what is left (the LM head and the embeddings, often at 8 bits),
and ModelBuilder turns the quantized checkpoint into an onnxruntime-genai folder. The
implementations are in `modelpress.passes.torch_quant`; nothing here imports torch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from modelpress.passes.spec_base import HF, HF_QUANTIZED, PassSpec, Strict, searchable

Bits = Literal[2, 4, 8]


def check_group_size(value: int | None) -> None:
    """-1 (one group per row) or a power of two of at least 16, as Olive's quantized layers and onnxruntime's
    MatMulNBits (whose block size it becomes) take."""
    if value is not None and value != -1 and (value < 16 or value & (value - 1)):
        raise ValueError(f"group_size must be -1 (one group per row) or a power of two of at least 16 (16, 32, 64, "
                         f"128, ...), as onnxruntime's MatMulNBits takes it; found {value}")


class ModuleOverride(Strict):
    """Settings of one module that differ from the pass's own."""

    bits: Bits | None = None
    group_size: int | None = None
    symmetric: bool | None = None

    @model_validator(mode="after")
    def _group_size(self):
        check_group_size(self.group_size)
        return self


class QuantizerParams(Strict):
    """What Rtn and Gptq share (Olive's names)."""

    bits: Bits = searchable(4, 8, default=4, description="Bits per weight.")
    group_size: int = searchable(32, 128, default=128, description="Weights per group along the input axis "
                                 "(each group has its own scale and zero point); -1: one group per row.")
    sym: bool = Field(False, description="Symmetric grid (zero point in the middle) instead of min-max.")
    lm_head: bool = Field(False, description="Also quantize the LM head.")
    overrides: dict[str, ModuleOverride] | None = Field(
        None, description="Per-module settings by module name, e.g. {\"lm_head\": {\"bits\": 8}}; they win over "
        "SelectiveMixedPrecision's choices.")

    @model_validator(mode="after")
    def _group_size(self):
        check_group_size(self.group_size)
        return self


class RtnParams(QuantizerParams):
    """Round each weight to the nearest level of its group's grid; no data needed."""

    embeds: bool = Field(False, description="Also quantize the input embeddings.")


class GptqParams(QuantizerParams):
    """GPTQ (Frantar et al. 2022): quantize column by column, correcting the rest for each error."""

    damp_percent: float = Field(0.01, gt=0, lt=1, description="Damping added to the Hessian's diagonal, as a "
                                "fraction of its mean.")
    desc_act: bool | None = Field(None, description="Quantize columns in order of decreasing input size "
                                  "(act-order); only with group_size -1. Default: on for group_size -1.")
    data_config: str | None = Field(
        None, description="Data config whose rows calibrate the layers; default: wikitext-2 (Olive's default, "
        "read from the local Hugging Face datasets cache).")
    calibration_samples: int = Field(128, gt=0, description="Calibration rows used (the first N).")
    max_seq_len: int = Field(2048, gt=0, description="Tokens per calibration row at most.")

    @model_validator(mode="after")
    def _act_order_needs_one_group(self):
        if self.desc_act and self.group_size != -1:
            raise ValueError("desc_act can only be true with group_size -1")
        return self


class SelectiveMixedPrecisionParams(Strict):
    """Choose the layers that keep more bits; Gptq and Rtn after it quantize with that choice."""

    algorithm: Literal["k_quant_down", "k_quant_mixed", "k_quant_last", "kld_gradient"] = searchable(
        "k_quant_mixed", "k_quant_last", default="k_quant_mixed",
        description="k_quant_last: the LM head; k_quant_down: also the MLP down projections of the first and last "
        "eighth of the layers and of every third layer between (llama.cpp's Q4_K_M rule); k_quant_mixed: those "
        "and the attention inputs (q/k/v) of the same layers; kld_gradient: the layers whose low-bit error moves "
        "the output distribution most (first-order KL estimate on calibration data), until `ratio` of the "
        "weights stay at `bits`.")
    bits: Bits = Field(4, description="Bits of the layers not chosen.")
    high_bits: Bits = Field(8, description="Bits of the chosen layers.")
    group_size: int = Field(128, description="kld_gradient: group size of both grids.")
    sym: bool = Field(False, description="kld_gradient: symmetric grids.")
    ratio: float | None = Field(None, gt=0, lt=1, description="kld_gradient: fraction of the decoder's linear "
                                "weights that stay at `bits` (required for kld_gradient). The LM head is outside it "
                                "and keeps high_bits, as in the k_quant rules (Olive counts it in).")
    data_config: str | None = Field(None, description="kld_gradient: calibration data config; default wikitext-2.")
    calibration_samples: int = Field(32, gt=0, description="kld_gradient: calibration rows used.")
    max_seq_len: int = Field(512, gt=0, description="kld_gradient: tokens per calibration row at most.")

    @model_validator(mode="after")
    def _group_size_takes(self):
        check_group_size(self.group_size)
        return self

    @model_validator(mode="after")
    def _ratio_for_scores(self):
        if self.algorithm == "kld_gradient" and self.ratio is None:
            raise ValueError("kld_gradient needs ratio: the fraction of weights that stay at `bits` (e.g. 0.65)")
        return self


_ENTRY = "modelpress.passes.torch_quant:"

QUANT_SPECS: tuple[PassSpec, ...] = (
    PassSpec("SelectiveMixedPrecision", "choose the layers that keep more bits (k-quant rules or KL gradients)",
             SelectiveMixedPrecisionParams, _ENTRY + "run_mixed_precision", (HF,), HF, True),
    PassSpec("Gptq", "GPTQ weight quantization of a Hugging Face model (calibrated)", GptqParams,
             _ENTRY + "run_gptq", (HF,), HF_QUANTIZED, True,
             output_version=3),  # 2: float32 (a018489), 3: float64 again, lazy updates per group inside a block
    PassSpec("Rtn", "round-to-nearest weight quantization of a Hugging Face model", RtnParams,
             _ENTRY + "run_rtn", (HF, HF_QUANTIZED), HF_QUANTIZED, False),
)
