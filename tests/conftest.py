"""Options shared by the whole suite (pytest reads ``pytest_addoption`` only from the top)."""

from __future__ import annotations

import os

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kestream")
    group.addoption(
        "--kafka-backend",
        default=os.environ.get("KESTREAM_TEST_BACKENDS", "tansu"),
        help=(
            "broker(s) for integration tests, comma-separated: tansu (the embedded broker), "
            "apache (Apache Kafka from Maven Central's jars), testcontainers (apache/kafka in "
            "Docker), env (KESTREAM_BROKER); default: tansu"
        ),
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave out the long chaos runs unless ``-m`` names the ``chaos`` marker (``pytest -m
    chaos``): they take minutes each, and their short versions run by default."""
    if "chaos" in (config.getoption("markexpr") or ""):
        return
    kept = [item for item in items if item.get_closest_marker("chaos") is None]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in kept])
        items[:] = kept


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The chaos tests' rows (``record_property("chaos", row)``) as one table at the end."""
    rows = [
        value
        for reports in terminalreporter.stats.values()
        for report in reports
        if getattr(report, "when", None) == "call"
        for name, value in getattr(report, "user_properties", ())
        if name == "chaos"
    ]
    if rows:
        from tests.integration.chaos_harness import render_table

        terminalreporter.write_sep("=", "chaos")
        terminalreporter.write_line(render_table(rows))
