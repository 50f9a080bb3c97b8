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


def test_a_config_naming_one_installed_plugin_imports_that_package_alone(tmp_path, tiny_model, monkeypatch):
    """The entry point named as the config's pass type (or pointing at a class of that name) is the only package
    imported; a type no entry point is named after loads them all, since a pass's `name` may differ from both."""
    import importlib.metadata
    import sys

    import modelpress.passes.plugins as plugins
    from modelpress.passes.catalog import CATALOG

    for module, cls, name in (("pkg_one", "PassOne", ""), ("pkg_two", "PassTwo", ""), ("pkg_three", "Impl", "Fancy")):
        (tmp_path / f"{module}.py").write_text(f"from modelpress.plugin import Pass\n\nclass {cls}(Pass):\n"
                                               f"    summary = 'a test pass'\n    name = {name or cls!r}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    points = [importlib.metadata.EntryPoint(name=n, value=v, group=plugins.ENTRY_POINT_GROUP)
              for n, v in (("PassOne", "pkg_one:PassOne"), ("PassTwo", "pkg_two:PassTwo"), ("three", "pkg_three:Impl"))]
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group=None: points if group == plugins.ENTRY_POINT_GROUP else [])
    monkeypatch.setattr(plugins, "_scanned_entry_points", set())
    monkeypatch.setattr(plugins, "_loaded_entry_points", set())
    for name in ("PassOne", "PassTwo", "Fancy"):
        monkeypatch.delitem(CATALOG, name, raising=False)
    normalize(tone_workflow(tiny_model, {"q": {"type": "onnxconversion"}}), tmp_path)  # a built-in, in any case
    assert "pkg_one" not in sys.modules and "pkg_two" not in sys.modules
    normalize(tone_workflow(tiny_model, {"q": {"type": "passone"}}), tmp_path)  # the type, in any case
    assert "pkg_one" in sys.modules and "pkg_two" not in sys.modules and "PassOne" in CATALOG
    normalize(tone_workflow(tiny_model, {"q": {"type": "Fancy"}}), tmp_path)  # named after neither: all are read
    assert "pkg_two" in sys.modules and CATALOG["Fancy"].name == "Fancy"
    for name in ("PassOne", "PassTwo", "Fancy"):
        CATALOG.pop(name, None)


def test_a_plugin_scripts_script_dir_is_where_its_imports_come_from(tmp_path, tiny_model):
    """Olive's `script_dir` beside user_script: the folder of the modules the script imports. It was an unknown key
    of the pass; a missing folder is an error naming the key."""
    helpers = tmp_path / "lib"
    helpers.mkdir()
    (helpers / "plugin_helper_mp_test.py").write_text("PASS_NAME = 'HelperNamedPass'\n")
    (tmp_path / "helper_pass.py").write_text(
        "from plugin_helper_mp_test import PASS_NAME\nfrom modelpress.plugin import HF, ModelRef, Pass, Strict\n\n"
        "class P(Strict):\n    pass\n\nclass HelperNamedPass(Pass):\n    Params = P\n    accepts = (HF,)\n"
        "    produces = HF\n    name = PASS_NAME\n\n    def run(self, ctx, params) -> ModelRef:\n"
        "        return ctx.model\n")
    import sys

    from modelpress.passes.catalog import CATALOG

    raw = tone_workflow(tiny_model, {"h": {"type": "HelperNamedPass", "user_script": "helper_pass.py",
                                           "script_dir": "lib"}})
    try:
        assert normalize(raw, tmp_path).passes[0].type == "HelperNamedPass"
        raw["passes"]["h"]["script_dir"] = "nowhere"
        with pytest.raises(ConfigError, match="passes.h.script_dir: folder not found"):
            normalize(raw, tmp_path)
        raw["passes"]["h"] = {"type": "OnnxDynamicQuantization", "script_dir": "lib"}  # no script: not Olive's key
        with pytest.raises(ConfigError, match="passes.h.script_dir: unknown key"):
            normalize(raw, tmp_path)
    finally:
        CATALOG.pop("HelperNamedPass", None)
        if str(helpers.resolve()) in sys.path:
            sys.path.remove(str(helpers.resolve()))
