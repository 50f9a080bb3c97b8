"""What a pass gets to work with: its input model, its output folder, and the workflow's data."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from modelpress.chat import ChatFormat
from modelpress.config.schema import DataConfig, InputModelConfig, WorkflowConfig, eval_data_name, training_pass
from modelpress.data import (
    Example,
    classification_features,
    label_set,
    load_rows,
    pack,
    render,
    tokenize,
)
from modelpress.data_files import data_fingerprint
from modelpress.data_split import distinct, shared_prompts, split_examples
from modelpress.errors import DataError
from modelpress.models import ModelRef
from modelpress.passes.catalog import LoRAParams

log = logging.getLogger("modelpress")


@dataclass
class EvalSet:
    """The examples a run is measured on, and where they came from."""

    examples: list[Example]
    description: str
    label_column: str | None
    data_config: str | None = None  # the data config the examples were rendered from


class DataPlan:
    """Reads, renders and splits each data config once per run, on first use."""

    def __init__(self, config: WorkflowConfig, cache_dir: Path, model_folder: Path | None = None):
        self.config = config
        self.cache_dir = cache_dir
        self.model_folder = model_folder or config.input_model.model_path  # whose chat template chat data uses
        self._examples: dict[str, list[Example]] = {}
        self._hub: dict[str, Path] = {}
        self._chat: dict[str, ChatFormat] = {}

    def data_config(self, name: str) -> DataConfig:
        return self.config.data_configs[name]

    def resolve_hub_data(self) -> None:
        """Resolve every Hub dataset to its local snapshot (from the cache, or downloaded when allowed)."""
        from modelpress.hub import dataset_files, dataset_missing, snapshot

        for name, config in self.config.data_configs.items():
            if config.hub_id and name not in self._hub:
                key = f"data_configs.{name}.load_dataset_config.data_name"
                try:
                    files = dataset_files(config.hub_id, config.revision, config.data_files, config.data_dir,
                                          config.subset, key)
                except DataError as err:
                    raise DataError(f"data_configs.{name}.load_dataset_config.subset: {err}") from None
                self._hub[name] = snapshot(config.hub_id, config.revision, "dataset", files, dataset_missing(files),
                                           key=key)

    def hub_revisions(self) -> dict[str, str]:
        """The commit each resolved Hub dataset was read at, by data config name."""
        return {name: folder.name for name, folder in self._hub.items()}

    def pin_hub_revisions(self, revisions: dict[str, str]) -> None:
        """Read each named Hub dataset at the commit given (a Ray worker: the driver's), whatever this machine's
        cache says its branch is at."""
        for name, commit in revisions.items():
            self.config.data_configs[name] = self.config.data_configs[name].model_copy(update={"revision": commit})

    def prompt_recipe(self, name: str) -> dict:
        """How data config `name` turns a row into a prompt, for a model card: its text template, BOS, columns,
        and for chat data the exact template and turns, so that `generate` and `evaluate` build the same prompt."""
        data = self.data_config(name)
        recipe = {"text_template": data.text_template, "add_bos": data.add_special_tokens, "data_config": data.name,
                  "label_col": data.label_col, "text_cols": data.text_cols}
        chat = self.chat_format(name)
        if chat:
            from modelpress.chat import system_prompt_of

            examples = self.examples(name)
            system, other = system_prompt_of([ex.history for ex in examples], data.system_prompt)
            if other:
                log.warning("data config %r: %d of %d rows open with another system message than the one generate and "
                            "evaluate send new text with (%s); give every row the same one, or set system_prompt",
                            name, other, len(examples), "none" if system is None else f"system_prompt {system!r}")
            recipe["chat"] = {**chat.to_json(), "columns": data.chat_columns, "message_col": data.message_col,
                              "system_prompt": system, **_lead_taken(chat.turn_ends()[0], examples, name)}
        return recipe

    def chat_format(self, name: str) -> ChatFormat | None:
        """The chat template data config `name` renders rows with (None for text templates)."""
        config = self.data_config(name)
        if not config.chat:
            return None
        if name not in self._chat:
            template = config.chat_template if isinstance(config.chat_template, str) else None
            self._chat[name] = ChatFormat.from_model(self.model_folder, template,
                                                     self.config.input_model.trust_remote_code)
        return self._chat[name]

    def fingerprint(self, name: str) -> str:
        """The data config's fingerprint (`data_files.data_fingerprint`, which hashes each file once per process:
        every pass key and evaluation key asks for it)."""
        chat = self.chat_format(name)
        return data_fingerprint(self.data_config(name), self._hub.get(name), chat.to_json() if chat else None)

    def examples(self, name: str) -> list[Example]:
        if name not in self._examples:
            config = self.data_config(name)
            rows = load_rows(config, self.cache_dir / "datasets", self._hub.get(name))
            self._examples[name] = render(config, rows, self.chat_format(name))
        return self._examples[name]

    def check_all(self) -> None:
        """Read and render every data config now, so a data error comes before any model loads."""
        for name in self.config.data_configs:
            self.examples(name)

    @staticmethod
    def split_params(params: LoRAParams) -> dict:
        """What `training_examples` splits by: part of the key of every evaluation on the eval split."""
        args = getattr(params, "training_args", None)  # a plugin's training params may have none
        return {"train": params.train_data_config, "eval": getattr(params, "eval_data_config", None),
                "size": getattr(params, "eval_dataset_size", None), "seed": getattr(args, "split_seed", None)}

    def training_examples(self, params: LoRAParams) -> tuple[list[Example], list[Example]]:
        """(train, eval) examples for a training pass, honouring eval_data_config or eval_dataset_size."""
        examples = self.examples(params.train_data_config)
        if params.eval_data_config:
            evaluation = self.examples(params.eval_data_config)
            shared = shared_prompts(examples, evaluation)
            if shared:
                log.warning("eval data config %r: %d of its distinct prompts are asked by training rows of %r too, "
                            "so its eval loss partly measures recall of trained rows (eval_dataset_size splits by "
                            "distinct prompt)", params.eval_data_config, shared, params.train_data_config)
            return examples, evaluation
        if params.eval_dataset_size:
            return split_examples(examples, params.eval_dataset_size, params.training_args.split_seed,
                                  classes=bool(self.data_config(params.train_data_config).label_col))
        return examples, []

    def calibration_examples(self, name: str) -> list[Example]:
        """Rows of data config `name` for calibrating a quantizer: a training pass's held-out eval split
        on it is left out, so the accuracy measured on that split stays on rows no pass has seen."""
        for p in self.config.passes:
            if p.splits_off == name:
                return self.training_examples(p.params)[0]
        return self.examples(name)

    def labels(self, params: LoRAParams) -> list[str]:
        """The class labels a classifier trained by this pass predicts (from its training rows)."""
        return label_set(self.training_examples(params)[0])

    def features(self, examples: list[Example], name: str, tokenizer, labels: list[str] | None = None,
                 capped: bool = True) -> list[dict]:
        """Training sequences for `examples` under data config `name`'s strategy; `capped` false: max_samples does
        not apply (a training pass's eval split, carved from rows max_samples already counts)."""
        config = self.data_config(name)
        if labels is not None:
            features = classification_features(examples, tokenizer, config, labels)
            return features[: config.max_samples] if config.max_samples and capped else features
        joiner = tokenizer(config.joiner, add_special_tokens=False)["input_ids"] if config.joiner else []
        sequences = tokenize(examples, tokenizer, config)
        features = pack(sequences, config, joiner, tokenizer.pad_token_id, capped)
        if not features:
            raise DataError(f"data config {name!r} gives no training sequences (too few tokens for "
                            f"max_seq_len {config.max_seq_len} with strategy {config.strategy!r})")
        return features

    def eval_set(self, data_config: str | None = None) -> EvalSet | None:
        """The examples the final evaluation uses (see `EvaluationConfig.data_config`)."""
        config = self.config
        name = data_config or eval_data_name(config.evaluation, config.passes, config.data_configs)
        trained = training_pass(config.passes)
        if name is None:
            return None
        explicit = data_config or config.evaluation.data_config
        if trained is None or (explicit and name != trained.params.train_data_config):
            return self._eval_set(self.examples(name), f"all rows of data config {name!r}", name)
        # the training data, named or by default: its held-out rows, never the rows it trained on
        named_train = explicit and trained.params.eval_data_config  # its eval data is another config
        held_out = [] if named_train else self.training_examples(trained.params)[1]
        if held_out:  # carved out of the training rows (eval_dataset_size), or an eval_data_config's rows
            return self._eval_set(held_out, f"the eval split of pass {trained.name!r}", name,
                                  capped=bool(trained.params.eval_data_config))
        why = (f"the evaluation names data config {name!r}, which pass {trained.name!r} trains on" if named_train
               else f"pass {trained.name!r} has no eval split (set eval_dataset_size or eval_data_config)")
        log.warning("%s: the evaluation uses its training rows, which measures memorisation", why)
        return self._eval_set(self.examples(name), f"the TRAINING rows of pass {trained.name!r}", name)

    def _eval_set(self, examples: list[Example], description: str, name: str, capped: bool = True) -> EvalSet:
        """The data config's max_samples caps the rows (as Olive's metric data configs read it), but for a split
        carved out of a training pass's rows (`capped` false), which the cap on training sequences leaves whole."""
        unique = distinct(examples)
        config = self.data_config(name)
        caps = (self.config.evaluation.max_examples, config.max_samples if capped else None)
        limit = min((n for n in caps if n), default=0)
        label = self.config.evaluation.label_column or config.answer_column
        kept = unique[:limit] if limit else unique
        if len(kept) < len(examples):  # what was measured, said as it is: distinct prompts, the first N
            cut = f"the first {len(kept)} of " if len(kept) < len(unique) else ""
            if "all rows of" in description:
                description = description.replace("all rows of", f"{cut}{len(unique)} distinct prompts of", 1)
            elif cut:  # a split: its first N prompts were measured, not the whole of it
                description += f" ({cut}its {len(unique)} distinct prompts)"
        return EvalSet(kept, description, label, name)


@dataclass
class PassContext:
    """Everything one pass needs; passes write only under `out`."""

    model: ModelRef
    out: Path
    input_model: InputModelConfig
    execution_provider: str
    data: DataPlan
    show_progress: bool = True
    work_dir: Path | None = None  # scratch that survives a crash (training checkpoints), removed on success
    notes: list[str] = field(default_factory=list)  # facts the pass reports into the run history

    @property
    def task(self) -> str:
        """text-generation or text-classification: what the model in hand does."""
        return self.model.task.get("task") or self.input_model.task


def _lead_taken(lead: str, examples: list, name: str) -> dict:
    """{"lead": text} where the rows' prompts did not end with the text the template opens an answer with (Qwen3's
    empty think block): an answer holding its own think block is trained after the generation prompt alone, and
    `generate` must ask as training did; {} where they did, as generate reads the template itself."""
    ending = sum(ex.prompt.endswith(lead) for ex in examples) if lead else len(examples)
    if ending == len(examples):
        return {}
    if ending:
        log.warning("data config %r: %d of %d prompts end with %r, which the template opens an answer with, and the "
                    "rest without it; generate asks as the most did", name, ending, len(examples), lead)
    return {"lead": lead if 2 * ending >= len(examples) else ""}
