"""ModelBuilder's `metadata_only` (Olive's): an ONNX causal LM exported with its KV cache (OnnxConversion with
use_kv_cache, possibly optimized or quantized since) becomes an onnxruntime-genai folder. The model is copied as
it is; the builder writes only genai_config.json and the tokenizer files (its `config_only`), from the config.json
and tokenizer that OnnxConversion keeps beside the model; the config's decoder inputs are then fitted to the
inputs the graph has (an export of another tool may take no position_ids), and a graph genai cannot drive is
refused."""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

from modelpress.context import PassContext
from modelpress.errors import ModelpressError
from modelpress.fsutil import atomic_write_json, read_json
from modelpress.models import ModelRef
from modelpress.onnx_model import MODEL_FILE, copy_model_files
from modelpress.passes.spec_base import ONNX_GENAI

# the graph's logits element type (onnx TensorProto) -> the builder precision whose I/O type it is
IO_PRECISION = {1: "fp32", 10: "fp16", 16: "bf16"}


def graph_io(model_path: Path) -> tuple[set[str], set[str], int]:
    """(input names, output names, the logits' element type) of an ONNX file, its weights left unread."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    logits = next((o for o in graph.output if o.name == "logits"), None)
    return ({i.name for i in graph.input}, {o.name for o in graph.output},
            logits.type.tensor_type.elem_type if logits is not None else 0)


def build_metadata(ctx: PassContext, precision: str, ep: str, options: list[str], search: dict | None = None
                   ) -> ModelRef:
    """Copy the ONNX model into the output and write the genai config and tokenizer beside it."""
    from onnxruntime_genai.models.builder import create_model, parse_extra_options

    source = ctx.model.path
    inputs, outputs, logits_type = graph_io(source / MODEL_FILE)
    if "logits" not in outputs or "past_key_values.0.key" not in inputs or "present.0.key" not in outputs:
        raise ModelpressError(
            f"ModelBuilder metadata_only: {source / MODEL_FILE} is not a causal LM with a KV cache (onnxruntime-genai "
            "feeds past_key_values.{i}.key/value and reads logits and present.{i}.key/value). Export it with "
            "OnnxConversion use_kv_cache: true, or build the model itself: ModelBuilder without metadata_only on "
            "the Hugging Face model.")
    if not (source / "config.json").is_file():
        raise ModelpressError(f"ModelBuilder metadata_only: {source} has no config.json, which the builder reads the "
                              "model's shape from; OnnxConversion keeps it beside the model.")
    io_precision = IO_PRECISION.get(logits_type, precision)
    if io_precision != precision:
        ctx.notes.append(f"the graph's inputs and outputs are {io_precision}, so genai_config.json says "
                         f"{io_precision} (precision {precision} describes a model this pass builds)")
    copy_model_files(source, ctx.out)
    work = ctx.out.parent / f"{ctx.out.name}.builder-cache"
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            parsed = parse_extra_options(source.name, str(source), str(ctx.out), io_precision, ep, str(work),
                                         [*options, "config_only=true", f"filename={MODEL_FILE}"], search=search)
            create_model(source.name, str(source), str(ctx.out), io_precision, ep, str(work), **parsed)
    except Exception as err:
        raise ModelpressError(f"the genai model builder could not write the config for {source} "
                              f"({type(err).__name__}: {err})") from err
    finally:
        shutil.rmtree(work, ignore_errors=True)
    (ctx.out / "builder.log").write_text(captured.getvalue(), encoding="utf-8")
    dropped, config = fit_decoder_inputs(ctx.out / "genai_config.json", inputs)
    unfed = sorted(inputs - config_input_names(config))
    if unfed:
        raise ModelpressError(f"ModelBuilder metadata_only: the graph takes {', '.join(unfed[:4])}, which "
                              "onnxruntime-genai would not feed (its config names the inputs the builder writes: "
                              "input_ids, attention_mask, past_key_values.N.key/value). Keep those names (no "
                              "RenameInputs before this pass), or build the model with ModelBuilder.")
    ctx.notes.append("genai_config.json and the tokenizer written for the ONNX model as it is (metadata_only)"
                     + (f"; inputs the graph lacks left out: {', '.join(dropped)}" if dropped else ""))
    return ModelRef(ONNX_GENAI, ctx.out, id="")


def fit_decoder_inputs(config_path: Path, graph_inputs: set[str]) -> tuple[list[str], dict]:
    """Remove from genai_config.json's decoder inputs those the graph does not take, and name the position ids
    where the graph takes them and the builder's config for this architecture does not (genai then computes them
    from each row's mask); returns the removed keys and the config as written. A per-layer name template is
    checked on layer 0."""
    config = read_json(config_path)
    decoder = config["model"]["decoder"]
    inputs = decoder.setdefault("inputs", {})
    dropped = [key for key, name in inputs.items()
               if (name.replace("%d", "0") if "%d" in name else name) not in graph_inputs]
    for key in dropped:
        del inputs[key]
    added = "position_ids" in graph_inputs and "position_ids" not in inputs
    if added:
        inputs["position_ids"] = "position_ids"
    if dropped or added:
        atomic_write_json(config_path, config)
    return dropped, config


def config_input_names(config: dict) -> set[str]:
    """Every input name genai_config.json's decoder feeds, its per-layer templates written out."""
    decoder = config["model"]["decoder"]
    layers = int(decoder.get("num_hidden_layers", 0))
    names = set()
    for name in decoder.get("inputs", {}).values():
        names |= {name % i for i in range(layers)} if "%d" in name else {name}
    return names
