"""LoRA/QLoRA data-parallel over `num_workers` processes: PyTorch DDP set up by Ray Train's TorchTrainer.

Each worker runs the same training as a single process would (`lora.train_here`); Ray Train
starts the workers, joins them in one process group (gloo on CPUs, nccl on GPUs) and sets the
variables the Hugging Face Trainer reads, so the Trainer wraps the model in DDP and hands each
rank its share of every step's batches. With B rows per device, a step sees B * num_workers rows,
the same rows a single process with batch B * num_workers sees. Rank 0 writes the adapter; it
comes back as a Ray Train checkpoint (under the pass's work folder, on the shared storage of a
Ray system), which the pass copies into its output.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from modelpress.errors import MissingDependencyError, ModelpressError
from modelpress.models import ModelRef
from modelpress.passes.catalog import HF_ADAPTER

log = logging.getLogger("modelpress")
RANK0 = "modelpress_rank0.json"  # what rank 0's training returned, carried in its checkpoint


def _worker_loop(config: dict) -> None:
    """One DDP rank: train, then rank 0 reports the adapter folder as the checkpoint."""
    import ray.train
    import torch

    from modelpress.runtime import worker_logging

    ctx, params = config["ctx"], config["params"]
    worker_logging(config["log_level"])  # rank 0's step lines reach the driver (the Trainer logs on rank 0 only)
    torch.set_num_threads(config["threads"])
    rank = ray.train.get_context().get_world_rank()
    with tempfile.TemporaryDirectory(prefix="modelpress-ddp-") as tmp:
        out = Path(tmp) / "out"
        out.mkdir()
        here = replace(ctx, out=out, show_progress=False, notes=[])
        ref = config["train"](here, params, config["quantization"])
        if rank == 0:
            (out / RANK0).write_text(json.dumps({"task": ref.task, "notes": here.notes}))
            ray.train.report({"rank": rank}, checkpoint=ray.train.Checkpoint.from_directory(str(out)))
        else:
            ray.train.report({"rank": rank})


def train_data_parallel(ctx, params, quantization_config, train_here) -> ModelRef:
    try:
        import ray
        from ray.train import RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer
    except ImportError:
        raise MissingDependencyError("ray[train]", "ray", f"LoRA with num_workers={params.num_workers}") from None
    import torch

    started_here = not ray.is_initialized()
    if started_here:  # not on a Ray system: a local cluster for the training, stopped after it
        # address "local": a new cluster even where RAY_ADDRESS names one (a KubeRay pod sets it)
        ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING,
                 object_store_memory=100 * 2**20)
    use_gpu = torch.cuda.is_available()
    from modelpress.runtime import compute_threads

    # a local cluster's workers share this process's cores; a Ray system's reserve one CPU each on their nodes
    threads = max(1, compute_threads() // params.num_workers) if started_here else 1
    work = Path(ctx.work_dir or ctx.out / "work") / "ray-train"
    work.mkdir(parents=True, exist_ok=True)
    log.info("training data-parallel on %d workers (%s), %d thread(s) each", params.num_workers,
             "nccl" if use_gpu else "gloo", threads)
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"ctx": ctx, "params": params, "quantization": quantization_config,
                           "train": train_here, "threads": threads,
                           "log_level": logging.getLevelName(log.getEffectiveLevel())},
        scaling_config=ScalingConfig(num_workers=params.num_workers, use_gpu=use_gpu),
        run_config=RunConfig(name="lora", storage_path=str(work)),
    )
    try:
        result = trainer.fit()
    except Exception as err:  # Ray Train wraps the workers' error
        raise ModelpressError(f"data-parallel training on {params.num_workers} workers failed: {err}") from None
    finally:
        if started_here:
            ray.shutdown()
    if result.checkpoint is None:
        raise ModelpressError("data-parallel training ended without rank 0's adapter")
    with result.checkpoint.as_directory() as folder:
        for item in Path(folder).iterdir():
            target = ctx.out / item.name
            if item.is_dir():
                shutil.copytree(item, target, dirs_exist_ok=True)
            else:
                shutil.copy2(item, target)
    meta = json.loads((ctx.out / RANK0).read_text())
    (ctx.out / RANK0).unlink()
    ctx.notes.extend(meta["notes"] + [f"data-parallel on {params.num_workers} workers (DDP, "
                                      f"{'nccl' if use_gpu else 'gloo'})"])
    return ModelRef(HF_ADAPTER, ctx.out, id="", base=Path(ctx.model.path), task=meta["task"])
