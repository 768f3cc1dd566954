"""faust apps for kestream's roles: the process model, lifecycle and web server of each role.

faust's settings are built here explicitly from kestream's :class:`~kestream.settings.Settings`,
never from faust's own environment variables (``BROKER_URL``, ``WEB_PORT``, ...). The hot loops
are kestream's own services (:mod:`kestream.runtime.executor_service`, the worker service) on
aiokafka, hosted by the faust worker: faust's per-event stream machinery costs about ten times a
plain consumer loop (DESIGN.md section 5), and the executor needs batched reads and its own
changelog format.

faust's own Kafka side (its consumer, consumer group, producer and table recovery) is off
(:class:`RoleBoot`): kestream's services open their own clients, and faust's group join alone
held every role's start back by half a session timeout on the embedded broker.

One process may host several roles (``kestream roles executor,worker,scheduler,api``, what
``kestream standalone`` starts by default): each role keeps its own parts, health and member
record; they start side by side, and a failure of any of them ends the process, which the
supervisor starts again: the failure is logged naming the role, and the role is written where
the supervisor reads it (:func:`~kestream.runtime.restarts.record_failed_role`). A role that
fails to start fails the process at once (the others' starts are cancelled); at the stop, each
role's parts are stopped on their own, so that one failing stop skips no other (the worker's
drain, the executor's last flush).
"""

from __future__ import annotations

import asyncio
import atexit
import importlib
import logging
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, cast

import faust
from faust.app.base import BootStrategy
from mode import Service

from kestream.api.auth import bind_refusal
from kestream.api.guard import Access, install_guard
from kestream.executor.flow_registry import FlowRegistry
from kestream.plugins.loading import PluginError, load_plugins
from kestream.runtime.aio import cancel_and_wait
from kestream.runtime.context import BrokerContext, connect
from kestream.runtime.crash_metrics import expose_supervisor_crashes
from kestream.runtime.embedded_broker import free_port
from kestream.runtime.health import Check, Health, LoopMonitor, RolePart, flows_table_check
from kestream.runtime.kafka_connection import client_options
from kestream.runtime.members import MemberBoard, MemberPublisher
from kestream.runtime.metrics import Metrics, process_metrics
from kestream.runtime.ops_routes import (
    HEALTH_PATHS,
    METRICS_PATH,
    metrics_middleware,
    ops_routes,
)
from kestream.runtime.process import (
    broker_on_stdin,
    broker_wait_s,
    process_age_s,
    read_broker_from_stdin,
    tune_gc,
)
from kestream.runtime.restarts import RoleStepsDown, record_failed_role
from kestream.runtime.supervision import supervised_children
from kestream.settings import SecurityProtocol, Settings, get_settings

if TYPE_CHECKING:  # the API's stack is imported by the processes that host the API only
    from kestream.api.handle import ApiHandle

log = logging.getLogger("kestream.app")

#: How often a starting process looks whether all its roles are ready, to log when they are.
_READY_POLL_S = 0.05

ROLES = ("executor", "worker", "scheduler", "api")


def parse_roles(spec: str) -> tuple[str, ...]:
    """The roles of a process from ``executor`` or ``executor,worker,scheduler,api``: known
    roles, each once, in :data:`ROLES` order (the order they are listed in the logs)."""
    named = [part.strip() for part in spec.split(",") if part.strip()]
    unknown = sorted(set(named) - set(ROLES))
    if not named or unknown:
        raise ValueError(f"unknown role {spec!r} (roles: {', '.join(ROLES)})")
    if len(named) != len(set(named)):
        raise ValueError(f"a role is named twice in {spec!r}")
    return tuple(role for role in ROLES if role in named)


def faust_settings(settings: Settings, role: str) -> dict[str, Any]:
    """faust.App keyword arguments, from kestream's settings only (``role``: one role or a
    comma-separated list, as :func:`parse_roles` reads it).

    Raises SystemExit, before anything listens, when the web server would be open to the
    network (:func:`~kestream.api.auth.bind_refusal`) or no broker is named.
    """
    refusal = bind_refusal(settings)
    if refusal is not None:
        raise SystemExit(refusal)
    if not settings.broker:
        raise SystemExit(
            "KESTREAM_BROKER is not set: start the roles with `kestream standalone` (which starts "
            "the embedded broker), or point KESTREAM_BROKER at Kafka"
        )
    servers = ";".join(f"kafka://{server}" for server in settings.broker.split(","))
    options: dict[str, Any] = {
        # faust opens no Kafka client of its own (RoleBoot), but wants a broker named.
        "broker": servers,
        "datadir": _process_dir(settings, role),
        # Every role serves /metrics and /health on faust's web server: the API on
        # KESTREAM_WEB_PORT, the others on a free port they log and publish (faust refuses 0).
        "web_enabled": True,
        "web_bind": settings.web_host,
        "web_host": settings.web_host,
        "web_port": (
            settings.web_port if "api" in parse_roles(role) else free_port(settings.web_host)
        ),
        "web_application_options": {"client_max_size": settings.api_max_body_bytes},
        "web_stats_enabled": False,
        "web_graph_enabled": False,
        "web_router_enabled": False,
        "web_tables_enabled": False,
        "web_metrics_enabled": False,
        "topic_partitions": 1,
    }
    if settings.broker_security_protocol is not SecurityProtocol.PLAINTEXT:
        options["broker_credentials"] = _credentials(settings)
    return options


def _process_dir(settings: Settings, role: str) -> str:
    """A directory of this process's own for faust (it keeps no state there: kestream's state is
    in the changelog topic), removed when the process exits."""
    base = settings.data_path
    base.mkdir(parents=True, exist_ok=True)
    path = tempfile.mkdtemp(prefix=f"faust-{role.replace(',', '-')}-", dir=base)
    atexit.register(shutil.rmtree, path, True)
    return path


def _credentials(settings: Settings) -> Any:
    """faust's credentials for the security :func:`client_options` gives every other client.

    faust derives the protocol from the credentials' type: SASL with a TLS context is SASL_SSL,
    without one SASL_PLAINTEXT; SSL credentials are SSL.
    """
    options = client_options(settings)
    context = options.get("ssl_context")
    if "sasl_mechanism" in options:
        return faust.SASLCredentials(
            username=options["sasl_plain_username"],
            password=options["sasl_plain_password"],
            mechanism=options["sasl_mechanism"],
            ssl_context=context,
        )
    return faust.SSLCredentials(context)


@dataclass
class StartPhases:
    """Where a role process's start-up time went (seconds)."""

    #: From the process's start to its role service's: interpreter, imports, faust's start
    #: and any wait for the broker's address (None where the process's age is unknown).
    booted: float | None
    #: Identifying the broker and creating the topics.
    connect: float
    #: Starting the roles' parts side by side (tables read, consumer groups joined).
    roles: float
    #: When the parts were started: what follows is waiting for assignments and recovery.
    since: float = field(default_factory=time.monotonic)
    #: Of ``booted``, the wait for the broker's address (standalone's children start before
    #: its broker: :func:`~kestream.runtime.process.read_broker_from_stdin`).
    broker_wait: float | None = None

    def describe(self) -> str:
        joining = time.monotonic() - self.since
        spent = self.connect + self.roles + joining
        phases = [
            f"broker and topics {self.connect:.2f} s",
            f"roles' parts and group joins {self.roles:.2f} s",
            f"then ready after {joining:.2f} s",
        ]
        if self.booted is None:
            return f"{spent:.2f} s after its service started ({', '.join(phases)})"
        waited = self.broker_wait or 0.0
        phases.insert(0, f"interpreter, imports and faust {self.booted - waited:.2f} s")
        if self.broker_wait is not None:
            phases.insert(1, f"waiting for the broker {waited:.2f} s")
        return f"{spent + self.booted:.2f} s after the process started ({', '.join(phases)})"


class _HostedRole:
    """One role of a :class:`RoleService`: its health (what its member record says), its parts
    and its member publisher."""

    def __init__(self, role: str, health: Health) -> None:
        self.role = role
        self.health = health
        self.parts: list[Any] = []
        self.publisher: MemberPublisher | None = None

    async def stop(self) -> None:
        """Stop the publisher, then the parts in reverse start order, each on its own: a part
        whose stop fails is logged and the next is stopped all the same."""
        publisher, self.publisher = self.publisher, None
        if publisher is not None:
            await _stop_logged(f"the {self.role} role's member publisher", publisher.stop)
        for part in reversed(self.parts):
            await _stop_logged(f"the {self.role} role's {type(part).__name__}", part.stop)


async def _stop_logged(what: str, stop: Callable[[], Awaitable[Any]]) -> None:
    try:
        await stop()
    except Exception:
        log.exception("stopping %s failed", what)


class RoleService(Service):
    """Hosts kestream's processors of one or more roles inside a faust worker, with their health
    and metrics.

    Every hosted role publishes its status (ready, live, ops port) to the members topic under its
    own key; the API role also reads that topic, so its ``/health/ready`` answers for the whole
    installation. The process's own ``/health/*`` cover every part of every role it hosts.
    """

    def __init__(self, role: str, settings: Settings, port: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.role = role
        self.roles = parse_roles(role)
        self.settings = settings
        self.port = port
        self.metrics = process_metrics()
        if "api" in self.roles:  # the supervisor's crash counts, when standalone started this API
            expose_supervisor_crashes(self.metrics)
        self.monitor = LoopMonitor(metrics=self.metrics)
        self.health = Health(role, [self.monitor])
        # One role: its health is the process's. Several: each its own, the process's has all.
        self.hosted = [
            _HostedRole(r, self.health if len(self.roles) == 1 else Health(r, [self.monitor]))
            for r in self.roles
        ]
        self.board = MemberBoard() if "api" in self.roles else None
        self.api: ApiHandle | None = None
        if "api" in self.roles:
            from kestream.api.handle import ApiHandle

            self.api = ApiHandle(settings, board=self.board)
        self._routes_installed = False
        self._crashing: asyncio.Future[Any] | None = None
        self._ready_log: asyncio.Task[None] | None = None

    @property
    def parts(self) -> list[Any]:
        """Every started part, role by role, in start order."""
        return [part for hosted in self.hosted for part in hosted.parts]

    def install_routes(self, web_app: Any) -> None:
        """faust's web server is being set up: add /metrics, /health/* and (API) the API.

        Every route is behind the guard (credentials unless granted otherwise): the health
        routes are open, ``/metrics`` is as ``KESTREAM_METRICS_AUTH`` says. faust sets its
        server up more than once (each call of ``init_server``): the routes and middlewares go
        in once, or every request would be counted and handled several times.
        """
        if self._routes_installed:
            return
        self._routes_installed = True
        web_app.middlewares.append(metrics_middleware(self.metrics))
        guard = install_guard(web_app, self.settings)
        web_app.router.add_routes(
            # The API answers for the installation, and under standalone for its supervisor.
            ops_routes(
                self.metrics,
                self.health,
                self.board,
                supervised_children() if self.board is not None else None,
            )
        )
        guard.grant(HEALTH_PATHS, Access.OPEN)
        metrics_access = Access.CREDENTIALS if self.settings.metrics_auth else Access.OPEN
        guard.grant([METRICS_PATH], metrics_access)
        if self.api is not None:
            from kestream.api.app import install_api

            install_api(web_app, self.api)

    async def on_start(self) -> None:
        for noisy in ("faust", "mode", "aiokafka", "kafka"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        tune_gc()
        booted = process_age_s()  # interpreter, imports and faust's start before this service's
        began = time.monotonic()
        ctx = await connect(self.settings)
        connected = time.monotonic()
        await self.monitor.start()
        # Side by side: each role's group join and recovery overlaps the others'.
        await self._start_all(ctx)
        if self.board is not None:
            await self.board.start(ctx)
        phases = StartPhases(
            booted, connected - began, time.monotonic() - connected, broker_wait=broker_wait_s()
        )
        self._ready_log = asyncio.create_task(self._log_when_ready(phases), name="ready-log")
        log.info(
            "%s started (broker %s, %s); /metrics and /health on http://%s:%d",
            " and ".join(self.roles),
            ctx.bootstrap,
            ctx.kind,
            self.settings.web_host,
            self.port,
        )

    async def _start_all(self, ctx: BrokerContext) -> None:
        """Start every hosted role at once. The first that fails fails the start without
        waiting for the others (one may be recovering for long, or hang): their starts are
        cancelled, each failure is logged naming its role, and the first is raised; what did
        start is stopped by :meth:`on_stop`."""
        starts = {
            asyncio.create_task(self._start_hosted(h, ctx), name=f"start-{h.role}"): h.role
            for h in self.hosted
        }
        try:
            done, pending = await asyncio.wait(starts, return_when=asyncio.FIRST_EXCEPTION)
        except asyncio.CancelledError:
            for task in starts:
                task.cancel()
            await asyncio.wait(starts)
            raise
        failed = [t for t in done if not t.cancelled() and t.exception() is not None]
        if not failed:
            return
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
        failed += [t for t in pending if not t.cancelled() and t.exception() is not None]
        for task in failed:
            log.error("the %s role failed to start", starts[task], exc_info=task.exception())
        record_failed_role(starts[failed[0]])
        raise cast(BaseException, failed[0].exception())

    async def _start_hosted(self, hosted: _HostedRole, ctx: BrokerContext) -> None:
        on_failure = partial(self._failed, hosted.role)
        hosted.parts = await start_role(
            hosted.role, ctx, on_failure=on_failure, health=hosted.health, api=self.api
        )
        if hosted.health is not self.health:  # all but the shared loop monitor, named by role
            self.health.add(*(RolePart(hosted.role, p) for p in hosted.health.parts[1:]))
        hosted.publisher = role_publisher(
            ctx, hosted.role, hosted.health, hosted.parts, port=self.port, metrics=self.metrics
        )
        await hosted.publisher.start()

    async def _log_when_ready(self, phases: StartPhases) -> None:
        """Log once how long this process took to be ready (its partitions assigned and state
        recovered), and where the time went: what start-up measurements read."""
        while not self.health.ready()[0]:
            await asyncio.sleep(_READY_POLL_S)
        log.info("%s ready: %s", " and ".join(self.roles), phases.describe())

    def _failed(self, role: str, exc: BaseException) -> None:
        """A processor of ``role`` failed: say which, and crash the faust worker, so the
        process exits and is replaced."""
        log.error("the %s role failed; the process stops", role, exc_info=exc)
        record_failed_role(role, exc.cause if isinstance(exc, RoleStepsDown) else None)
        self._crashing = asyncio.ensure_future(self.crash(exc))

    async def on_stop(self) -> None:
        """Stop the API first (no new work comes in), then the other roles side by side: the
        worker's drain and the executor's last flush overlap, within one stop grace."""
        await cancel_and_wait(self._ready_log)
        if self.board is not None:
            await _stop_logged("the member board", self.board.stop)
        api = [h for h in self.hosted if h.role == "api"]
        for hosted in api:
            await hosted.stop()
        others = [h for h in reversed(self.hosted) if h.role != "api"]
        await asyncio.gather(*(hosted.stop() for hosted in others))
        await self.monitor.stop()


async def start_role(
    role: str,
    ctx: BrokerContext,
    on_failure: Callable[[BaseException], None] | None = None,
    *,
    health: Health | None = None,
    api: ApiHandle | None = None,
) -> list[Any]:
    """Start what ``role`` runs; returns the parts to stop, in start order.

    The executor, the worker and the scheduler each get a flows table and their processor; the
    API's service holds its own (through its client). Parts that say whether they are ready are
    added to ``health``. The process is first marked non-dumpable, so that scripts (run under
    the same user) cannot read its secrets from ``/proc`` (:mod:`kestream.runtime.secrecy`).
    """
    from kestream.runtime.kv_table import KVTablePart
    from kestream.runtime.secrecy import make_non_dumpable

    make_non_dumpable()
    health = health or Health(role)
    if role == "scheduler":
        return await _start_table_and_processor(role, ctx, on_failure, health)
    kv = await KVTablePart.start(ctx)  # kv() in the executor, the KV tasks, the API's KV routes
    try:
        parts = await _start_role_parts(role, ctx, on_failure, health, api)
    except BaseException:
        await kv.stop()
        raise
    return [kv, *parts]


async def _start_role_parts(
    role: str,
    ctx: BrokerContext,
    on_failure: Callable[[BaseException], None] | None,
    health: Health,
    api: ApiHandle | None,
) -> list[Any]:
    if role == "api":
        from kestream.api.service import ApiService
        from kestream.runtime.triggers_table import TriggersTable

        triggers = TriggersTable(ctx)
        await triggers.start()
        try:
            service = await ApiService.start(ctx)
        except BaseException:
            await triggers.stop()
            raise
        if api is not None:
            api.service = service
            api.triggers = triggers
        health.add(
            flows_table_check(service.client.flows),
            Check(
                "index",
                lambda: service.index_ready,
                live=lambda: service.live,
                detail=service.health_detail,
            ),
        )
        return [triggers, service]
    return await _start_table_and_processor(role, ctx, on_failure, health)


async def _start_table_and_processor(
    role: str,
    ctx: BrokerContext,
    on_failure: Callable[[BaseException], None] | None,
    health: Health,
) -> list[Any]:
    from kestream.runtime.flows_table import FlowsTable

    registry = FlowRegistry()
    table = FlowsTable(ctx, registry)
    try:
        await table.start()
        await table.loaded.wait()
        processor = await _start_processor(role, ctx, registry, table, on_failure)
    except BaseException:
        await table.stop()
        raise
    health.add(flows_table_check(table), processor)
    return [table, processor]


def role_publisher(
    ctx: BrokerContext,
    role: str,
    health: Health,
    parts: list[Any],
    *,
    port: int | None = None,
    metrics: Metrics | None = None,
) -> MemberPublisher:
    """The member publisher of a role started by :func:`start_role` (``parts`` its parts): a
    worker's record says its group and task types, which executors route and fall back by."""
    worker = parts[-1] if role == "worker" else None
    return MemberPublisher(
        ctx, role, health, port=port, metrics=metrics,
        group=worker.group if worker is not None else None,
        task_types=sorted(worker.task_types) if worker is not None else (),
    )  # fmt: skip


async def _start_processor(
    role: str,
    ctx: BrokerContext,
    registry: FlowRegistry,
    table: Any,
    on_failure: Callable[[BaseException], None] | None,
) -> Any:
    # Each role's processor only: a process without the worker (an executor alone) skips the
    # worker's modules, and the scheduler's engine under them.
    from kestream.runtime.local_handoff import connect

    processor: Any
    if role == "executor":
        from kestream.runtime.executor_service import ExecutorService

        # Held executions are retried on every loop pass, so no flows-table listener is needed.
        processor = ExecutorService(ctx, registry, on_failure=on_failure)
    elif role == "worker":
        from kestream.runtime.worker_service import WorkerService

        processor = WorkerService(ctx, registry, on_failure=on_failure)
    elif role == "scheduler":
        from kestream.runtime.scheduler_service import SchedulerService

        processor = SchedulerService(ctx, table, on_failure=on_failure)
    else:
        raise ValueError(f"unknown role {role!r}")
    await processor.start()
    connect(ctx, role, processor)  # the executor and worker of one process: local hand-off
    return processor


#: What :func:`start_role` imports for each role when it starts it (the API's stack besides).
_ROLE_MODULES = {
    "executor": ("kestream.runtime.executor_service", "kestream.runtime.local_handoff"),
    "worker": ("kestream.runtime.worker_service", "kestream.runtime.local_handoff"),
    "scheduler": ("kestream.runtime.scheduler_service",),
    "api": ("kestream.api.service", "kestream.api.app", "kestream.runtime.triggers_table"),
}
_COMMON_MODULES = (
    "kestream.runtime.kv_table",
    "kestream.runtime.flows_table",
    "kestream.runtime.secrecy",
)


def preload(roles: tuple[str, ...]) -> None:
    """Import now what starting ``roles`` will import: what a process does while it waits for
    its broker (:func:`~kestream.runtime.process.read_broker_from_stdin`), so that its start
    does not. The modules stay those of its roles: a process without the API skips its stack."""
    for name in (*_COMMON_MODULES, *(m for role in roles for m in _ROLE_MODULES[role])):
        importlib.import_module(name)


class RoleBoot(BootStrategy):
    """faust's start-up without its Kafka side: no faust consumer (nor its consumer group, whose
    first join waits half a session timeout on the embedded broker), producer, topic conductor or
    table recovery. kestream's services open their own aiokafka clients; faust gives the process
    model and the web server."""

    enable_kafka = False


class RoleApp(faust.App):
    """A faust app that lets its role service add routes when the web server is set up."""

    BootStrategy = RoleBoot
    role_service: RoleService | None = None

    def on_webserver_init(self, web: Any) -> None:
        if self.role_service is not None:
            self.role_service.install_routes(web.web_app)


def make_app(role: str, settings: Settings | None = None) -> faust.App:
    """The faust app of one role, or of several in one process (``executor,worker,scheduler,api``;
    ``faust -A topologies.<role> worker`` runs one)."""
    roles = parse_roles(role)
    if settings is None and broker_on_stdin():  # started by standalone before its broker
        preload(roles)
        read_broker_from_stdin()
    settings = settings or get_settings()
    try:
        load_plugins(settings)  # before any flow is read: flows may use the plugins' task types
    except PluginError as exc:
        raise SystemExit(str(exc)) from None
    spec = ",".join(roles)
    options = faust_settings(settings, spec)
    name = roles[0] if len(roles) == 1 else "roles"
    app = RoleApp(f"{settings.topic_prefix}{name}-app", **options)
    service = RoleService(spec, settings, port=options["web_port"])
    app.role_service = service
    # faust accepts an instance too (App._prepare_subservice), though it is typed for classes.
    app.service(cast(Any, service))
    return app
