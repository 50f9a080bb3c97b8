"""Run a workflow: passes in config order, each cached; then evaluation; then the outputs.

This is the one place where the stages are composed; read `run_workflow` top to bottom.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from modelpress import __version__
from modelpress.cache import PassCache, cache_key, content_id
from modelpress.config.schema import PassConfig, WorkflowConfig, eval_data_name, training_pass
from modelpress.context import DataPlan
from modelpress.errors import ModelpressError, is_disk_full
from modelpress.fsutil import (commit_dir, finish_before_interrupt, json_text, read_json, remove_dead_writers,
                               restore_dir, stage_dir, stage_text, sync_tree)
from modelpress.html_report import REPORT, build_html
from modelpress.hub import go_offline, model_patterns, offline
from modelpress.inputs import describe_input, pin_hub_commit, resolve_input_folder
from modelpress.models import IF_NATIVE, MODEL_CARD, ModelRef, brought_recipe, native_training_dtype
from modelpress.passes.catalog import CATALOG, HF, HF_ADAPTER, data_refs
from modelpress.passes.spec_base import ANSWERED_BY, KIND_LIBRARIES, key_params
from modelpress.passes.torch_quant import fetch_default_calibration, uses_default_calibration
from modelpress.runtime import library_versions, resolve_execution_provider, timing_host
from modelpress.steps import PeakRSS, record, run_pass_here

log = logging.getLogger("modelpress")


@dataclass
class RunResult:
    """What a run produced and measured."""

    output_dir: Path
    final_model: ModelRef
    history: list[dict] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)


def run_workflow(config: WorkflowConfig, show_progress: bool = True) -> RunResult:
    """Run every pass (reusing cached outputs), evaluate, and write the output folder.

    With search on, `modelpress.search` runs the candidates through the same session; a config with an
    evaluator but no search is a search of one candidate, so its metrics and goals are checked the same way.
    """
    session = Session.start(config, show_progress)
    try:
        if config.search.enabled or config.evaluator is not None:
            from modelpress.search import run_search

            return run_search(session)
        history: list[dict] = []
        steps: dict[str, ModelRef] = {}
        ref = session.run_chain(config.passes, history, steps)
        metrics = session.evaluate_run(ref, steps, history)
        write_outputs(config, ref, session.task_card(), history, metrics, session.source)
        return RunResult(config.engine.output_dir, ref, history, metrics)
    except KeyboardInterrupt:
        session.cancel()  # tasks in flight on a cluster stop; finished passes stay in the cache
        raise
    finally:
        session.close()


@dataclass
class Session:
    """One run's shared state: the cache, the data, the execution provider and the input model."""

    config: WorkflowConfig
    cache: PassCache
    plan: DataPlan
    ep: str
    input_ref: ModelRef
    show_progress: bool = True
    checked: bool = False
    systems: dict = field(default_factory=dict)  # name -> a connected RaySystem
    local_lock: threading.RLock = field(default_factory=threading.RLock)  # this machine runs one step at a time
    online: Callable[[], None] | None = None  # puts back the Hub settings in force before the run
    source: dict = field(default_factory=dict)  # what was read as the input model (run_history.json)
    failed: dict = field(default_factory=dict)  # pass key -> its error: a search's candidates sharing it skip it

    @classmethod
    def start(cls, config: WorkflowConfig, show_progress: bool = True) -> "Session":
        engine = config.engine
        ray = _ray_system(config)
        cache = ray.storage.cache(engine.cache_dir) if ray else PassCache(engine.cache_dir)
        try:  # the run holds the cache in use (see PassCache.prepare) until it closes
            _prepare_folders(cache, engine.output_dir, engine.clean_cache, engine.clean_evaluation_cache)
            return cls._open(config, cache, ray, show_progress)
        except BaseException:
            cache.release()
            raise

    @classmethod
    def _open(cls, config: WorkflowConfig, cache: PassCache, ray, show_progress: bool) -> "Session":
        engine = config.engine
        ep = resolve_execution_provider(engine.execution_provider)
        written = config.input_model  # the run reads a Hub branch at one commit; the caller's config stays as it was
        config = config.model_copy(update={"input_model": pin_hub_commit(written)})
        folder = resolve_input_folder(config.input_model, engine.cache_dir)
        plan = DataPlan(config, engine.cache_dir, folder)
        plan.resolve_hub_data()
        if not offline() and any(uses_default_calibration(o) for p in config.passes for o in p.choices()):
            fetch_default_calibration()
        online = go_offline()  # every Hub id is resolved to a local folder by now: nothing later may reach a hub
        model = config.input_model  # a Hub snapshot is keyed by the files modelpress fetches and reads
        read = model_patterns(model.trust_remote_code, None) if model.hub_id and not model.gguf_file else None
        try:
            ref = ModelRef(HF, folder, id=content_id(folder, engine.cache_dir / "content-ids.json", read, model=True),
                           task={**brought_recipe(folder, config.input_model.task), "task": config.input_model.task})
        except BaseException:
            online()
            raise
        source = describe_input(written, folder, ref.id, model.revision if model.hub_id else None)
        if source.get("commit"):
            log.info("input model: %s at commit %s%s", model.hub_id, source["commit"],
                     f" (revision {written.revision!r})" if written.revision else "")
        session = cls(config, cache, plan, ep, ref, show_progress, online=online, source=source)
        if ray is not None:
            try:
                ray.connect(_requests(config, ray))
            except BaseException:
                ray.close()
                online()
                raise
            session.systems[ray.name] = ray
        return session

    def host(self, p: PassConfig):
        """The Ray system pass `p` runs on, or None for this machine."""
        return self.systems.get(p.host or self.config.engine.host)

    def target(self):
        """The Ray system evaluations run on, or None for this machine."""
        return self.systems.get(self.config.engine.target)

    def concurrency(self) -> int:
        """Search candidates run at once: the max_concurrency of the run's Ray system when every pass runs on it
        (named by the engine's host or by each pass's own), else one: passes on this machine run one at a time."""
        system = next(iter(self.systems.values()), None)
        if system is None or any(self.host(p) is not system for p in self.config.passes):
            return 1
        return system.config.max_concurrency

    def cancel(self) -> None:
        for system in self.systems.values():
            system.cancel_all()

    def close(self) -> None:
        try:
            for system in self.systems.values():
                system.close()
        finally:
            if self.online is not None:
                self.online()
            self.cache.release()

    def run_chain(self, passes: list[PassConfig], history: list[dict],
                  steps: dict[str, ModelRef] | None = None) -> ModelRef:
        """Run `passes` in order from the input model, each from the cache when it is there (`steps`
        receives each pass's output by name)."""
        ref = self.input_ref
        for p in passes:
            ref = self.run_pass(p, ref, history)
            if steps is not None:
                steps[p.name] = ref
        return ref

    def run_pass(self, p: PassConfig, ref: ModelRef, history: list[dict]) -> ModelRef:
        config, cache, plan = self.config, self.cache, self.plan
        # trained on this machine: not on a Ray host, nor data-parallel on a Ray cluster this run connected to
        local = self.host(p) is None and not (getattr(p.params, "num_workers", 1) > 1 and self.systems)
        key = _pass_key(config, p, ref, plan, self.ep, local=local)
        self._refuse_failed(p, key)  # the same pass on the same input, failed before in this run: not run again
        started = time.perf_counter()
        cached = cache.lookup(key, ref)
        if cached is None:
            if not self.checked:
                plan.check_all()  # a data error surfaces here, before any model is loaded
                self.checked = True
            with cache.lock(key):
                cached = cache.lookup(key, ref)  # another run may have made it while we waited
                if cached is None:
                    self._refuse_failed(p, key)  # a candidate run beside this one may have failed it meanwhile
                    try:
                        ref, row = self._run_uncached(p, key, ref)
                    except Exception as err:
                        if not is_disk_full(err):
                            self.failed[key] = f"{type(err).__name__}: {err}"
                        raise
                    history.append(row)
                    return ref
        (log.debug if self.config.search.enabled else log.info)(
            "pass %s (%s): reusing cached output %s", p.name, p.type, key[:12])
        history.append(record(p.name, p.type, key, True, time.perf_counter() - started, None, cache.notes(key)))
        return cached

    def _refuse_failed(self, p: PassConfig, key: str) -> None:
        if key in self.failed:
            raise ModelpressError(f"pass {p.name} ({p.type}) failed earlier in this run on the same input and "
                                  f"settings: {self.failed[key]}")

    def _run_uncached(self, p: PassConfig, key: str, ref: ModelRef) -> tuple[ModelRef, dict]:
        host = self.host(p)
        if host is not None:
            return host.run_pass(self, p, key, ref)
        with self.local_lock:
            return run_pass_here(self.config, p, key, ref, self.plan, self.ep, self.cache, self.show_progress)

    def task_card(self) -> dict:
        return _task_card(self.config, self.plan)

    def prompting(self, eval_set) -> dict:
        """How a model is prompted on `eval_set`: as the training pass learnt (its card), or, in a run that trains
        nothing, as the eval set's own data config says (a chat config writes its own BOS; a text one may not)."""
        if training_pass(self.config.passes) or not eval_set.data_config:
            return self.task_card()
        return self.plan.prompt_recipe(eval_set.data_config)

    def measure(self, ref: ModelRef, role: str, history: list[dict], data_config: str | None = None,
                timed: bool = True) -> dict | None:
        """The cached evaluation of `ref` on the eval set (or on all rows of `data_config`); untimed (an extra data
        config), answers and loss only."""
        return _measure_cached(self, ref, role, history, data_config, timed)

    def evaluate_run(self, final: ModelRef, steps: dict[str, ModelRef], history: list[dict]) -> dict:
        """Metrics as metrics.json holds them: the input model (when asked), the steps named in
        `evaluate_passes` and the final model on the eval set; then each on every extra data config."""
        settings = self.config.evaluation
        if not settings.enabled:
            return {}
        roles = {"input": self.input_ref} if settings.evaluate_input_model else {}
        roles.update({name: steps[name] for name in settings.evaluate_passes})
        roles["final"] = final
        results = {}
        for role, ref in roles.items():
            result = self.measure(ref, role, history)
            if result is None:
                return {}
            results[role] = result
        metrics = {"models": results}
        for name in settings.extra_data_configs:
            metrics.setdefault("extra_data", {})[name] = {
                role: self.measure(ref, f"{role} on {name}", history, name, timed=False) for role, ref in roles.items()}
        return metrics


def _ray_system(config: WorkflowConfig):
    """The Ray system this run uses (as host of any pass, or as target), unconnected; None when all runs here."""
    names = {config.engine.host, config.engine.target} | {c.host for p in config.passes for c in p.choices()}
    used = sorted({n for n in names if config.ray_system(n)})
    if not used:
        return None
    if len(used) > 1:
        raise ModelpressError(f"the workflow names {len(used)} Ray systems ({', '.join(used)}); a run uses one "
                              "cluster. Name the same system as host, target and every pass's host.")
    from modelpress.systems.ray_system import RaySystem

    return RaySystem(used[0], config.systems[used[0]].ray, config.engine.cache_dir)


def _requests(config: WorkflowConfig, system) -> dict:
    """What each task on `system` asks for, by pass name ("evaluation" for the target's)."""
    out = {p.name: system.resources(p.name) for p in config.passes
           if (p.host or config.engine.host) == system.name}
    if config.engine.target == system.name:
        out["evaluation"] = system.resources(None)
    return out


def _prepare_folders(cache: PassCache, output_dir: Path, clean: bool, clean_evals: bool = False) -> None:
    try:
        cache.prepare(clean, clean_evals)
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ModelpressError(f"cannot write to {err.filename or cache.root}: {err.strerror}. "
                              "Choose a writable cache_dir and output_dir.") from None


def _pass_key(config: WorkflowConfig, p: PassConfig, ref: ModelRef, plan: DataPlan, ep: str, local: bool = True
              ) -> str:
    """What a pass's output depends on: its input, its type and params (not those that change only its log or
    checkpoints), the bytes of the data it reads, the input model's loading options, and the execution provider
    where the pass reads it. `local`: the pass runs on this machine, so a dtype left to the hardware
    (`bfloat16-if-native`) is keyed by what it resolves to here."""
    spec = CATALOG[p.type]
    data = {}
    if spec.needs_data:
        # a built-in pass reads the data configs its params name; a plugin may read any of them
        names = set(data_refs(p.params).values()) if spec.origin == "built-in" else set(config.data_configs)
        data = {name: plan.fingerprint(name) for name in sorted(names)}
    params = key_params(p.params)
    if local and params.get("torch_dtype") == IF_NATIVE:
        params["torch_dtype"] = native_training_dtype()
    if local and params.get("execution_provider"):  # ModelBuilder's own: the one it builds for here
        params["execution_provider"] = resolve_execution_provider(params["execution_provider"])
    # the task too: a LoRA pass trains a classifier head or a causal LM from it (torch_dtype is read by nothing).
    # Where the model came from is not: ref.id is its content (a Hub snapshot's, a GGUF file's), so pinning the
    # revision a branch already points at reuses every pass; the attention kernel only changes what training does
    unread = {"model_path", "torch_dtype", "hub_id", "revision", "gguf_file"}
    if not p.trains:
        unread.add("attn_implementation")
    loading = config.input_model.model_dump(mode="json", exclude=unread)
    versions = library_versions(spec.libraries(ref.kind))
    return cache_key("pass", __version__, ref.id, p.type, spec.origin_key(), params, data,
                     ep if spec.keys_execution_provider() else None, loading, versions,
                     *([spec.output_version] if spec.output_version > 1 else []))


def _task_card(config: WorkflowConfig, plan: DataPlan) -> dict:
    """How to prompt the final model, saved beside it for `modelpress generate` and `evaluate` and used by the
    run's own evaluation: the data config the first training pass learnt from, else (a run that only exports
    or quantizes) the one the evaluation reads."""
    trained = training_pass(config.passes)
    name = trained.params.train_data_config if trained else eval_data_name(config.evaluation, [], config.data_configs)
    return plan.prompt_recipe(name) if name else {}


# The evaluation procedure's version, part of every evaluation's cache key: bump it when
# evaluate.py measures differently, so no cached number from the old procedure is reused.
# 2: genai generators get a fixed random_seed (std::random_device cost 12-15 ms per example).
# 3: accuracy from batched generation, answers cut at the example's stop text; latency on a sample.
# 4: answers end at the generation config's end ids and a one-token stop; the loss scores that stop;
#    a trained classifier reads its inputs with its training max_seq_len and special tokens.
# 5: the result keeps the wrong answers; a Ray target's evaluation computes on the threads its task reserved.
# 6: a wrong answer keeps its prompt's own text; what every prompt of the eval set shares is kept once;
#    a run that trains nothing prompts as its evaluation data config says (BOS, template).
# 7: the completion loss scores the first token training put after the answer (the closing text as written);
#    PyTorch answers are plain greedy whatever generation_config.json asks; genai stops at every end id and
#    counts the end token, as the other runners do; without special tokens no end of sequence is scored.
# 8: that closing token is read from the answer and closing text tokenized together, as training does.
# 9: an evaluation that names the training pass's own data config reads its eval split, not every row.
# 10: latency p75/p999 and the low percentiles throughput's come from.
# 11: a result names the runtime that answered; a GGUF model is answered by llama.cpp where llama-cpp-python is.
MEASUREMENT = 12  # bump when a measurement gives other results for the same inputs (12: an LMEvaluator on a GGUF
# model runs in llama.cpp too)


def evaluation_key(session: Session, kind: str, ref: ModelRef, *parts, with_data: bool = True,
                   reads_default: bool = True) -> str:
    """Cache key of one measurement of `ref`: the model, the data bytes, the split, the data config the evaluation
    reads by default when it reads that one (the first one, in a run that trains nothing: named, since the order
    of configs is not in the fingerprints) and `parts`; `with_data` false for a measurement that reads none of the
    workflow's data."""
    config, plan = session.config, session.plan
    data, split, default = None, None, None
    if with_data:
        data = {name: plan.fingerprint(name) for name in config.data_configs}
        split = [plan.split_params(p.params) for p in config.passes if p.trains]
        if reads_default:
            default = eval_data_name(config.evaluation, config.passes, config.data_configs)
    return cache_key(kind, __version__, MEASUREMENT, ref.id, data, split, default, config.input_model.task,
                     library_versions((*KIND_LIBRARIES.get(ref.kind, ()), *ANSWERED_BY.get(ref.kind, ()))), *parts)


def record_step(name: str, key: str, hit: bool, seconds: float, peak_mb: float | None) -> dict:
    """A run-history row for a measurement."""
    return record(name, "evaluation", key, hit, seconds, peak_mb, [])


def _measure_cached(session: Session, ref: ModelRef, role: str, history: list[dict],
                    data_config: str | None, timed: bool = True) -> dict | None:
    config, plan, cache = session.config, session.plan, session.cache
    target = session.target()
    # a Ray target times on the threads its task reserves (runtime.limit_threads), not on this machine's cores
    timed_on = {"ray_threads": target.threads(None)} if target is not None else timing_host()
    # keyed by the latency_samples evaluate is given: 0 untimed, which no config holds (it must be positive)
    settings = key_params(config.evaluation) | ({} if timed else {"latency_samples": 0})
    key = evaluation_key(session, "eval", ref, settings, data_config, timed_on, reads_default=data_config is None)
    cached = cache.read_eval(key)
    hit = cached is not None
    started = time.perf_counter()
    if not hit:
        eval_set = plan.eval_set(data_config)
        if eval_set is None:
            # a search (an evaluator) still compares sizes (metrics.metric_values); a plain run records nothing
            (log.debug if config.evaluator is not None else log.warning)(
                "no data to evaluate on: the models are not evaluated and metrics.json is empty (add a data config "
                "for evaluation.data_config, or set evaluation.enabled false)")
            return None
        where = f" of {data_config}" if data_config else ""
        log.info("evaluating the %s model (%s) on %d examples%s", role.removesuffix(f" on {data_config}"), ref.kind,
                 len(eval_set.examples), where)
        ref = _with_labels(session, ref)
        prompting = session.prompting(eval_set)
        if target is not None:
            cached = target.measure(session, ref, data_config, prompting, timed)
        else:
            from modelpress.evaluate import measure

            with session.local_lock, PeakRSS() as memory:
                cached = measure(config, ref, eval_set, prompting, session.show_progress, timed=timed)
            cached["peak_rss_mb"] = round(memory.peak_mb, 1)
        cache.write_eval(key, cached)
    history.append(record_step(f"evaluate {role}", key, hit, time.perf_counter() - started,
                               None if hit else cached.get("peak_rss_mb")))
    return cached


def _with_labels(session: Session, ref: ModelRef) -> ModelRef:
    """A classifier not trained yet (the input model) is measured with a fresh head over the data's labels."""
    if ref.task.get("task") != "text-classification" or ref.task.get("labels"):
        return ref
    trained = training_pass(session.config.passes)
    if trained is None:
        return ref
    import torch

    torch.manual_seed(0)  # the untrained head is random: seed it so the baseline is reproducible
    return ModelRef(ref.kind, ref.path, ref.id, ref.base, {**ref.task, "labels": session.plan.labels(trained.params)})


MEASURED_WITH = {"max_new_tokens", "batch_size", "latency_samples"}  # kept in the output card: `evaluate`'s defaults


def write_outputs(config: WorkflowConfig, final: ModelRef | None, task: dict, history: list[dict],
                  metrics: dict, source: dict | None = None) -> None:
    """The output folder: the final model (unless a search found none that meets the goals), the resolved
    config, the metrics, the run history and the HTML report. Every file is made and written beside its place
    (a full disk or a failure to make one leaves the earlier run's set whole), then the model folder and the
    files are renamed into place, a Ctrl-C meanwhile waiting for the last rename (no new model beside old metrics)."""
    out = config.engine.output_dir
    resolved = config.resolved()
    files = {"config.resolved.json": resolved,
             "run_history.json": {"modelpress": __version__, "input_model": source or {}, "steps": history},
             "metrics.json": metrics}
    texts = {name: json_text(value) for name, value in files.items()}
    texts[REPORT] = build_html(metrics, history, resolved)
    staged: dict[Path, Path] = {}
    model_tmp = old_model = None
    for name in remove_dead_writers(out):
        log.info("removed %s from %s: a killed run's unfinished copy", name, out)
    try:
        for name, text in texts.items():
            staged[out / name] = stage_text(out / name, text)
        model_tmp, commit = _stage_model(out / "model", final, {**(final.task if final else {}), **task,
                                                               **config.evaluation.model_dump(include=MEASURED_WITH)})
        with finish_before_interrupt("the output folder"):  # the model and its metrics change together
            old_model = commit()
            try:
                for path, tmp in staged.items():
                    os.replace(tmp, path)
            except BaseException:
                # a rename within one folder failing: the earlier model goes back (files renamed before the
                # failing one are this run's already; they are not moved back)
                if old_model is not None:
                    restore_dir(old_model, out / "model")
                    old_model = None
                raise
    finally:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)
        if model_tmp is not None:  # staged and not committed (committed, it is gone)
            shutil.rmtree(model_tmp, ignore_errors=True)
        if old_model is not None:  # the earlier run's model, replaced with its set
            shutil.rmtree(old_model, ignore_errors=True)
    if final is not None and final.kind == HF_ADAPTER:
        log.info("the final model is an adapter; its base stays at %s", final.base)


def _stage_model(target: Path, final: ModelRef | None, prompted: dict
                 ) -> tuple[Path | None, Callable[[], Path | None]]:
    """The output model folder made beside `target` (a copy, which may take long), and what puts it in place (a
    rename, returning the earlier folder moved aside, if any); `prompted`: how it was prompted, and the answer
    length, batch size and latency sample the run measured it with (`modelpress evaluate`'s defaults). The same
    model only prompted otherwise gets its card rewritten."""
    card = target / MODEL_CARD
    try:
        current = read_json(card) if card.is_file() else {}
    except ValueError:  # a damaged card: the folder is replaced whole
        current = {}
    if final is None:
        if current.get("id"):
            log.warning("%s was not replaced: it still holds the model of an earlier run (%s)", target,
                        current["id"][:12])
    elif current.get("id") != final.id:
        tmp = stage_dir(target)
        try:
            shutil.copytree(final.path, tmp, dirs_exist_ok=True)
            ModelRef(final.kind, tmp, final.id, final.base, prompted).save(tmp)
            sync_tree(tmp)  # on disk before the renames
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return tmp, lambda: commit_dir(tmp, target)
    elif current.get("task") != json.loads(json_text(prompted)) or current.get("base") != (
            str(final.base) if final.base else None):  # the same model prompted otherwise, or its base moved
        def rewrite_card() -> None:
            ModelRef(final.kind, target, final.id, final.base, prompted).save(target)

        return None, rewrite_card
    return None, lambda: None
