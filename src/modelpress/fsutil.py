"""Atomic file and folder writes: a crash never leaves a half-written output that looks whole;
and file locks, so that two runs on one cache compute a shared output once."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from modelpress.errors import ModelpressError

log = logging.getLogger("modelpress")


def sync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; on success it replaces `target` by rename.

    On any error (or Ctrl-C) the temporary folder is removed and `target` is left as it was.
    """
    tmp = stage_dir(target)
    try:
        yield tmp
        sync_tree(tmp)
        old = commit_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def stage_dir(target: Path) -> Path:
    """A new temporary folder beside `target`, to fill and then `commit_dir` (or remove)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _recover(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{_writer()}-", dir=target.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; outputs are ordinary folders
    return tmp


def commit_dir(tmp: Path, target: Path) -> Path | None:
    """Replace `target` by the staged (and synced) folder `tmp`: two renames, the old folder put back if the second
    fails. Returns the old folder, moved aside, for the caller to remove once the rest of its set is in place."""
    target = Path(target)
    if not target.exists():
        os.rename(tmp, target)
        return None
    old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException:  # Ctrl-C or an error between the two renames: the old folder goes back
        os.rename(old, target)
        raise
    return old


def restore_dir(old: Path, target: Path) -> None:
    """Put the folder `commit_dir` moved aside back at `target` (the set it belongs to could not be completed)."""
    discard = target.with_name(f".{target.name}.tmp-{_writer()}-{uuid.uuid4().hex[:8]}")
    os.rename(target, discard)
    os.rename(old, target)
    shutil.rmtree(discard, ignore_errors=True)


@contextmanager
def finish_before_interrupt(what: str) -> Iterator[None]:
    """A Ctrl-C inside waits for the block to end, then stops the run (a second one stops it at once): `what` is
    written whole or not at all, never half. Outside the main thread (signals cannot be caught there) or where
    SIGINT is ignored, a plain block."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        yield  # a process told to ignore Ctrl-C (nohup, a background job) keeps ignoring it
        return
    asked: list[int] = []

    def later(signum, frame):
        if asked:
            raise KeyboardInterrupt
        asked.append(signum)
        log.warning("interrupted: finishing %s first (Ctrl-C again stops at once)", what)

    previous = signal.signal(signal.SIGINT, later)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
    if asked:
        raise KeyboardInterrupt


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def remove_leftovers(target: Path) -> None:
    """Remove the temporary folders a killed `atomic_dir` writer of `target` left beside it. Call it holding the
    lock its writers take, so no live writer's folder goes."""
    for stale in Path(target).parent.glob(f".{Path(target).name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _recover(target: Path) -> None:
    """Mend what a process killed between atomic_dir's two renames left: the moved-away folder goes back where
    `target` is missing (the earlier output is not lost); older moved-away copies are removed. A copy moved in
    the last minute may be another live process's, between its renames, and is left to it."""
    settled = time.time() - 60
    olds = sorted((p for p in target.parent.glob(f".{target.name}.old-*") if p.stat().st_ctime < settled),
                  key=lambda p: p.stat().st_ctime)
    if olds and not target.exists():
        os.rename(olds.pop(), target)
    for old in olds:
        shutil.rmtree(old, ignore_errors=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file, fsync and rename."""
    os.replace(stage_text(path, text), path)


def stage_text(path: Path, text: str) -> Path:
    """Write `text` to a temporary file beside `path` (fsync'd) and return it, for the caller to rename onto
    `path` once every file of a set is written: the disk is used before anything is replaced."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-{_writer()}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes files private; outputs are ordinary files
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def _writer() -> str:
    """This process, as its temporary files name it (host, pid namespace and pid), so a later run can tell a dead
    writer's: a pid means something only in its namespace (containers sharing a host name have their own)."""
    return f"{socket.gethostname()}-{_pid_namespace()}-{os.getpid()}"


def _pid_namespace() -> int:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


_TEMPORARY = re.compile(r"^\..+\.tmp-(?P<host>.+)-(?P<ns>\d+)-(?P<pid>\d+)-[a-z0-9_]+$")


def remove_dead_writers(folder: Path) -> list[str]:
    """Remove the temporary files and folders that writers on this host, in this pid namespace, left in `folder`
    when they were killed (SIGKILL, the OOM killer) before they could clean up: those whose process is gone. A
    live writer's stay, and so does any another host or container wrote (its pids cannot be checked here)."""
    removed = []
    host, namespace = socket.gethostname(), str(_pid_namespace())
    for entry in Path(folder).glob(".*.tmp-*") if Path(folder).is_dir() else []:
        match = _TEMPORARY.match(entry.name)
        if match is None or (match["host"], match["ns"]) != (host, namespace) or _alive(int(match["pid"])):
            continue
        shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
        removed.append(entry.name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def json_text(data: Any) -> str:
    """`data` as the indented JSON modelpress writes: standard JSON, so a number that is not finite (an infinite
    perplexity, a goal metric that was not measured) is written as null, which every JSON reader accepts."""
    return json.dumps(_finite(data), indent=2, sort_keys=False, default=str, allow_nan=False) + "\n"


def _finite(data: Any) -> Any:
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(v) for v in data]
    return data


def atomic_write_json(path: Path, data: Any) -> None:
    """Write `data` as indented JSON, atomically."""
    atomic_write_text(path, json_text(data))


def read_json(path: Path) -> Any:
    """The JSON in `path`; a file that does not parse (cut short, edited by hand) is a DamagedFileError naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        from modelpress.errors import DamagedFileError

        raise DamagedFileError(f"{path}: not readable JSON ({err}); the file is damaged or was cut short: restore it, "
                               "or run the step that writes it again") from err


def dir_size(path: Path) -> int:
    """Total bytes of the files under `path`, but those a loader does not read (`read_by_loaders`), which no
    deployment carries either."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and read_by_loaders(p.relative_to(path)))


def read_by_loaders(relative: Path) -> bool:
    """A model folder's file that is not under a hidden folder or hidden: `hf download --local-dir` keeps download
    metadata with timestamps in .cache/huggingface, a clone keeps .git (a second copy of the weights); no model
    loader reads them."""
    return not any(part.startswith(".") for part in relative.parts)


def copy_dir_atomic(source: Path, target: Path) -> None:
    """Copy the folder `source` to `target`, replacing it atomically."""
    with atomic_dir(target) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True)


def hold_in_use(path: Path, alone: bool, what: str):
    """A shared lock on `path` (many holders; waits while one holds it alone), or with `alone` an exclusive one,
    taken at once or an error naming `what`; `share` turns that into a shared one. Returns the open file: the
    lock lasts until it is closed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    try:
        if alone:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ModelpressError(f"{what}: another run is using the cache {path.parent.parent}, and emptying it "
                                      f"would delete what that run is writing. Run again when it ends, or set "
                                      f"{what} to false.") from None
        else:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("another run is emptying the cache %s (clean_cache); waiting for it", path.parent.parent)
                fcntl.flock(handle, fcntl.LOCK_SH)
    except BaseException:
        handle.close()
        raise
    return handle


def share(handle) -> None:
    """An exclusive `hold_in_use` lock becomes a shared one: other runs may start."""
    fcntl.flock(handle, fcntl.LOCK_SH)


@contextmanager
def file_lock(path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on the file `path` (created if missing); a second process waits here,
    told that another run is computing `what`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another run is computing %s in this cache; waiting for it", what)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
