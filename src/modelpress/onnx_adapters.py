"""Adapter weight files beside an ONNX model whose LoRA weights are graph inputs (ExtractAdapters).

`adapter_weights.onnx_adapter` is onnxruntime's adapter format, which onnxruntime-genai loads
(`og.Adapters(model).load(file, name)`) and onnxruntime activates per run
(`RunOptions.add_active_adapter`). The same weights may be saved as `.npz` or `.safetensors`
for other tools; those are read without pickle.
"""

from __future__ import annotations

from pathlib import Path

from modelpress.errors import ModelpressError

ADAPTER_FILES = {"onnx_adapter": "adapter_weights.onnx_adapter", "numpy": "adapter_weights.npz",
                 "safetensors": "adapter_weights.safetensors"}


def adapter_file(folder: Path) -> Path | None:
    """The folder's adapter weights file, if ExtractAdapters wrote one."""
    for name in ADAPTER_FILES.values():
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    return None


def write_adapter(values: dict, path: Path) -> None:
    """{name: numpy array} to `path`, in the format its suffix names, written under a temporary name first."""
    import numpy as np

    values = {k: np.ascontiguousarray(v) for k, v in values.items()}
    if path.suffix != ".onnx_adapter" and any(v.dtype.name == "bfloat16" for v in values.values()):
        raise ModelpressError(f"{path.name}: bfloat16 LoRA weights (a bf16 build) cannot be read back from this "
                              "format (numpy has no bfloat16 of its own); use save_format onnx_adapter")
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".onnx_adapter":
        import onnxruntime as ort

        adapter = ort.AdapterFormat()
        adapter.set_adapter_version(1)
        adapter.set_model_version(1)
        adapter.set_parameters({k: _ort_value(ort, v) for k, v in values.items()})
        adapter.export_adapter(str(tmp))
    elif path.suffix == ".npz":
        with open(tmp, "wb") as f:
            np.savez(f, **values)
    else:
        from safetensors.numpy import save_file

        save_file(values, str(tmp))
    tmp.replace(path)


def _ort_value(ort, array):
    """An OrtValue of `array`; a bfloat16 one (a bf16 genai build's LoRA weights, as onnx reads them) from its bits,
    which ortvalue_from_numpy refuses."""
    import numpy as np

    if array.dtype.name == "bfloat16":
        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(array.view(np.uint16), onnx_element_type=16)
    return ort.OrtValue.ortvalue_from_numpy(array)


def _array(value):
    """A copy of an OrtValue's tensor; a bfloat16 one (which OrtValue.numpy refuses) read from its bits."""
    import ctypes

    import numpy as np

    if value.data_type() != "tensor(bfloat16)":
        return np.array(value.numpy(), copy=True)
    import ml_dtypes

    bits = (ctypes.c_uint8 * value.tensor_size_in_bytes()).from_address(value.data_ptr())
    return np.frombuffer(bits, dtype=np.uint16).reshape(value.shape()).copy().view(ml_dtypes.bfloat16)


def read_adapter(path: Path) -> dict:
    """{name: numpy array} from an adapter file."""
    import numpy as np

    path = Path(path)
    if path.suffix == ".onnx_adapter":
        import onnxruntime as ort

        adapter = ort.AdapterFormat.read_adapter(str(path))  # its arrays are views of its memory: copy them
        return {k: _array(v) for k, v in adapter.get_parameters().items()}
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    from safetensors.numpy import load_file

    return load_file(str(path))


def as_onnx_adapter(path: Path, scratch: Path) -> Path:
    """An .onnx_adapter file with the weights of `path` (itself, or a copy written under `scratch`)."""
    if path.suffix == ".onnx_adapter":
        return path
    out = Path(scratch) / "adapter_weights.onnx_adapter"
    write_adapter(read_adapter(path), out)
    return out


def genai_adapters(og, model, path: Path | None, scratch: Path):
    """onnxruntime-genai Adapters holding `path` as "active" (None when there is no adapter)."""
    if path is None:
        return None
    adapters = og.Adapters(model)
    try:
        adapters.load(str(as_onnx_adapter(Path(path), scratch)), "active")
    except Exception as err:  # onnxruntime's own error types (a file that is no adapter, one for another model)
        raise ModelpressError(f"{path} cannot be loaded as an adapter of this model: {str(err).strip()[:300]}. Give "
                              "an adapter_weights.* file that ExtractAdapters wrote for it.") from None
    return adapters
