"""Each test gets an empty plugin registry and loader, so tasks defined in one never leak."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kestream.plugins import loading
from kestream.tasks import registry


@pytest.fixture(autouse=True)
def clean_plugins(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(registry, "_plugins", {})
    monkeypatch.setattr(registry, "_plugin_modules", [])
    monkeypatch.setattr(loading, "_loaded", {})
    monkeypatch.setattr(loading, "_entry_points_scanned", False)
    yield
