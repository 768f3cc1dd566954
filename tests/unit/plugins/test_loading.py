"""``load_plugins``: ``KESTREAM_PLUGINS`` modules and ``kestream.tasks`` entry points."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from kestream.plugins.loading import PluginError, load_plugins, loaded_plugins
from kestream.settings import Settings
from kestream.tasks.registry import task_class

ROOT = Path(__file__).resolve().parents[3]

TASK_MODULE = """
import kestream

@kestream.task("{type_name}")
def double(n: int) -> dict:
    return {{"value": 2 * n}}
"""


def write_module(directory: Path, type_name: str, body: str = TASK_MODULE) -> str:
    name = f"plugin_{uuid.uuid4().hex[:10]}"
    (directory / f"{name}.py").write_text(body.format(type_name=type_name))
    return name


def test_modules_of_the_setting_are_imported_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    first = write_module(tmp_path, "acme.tasks.Double")
    second = write_module(tmp_path, "acme.tasks.Other")
    settings = Settings(plugins=f" {first} ,{second},")
    assert load_plugins(settings) == [first, second]
    assert task_class("acme.tasks.Double") is not None
    assert load_plugins(settings) == [first, second]  # idempotent
    assert loaded_plugins() == [first, second]


def test_extra_modules_are_imported_after_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    name = write_module(tmp_path, "acme.tasks.Extra")
    assert load_plugins(Settings(), [name]) == [name]
    assert task_class("acme.tasks.Extra") is not None


def test_an_import_error_names_the_module_and_the_cause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    broken = write_module(tmp_path, "", "import no_such_dependency_here\n")
    with pytest.raises(PluginError) as caught:
        load_plugins(Settings(plugins=broken))
    message = str(caught.value)
    assert f"cannot load plugin module '{broken}' (from KESTREAM_PLUGINS)" in message
    assert "No module named 'no_such_dependency_here'" in message


def test_a_conflict_inside_a_plugin_stops_the_load_naming_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    name = write_module(tmp_path, "io.kestra.plugin.core.log.Log")
    with pytest.raises(PluginError, match=r"already provided by kestream\.tasks\.simple\.Log"):
        load_plugins(Settings(plugins=name))


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KESTREAM_")}
    env.update(extra)
    return env


def test_entry_points_of_installed_packages_are_loaded_by_every_command(tmp_path: Path) -> None:
    """A package's ``kestream.tasks`` entry point, found on sys.path, is imported by
    ``kestream validate`` without any setting; a flow with a missing type names the plugins."""
    module = write_module(tmp_path, "acme.ep.Double")
    dist = tmp_path / "acme_ep-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-ep\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[kestream.tasks]\ndouble = {module}\n")
    good = tmp_path / "good.yaml"
    good.write_text(
        "id: f\nnamespace: acme\ntasks:\n  - id: d\n    type: acme.ep.Double\n    n: 2\n"
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: g\nnamespace: acme\ntasks:\n  - id: d\n    type: acme.ep.Doubel\n")
    env = _env(PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    command = [sys.executable, "-m", "kestream.cli", "validate"]
    result = subprocess.run(
        [*command, str(good)], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert f"{good}: valid" in result.stdout
    result = subprocess.run(
        [*command, str(bad)], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 1
    assert "unknown task type 'acme.ep.Doubel'" in result.stderr
    assert "did you mean 'acme.ep.Double'" in result.stderr
    assert f"plugin modules loaded: {module}" in result.stderr


def test_a_broken_plugin_stops_the_command_with_a_clear_message(tmp_path: Path) -> None:
    flow = tmp_path / "flow.yaml"
    flow.write_text(
        "id: f\nnamespace: acme\ntasks:\n  - id: l\n"
        "    type: io.kestra.plugin.core.log.Log\n    message: hi\n"
    )
    env = _env(KESTREAM_PLUGINS="acme_missing_module", PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-m", "kestream.cli", "validate", str(flow)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 4
    assert "cannot load plugin module 'acme_missing_module' (from KESTREAM_PLUGINS)" in (
        result.stderr
    )
