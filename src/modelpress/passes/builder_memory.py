"""The genai builder's int4/int8 export in bounded memory: the same builder, fed and drained a layer at a time.

Where the plain builder's memory goes (profiled in benchmarks/scale.py, see docs/design.md):
1. it loads the whole Hugging Face model (`from_pretrained`, 7.6 GB for Phi-3-mini in bf16);
2. it records every weight as a lazy float initializer of the graph, which keeps every torch
   tensor alive until the model is saved;
3. at save it turns the whole graph into one ModelProto (`ir.to_proto`: every weight in float32,
   15 GB for Phi-3-mini) and quantizes that, holding the float copy and the int4 result at once.

`bounded_builder()` changes none of the builder's graph-making code. Inside it, each builder
instance gets three wrappers, installed when its `make_model` starts:
- `load_weights`: the model is made on the meta device; embeddings, final norm and LM head are
  read from the safetensors checkpoint at once, each decoder layer only when it is emitted;
- `make_layer`: reads the layer's tensors, emits it, then drops the layer's tensors;
- `make_matmul_float`: a MatMul the builder would quantize at save is quantized now, alone, by
  the same onnxruntime `MatMulNBitsQuantizer` with the same settings, and emitted as the
  MatMulNBits node and initializers that quantizer writes (same names, same bytes);
and `to_nbits` returns the graph as it is when nothing is left to quantize (otherwise the
builder's own). What is not covered (pre-quantized inputs, adapters, QDQ, per-node bit
overrides, quantized embeddings, CUDA weight prepacking) falls back to the builder's own path,
which gives the same model with the plain builder's memory.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

LAYER_NAME = re.compile(r"^(.*\.layers)\.(\d+)$")


class Checkpoint:
    """Tensors of a Hugging Face safetensors checkpoint, read one at a time (memory-mapped by safetensors)."""

    def __init__(self, folder: Path):
        folder = Path(folder)
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
        elif (folder / "model.safetensors").is_file():
            from safetensors import safe_open

            with safe_open(str(folder / "model.safetensors"), "pt") as f:
                weight_map = {k: "model.safetensors" for k in f.keys()}
        else:
            raise FileNotFoundError(f"{folder} has no safetensors checkpoint")
        self.folder, self.weight_map = folder, weight_map

    def load(self, names: list[str]) -> dict:
        from safetensors import safe_open

        out, by_file = {}, {}
        for name in names:
            if name in self.weight_map:
                by_file.setdefault(self.weight_map[name], []).append(name)
        for file, keys in by_file.items():
            with safe_open(str(self.folder / file), "pt") as f:
                for key in keys:
                    out[key] = f.get_tensor(key)
        return out


def _release(module) -> None:
    """Drop the module's tensors (the graph keeps what it still needs: lazy initializers hold their own)."""
    for m in module.modules():
        for local in list(m._parameters):
            m._parameters[local] = None


class _Bounded:
    """The wrappers one builder instance gets (see the module docstring)."""

    def __init__(self, builder, input_path: str, stats: dict):
        self.b, self.stats = builder, stats
        self.checkpoint = None
        self.names: dict[int, str] = {}
        self.fallbacks: list[str] = []
        self.load_weights, self.make_layer = builder.load_weights, builder.make_layer
        self.make_matmul_float, self.to_nbits = builder.make_matmul_float, builder.to_nbits
        if self._eligible(input_path):
            builder.load_weights = self._load_weights
            builder.make_layer = self._make_layer
            builder.make_matmul_float = self._make_matmul_float
            builder.to_nbits = self._to_nbits
            stats["bounded"] = True

    def _eligible(self, input_path: str) -> bool:
        import onnx_ir as ir

        b = self.b
        quantizing = b.onnx_dtype in {ir.DataType.INT4, ir.DataType.UINT4, ir.DataType.INT8, ir.DataType.UINT8}
        why = None
        if not quantizing:
            why = f"precision {b.onnx_dtype.name} (only int4/int8 exports are bounded)"
        elif b.quant_type is not None or "adapter_path" in b.extra_options or input_path.endswith(".gguf"):
            why = "a pre-quantized, adapter or GGUF input"
        elif b.quant_attrs.get("use_qdq"):
            why = "use_qdq"
        elif b.io_dtype not in {ir.DataType.FLOAT, ir.DataType.FLOAT16}:
            why = f"io dtype {b.io_dtype.name}"
        elif getattr(b, "exact_quant_override_names", None) or "Gather" in b.quant_attrs["op_types_to_quantize"]:
            why = "per-node overrides or quantized embeddings"
        elif b.ep == "cuda" and b.matmul_attrs.get("weights_prepacked", 0) > 0:
            why = "CUDA weight prepacking"
        else:
            try:
                self.checkpoint = Checkpoint(Path(input_path))
                self.meta_model = _meta_model(input_path, b.hf_remote)
                missing = [n for n, _ in self.meta_model.named_parameters() if n not in self.checkpoint.weight_map]
                if missing:  # names that differ from the model's: from_pretrained's own key mapping is needed
                    why = f"{len(missing)} parameters not under their own names in the checkpoint (e.g. {missing[0]})"
            except (FileNotFoundError, OSError, ValueError) as err:
                why = str(err)
        if why:
            self.stats["bounded"], self.stats["why_not"] = False, why
        return why is None

    # --- weights ---------------------------------------------------------------------------------

    def _load_weights(self, input_path: str):
        model, config = self.meta_model, self.meta_model.config
        self.names = {id(m): name for name, m in model.named_modules()}
        layers = {name for name in self.names.values() if LAYER_NAME.match(name)}
        for name, module in model.named_modules():  # everything outside the decoder layers, now
            if name in layers or any(name.startswith(layer + ".") for layer in layers):
                continue
            if any(p is not None and p.is_meta for p in module._parameters.values()):
                _materialize_own(module, name, self.checkpoint)
        if getattr(config, "tie_word_embeddings", False):
            model.tie_weights()
        return model

    def _make_layer(self, layer_id, layer):
        _materialize_all(layer, self.names[id(layer)], self.checkpoint)
        self.make_layer(layer_id, layer)
        _release(layer)

    # --- quantization as each MatMul is made -----------------------------------------------------

    def _make_matmul_float(self, matmul, name, root_input, **kwargs):
        b = self.b
        config = getattr(b, "int4_customized_weight_config", {}) or {}
        if name in b.quant_attrs["nodes_to_exclude"] or "MatMul" not in b.quant_attrs["op_types_to_quantize"]:
            return self.make_matmul_float(matmul, name, root_input, **kwargs)
        if name in config:
            self.fallbacks.append(name)
            return self.make_matmul_float(matmul, name, root_input, **kwargs)
        output = "logits" if kwargs.get("logits", False) else f"{name}/output_0"
        weight = name[1:].replace("/", ".") + ".weight"
        for node, initializers in quantize_one(b, matmul.weight, weight, name, root_input, output):
            for array_name, array in initializers:
                b.make_initializer(array, array_name)
            b.make_node(node["op_type"], inputs=node["inputs"], outputs=node["outputs"], name=node["name"],
                        domain=node["domain"], **node["attrs"])
        last_dim = matmul.weight.shape[0]
        seq_dim = kwargs.get("seq_dim", "sequence_length")
        b.make_value(output, b.io_dtype, shape=b.make_hidden_state_shape(seq_dim=seq_dim, last_dim=last_dim))
        self.stats["streamed"] = self.stats.get("streamed", 0) + 1
        return name

    def _to_nbits(self):
        if self.fallbacks:  # nodes with their own bits: the builder's whole-graph pass quantizes them
            self.stats["whole_graph_nbits"] = True
            return self.to_nbits()
        return self.b.model


def _meta_model(input_path: str, trust_remote_code: bool):
    """The Hugging Face model of `input_path`, made on the meta device (no memory for its weights)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(input_path, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=getattr(config, "dtype", None) or torch.float32,
                                                trust_remote_code=trust_remote_code)


def _materialize_own(module, name: str, checkpoint: Checkpoint) -> None:
    """A module's own (not its children's) meta parameters, from the checkpoint."""
    import torch

    prefix = f"{name}." if name else ""
    wanted = {local: prefix + local for local, p in module._parameters.items() if p is not None and p.is_meta}
    values = checkpoint.load(list(wanted.values()))
    for local, full in wanted.items():
        if full in values:  # in the model's dtype, as from_pretrained casts a checkpoint stored in another
            dtype = module._parameters[local].dtype
            module._parameters[local] = torch.nn.Parameter(values[full].to(dtype), requires_grad=False)


def _materialize_all(module, name: str, checkpoint: Checkpoint) -> None:
    for child_name, child in module.named_modules():
        _materialize_own(child, f"{name}.{child_name}" if child_name else name, checkpoint)
        missing = [local for local, p in child._parameters.items() if p is not None and p.is_meta]
        if missing:
            raise KeyError(f"{name}.{child_name}: {', '.join(missing)} not in the checkpoint")


def quantize_one(b, weight, weight_name: str, node_name: str, root_input: str, output: str):
    """[(node dict, [(initializer name, array)])]: onnxruntime's MatMulNBitsQuantizer on this one MatMul,
    with the builder's settings (what its `to_nbits` would write for this node)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper
    from onnx_ir.tensor_adapters import to_torch_dtype
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    from onnxruntime.quantization.quant_utils import QuantFormat

    value = weight.detach().T.to(to_torch_dtype(b.io_dtype)).contiguous().numpy()
    elem = TensorProto.FLOAT if value.dtype == np.float32 else TensorProto.FLOAT16
    k, n = value.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", [root_input, weight_name], [output], name=node_name)], "one",
        [helper.make_tensor_value_info(root_input, elem, ["batch", "sequence", k])],
        [helper.make_tensor_value_info(output, elem, ["batch", "sequence", n])],
        [numpy_helper.from_array(value, weight_name)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    del value
    base = getattr(b, "quantization_algo", "default")
    algo = None
    if base != "default":
        algo = b.make_algo_config(base, {node_name: {"bits": b.quant_attrs["bits"]}})
    quantizer = MatMulNBitsQuantizer(model=model, bits=b.quant_attrs["bits"],
                                     block_size=b.quant_attrs["matmul_block_size"],
                                     is_symmetric=b.quant_attrs["is_symmetric"],
                                     accuracy_level=b.quant_attrs["accuracy_level"], nodes_to_exclude=[],
                                     quant_format=QuantFormat.QOperator,
                                     op_types_to_quantize=b.quant_attrs["op_types_to_quantize"], algo_config=algo)
    quantizer.process()
    out = quantizer.model.model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in out.initializer}
    result = []
    for node in out.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        result.append(({"op_type": node.op_type, "inputs": list(node.input), "outputs": list(node.output),
                        "name": node.name, "domain": node.domain, "attrs": attrs},
                       [(i, inits[i]) for i in node.input if i in inits]))
    return result


@contextlib.contextmanager
def bounded_builder(stats: dict | None = None):
    """Within: every genai builder instance exports int4/int8 in bounded memory where it can (see above).

    `stats` receives {"bounded": bool, "why_not": str, "streamed": MatMuls quantized as made,
    "whole_graph_nbits": bool}.
    """
    import sys

    import onnxruntime_genai.models.builder  # noqa: F401  (it imports its builders as the top-level `builders`)

    stats = {} if stats is None else stats
    # the builder's own imports load builders/base.py as `builders.base`, a second module beside
    # `onnxruntime_genai.models.builders.base`: patch the Model class of each that is loaded
    classes = {id(m.Model): m.Model for name, m in list(sys.modules.items())
               if name.endswith("builders.base") and hasattr(m, "Model")}
    originals = {key: cls.make_model for key, cls in classes.items()}

    def wrap(original):
        def make_model(self, input_path):
            _Bounded(self, str(input_path), stats)
            return original(self, input_path)
        return make_model

    for key, cls in classes.items():
        cls.make_model = wrap(originals[key])
    try:
        yield stats
    finally:
        for key, cls in classes.items():
            cls.make_model = originals[key]
