"""The one internal form of a workflow, whatever schema the config file was written in."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator, model_validator

from modelpress.config.evaluator_schema import EvaluatorConfig
from modelpress.config.searched import searched_params
from modelpress.config.templates import completion_field, role_template, template_problem
from modelpress.passes.catalog import CATALOG, Strict
from modelpress.passes.spec_base import output_neutral
from modelpress.redact import SHOWN, redact

ExecutionProvider = Literal["cpu", "cuda", "dml"]


class InputModelConfig(Strict):
    """A Hugging Face model: a local folder, a Hub id, or a GGUF file (in a folder or a Hub repo)."""

    model_path: Path | None = Field(
        None, description="Local folder with config.json, weights and tokenizer (or the folder of `gguf_file`).")
    hub_id: str | None = Field(
        None, description="Hugging Face Hub id (org/name): taken from the local Hugging Face cache, downloaded "
        "only when it is missing there and HF_HUB_OFFLINE is unset.")
    revision: str | None = Field(None, description="Hub branch, tag or commit to pin (default: main).")
    gguf_file: str | None = Field(
        None, description="A GGUF file (llama.cpp, Ollama) in the folder or Hub repo: dequantized into a Hugging "
        "Face folder once, which later passes use.")
    task: Literal["text-generation", "text-classification"] = Field(
        "text-generation",
        description="text-generation (a causal LM that generates the label) or text-classification "
        "(an encoder with a classifier head over `label_col`).",
    )
    torch_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "float32", description="Accepted for Olive's load_kwargs and not used (a warning says so): the input model "
        "is read in float32; a LoRA pass's own torch_dtype sets the training base's dtype."
    )
    trust_remote_code: bool = Field(False, description="Run Python code shipped in the model folder.")
    attn_implementation: Literal["eager", "sdpa"] | None = Field(
        None, description="Attention kernel; default: transformers' choice."
    )

    @model_validator(mode="after")
    def _one_source(self) -> "InputModelConfig":
        if (self.model_path is None) == (self.hub_id is None):
            raise ValueError("give exactly one of model_path (a local folder) and hub_id")
        return self

    def describe(self) -> str:
        """The model as the user named it."""
        name = self.hub_id or str(self.model_path)
        rev = f"@{self.revision}" if self.revision else ""
        return f"{name}{rev}" + (f" ({self.gguf_file})" if self.gguf_file else "")


class DataConfig(Strict):
    """Local rows turned into token sequences by a text template."""

    name: str = Field(description="Name that passes refer to.")
    data_files: list[Path] = Field(
        default_factory=list, description="Local JSON, JSONL, CSV or Parquet files (for a Hub dataset: files "
        "inside the repo, optional).")
    format: Literal["json", "csv", "parquet"] | None = Field(
        None, description="File format (datasets builder name); a Hub dataset's is inferred.")
    hub_id: str | None = Field(
        None, description="Hugging Face Hub dataset id (org/name): taken from the local Hugging Face cache, "
        "downloaded only when missing and HF_HUB_OFFLINE is unset.")
    revision: str | None = Field(None, description="Hub dataset branch, tag or commit to pin.")
    subset: str | None = Field(None, description="Hub dataset configuration (subset) name.")
    data_dir: str | None = Field(None, description="Folder inside the Hub dataset repo to read.")
    split: str = Field("train", description="Split name passed to datasets.")
    col_filters: dict[str, str | int | float | bool] | None = Field(
        None, description="Keep only the rows whose columns equal these values (column -> value), read after the "
        "split, as Olive's load_dataset_config.col_filters.")
    text_template: str | None = Field(None, description="Python format string over column names.")
    text_cols: list[str] | None = Field(
        None, validation_alias=AliasChoices("text_cols", "input_cols"),
        description="Columns joined by a space when no template (a classifier's two: a sentence pair, as in "
        "Olive).",
    )
    label_col: str | None = Field(
        None, description="text-classification: the column with the class label; the template or text_cols "
        "give the input text.",
    )
    strategy: Literal["join", "line-by-line", "join-sliding-window"] = Field(
        "join",
        validation_alias=AliasChoices("strategy", "corpus_strategy"),
        description="Pack rows to max_seq_len (join), one row per sequence, or overlapping windows.",
    )
    max_seq_len: int = Field(
        1024, gt=0, validation_alias=AliasChoices("max_seq_len", "source_max_len"),
        description="Maximum tokens per sequence.",
    )
    stride: int | None = Field(None, gt=0, description="Window step for join-sliding-window.")
    joiner: str = Field("\n\n", description="Text between rows when joining (after a row's EOS when special "
                        "tokens are added), in Olive's order (README: known limits).")
    pad_to_max_len: bool = Field(True, description="Pad line-by-line sequences to max_seq_len.")
    use_attention_mask: bool = Field(True, description="Feed an attention mask to the model.")
    add_special_tokens: bool = Field(True, description="Add BOS/EOS around each row.")
    loss_on: Literal["all", "completion"] | None = Field(
        None, description="Train on every token, or only on the completion: the template's last field, or with "
        "a chat template every assistant turn. Default: completion for chat data, all otherwise."
    )
    chat_template: bool | str | None = Field(
        None, validation_alias=AliasChoices("chat_template", "use_chat_template"),
        description="Render rows as conversations through a chat template: true for the model's own, the "
        "name of one of its tokenizer's named templates, or a Jinja template string (Olive's chat_template).")
    message_col: str = Field("messages", description="Chat data: the column of role/content messages (TRL, Axolotl).")
    chat_columns: dict[str, str] | None = Field(
        None, description="Chat data without a messages column: role -> column name or text template, e.g. "
        "{\"user\": \"{phrase}\", \"assistant\": \"{tone}\"}.")
    system_prompt: str | None = Field(
        None, description="Chat data: a system message put first (default: none, so the template's own default).")
    max_samples: int | None = Field(None, gt=0, description="Use at most this many sequences for training; an "
                                    "evaluation that reads this data config whole (not a training pass's eval "
                                    "split) reads at most this many rows, as Olive's metric data configs do.")
    dataset_type: Literal["corpus"] = Field("corpus", description="Olive 0.5 key; only 'corpus' exists.")

    @field_validator("text_template")
    @classmethod
    def _renders(cls, value):
        problem = template_problem(value) if isinstance(value, str) else None
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("chat_columns")
    @classmethod
    def _roles_render(cls, value):
        for role, spec in (value or {}).items():
            problem = template_problem(role_template(spec), plain_names=False) if isinstance(spec, str) else None
            if problem:
                raise ValueError(f"{role}: {problem}")
        return value

    @field_validator("text_cols", mode="before")
    @classmethod
    def _one_column(cls, value):
        return [value] if isinstance(value, str) else value  # Olive takes one column's name alone too

    @model_validator(mode="after")
    def _defaults(self) -> "DataConfig":
        if not self.hub_id and not self.data_files:
            raise ValueError("give data_files (local files) or a Hub dataset id")
        if self.loss_on is None:
            self.loss_on = "completion" if self.chat else "all"
        if self.chat and "add_special_tokens" not in self.model_fields_set:
            self.add_special_tokens = False  # a chat template writes its own BOS and end-of-turn tokens
        return self

    @property
    def chat(self) -> bool:
        """True when rows are rendered as conversations through a chat template."""
        return bool(self.chat_template) or bool(self.chat_columns)

    @property
    def answer_column(self) -> str | None:
        """What the model generates, which accuracy compares answers with: label_col, the text template's last
        field, or a chat's assistant turn; None when nothing is."""
        return self.label_col or completion_field(self.text_template) or ("assistant" if self.chat else None)


class EvaluationConfig(Strict):
    """What modelpress measures at the end of a run."""

    enabled: bool = output_neutral(True, description="Evaluate at the end of the run.")
    data_config: str | None = Field(
        None, description="Data config to evaluate on; default: the training pass's eval split."
    )
    label_column: str | None = Field(
        None, description="Column the model must generate; default: the template's last field."
    )
    max_examples: int | None = Field(None, gt=0, description="Evaluate at most this many rows.")
    max_new_tokens: int = Field(8, gt=0, description="Tokens to generate per example.")
    batch_size: int = Field(32, gt=0, description="Prompts generated together when measuring accuracy; "
                            "a batch gives the same answers as one prompt at a time, faster.")
    latency_samples: int = Field(64, gt=0, description="Examples timed one at a time (batch 1) for latency, "
                                 "throughput and tokens/s, spread evenly over the evaluated examples.")
    evaluate_input_model: bool = output_neutral(True, description="Also measure the input model as a baseline.")
    evaluate_passes: list[str] = output_neutral(
        [], description="Also measure the output of these steps, by pass name (for example the "
        "merged model before quantization, to see what int4 costs); metrics.json holds each under its name. "
        "Not with a search or an evaluators section, whose metrics measure each candidate.")
    extra_data_configs: list[str] = output_neutral(
        [], description="Also measure every evaluated model on all rows of these data configs "
        "(for example phrases in another style; a training pass's own data config: its eval split): accuracy and "
        "loss, while latency is timed on the eval set only; metrics.json holds them under 'extra_data'. Not with a "
        "search or an evaluators section (a metric's own data_config measures another data set there).")


class TaskResources(Strict):
    """What one Ray task asks of the node it runs on (Ray's own resource names)."""

    num_cpus: float | None = Field(None, ge=0, description="CPUs per task (Ray's num_cpus).")
    num_gpus: float | None = Field(None, ge=0, description="GPUs per task (Ray's num_gpus).")
    memory: int | None = Field(None, gt=0, description="Bytes of memory the scheduler reserves per task.")
    resources: dict[str, float] = Field(
        default_factory=dict, description="Custom resources per task, e.g. {\"big_disk\": 1}: the task lands on a "
        "node started with that resource (`ray start --resources`).")


class RaySystemConfig(TaskResources):
    """A Ray cluster that passes (the `host`) and evaluations (the `target`) run on."""

    address: str | None = Field(
        None, description="None: start a local cluster for the run; \"auto\": the cluster this machine belongs "
        "to; \"host:port\": that cluster's head (its GCS port, 6379 by default).")
    num_cpus: float | None = Field(1, ge=0, description="CPUs per task (Ray's num_cpus), for every pass and "
                                   "evaluation unless pass_resources says otherwise.")
    pass_resources: dict[str, TaskResources] = Field(
        default_factory=dict, description="Per pass name: resources that replace the defaults above for that "
        "pass's task, e.g. {\"lora\": {\"num_cpus\": 4, \"num_gpus\": 1}}.")
    max_concurrency: int = Field(2, ge=1, description="Tasks (search candidates) in flight at once.")
    max_retries: int = Field(
        3, ge=0, description="Times a task is re-run when its worker process or node dies; an error the pass "
        "raises is final.")
    timeout: float | None = Field(None, gt=0, description="Seconds from a task's submission (its wait for "
                                  "resources and any retries included) before it is cancelled and counted as "
                                  "failed (default: no limit).")
    storage: str | None = Field(
        None, description="Where tasks write pass outputs: a path every node sees on a POSIX filesystem (NFS; not "
        "a bucket mounted through FUSE, which lacks atomic renames and shared locks), or an fsspec URL (s3://, "
        "gs://, abfs://, file://). Default: the cache_dir, which suits a one-machine cluster.")
    env_vars: dict[str, str] = Field(
        default_factory=dict, description="Environment variables set in every task's worker process; values are "
        "not saved in config.resolved.json.")


class SystemConfig(Strict):
    """A system of the `systems` section: this machine, or a Ray cluster."""

    type: Literal["LocalSystem", "Ray"] = Field("LocalSystem", description="LocalSystem (this machine) or Ray.")
    execution_provider: ExecutionProvider | None = Field(None, description="From the system's accelerators.")
    ray: RaySystemConfig | None = Field(None, description="type Ray: the cluster and how tasks run on it, from the "
                                        "keys written beside `type` (next section); not a key of its own.")


class EngineConfig(Strict):
    """Where the work runs and where results go."""

    cache_dir: Path = Field(Path(".modelpress-cache"), description="Pass outputs keyed by content hash.")
    output_dir: Path = Field(Path("modelpress-output"), description="Final model, metrics and history.")
    execution_provider: ExecutionProvider = Field("cpu", description="Execution provider of the target.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field("INFO", description="Logging level.")
    clean_cache: bool = Field(False, description="Empty the cache before running: with a Ray system whose "
                              "storage is a shared path, its pass outputs and checkpoints there too (so no other "
                              "run may share that storage meanwhile); a URL storage is left as it is.")
    clean_evaluation_cache: bool = Field(False, description="Forget cached evaluation results before running, so "
                                         "every model is measured again (pass outputs stay cached).")
    host: str | None = Field(None, description="The system passes run on (a name in `systems`); default: here.")
    target: str | None = Field(None, description="The system evaluations run on; default: here.")


class SearchConfig(Strict):
    """How the search picks candidate pass configurations."""

    enabled: bool = Field(False, description="Search over the passes' choices (false: run passes once).")
    sampler: Literal["sequential", "random", "tpe"] = Field(
        "sequential", description="sequential (every candidate in order), random, or tpe (optuna)."
    )
    execution_order: Literal["joint", "pass-by-pass"] = Field(
        "joint", description="Search all passes' choices together, or one pass at a time."
    )
    max_samples: int = Field(0, ge=0, description="Candidates to evaluate at most (0: no limit).")
    max_iter: int = Field(0, ge=0, description="Sampler draws at most, repeats and failures included (0: no limit).")
    max_time: float = Field(0, ge=0, description="Stop drawing new candidates after this many seconds (0: no limit).")
    seed: int = Field(0, description="Seed of the random and tpe samplers.")
    multivariate: bool = Field(False, description="tpe: model the parameters jointly (optuna's multivariate TPE; "
                               "Olive's default is true).")
    group: bool = Field(False, description="tpe, with multivariate: model each group of parameters that appear "
                        "together apart (optuna's group; Olive's default is true).")
    stop_when_goals_met: bool = Field(False, description="Stop at the first candidate that meets every goal.")


class PassConfig(Strict):
    """One pass of the workflow, with its validated parameters.

    With search, `search_space` maps each searched parameter to its values (`params` holds the
    first), and `alternatives` lists other whole configs for the same step.
    """

    name: str
    type: str
    params: Strict
    host: str | None = None  # the system this pass runs on, instead of the engine's host
    search_space: dict[str, list] = Field(default_factory=dict)
    alternatives: list["PassConfig"] = Field(default_factory=list)

    @property
    def trains(self) -> bool:
        """A fine-tuning step: its train_data_config defines the task's data and the eval split."""
        return CATALOG[self.type].trains()

    @property
    def splits_off(self) -> str | None:
        """The data config a fine-tuning step holds an eval split out of (eval_dataset_size, no eval_data_config);
        None for any other step."""
        if self.trains and not self.params.eval_data_config and self.params.eval_dataset_size:
            return self.params.train_data_config
        return None

    def choices(self) -> list["PassConfig"]:
        """Every concrete config of this step: alternatives x the product of searched values, less the combinations
        whose values do not go together (Olive prunes them too; `searched_params` says which)."""
        return [PassConfig(name=option.name, type=option.type, params=params, host=self.host)
                for option in [self, *self.alternatives] for params in searched_params(option.params,
                                                                                     option.search_space)[0]]


def training_pass(passes: list[PassConfig]) -> PassConfig | None:
    """The workflow's first fine-tuning step, whose data defines the task (None when nothing is trained)."""
    return next((p for p in passes if p.trains), None)


def eval_data_name(evaluation: EvaluationConfig, passes: list[PassConfig], data_names) -> str | None:
    """The data config the final evaluation reads: the one it names, else the training step's eval data (its
    eval split, or its training rows), else the first data config."""
    trained = training_pass(passes)
    if evaluation.data_config:
        return evaluation.data_config
    if trained is not None:
        return trained.params.eval_data_config or trained.params.train_data_config
    return next(iter(data_names), None)


class WorkflowConfig(Strict):
    """A whole workflow, validated and normalised."""

    source: Path | None = None
    schema_style: Literal["modelpress", "olive-0.5", "olive-0.13"] = "modelpress"
    input_model: InputModelConfig
    data_configs: dict[str, DataConfig] = Field(default_factory=dict)
    passes: list[PassConfig] = Field(default_factory=list)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    evaluator: EvaluatorConfig | None = None
    search: SearchConfig = Field(default_factory=SearchConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    systems: dict[str, SystemConfig] = Field(default_factory=dict)
    raw: dict | None = Field(None, exclude=True, repr=False)  # the config as parsed: what a Ray task re-validates
    base_dir: Path | None = Field(None, exclude=True)  # the folder relative paths in `raw` are relative to
    warnings: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)

    def resolved(self) -> dict:
        """A JSON-ready dict of the whole resolved config, saved next to outputs."""
        data = self.model_dump(mode="json", exclude={"warnings", "notes", "source"})
        data["passes"] = [_pass_json(p) for p in self.passes]
        for system in data["systems"].values():  # env_vars may hold tokens: names only
            if system.get("ray"):
                system["ray"]["env_vars"] = {k: SHOWN for k in system["ray"]["env_vars"]}
        return redact(data)  # a token under any other key (a pass's extra_options, a metric's kwargs)

    def ray_system(self, name: str | None) -> tuple[str, RaySystemConfig] | None:
        """(name, config) when `name` is a Ray system; None for this machine."""
        system = self.systems.get(name) if name else None
        return (name, system.ray) if system is not None and system.type == "Ray" else None


def _pass_json(p: PassConfig) -> dict:
    out = {"name": p.name, "type": p.type, "params": p.params.model_dump(mode="json")}
    if p.host:
        out["host"] = p.host
    if p.search_space:
        out["search_space"] = p.search_space
    if p.alternatives:
        out["alternatives"] = [_pass_json(a) for a in p.alternatives]
    return out


def split_name(split: str | None) -> tuple[str, str]:
    """(the split's name, the slice after it): "train[:50%]" -> ("train", "[:50%]"), as datasets reads a split."""
    split = split or "train"
    name = split.partition("[")[0]
    return name, split[len(name):]
