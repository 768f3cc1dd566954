"""Which processes ``kestream standalone`` runs, what one role process starts, and how a process
that hosts several roles starts them and reports their health."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kestream.runtime import faust_app
from kestream.runtime.context import for_broker
from kestream.runtime.embedded_broker import EMBEDDED_CLUSTER_ID, EmbeddedBroker
from kestream.runtime.faust_app import RoleService, make_app, parse_roles
from kestream.runtime.health import Check, Health
from kestream.runtime.kafka import make_consumer
from kestream.runtime.restarts import FAILED_ROLE_FILE_ENV, RoleStepsDown
from kestream.runtime.supervisor import RoleProcess, role_command, role_slots
from kestream.runtime.tansu_compat import BrokerTraits
from kestream.settings import Settings

SHARED = "executor,worker,scheduler,api"


def _settings(tmp_path: Path, **fields: Any) -> Settings:
    return Settings(broker="127.0.0.1:1", data_dir=str(tmp_path), **fields)


# -- the supervisor's layout -------------------------------------------------------------------


def test_by_default_one_process_hosts_the_worker_scheduler_api_and_first_executor(
    tmp_path: Path,
) -> None:
    assert role_slots(_settings(tmp_path, executor_stream_threads=1)) == [
        ("executor+worker+scheduler+api", SHARED)
    ]
    # Stream threads still count executor processes: the second is a process of its own.
    assert role_slots(_settings(tmp_path, executor_stream_threads=3)) == [
        ("executor-1+worker+scheduler+api", SHARED),
        ("executor-2", "executor"),
        ("executor-3", "executor"),
    ]


def test_process_per_role_keeps_every_role_instance_apart(tmp_path: Path) -> None:
    settings = _settings(tmp_path, executor_stream_threads=2, standalone_process_per_role=True)
    assert role_slots(settings) == [
        ("executor-1", "executor"),
        ("executor-2", "executor"),
        ("worker", "worker"),
        ("scheduler", "scheduler"),
        ("api", "api"),
    ]


def test_a_shared_process_runs_the_roles_command_and_counts_for_each_role() -> None:
    assert role_command(SHARED) == [sys.executable, "-m", "kestream.cli", "roles", SHARED]
    assert role_command("executor") == [sys.executable, "-m", "kestream.cli", "executor"]
    slot = RoleProcess("executor+worker+scheduler+api", SHARED, {})
    assert slot.roles == ("executor", "worker", "scheduler", "api")
    assert RoleProcess("executor-2", "executor", {}).roles == ("executor",)


def test_roles_are_read_in_a_fixed_order_and_checked() -> None:
    assert parse_roles("api, worker,executor") == ("executor", "worker", "api")
    assert parse_roles("scheduler") == ("scheduler",)
    for bad in ("", "executor,broker", "worker,worker"):
        with pytest.raises(ValueError):
            parse_roles(bad)


# -- what a role process starts ----------------------------------------------------------------


def test_faust_opens_no_kafka_client_of_its_own(tmp_path: Path) -> None:
    """faust's consumer group join held every role's start back; kestream's services open their
    own clients, so faust starts its web server and nothing that talks to Kafka."""
    app = make_app("executor,worker", _settings(tmp_path))
    started = list(app.boot_strategy.server())
    started_ids = {id(service) for service in started}  # by identity: some are mappings
    assert id(app.web) in started_ids
    for kafka_side in (app.consumer, app.producer, app.topics, app.tables):
        assert id(kafka_side) not in started_ids, kafka_side


def test_the_api_port_goes_to_the_process_that_hosts_the_api(tmp_path: Path) -> None:
    settings = _settings(tmp_path, web_port=18080)
    assert faust_app.faust_settings(settings, SHARED)["web_port"] == 18080
    assert faust_app.faust_settings(settings, "executor")["web_port"] != 18080


async def test_only_the_embedded_broker_gets_a_short_session(tmp_path: Path) -> None:
    """A Tansu of one's own keeps the usual 10 s, as Kafka does: its groups may hold other
    machines' members; the roles on the embedded broker get 4 s (Tansu answers a first join
    after half the session) with the usual 1 s heartbeat, unless one is set."""
    settings = _settings(tmp_path)
    assert settings.session_timeout() == 10_000
    own = BrokerTraits(kind="tansu", cluster_id="tansu_cluster", idempotent_producer=False)
    assert for_broker(settings, own).session_timeout() == 10_000
    embedded = BrokerTraits(kind="tansu", cluster_id=EMBEDDED_CLUSTER_ID, idempotent_producer=False)
    on_embedded = for_broker(settings, embedded)
    consumer = make_consumer(on_embedded, "127.0.0.1:1", "tansu", group_id="g")
    try:
        assert consumer._session_timeout_ms == 4_000
        assert consumer._heartbeat_interval_ms == 1_000
        # Kafka would wait this long for a rebalance's members; Tansu ends one after 2 s.
        assert consumer._rebalance_timeout_ms == 10_000
    finally:
        await consumer.stop()
    chosen = _settings(tmp_path, session_timeout_ms=7_000, worker_revoke_grace_s=5.0)
    assert for_broker(chosen, embedded).session_timeout() == 7_000
    beat = for_broker(_settings(tmp_path, heartbeat_interval_ms=300), embedded)
    assert (beat.session_timeout(), beat.heartbeat_interval_ms) == (4_000, 300)
    assert chosen.rebalance_timeout() == 12_000
    consumer = make_consumer(settings, "127.0.0.1:1", "tansu", group_id="g")
    try:
        assert consumer._session_timeout_ms == 10_000
    finally:
        await consumer.stop()


# -- a process hosting several roles -----------------------------------------------------------


class _Publisher:
    def __init__(self, role: str, health: Health) -> None:
        self.role = role
        self.health = health
        self.stopped = False

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        self.stopped = True


class _Part:
    def __init__(self, role: str, stops: list[str], fails: bool = False) -> None:
        self.role = role
        self.stops = stops
        self.fails = fails

    async def stop(self) -> None:
        self.stops.append(self.role)
        if self.fails:
            raise RuntimeError(f"{self.role} part failed to stop")


class _Roles:
    """``start_role`` stand-in: every role waits until all have begun starting (so they can only
    start side by side), then registers a check that is ready when its flag is set."""

    def __init__(
        self,
        roles: tuple[str, ...],
        failing: str | None = None,
        *,
        hanging: str | None = None,
        check: str = "{role}-part",
        failing_stop: str | None = None,
    ) -> None:
        self.begun: set[str] = set()
        self.all_begun = asyncio.Event()
        self.roles = roles
        self.failing = failing
        self.hanging = hanging
        self.check = check
        self.failing_stop = failing_stop
        self.ready = dict.fromkeys(roles, False)
        self.stops: list[str] = []
        self.publishers: list[_Publisher] = []
        self.on_failure: dict[str, Any] = {}

    async def start_role(
        self, role: str, ctx: Any, on_failure: Any, *, health: Health, api: Any
    ) -> list[Any]:
        self.on_failure[role] = on_failure
        self.begun.add(role)
        if role == self.hanging:  # a start that never ends (a recovery stuck on the broker)
            await asyncio.Event().wait()
        if self.begun | {self.hanging} >= set(self.roles):
            self.all_begun.set()
        await self.all_begun.wait()
        if role == self.failing:
            raise RuntimeError(f"{role} failed to start")
        health.add(Check(self.check.format(role=role), lambda: self.ready[role]))
        return [_Part(role, self.stops), _Part(role, self.stops, fails=role == self.failing_stop)]

    def publisher(
        self, ctx: Any, role: str, health: Health, parts: list[Any], **kw: Any
    ) -> _Publisher:
        publisher = _Publisher(role, health)
        self.publishers.append(publisher)
        return publisher


@pytest.fixture
def fake_roles(monkeypatch: pytest.MonkeyPatch) -> Any:
    def install(roles: tuple[str, ...], failing: str | None = None, **kw: Any) -> _Roles:
        fake = _Roles(roles, failing, **kw)

        async def connect(settings: Settings) -> Any:
            return type("Ctx", (), {"bootstrap": "127.0.0.1:1", "kind": "tansu"})()

        monkeypatch.setattr(faust_app, "connect", connect)
        monkeypatch.setattr(faust_app, "start_role", fake.start_role)
        monkeypatch.setattr(faust_app, "role_publisher", fake.publisher)
        return fake

    return install


async def test_hosted_roles_start_side_by_side_each_with_its_own_member_health(
    tmp_path: Path, fake_roles: Any, caplog: pytest.LogCaptureFixture
) -> None:
    fake = fake_roles(("executor", "worker"))
    service = RoleService("executor,worker", _settings(tmp_path), port=0)
    await asyncio.wait_for(service.on_start(), 30)  # one after the other would never end
    try:
        by_role = {p.role: p.health for p in fake.publishers}
        assert sorted(by_role) == ["executor", "worker"]
        assert by_role["executor"] is not by_role["worker"]
        fake.ready["executor"] = True
        assert by_role["executor"].ready()[0]
        assert not by_role["worker"].ready()[0]
        # The process's own /health/ready covers both roles' parts.
        ok, details = service.health.ready()
        assert not ok
        assert {"executor-part", "worker-part"} <= set(details["checks"])
        ready_log = service._ready_log
        assert ready_log is not None
        assert not ready_log.done()  # logged once every role is ready, not before
        fake.ready["worker"] = True
        assert service.health.ready()[0]
        with caplog.at_level(logging.INFO, logger="kestream.app"):
            await asyncio.wait_for(ready_log, 30)
        (line,) = [r.getMessage() for r in caplog.records if " ready: " in r.getMessage()]
        assert line.startswith("executor and worker ready: ")
        assert "broker and topics" in line and "then ready after" in line
    finally:
        await service.on_stop()
    assert all(p.stopped for p in fake.publishers)
    assert sorted(fake.stops) == ["executor", "executor", "worker", "worker"]


async def test_a_role_that_fails_to_start_fails_the_process_and_the_others_stop(
    tmp_path: Path, fake_roles: Any
) -> None:
    fake = fake_roles(("executor", "worker", "api"), failing="worker")
    service = RoleService("executor,worker,api", _settings(tmp_path), port=0)
    with pytest.raises(RuntimeError, match="worker failed to start"):
        await asyncio.wait_for(service.on_start(), 30)
    await service.on_stop()  # what faust does with a service whose start raised
    assert sorted(fake.stops) == ["api", "api", "executor", "executor"]


async def test_a_role_that_fails_at_once_fails_the_start_without_waiting_for_the_others(
    tmp_path: Path, fake_roles: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The executor's start never ends (its recovery hangs); the API's fails: the process
    fails now, naming the API, and the executor's start is cancelled."""
    fake = fake_roles(("executor", "worker", "api"), failing="api", hanging="executor")
    service = RoleService("executor,worker,api", _settings(tmp_path), port=0)
    with (
        caplog.at_level(logging.ERROR, logger="kestream.app"),
        pytest.raises(RuntimeError, match="api failed to start"),
    ):
        await asyncio.wait_for(service.on_start(), 30)
    assert "the api role failed to start" in caplog.text
    await service.on_stop()
    assert sorted(fake.stops) == ["worker", "worker"]  # the executor had no part yet


def test_a_failing_role_is_named_for_the_supervisor(
    tmp_path: Path, fake_roles: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    failed_file = tmp_path / "shared.failed"
    monkeypatch.setenv(FAILED_ROLE_FILE_ENV, str(failed_file))

    async def scenario() -> None:
        fake = fake_roles(("executor", "worker"))
        service = RoleService("executor,worker", _settings(tmp_path), port=0)
        await asyncio.wait_for(service.on_start(), 30)
        try:
            fake.on_failure["worker"](RuntimeError("the worker's loop broke"))
            fake.on_failure["executor"](RuntimeError("what followed"))
        finally:
            await service.on_stop()

    asyncio.run(scenario())
    slot = RoleProcess("executor+worker", "executor,worker", {}, failed_file=failed_file)
    assert slot.failed_roles() == ("worker",)  # the first, and once
    assert slot.failed_roles() == ("executor", "worker")  # nothing named: all of them


def test_a_role_that_steps_down_gives_the_supervisor_its_cause(
    tmp_path: Path, fake_roles: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    failed_file = tmp_path / "shared.failed"
    monkeypatch.setenv(FAILED_ROLE_FILE_ENV, str(failed_file))

    async def scenario() -> None:
        fake = fake_roles(("executor", "scheduler"))
        service = RoleService("executor,scheduler", _settings(tmp_path), port=0)
        await asyncio.wait_for(service.on_start(), 30)
        try:
            fake.on_failure["scheduler"](RoleStepsDown("its lease is gone", cause="stepped down"))
        finally:
            await service.on_stop()

    asyncio.run(scenario())
    slot = RoleProcess("executor+scheduler", "executor,scheduler", {}, failed_file=failed_file)
    assert slot.failure() == (("scheduler",), "stepped down")


async def test_a_failing_stop_skips_no_other_role_nor_part(
    tmp_path: Path, fake_roles: Any, caplog: pytest.LogCaptureFixture
) -> None:
    fake = fake_roles(("executor", "worker", "api"), failing_stop="api")
    service = RoleService("executor,worker,api", _settings(tmp_path), port=0)
    service.board = None  # it reads the members topic: no broker here
    await asyncio.wait_for(service.on_start(), 30)
    with caplog.at_level(logging.ERROR, logger="kestream.app"):
        await service.on_stop()
    assert sorted(fake.stops) == ["api", "api", "executor", "executor", "worker", "worker"]
    assert fake.stops[:2] == ["api", "api"]  # the API first: no new work comes in
    assert "stopping the api role's _Part failed" in caplog.text
    assert all(p.stopped for p in fake.publishers)


async def test_same_named_parts_of_several_roles_each_count(
    tmp_path: Path, fake_roles: Any
) -> None:
    """Every role has a flows table, its check named ``flows``: the process's health keeps
    them apart, so one role's table still loading keeps the process not ready."""
    fake = fake_roles(("executor", "worker"), check="flows")
    service = RoleService("executor,worker", _settings(tmp_path), port=0)
    await asyncio.wait_for(service.on_start(), 30)
    try:
        fake.ready["worker"] = True
        assert service.health.not_ready() == ["executor.flows"]
        ok, details = service.health.ready()
        assert not ok
        assert {"executor.flows", "worker.flows"} <= set(details["checks"])
        assert [h.health.not_ready() for h in service.hosted] == [["flows"], []]  # members
    finally:
        await service.on_stop()


def test_the_stop_grace_covers_the_worker_drain_beside_the_executor_stop() -> None:
    """A shared process stops the worker and the executor side by side: the supervisor's
    SIGTERM grace must cover the longer, the worker's drain, the wait for the tasks it kills
    and for the records under way, its bounded commit and its producer's bounded close, with
    room to close its other clients."""
    from kestream.runtime import executor_service, supervisor, worker_service

    worker = worker_service.DRAIN_TIMEOUT_S + worker_service.KILLED_WAIT_S
    worker += worker_service.SIDE_TASKS_WAIT_S  # dead letters, KILLED results past the drain
    worker += 2 * worker_service.COMMIT_WAIT_S  # the periodic commit's, then its own
    worker += worker_service.PRODUCER_CLOSE_S
    assert max(worker, executor_service._STOP_GRACE_S) + 2.0 <= supervisor._STOP_GRACE_S


def test_one_role_keeps_the_process_health_as_its_member_health(tmp_path: Path) -> None:
    service = RoleService("scheduler", _settings(tmp_path), port=0)
    assert [h.role for h in service.hosted] == ["scheduler"]
    assert service.hosted[0].health is service.health


def test_a_process_knows_its_age_from_its_start() -> None:
    """What the ready line counts from: the process's start, its imports included."""
    code = (
        "import time; time.sleep(0.5); "
        "from kestream.runtime.process import process_age_s; print(process_age_s())"
    )
    age = float(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
    )
    assert age >= 0.5


def test_the_embedded_broker_is_known_by_its_cluster_id() -> None:
    assert EMBEDDED_CLUSTER_ID in EmbeddedBroker(port=1)._command()
    embedded = BrokerTraits(kind="tansu", cluster_id=EMBEDDED_CLUSTER_ID, idempotent_producer=False)
    assert embedded.embedded
    own = BrokerTraits(kind="tansu", cluster_id="tansu_cluster", idempotent_producer=False)
    assert not own.embedded


@pytest.mark.parametrize("with_flows", [False, True])
def test_standalone_loads_the_plugins_only_to_deploy_flows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, with_flows: bool
) -> None:
    """The supervisor reads no flow unless ``--flows`` deploys some; the task registry the
    plugins need is a fifth of its memory. Every other command still loads them first."""
    from typer.testing import CliRunner

    from kestream import cli
    from kestream.plugins import loading
    from kestream.runtime.supervisor import Supervisor

    loads: list[Settings] = []
    monkeypatch.setattr(loading, "load_plugins", loads.append)

    async def run(self: Supervisor) -> int:
        return 0

    monkeypatch.setattr(Supervisor, "run", run)
    args = ["standalone", "--flows", str(tmp_path)] if with_flows else ["standalone"]
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    assert len(loads) == (1 if with_flows else 0)
    assert CliRunner().invoke(cli.app, ["validate", str(tmp_path / "none.yaml")]).exit_code
    assert len(loads) == (2 if with_flows else 1)


def test_a_role_process_leaves_the_holiday_calendars_until_a_condition_asks() -> None:
    """The ``holidays`` package (~9 MB) serves the PublicHoliday condition only."""
    code = (
        "import sys; import kestream.runtime.faust_app, kestream.runtime.executor_service, "
        "kestream.runtime.worker_service, kestream.runtime.scheduler_service, "
        "kestream.api.service; print('holidays' in sys.modules); "
        "from datetime import date; from kestream.models.calendar import is_public_holiday; "
        "print(is_public_holiday(date(2026, 12, 25), 'FR'), 'holidays' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True", "True"]


def test_only_the_parts_every_role_has_are_named_after_their_role() -> None:
    """/health reads the same in both layouts: the API's ``index`` and the executor's
    ``executor`` keep their names in a shared process; only each role's ``flows`` is prefixed."""
    from kestream.runtime.health import Check, RolePart

    def named(role: str, name: str) -> str:
        return RolePart(role, Check(name, lambda: True)).health_name

    assert named("api", "index") == "index"
    assert named("executor", "executor") == "executor"
    assert (named("api", "flows"), named("worker", "flows")) == ("api.flows", "worker.flows")
