"""The directories a ``WorkingDirectory`` task run shares among its children, on one worker.

Every job of an execution is keyed by its execution id, so all of them land on one partition of
the worker topic, hence on one worker while no rebalance happens: the children of a
``WorkingDirectory`` find there the directory the earlier ones wrote to. It is keyed by
(execution id, ``WorkingDirectory`` task run id), created (with the group's ``inputFiles``) for
the first child that runs, and removed when the executor's ``release`` arrives at the end of the
task run, or when the worker stops.

**A rebalance mid-way** (the worker stopped, or the partition moved to another worker) loses the
directory: the next child runs on a worker that never saw the group and starts from a new
directory holding only the ``inputFiles``; what the earlier children wrote is gone, and a child
that reads it fails on the missing file. The worker cannot tell a group's first child from a
later one, so it cannot refuse the job instead.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from kestream.executor.commands import SharedWorkdir

DirKey = tuple[str, str]


class SharedWorkdirs:
    """The shared directories of one worker, keyed by (execution id, owner task run id)."""

    def __init__(self, root: Path | None = None) -> None:
        """``root``: where the directories go (the system temp directory by default)."""
        self._root = root
        self._dirs: dict[DirKey, Path] = {}

    def __len__(self) -> int:
        return len(self._dirs)

    def path(self, execution_id: str, owner_id: str) -> Path | None:
        """The directory, if this worker holds it."""
        return self._dirs.get((execution_id, owner_id))

    def acquire(self, execution_id: str, shared: SharedWorkdir) -> tuple[Path, bool]:
        """The directory of ``shared`` and whether it was created now (then holding the
        ``inputFiles``, written by :func:`~kestream.tasks.scripts.workdir.write_input_files`)."""
        key = (execution_id, shared.owner_id)
        found = self._dirs.get(key)
        if found is not None and found.is_dir():
            return found, False
        path = Path(tempfile.mkdtemp(prefix="kestream-wd-", dir=self._root))
        self._dirs[key] = path
        return path, True

    def release(self, execution_id: str, owner_id: str) -> bool:
        """Remove the directory (and all in it); False if this worker did not hold it."""
        path = self._dirs.pop((execution_id, owner_id), None)
        if path is None:
            return False
        shutil.rmtree(path, ignore_errors=True)
        return True

    def close(self) -> None:
        """Remove every directory (the worker stops: the groups lose them, as on a rebalance)."""
        for key in list(self._dirs):
            self.release(*key)
