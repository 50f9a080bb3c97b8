"""What a Ray task runs on a cluster node: one pass, or one evaluation, rebuilt from plain data.

A task receives the config as the user wrote it (parsed JSON, with the folder its relative paths
are relative to), the step, the key the driver computed and the model reference. It validates the
config again, as any modelpress run does, so a plugin script runs only because the config names it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from modelpress.errors import ModelpressError
from modelpress.models import ModelRef
from modelpress.runtime import on_cluster_node, worker_logging


def ref_to_json(ref: ModelRef) -> dict:
    return {"kind": ref.kind, "path": str(ref.path), "id": ref.id, "base": str(ref.base) if ref.base else None,
            "task": ref.task}


def ref_from_json(data: dict) -> ModelRef:
    return ModelRef(data["kind"], Path(data["path"]), data["id"], Path(data["base"]) if data["base"] else None,
                    data["task"])


def _setup(job: dict):
    """The validated config, the data plan and the storage, on this node."""
    from modelpress.config.normalize import normalize
    from modelpress.context import DataPlan
    from modelpress.systems.storage import open_storage

    worker_logging(job["log_level"])
    on_cluster_node()
    os.environ.update(job.get("secret_env") or {})  # kept out of Ray's runtime env, whose agent logs it
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(name, "1")  # the driver resolved every Hub id before any task was sent
    if job.get("threads"):
        from modelpress.runtime import limit_threads

        # Ray reuses a worker process for tasks of any size: compute on this task's CPUs, so a pass trains
        # with the same threads (and so the same sums) whichever task the worker ran before, and onnxruntime
        # does not start a thread per core of the node beside another task
        limit_threads(job["threads"])
    # the input model comes from the storage: its source (a folder, a Hub id, a GGUF file) need not be here
    config = normalize(job["raw"], Path(job["base_dir"]), sources_here=False)
    storage = open_storage(job["storage"])
    input_folder = storage.local_folder(Path(job["input_folder"]), job["input_id"], "models")
    plan = DataPlan(config, config.engine.cache_dir, input_folder)
    plan.pin_hub_revisions(job.get("hub_revisions") or {})  # the rows the driver's keys were made from
    plan.resolve_hub_data()
    return config, plan, storage, input_folder


def _where() -> dict:
    import ray

    return {"node": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}


def run_pass_task(job: dict) -> dict:
    """Run one pass into the storage; return its run-history row (with the node and process it ran in)."""
    from modelpress.config.schema import PassConfig
    from modelpress.passes.catalog import CATALOG
    from modelpress.steps import run_pass_here
    from modelpress.systems.storage import local_ref

    started = time.time()
    config, plan, storage, input_folder = _setup(job)
    spec = job["pass"]
    p = PassConfig(name=spec["name"], type=spec["type"], params=CATALOG[spec["type"]].params.model_validate(
        spec["params"]))
    ref = local_ref(storage, ref_from_json(job["ref"]), Path(job["input_folder"]), job["input_id"])
    cache = storage.task_cache(config.engine.cache_dir)
    _, row = run_pass_here(config, p, job["key"], ref, plan, job["ep"], cache, False)
    storage.publish(cache, job["key"])
    return {**row, **_where(), "started": started, "ended": time.time()}


def same_answering_libraries(keyed: dict[str, str]) -> None:
    """Refuse to answer with other libraries than the driver keyed the evaluation by (llama-cpp-python for a GGUF
    model: a node without it would answer in PyTorch, cached under the driver's llama.cpp key)."""
    from modelpress.runtime import library_versions

    here = library_versions(keyed)
    if here != keyed:
        differ = ", ".join(f"{name} {here[name]} here, {keyed[name]} on the driver" for name in keyed
                           if here[name] != keyed[name])
        raise ModelpressError(f"this Ray node would answer the model with other libraries than the driver keyed its "
                              f"evaluation by ({differ}): install the same versions on the driver and every node")


def measure_task(job: dict) -> dict:
    """Measure one model on the eval set as the driver would; return the evaluation result."""
    import torch

    from modelpress.evaluate import measure
    from modelpress.runtime import thread_limit
    from modelpress.steps import PeakRSS
    from modelpress.systems.storage import local_ref

    started = time.time()
    config, plan, storage, input_folder = _setup(job)
    ref = local_ref(storage, ref_from_json(job["ref"]), Path(job["input_folder"]), job["input_id"])
    same_answering_libraries(job.get("answered_by") or {})
    eval_set = plan.eval_set(job["data_config"])
    torch.manual_seed(0)  # as the driver does for an untrained classifier head
    with PeakRSS() as memory:
        result = measure(config, ref, eval_set, job["task_card"], False, timed=job.get("timed", True))
    result["peak_rss_mb"] = round(memory.peak_mb, 1)
    result["ran_on"] = {**_where(), "thread_limit": thread_limit(), "started": started, "ended": time.time()}
    return result
