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
later one, so it cannot refuse the job instead. A child that ran here and comes again after its
group's release (redelivered) is refused; the release of a group whose child still runs (a
killed child in its SIGTERM grace) removes the directory once that child ended.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kestream.executor.commands import SharedWorkdir
from kestream.tasks.base import TaskError

DirKey = tuple[str, str]

#: How many child task runs of released groups a worker remembers, to refuse their late
#: (redelivered) jobs.
RELEASED_KEPT = 10_000


class SharedWorkdirs:
    """The shared directories of one worker, keyed by (execution id, owner task run id)."""

    def __init__(self, root: Path | None = None) -> None:
        """``root``: where the directories go (the system temp directory by default)."""
        self._root = root
        self._dirs: dict[DirKey, Path] = {}
        self._users: dict[DirKey, int] = {}
        self._doomed: dict[DirKey, Path] = {}
        self._children: dict[DirKey, set[str]] = {}
        self._released: OrderedDict[tuple[str, str], None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._dirs)

    def path(self, execution_id: str, owner_id: str) -> Path | None:
        """The directory, if this worker holds it."""
        return self._dirs.get((execution_id, owner_id))

    def acquire(
        self, execution_id: str, shared: SharedWorkdir, task_run_id: str
    ) -> tuple[Path, bool]:
        """The directory of ``shared`` for its child ``task_run_id``, and whether it was created
        now (then holding the ``inputFiles``, written by
        :func:`~kestream.tasks.scripts.workdir.write_input_files`).

        A child that ran here before its group's release is refused (:class:`TaskError`): a job
        of it redelivered after the release would otherwise create a directory that no release
        ever removes. A restarted group runs new child task runs, which are not refused."""
        if (execution_id, task_run_id) in self._released:
            raise TaskError(
                f"The WorkingDirectory task run '{shared.owner_id}' has already ended and its "
                f"directory was removed: this job of its task run '{task_run_id}' came late "
                "(redelivered) and is not run"
            )
        key = (execution_id, shared.owner_id)
        self._children.setdefault(key, set()).add(task_run_id)
        found = self._dirs.get(key)
        if found is not None and found.is_dir():
            return found, False
        path = Path(tempfile.mkdtemp(prefix="kestream-wd-", dir=self._root))
        self._dirs[key] = path
        return path, True

    @contextmanager
    def use(
        self, execution_id: str, shared: SharedWorkdir, task_run_id: str
    ) -> Iterator[tuple[Path, bool]]:
        """:meth:`acquire` for a running job: a release meanwhile removes the directory only once
        the job ended (a killed child in its grace period may still write there)."""
        path, created = self.acquire(execution_id, shared, task_run_id)
        key = (execution_id, shared.owner_id)
        self._users[key] = self._users.get(key, 0) + 1
        try:
            yield path, created
        finally:
            self._users[key] -= 1
            if self._users[key] == 0:
                del self._users[key]
                doomed = self._doomed.pop(key, None)
                if doomed is not None:
                    shutil.rmtree(doomed, ignore_errors=True)

    def release(self, execution_id: str, owner_id: str) -> bool:
        """Remove the directory (and all in it), at once or when its running jobs end; False if
        this worker did not hold it. The group's children that ran here are remembered (up to
        :data:`RELEASED_KEPT`), so that a late job of one of them is refused."""
        key = (execution_id, owner_id)
        for child in self._children.pop(key, ()):
            self._released[(execution_id, child)] = None
            self._released.move_to_end((execution_id, child))
        while len(self._released) > RELEASED_KEPT:
            self._released.popitem(last=False)
        path = self._dirs.pop(key, None)
        if path is None:
            return False
        if key in self._users:
            self._doomed[key] = path
        else:
            shutil.rmtree(path, ignore_errors=True)
        return True

    def close(self) -> None:
        """Remove every directory (the worker stops: the groups lose them, as on a rebalance),
        also those still waiting for their running jobs (which the stop kills)."""
        for key in list(self._dirs):
            self.release(*key)
        for path in self._doomed.values():
            shutil.rmtree(path, ignore_errors=True)
        self._doomed.clear()
