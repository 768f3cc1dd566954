"""``kestream standalone``: one machine, every role, stopped together.

Starts the embedded broker when ``KESTREAM_BROKER`` is unset, deploys the flows of a directory,
then runs one process per role instance (``KESTREAM_EXECUTOR_STREAM_THREADS`` executor processes,
a worker, the scheduler and the API), each a faust worker as ``kestream executor`` (``worker``,
``scheduler``, ``api``) would start it.
Children are started so that they die with the supervisor, even if it is killed outright; on
Ctrl-C (or SIGTERM) it stops the children, then the broker it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

from kestream.runtime.embedded_broker import EmbeddedBroker, die_with_parent
from kestream.runtime.kafka_connection import embedded_refusal
from kestream.settings import Settings

log = logging.getLogger("kestream.standalone")

_STOP_GRACE_S = 15.0


def role_command(role: str) -> list[str]:
    """The command line of one role process."""
    return [sys.executable, "-m", "kestream.cli", role]


class Supervisor:
    def __init__(self, settings: Settings, flows_dir: Path | None) -> None:
        self.settings = settings
        self.flows_dir = flows_dir
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.broker: EmbeddedBroker | None = None

    async def run(self) -> int:
        """Run until Ctrl-C or a child's exit; 2 without starting anything when the settings
        would open the API to the network (:func:`~kestream.api.auth.bind_refusal`) or ask the
        embedded broker for security it lacks (:func:`embedded_refusal`)."""
        from kestream.api.auth import bind_refusal
        from kestream.runtime.secrecy import make_non_dumpable

        make_non_dumpable()  # its environment holds the children's secrets too
        refusal = bind_refusal(self.settings) or embedded_refusal(self.settings)
        if refusal is not None:
            log.error("%s", refusal)
            return 2
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            bootstrap = await self._broker()
            await self._deploy(bootstrap)
            self._spawn(bootstrap)
            log.info(
                "standalone running: %d executor process(es), a worker, the scheduler and the API "
                "(http://%s:%d/api/v1/%s/), broker %s. Ctrl-C stops.",
                self.settings.stream_threads,
                self.settings.web_host,
                self.settings.web_port,
                self.settings.tenant,
                bootstrap,
            )
            return await self._watch(stop)
        finally:
            self._stop_children()
            if self.broker is not None:
                await self.broker.astop()

    async def _broker(self) -> str:
        if self.settings.broker:
            return self.settings.broker
        self.broker = EmbeddedBroker()
        await self.broker.astart()
        log.warning(
            "embedded broker at %s is memory-only: executions do not survive stopping it "
            "(set KESTREAM_BROKER to use Kafka)",
            self.broker.bootstrap,
        )
        return self.broker.bootstrap

    async def _deploy(self, bootstrap: str) -> None:
        if self.flows_dir is None:
            return
        from kestream.client import Client

        settings = self.settings.model_copy(update={"broker": bootstrap})
        async with await Client.connect(settings) as client:
            for path in sorted(flow_files(self.flows_dir)):
                flow = await client.deploy(path.read_text())
                log.info("deployed %s.%s revision %s", flow.namespace, flow.id, flow.revision)

    def _spawn(self, bootstrap: str) -> None:
        env = {**os.environ, "KESTREAM_BROKER": bootstrap}
        roles = ["executor"] * self.settings.stream_threads + ["worker", "scheduler", "api"]
        for role in roles:
            child = subprocess.Popen(role_command(role), env=env, preexec_fn=die_with_parent())
            self.children.append((role, child))

    async def _watch(self, stop: asyncio.Event) -> int:
        while not stop.is_set():
            for role, child in self.children:
                if child.poll() is not None:
                    log.error(
                        "%s process %d exited with %s; stopping", role, child.pid, child.returncode
                    )
                    return 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
        return 0

    def _stop_children(self) -> None:
        for _, child in self.children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for role, child in self.children:
            try:
                child.wait(_STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                log.warning("%s process %d did not stop in time; killing it", role, child.pid)
                child.kill()
                child.wait()


def flow_files(directory: Path) -> list[Path]:
    """The flow files of a directory (``*.yaml`` and ``*.yml``, recursively)."""
    return [p for p in directory.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file()]
