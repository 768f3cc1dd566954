"""What one benchmark run stands on: a fresh broker, kestream's roles as processes, a client.

The roles run as a user would run them: ``python -m kestream.cli executor`` once per stream
thread (0 = one per core, as ``kestream standalone`` does) and ``python -m kestream.cli worker``,
each a separate process configured only through ``KESTREAM_*`` variables, with a topic prefix of
their own so that nothing from an earlier run is read. The broker is started fresh for every
run (Tansu's fetch cost grows with the batches ever written, so a reused broker would make each
run slower than the one before), unless ``--broker`` names one to use.

Broker security (``KESTREAM_BROKER_SECURITY_PROTOCOL`` and the SASL/SSL settings) reaches the
client and every role process from one place, :attr:`Stack.security`: the environment's for
``--broker``; with ``--kafka`` and ``SASL_SSL`` (PLAIN) in the environment, the fresh Kafka
accepts only SASL_SSL for that user, with a CA made for the run replacing the environment's.

CPU and peak RSS come from ``/proc`` (no psutil: the harness adds no dependency): utime+stime of
each process, read at the start and end of the measured window, and ``VmHWM``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import workloads
from kestream.client import Client
from kestream.plugins.loading import load_plugins
from kestream.runtime.apache_kafka import ApacheKafka
from kestream.runtime.apache_kafka_sasl import SaslSslListener
from kestream.runtime.embedded_broker import (
    BrokerProcess,
    EmbeddedBroker,
    die_with_parent,
    free_port,
)
from kestream.runtime.kafka_connection import SecurityFields, security_fields, with_security
from kestream.runtime.tansu_compat import probe_broker
from kestream.settings import SaslMechanism, SecurityProtocol, Settings

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_READY_TIMEOUT_S = 90.0
_WARMUP_TIMEOUT_S = 90.0
_STOP_GRACE_S = 20.0
_OWNS = re.compile(r"executor owns partitions \[([\d, ]*)\]")
_WORKER_ASSIGNED = re.compile(r"worker: partitions assigned: \[[\d, ]+\]")
_API_STARTED = re.compile(r"api started \(broker")
_ROLE_KIND = re.compile(r"(?:executor|worker) started \(broker \S+, (\w+)\)")
_KAFKA_SETTLE_S = 60.0
_PROFILE_WAIT_S = 15.0

#: Signals a profiled role takes to start and to stop (and dump) its profile. Real-time ones,
#: because mode's worker already handles SIGUSR1 (a stack dump) and SIGTERM.
PROFILE_START = signal.SIGRTMIN + 3
PROFILE_STOP = signal.SIGRTMIN + 4

#: Runs a role with a CPU-time profiler that records only between the two signals, so the
#: profile shows the measured window (not imports, group joins and warm-up) and no idle time
#: (``time.process_time``: a process waiting in epoll costs nothing). ``python -m cProfile``
#: would do neither.
_PROFILE_BOOT = f"""
import cProfile, os, runpy, signal, sys, time
out = sys.argv[1]
profile = cProfile.Profile(time.process_time)
def start(*_):
    profile.enable()
def stop(*_):
    profile.disable()
    profile.dump_stats(out + ".part")
    os.replace(out + ".part", out)
signal.signal({int(PROFILE_START)}, start)
signal.signal({int(PROFILE_STOP)}, stop)
sys.argv = ["kestream", *sys.argv[2:]]
runpy.run_module("kestream.cli", run_name="__main__", alter_sys=True)
"""


# -- /proc ---------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a live process (all its threads), None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text.rsplit(")", 1)[1].split()  # comm may hold spaces; fields[0] is field 3
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def peak_rss_mb(pid: int) -> float | None:
    """The process's peak resident set (``VmHWM``) in MB, None once it is gone."""
    return _status_mb(pid, "VmHWM:")


def rss_mb(pid: int) -> float | None:
    """The process's resident set now (``VmRSS``) in MB, None once it is gone."""
    return _status_mb(pid, "VmRSS:")


def _status_mb(pid: int, key: str) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key):
                return round(int(line.split()[1]) / 1024, 1)
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def own_usage() -> tuple[float, float]:
    """This process's CPU seconds and peak RSS in MB: the load generator's share of the box."""
    return cpu_seconds(os.getpid()) or 0.0, peak_rss_mb(os.getpid()) or 0.0


# -- configuration -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StackConfig:
    """How to start one run's stack (from the command line)."""

    #: "embedded" (fresh Tansu), "kafka" (fresh Apache Kafka from Maven jars) or "external".
    broker: str = "embedded"
    bootstrap: str | None = None
    #: Executor processes; 0 = one per core (the setting's own default).
    stream_threads: int = 0
    #: KESTREAM_EXECUTOR_INLINE_TASKS for the roles; None leaves the user's setting.
    inline: bool | None = None
    profile: bool = False
    run_dir: Path = Path("/tmp")
    #: Also run the API role (submissions through its webhook route).
    api: bool = False
    #: "separate": one process per role; "shared": the first executor, the worker (and the
    #: API) in one ``kestream roles`` process, as ``standalone`` runs them, so that jobs and
    #: results are handed over in process (KESTREAM_LOCAL_HANDOFF); the other executors apart.
    layout: str = "separate"

    def executors(self) -> int:
        return self.stream_threads or (os.cpu_count() or 1)


@dataclass(slots=True)
class RoleProcess:
    role: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    profile_path: Path | None
    #: CPU seconds at the start of the measured window.
    cpu_base: float = 0.0


@dataclass(slots=True)
class Usage:
    """CPU seconds per role over the measured window, peak RSS per role, the broker's CPU."""

    cpu_s: dict[str, float] = field(default_factory=dict)
    rss_mb: dict[str, float] = field(default_factory=dict)
    broker_cpu_s: float | None = None
    #: Wall seconds of the measured window (mark to this reading): CPU over it is a share.
    window_s: float | None = None


# -- the stack -----------------------------------------------------------------------------------


class Stack:
    """Broker, roles and a connected client for one run; ``async with`` starts and stops it all.

    Startup order matters: the client creates the topics and deploys the flows before any role
    starts, so every role finds its flows table complete at its first read; the clock starts
    only after every role owns its partitions and warm-up executions crossed every hop.
    """

    def __init__(self, config: StackConfig, flows: list[workloads.Workload]) -> None:
        self.config = config
        self.flows = flows
        self.prefix = f"bench-{uuid.uuid4().hex[:8]}."
        self.broker: BrokerProcess | None = None
        self.bootstrap = ""
        self.kind = ""
        self.client: Client | None = None
        self.roles: list[RoleProcess] = []
        self.deployed: dict[str, tuple[str, str]] = {}
        #: KESTREAM_PARTITIONS as the roles see it (they inherit this process's environment).
        self.partitions = 0
        self._broker_cpu_base = 0.0
        self._own_cpu_base = 0.0
        self._marked = 0.0
        #: The API role's port, when it runs.
        self.api_port = free_port() if config.api else None
        #: How the client and every role connect: the environment's, until a fresh secured
        #: Kafka hands out its own.
        self.security: SecurityFields = security_fields(Settings())

    @property
    def settings(self) -> Settings:
        return Settings(broker=self.bootstrap, topic_prefix=self.prefix, **self.security)

    async def __aenter__(self) -> Stack:
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _start(self) -> None:
        self.config.run_dir.mkdir(parents=True, exist_ok=True)
        await self._start_broker()
        self.client = await Client.connect(self.settings)
        self.kind = self.client.ctx.kind
        self.partitions = self.client.ctx.settings.partitions
        load_plugins(self.settings, self.plugin_modules())  # deploying validates the types
        warm = await self.client.deploy(workloads.WARMUP_FLOW)
        self.deployed["warmup"] = (warm.namespace, warm.id)
        for workload in self.flows:
            flow = await self.client.deploy(workload.flow_source())
            self.deployed[workload.flow_file] = (flow.namespace, flow.id)
        self._spawn_roles()
        await self._wait_roles_ready()
        await self._warm_up()

    async def _start_broker(self) -> None:
        if self.config.broker == "external":
            assert self.config.bootstrap, "--broker needs host:port"
            self.bootstrap = self.config.bootstrap
            return
        work_dir = self.config.run_dir / "broker"
        if self.config.broker == "kafka":
            kafka = ApacheKafka(work_dir=work_dir, sasl_ssl=fresh_kafka_listener(self.security))
            self.broker = kafka
            await kafka.astart()
            self.security = kafka.client_security() or self.security
        else:
            protocol = self.security["broker_security_protocol"]
            if protocol is not SecurityProtocol.PLAINTEXT:
                raise ValueError(
                    f"KESTREAM_BROKER_SECURITY_PROTOCOL={protocol.value}: the embedded broker "
                    "speaks PLAINTEXT only; use --kafka (SASL_SSL) or --broker"
                )
            self.broker = EmbeddedBroker(work_dir=work_dir)
            await self.broker.astart()
        self.bootstrap = self.broker.bootstrap
        if self.config.broker == "kafka":
            await until_kafka_answers_as_kafka(self.settings)

    # -- roles -----------------------------------------------------------------------------------

    def _role_env(self) -> dict[str, str]:
        env = {
            **with_security(os.environ, self.security),
            "KESTREAM_BROKER": self.bootstrap,
            "KESTREAM_TOPIC_PREFIX": self.prefix,
            "KESTREAM_DATA_DIR": str(self.config.run_dir / "data"),
            # Readiness is read from the roles' INFO lines ("executor owns partitions ...").
            "KESTREAM_LOG_LEVEL": "INFO",
            "KESTREAM_EXECUTOR_STREAM_THREADS": str(self.config.executors()),
        }
        env.update(plugin_env(os.environ, self.plugin_modules()))
        # One instance id in the shell (the README asks operators to set one) would be every
        # executor's: on Kafka they would replace each other in the group at every join. The
        # roles join as dynamic members, as standalone's children get one id per slot.
        env.pop("KESTREAM_GROUP_INSTANCE_ID", None)
        if self.config.inline is not None:
            env["KESTREAM_EXECUTOR_INLINE_TASKS"] = "true" if self.config.inline else "false"
        if self.api_port is not None:
            env["KESTREAM_WEB_PORT"] = str(self.api_port)
        return env

    def plugin_modules(self) -> list[str]:
        """The plugin modules this run's flows need (W8's task module), each once, in order."""
        return list(dict.fromkeys(m for workload in self.flows for m in workload.plugins))

    def _spawn_roles(self) -> None:
        env = self._role_env()
        names = ["executor"] * self.config.executors() + ["worker"]
        if self.config.api:
            names.append("api")
        if self.config.layout == "shared":  # "executor,worker[,api]", then the other executors
            names = [",".join(names[0:1] + names[self.config.executors() :])]
            names += ["executor"] * (self.config.executors() - 1)
        for index, role in enumerate(names):
            name = role.replace(",", "+")  # "executor+worker-0.log"
            log_path = self.config.run_dir / f"{name}-{index}.log"
            profile = self.config.run_dir / f"{name}-{index}.prof" if self.config.profile else None
            args = ["roles", role] if "," in role else [role]
            command = [sys.executable, "-m", "kestream.cli", *args]
            if profile is not None:
                command = [sys.executable, "-c", _PROFILE_BOOT, str(profile), *args]
            with open(log_path, "wb") as log_file:
                proc = subprocess.Popen(
                    command,
                    env=env,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    preexec_fn=die_with_parent(),
                )
            self.roles.append(RoleProcess(role, proc, log_path, profile))

    async def _wait_roles_ready(self) -> None:
        """Until every executor owns a share of the partitions and the worker has its own."""
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while not self._roles_ready():
            self.check_alive()
            if time.monotonic() > deadline:
                where = self.config.run_dir
                raise TimeoutError(f"roles not ready after {_READY_TIMEOUT_S:.0f} s; see {where}")
            await asyncio.sleep(0.2)

    def _roles_ready(self) -> bool:
        owned: list[set[int]] = []
        for role in self.roles:
            text = role.log_path.read_text(errors="replace")
            hosted = role.role.split(",")
            if "worker" in hosted and not _WORKER_ASSIGNED.search(text):
                return False
            if "api" in hosted and not _API_STARTED.search(text):
                return False
            if "executor" not in hosted:
                continue
            claims = _OWNS.findall(text)
            if not claims or not claims[-1].strip():
                return False
            owned.append({int(p) for p in claims[-1].split(",")})
        union = set().union(*owned)
        return len(union) == self.partitions and sum(map(len, owned)) == self.partitions

    def check_alive(self) -> None:
        """Raise if a role process died: its log names the reason."""
        for role in self.roles:
            code = role.proc.poll()
            if code is not None:
                what = f"{role.role} (pid {role.proc.pid})"
                raise RuntimeError(f"{what} exited with {code}; see {role.log_path}")

    async def _warm_up(self) -> None:
        """Executions across (about) every partition, first through the worker, then own flows."""
        count = 2 * self.partitions
        await self.run_many(self.deployed["warmup"], count)
        for workload in self.flows:
            if workload.warmup_own:
                await self.run_many(self.deployed[workload.flow_file], workload.warmup_own)

    async def run_many(self, flow: tuple[str, str], count: int) -> None:
        client = self.require_client()

        async def one() -> None:
            execution_id = await client.submit(*flow)
            await client.wait(execution_id)

        await asyncio.wait_for(asyncio.gather(*(one() for _ in range(count))), _WARMUP_TIMEOUT_S)

    def require_client(self) -> Client:
        if self.client is None:
            raise RuntimeError("the stack is not started")
        return self.client

    # -- measuring -------------------------------------------------------------------------------

    def mark(self) -> None:
        """Start of the measured window: CPU from here on is the run's, and so is the profile."""
        for role in self.roles:
            role.cpu_base = cpu_seconds(role.proc.pid) or 0.0
            if role.profile_path is not None:
                role.proc.send_signal(PROFILE_START)
        if self.broker is not None and self.broker.pid is not None:
            self._broker_cpu_base = cpu_seconds(self.broker.pid) or 0.0
        self._own_cpu_base = own_usage()[0]
        self._marked = time.monotonic()

    def pids(self) -> dict[str, list[int]]:
        """The processes of the run by name: each role's, the broker's (when this stack started
        it) and this one (``loadgen``)."""
        found: dict[str, list[int]] = {}
        for role in self.roles:
            found.setdefault(role.role, []).append(role.proc.pid)
        if self.broker is not None and self.broker.pid is not None:
            found["broker"] = [self.broker.pid]
        found["loadgen"] = [os.getpid()]
        return found

    def cpu_now(self) -> dict[str, float]:
        """CPU seconds so far of each role (summed over its processes) and of the broker (when
        this stack started it): the readings of the steady window (:mod:`bench.steady`)."""
        spent: dict[str, float] = {}
        for role in self.roles:
            spent[role.role] = spent.get(role.role, 0.0) + (cpu_seconds(role.proc.pid) or 0.0)
        if self.broker is not None and self.broker.pid is not None:
            spent["broker"] = cpu_seconds(self.broker.pid) or 0.0
        return spent

    def usage(self) -> Usage:
        """CPU since :meth:`mark` and peak RSS, summed over each role's processes."""
        usage = Usage(window_s=round(time.monotonic() - self._marked, 2) if self._marked else None)
        for role in self.roles:
            spent = (cpu_seconds(role.proc.pid) or role.cpu_base) - role.cpu_base
            usage.cpu_s[role.role] = round(usage.cpu_s.get(role.role, 0.0) + spent, 2)
            rss = peak_rss_mb(role.proc.pid) or 0.0
            usage.rss_mb[role.role] = round(usage.rss_mb.get(role.role, 0.0) + rss, 1)
        own_cpu, own_rss = own_usage()
        usage.cpu_s["loadgen"] = round(own_cpu - self._own_cpu_base, 2)
        usage.rss_mb["loadgen"] = round(own_rss, 1)
        if self.broker is not None and self.broker.pid is not None:
            now = cpu_seconds(self.broker.pid)
            if now is not None:
                usage.broker_cpu_s = round(now - self._broker_cpu_base, 2)
            usage.rss_mb["broker"] = round(peak_rss_mb(self.broker.pid) or 0.0, 1)
        return usage

    async def end_profiles(self) -> dict[str, list[Path]]:
        """End of the measured window: have the profiled roles write their profiles."""
        profiled = [r for r in self.roles if r.profile_path is not None]
        for role in profiled:
            role.proc.send_signal(PROFILE_STOP)
        deadline = time.monotonic() + _PROFILE_WAIT_S
        found: dict[str, list[Path]] = {}
        for role in profiled:
            assert role.profile_path is not None
            while not role.profile_path.exists() and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            if role.profile_path.exists():
                found.setdefault(role.role, []).append(role.profile_path)
        return found

    # -- stopping --------------------------------------------------------------------------------

    async def stop(self) -> None:
        """Client, then roles (SIGTERM together, so their profiles get written), then broker."""
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.close()
            self.client = None
        await asyncio.to_thread(self._stop_roles)
        if self.broker is not None:
            await self.broker.astop()
            self.broker = None

    def _stop_roles(self) -> None:
        for role in self.roles:
            if role.proc.poll() is None:
                role.proc.send_signal(signal.SIGTERM)
        for role in self.roles:
            try:
                role.proc.wait(_STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                role.proc.kill()
                role.proc.wait()


def plugin_env(environ: Mapping[str, str], modules: Sequence[str]) -> dict[str, str]:
    """``KESTREAM_PLUGINS`` and ``PYTHONPATH`` for roles that must load ``modules``.

    The user's own plugin modules stay first; the repository goes on ``PYTHONPATH`` so that the
    bench's modules import whatever directory the harness was started from. Nothing when no
    module is needed, so the other workloads' roles see the user's environment unchanged.
    """
    if not modules:
        return {}
    plugins = [m.strip() for m in environ.get("KESTREAM_PLUGINS", "").split(",") if m.strip()]
    paths = [p for p in environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {
        "KESTREAM_PLUGINS": ",".join(dict.fromkeys([*plugins, *modules])),
        "PYTHONPATH": os.pathsep.join(dict.fromkeys([str(workloads.REPO), *paths])),
    }


def fresh_kafka_listener(security: SecurityFields) -> SaslSslListener | None:
    """The listener ``--kafka`` starts for the environment's security: PLAINTEXT, or SASL_SSL
    with PLAIN for the configured user; anything else needs a broker of the user's own."""
    protocol = security["broker_security_protocol"]
    if protocol is SecurityProtocol.PLAINTEXT:
        return None
    username, password = security["broker_sasl_username"], security["broker_sasl_password"]
    if (
        protocol is not SecurityProtocol.SASL_SSL
        or security["broker_sasl_mechanism"] is not SaslMechanism.PLAIN
        or username is None
        or password is None
    ):
        raise ValueError(
            f"--kafka starts a PLAINTEXT or a SASL_SSL (PLAIN, with a user name and password) "
            f"Kafka; for KESTREAM_BROKER_SECURITY_PROTOCOL={protocol.value} use --broker"
        )
    return SaslSslListener(username=username, password=password.get_secret_value())


async def until_kafka_answers_as_kafka(settings: Settings) -> None:
    """Wait until a fresh Apache Kafka answers ``InitProducerId``.

    Just after start it refuses it for a moment, and kestream's probe then takes it for Tansu
    (workarounds on, idempotence off) in whichever process connects first, here the client,
    while the roles, started later, see Kafka. Measuring that mix would mean nothing.
    """
    deadline = time.monotonic() + _KAFKA_SETTLE_S
    bootstrap = settings.broker or ""
    while (await probe_broker(bootstrap, settings=settings)).kind != "kafka":
        if time.monotonic() > deadline:
            raise TimeoutError(f"Kafka at {bootstrap} still refuses InitProducerId")
        await asyncio.sleep(0.5)


def role_kinds(stack: Stack) -> list[str]:
    """The broker kind each role process detected (from its "started" line)."""
    kinds = []
    for role in stack.roles:
        found = _ROLE_KIND.search(role.log_path.read_text(errors="replace"))
        kinds.append(found.group(1) if found else "?")
    return kinds


def role_errors(stack: Stack, limit: int = 5) -> list[str]:
    """ERROR lines of the roles' logs (read after they stopped: some errors surface only then,
    when a processor's failed task is awaited), distinct, at most ``limit``."""
    found: dict[str, None] = {}
    for role in stack.roles:
        try:
            lines = role.log_path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            if "[ERROR]" in line and "Unclosed AIOKafka" not in line:
                text = line.split("[ERROR]", 1)[1].strip()
                found.setdefault(f"{role.log_path.name}: {text[:240]}", None)
    return list(found)[:limit]


def describe(stack: Stack) -> dict[str, Any]:
    """Where a run happened, for the readable output and RESULTS.md."""
    kinds = sorted({stack.kind, *role_kinds(stack)})
    return {
        "broker": stack.config.broker if stack.config.broker != "external" else stack.bootstrap,
        # More than one kind: the client and the roles disagree about the broker (a bug).
        "broker_kind": "/".join(kinds),
        "executors": stack.config.executors(),
        "workers": 1,
        "via": "webhook" if stack.config.api else "client",
        "layout": stack.config.layout,
        "run_dir": str(stack.config.run_dir),
    }
