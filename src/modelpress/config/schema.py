"""The one internal form of a workflow, whatever schema the config file was written in."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field

from modelpress.passes.catalog import Strict

ExecutionProvider = Literal["cpu", "cuda", "dml"]


class InputModelConfig(Strict):
    """A Hugging Face model folder on local disk."""

    model_path: Path = Field(description="Folder with config.json, weights and tokenizer.")
    task: Literal["text-generation"] = Field("text-generation", description="Model task.")
    torch_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "float32", description="Dtype to load the weights in."
    )
    trust_remote_code: bool = Field(False, description="Run Python code shipped in the model folder.")
    attn_implementation: Literal["eager", "sdpa"] | None = Field(
        None, description="Attention kernel; default: transformers' choice."
    )


class DataConfig(Strict):
    """Local rows turned into token sequences by a text template."""

    name: str = Field(description="Name that passes refer to.")
    data_files: list[Path] = Field(min_length=1, description="Local JSON, JSONL, CSV or Parquet files.")
    format: Literal["json", "csv", "parquet"] = Field(description="File format (datasets builder name).")
    split: str = Field("train", description="Split name passed to datasets.")
    text_template: str | None = Field(None, description="Python format string over column names.")
    text_cols: list[str] | None = Field(None, description="Columns joined by a space when no template.")
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
    joiner: str = Field("\n\n", description="Text between rows when joining without special tokens.")
    pad_to_max_len: bool = Field(True, description="Pad line-by-line sequences to max_seq_len.")
    use_attention_mask: bool = Field(True, description="Feed an attention mask to the model.")
    add_special_tokens: bool = Field(True, description="Add BOS/EOS around each row.")
    loss_on: Literal["all", "completion"] = Field(
        "all", description="Train on every token, or only on the template's last field (the completion)."
    )
    max_samples: int | None = Field(None, gt=0, description="Use at most this many sequences.")
    dataset_type: Literal["corpus"] = Field("corpus", description="Olive 0.5 key; only 'corpus' exists.")


class EvaluationConfig(Strict):
    """What modelpress measures at the end of a run."""

    enabled: bool = Field(True, description="Evaluate at the end of the run.")
    data_config: str | None = Field(
        None, description="Data config to evaluate on; default: the training pass's eval split."
    )
    label_column: str | None = Field(
        None, description="Column the model must generate; default: the template's last field."
    )
    max_examples: int | None = Field(None, gt=0, description="Evaluate at most this many rows.")
    max_new_tokens: int = Field(8, gt=0, description="Tokens to generate per example.")
    evaluate_input_model: bool = Field(True, description="Also measure the input model as a baseline.")


class EngineConfig(Strict):
    """Where the work runs and where results go."""

    cache_dir: Path = Field(Path(".modelpress-cache"), description="Pass outputs keyed by content hash.")
    output_dir: Path = Field(Path("modelpress-output"), description="Final model, metrics and history.")
    execution_provider: ExecutionProvider = Field("cpu", description="Execution provider of the target.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field("INFO", description="Logging level.")
    clean_cache: bool = Field(False, description="Empty the cache before running.")


class PassConfig(Strict):
    """One pass of the workflow, with its validated parameters."""

    name: str
    type: str
    params: Strict


class WorkflowConfig(Strict):
    """A whole workflow, validated and normalised."""

    source: Path | None = None
    schema_style: Literal["modelpress", "olive-0.5", "olive-0.13"] = "modelpress"
    input_model: InputModelConfig
    data_configs: dict[str, DataConfig] = Field(default_factory=dict)
    passes: list[PassConfig] = Field(default_factory=list)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    warnings: list[str] = Field(default_factory=list)

    def resolved(self) -> dict:
        """A JSON-ready dict of the whole resolved config, saved next to outputs."""
        data = self.model_dump(mode="json", exclude={"warnings", "source"})
        data["passes"] = [
            {"name": p.name, "type": p.type, "params": p.params.model_dump(mode="json")} for p in self.passes
        ]
        return data
