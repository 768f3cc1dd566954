"""The files a WorkingDirectory handles itself: its ``cache`` and its ``outputFiles``.

They live in the directory its children share on one worker, so they are handled there, by jobs
of the WorkingDirectory's own task run (no task run of their own, as in Kestra):

- ``restore``, before the first child when ``cache`` is set: the cached files, if the cache has
  not expired, are written into the directory;
- ``collect``, after the last child when the children succeeded: the files matching
  ``outputFiles`` are stored (output ``outputFiles``: name -> ``kestra://`` URI) and those
  matching ``cache.patterns`` are saved as the new cache, kept for ``cache.ttl``.

The cache of a WorkingDirectory is one zip archive per flow and task id in the storage
(``{namespace}/{flow}/_cache/{task}/cache.zip``), its expiry the archive's comment, so every
worker of a deployment reads the one the last execution wrote.
"""

from __future__ import annotations

import asyncio
import io
import zipfile
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from kestream.models.durations import DurationError, parse_duration
from kestream.models.state import StateType
from kestream.storage.current import get_storage
from kestream.storage.keys import namespace_path, slug
from kestream.tasks.base import RunInfo, RunnableTask, TaskError, TaskOutcome
from kestream.tasks.files import run_files
from kestream.tasks.scripts.workdir import AttemptDirs, attempt_dirs, collect_output_files, inside

Phase = Literal["restore", "collect"]


class Cache(BaseModel):
    """``cache``: the files matching ``patterns`` kept between executions for ``ttl``."""

    model_config = ConfigDict(extra="forbid")

    patterns: list[str] = Field(min_length=1)
    ttl: str | None = None


class WorkingDirectoryFiles(RunnableTask):
    """Restores or collects a WorkingDirectory's files (see the module doc); the executor
    sends its jobs with the phase in ``props``."""

    type_name: ClassVar[str] = "io.kestra.plugin.core.flow.WorkingDirectory$Files"
    is_async: ClassVar[bool] = True

    owner: str
    outputFiles: list[str] | None = None
    cache: Cache | None = None

    async def arun(self, props: dict[str, Any], run: RunInfo) -> TaskOutcome:
        phase = props.get("phase")
        if run.working_dir is None:
            raise TaskError("a WorkingDirectory's files are handled in its directory only")
        async with attempt_dirs(run.working_dir) as dirs:
            if phase == "restore":
                await asyncio.to_thread(self._restore, dirs, run)
                return TaskOutcome(StateType.SUCCESS)
            if phase != "collect":
                raise TaskError(f"unknown WorkingDirectory files phase {phase!r}")
            outputs = await asyncio.to_thread(self._collect, dirs, run)
        return TaskOutcome(StateType.SUCCESS, outputs)

    def cache_key(self, run: RunInfo) -> str:
        files = run_files(run)
        flow = f"{namespace_path(files.namespace)}/{slug(files.flow_id)}"
        return f"{flow}/_cache/{slug(self.owner)}/cache.zip"

    def _restore(self, dirs: AttemptDirs, run: RunInfo) -> None:
        storage = get_storage()
        key = self.cache_key(run)
        try:
            data = storage.get(key)
        except FileNotFoundError:
            return
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            expiry = archive.comment.decode()
            if expiry and datetime.fromisoformat(expiry) <= datetime.now(UTC):
                storage.delete(key)  # expired: the next collect writes a new one
                return
            for info in archive.infolist():
                if info.is_dir():
                    continue
                target = inside(dirs.work, info.filename, "cache")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(archive.read(info))

    def _collect(self, dirs: AttemptDirs, run: RunInfo) -> dict[str, Any]:
        outputs: dict[str, Any] = {}
        if self.outputFiles:  # in the WorkingDirectory's folder, whose task run this is
            folder = replace(run_files(run), task_id=self.owner)
            globs = [str(glob) for glob in self.outputFiles]
            outputs["outputFiles"] = collect_output_files(globs, dirs, folder)
        if self.cache is not None:
            self._save_cache(dirs.work, run)
        return outputs

    def _save_cache(self, work: Path, run: RunInfo) -> None:
        assert self.cache is not None
        found: dict[str, Path] = {}
        root = work.resolve()
        for pattern in self.cache.patterns:
            inside(work, pattern, "cache")
            for path in sorted(work.glob(pattern)):
                if path.is_file() and not path.is_symlink() and path.resolve().is_relative_to(root):
                    found.setdefault(path.relative_to(work).as_posix(), path)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, path in found.items():
                archive.write(path, name)
            archive.comment = _expiry(self.cache.ttl).encode()
        get_storage().put(self.cache_key(run), buffer.getvalue())


def _expiry(ttl: str | None) -> str:
    """The cache's expiry as ISO-8601 text; empty without ``ttl`` (kept until replaced)."""
    if ttl is None:
        return ""
    try:
        return (datetime.now(UTC) + parse_duration(ttl)).isoformat()
    except DurationError as exc:
        raise TaskError(f"cache.ttl: {exc}") from None
