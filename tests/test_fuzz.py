"""Property-based tests: any input gives a valid config or a ConfigError, never another exception."""

from __future__ import annotations

import json
import string
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelpress.config import normalize
from modelpress.config.schema import DataConfig
from modelpress.data import render
from modelpress.errors import ConfigError, DataError

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
KEYS = ["input_model", "data_configs", "passes", "engine", "systems", "evaluation", "type", "config",
        "model_path", "hf_config", "model_name", "params", "load_dataset_config", "pre_process_data_config",
        "data_name", "data_files", "text_template", "lora_r", "training_args", "max_steps", "precision",
        "execution_providers", "cache_dir", "output_dir", "LoRA", "ModelBuilder", "HfModel", "PyTorchModel"]
config_like = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.sampled_from(KEYS) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.sampled_from(KEYS), children, max_size=5),
    max_leaves=30,
)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _accepts_or_config_error(raw, base: Path) -> None:
    try:
        normalize(raw, base_dir=base)
    except ConfigError as err:
        assert err.problems and all(p.message for p in err.problems)


@FUZZ
@given(raw=json_values)
def test_any_json_value_gives_a_config_or_a_config_error(raw):
    _accepts_or_config_error(raw, Path("/nonexistent"))


@FUZZ
@given(raw=config_like)
def test_config_shaped_garbage_gives_a_config_or_a_config_error(raw):
    _accepts_or_config_error(raw, Path("/nonexistent"))


@FUZZ
@given(seed=st.fixed_dictionaries({}, optional={
    "lora_r": json_values, "lora_alpha": json_values, "training_args": json_values, "target_modules": json_values,
    "train_data_config": json_values, "eval_dataset_size": json_values, "double_quant": json_values}))
def test_fuzzed_seed_lora_params_give_a_config_or_a_config_error(seed):
    raw = {"input_model": {"type": "PyTorchModel", "config": {"hf_config": {"model_name": "m"}}},
           "passes": {"lora": {"type": "LoRA", "config": seed}}}
    _accepts_or_config_error(json.loads(json.dumps(raw)), Path("/nonexistent"))


@FUZZ
@given(template=st.text(alphabet=string.printable, max_size=30),
       row=st.dictionaries(st.sampled_from(["a", "b", "phrase", "tone"]), st.text(max_size=8) | st.none(), max_size=4))
def test_any_template_and_row_render_or_raise_a_data_error(template, row):
    try:
        config = DataConfig(name="d", data_files=["x.json"], format="json", text_template=template or None,
                            text_cols=None if template else ["a"])
        examples = render(config, [("x.json row 1", row)])
    except (DataError, ValueError):  # ValueError: pydantic rejects the config itself
        return
    assert len(examples) == 1 and isinstance(examples[0].completion, str)
