"""A kestream role inside the user's own process: :class:`Worker` and :class:`Executor`.

A team whose task code lives in its own service starts a worker there instead of running
``kestream worker`` with ``KESTREAM_PLUGINS``::

    worker = kestream.Worker(plugins=["acme.tasks"])   # settings from KESTREAM_* by default
    worker.run()                                        # until Ctrl-C or SIGTERM

or, inside a running event loop, ``await worker.start()`` ... ``await worker.stop()`` (or
``async with``), or ``worker.attach(app)`` to start and stop it with an existing faust app.
The role is the same one ``kestream worker`` runs (:func:`~kestream.runtime.faust_app.start_role`),
sharing the work with the other workers through their consumer group, and it publishes its
member record as ``kestream worker`` does (a worker's says its group, which executors read to
apply a ``workerGroup.fallback``).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, cast

from kestream.plugins.loading import load_plugins
from kestream.settings import Settings, get_settings

if TYPE_CHECKING:
    from kestream.runtime.members import MemberPublisher

__all__ = ["Executor", "Worker"]


class _EmbeddedRole:
    """One role (its flows table and processor) on the broker of ``settings``."""

    role: ClassVar[str]

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        plugins: Sequence[str] = (),
        broker: str | None = None,
    ) -> None:
        """``plugins``: modules to import besides ``KESTREAM_PLUGINS`` and the entry points;
        ``broker``: bootstrap servers, instead of ``settings.broker`` (``KESTREAM_BROKER``)."""
        self.settings = settings or get_settings()
        self.plugins = tuple(plugins)
        self.broker = broker
        self._parts: list[Any] = []
        self._publisher: MemberPublisher | None = None
        self._failed: asyncio.Future[BaseException] | None = None

    @property
    def running(self) -> bool:
        return bool(self._parts)

    async def start(self) -> None:
        """Import the plugins, connect, and start the role; returns once it runs."""
        from kestream.runtime.context import connect
        from kestream.runtime.faust_app import role_publisher, start_role
        from kestream.runtime.health import Health

        if self._parts:
            return
        load_plugins(self.settings, self.plugins)
        ctx = await connect(self.settings, self.broker)
        self._failed = asyncio.get_running_loop().create_future()
        health = Health(self.role)
        self._parts = await start_role(self.role, ctx, on_failure=self._on_failure, health=health)
        self._publisher = role_publisher(ctx, self.role, health, self._parts)
        await self._publisher.start()

    async def stop(self) -> None:
        """Stop the role (running task runs get their drain time, as in ``kestream worker``)."""
        parts, self._parts = self._parts, []
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            await publisher.stop()
        for part in reversed(parts):
            await part.stop()

    async def wait(self) -> None:
        """Return when the role fails (raising its error); a stopped role never returns."""
        if self._failed is None:
            raise RuntimeError(f"the {self.role} is not started")
        raise await self._failed

    def run(self) -> None:
        """Start, run until SIGINT or SIGTERM (or a failure, raised), then stop."""
        asyncio.run(self._run_until_signal())

    def attach(self, app: Any) -> None:
        """Start and stop with the faust ``app``, as one of its services."""
        from mode import Service

        role = self

        class EmbeddedRoleService(Service):
            async def on_start(self) -> None:
                await role.start()

            async def on_stop(self) -> None:
                await role.stop()

        # faust accepts a service instance (App._prepare_subservice), though typed for classes.
        app.service(cast(Any, EmbeddedRoleService()))

    async def __aenter__(self) -> _EmbeddedRole:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _on_failure(self, exc: BaseException) -> None:
        if self._failed is not None and not self._failed.done():
            self._failed.set_result(exc)

    async def _run_until_signal(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        failure = asyncio.ensure_future(self.wait())
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({failure, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            failure.cancel()
            await self.stop()
        if failure.done() and not failure.cancelled():
            with contextlib.suppress(asyncio.CancelledError):
                failure.result()


class Worker(_EmbeddedRole):
    """Runs task runs in this process, with the task modules of ``plugins`` loaded."""

    role = "worker"


class Executor(_EmbeddedRole):
    """One executor stream processor in this process."""

    role = "executor"
