"""Loading Hugging Face models and describing model folders (`modelpress_model.json`)."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from modelpress.errors import ModelpressError
from modelpress.fsutil import atomic_write_json, read_json
from modelpress.passes.catalog import GGUF, HF, HF_ADAPTER, ONNX, ONNX_GENAI

log = logging.getLogger("modelpress")

MODEL_CARD = "modelpress_model.json"
ADAPTER_DIR = "adapter"
GGUF_FILE = "model.gguf"  # the file in a GGUF model folder (GgufExport)


@dataclass
class ModelRef:
    """A model flowing through the workflow: its kind, folder and content id.

    For an adapter, `path` holds the adapter in `adapter/` and `base` is the base model folder.
    """

    kind: str
    path: Path
    id: str
    base: Path | None = None
    task: dict = field(default_factory=dict)  # prompt format and labels, saved beside the model

    def save(self, folder: Path | None = None) -> None:
        data = asdict(self)
        data["path"] = "."
        data["base"] = str(self.base) if self.base else None
        atomic_write_json(Path(folder or self.path) / MODEL_CARD, data)

    @classmethod
    def load(cls, folder: Path) -> "ModelRef":
        data = read_json(Path(folder) / MODEL_CARD)
        data["path"] = Path(folder)
        data["base"] = Path(data["base"]) if data.get("base") else None
        return cls(**data)


def brought_recipe(folder: Path, task: str) -> dict:
    """How an input model that modelpress made was prompted (its card's template, chat format, BOS, labels), so
    that a run that trains nothing (an export, a quantization) hands it on to its output, which `generate` and
    `evaluate` read; a training pass writes its own."""
    card = folder / MODEL_CARD
    try:
        brought = read_json(card).get("task") or {} if card.is_file() else {}
    except (ValueError, AttributeError):
        return {}
    return brought if isinstance(brought, dict) and brought.get("task", "text-generation") == task else {}


def detect_kind(folder: Path) -> str:
    """What kind of model folder this is, from its files."""
    folder = Path(folder)
    if (folder / MODEL_CARD).is_file():
        return read_json(folder / MODEL_CARD)["kind"]
    if (folder / "genai_config.json").is_file():
        return ONNX_GENAI
    if (folder / "adapter_config.json").is_file():
        return HF_ADAPTER
    if (folder / "model.onnx").is_file():
        return ONNX
    return HF


IF_NATIVE = "bfloat16-if-native"


def torch_dtype(name: str):
    import torch

    if name == IF_NATIVE:
        name = native_training_dtype()
    return "auto" if name == "auto" else getattr(torch, name)


def native_training_dtype() -> str:
    """bfloat16 where the hardware multiplies it natively, else float32.

    A CUDA GPU with bfloat16 support, or a CPU with AVX512-BF16 or AMX tiles: there a bfloat16 base
    trains faster than a float32 one. Elsewhere (AVX2 CPUs such as AMD EPYC Zen 3) PyTorch emulates
    bfloat16 and its matrix products run several times slower than float32 (7x measured on one).
    """
    import torch

    if torch.cuda.is_available():
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    cpu = torch.cpu  # torch 2.13 names these checks with a leading underscore
    native = any(getattr(cpu, check, lambda: False)() for check in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return "bfloat16" if native else "float32"


def native_float16() -> bool:
    """Whether float16 arithmetic is native here: a CUDA GPU, or a CPU with AMX-FP16 (Intel Granite Rapids).
    Elsewhere PyTorch emulates it: a LoRA step of the tiny Phi-3 under fp16 autocast took 21x float32's on an
    AVX512-BF16 AMD EPYC Zen 5."""
    import torch

    return torch.cuda.is_available() or getattr(torch.cpu, "_is_amx_fp16_supported", lambda: False)()


def load_tokenizer(folder: Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(folder: Path, dtype: str = "float32", trust_remote_code: bool = False,
                   attn_implementation: str | None = None, quantization_config=None):
    """Load a causal LM from a local folder; weights load through safetensors or weights-only torch."""
    from transformers import AutoModelForCausalLM

    kwargs = {"dtype": torch_dtype(dtype), "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    from modelpress.quantized import quant_config

    if quant_config(folder) is not None:
        return _load_dequantized(folder, kwargs)
    try:
        return AutoModelForCausalLM.from_pretrained(str(folder), **kwargs)
    except ValueError as err:
        if "trust_remote_code" in str(err) and not trust_remote_code:
            raise ModelpressError(f"{folder} ships its own Python code, which modelpress runs only when asked: "
                                  "if you trust it, set trust_remote_code: true in input_model's load_kwargs (modelpress "
                                  "evaluate: --trust-remote-code)") from None
        raise


def _load_dequantized(folder: Path, kwargs: dict):
    """A weight-only quantized checkpoint (modelpress.quantized) as a float model with the quantized values."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from modelpress.quantized import dequantized_state

    config = AutoConfig.from_pretrained(str(folder), trust_remote_code=kwargs["trust_remote_code"])
    del config.quantization_config
    dtype = kwargs.pop("dtype")
    model = AutoModelForCausalLM.from_config(config, **kwargs)
    missing, unexpected = model.load_state_dict(dequantized_state(folder), strict=False)
    tied = {name for name in missing if name.endswith("lm_head.weight") and config.tie_word_embeddings}
    if set(missing) - tied or unexpected:
        raise ModelpressError(f"{folder}: the quantized checkpoint does not match its config (missing "
                              f"{sorted(set(missing) - tied)[:3]}, unexpected {sorted(unexpected)[:3]})")
    model.tie_weights()
    return model.to(dtype) if dtype != "auto" else model


def load_classifier(folder: Path, labels: list[str] | None = None, dtype: str = "float32",
                    trust_remote_code: bool = False, attn_implementation: str | None = None):
    """Load a sequence classifier; with `labels`, a new head of that size is made when the folder has none."""
    from transformers import AutoModelForSequenceClassification

    kwargs = {"dtype": torch_dtype(dtype), "trust_remote_code": trust_remote_code,
              **({"attn_implementation": attn_implementation} if attn_implementation else {})}
    own, placeholders = checkpoint_class_names(folder) if labels else (None, False)
    if labels and own is not None and sorted(map(_plain, own)) == sorted(map(_plain, labels)):
        # a classifier brought fine-tuned on these classes: its head, its rows put in the order of `labels`
        model = AutoModelForSequenceClassification.from_pretrained(str(folder), **kwargs)
        _reorder_head(model, [[_plain(x) for x in own].index(_plain(label)) for label in labels], folder)
        model.config.id2label, model.config.label2id = dict(enumerate(labels)), {x: i for i, x in enumerate(labels)}
    elif labels:
        if own is not None and not placeholders:
            log.warning("%s: its head classifies %s and the data's labels are %s: the head is trained on the "
                        "data's labels (a new one where the count differs)", folder, ", ".join(own), ", ".join(labels))
        kwargs.update(num_labels=len(labels), id2label=dict(enumerate(labels)),
                      label2id={label: i for i, label in enumerate(labels)}, ignore_mismatched_sizes=True)
        model = AutoModelForSequenceClassification.from_pretrained(str(folder), **kwargs)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(str(folder), **kwargs)
    # a decoder's head reads the last token before the first padding, found by config.pad_token_id: that must be
    # the id batches are padded with (load_tokenizer's: a missing pad token is the end of sequence)
    pad = load_tokenizer(folder, trust_remote_code).pad_token_id
    if pad is not None and model.config.pad_token_id != pad:
        model.config.pad_token_id = pad
    return model


def _plain(label) -> str:
    return str(label).strip().lower()


def checkpoint_class_names(folder: Path) -> tuple[list[str] | None, bool]:
    """`class_names` of a checkpoint folder's config.json."""
    config = read_json(Path(folder) / "config.json") if (Path(folder) / "config.json").is_file() else {}
    return class_names(config.get("id2label"))


def class_names(id2label: dict | None) -> tuple[list[str] | None, bool]:
    """The class names a model config's id2label gives its head, in head order (None for none), and whether they
    are transformers' placeholders (LABEL_0, ...: a checkpoint saved without names, or without a head), read as
    the labels 0, 1, ... (as an integer label column names them, and Olive compares the argmax with it)."""
    names = {int(k): v for k, v in (id2label or {}).items()}
    ordered = [str(names[i]) for i in sorted(names)]
    if not ordered:
        return None, False
    if all(name == f"LABEL_{i}" for i, name in enumerate(ordered)):
        return [str(i) for i in range(len(ordered))], True
    return ordered, False


def _reorder_head(model, order: list[int], folder: Path) -> None:
    """Put the rows of the classifier's output layer (the last linear layer with one row per class: BERT's
    classifier, RoBERTa's classifier.out_proj, a decoder's score) in `order`."""
    import torch

    heads = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == len(order)]
    if not heads:
        raise ModelpressError(f"{folder}: cannot find the classifier's output layer to order its classes as the "
                              "data's labels; give the data's labels in the order of the checkpoint's id2label")
    with torch.no_grad():
        heads[-1].weight.copy_(heads[-1].weight[order])
        if heads[-1].bias is not None:
            heads[-1].bias.copy_(heads[-1].bias[order])


def load_hf_model(folder: Path, task: str, labels: list[str] | None = None, dtype: str = "float32",
                  trust_remote_code: bool = False, **kwargs):
    """The right Auto class for the task: a causal LM or a sequence classifier."""
    if task == "text-classification":
        return load_classifier(folder, labels, dtype, trust_remote_code)
    return load_causal_lm(folder, dtype, trust_remote_code, **kwargs)


def load_for_inference(ref: ModelRef, trust_remote_code: bool = False):
    """(model, tokenizer) in eval mode for an HF folder, a base + adapter, or a GGUF file (dequantized)."""
    if ref.kind == GGUF:
        from modelpress.gguf import inference_folder

        ref = ModelRef(HF, inference_folder(Path(ref.path) / GGUF_FILE, trust_remote_code), ref.id, task=ref.task)
    task = ref.task.get("task", "text-generation")
    labels = ref.task.get("labels")
    if ref.kind == HF_ADAPTER:
        from peft import PeftModel

        base = load_hf_model(ref.base, task, labels, trust_remote_code=trust_remote_code)
        model = PeftModel.from_pretrained(base, str(Path(ref.path) / ADAPTER_DIR))
        return model.eval(), load_tokenizer(ref.base, trust_remote_code)
    model = load_hf_model(ref.path, task, labels, trust_remote_code=trust_remote_code)
    return model.eval(), load_tokenizer(ref.path, trust_remote_code)
