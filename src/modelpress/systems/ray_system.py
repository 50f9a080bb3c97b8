"""A Ray cluster as a system: how a pass or an evaluation runs when the config names a `Ray` host or target.

The driver (the `modelpress run` process) keeps the cache: it checks it and takes the key's lock
before anything is submitted, so a cached pass never leaves the driver. A task gets plain data
(`ray_tasks`), writes its output under the system's storage, and returns its history row; the
driver then verifies the entry's manifest before the step counts as done. Ray re-runs a task
whose worker process or node dies (up to `max_retries`); an error the pass raises is final.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from modelpress.config.schema import RaySystemConfig, TaskResources
from modelpress.errors import ModelpressError
from modelpress.redact import is_secret_key, looks_secret
from modelpress.systems.ray_tasks import measure_task, ref_to_json, run_pass_task
from modelpress.systems.storage import open_storage

log = logging.getLogger("modelpress")

# Ray's name for each resource key of the config
RAY_NAMES = {"num_cpus": "CPU", "num_gpus": "GPU", "memory": "memory"}


class RaySystem:
    """One Ray cluster, connected for the length of a run."""

    def __init__(self, name: str, config: RaySystemConfig, cache_dir):
        self.name = name
        self.config = config
        self.storage = open_storage(config.storage or str(cache_dir))
        self.started_cluster = False
        self.in_flight: set = set()
        self._guard = threading.Lock()
        self._uploading = threading.Lock()  # apart from _guard: Ctrl-C's cancel_all must not wait for an upload
        self._uploaded: set[str] = set()
        self._remote: dict = {}
        # env vars whose name or value looks secret: each task sets them, since Ray's runtime-env agent writes
        # the whole runtime env, values included, to its log
        self._secret_env = {k: v for k, v in config.env_vars.items() if is_secret_key(k) or looks_secret(v)}

    # --- connecting -------------------------------------------------------------------------------

    def connect(self, requests: dict[str, TaskResources]) -> None:
        """Join (or start) the cluster, then check that some node can meet every task's request."""
        try:
            import ray
        except ImportError:
            from modelpress.errors import MissingDependencyError

            raise MissingDependencyError("ray", "ray", f"The Ray system {self.name!r}") from None
        from modelpress.runtime import QUIET_BARS_ENV, THP_ENV

        # a task's stderr reaches the driver's log, never a terminal: the libraries' own bars stay off there
        env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **dict.fromkeys(QUIET_BARS_ENV, "1")}
        if THP_ENV in os.environ:  # the command's huge-page tensors, in the workers of a cluster it did not start
            env[THP_ENV] = os.environ[THP_ENV]
        env.update({k: v for k, v in self.config.env_vars.items() if k not in self._secret_env})
        kwargs = {"runtime_env": {"env_vars": env}, "logging_level": logging.WARNING, "log_to_driver": True}
        if self.config.address is None:  # "local": a new cluster even where RAY_ADDRESS or a `ray start` on this
            # machine names one (Ray connected to that, and refused object_store_memory there)
            kwargs.update(address="local", include_dashboard=False, object_store_memory=100 * 2**20)
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        else:
            kwargs["address"] = self.config.address
        started = time.perf_counter()
        try:
            ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as err:
            raise _error(
                f"systems.{self.name}.address: cannot connect to the Ray cluster at {self.config.address}: {err}",
                "Start it first (`ray start --head` on the head node), check host:port, and set the same "
                "RAY_AUTH_MODE (and token) as the cluster.") from None
        self.started_cluster = self.config.address is None
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        log.info("Ray system %s: %s, %d node(s), %g CPU(s) in all (%.1f s)", self.name,
                 "a local cluster started for this run" if self.started_cluster else self.config.address,
                 len(nodes), sum(n["Resources"].get("CPU", 0) for n in nodes), time.perf_counter() - started)
        for what, request in requests.items():
            self._check_feasible(what, request, nodes)

    def resources(self, pass_name: str | None) -> TaskResources:
        """The request of a pass's task (its `pass_resources` over the system's defaults), or an evaluation's."""
        own = self.config.pass_resources.get(pass_name) if pass_name else None
        base = {k: getattr(self.config, k) for k in ("num_cpus", "num_gpus", "memory", "resources")}
        if own is not None:
            base.update({k: v for k, v in own.model_dump().items() if v not in (None, {})})
        return TaskResources(**base)

    def threads(self, pass_name: str | None) -> int:
        """The threads a task of `pass_name` (None: an evaluation) computes on: the whole CPUs it reserves."""
        return _threads(self.resources(pass_name))

    def _check_feasible(self, what: str, request: TaskResources, nodes: list[dict]) -> None:
        wanted = {RAY_NAMES[k]: getattr(request, k) for k in RAY_NAMES if getattr(request, k)}
        wanted.update(request.resources)
        if any(all(node["Resources"].get(k, 0) >= v for k, v in wanted.items()) for node in nodes):
            return
        key = f"systems.{self.name}.pass_resources.{what}" if what in self.config.pass_resources else \
            f"systems.{self.name}"
        have = "; ".join(_describe({k: v for k, v in sorted(n["Resources"].items())
                                    if not k.startswith(("node:", "object_store", "accelerator_type"))})
                         for n in nodes)
        raise _error(
            f"{key}: the {what} task asks for {_describe(wanted)}, and no node of the cluster has that "
            f"(nodes: {have})", "Lower the request, or add a node that has it (ray start --num-gpus/--resources); "
            "Ray would wait for such a node forever.")

    # --- running ----------------------------------------------------------------------------------

    def _job(self, session, ref) -> dict:
        config = session.config
        if config.raw is None:
            raise _error("a Ray system runs a config read from a file or a parsed mapping",
                                  "Load the workflow with modelpress.config.load_config or normalize.")
        input_ref = session.input_ref
        with self._uploading:  # search candidates build their jobs in threads: one upload of a multi-GB input
            if input_ref.id not in self._uploaded:
                self.storage.upload_input(input_ref.path, input_ref.id)
                self._uploaded.add(input_ref.id)
        self.storage.share(session.cache, ref)  # a pass that ran on the driver: its output, for the nodes
        return {"raw": _env_values_left_out(config.raw), "base_dir": str(config.base_dir), "storage": str(self.storage),
                "input_folder": str(input_ref.path), "input_id": input_ref.id, "ref": ref_to_json(ref),
                "hub_revisions": session.plan.hub_revisions(),
                "log_level": logging.getLevelName(log.getEffectiveLevel()),  # the driver's, --quiet or --verbose too
                "secret_env": self._secret_env}

    def run_pass(self, session, p, key: str, ref):
        """Run pass `p` on the cluster; return (its output, its history row) once the driver has verified it."""
        job = {**self._job(session, ref), "key": key, "ep": session.ep,
               "pass": {"name": p.name, "type": p.type, "params": p.params.model_dump(mode="json")}}
        log.info("pass %s (%s): running on Ray system %s", p.name, p.type, self.name)
        row = self._call(run_pass_task, job, self.resources(p.name), f"pass {p.name}")
        self.storage.fetch(session.cache, key)
        out = session.cache.lookup(key, ref)
        if out is None:
            raise _error(f"pass {p.name} ran on node {row['node'][:12]}, and its output under "
                                  f"{self.storage} is missing or does not match its manifest",
                                  f"Check that systems.{self.name}.storage is the same shared path on every node.")
        log.info("pass %s (%s): done on node %s in %.1f s, peak RSS %.0f MiB", p.name, p.type, row["node"][:12],
                 row["seconds"], row["peak_rss_mb"] or 0)
        return out, row

    def measure(self, session, ref, data_config: str | None, task_card: dict, timed: bool = True) -> dict:
        """Evaluate `ref` on the cluster (the run's `target`), prompting it as `task_card` says; untimed, answers and
        loss only."""
        from modelpress.passes.spec_base import ANSWERED_BY
        from modelpress.runtime import library_versions

        job = {**self._job(session, ref), "data_config": data_config, "task_card": task_card, "timed": timed,
               # what the driver keyed the evaluation by: the node must answer with the same
               "answered_by": library_versions(ANSWERED_BY.get(ref.kind, ()))}
        return self._call(measure_task, job, self.resources(None), f"evaluation of {ref.id[:12]}")

    def _call(self, function, job: dict, request: TaskResources, what: str):
        import ray
        from ray import exceptions as rx

        remote = self._remote.get(function)
        if remote is None:
            remote = self._remote[function] = ray.remote(function)
        options = {k: v for k, v in request.model_dump().items() if v not in (None, {})}
        handle = remote.options(**options, max_retries=self.config.max_retries, retry_exceptions=False,
                                name=what).remote({**job, "threads": _threads(request)})
        with self._guard:
            self.in_flight.add(handle)
        try:
            self._wait(handle, what)
            return ray.get(handle)
        except rx.RayTaskError as err:
            cause = getattr(err, "cause", None)
            if isinstance(cause, Exception):
                raise cause from None  # the pass's own error, as it would be raised here
            raise _error(f"{what} failed on the Ray cluster: {err}") from None
        except (rx.WorkerCrashedError, rx.NodeDiedError, rx.OwnerDiedError, rx.ObjectLostError) as err:
            raise _error(
                f"{what}: its worker process or node died {self.config.max_retries + 1} time(s) on the Ray "
                f"cluster ({type(err).__name__})", f"Raise systems.{self.name}.max_retries, or look for what kills "
                "the workers (out of memory: give the pass more `memory`).") from None
        except rx.OutOfMemoryError:
            raise _error(
                f"{what}: Ray's memory monitor killed its worker {self.config.max_retries + 1} time(s) (the node "
                "ran low on memory)", f"Give the pass more memory (systems.{self.name}.pass_resources.<pass>.memory, "
                "which keeps other tasks off its node), or run fewer tasks at once (max_concurrency).") from None
        except rx.TaskCancelledError:
            raise KeyboardInterrupt from None
        except rx.RayError as err:  # the environment could not be set up, the task can never be scheduled, ...
            raise _error(f"{what} could not run on Ray system {self.name!r}: {type(err).__name__}: {err}",
                         f"Check the cluster (`ray status`) and systems.{self.name}.") from None
        except BaseException as err:  # Ctrl-C while waiting: the task must not run on without the driver
            ray.cancel(handle, force=True)
            if isinstance(err, KeyboardInterrupt):
                log.warning("cancelled the %s on Ray system %s", what, self.name)
            raise
        finally:
            with self._guard:
                self.in_flight.discard(handle)

    def _wait(self, handle, what: str) -> None:
        """Wait for a task in short steps (Ctrl-C stays responsive); cancel it past the timeout."""
        import ray

        limit = self.config.timeout
        started = time.monotonic()
        while not ray.wait([handle], timeout=1.0)[0]:
            if limit is not None and time.monotonic() - started > limit:
                ray.cancel(handle, force=True)
                raise _error(f"{what} ran past systems.{self.name}.timeout ({limit:g} s) and was cancelled",
                                      "Raise the timeout, or give the task more resources.")

    def cancel_all(self) -> None:
        """Cancel every task in flight (Ctrl-C on the driver); finished passes stay in the cache."""
        import ray

        with self._guard:
            handles = list(self.in_flight)
        for handle in handles:
            ray.cancel(handle, force=True)
        if handles:
            log.warning("cancelled %d task(s) on Ray system %s", len(handles), self.name)

    def close(self) -> None:
        import ray

        if ray.is_initialized():
            ray.shutdown()


def _threads(request: TaskResources) -> int:
    return max(1, int(request.num_cpus or 1))


def _error(message: str, hint: str | None = None) -> ModelpressError:
    return ModelpressError(f"{message}. {hint}" if hint else message)


def _describe(amounts: dict) -> str:
    """"1 CPU, 2.0 GiB memory, 1 node_b": Ray counts memory in bytes."""
    return ", ".join(f"{v / 2**30:.1f} GiB {k}" if k == "memory" else f"{v:g} {k}" for k, v in amounts.items()) \
        or "nothing"


def _env_values_left_out(raw):
    """The config for a task: every system's env_vars values left out (the driver set them, or sends the secret
    ones apart), so no token travels inside the config a task might print."""
    if isinstance(raw, dict):
        return {k: {name: "" for name in v} if k == "env_vars" and isinstance(v, dict) else _env_values_left_out(v)
                for k, v in raw.items()}
    if isinstance(raw, list):
        return [_env_values_left_out(v) for v in raw]
    return raw
