"""``io.kestra.plugin.core.storage.LocalFiles``: files into and out of a WorkingDirectory.

``inputs`` (``{name: contents or kestra:// URI}``, or its JSON text) are written into the
working directory it shares with its ``WorkingDirectory`` siblings; ``outputs`` (globs relative
to that directory) are stored under the task run's folder, and the ``uris`` output maps each
relative name to its ``kestra://`` URI. Outside a WorkingDirectory it works in a directory of its
own, removed afterwards. The same rules as script files apply (:mod:`.scripts.workdir`: no
symlink followed, no name leaving the directory, URIs only of the execution).
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any, ClassVar

import orjson

from kestream.models.state import StateType
from kestream.tasks.base import RunInfo, RunnableTask, TaskError, TaskOutcome
from kestream.tasks.files import readable_key, run_files
from kestream.tasks.scripts.workdir import attempt_dirs, collect_output_files, write_input_files


class LocalFiles(RunnableTask):
    """Write ``inputs`` into the working directory, store ``outputs`` from it."""

    type_name: ClassVar[str] = "io.kestra.plugin.core.storage.LocalFiles"
    aliases: ClassVar[tuple[str, ...]] = ("io.kestra.core.tasks.storages.LocalFiles",)
    dynamic: ClassVar[tuple[str, ...]] = ("inputs", "outputs")
    is_async: ClassVar[bool] = True

    inputs: dict[str, Any] | str | None = None
    outputs: list[str] | None = None

    async def arun(self, props: dict[str, Any], run: RunInfo) -> TaskOutcome:
        inputs = _inputs(props.get("inputs"))
        globs = [str(glob) for glob in props.get("outputs") or []]
        async with attempt_dirs(run.working_dir) as dirs:
            readable = partial(readable_key, run, what="inputs")
            await asyncio.to_thread(write_input_files, inputs, dirs, readable)
            uris = await asyncio.to_thread(collect_output_files, globs, dirs, run_files(run))
        return TaskOutcome(StateType.SUCCESS, {"uris": uris})


def _inputs(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise TaskError(f"inputs: expects a map or its JSON text: {exc}") from None
    if not isinstance(value, dict):
        raise TaskError("inputs: expects a map of file names to contents")
    return value
