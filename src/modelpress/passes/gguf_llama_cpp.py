"""GgufExport's K-quants (Q4_K_M and the like): an f16 export quantized by llama.cpp's own quantizer.

The gguf package writes no K-quant. llama.cpp's `llama_model_quantize` (what `llama-quantize` runs), which
llama-cpp-python exposes, makes them from a float GGUF file as llama.cpp's tools do: its mixtures (Q4_K_M keeps some
attention and feed-forward matrices at Q6_K), and its fallback types for matrices whose rows are not a multiple of
its 256-value super-blocks. llama-cpp-python is not a modelpress dependency (PyPI has only its source, which
compiles llama.cpp); the config check asks for it when an outtype needs it.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

from modelpress.errors import MissingDependencyError, ModelpressError
from modelpress.passes.gguf_spec import LLAMA_CPP_TYPES


def quantize_with_llama_cpp(source: Path, out: Path, outtype: str, threads: int) -> list[str]:
    """Quantize the float GGUF file `source` to `out` as llama.cpp's `llama-quantize` does; returns llama.cpp's
    warnings (its fallback types, for one)."""
    try:
        import llama_cpp
        from llama_cpp import _logger
    except ImportError:
        raise MissingDependencyError("llama_cpp", "llama-cpp-python", f"GgufExport outtype {outtype}") from None
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{LLAMA_CPP_TYPES[outtype]}")
    params.nthread = threads
    said: list[str] = []

    @llama_cpp.llama_log_callback
    def collect(level: int, text: bytes, user_data) -> None:  # llama.cpp prints a line a tensor: kept, not printed
        if level in (2, 3):  # GGML_LOG_LEVEL_WARN, _ERROR
            said.append(text.decode("utf-8", "replace").strip())

    llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
    try:
        failed = llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), ctypes.byref(params))
    finally:
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))  # llama-cpp-python's own again
    if failed or not out.is_file():
        raise ModelpressError(f"llama.cpp's quantizer could not make {LLAMA_CPP_TYPES[outtype]} from {source.name}"
                              + (f": {'; '.join(said[-3:])}" if said else ""))
    return [line.replace("llama_model_quantize_impl: ", "") for line in said if line]
