"""Process-wide settings that modelpress applies when it runs as the `modelpress` command, and what this machine
runs on (its CPU, the library versions a result is keyed by, the execution providers it has).

They change how memory is obtained and which libraries are loaded, never what is computed, and
they apply only to the command's own process: a program that imports modelpress as a library keeps
its own settings. Each is measured in the README's benchmark section. The exception is
`limit_threads`, which a Ray task's worker process calls with the CPUs the task reserved: the thread
count changes the order of PyTorch's sums, and so is the same for every task of a pass.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
from importlib.metadata import PackageNotFoundError, version

log = logging.getLogger("modelpress")
THP_ENV = "THP_MEM_ALLOC_ENABLE"
_thread_limit: int | None = None  # set by `limit_threads`: a Ray task's CPUs
_on_cluster_node = False  # set by `on_cluster_node`: this process runs Ray tasks for a driver


def tune_allocator() -> None:
    """Back PyTorch's large CPU tensors with transparent huge pages, unless the user set it already.

    PyTorch's CPU allocator gets every big tensor from glibc, which maps fresh pages for it and
    returns them on free, so each one costs a page fault per 4 KiB when first written. Training at
    2,048 tokens with eager attention allocates about 28 tensors of 64 MiB per step: 470,000 page
    faults, 40% of the step on a 2-core CPU. With PyTorch's `THP_MEM_ALLOC_ENABLE`, tensors of
    2 MiB and more are aligned and advised as huge pages (one fault per 2 MiB). The flag is read
    at PyTorch's first allocation, so this must run before torch is imported. Hosts whose kernel
    has transparent huge pages off simply ignore the advice. Set the variable to 0 to opt out.
    """
    os.environ.setdefault(THP_ENV, "1")


def hide_bitsandbytes_unless_used(config) -> bool:
    """Keep bitsandbytes from loading in a workflow that has no use for it; True if it was hidden.

    peft imports bitsandbytes whenever it is installed (the `qlora` extra), which costs about
    0.9 s and 115 MiB of resident memory in every training process. When no step can use it (no
    QLoRA pass among all searched choices, and no user code: plugin passes or custom metrics),
    the module is marked absent, so peft and transformers see it as not installed. Must run
    before peft is imported; does nothing if bitsandbytes is already loaded.
    """
    if "bitsandbytes" in sys.modules or uses_bitsandbytes(config):
        return False
    sys.modules["bitsandbytes"] = None  # import machinery: "not installed"
    return True


def uses_bitsandbytes(config) -> bool:
    """Whether any step of the workflow may import bitsandbytes: a QLoRA choice, or user code."""
    from modelpress.passes.catalog import CATALOG

    for step in config.passes:
        for option in (step, *step.alternatives):
            spec = CATALOG.get(option.type)
            if spec is None or spec.origin != "built-in" or (spec.optional_package or ("",))[0] == "bitsandbytes":
                return True
    metrics = config.evaluator.metrics if config.evaluator else []
    if any(m.user_config is not None and m.user_config.user_script is not None for m in metrics):
        return True
    return _bitsandbytes_checkpoint(config.input_model.model_path)


def _bitsandbytes_checkpoint(folder) -> bool:
    """Whether a local input model is stored quantized by bitsandbytes (an unsloth *-bnb-4bit checkpoint), which
    transformers loads through it."""
    import json
    from pathlib import Path

    path = Path(folder) / "config.json" if folder is not None else None
    try:
        quant = json.loads(path.read_text()).get("quantization_config") if path and path.is_file() else None
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(quant, dict) and "bitsandbytes" in str(quant.get("quant_method", "")).lower()


# Environment switches the Hugging Face libraries read when they are imported.
QUIET_BARS_ENV = ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS")


_library_bars_off = False  # set by quiet_library_bars: bars are not wanted in this process


@contextlib.contextmanager
def tqdm_off(off: bool | None = None):
    """Every tqdm bar made inside defaults to off (`off` None: where `quiet_library_bars` ran), for libraries that
    draw plain tqdm bars with no switch (lm-eval's evaluator, transformers' GGUF conversion); tqdm is as it was
    afterwards."""
    import tqdm.std

    original = tqdm.std.tqdm.__init__
    if _library_bars_off if off is None else off:
        tqdm.std.tqdm.__init__ = functools.partialmethod(original, disable=True)
    try:
        yield
    finally:
        tqdm.std.tqdm.__init__ = original


def quiet_library_bars() -> None:
    """Stop the Hugging Face libraries' own bars (loading weights, writing shards, downloads, datasets).

    Set through the environment, which huggingface_hub, transformers (through huggingface_hub) and
    datasets read when imported, so nothing heavy is imported here: a fully cached run stays free of
    torch. A library imported already is switched off directly.
    """
    global _library_bars_off
    _library_bars_off = True
    for name in QUIET_BARS_ENV:
        os.environ.setdefault(name, "1")
    if "huggingface_hub" in sys.modules:
        sys.modules["huggingface_hub"].utils.disable_progress_bars()
    if "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.disable_progress_bar()
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()


def worker_logging(level: str | int) -> None:
    """In a worker process (a Ray task, a data-parallel rank), modelpress's lines go to its stderr, which Ray
    forwards to the driver, plain and with secrets hidden, at the driver's level."""
    from modelpress.redact import RedactingFormatter

    logger = logging.getLogger("modelpress")
    if logger.handlers:  # the process set its own up (a worker reused for a later task)
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False  # a library may have configured the root logger: one line each


def on_cluster_node() -> None:
    """Mark this process as one that runs Ray tasks: a pass's own execution provider that the node cannot run is
    an error there, not the CPU fallback a local run takes (the driver keyed the pass by what it asked for)."""
    global _on_cluster_node
    _on_cluster_node = True
    resolve_execution_provider.cache_clear()  # no fallback answered before


def limit_threads(count: int) -> None:
    """Compute on `count` threads in this process: PyTorch's, and onnxruntime's and onnxruntime-genai's where
    a model's own settings leave the count open.

    A Ray task calls this with the CPUs it reserved. Ray counts CPUs but does not pin a task to them, so
    without it each onnxruntime session of two tasks sharing a node starts a thread per core of the node,
    and each task times its latency on an oversubscribed CPU (measured in the README's "Several machines").
    """
    global _thread_limit
    import torch

    torch.set_num_threads(count)
    _thread_limit = count


def thread_limit() -> int | None:
    """The count `limit_threads` set in this process, or None (every core)."""
    return _thread_limit


def capped_threads(count: int) -> int:
    """A model's own thread count (0: the runtime's choice) under `limit_threads`'s limit: the limit where the
    count is 0 or above it; the count itself when no limit is set."""
    if not _thread_limit:
        return count
    return min(count, _thread_limit) if count else _thread_limit


def compute_threads() -> int:
    """The threads this process computes on: `limit_threads`'s count, else every core it may run on."""
    if _thread_limit:
        return _thread_limit
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def timing_host() -> dict:
    """What a latency figure depends on beside the model: the CPU's model name and the threads it computes on.
    An evaluation's cache key holds it, so a cache shared between machines or moved to another does not hand one
    machine's timings to another."""
    return {"cpu": _cpu_name(), "threads": compute_threads()}


@functools.lru_cache(maxsize=1)
def _cpu_name() -> str:
    """The CPU's model name, read once per process."""
    name = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            name = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), "")
    except OSError:
        pass
    import platform

    return name or platform.processor() or platform.machine()


@functools.lru_cache(maxsize=None)
def library_version(package: str) -> str:
    """The installed version of an importable package, read once per process: its version where a distribution of
    its own name installs it, else each distribution that does with its version (onnxruntime from
    onnxruntime-gpu: "onnxruntime-gpu 1.20.1"), "missing" where none does."""
    found = _readable(_distributions().get(package) or []) or _readable([package])  # its own name when none is
    if not found:
        return "missing"
    if len(found) == 1 and _canonical(found[0][0]) == _canonical(package):
        return found[0][1]
    return ", ".join(f"{name} {ver}" for name, ver in sorted(found))


def _readable(names) -> list[tuple[str, str]]:
    """(name, version) of each of the distributions `names` whose version can be read."""
    found = []
    for name in dict.fromkeys(names):
        try:
            found.append((name, version(name)))
        except PackageNotFoundError:
            continue
    return found


def _canonical(name: str) -> str:
    """A distribution or package name as PEP 503 compares them (runs of -, _ and . alike, case ignored)."""
    import re

    return re.sub(r"[-_.]+", "-", name).lower()


@functools.lru_cache(maxsize=1)
def _distributions() -> dict[str, list[str]]:
    from importlib.metadata import packages_distributions

    return packages_distributions()


def library_versions(packages) -> dict[str, str]:
    """import name -> installed version: what a cache key holds of the libraries a result was computed with."""
    return {name: library_version(name) for name in sorted(set(packages))}


@functools.lru_cache(maxsize=None)
def resolve_execution_provider(requested: str) -> str:
    """The requested EP if both onnxruntime and onnxruntime-genai here can run it; otherwise CPU (said once)."""
    if requested == "cpu":
        return "cpu"
    import onnxruntime as ort
    import onnxruntime_genai as og

    wanted = {"cuda": "CUDAExecutionProvider", "dml": "DmlExecutionProvider"}[requested]
    genai_has = {"cuda": og.is_cuda_available, "dml": og.is_dml_available}[requested]()
    if wanted in ort.get_available_providers() and genai_has:
        return requested
    if _on_cluster_node:  # the driver keyed the output by the request: a CPU build would be cached as its model
        from modelpress.errors import ModelpressError

        raise ModelpressError(f"the pass asks for {wanted}, which this Ray node lacks (onnxruntime has "
                              f"{', '.join(ort.get_available_providers())}; onnxruntime-genai "
                              f"{'has it' if genai_has else 'lacks it'}). Give the pass num_gpus in the Ray "
                              "system's pass_resources so that Ray places it on a GPU node, or leave the pass's "
                              "execution_provider out to build for the engine's.")
    log.warning("%s is not available on this machine (onnxruntime has %s; onnxruntime-genai %s): "
                "building and running for the CPU instead", wanted, ", ".join(ort.get_available_providers()),
                "has it" if genai_has else "lacks it")
    return "cpu"
