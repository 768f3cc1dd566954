"""faust apps for kestream's roles: the process model, lifecycle and web server of each role.

faust's settings are built here explicitly from kestream's :class:`~kestream.settings.Settings`,
never from faust's own environment variables (``BROKER_URL``, ``WEB_PORT``, ...). The hot loops
are kestream's own services (:mod:`kestream.runtime.executor_service`, the worker service) on
aiokafka, hosted by the faust worker: faust's per-event stream machinery costs about ten times a
plain consumer loop (DESIGN.md section 5), and the executor needs batched reads and its own
changelog format.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import faust
from mode import Service

from kestream.executor.flow_registry import FlowRegistry
from kestream.runtime.context import BrokerContext, connect
from kestream.runtime.process import tune_gc
from kestream.settings import SecurityProtocol, Settings, get_settings

log = logging.getLogger("kestream.app")


def faust_settings(settings: Settings, role: str) -> dict[str, Any]:
    """faust.App keyword arguments, from kestream's settings only."""
    if not settings.broker:
        raise SystemExit(
            "KESTREAM_BROKER is not set: start the roles with `kestream standalone` (which starts "
            "the embedded broker), or point KESTREAM_BROKER at Kafka"
        )
    servers = ";".join(f"kafka://{server}" for server in settings.broker.split(","))
    options: dict[str, Any] = {
        "broker": servers,
        "datadir": _process_dir(settings, role),
        # The roles' own /metrics and /health endpoints come with the API issue; until then the
        # faust web server stays off (faust also refuses port 0 for "any free port").
        "web_enabled": False,
        "broker_session_timeout": settings.session_timeout_ms / 1000,
        "broker_heartbeat_interval": settings.heartbeat_interval_ms / 1000,
        "producer_linger": settings.producer_linger_ms / 1000,
        "consumer_auto_offset_reset": "earliest",
        "topic_partitions": 1,
    }
    if settings.broker_security_protocol is not SecurityProtocol.PLAINTEXT:
        options["broker_credentials"] = _credentials(settings)
    return options


def _process_dir(settings: Settings, role: str) -> str:
    """A directory of this process's own for faust (it keeps no state there: kestream's state is
    in the changelog topic), removed when the process exits."""
    base = Path(settings.data_dir)
    base.mkdir(parents=True, exist_ok=True)
    path = tempfile.mkdtemp(prefix=f"faust-{role}-", dir=base)
    atexit.register(shutil.rmtree, path, True)
    return path


def _credentials(settings: Settings) -> Any:
    if settings.broker_sasl_mechanism is not None:
        password = settings.broker_sasl_password
        return faust.SASLCredentials(
            username=settings.broker_sasl_username,
            password=password.get_secret_value() if password else None,
            mechanism=settings.broker_sasl_mechanism.value,
        )
    import ssl

    context = ssl.create_default_context(cafile=settings.broker_ssl_cafile)
    if settings.broker_ssl_certfile:
        context.load_cert_chain(settings.broker_ssl_certfile, settings.broker_ssl_keyfile)
    return faust.SSLCredentials(context)


class RoleService(Service):
    """Hosts one of kestream's processors inside a faust worker."""

    def __init__(self, role: str, settings: Settings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.role = role
        self.settings = settings
        self.parts: list[Any] = []
        self._crashing: asyncio.Future[Any] | None = None

    async def on_start(self) -> None:
        for noisy in ("faust", "mode", "aiokafka", "kafka"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        tune_gc()
        ctx = await connect(self.settings)
        if ctx.kind == "tansu":
            from kestream.runtime.tansu_compat import patch_faust_for_tansu

            patch_faust_for_tansu()
        self.parts = await start_role(self.role, ctx, on_failure=self._failed)
        log.info("%s started (broker %s, %s)", self.role, ctx.bootstrap, ctx.kind)

    def _failed(self, exc: BaseException) -> None:
        """A processor failed: crash the faust worker, so the process exits and is replaced."""
        self._crashing = asyncio.ensure_future(self.crash(exc))

    async def on_stop(self) -> None:
        for part in reversed(self.parts):
            await part.stop()


async def start_role(
    role: str, ctx: BrokerContext, on_failure: Callable[[BaseException], None] | None = None
) -> list[Any]:
    """Start the flows table and the processor of ``role``; returns them, in start order."""
    from kestream.runtime.executor_service import ExecutorService
    from kestream.runtime.flows_table import FlowsTable
    from kestream.runtime.worker_service import WorkerService

    registry = FlowRegistry()
    table = FlowsTable(ctx, registry)
    await table.start()
    await table.loaded.wait()
    processor: Any
    if role == "executor":
        # Held executions are retried on every loop pass, so no flows-table listener is needed.
        processor = ExecutorService(ctx, registry, on_failure=on_failure)
    elif role == "worker":
        processor = WorkerService(ctx, registry)
    else:
        raise ValueError(f"unknown role {role!r}")
    await processor.start()
    return [table, processor]


def make_app(role: str, settings: Settings | None = None) -> faust.App:
    """The faust app of one role (``faust -A topologies.<role> worker`` runs it)."""
    settings = settings or get_settings()
    app = faust.App(f"{settings.topic_prefix}{role}-app", **faust_settings(settings, role))
    # faust accepts an instance too (App._prepare_subservice), though it is typed for classes.
    app.service(cast(Any, RoleService(role, settings)))
    return app
