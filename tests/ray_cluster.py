"""A real multi-node Ray cluster on this machine for the tests, torn down by process id.

Each node is `ray start --block` in its own process group, on 127.0.0.1, with the cluster's own
temp dir and GCS port; light settings (a 100 MB object store, no dashboard, no usage stats).
Token auth (on by default since Ray 2.59) is set off the same way for every process, the tests'
own included, through RAY_AUTH_MODE.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

RAY = str(Path(sys.executable).with_name("ray"))
ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
       # a dead node is noticed in about 3 s, not 30
       "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3",
       "RAY_health_check_initial_delay_ms": "1000"}
os.environ.update(ENV)  # this process is the driver: it must agree with the cluster


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalCluster:
    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="mpray-", dir="/tmp"))  # short: Ray's socket paths are limited
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.nodes: list[subprocess.Popen] = []
        self.pids: set[int] = set()

    def _start(self, args: list[str], num_cpus: float, resources: dict) -> subprocess.Popen:
        cmd = [RAY, "start", "--block", "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus:g}",
               "--object-store-memory=100000000", "--disable-usage-stats", f"--resources={json.dumps(resources)}",
               *args]
        log = open(self.tmp / f"node{len(self.nodes)}.log", "w")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **ENV},
                                start_new_session=True)
        self.nodes.append(proc)
        self.pids.add(proc.pid)
        return proc

    def start(self, head_cpus: float = 1, head_resources: dict | None = None) -> "LocalCluster":
        """Start the head and wait until it answers (a node started before that may give up joining)."""
        self._start(["--head", f"--port={self.port}", f"--temp-dir={self.tmp}", "--include-dashboard=false"],
                    head_cpus, head_resources or {})
        self.wait_for(1)
        return self

    def add_node(self, num_cpus: float = 1, resources: dict | None = None) -> subprocess.Popen:
        """Start a node and wait until it has joined (nodes started together on 2 cores can time out)."""
        proc = self._start([f"--address={self.address}"], num_cpus, resources or {})
        self.wait_for(len(self.nodes))
        return proc

    def wait_for(self, count: int, timeout: float = 90) -> list[dict]:
        """The alive nodes once there are `count` of them (checked from a short-lived driver)."""
        import ray

        deadline = time.monotonic() + timeout
        while True:
            try:
                ray.init(address=self.address, logging_level="ERROR", log_to_driver=False)
                nodes = [n for n in ray.nodes() if n["Alive"]]
            except Exception:  # the head is not up yet
                nodes = []
            finally:
                ray.shutdown()
            if len(nodes) >= count:
                self._remember()
                return nodes
            if time.monotonic() > deadline:
                logs = "\n".join(f"{log.name}: {log.read_text()[-1500:]}" for log in sorted(self.tmp.glob("node*.log")))
                raise TimeoutError(f"{len(nodes)} of {count} Ray nodes came up:\n{logs}")
            time.sleep(1)

    def _remember(self) -> None:
        for proc in self.nodes:
            try:
                self.pids.update(p.pid for p in psutil.Process(proc.pid).children(recursive=True))
            except psutil.NoSuchProcess:
                pass

    def kill_node(self, proc: subprocess.Popen) -> None:
        """A node lost: its `ray start` and every process under it killed at once."""
        self._remember()
        try:
            family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        for p in family:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        proc.wait(timeout=10)

    def processes(self) -> list[psutil.Process]:
        """Processes of this cluster still alive: the ones recorded, and any whose command line names its dir."""
        alive = []
        for p in psutil.process_iter(["pid", "cmdline"]):
            try:
                cmdline = " ".join(p.info["cmdline"] or [])
            except psutil.Error:
                continue
            if p.info["pid"] in self.pids or str(self.tmp) in cmdline:
                if p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
        return alive

    def stop(self) -> None:
        self._remember()
        for proc in reversed(self.nodes):  # `ray start --block` stops its node's processes on SIGTERM
            if proc.poll() is None:
                proc.terminate()
        for proc in self.nodes:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        deadline = time.monotonic() + 10
        while self.processes() and time.monotonic() < deadline:
            time.sleep(0.5)
        for p in self.processes():  # whatever did not stop by itself
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        shutil.rmtree(self.tmp, ignore_errors=True)


def ray_processes() -> list[str]:
    """Every Ray process on this machine (GCS, raylets, workers), by name."""
    names = ("gcs_server", "raylet", "ray::", "default_worker.py", "ray/_private", "ray start")
    found = []
    for p in psutil.process_iter(["pid", "name", "cmdline"]):
        try:
            text = f"{p.info['name']} {' '.join(p.info['cmdline'] or [])}"
            if any(n in text for n in names) and p.status() != psutil.STATUS_ZOMBIE:
                found.append(f"{p.info['pid']} {text[:120]}")
        except psutil.Error:
            continue
    return found
