"""Find plugin passes: installed packages' `modelpress.passes` entry points, and scripts a config names."""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import logging
import sys
from pathlib import Path

from modelpress.errors import ModelpressError
from modelpress.passes.catalog import CATALOG, PassSpec

log = logging.getLogger("modelpress")
ENTRY_POINT_GROUP = "modelpress.passes"
_scanned_entry_points: set[str | None] = set()  # the pass types looked up (None: all of them)
_loaded_entry_points: set[str] = set()  # the entry points imported (module:attr)


class PluginError(ModelpressError):
    """A plugin could not be loaded; the message says which and why."""


def spec_of(cls, origin: str) -> PassSpec:
    """The catalog entry of a `modelpress.plugin.Pass` subclass."""
    from modelpress.plugin import Pass

    if not (inspect.isclass(cls) and issubclass(cls, Pass)):
        raise PluginError(f"{origin}: {cls!r} is not a subclass of modelpress.plugin.Pass")
    name = cls.name or cls.__name__
    summary = cls.summary or (inspect.getdoc(cls) or name).splitlines()[0]

    def run(ctx, params, _cls=cls):
        return _cls().run(ctx, params)

    return PassSpec(name, summary, cls.Params, f"{cls.__module__}:{cls.__qualname__}", tuple(cls.accepts),
                    cls.produces, cls.needs_data, function=run, origin=f"{origin} (version {cls.version})")


def load_entry_points(name: str | None = None) -> None:
    """Register the passes installed packages declare: for a config's pass type `name`, the entry point named so
    or pointing at a class of that name (any case), so that a config naming one plugin imports that package alone;
    every declared pass when none is (a plugin's pass `name` may differ from both) or when `name` is None
    (`modelpress passes`). Each looked up once per process."""
    from importlib.metadata import entry_points

    key = None if name is None else name.lower()
    if None in _scanned_entry_points or key in _scanned_entry_points:
        return
    _scanned_entry_points.add(key)
    declared = [ep for ep in entry_points(group=ENTRY_POINT_GROUP)
                if ep.name not in CATALOG and ep.value not in _loaded_entry_points]
    named = [ep for ep in declared if key in (ep.name.lower(), ep.value.rpartition(":")[2].rpartition(".")[2].lower())]
    if key is None or not named:
        _scanned_entry_points.add(None)
    for ep in named or declared:
        _loaded_entry_points.add(ep.value)
        try:
            cls = ep.load()
            package = f"{ep.dist.name} {ep.dist.version}" if ep.dist else "unknown package"
            spec = spec_of(cls, f"entry point {ep.value} ({package})")
        except Exception as err:  # a broken plugin must not break the passes that do not use it
            log.warning("cannot load the modelpress pass plugin %s = %s: %s", ep.name, ep.value, err)
            continue
        if spec.name in CATALOG:  # registered under its class's `name`, which may differ from the entry point's
            log.warning("the modelpress pass plugin %s = %s is not loaded: its pass name %r is the %s pass's",
                        ep.name, ep.value, spec.name, CATALOG[spec.name].origin)
            continue
        CATALOG[spec.name] = spec


def load_user_module(path: Path, prefix: str, script_dir: Path | None = None):
    """Run a user's script once per process and content (edited, it runs again); (module, sha256 prefix).
    `script_dir` (Olive's, for the modules the script imports) is added to sys.path, last so that none of its
    files shadows an installed library, and stays there: the script's functions may import from it when called."""
    if script_dir is not None and str(Path(script_dir).resolve()) not in sys.path:
        sys.path.append(str(Path(script_dir).resolve()))
    path = Path(path).resolve()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    module_name = f"{prefix}_{digest}"
    if module_name in sys.modules:
        return sys.modules[module_name], digest
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[module_name]
        raise PluginError(f"{path}: the script failed on import: {type(err).__name__}: {err}") from err
    return module, digest


def load_script(path: Path, script_dir: Path | None = None) -> list[str]:
    """Run the script a config names and register its `Pass` subclasses; returns their names."""
    from modelpress.plugin import Pass

    path = Path(path).resolve()
    module, digest = load_user_module(path, "modelpress_user_pass", script_dir)
    module_name = module.__name__
    names = []
    for _, cls in inspect.getmembers(module, inspect.isclass):
        if issubclass(cls, Pass) and cls is not Pass and cls.__module__ == module_name:
            pass_spec = spec_of(cls, f"script {path} (sha256 {digest})")
            known = CATALOG.get(pass_spec.name)
            if known is not None and not known.origin.startswith(f"script {path} "):  # an edited script may reload
                raise PluginError(f"{path}: the pass {pass_spec.name!r} would replace the {known.origin} pass of "
                                  f"that name; give the class another `name`")
            CATALOG[pass_spec.name] = pass_spec
            names.append(pass_spec.name)
    if not names:
        raise PluginError(f"{path} defines no subclass of modelpress.plugin.Pass")
    return names
