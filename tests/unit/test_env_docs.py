"""The committed settings docs match what ``scripts/gen_env_docs.py`` generates from the model."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from kestream.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
FIX = "run `python scripts/gen_env_docs.py --write` and commit the result"


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_env_docs", ROOT / "scripts/gen_env_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_env_example_is_generated(gen: ModuleType) -> None:
    committed = (ROOT / "config/kestream.env.example").read_text(encoding="utf-8")
    assert committed == gen.env_example(), f"config/kestream.env.example is stale: {FIX}"


def test_readme_table_is_generated(gen: ModuleType) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert gen.TABLE_START in readme and gen.TABLE_END in readme
    assert readme == gen.readme_with_table(readme), f"README.md's settings table is stale: {FIX}"


def test_every_setting_is_documented(gen: ModuleType) -> None:
    example = gen.env_example()
    table = gen.readme_table()
    for field in Settings.model_fields:
        name = f"KESTREAM_{field.upper()}"
        assert f"# {name}=" in example
        assert f"| `{name}` |" in table
        assert gen.describe(field), field


def test_defaults_read_back_as_the_defaults(gen: ModuleType) -> None:
    """Uncommenting every line of the example must change nothing."""
    env = {}
    for line in gen.env_example().splitlines():
        name, sep, value = line.removeprefix("# ").partition("=")
        if sep and name.startswith("KESTREAM_") and value:
            env[name] = value
    with pytest.MonkeyPatch.context() as patch:
        for field in Settings.model_fields:  # the caller's own KESTREAM_* must not leak in
            patch.delenv(f"KESTREAM_{field.upper()}", raising=False)
        for name, value in env.items():
            patch.setenv(name, value)
        assert Settings() == Settings.model_construct()
