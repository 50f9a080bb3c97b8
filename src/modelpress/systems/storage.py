"""Where a Ray system's tasks write pass outputs: a path every node sees, or an fsspec URL.

A shared path holds the pass cache itself (`passes/`, `locks/`, `work/`): a task writes its entry
to a temporary name and renames it, exactly as a pass on this machine does, and nothing is copied.
An fsspec URL (an object store) has no rename: a task runs the pass into a cache on its own node,
then uploads the entry file by file with `entry.json` (the manifest) last, so a half-uploaded entry
is never taken; the driver downloads it into its own cache and verifies the manifest there.
"""

from __future__ import annotations

import hashlib
import tempfile
import threading
from pathlib import Path

from modelpress.cache import PassCache, manifest, read_memo, remembered_sha
from modelpress.errors import ModelpressError
from modelpress.fsutil import atomic_dir, atomic_write_json, file_sha256
from modelpress.models import ModelRef

ENTRY = "entry.json"


def open_storage(location: str):
    """The storage a Ray system's `storage` names (a URL when it has `://`, else a path)."""
    return UrlStorage(location) if "://" in location else SharedPath(Path(location))


class SharedPath:
    """A folder every node mounts at the same path (NFS, a mounted bucket, this machine's disk)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def __str__(self) -> str:
        return str(self.root)

    def cache(self, cache_dir: Path) -> PassCache:
        """The pass cache of the driver and of every task: its outputs are on the shared path."""
        return PassCache(cache_dir, shared=self.root)

    task_cache = cache

    def upload_input(self, folder: Path, model_id: str) -> None:
        """Nothing to do: a node reads the input model where the driver does."""

    def publish(self, cache: PassCache, key: str) -> None:
        """Nothing to do: the task wrote the entry in place."""

    def share(self, cache: PassCache, ref: ModelRef) -> None:
        """Nothing to do: the driver's pass outputs are on the shared path too."""

    def fetch(self, cache: PassCache, key: str) -> None:
        """Nothing to do: the driver reads the entry in place."""

    def local_folder(self, path: Path, model_id: str, kind: str = "passes") -> Path:
        return Path(path)


class UrlStorage:
    """An fsspec URL: s3://, gs://, abfs://, file:// and every other protocol fsspec has a backend for."""

    def __init__(self, url: str):
        import fsspec

        self.url = url.rstrip("/")
        self.fs, self.base = fsspec.core.url_to_fs(self.url)
        self.node_dir = Path(tempfile.gettempdir()) / "modelpress-ray" / hashlib.sha256(url.encode()).hexdigest()[:12]
        self._shared: set[str] = set()  # driver entries known to be in the storage
        self._sharing = threading.Lock()

    def __str__(self) -> str:
        return self.url

    def cache(self, cache_dir: Path) -> PassCache:
        return PassCache(cache_dir)

    def task_cache(self, cache_dir: Path) -> PassCache:
        """A task's own cache, on its node; finished entries are uploaded from it."""
        return PassCache(self.node_dir)

    def _remote(self, kind: str, key: str) -> str:
        return f"{self.base}/{kind}/{key}"

    def _has(self, kind: str, key: str) -> bool:
        return self.fs.exists(f"{self._remote(kind, key)}/{ENTRY}")

    def _upload(self, entry: Path, kind: str, key: str) -> None:
        remote = self._remote(kind, key)
        for name in manifest(entry):
            if name == ENTRY:
                continue
            target = f"{remote}/{name}"
            self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
            self.fs.put_file(str(entry / name), target)
        self.fs.put_file(str(entry / ENTRY), f"{remote}/{ENTRY}")  # last: the entry now exists

    def upload_input(self, folder: Path, model_id: str) -> None:
        """Put the input model under `models/<id>` once, so nodes that do not see `folder` can fetch it."""
        if self._has("models", model_id):
            return
        with tempfile.TemporaryDirectory() as tmp:
            files = manifest(Path(folder))
            atomic_write_json(Path(tmp) / ENTRY, {"files": files, "source": str(folder),
                                                  "sha256": {name: file_sha256(Path(folder) / name) for name in files}})
            remote = self._remote("models", model_id)
            for name in files:
                target = f"{remote}/model/{name}"
                self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
                self.fs.put_file(str(Path(folder) / name), target)
            self.fs.put_file(str(Path(tmp) / ENTRY), f"{remote}/{ENTRY}")

    def publish(self, cache: PassCache, key: str) -> None:
        """Upload a finished entry of a task's cache (unless an earlier attempt already did)."""
        if not self._has("passes", key):
            self._upload(cache.passes / key, "passes", key)

    def share(self, cache: PassCache, ref: ModelRef) -> None:
        """Upload the driver's cache entries that `ref` reads (its folder, an adapter's base), when a pass ran on
        the driver: a task on a node that does not see the driver's disk fetches them from the storage."""
        for folder in (ref.path, ref.base):
            key = entry_key(folder, cache)
            with self._sharing:  # search candidates run in threads: one upload per entry
                if key is not None and key not in self._shared and cache.intact(key):
                    self.publish(cache, key)
                    self._shared.add(key)

    def fetch(self, cache: PassCache, key: str, kind: str = "passes") -> None:
        """Download an entry into `cache` (atomically); the caller's `lookup` then checks its manifest."""
        import json

        if cache.intact(key):  # a damaged local copy is replaced, or every later lookup would miss it again
            return
        remote = self._remote(kind, key)
        meta = json.loads(self.fs.cat_file(f"{remote}/{ENTRY}"))
        cache.passes.mkdir(parents=True, exist_ok=True)
        with atomic_dir(cache.passes / key) as tmp:
            for name in meta.get("files", {}):
                target = tmp / "model" / name
                target.parent.mkdir(parents=True, exist_ok=True)
                self.fs.get_file(f"{remote}/model/{name}", str(target))
            atomic_write_json(tmp / ENTRY, meta)

    def _same_files(self, folder: Path, kind: str, key: str) -> bool:
        """Whether `folder` holds the files of the storage's entry (true where it has none): names and sizes, and
        for an input model the contents too (a node's own copy at the driver's path, say another fine-tune of the
        same architecture, has the same sizes). File hashes are remembered on the node by path, size and times."""
        meta = _entry_meta(self.fs, f"{self._remote(kind, key)}/{ENTRY}")
        if meta is None:
            return True
        if manifest(folder) != meta.get("files"):
            return False
        if kind != "models":
            return True
        memo_path = self.node_dir / "content-ids.json"
        memo = read_memo(memo_path)
        hashes = {name: remembered_sha(folder / name, memo, (folder / name).stat()) for name in meta["files"]}
        self.node_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(memo_path, memo)
        return hashes == meta.get("sha256")  # an entry uploaded before hashes were kept: fetched

    def local_folder(self, path: Path, model_id: str, kind: str = "passes") -> Path:
        """`path` when this node sees it with the files the storage's entry lists (a node's own copy of a Hub
        snapshot may differ from the driver's); otherwise the entry `model_id` fetched into this node's cache."""
        if Path(path).is_dir() and self._same_files(Path(path), kind, model_id):
            return Path(path)
        cache = PassCache(self.node_dir)
        # Tasks on one node that need one entry (search candidates reading the input model) share the node's cache:
        # one downloads, the others wait and use its copy, which a second download would replace under them. (The
        # driver fetches a task's output under the run's own lock on that key: not taken again here.)
        with cache.lock(model_id):
            self.fetch(cache, model_id, kind)
            if not cache.intact(model_id):  # a download cut short, or objects the storage lost
                raise ModelpressError(f"{self.url}/{kind}/{model_id}: the files downloaded to this node do not "
                                      "match the entry's list; check the storage (an object deleted or being "
                                      "written), then run again")
        return cache.passes / model_id / "model"


def _entry_meta(fs, entry: str) -> dict | None:
    import json

    try:
        return json.loads(fs.cat_file(entry))
    except FileNotFoundError:
        return None


def entry_key(folder: Path | None, cache: PassCache) -> str | None:
    """The key of the cache entry `folder` is the model of (`<cache>/passes/<key>/model`), else None."""
    if folder is None or Path(folder).name != "model" or Path(folder).parent.parent != cache.passes:
        return None
    return Path(folder).parent.name


def local_ref(storage, ref: ModelRef, input_folder: Path, input_id: str) -> ModelRef:
    """`ref` with its folders on this node: fetched from the storage when this node does not see them.
    `input_folder` is the input model's folder as the driver names it; an adapter's base is either that
    model or a pass output (`.../passes/<key>/model`)."""
    kind = "models" if ref.id == input_id else "passes"
    path = storage.local_folder(ref.path, ref.id, kind)
    base = ref.base  # local_folder keeps a folder this node holds as the storage lists it, else fetches it
    if base is not None and Path(base) == Path(input_folder):
        base = storage.local_folder(input_folder, input_id, "models")
    elif base is not None and Path(base).name == "model":
        base = storage.local_folder(base, Path(base).parent.name, "passes")
    return ModelRef(ref.kind, path, ref.id, base, ref.task)
