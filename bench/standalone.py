"""``kestream standalone`` as a user starts it, seen from outside: launched, ready, its processes.

The idle and start-up rows (bench/idle.py, bench/startup.py) measure the command itself, not the
bench's own stack of roles (bench/stack.py): the supervisor, the role processes it starts and,
without ``KESTREAM_BROKER``, the embedded Tansu it starts too. Ready means what an operator
checks: the API's ``/health/ready`` answers 200 (the API role answers for the whole installation).

The command runs in a session of its own, so stopping it reaches every process of the tree
(``killpg``), as Ctrl-C in a shell would; its output (the supervisor's and every role's, which
inherit it) goes to one log, whose lines are stamped with the moment they were read, so that the
start-up phases are timed whatever the roles' log format says.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bench.stack import cpu_seconds, rss_mb
from kestream.runtime.embedded_broker import free_port

_POLL_S = 0.1
_STOP_GRACE_S = 60.0
#: Names of the processes of the tree, from their command lines.
_ROLE = re.compile(r"-m kestream\.cli (executor|worker|scheduler|api|standalone)\b")
#: One process hosting several roles (``kestream roles worker,scheduler,api,executor``).
_ROLES = re.compile(r"-m kestream\.cli roles (\S+)")

#: Start-up phases, each the first log line that matches (stamped when read), in the order the
#: command goes through them; a phase whose line never appears is left out of the report.
PHASES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("broker up", re.compile(r"Tansu ready on")),
    ("broker state restored", re.compile(r"restored \d+ record")),
    ("roles spawned", re.compile(r"standalone running:")),
    # faust's first line in a role process: its imports are done.
    ("first role imported", re.compile(r"RoleApp\]: Starting")),
    ("scheduler started", re.compile(r"scheduler started \(broker")),
    ("api started", re.compile(r"api started \(broker")),
    ("worker started", re.compile(r"worker started \(broker")),
    ("first executor started", re.compile(r"executor started \(broker")),
    ("worker partitions assigned", re.compile(r"worker: partitions assigned")),
    ("first executor owns partitions", re.compile(r"executor owns partitions \[\d")),
)


#: A role process's line once all its roles are ready: how long it took and where the time went
#: ("executor and worker ready: 3.10 s after the process started (interpreter, imports and
#: faust 1.20 s, broker and topics 0.30 s, ...)").
_PROCESS_READY = re.compile(
    r"[\]:] (?P<roles>[a-z]+(?: and [a-z]+)*) ready: (?P<total>[\d.]+) s after "
    r"(?:the process|its service) started \((?P<parts>[^)\n]*)\)"
)
#: One part: a name without digits (it may hold commas), its seconds.
_PART = re.compile(r"\s*(?P<name>[^\d]+?) (?P<seconds>\d+(?:\.\d+)?) s(?:,|$)")


def process_phases(text: str) -> list[tuple[str, dict[str, float]]]:
    """Each role process's start-up breakdown in ``text``: its roles (``executor+worker``) and
    the seconds of each part it names, with ``total``."""
    found = []
    for match in _PROCESS_READY.finditer(text):
        parts = {"total": float(match["total"])}
        for part in _PART.finditer(match["parts"]):
            parts[part["name"]] = float(part["seconds"])
        found.append(("+".join(match["roles"].split(" and ")), parts))
    return found


@dataclass(slots=True)
class Launched:
    """One ``kestream standalone`` process tree and what was read of its log so far."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    started: float
    #: Seconds after launch at which each phase's line was first read.
    phases: dict[str, float] = field(default_factory=dict)
    #: Where each role process's start-up went, as it logs it once ready (see
    #: :func:`process_phases`), by the roles it hosts.
    processes: dict[str, dict[str, float]] = field(default_factory=dict)
    _offset: int = 0

    @property
    def ready_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/health/ready"

    def read_log(self, at: float | None = None) -> None:
        """Stamp the phases whose lines appeared since the last read, with the time since launch
        (or ``at``: the read that follows the first 200 stamps its lines with the moment of the
        200, so that no phase comes after ready)."""
        chunk = b""
        with contextlib.suppress(OSError), self.log_path.open("rb") as handle:
            handle.seek(self._offset)
            chunk = handle.read()
        if not chunk:
            return
        complete = chunk.rfind(b"\n") + 1  # a half-written line waits for the next read
        self._offset += complete
        text = chunk[:complete].decode(errors="replace")
        now = time.monotonic() - self.started if at is None else at
        for name, pattern in PHASES:
            if name not in self.phases and pattern.search(text):
                self.phases[name] = round(now, 2)
        for roles, parts in process_phases(text):
            name, number = roles, 1
            while name in self.processes:  # a second process of the same roles (executors)
                number += 1
                name = f"{roles}-{number}"
            self.processes[name] = parts


def standalone_env(
    environ: Mapping[str, str],
    data_dir: Path,
    port: int,
    broker: str | None,
    topic_prefix: str | None = None,
) -> dict[str, str]:
    """The command's environment: the user's, minus every ``KESTREAM_*`` setting (a user's broker
    or topic prefix would change what is measured), plus the data dir, the API port and, for
    Apache Kafka, its address and a topic prefix (on a broker that outlives one installation,
    a new prefix is what makes a fresh one)."""
    env = {k: v for k, v in environ.items() if not k.startswith("KESTREAM_")}
    env["KESTREAM_DATA_DIR"] = str(data_dir)
    env["KESTREAM_WEB_PORT"] = str(port)
    if broker is not None:
        env["KESTREAM_BROKER"] = broker
    if topic_prefix is not None:
        env["KESTREAM_TOPIC_PREFIX"] = topic_prefix
    return env


def launch(
    data_dir: Path, log_path: Path, broker: str | None = None, topic_prefix: str | None = None
) -> Launched:
    """Start ``kestream standalone`` on ``data_dir`` (the embedded broker unless ``broker``)."""
    port = free_port()
    env = standalone_env(os.environ, data_dir, port, broker, topic_prefix)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log_file:
        started = time.monotonic()
        process = subprocess.Popen(
            [sys.executable, "-m", "kestream.cli", "standalone"],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Launched(process, port, log_path, started)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False  # 503 (HTTPError is a URLError), refused, or no answer yet


def wait_ready(launched: Launched, timeout_s: float) -> float:
    """Seconds from launch to the first 200 of ``/health/ready``; the phases read on the way."""
    deadline = launched.started + timeout_s
    while time.monotonic() < deadline:
        if launched.process.poll() is not None:
            launched.read_log()
            raise RuntimeError(
                f"standalone exited with {launched.process.returncode}; see {launched.log_path}"
            )
        if _ready(launched.ready_url):
            elapsed = round(time.monotonic() - launched.started, 2)
            launched.read_log(at=elapsed)
            return elapsed
        launched.read_log()
        time.sleep(_POLL_S)
    raise TimeoutError(f"standalone not ready after {timeout_s:.0f} s; see {launched.log_path}")


def await_process_lines(launched: Launched, ready_s: float, grace_s: float = 3.0) -> None:
    """Read the log until every role process of the tree has logged its start-up breakdown, for
    at most ``grace_s``: a process logs it when it sees itself ready, which may be a poll after
    the API answered 200. Phases first read meanwhile are stamped ``ready_s``."""
    names = name_processes(descendants(launched.process.pid)).values()
    roles = [name for name in names if name != "supervisor" and not name.startswith("broker")]
    deadline = time.monotonic() + grace_s
    launched.read_log(at=ready_s)
    while len(launched.processes) < len(roles) and time.monotonic() < deadline:
        time.sleep(_POLL_S)
        launched.read_log(at=ready_s)


def stop(launched: Launched) -> int:
    """SIGINT to the whole tree (Ctrl-C), then SIGKILL if it is still there after the grace."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(launched.process.pid, signal.SIGINT)
    try:
        return launched.process.wait(_STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(launched.process.pid, signal.SIGKILL)
        return launched.process.wait()


@contextlib.contextmanager
def running(
    data_dir: Path, log_path: Path, broker: str | None = None, topic_prefix: str | None = None
) -> Iterator[Launched]:
    """``launch`` ... ``stop``, whatever happens in between."""
    launched = launch(data_dir, log_path, broker, topic_prefix)
    try:
        yield launched
    finally:
        stop(launched)


# -- the process tree ----------------------------------------------------------------------------


def _parent(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(text.rsplit(")", 1)[1].split()[1])


def descendants(root: int) -> list[int]:
    """``root`` and every process below it, parents before children."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            parent = _parent(int(entry.name))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop(0)
        found.append(pid)
        todo += sorted(children.get(pid, []))
    return found


def process_label(cmdline: str) -> str:
    """What a process of the tree is: ``supervisor``, a role, several roles hosted by one
    process (``worker+scheduler+api+executor``), ``broker`` (Tansu) or its program's name."""
    hosting = _ROLES.search(cmdline)
    if hosting:
        return "+".join(role for role in hosting.group(1).split(",") if role)
    found = _ROLE.search(cmdline)
    if found:
        return "supervisor" if found.group(1) == "standalone" else found.group(1)
    program = Path(cmdline.split(" ", 1)[0]).name if cmdline else "?"
    return "broker" if program == "tansu" else program


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def name_processes(pids: list[int]) -> dict[int, str]:
    """A name per process, numbered where a role runs more than once (``executor-1``, ...)."""
    return number_labels({pid: process_label(_cmdline(pid)) for pid in pids})


def number_labels(labels: Mapping[int, str]) -> dict[int, str]:
    """``labels`` with a number after each that occurs more than once, in the given order."""
    counts: dict[str, int] = {}
    for label in labels.values():
        counts[label] = counts.get(label, 0) + 1
    seen: dict[str, int] = {}
    names = {}
    for pid, label in labels.items():
        seen[label] = seen.get(label, 0) + 1
        names[pid] = f"{label}-{seen[label]}" if counts[label] > 1 else label
    return names


@dataclass(frozen=True, slots=True)
class ProcessSample:
    """One process over a sampling window: CPU as % of one core, resident memory at the end."""

    name: str
    pid: int
    cpu_pct: float
    rss_mb: float


def sample(processes: Mapping[int, str], seconds: float) -> list[ProcessSample]:
    """CPU (user + system) of each process over ``seconds``, and its RSS at the end; a process
    that exits meanwhile is left out (an idle installation whose roles restart is a finding the
    log shows)."""
    before = {pid: cpu_seconds(pid) for pid in processes}
    start = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - start
    found = []
    for pid, name in processes.items():
        first, last, rss = before[pid], cpu_seconds(pid), rss_mb(pid)
        if first is None or last is None or rss is None:
            continue
        found.append(ProcessSample(name, pid, round((last - first) * 100 / elapsed, 2), rss))
    return found
