"""GGUF files (llama.cpp, Ollama) as input models: dequantized once into a cached Hugging Face folder.

transformers reads a GGUF file's weights, config and tokenizer (`gguf_file=`, needs the `gguf`
package) and dequantizes the weights to float32. Such a model refuses `save_pretrained`, so
the weights move into a fresh model of the same config, which saves as a plain folder that
every later pass (LoRA, merge, the genai builder) takes like any other.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import struct
import tempfile
import threading
from pathlib import Path

from modelpress.errors import MissingDependencyError, ModelpressError
from modelpress.fsutil import atomic_dir, atomic_write_json, file_lock, remove_leftovers
from modelpress.runtime import library_version, tqdm_off

log = logging.getLogger("modelpress")
SOURCE_NOTE = "modelpress_gguf_source.json"
CONVERSION_VERSION = 1  # bump when write_hf_folder writes another folder for the same file and libraries


def converted_folder(gguf_path: Path, cache_root: Path, file_id: str, trust_remote_code: bool = False) -> Path:
    """The Hugging Face folder made from `gguf_path` (`file_id`: the SHA-256 of its bytes), converting it on first
    use.

    The folder is keyed by the file's content, the versions of the libraries that convert it (an upgrade that
    changes the dequantization converts again) and CONVERSION_VERSION, not by the cache's CACHE_VERSION, which
    passes bump: their changes need no new conversion. Two runs on one cache convert it once: the second waits on
    a lock and finds the folder done. clean_cache leaves conversions alone: an earlier run's final adapter may
    name one as its base.
    """
    converter = _converter_versions()
    key = hashlib.sha256(f"{CONVERSION_VERSION} {file_id} {converter}".encode()).hexdigest()[:16]
    target = cache_root / "inputs" / f"gguf-{key}"
    with file_lock(cache_root / "locks" / f"gguf-{key}.lock", f"the conversion of {gguf_path.name}"):
        if (target / SOURCE_NOTE).is_file():
            return target
        log.info("converting %s to a Hugging Face folder (dequantized, once; cached in %s)", gguf_path.name, target)
        remove_leftovers(target)  # a killed conversion's half-written folder (the size of the dequantized model)
        with atomic_dir(target) as tmp:
            write_hf_folder(gguf_path, tmp, trust_remote_code)
            # no name or path: the note is part of the folder, so of the input model's key, which holds content
            atomic_write_json(tmp / SOURCE_NOTE, {"content_id": file_id, "converter": converter})
    return target


_READ: dict[Path, tuple[tuple[int, int], tempfile.TemporaryDirectory]] = {}
_READ_LOCK = threading.Lock()


def inference_folder(gguf_path: Path, trust_remote_code: bool = False) -> Path:
    """A Hugging Face folder of `gguf_path` (a GGUF model modelpress wrote) for PyTorch inference: a run's
    evaluation, `modelpress evaluate` and lm-eval read its quantized weights dequantized, as the conversion of an
    input file does. Made in a temporary folder once per file and process, again when the file changes (a later run
    into the same output folder); the last file's alone is kept, until another is read or the process exits."""
    path = Path(gguf_path).resolve()
    _readable_here(path)
    stat = path.stat()
    version = (stat.st_size, stat.st_mtime_ns)
    with _READ_LOCK:
        held = _READ.get(path)
        if held is None or held[0] != version:
            for _, old in _READ.values():  # one dequantized copy at a time (a search evaluates one file after another)
                old.cleanup()
            _READ.clear()
            tmp = tempfile.TemporaryDirectory(prefix="modelpress-gguf-read-")
            write_hf_folder(path, Path(tmp.name), trust_remote_code)
            _READ[path] = version, tmp
        return Path(_READ[path][1].name)


def file_architecture(gguf_path: Path) -> str | None:
    """The `general.architecture` a GGUF file's header names (None: the gguf package is missing, or the file
    cannot be read; the run says why)."""
    try:
        import gguf

        return str(gguf.GGUFReader(str(gguf_path)).fields["general.architecture"].contents())
    except Exception:  # noqa: BLE001  a check before the run: the run reports the file's own error
        return None


def _converter_versions() -> str:
    """The versions of the libraries whose code turns a GGUF file into the folder."""
    versions = {name: library_version(name) for name in ("transformers", "gguf", "torch")}
    return ", ".join(f"{name} missing" if found == "missing" else f"{name}=={found}" for name, found in versions.items())


# Metadata transformers' GGUF reader does not carry into the config it builds, by architecture: a file holding
# one would be converted into another model than the one llama.cpp runs from it
UNREAD = {"gemma3": ("rope.scaling.type", "rope.freq_base_swa", "attention.sliding_window_pattern",
                     "final_logit_softcapping"),
          "gemma2": ("attention.sliding_window_pattern",)}
READER_HEAD = {"gemma2": 256, "gemma3": 256}  # the head size whose attention scale the reader assumes
READER_VALUES = {"gemma2": {"attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0}}  # the reader's values


def unread_metadata(gguf_path: Path, gguf) -> list[str]:
    """The keys of a GGUF file that transformers' reader would ignore (UNREAD, READER_HEAD)."""
    fields = gguf.GGUFReader(str(gguf_path)).fields
    arch = str(fields["general.architecture"].contents()) if "general.architecture" in fields else ""
    found = [f"{arch}.{key}" for key in UNREAD.get(arch, ()) if f"{arch}.{key}" in fields]
    found += [f"{arch}.{key} {fields[f'{arch}.{key}'].contents()} (the reader takes {value})"
              for key, value in READER_VALUES.get(arch, {}).items()
              if f"{arch}.{key}" in fields and float(fields[f"{arch}.{key}"].contents()) != value]
    head = fields.get(f"{arch}.attention.key_length")
    if arch in READER_HEAD and head is not None and int(head.contents()) != READER_HEAD[arch]:
        found.append(f"{arch}.attention.key_length {int(head.contents())} (the reader scales attention as for "
                     f"heads of {READER_HEAD[arch]})")
    return found


def _unread_or_none(path: Path) -> list[str]:
    """`unread_metadata`, or none where the gguf package is missing or the header unreadable: the conversion then
    says what is wrong."""
    try:
        import gguf

        return unread_metadata(path, gguf)
    except (ImportError, ValueError, KeyError, IndexError, OSError, EOFError, struct.error):
        return []


def _readable_here(path: Path) -> None:
    """Refuse a GGUF output that transformers' reader would compute otherwise (a Gemma 2 27B's head size, a Gemma 3
    with RoPE scaling): it can be answered only by llama.cpp."""
    unread = _unread_or_none(path)
    if unread:
        raise ModelpressError(f"{path}: transformers' GGUF reader ignores {', '.join(unread)}, so PyTorch would "
                              "compute another model than this file: evaluate it in llama.cpp itself, which needs "
                              "llama-cpp-python (pip install 'modelpress[llama-cpp]'; it compiles llama.cpp)")


def write_hf_folder(gguf_path: Path, out: Path, trust_remote_code: bool = False) -> None:
    """Load `gguf_path` through transformers and save model, tokenizer and generation config to `out`."""
    try:
        import gguf  # noqa: F401  transformers needs it to read the file
    except ImportError:
        raise MissingDependencyError("gguf", "gguf", "Loading a GGUF model") from None
    with _read_once():
        _write_hf_folder(gguf_path, out, trust_remote_code)


_READ_ONCE_LOCK = threading.Lock()


@contextlib.contextmanager
def _read_once():
    """One GGUFReader per file and one tensor-name map per architecture while a file converts: transformers reads
    the config, the tokenizer and the weights each through a reader of its own (4.5 s apiece for SmolLM2's header on
    a 2-core Zen 3, most of it its 49152 tokens), and builds a name map for every module of the model. Both are
    only read there. Where the gguf package names them otherwise, nothing is shared and the conversion is slower."""
    import gguf

    made: dict = {}
    owner = threading.get_ident()  # another thread (a search's GGUF export) reads its files afresh

    def once(make):
        def shared(*args, **kwargs):
            if threading.get_ident() != owner:
                return make(*args, **kwargs)
            # a file by where it really is: transformers reads it through a link in a folder of its own
            where = [os.path.realpath(a) if isinstance(a, (str, os.PathLike)) else repr(a) for a in args]
            key = (make, tuple(where), repr(sorted(kwargs.items())))
            if key not in made:
                made[key] = make(*args, **kwargs)
            return made[key]
        return shared

    names = [name for name in ("GGUFReader", "get_tensor_name_map") if callable(getattr(gguf, name, None))]
    with _READ_ONCE_LOCK:  # one conversion at a time in a process patches the module
        originals = {name: getattr(gguf, name) for name in names}
        try:
            for name, make in originals.items():
                setattr(gguf, name, once(make))
            yield
        finally:
            for name, make in originals.items():
                setattr(gguf, name, make)


def _write_hf_folder(gguf_path: Path, out: Path, trust_remote_code: bool) -> None:
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    unread = _unread_or_none(gguf_path)
    if unread:
        raise ModelpressError(f"{gguf_path}: transformers' GGUF reader ignores {', '.join(unread)}, so the model it "
                              "converts would compute otherwise than this file does in llama.cpp. Start from the "
                              "Hugging Face model instead (its Hub id or folder).")

    name = gguf_path.name
    # dense weights whatever the machine: for the architectures transformers' new GGUF path loads (Qwen3.5,
    # LFM2), where a GGUF matmul kernel can be fetched (the `kernels` package and a network) it would otherwise
    # keep the layers packed, which the plain model saved here cannot load
    dense = {"quantization_config": transformers.GgufConfig(dequantize=True)} \
        if hasattr(transformers, "GgufConfig") else {}
    # read from a folder holding the GGUF file alone: transformers prefers a tokenizer.json, config.json or
    # generation_config.json beside the file to the file's own metadata (another model's, in a shared folder)
    with tempfile.TemporaryDirectory(prefix="modelpress-gguf-") as alone:
        try:
            (Path(alone) / name).symlink_to(gguf_path.resolve())
        except OSError:  # a temporary folder that takes no links: the file's own folder (its neighbours may count)
            alone, name = str(gguf_path.parent), gguf_path.name
        try:
            with tqdm_off():  # transformers' "Converting and de-quantizing GGUF tensors" bar takes no switch
                tokenizer = AutoTokenizer.from_pretrained(alone, gguf_file=name, trust_remote_code=trust_remote_code)
                loaded = AutoModelForCausalLM.from_pretrained(alone, gguf_file=name,
                                                              trust_remote_code=trust_remote_code, **dense)
        except ImportError as err:
            raise ModelpressError(f"{gguf_path}: reading it needs a newer gguf package ({err}); pip install -U "
                                  "gguf") from None
        except (ValueError, KeyError, RuntimeError, IndexError, OSError, EOFError, struct.error) as err:
            raise ModelpressError(f"{gguf_path}: transformers cannot read this GGUF file ({type(err).__name__}: "
                                  f"{str(err)[:300]}). A file cut short by an interrupted download reads so: "
                                  "download it again. transformers supports the GGUF architectures and "
                                  "quantization types listed in its GGUF documentation.") from None
    plain = _without_gguf_quantization(loaded)
    plain.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))


def _without_gguf_quantization(loaded):
    """A model of the same class and config holding the dequantized weights, and no `quantization_config`."""
    import torch

    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        plain = type(loaded)(config)
    plain.load_state_dict(loaded.state_dict(), assign=True)
    if getattr(config, "tie_word_embeddings", False):
        plain.tie_weights()
    plain.generation_config = loaded.generation_config
    return plain.eval()
