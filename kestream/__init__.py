"""kestream: Kestra-style workflows on Kafka, run as a Kafka Streams-style topology in Python.

The public surface is small and pinned by ``tests/unit/test_exports.py``::

    from kestream import Client, Settings, parse_flow, run

``Client`` deploys flows, submits executions and awaits or follows them on a broker;
``run`` (from :mod:`kestream.testing`) runs a flow in-process without a broker. Names load on
first use, so importing the engine never imports the Kafka runtime.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Client": "kestream.client",
    "Execution": "kestream.models.execution",
    "Flow": "kestream.models.flow",
    "FlowValidationError": "kestream.models.validation",
    "InputValidationError": "kestream.models.inputs",
    "LogEntry": "kestream.models.execution",
    "Settings": "kestream.settings",
    "StateType": "kestream.models.state",
    "parse_flow": "kestream.models.flow",
    "run": "kestream.testing",
    "arun": "kestream.testing",
}

__all__ = [
    "Client",
    "Execution",
    "Flow",
    "FlowValidationError",
    "InputValidationError",
    "LogEntry",
    "Settings",
    "StateType",
    "__version__",
    "arun",
    "parse_flow",
    "run",
]

if TYPE_CHECKING:
    from kestream.client import Client
    from kestream.models.execution import Execution, LogEntry
    from kestream.models.flow import Flow, parse_flow
    from kestream.models.inputs import InputValidationError
    from kestream.models.state import StateType
    from kestream.models.validation import FlowValidationError
    from kestream.settings import Settings
    from kestream.testing import arun, run


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kestream' has no attribute {name!r}")
    return getattr(import_module(module), name)
