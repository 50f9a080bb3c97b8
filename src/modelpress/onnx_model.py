"""Plain ONNX model folders (`onnx` kind): open them with the chosen session options, run them, write them.

A folder holds `model.onnx` (its weights in `model.onnx.data` beside it unless the model was
saved as one file), the Hugging Face `config.json` and tokenizer files, and optionally
`ort_session.json`: the onnxruntime session options picked by OrtSessionParamsTuning, which
every session opened here honours. Graph inputs are `input_ids`, `attention_mask` (and
`token_type_ids` for models that take them), plus `past_key_values.{i}.key|value` for a model
exported with a KV cache; the output is `logits`. Nothing here imports torch, and onnxruntime
is imported only when a session is opened.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field, ValidationError

from modelpress.errors import ModelpressError
from modelpress.passes.catalog import Strict
from modelpress.passes.onnx_specs import ExecutionModeName, OptLevelName
from modelpress.runtime import capped_threads

MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
SESSION_FILE = "ort_session.json"
CARD_FILE = "modelpress_model.json"  # the engine's model card (models.MODEL_CARD); a pass writes its own
EXTERNAL_THRESHOLD = 1024  # bytes: smaller tensors stay inside model.onnx

class SessionSettings(Strict):
    """The onnxruntime session options saved in ort_session.json (`session_options`)."""

    intra_op_num_threads: int = Field(0, ge=0, description="Threads inside one operator; 0: onnxruntime's choice.")
    inter_op_num_threads: int = Field(0, ge=0, description="Threads across operators (parallel mode); 0: default.")
    execution_mode: ExecutionModeName = Field("sequential", description="Run operators one at a time or in parallel.")
    graph_optimization_level: OptLevelName = Field("all", description="Graph optimizations applied at load.")


def read_session_settings(folder: Path) -> SessionSettings | None:
    """The settings in folder/ort_session.json, or None when the folder has none."""
    path = Path(folder) / SESSION_FILE
    if not path.is_file():
        return None
    try:
        return SessionSettings.model_validate(json.loads(path.read_text(encoding="utf-8"))["session_options"])
    except (ValueError, KeyError, TypeError, ValidationError) as err:
        raise ModelpressError(f"{path} is not a valid session settings file ({err}). Delete it, or re-run "
                              "OrtSessionParamsTuning to write it again.") from None


def quiet_options():
    """onnxruntime SessionOptions with quiet logging, computing on the threads a Ray task reserved
    (`runtime.limit_threads`) or else on onnxruntime's choice (0: a thread per physical core)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = capped_threads(0)
    return options


def session_options(folder: Path):
    """onnxruntime SessionOptions for running a model folder: its ort_session.json if present, quiet logging."""
    options = quiet_options()
    settings = read_session_settings(folder)
    return options if settings is None else apply_settings(options, settings)


_EXECUTION_MODES = {"sequential": "ORT_SEQUENTIAL", "parallel": "ORT_PARALLEL"}
_OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
               "layout": "ORT_ENABLE_LAYOUT", "all": "ORT_ENABLE_ALL"}


def apply_settings(options, settings: SessionSettings):
    """Set `settings` on an onnxruntime SessionOptions and return it; in a Ray task their thread counts stay
    within the CPUs it reserved (`runtime.capped_threads`), both when they are tuned and when they run."""
    import onnxruntime as ort

    options.intra_op_num_threads = capped_threads(settings.intra_op_num_threads)
    options.inter_op_num_threads = capped_threads(settings.inter_op_num_threads)
    options.execution_mode = getattr(ort.ExecutionMode, _EXECUTION_MODES[settings.execution_mode])
    level = _OPT_LEVELS[settings.graph_optimization_level]
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    return options


def load_session(folder: Path, providers: Sequence[str] = ("CPUExecutionProvider",)):
    """An InferenceSession for folder/model.onnx with the folder's session options."""
    import onnxruntime as ort

    path = Path(folder) / MODEL_FILE
    if not path.is_file():
        raise ModelpressError(f"{folder} has no {MODEL_FILE}: it is not an ONNX model folder. "
                              "Produce one with the OnnxConversion pass.")
    try:
        return ort.InferenceSession(str(path), session_options(folder), providers=list(providers))
    except Exception as err:  # onnxruntime raises its own exception types for unloadable models
        raise ModelpressError(f"onnxruntime cannot load {path}: {type(err).__name__}: {err}") from err


# --- running ------------------------------------------------------------------------------------

_NUMPY_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
                "tensor(int32)": "int32", "tensor(bool)": "bool"}


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int = 0):
    """Right-pad token id lists to one length: (input_ids, attention_mask) as int64 arrays."""
    import numpy as np

    width = max(len(s) for s in sequences)
    ids = np.full((len(sequences), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(sequences), width), dtype=np.int64)
    for row, seq in enumerate(sequences):
        ids[row, :len(seq)] = seq
        mask[row, :len(seq)] = 1
    return ids, mask


def graph_feeds(inputs, input_ids, attention_mask=None, token_type_ids=None) -> dict:
    """The feed dict for a session's inputs (`session.get_inputs()`).

    token_type_ids are zeros unless given (a sentence pair's segments); a KV-cache graph gets an empty past
    (length 0), so one call scores the whole sequence.
    """
    import numpy as np

    if isinstance(input_ids, (list, tuple)) and attention_mask is None:
        input_ids, attention_mask = pad_batch(input_ids)
    ids = np.asarray(input_ids, dtype=np.int64)
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask, dtype=np.int64)
    feeds = {}
    for spec in inputs:
        dtype = _NUMPY_TYPES.get(spec.type, "float32")
        if spec.name == "input_ids":
            feeds[spec.name] = ids.astype(dtype)
        elif spec.name == "attention_mask":
            feeds[spec.name] = mask.astype(dtype)
        elif spec.name == "token_type_ids":
            feeds[spec.name] = np.zeros_like(ids, dtype=dtype) if token_type_ids is None else \
                np.asarray(token_type_ids).astype(dtype)
        elif spec.name == "position_ids":  # counted along each row's mask: a left-padded row starts at 0 too
            feeds[spec.name] = np.clip(mask.cumsum(-1) - 1, 0, None).astype(dtype)
        elif spec.name.startswith("past_key_values"):
            heads, head_size = spec.shape[1], spec.shape[3]
            feeds[spec.name] = np.zeros((ids.shape[0], heads, 0, head_size), dtype=dtype)
        else:
            raise ModelpressError(f"the ONNX graph has an input {spec.name!r} that modelpress cannot fill "
                                  "(known: input_ids, attention_mask, token_type_ids, position_ids, past_key_values.*)")
    return feeds


@dataclass(frozen=True)
class InputSpec:
    """A graph input as `graph_feeds` needs it (the fields of onnxruntime's NodeArg)."""

    name: str
    type: str  # "tensor(int64)", "tensor(float)", ...
    shape: tuple  # ints for fixed axes, names for dynamic ones


def input_specs(model_path: Path) -> list[InputSpec]:
    """The graph inputs of an ONNX file, read without loading its weights or opening a session."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}
    specs = []
    for value in graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        kind = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
        shape = tuple(d.dim_value if d.HasField("dim_value") else d.dim_param for d in tensor.shape.dim)
        specs.append(InputSpec(value.name, _ORT_TYPE_NAMES.get(kind, f"tensor({kind})"), shape))
    return specs


_ORT_TYPE_NAMES = {"float32": "tensor(float)", "float16": "tensor(float16)", "int64": "tensor(int64)",
                   "int32": "tensor(int32)", "bool": "tensor(bool)"}


class OnnxModel:
    """An ONNX model folder opened in onnxruntime; `logits` runs it on token ids."""

    def __init__(self, folder: Path, providers: Sequence[str] = ("CPUExecutionProvider",)):
        self.folder = Path(folder)
        self.session = load_session(self.folder, providers)
        self.input_names = [i.name for i in self.session.get_inputs()]

    def logits(self, input_ids, attention_mask=None, token_type_ids=None):
        """float32 logits for a batch: ids as a 2-D array (or lists, right-padded when ragged)."""
        import numpy as np

        feeds = graph_feeds(self.session.get_inputs(), input_ids, attention_mask, token_type_ids)
        return np.asarray(self.session.run([logits_name(self.session)], feeds)[0], dtype=np.float32)


def logits_name(session) -> str:
    """The graph's logits output: `logits`, or its first output where GraphSurgeries' RenameOutputs renamed it."""
    names = [o.name for o in session.get_outputs()]
    return "logits" if "logits" in names else names[0]


def hf_config(folder: Path) -> dict:
    """The Hugging Face config.json of a model folder ({} when it has none)."""
    path = Path(folder) / "config.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def synthetic_ids(folder: Path, batch: int, length: int, seed: int):
    """Random token ids below the model's vocab size (from config.json), with a fixed seed."""
    import numpy as np

    vocab = int(hf_config(folder).get("vocab_size") or 1000)
    return np.random.default_rng(seed).integers(0, vocab, size=(batch, length), dtype=np.int64)


def logit_drift(before: Path, after: Path, what: str) -> float:
    """Max |logit difference| of two models on a padded synthetic batch, relative to the largest |logit|.

    Raises when `after` cannot run or gives NaN/inf (a float16 overflow).
    """
    import numpy as np

    ids = synthetic_ids(before, 2, 16, 0)
    mask = np.ones_like(ids)
    mask[1, 12:] = 0
    ref = OnnxModel(before).logits(ids, mask)
    try:
        got = OnnxModel(after).logits(ids, mask)
    except Exception as err:  # onnxruntime's own error types
        raise ModelpressError(f"{what} does not run in onnxruntime: {str(err).strip().splitlines()[0][:300]}") from err
    valid = mask.astype(bool) if ref.ndim == 3 else slice(None)  # padded positions of a causal LM are noise
    if not np.isfinite(got[valid]).all():
        raise ModelpressError(f"{what} gives NaN or infinite logits (an overflow)")
    return float(np.abs(got - ref)[valid].max() / max(float(np.abs(ref[valid]).max()), 1e-6))


# --- writing ------------------------------------------------------------------------------------

def external_data_files(model_path: Path) -> set[str]:
    """Names of the external data files that an ONNX file's tensors point at."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    model = onnx.load(str(model_path), load_external_data=False)
    return {ExternalDataInfo(t).location for t in _all_tensors(model.graph) if uses_external_data(t)}


def _all_tensors(graph):
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _all_tensors(sub)


def uses_external_file(folder: Path, model_file: str = MODEL_FILE) -> bool:
    """True when the model keeps its weights in a separate data file (the layout a pass keeps)."""
    return bool(external_data_files(Path(folder) / model_file))


def save_onnx(model, folder: Path, external: bool = True, model_file: str = MODEL_FILE) -> Path:
    """Write a ModelProto as folder/model.onnx, its weights in model.onnx.data when `external`.

    A single file cannot exceed protobuf's 2 GB limit; such a model must be saved external.
    """
    import onnx

    path = Path(folder) / model_file
    data = Path(folder) / f"{model_file}.data"
    data.unlink(missing_ok=True)  # onnx appends to an existing data file
    if not external and model.ByteSize() >= 2**31:
        raise ModelpressError(f"{path}: the model is over 2 GB, which one ONNX file cannot hold. "
                              "Set save_as_external_data to true.")
    onnx.save_model(model, str(path), save_as_external_data=external, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=EXTERNAL_THRESHOLD, convert_attribute=False)
    return path


def copy_model_folder(src: Path, dst: Path, model_file: str = MODEL_FILE) -> None:
    """Copy everything but the model (`model_file` and its data), the model card and ort_session.json."""
    src, dst = Path(src), Path(dst)
    skip = {model_file, CARD_FILE, SESSION_FILE, f"{model_file}.data"}
    if (src / model_file).is_file():
        skip |= external_data_files(src / model_file)
    dst.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        if item.name in skip:
            continue
        if item.is_dir():
            shutil.copytree(item, dst / item.name, dirs_exist_ok=True)
        else:
            shutil.copy2(item, dst / item.name)


def copy_model_files(src: Path, dst: Path, model_file: str = MODEL_FILE) -> None:
    """Copy the model and its data files to `dst` unchanged.

    Copies, not hard links: onnx refuses to read external data from a file with several links.
    """
    for name in {model_file} | external_data_files(Path(src) / model_file):
        shutil.copy2(Path(src) / name, Path(dst) / name)


def op_counts(model_path: Path) -> dict[str, int]:
    """How many nodes of each operator type the main graph has."""
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(model_path), load_external_data=False).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def model_bytes(folder: Path, model_file: str = MODEL_FILE) -> int:
    """Size of the model file and its external data, in bytes."""
    path = Path(folder) / model_file
    return sum((Path(folder) / n).stat().st_size for n in {model_file} | external_data_files(path))
