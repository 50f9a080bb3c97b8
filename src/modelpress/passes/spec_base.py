"""What every pass declaration is built from: the model kinds, the strict config base, searchable
fields and `PassSpec`. The catalog and the ONNX and quantization spec modules all build on it."""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

# Model kinds that flow between passes.
HF = "hf"  # a Hugging Face model folder
HF_ADAPTER = "hf-adapter"  # a base Hugging Face folder plus a peft adapter folder
ONNX_GENAI = "onnx-genai"  # an onnxruntime-genai model folder
ONNX = "onnx"  # a plain ONNX model folder: model.onnx (+ external data), tokenizer, config.json
HF_QUANTIZED = "hf-quantized"  # a Hugging Face folder with weight-only quantized linears (modelpress.quantized)
GGUF = "gguf"  # a folder holding one model.gguf (llama.cpp, Ollama)

# The libraries whose code reads or writes each kind of model. A pass's cache key holds the versions of those of
# its input and output kinds (and `accelerate` for a training pass, its optional package if it has one), an
# evaluation's those of the model's kind: an upgrade re-runs what it may change, and nothing else.
# By import name: a GPU build (onnxruntime-gpu, onnxruntime-genai-cuda) is keyed by the distribution installing it.
_TORCH = ("torch", "transformers", "tokenizers", "safetensors")
_ONNX = ("onnx", "onnx_ir", "onnxscript", "onnxruntime")
KIND_LIBRARIES = {
    HF: _TORCH,
    HF_ADAPTER: (*_TORCH, "peft"),
    HF_QUANTIZED: _TORCH,
    ONNX: (*_ONNX, "transformers", "tokenizers"),  # its prompts are tokenized by transformers
    ONNX_GENAI: (*_ONNX, "onnxruntime_genai"),  # genai tokenizes itself
    GGUF: ("gguf", *_TORCH),  # written with gguf; read (dequantized) by transformers
}
# The libraries that may answer a model of a kind in an evaluation, beside those that read it: a GGUF model is
# answered by llama.cpp where llama-cpp-python is installed ("missing" in the key otherwise).
ANSWERED_BY = {GGUF: ("llama_cpp",)}

SAME_KIND = "same"  # `produces` of a pass whose output is of its input's kind
DATA_PARAMS = ("train_data_config", "eval_data_config", "data_config")  # params that name a data config
SEARCH = "search"  # json_schema_extra key: the values search tries when a param says SEARCHABLE_VALUES
NEUTRAL = "output_neutral"  # json_schema_extra key: the param changes a pass's log or checkpoints, not its output
ADDED = "keyed_when_set"  # json_schema_extra key: the param is in a cache key only when it differs from its default


def _marked(mark: str, value, field_kwargs: dict) -> dict:
    """`field_kwargs` with `mark: value` added to its json_schema_extra."""
    return {**field_kwargs, "json_schema_extra": {**(field_kwargs.get("json_schema_extra") or {}), mark: value}}


def searchable(*values, **field_kwargs):
    """A pydantic Field whose declared search values live next to its default (declared once)."""
    return Field(**_marked(SEARCH, list(values), field_kwargs))


def output_neutral(default, **field_kwargs):
    """A pydantic Field that changes only what a pass logs or how often it checkpoints, never its output:
    left out of the pass's cache key (`key_params`), so changing it reuses the cached result."""
    return Field(default, **_marked(NEUTRAL, True, field_kwargs))


def is_output_neutral(field) -> bool:
    """Whether a pydantic field was declared with `output_neutral`."""
    return _has_mark(field, NEUTRAL)


def _has_mark(field, mark: str) -> bool:
    return isinstance(field.json_schema_extra, dict) and bool(field.json_schema_extra.get(mark))


def keyed_when_set(default, **field_kwargs):
    """A pydantic Field added to a pass after cache entries of it existed, whose default is what the pass did
    before: left out of the cache key while it holds that default, so those entries stay valid."""
    return Field(default, **_marked(ADDED, True, field_kwargs))


def key_params(params: BaseModel) -> dict:
    """`params` as JSON without its output-neutral fields, nor its `keyed_when_set` fields at their defaults (also
    in nested models): what a cache key holds."""
    return params.model_dump(mode="json", exclude=_key_exclusions(params) or None)


def _key_exclusions(params: BaseModel) -> dict:
    """model_dump's `exclude` for `key_params`: the fields a cache key leaves out, nested models' as nested dicts."""
    exclude = {}
    for name, field in type(params).model_fields.items():
        value = getattr(params, name)
        if _has_mark(field, NEUTRAL) or (_has_mark(field, ADDED) and value == field.default):
            exclude[name] = True
        elif isinstance(value, BaseModel) and (nested := _key_exclusions(value)):
            exclude[name] = nested
    return exclude


class Strict(BaseModel):
    """Base for every config model: unknown keys are errors, never silently ignored."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


@dataclass(frozen=True)
class PassSpec:
    """What modelpress knows about a pass without importing it."""

    name: str
    summary: str
    params: type[Strict]
    entry: str  # "module:function" that runs the pass
    accepts: tuple[str, ...]
    produces: str
    needs_data: bool
    optional_package: tuple[str, str] | None = None  # (import name, pip extra)
    function: Callable | None = None  # set for plugin passes defined in a script
    origin: str = "built-in"  # or the plugin's package / script
    reads_execution_provider: bool = False  # its output depends on the run's execution provider
    # bumped when the pass's output changes for the same inputs (in its cache key where above 1, so that other
    # passes' entries stay): a pass-wide CACHE_VERSION for one pass
    output_version: int = 1

    def keys_execution_provider(self) -> bool:
        """Whether the execution provider belongs in this pass's cache key: it does for the passes that read it,
        and for plugins, whose code modelpress cannot see."""
        return self.reads_execution_provider or self.origin != "built-in"

    def origin_key(self) -> str:
        """The origin as a cache key holds it: a plugin script by its content (sha256), not by where it sits, so a
        moved or copied project reuses its cache."""
        return re.sub(r"^script .+ \(sha256 ", "script (sha256 ", self.origin)

    def runner(self) -> Callable:
        """The callable `(ctx, params) -> ModelRef` that runs this pass."""
        if self.function is not None:
            return self.function
        module, function = self.entry.split(":")
        return getattr(importlib.import_module(module), function)

    def output_kind(self, input_kind: str) -> str:
        return input_kind if self.produces == SAME_KIND else self.produces

    def libraries(self, input_kind: str) -> tuple[str, ...]:
        """The libraries (import names) whose versions this pass's output may depend on, run on a model of
        `input_kind`."""
        names = {*KIND_LIBRARIES.get(input_kind, ()), *KIND_LIBRARIES.get(self.output_kind(input_kind), ())}
        if self.trains():
            names.add("accelerate")  # transformers' Trainer runs on it
        if self.optional_package:
            names.add(self.optional_package[0])
        return tuple(sorted(names))

    def trains(self) -> bool:
        """A fine-tuning pass: its train_data_config defines the task's data and the eval split."""
        return "train_data_config" in self.params.model_fields

    def search_space(self) -> dict[str, list]:
        """Each parameter's declared search values (see `searchable`)."""
        return {name: list((f.json_schema_extra or {})[SEARCH]) for name, f in self.params.model_fields.items()
                if isinstance(f.json_schema_extra, dict) and SEARCH in f.json_schema_extra}
