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
