"""kestream: Kestra-style workflows on Kafka, run as a Kafka Streams-style topology in Python.

The public surface is small and pinned by ``tests/unit/test_exports.py``::

    from kestream import Client, Settings, parse_flow, run, task

``Client`` deploys flows, submits executions and awaits or follows them on a broker;
``run`` (from :mod:`kestream.testing`) runs a flow in-process without a broker; ``task`` and
``PythonTask`` declare task types written in Python, ``RunContext`` is what their code sees, and
``Worker``/``Executor`` run a role inside the user's own process (docs/tasks.md). Names load on
first use, so importing the engine never imports the Kafka runtime.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Client": "kestream.client",
    "Execution": "kestream.models.execution",
    "Executor": "kestream.plugins.embed",
    "Flow": "kestream.models.flow",
    "FlowValidationError": "kestream.models.validation",
    "InputValidationError": "kestream.models.inputs",
    "LogEntry": "kestream.models.execution",
    "PythonTask": "kestream.plugins.define",
    "RunContext": "kestream.plugins.context",
    "Settings": "kestream.settings",
    "StateType": "kestream.models.state",
    "TaskError": "kestream.tasks.base",
    "Worker": "kestream.plugins.embed",
    "parse_flow": "kestream.models.flow",
    "task": "kestream.plugins.define",
    "run": "kestream.testing",
    "arun": "kestream.testing",
}

__all__ = [
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

if TYPE_CHECKING:
    from kestream.client import Client
    from kestream.models.execution import Execution, LogEntry
    from kestream.models.flow import Flow, parse_flow
    from kestream.models.inputs import InputValidationError
    from kestream.models.state import StateType
    from kestream.models.validation import FlowValidationError
    from kestream.plugins.context import RunContext
    from kestream.plugins.define import PythonTask, task
    from kestream.plugins.embed import Executor, Worker
    from kestream.settings import Settings
    from kestream.tasks.base import TaskError
    from kestream.testing import arun, run


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kestream' has no attribute {name!r}")
    return getattr(import_module(module), name)
