"""How one step runs in this process: a pass into its cache entry, with its time and peak memory.

The engine calls it for passes on this machine; a Ray task calls it on a cluster node.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time

from modelpress.cache import PassCache
from modelpress.config.schema import PassConfig
from modelpress.context import DataPlan, PassContext
from modelpress.models import ModelRef
from modelpress.passes.catalog import CATALOG
from modelpress.redact import redact

log = logging.getLogger("modelpress")


class PeakRSS:
    """Samples this process's resident memory in a thread and keeps the peak (MiB)."""

    def __init__(self, interval: float = 0.05):
        import psutil

        self.process = psutil.Process()
        self.interval = interval
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20


def run_pass_here(config, p: PassConfig, key: str, ref: ModelRef, plan: DataPlan, ep: str, cache: PassCache,
              show_progress: bool) -> tuple[ModelRef, dict]:
    run = CATALOG[p.type].runner()
    log.info("pass %s (%s): running", p.name, p.type)
    started = time.perf_counter()
    meta = {"pass": p.name, "type": p.type, "params": redact(p.params.model_dump(mode="json")), "input": ref.id}
    with PeakRSS() as memory, cache.write(key) as out:
        ctx = PassContext(ref, out, config.input_model, ep, plan, show_progress, work_dir=cache.work / key)
        result = run(ctx, p.params)
        passthrough = result is ref
        if not passthrough:
            result.id = key
            result.task = {**ref.task, **result.task}  # task and labels flow down the chain
            result.save(out)
        # the notes too, so that a later run reusing the entry reports what the pass found
        cache.commit_meta(out, {**meta, "seconds": time.perf_counter() - started, "notes": ctx.notes}, passthrough)
    shutil.rmtree(cache.work / key, ignore_errors=True)  # checkpoints are not needed once the entry exists
    seconds = time.perf_counter() - started
    final = ref if passthrough else ModelRef.load(cache.passes / key / "model")
    log.info("pass %s (%s): done in %.1f s, peak RSS %.0f MiB", p.name, p.type, seconds, memory.peak_mb)
    return final, record(p.name, p.type, key, False, seconds, memory.peak_mb, ctx.notes)


def record(step: str, kind: str, key: str, hit: bool, seconds: float, peak_mb: float | None,
           notes: list[str]) -> dict:
    """A run-history row."""
    return {"pass": step, "type": kind, "cache": "hit" if hit else "miss", "seconds": round(seconds, 3),
            "peak_rss_mb": round(peak_mb, 1) if peak_mb else None, "output_id": key, "notes": notes}
