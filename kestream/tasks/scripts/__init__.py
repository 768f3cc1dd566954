"""Kestra's script tasks (shell and Python, ``Script`` and ``Commands``): processes or Docker.

Modules: :mod:`.tasks` (the task types), :mod:`.process` (a process group, streamed and
stoppable), :mod:`.protocol` (``::{json}::`` lines), :mod:`.workdir` (directories and files),
:mod:`.runners` (Process and Docker task runners).
"""

from kestream.tasks.scripts.tasks import (
    SCRIPT_TASKS,
    PythonCommands,
    PythonScript,
    ScriptTask,
    ShellCommands,
    ShellScript,
)

__all__ = [
    "SCRIPT_TASKS",
    "PythonCommands",
    "PythonScript",
    "ScriptTask",
    "ShellCommands",
    "ShellScript",
]
