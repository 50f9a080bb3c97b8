"""An fsspec storage between the driver and nodes that do not see its disk (no cluster needed: a node is a
folder the driver's paths are not in)."""

from __future__ import annotations

import shutil

import pytest

from modelpress.cache import PassCache
from modelpress.models import ModelRef
from modelpress.passes.catalog import HF, HF_ADAPTER

pytest.importorskip("fsspec")


def _entry(cache: PassCache, key: str, kind: str, text: str, base=None) -> ModelRef:
    with cache.write(key) as model:
        (model / "weights.bin").write_text(text)
        ModelRef(kind, model, key, base, {"task": "text-generation"}).save(model)
        cache.commit_meta(model, {"pass": key}, passthrough=False)
    return ModelRef.load(cache.passes / key / "model")


def test_outputs_made_on_the_driver_reach_a_node_that_does_not_see_its_disk(tmp_path):
    """A pass that ran on the driver (merge before a LoRA on the cluster, say): the task on a node must fetch its
    output, and an adapter's base that is such an output, from the storage."""
    from modelpress.systems.storage import UrlStorage, local_ref

    driver = PassCache(tmp_path / "driver-cache")
    driver.prepare()
    merged = _entry(driver, "a" * 32, HF, "merged weights")
    adapter = _entry(driver, "b" * 32, HF_ADAPTER, "adapter weights", base=merged.path)
    storage = UrlStorage(f"file://{tmp_path / 'bucket'}")
    storage.share(driver, adapter)
    assert {p.name for p in (tmp_path / "bucket" / "passes").iterdir()} == {"a" * 32, "b" * 32}

    shutil.move(tmp_path / "driver-cache", tmp_path / "elsewhere")  # the node sees none of the driver's paths
    node = UrlStorage(f"file://{tmp_path / 'bucket'}")
    node.node_dir = tmp_path / "node"
    here = local_ref(node, adapter, tmp_path / "input-model", "c" * 32)
    assert here.path == tmp_path / "node" / "passes" / ("b" * 32) / "model"
    assert here.base == tmp_path / "node" / "passes" / ("a" * 32) / "model"
    assert (here.path / "weights.bin").read_text() == "adapter weights"
    assert (here.base / "weights.bin").read_text() == "merged weights"



def test_a_node_whose_copy_of_the_input_differs_from_the_drivers_fetches_the_drivers(tmp_path):
    """The same path on a node may hold another copy (a partial Hub snapshot, an older folder, another fine-tune
    whose files have the same sizes): the storage's list of files and their contents decide, not the path."""
    from modelpress.systems.storage import UrlStorage

    driver = tmp_path / "model"
    driver.mkdir()
    (driver / "weights.bin").write_text("the driver's weights")
    storage = UrlStorage(f"file://{tmp_path / 'bucket'}")
    storage.upload_input(driver, "d" * 32)
    assert storage.local_folder(driver, "d" * 32, "models") == driver  # the same files: used in place
    (driver / "weights.bin").write_text("the node's weights!!")  # same path and size, other content
    storage.node_dir = tmp_path / "node"
    fetched = storage.local_folder(driver, "d" * 32, "models")
    assert fetched != driver and (fetched / "weights.bin").read_text() == "the driver's weights"
    (driver / "weights.bin").write_text("a node's other copy")  # another size
    shutil.rmtree(tmp_path / "node")
    assert storage.local_folder(driver, "d" * 32, "models") != driver


def test_a_node_refuses_an_entry_whose_objects_the_storage_lost_or_cut(tmp_path):
    """The node's copy was used as downloaded; only the driver's lookup checked an entry against its list."""
    from modelpress.errors import ModelpressError
    from modelpress.systems.storage import UrlStorage

    driver = tmp_path / "model"
    driver.mkdir()
    (driver / "weights.bin").write_text("the driver's weights")
    storage = UrlStorage(f"file://{tmp_path / 'bucket'}")
    storage.upload_input(driver, "f" * 32)
    (tmp_path / "bucket" / "models" / ("f" * 32) / "model" / "weights.bin").write_text("cut")
    storage.node_dir = tmp_path / "node"
    with pytest.raises(ModelpressError, match="do not match the entry's list"):
        storage.local_folder(tmp_path / "elsewhere", "f" * 32, "models")


def test_tasks_on_one_node_fetching_one_entry_download_it_once(tmp_path):
    """Two tasks on a node needing the same entry at once: the second waits for the first's copy instead of
    downloading again and replacing the folder the first is already reading."""
    import threading
    import time

    from modelpress.systems.storage import UrlStorage

    driver = tmp_path / "model"
    driver.mkdir()
    (driver / "weights.bin").write_text("weights")
    UrlStorage(f"file://{tmp_path / 'bucket'}").upload_input(driver, "e" * 32)
    shutil.rmtree(driver)
    node = UrlStorage(f"file://{tmp_path / 'bucket'}")
    node.node_dir = tmp_path / "node"
    downloads, get_file = [], node.fs.get_file

    def slow_get_file(remote, local, **kwargs):  # the real copy, slowed so that the two tasks overlap
        downloads.append(remote)
        time.sleep(0.3)
        return get_file(remote, local, **kwargs)

    node.fs.get_file = slow_get_file
    folders, errors = [], []

    def task():
        try:
            folders.append(node.local_folder(driver, "e" * 32, "models"))
        except Exception as err:  # a thread's error would otherwise pass unseen
            errors.append(err)

    threads = [threading.Thread(target=task) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(downloads) == 1, downloads
    assert folders[0] == folders[1] and (folders[0] / "weights.bin").read_text() == "weights"
