"""How ``kestream standalone`` restarts a role process that died, and how the API reports it.

:class:`CrashPolicy` is the decision (pure, tested without processes): the delay before a
role's next start grows exponentially with its recent crashes and is capped; a role that
crashes ``limit`` times within ``window_s`` seconds is given up on, and standalone stops
saying which.

:class:`CrashLedger` is how the counts reach ``/metrics``. The supervisor is not a role: it
serves no HTTP and is not on the members topic, and the API role is one of its children (it
may be the one that crashed). So the supervisor writes its counts to a small JSON file
(replaced atomically, so a reader never sees half of it) and tells its children where, in
:data:`CRASHES_FILE_ENV`; the API role registers a collector that reads the file at each scrape
(:mod:`kestream.runtime.crash_metrics`, apart so that the supervisor needs no Prometheus
client). That keeps the count current whichever child restarted last, costs nothing between
scrapes, and needs neither the broker (which may be what crashed) nor a
restart of the API to publish a new count. A file next to the data rather than the members
topic also means the counts of one standalone run stay that run's: the file is made anew at
each start, as a counter of a new process starts at zero.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

#: Set by ``kestream standalone`` in its children's environment: the ledger's path.
CRASHES_FILE_ENV = "KESTREAM_STANDALONE_CRASHES_FILE"
#: Set by ``kestream standalone`` in each child's environment: where the child writes the role
#: that failed, so that a process hosting several roles is not blamed as a whole.
FAILED_ROLE_FILE_ENV = "KESTREAM_STANDALONE_FAILED_ROLE_FILE"

#: The first restart's delay; each further crash within the window doubles it.
FIRST_DELAY_S = 0.5


def describe_exit(returncode: int) -> str:
    """``exit code 1`` or ``signal SIGKILL``, as a person (and a metric label) names it.

    ``subprocess`` reports a death by signal N as ``-N``.
    """
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


class RoleStepsDown(Exception):
    """A role that cannot do its job again in this process, though a new one would (a scheduler
    whose lease's group coordination died: no rebalance reaches it any more). Given to its
    host's failure callback, it stops the process like any failure, so that the supervisor (or
    an orchestrator) starts a new one; ``cause`` is what the supervisor counts the exit as."""

    def __init__(self, message: str, cause: str) -> None:
        super().__init__(message)
        self.cause = cause


class FailedRole(NamedTuple):
    """What a child said of its exit: the role that failed, and a cause when the role gave one
    (:class:`RoleStepsDown`); else the exit status is the cause."""

    role: str
    cause: str | None = None


def record_failed_role(role: str, cause: str | None = None, *, path: Path | None = None) -> None:
    """Tell the supervisor which of this process's roles failed (the first one, when several
    do: the others' failures usually follow from it), and why when ``cause`` says; nothing
    outside ``kestream standalone``. ``path``: the child's file, when the supervisor says it
    for a child that cannot (one it kills as hung)."""
    where = path or os.environ.get(FAILED_ROLE_FILE_ENV)
    if not where:
        return
    with contextlib.suppress(FileExistsError, OSError), open(where, "x") as out:
        out.write(role if cause is None else f"{role}\n{cause}")


def take_failed_role(path: Path) -> FailedRole | None:
    """What a child wrote with :func:`record_failed_role` (None: it wrote nothing, as when it
    was killed, or failed outside its roles), removing the file for the next run."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    with contextlib.suppress(OSError):
        path.unlink()
    role = lines[0].strip() if lines else ""
    cause = lines[1].strip() if len(lines) > 1 else ""
    return FailedRole(role, cause or None) if role else None


@dataclass
class CrashPolicy:
    """Restart delays and the give-up rule for one role.

    ``crashed(now)`` records a crash and returns the delay before the next start, or ``None``
    when the role has crashed ``limit`` times within the last ``window_s`` seconds.
    """

    limit: int
    window_s: float
    max_delay_s: float
    first_delay_s: float = FIRST_DELAY_S
    _recent: deque[float] = field(default_factory=deque)

    def crashed(self, now: float) -> float | None:
        self._recent.append(now)
        while self._recent and self._recent[0] <= now - self.window_s:
            self._recent.popleft()
        if len(self._recent) >= self.limit:
            return None
        return min(self.first_delay_s * 2 ** (len(self._recent) - 1), self.max_delay_s)

    @property
    def recent(self) -> int:
        """Crashes within the window as of the last :meth:`crashed`."""
        return len(self._recent)


class CrashLedger:
    """The supervisor's counts, per role: crashes by cause, and restarts; kept in a JSON file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.crashes: dict[str, dict[str, int]] = {}
        self.restarts: dict[str, int] = {}
        path.parent.mkdir(parents=True, exist_ok=True)
        self._write()

    def crashed(self, role: str, cause: str) -> None:
        by_cause = self.crashes.setdefault(role, {})
        by_cause[cause] = by_cause.get(cause, 0) + 1
        self._write()

    def restarted(self, role: str) -> None:
        self.restarts[role] = self.restarts.get(role, 0) + 1
        self._write()

    def _write(self) -> None:
        write_json_atomically(self.path, {"crashes": self.crashes, "restarts": self.restarts})


def write_json_atomically(path: Path, body: object) -> None:
    """Replace ``path`` with ``body`` as JSON in one step: a reader in another process (the
    API role, at a scrape or a probe) sees the old file or the new one, never half of it."""
    data = json.dumps(body).encode()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
