"""The pass cache: each pass output lives under a hash of everything that determines it.

Key = sha256(input model content id, pass type, fully resolved params, data fingerprints,
execution provider, cache format version). An output's own content id is its key, so a
change anywhere upstream changes every key downstream, and an unchanged prefix is reused.
Entries are written to a temporary folder and renamed into place; `entry.json`, written
last, lists every file with its size, and an entry whose files do not match is never reused.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from modelpress.errors import ModelpressError
from modelpress.fsutil import (atomic_dir, atomic_write_json, file_lock, file_sha256, hold_in_use, read_by_loaders,
                               read_json, remove_leftovers, share)
from modelpress.models import ModelRef
from modelpress.passes.spec_base import HF_ADAPTER

log = logging.getLogger("modelpress")
CACHE_VERSION = 13  # bump when a pass gives different output for the same inputs (3: 2026-12-06, the k-quant
# layer rule, kld_gradient's head, Rtn/Gptq's float dtype, the eval split of data_seed null; 4: the same day,
# nodes_to_include restricting the weight-only quantizers, an empty float16 include list meaning none; 5: the
# next session, 8-bit RTN quantizing embedding tables, torch_dtype float16 as fp16 autocast over a float32 base,
# chat data ignoring add_special_tokens and tokenizing a loss_on-all prompt whole, a classifier's two text
# columns read as a sentence pair; 6: the joiner between joined rows with special tokens too; 7: LoHa and LoKr
# train with Olive's rank_dropout and module_dropout, 0 by default, instead of lora_dropout; 8: that evening, chat
# answers split after the lead a template writes, an answer a template rewrites trained as rendered, the eval split
# grouping rows that ask the same, line-by-line token counts without padding; 9: 2026-12-06 night, symmetric grids
# of Gptq, Rtn and SelectiveMixedPrecision as the GPTQ reference code spreads them; 10: 2026-12-06 late night, rows
# of a template whose prompt holds no row text told apart by their text, a chat answer's leading blanks left out of
# its prompt, the system message every chat row opens with recorded on the card, max_samples capping a
# classifier's training rows, LoRA keeping a tied embedding tied to its head, a
# data_dir read by split, a split's slice taken over all its files; 11: 2026-12-07, a whole-number class label read
# as a float (1.0) named as the integer, a classifier's rows cut to the tokenizer's model_max_length; 12: the next
# session, OnnxConversion's KV-cache graph taking position_ids and keeping a sliding-window model's whole past, a
# classifier's loss under gradient accumulation, a whole number in a float column written whole, R1-style chat
# prompts, a classifier's eval split keeping held-out labels among the trained, the streamed merge's int buffers; 13:
# 2026-12-08, an answer trained and scored as its tokens follow the prompt, not as it is tokenized alone)

CACHE_MARKER = ".modelpress-cache"  # in a cache_dir modelpress made: clean_cache may empty it
IN_USE_LOCK = "in-use.lock"  # shared by every run on the cache, taken alone to empty it


def cache_key(*parts: Any) -> str:
    """A stable hash of JSON-serialisable parts."""
    text = json.dumps([CACHE_VERSION, *parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def content_id(folder: Path, memo_path: Path | None = None, only: list[str] | None = None,
               model: bool = False) -> str:
    """A hash of a folder's (or one file's) file names and contents; with `only`, of the files whose path in the
    folder matches one of those patterns (as huggingface_hub's allow_patterns match: a Hub snapshot keyed by
    the files modelpress reads, so files another tool adds later change nothing). A model folder (`model`) is
    keyed by the files a loader reads (`read_by_loaders`): hashing a clone's .git or a download's .cache re-keyed
    unchanged models; other folders, such as lm-eval's task folders, are hashed whole.

    File hashes are remembered by (path, size, mtime) in `memo_path`, so a multi-GB model is
    read once, not on every run.
    """
    folder = Path(folder).resolve()
    memo = read_memo(memo_path)
    entries = []
    files = [folder] if folder.is_file() else sorted(p for p in folder.rglob("*") if p.is_file() and (
        read_by_loaders(p.relative_to(folder)) if model else not _tool_leftover(p.relative_to(folder))) and (
            only is None or any(fnmatch.fnmatch(p.relative_to(folder).as_posix(), pattern) for pattern in only)))
    for path in files:
        stat = path.stat()
        entries.append((path.name if path == folder else str(path.relative_to(folder)), stat.st_size,
                        remembered_sha(path, memo, stat)))
    if memo_path:
        atomic_write_json(memo_path, memo)
    return cache_key("folder", entries)


def file_sha(path: Path, memo_path: Path | None = None) -> str:
    """The SHA-256 of one file's bytes, remembered in `memo_path` as content_id remembers it (no modelpress
    version in it: for what must survive a CACHE_VERSION bump, a GGUF file's conversion)."""
    memo = read_memo(memo_path)
    path = Path(path).resolve()
    sha = remembered_sha(path, memo, path.stat())
    if memo_path:
        atomic_write_json(memo_path, memo)
    return sha


def remembered_sha(path: Path, memo: dict, stat: os.stat_result) -> str:
    # ctime and inode too: a copy that keeps size and mtime (cp -p, rsync -a, tar) still gets a new ctime
    memo_key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ctime_ns}|{stat.st_ino}"
    sha = memo.get(memo_key) or file_sha256(path)
    memo[memo_key] = sha
    return sha


def _tool_leftover(relative: Path) -> bool:
    """Under a folder that tools write by themselves (Python's bytecode, which lm-eval's task imports leave in a task
    folder; notebooks' checkpoints; a clone's .git): not what a folder of files to read holds."""
    return any(part in ("__pycache__", ".ipynb_checkpoints", ".git") for part in relative.parts[:-1])


def read_memo(memo_path: Path | None) -> dict:
    if memo_path and memo_path.is_file():
        try:
            return read_json(memo_path)
        except (OSError, ValueError):
            return {}
    return {}


def manifest(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


class PassCache:
    """Pass outputs under `root/passes/<key>/`, evaluation results under `root/evals/<key>.json`.

    With `shared` (a Ray system's storage, a path every node sees), pass outputs, their locks and
    the training scratch live there instead, so every node reads and writes the same entries.
    """

    def __init__(self, root: Path, shared: Path | None = None):
        self.root = Path(root)
        outputs = Path(shared) if shared else self.root
        self.passes = outputs / "passes"
        self.evals = self.root / "evals"
        self.locks = outputs / "locks"
        self.work = outputs / "work"  # per-key scratch that survives a crash: training checkpoints

    @staticmethod
    def _check_ours(root: Path, folder: Path) -> None:
        """Only a folder modelpress made is emptied (its marker, or locks/ as every run leaves it)."""
        ours = (root / CACHE_MARKER).is_file() or (root / "locks").is_dir()
        if not ours and folder.is_dir() and any(folder.iterdir()):
            raise ModelpressError(f"clean_cache: {root} holds a {folder.name}/ folder that is not a modelpress "
                                  "cache's, so it is not deleted. Choose another cache_dir (or Ray storage), or "
                                  "remove it yourself.")

    @contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Hold an exclusive file lock on `key`; a second run on the same cache waits here."""
        with file_lock(self.locks / f"{key}.lock", key[:12]):
            yield

    def prepare(self, clean: bool = False, clean_evals: bool = False) -> None:
        """Make the folders, emptying the pass (`clean`) or evaluation (`clean_evals`) cache first, and hold the
        cache in use until `release`: a run shares it with other runs, and emptying it needs it alone (another
        run's half-written entry would lose its files and be committed without them)."""
        outputs = self.passes.parent  # the cache_dir, or a Ray system's shared storage
        emptied = [(outputs, self.passes)] if clean else []
        emptied += [(self.root, self.evals)] if clean or clean_evals else []
        for root, folder in emptied:
            self._check_ours(root, folder)
        self.release()
        self._in_use = hold_in_use(self.locks / IN_USE_LOCK, alone=bool(emptied), what="clean_cache" if clean else
                                   "clean_evaluation_cache")
        try:
            for _, folder in emptied:
                shutil.rmtree(folder, ignore_errors=True)
            if clean:
                for scratch in self.work.glob("*"):  # training checkpoints too, so nothing resumes: by key name only
                    if re.fullmatch(r"[0-9a-f]{32}", scratch.name):
                        shutil.rmtree(scratch, ignore_errors=True)
            for folder in (self.passes, self.evals, self.locks):
                folder.mkdir(parents=True, exist_ok=True)
            for root in {self.root, outputs}:
                (root / CACHE_MARKER).touch()
            probe = self.root / f".write-test-{os.getpid()}"
            probe.write_text("ok")
            probe.unlink()
            share(self._in_use)  # emptied (held alone until now): other runs may use it
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Stop holding the cache in use (`prepare`)."""
        handle, self._in_use = getattr(self, "_in_use", None), None
        if handle is not None:
            handle.close()

    def lookup(self, key: str, input_ref: ModelRef) -> ModelRef | None:
        """The cached output for `key`, or None when absent or not intact. An adapter's base is the model the
        pass was given now (the key holds that model's content, not the folder it was read from then)."""
        meta = self._intact_meta(key)
        if meta is None:
            return None
        if meta.get("passthrough"):
            return input_ref
        ref = ModelRef.load(self.passes / key / "model")
        if ref.kind == HF_ADAPTER:
            ref = dataclasses.replace(ref, base=input_ref.base if input_ref.kind == HF_ADAPTER else input_ref.path)
        return ref

    def notes(self, key: str) -> list[str]:
        """What the pass that made entry `key` reported (none for an entry written before notes were kept). Asked
        after `lookup` found the entry whole, so its manifest is not checked again."""
        try:
            notes = read_json(self.passes / key / "entry.json").get("notes")
        except (OSError, ValueError, AttributeError):
            return []
        return [str(n) for n in notes] if isinstance(notes, list) else []

    def intact(self, key: str) -> bool:
        """Whether the entry `key` is here, whole."""
        return self._intact_meta(key) is not None

    def _intact_meta(self, key: str) -> dict | None:
        entry = self.passes / key
        try:
            meta = read_json(entry / "entry.json")
        except (OSError, ValueError):
            return None
        if not meta.get("passthrough") and manifest(entry / "model") != meta.get("files"):
            log.warning("cache entry %s is damaged (files differ from its manifest): running the pass again", key)
            return None
        return meta

    @contextmanager
    def write(self, key: str) -> Iterator[Path]:
        """Yield the folder a pass writes its model into; commit the entry atomically on success.

        Call it holding `lock(key)`: leftovers of a killed writer of the same key are removed first.
        """
        remove_leftovers(self.passes / key)
        with atomic_dir(self.passes / key) as tmp:
            model_dir = tmp / "model"
            model_dir.mkdir()
            yield model_dir

    def commit_meta(self, model_dir: Path, meta: dict, passthrough: bool) -> None:
        """Write entry.json (last, so a crash before it leaves an entry that is never reused)."""
        entry = model_dir.parent
        if passthrough:
            shutil.rmtree(model_dir)
            atomic_write_json(entry / "entry.json", {**meta, "passthrough": True})
        else:
            atomic_write_json(entry / "entry.json", {**meta, "files": manifest(model_dir)})

    def read_eval(self, key: str) -> dict | None:
        try:
            return read_json(self.evals / f"{key}.json")
        except (OSError, ValueError):
            return None

    def write_eval(self, key: str, result: dict) -> None:
        atomic_write_json(self.evals / f"{key}.json", result)
