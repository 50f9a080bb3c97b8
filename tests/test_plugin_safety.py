"""User code runs only where the config asks for it, and never in place of a built-in pass."""

from __future__ import annotations

import pytest

from conftest import tone_workflow
from modelpress.config.normalize import normalize
from modelpress.errors import ConfigError


def test_a_user_script_beside_a_built_in_pass_is_refused_without_running_it(tmp_path, tiny_model):
    """Olive's recipes name a user_script (a data loader) on built-in passes such as OnnxStaticQuantization."""
    marker = tmp_path / "ran"
    script = tmp_path / "loader.py"
    script.write_text(f"open({str(marker)!r}, 'w').write('yes')\n")
    raw = tone_workflow(tiny_model, {"q": {"type": "onnxdynamicquantization", "user_script": "loader.py"}})
    with pytest.raises(ConfigError, match="passes.q.user_script: the built-in pass OnnxDynamicQuantization runs "
                                          "no user script"):
        normalize(raw, tmp_path)
    assert not marker.exists()


def test_an_installed_plugin_whose_pass_name_is_a_built_ins_is_not_loaded(tmp_path, monkeypatch):
    import importlib.metadata
    import sys

    import modelpress.passes.plugins as plugins
    from modelpress.passes.catalog import CATALOG

    (tmp_path / "shadow_pkg.py").write_text(
        "from modelpress.plugin import Pass\n\nclass Shadow(Pass):\n    name = 'LoRA'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    point = importlib.metadata.EntryPoint(name="innocent", value="shadow_pkg:Shadow", group=plugins.ENTRY_POINT_GROUP)
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group=None: [point] if group == plugins.ENTRY_POINT_GROUP else [])
    monkeypatch.setattr(plugins, "_scanned_entry_points", set())
    built_in = CATALOG["LoRA"]
    plugins.load_entry_points()
    assert CATALOG["LoRA"] is built_in and "shadow_pkg" in sys.modules  # loaded, looked at, not registered


def test_a_pass_type_no_plugin_declares_imports_no_installed_plugin(tmp_path, tiny_model, monkeypatch):
    """A mistyped pass type is an error that imports nothing: only the package whose entry point a config names
    is loaded."""
    import importlib.metadata
    import sys

    import modelpress.passes.plugins as plugins
    from modelpress.passes.catalog import CATALOG

    for module, cls in (("pkg_one", "PassOne"), ("pkg_two", "PassTwo")):
        (tmp_path / f"{module}.py").write_text(f"from modelpress.plugin import Pass\n\nclass {cls}(Pass):\n"
                                               "    summary = 'a test pass'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    points = [importlib.metadata.EntryPoint(name=n, value=v, group=plugins.ENTRY_POINT_GROUP)
              for n, v in (("PassOne", "pkg_one:PassOne"), ("PassTwo", "pkg_two:PassTwo"))]
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group=None: points if group == plugins.ENTRY_POINT_GROUP else [])
    monkeypatch.setattr(plugins, "_scanned_entry_points", set())
    with pytest.raises(ConfigError, match="PassOn"):
        normalize(tone_workflow(tiny_model, {"q": {"type": "PassOn"}}), tmp_path)
    assert "pkg_one" not in sys.modules and "pkg_two" not in sys.modules
    plugins.load_entry_points("passone")  # a config's type, in any case: that package alone
    assert "pkg_one" in sys.modules and "pkg_two" not in sys.modules and "PassOne" in CATALOG
    CATALOG.pop("PassOne")
