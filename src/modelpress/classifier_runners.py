"""Classifier runners: a classifier 'generates' its predicted label, scored by the cross-entropy of the true one;
PyTorch and plain ONNX, reading their inputs as training made them (a sentence pair as a pair)."""

from __future__ import annotations

import logging

from modelpress.data import Example, encode_texts
from modelpress.models import ModelRef, checkpoint_class_names, class_names, load_for_inference
from modelpress.runner_base import Runner

log = logging.getLogger("modelpress")


class ClassifierRunner(Runner):
    """A classifier 'generates' its predicted label; its loss is the cross-entropy of the true label."""

    labels: list[str]

    def class_logits_batch(self, texts: list[str]):
        """float32 logits, one row per text."""
        raise NotImplementedError

    def class_logits(self, text: str):
        return self.class_logits_batch([text])[0]

    def generate_batch(self, prompts: list[str], add_bos: bool, max_new_tokens: int) -> list[tuple[str, int]]:
        if self.tokenizer.pad_token_id is None:  # nothing to pad a batch with: one text at a time
            rows = [self.class_logits(p) for p in prompts]
        else:
            rows = self.class_logits_batch(prompts)
        return [(self.labels[int(row.argmax())], 0) for row in rows]

    def completion_loss(self, examples: list[Example], add_bos: bool) -> float:
        import numpy as np

        from modelpress.evaluate import normalise_label

        # labels compared as accuracy compares them: "Positive" in the data is the card's "positive"
        index = {normalise_label(label): i for i, label in enumerate(self.labels)}
        total, count = 0.0, 0
        classes = [index.get(normalise_label(ex.completion)) for ex in examples]
        unknown = sorted({ex.completion for ex, k in zip(examples, classes) if k is None})
        if unknown:  # accuracy counts these rows wrong; the loss can only leave them out
            log.warning("%d of %d rows have a label this classifier does not have (%s); their loss is left out of "
                        "the mean", classes.count(None), len(examples), ", ".join(unknown[:5]))
        for ex, k in zip(examples, classes):
            if k is None:  # not one of the model's classes: no loss to take
                continue
            row = self.class_logits(ex.prompt).astype(np.float64)
            row = row - row.max()
            total += float(np.log(np.exp(row).sum()) - row[k])
            count += 1
        return total / count if count else float("nan")

    encoding: dict  # the model card's task: the max_seq_len and add_special_tokens it was trained with

    def _encode(self, texts: list[str]) -> dict:
        """Token ids and attention masks as training made them (its max_seq_len and special tokens; an
        untrained model: up to 512 tokens with them), padded to the longest text when there are several."""
        limit = self.encoding.get("max_seq_len") or min(getattr(self.tokenizer, "model_max_length", 512) or 512, 512)
        return encode_texts(self.tokenizer, texts, truncation=True, max_length=limit, padding=len(texts) > 1,
                            add_special_tokens=self.encoding.get("add_special_tokens", True))


class TorchClassifierRunner(ClassifierRunner):
    library = "torch"

    def __init__(self, ref: ModelRef, trust_remote_code: bool = False):
        self.model, self.tokenizer = load_for_inference(ref, trust_remote_code)
        self.labels = _labels(ref, self.model.config)
        self.encoding = ref.task

    def class_logits_batch(self, texts: list[str]):
        import torch

        encoded = self._encode(texts)
        segments = {"token_type_ids": torch.tensor(encoded["token_type_ids"])} if "token_type_ids" in encoded else {}
        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor(encoded["input_ids"]),
                             attention_mask=torch.tensor(encoded["attention_mask"]), **segments)
        return out.logits.float().numpy()


class OnnxClassifierRunner(ClassifierRunner):
    library = "onnxruntime"

    def __init__(self, ref: ModelRef):
        from modelpress.models import load_tokenizer
        from modelpress.onnx_model import OnnxModel

        self.model = OnnxModel(ref.path)
        self.tokenizer = load_tokenizer(ref.path)
        self.labels = _labels(ref, None)
        self.encoding = ref.task

    def class_logits_batch(self, texts: list[str]):
        import numpy as np

        encoded = self._encode(texts)
        segments = encoded.get("token_type_ids")
        return self.model.logits(np.array(encoded["input_ids"], dtype=np.int64),
                                 np.array(encoded["attention_mask"], dtype=np.int64),
                                 None if segments is None else np.array(segments, dtype=np.int64))


def _labels(ref: ModelRef, config) -> list[str]:
    """The class names in head order: the card's (a run that trained the head), else the model config's id2label
    (a classifier brought fine-tuned; for an ONNX model, the config.json its conversion kept)."""
    labels = ref.task.get("labels")
    if labels:
        return list(labels)
    if config is None:
        names, _ = checkpoint_class_names(ref.path)
    else:
        names, _ = class_names(getattr(config, "id2label", None))
    if names:
        return names
    raise ValueError(f"{ref.path}: a classifier without label names (no 'labels' in its model card, no id2label "
                     "in its config.json)")
