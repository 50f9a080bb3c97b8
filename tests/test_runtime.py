"""Process settings of the `modelpress` command (modelpress.runtime): what they decide, and their effect."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import example_workspace, tone_workflow
from modelpress.config import load_config, normalize
from modelpress.runtime import THP_ENV, uses_bitsandbytes

LORA = {"type": "LoRA", "train_data_config": "tone", "r": 4, "target_modules": ["qkv_proj"],
        "training_args": {"max_steps": 2}}


def _config(tiny_model: Path, passes: dict, **top):
    return normalize(tone_workflow(tiny_model, passes, **top), base_dir=Path.cwd())


def test_plain_lora_workflows_do_not_use_bitsandbytes(tiny_model, tmp_path):
    assert not uses_bitsandbytes(_config(tiny_model, {"lora": LORA, "merge": {"type": "MergeAdapterWeights"}}))
    work = example_workspace(tmp_path, tiny_model)
    for name in ("demo.json", "olive-0.13-config.json", "search.json", "seed-config.json"):
        assert not uses_bitsandbytes(load_config(work / name)), name


def test_qlora_anywhere_in_the_workflow_uses_bitsandbytes(tiny_model):
    qlora = {**LORA, "type": "QLoRA"}
    assert uses_bitsandbytes(_config(tiny_model, {"ft": qlora}))
    # only one alternative of a searched step is QLoRA: it may run, so bitsandbytes must load
    searched = _config(tiny_model, {"ft": [LORA, qlora]}, search_strategy={"sampler": "sequential"})
    assert searched.passes[0].type == "LoRA" and uses_bitsandbytes(searched)


def test_user_code_may_use_bitsandbytes(tiny_model, tmp_path):
    # a plugin pass from a script: modelpress cannot know what it imports
    (tmp_path / "noop_pass.py").write_text(
        "from modelpress.plugin import Pass\n\nclass RuntimeTestNoop(Pass):\n"
        "    def run(self, ctx, params):\n        return ctx.model\n")
    plugin = {"lora": LORA, "merge": {"type": "MergeAdapterWeights"},
              "noop": {"type": "RuntimeTestNoop", "user_script": "noop_pass.py"}}
    assert uses_bitsandbytes(normalize(tone_workflow(tiny_model, plugin), base_dir=tmp_path))
    # nor what a custom metric's script imports
    (tmp_path / "metric.py").write_text("def rows(model_dir, model_kind, examples):\n    return len(examples)\n")
    custom = {"name": "custom", "type": "custom", "user_config": {"user_script": "metric.py", "evaluate_func": "rows"},
              "sub_types": [{"name": "rows", "higher_is_better": True}]}
    raw = tone_workflow(tiny_model, {"lora": LORA}, evaluators={"e": {"metrics": [custom]}}, evaluator="e")
    assert uses_bitsandbytes(normalize(raw, base_dir=tmp_path))
    raw["evaluators"]["e"]["metrics"][0] = {"name": "acc", "type": "accuracy", "sub_types": [{"name": "accuracy_score"}]}
    assert not uses_bitsandbytes(normalize(raw, base_dir=tmp_path))


def _python(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter, with this environment less THP_ENV, plus `env`."""
    base = {k: v for k, v in os.environ.items() if k != THP_ENV}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**base, **(env or {})}, timeout=300)


def test_hidden_bitsandbytes_is_not_loaded_and_lora_still_builds(tiny_model, tmp_path):
    demo = example_workspace(tmp_path, tiny_model) / "demo.json"
    code = f"""
import sys
from pathlib import Path
from modelpress.config import load_config
from modelpress.runtime import hide_bitsandbytes_unless_used
assert hide_bitsandbytes_unless_used(load_config({str(demo)!r}))
import peft, transformers
from transformers.utils import is_bitsandbytes_available
from modelpress.models import load_causal_lm
model = peft.get_peft_model(load_causal_lm(Path({str(tiny_model)!r})),
                            peft.LoraConfig(r=4, target_modules=["qkv_proj"], task_type="CAUSAL_LM"))
assert model.get_nb_trainable_parameters()[0] > 0
print(sys.modules["bitsandbytes"] is None, is_bitsandbytes_available())
"""
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "False"]


def test_bitsandbytes_stays_when_the_workflow_uses_it(tiny_model, tmp_path):
    raw = tone_workflow(tiny_model, {"ft": {**LORA, "type": "QLoRA"}})
    (tmp_path / "q.json").write_text(json.dumps(raw))
    code = f"""
import importlib.util, sys
from modelpress.config import load_config
from modelpress.runtime import hide_bitsandbytes_unless_used
print(hide_bitsandbytes_unless_used(load_config({str(tmp_path / 'q.json')!r})),
      importlib.util.find_spec("bitsandbytes") is not None)
"""
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    hidden, found = proc.stdout.split()
    assert hidden == "False"
    if found == "True":  # with the qlora extra installed, it is still importable
        assert _python(code + "import bitsandbytes").returncode == 0


def test_the_command_turns_on_huge_page_tensors_unless_the_user_chose():
    code = ("import os, sys; from modelpress import cli; cli.main = lambda **kw: print(os.environ.get(%r)) or 0; "
            "cli.entry()" % THP_ENV)
    unset = _python(code)
    assert unset.stdout.strip() == "1", unset.stderr
    assert _python(code, {THP_ENV: "0"}).stdout.strip() == "0"
    # a program that uses modelpress as a library keeps its own settings
    library = _python(f"import os, modelpress.cli; print(os.environ.get({THP_ENV!r}))")
    assert library.stdout.strip() == "None", library.stderr


def test_plain_tqdm_bars_are_off_where_the_library_bars_are_quieted(monkeypatch, capsys):
    """transformers' GGUF conversion draws a plain tqdm bar with no switch: it went into a log file as raw
    redraws. Inside tqdm_off it is off where quiet_library_bars ran, and as it was elsewhere."""
    import io

    import tqdm

    from modelpress import runtime

    def drawn() -> str:
        out = io.StringIO()
        for _ in tqdm.tqdm(range(3), file=out, desc="Converting"):
            pass
        return out.getvalue()

    monkeypatch.setattr(runtime, "_library_bars_off", True)
    with runtime.tqdm_off():
        assert drawn() == ""
    assert "Converting" in drawn()  # tqdm is as it was afterwards
    monkeypatch.setattr(runtime, "_library_bars_off", False)
    with runtime.tqdm_off():
        assert "Converting" in drawn()


def test_an_input_model_stored_by_bitsandbytes_uses_it(tiny_model, tmp_path):
    """A checkpoint quantized by bitsandbytes (unsloth's *-bnb-4bit) with a plain LoRA pass: bitsandbytes was hidden
    and transformers said to install it, though it was installed."""
    import json
    import shutil

    folder = tmp_path / "bnb"
    shutil.copytree(tiny_model, folder)
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (folder / "config.json").write_text(json.dumps(config))
    assert uses_bitsandbytes(_config(folder, {"lora": LORA}))
    assert not uses_bitsandbytes(_config(tiny_model, {"lora": LORA}))
