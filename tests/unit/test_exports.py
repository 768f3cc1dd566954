"""The public names of ``kestream`` are pinned: changing them is a deliberate act."""

from __future__ import annotations

import subprocess
import sys

import kestream

PUBLIC = [
    "Client",
    "Execution",
    "Executor",
    "Flow",
    "FlowValidationError",
    "InputValidationError",
    "LogEntry",
    "PythonTask",
    "RunContext",
    "Settings",
    "StateType",
    "TaskError",
    "Worker",
    "__version__",
    "arun",
    "parse_flow",
    "run",
    "task",
]


def test_public_names_are_pinned() -> None:
    assert sorted(kestream.__all__) == PUBLIC
    for name in PUBLIC:
        assert getattr(kestream, name) is not None


def test_importing_the_engine_does_not_import_the_kafka_runtime() -> None:
    code = (
        "import sys, kestream, kestream.testing, kestream.models.flow;"
        "kestream.run; kestream.task; kestream.PythonTask; kestream.RunContext;"
        "heavy = ('aiokafka', 'faust', 'kestream.runtime');"
        "bad = [m for m in heavy if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
