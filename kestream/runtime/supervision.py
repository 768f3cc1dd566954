"""What ``kestream standalone``'s supervisor knows of its children, and the health the API
answers from it.

The installation's readiness (:class:`~kestream.runtime.members.MemberBoard`) counts the members
that publish their status. A child killed outright publishes nothing more: its last record
("ready") counts for :data:`~kestream.runtime.members.STALE_AFTER_S` more, then the member is
gone from the table, and another process of the same role (the first executor) keeps the role
present. So ``/health/ready`` stayed 200 all the while an executor was dead and being
restarted, its partitions unserved. The supervisor knows at once (SIGCHLD): it writes each
child's state to a small JSON file (:class:`SupervisionReport`, replaced atomically, as the
crash counts are) and tells the API role where, in :data:`SUPERVISION_FILE_ENV`;
:class:`SupervisedChildren` reads it at each probe.

- **ready**: every child is running, and each of its roles has a ready, live member record
  from the child's own pid (the new process, not the record its dead predecessor left). A child
  that exited is not ready from the moment the supervisor saw it exit, named with how it exited,
  until its replacement has published that it is ready.
- **live**: the supervisor has not given up. A child being restarted is the supervisor doing
  its job, as Kubernetes' liveness means it: restarting the installation would not help. Once
  a role keeps crashing the supervisor gives up, says so here, and stops everything.

- **hung** (:class:`HangWatch`): on its own embedded broker, standalone's executors and worker
  take their partitions without a consumer group (:mod:`.static_assignment`), so nothing moves
  the partitions of a process that stopped serving them without exiting (a task's blocking
  code on its loop, a runaway step): the group used to, once its heartbeats or polls stopped.
  The supervisor follows the members topic and kills (SIGKILL) a child one of whose roles has
  not published a live member record for :data:`HUNG_AFTER_S`; it is then started again as
  any crashed child, its cause ``hung``. The trade-off: a task that holds the worker's loop
  longer than that costs the process, and its jobs run again (at least once, as after any
  crash), where a group would have given its partitions to another worker after a session
  and left it running. A child is judged only from its first record on: a start (imports,
  recovery) is not cut short.

What ``/health`` shows is open to anyone who can reach it, so only the children's names,
states and exit causes (``signal SIGKILL``, ``exit code 1``, a role's own cause such as
``stepped down``, or ``duplicate instance id`` for the child standalone gave up on) are written,
never a log line.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from kestream.runtime.restarts import write_json_atomically

__all__ = [
    "HUNG",
    "HUNG_AFTER_S",
    "SUPERVISION_FILE_ENV",
    "HangWatch",
    "SupervisedChildren",
    "SupervisionReport",
    "supervised_children",
]

log = logging.getLogger("kestream.supervision")

#: Set by ``kestream standalone`` in its children's environment: the report's path.
SUPERVISION_FILE_ENV = "KESTREAM_STANDALONE_CHILDREN_FILE"

#: How long a child's role may go without a live member record before the supervisor kills it
#: (:class:`HangWatch`). A live member publishes at least every keep-alive (10 s), and at once
#: when it stops being live (its loop came back after more than 10 s blocked): six keep-alives
#: leave room for a broker slow to take them.
HUNG_AFTER_S = 60.0
#: The cause a child killed as hung is counted with (a fixed word: causes are metric labels).
HUNG = "hung"

#: A child's states in the report.
RUNNING = "running"
RESTARTING = "restarting"


class SupervisionReport:
    """The supervisor's side: each child's state, and whether it gave up (module docs)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.children: dict[str, dict[str, Any]] = {}
        self.gave_up: dict[str, str] | None = None
        path.parent.mkdir(parents=True, exist_ok=True)
        self._write()

    def started(self, name: str, roles: Iterable[str], pid: int) -> None:
        """``name``'s process ``pid`` started (the first time, or again)."""
        self.children[name] = {"state": RUNNING, "roles": list(roles), "pid": pid}
        self._write()

    def exited(self, name: str, roles: Iterable[str], cause: str, restart_in: float) -> None:
        """``name``'s process exited with ``cause``; it starts again in ``restart_in`` s."""
        self.children[name] = {
            "state": RESTARTING,
            "roles": list(roles),
            "cause": cause,
            "restartAt": round(time.time() + restart_in, 3),
        }
        self._write()

    def give_up(self, who: str, why: str) -> None:
        """The supervisor stops because of ``who`` (a child, a role, the broker): ``why``."""
        self.gave_up = {"who": who, "why": why}
        self._write()

    def _write(self) -> None:
        write_json_atomically(self.path, {"children": self.children, "gaveUp": self.gave_up})


class HangWatch:
    """Which children have gone without a live member record for longer than ``bound``
    (module docs). Pure: fed the members as the supervisor's board has them, and the time.

    Each role of each child is judged from its first record on (whatever it says): from then
    on, the last live record's time, or that first record's while none was live, must be
    within ``bound`` of now. A silent member (a blocked loop publishes nothing) keeps its last
    time, so silence counts as not live.
    """

    def __init__(self, bound: float = HUNG_AFTER_S, host: str | None = None) -> None:
        self.bound = bound
        self.host = host or socket.gethostname()
        #: The last time each (pid, role) was heard live (or first heard at all).
        self._live_at: dict[tuple[int, str], float] = {}

    def hung(
        self,
        children: Mapping[int, tuple[tuple[str, ...], float]],
        members: Iterable[Any],
        now: float,
    ) -> dict[int, tuple[str, float]]:
        """``{pid: (role, seconds)}`` of the ``children`` (pid: the roles it hosts and when it
        was started, Unix time) with a role not heard live for longer than :attr:`bound`: the
        first such role, and for how long. A record older than its pid's child is another
        process's, one that had the same pid before (the members topic outlives a run)."""
        for member in members:
            key = (member.pid, member.role)
            child = children.get(member.pid)
            if member.host != self.host or child is None or member.ts < child[1]:
                continue
            if member.live or key not in self._live_at:
                self._live_at[key] = max(self._live_at.get(key, member.ts), member.ts)
        for key in [k for k in self._live_at if k[0] not in children]:
            del self._live_at[key]  # a child gone: its successor has another pid
        hung: dict[int, tuple[str, float]] = {}
        for pid, (roles, _) in children.items():
            for role in roles:
                since = self._live_at.get((pid, role))
                if since is not None and now - since > self.bound:
                    hung[pid] = (role, now - since)
                    break
        return hung


class SupervisedChildren:
    """The API's side: readiness and liveness from the supervisor's report (module docs).

    Args:
        path: the report (:data:`SUPERVISION_FILE_ENV`).
        host: this machine's name, as the children's member records carry it.
    """

    def __init__(self, path: Path, host: str | None = None) -> None:
        self.path = path
        self.host = host or socket.gethostname()

    def _read(self) -> dict[str, Any] | None:
        try:
            body = json.loads(self.path.read_bytes())
        except (OSError, ValueError) as exc:
            log.warning("the supervisor's report %s cannot be read: %s", self.path, exc)
            return None
        return body if isinstance(body, dict) else None

    def ready(self, members: Iterable[Any]) -> tuple[bool, dict[str, Any]]:
        """``(ok, details)``: every child runs and each of its roles is ready in a member
        record of its own pid (``members``: the board's members that count,
        :class:`~kestream.runtime.members.MemberStatus`)."""
        report = self._read()
        if report is None:
            return False, {"status": "DOWN", "reason": "the supervisor's report is unreadable"}
        ready_roles: dict[int, set[str]] = {}
        for member in members:
            if member.host == self.host and member.ready and member.live:
                ready_roles.setdefault(member.pid, set()).add(member.role)
        children: dict[str, dict[str, Any]] = {}
        for name, child in sorted((report.get("children") or {}).items()):
            children[name] = _child_health(child, ready_roles)
        not_ready = [name for name, child in children.items() if not child["ready"]]
        ok = not not_ready and report.get("gaveUp") is None
        return ok, {
            "status": "UP" if ok else "DOWN",
            "children": children,
            "notReady": not_ready,
            **_gave_up(report),
        }

    def live(self) -> tuple[bool, dict[str, Any]]:
        """``(ok, details)``: live unless the supervisor gave up (an unreadable report is
        no reason to restart anything: live)."""
        report = self._read() or {}
        gave_up = _gave_up(report)
        return not gave_up, {"status": "DOWN" if gave_up else "UP", **gave_up}


def _child_health(child: dict[str, Any], ready_roles: dict[int, set[str]]) -> dict[str, Any]:
    """One child's part of the readiness: a restarting child is not ready, with the cause it
    exited with (its role's own, when it gave one); a running one is ready once every role it
    hosts has a ready member record of its pid (``ready_roles``), for a process that started
    is not yet one that serves."""
    state = str(child.get("state"))
    if state == RESTARTING:
        cause = child.get("cause") or "an unknown cause"
        return {
            "state": state,
            "ready": False,
            "reason": f"exited with {cause}; the supervisor starts it again",
        }
    pid = child.get("pid")
    roles = {str(role) for role in child.get("roles") or ()}
    missing = sorted(roles - ready_roles.get(pid, set())) if isinstance(pid, int) else []
    if not missing:
        return {"state": state, "ready": True}
    return {
        "state": state,
        "ready": False,
        "reason": f"started, not ready yet ({', '.join(missing)})",
    }


def _gave_up(report: dict[str, Any]) -> dict[str, Any]:
    """``{"gaveUp": why}`` when the supervisor gave up (it stops: neither live nor ready), or
    nothing; read from the report rather than asked, for the supervisor answers no requests."""
    gave_up = report.get("gaveUp")
    if not isinstance(gave_up, dict):
        return {}
    return {"gaveUp": f"the supervisor gave up on {gave_up.get('who')}: {gave_up.get('why')}"}


def supervised_children() -> SupervisedChildren | None:
    """In a child of ``kestream standalone`` (:data:`SUPERVISION_FILE_ENV` set), the reader of
    its supervisor's report; None elsewhere."""
    path = os.environ.get(SUPERVISION_FILE_ENV)
    return SupervisedChildren(Path(path)) if path else None
