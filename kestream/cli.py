"""The ``kestream`` command.

``run`` executes one flow and prints what happened; ``standalone`` runs every role on one machine;
``executor`` and ``worker`` run one role process (a faust worker); ``validate`` and ``flows deploy``
manage flows; ``executions`` lists, follows and acts on executions through a running API
(:mod:`kestream.cli_executions`). Exit codes (:mod:`kestream.cli_output`): 0 SUCCESS, 1 FAILED
or KILLED, 2 WARNING, 3 PAUSED, 4 the flow, inputs, broker or API were unusable (nothing ran),
64 the command line is wrong (an unknown option, a missing argument).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer
from typer.core import TyperGroup

from kestream.cli_executions import executions_app
from kestream.cli_output import (
    EXIT_CODES,
    EXIT_UNUSABLE,
    EXIT_USAGE,
    exit_code,
    follow_progress,
    print_execution,
)
from kestream.cli_output import fail as _fail
from kestream.cli_output import say as _say
from kestream.log_format import configure_logging, logging_config
from kestream.settings import get_settings

if TYPE_CHECKING:  # the models' import is heavy: `standalone` and the roles' start skip it
    from pydantic import ValidationError

    from kestream.models.execution import Execution, LogEntry

#: click's usage error (an unknown option, a missing argument), found among the bases of the
#: ``BadParameter`` typer exports: typer bundles its own click (``typer._click``) in recent
#: versions and uses the installed one in older ones, so neither import path holds for both.
_UsageError: type[Exception] = next(
    base for base in typer.BadParameter.__mro__ if base.__name__ == "UsageError"
)


@contextlib.contextmanager
def _usage_exit() -> Iterator[None]:
    try:
        yield
    except _UsageError as exc:
        exc.exit_code = EXIT_USAGE  # type: ignore[attr-defined]
        raise


class _Group(TyperGroup):
    """The root command: a usage error anywhere below it exits with 64 (``EX_USAGE``), not
    click's 2, which ``run`` uses for WARNING."""

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        with _usage_exit():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: Any) -> Any:
        with _usage_exit():
            return super().invoke(ctx)


app = typer.Typer(
    cls=_Group,
    name="kestream",
    help="Kestra-style workflows on Kafka, as a stream topology.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
flows_app = typer.Typer(help="Manage deployed flows.", no_args_is_help=True)
app.add_typer(flows_app, name="flows")
app.add_typer(executions_app, name="executions")

__all__ = ["EXIT_CODES", "EXIT_UNUSABLE", "EXIT_USAGE", "app", "main"]

log = logging.getLogger("kestream.cli")

#: Commands that read no flow: they need no task plugins.
_WITHOUT_FLOWS = frozenset({"standalone", "executions"})


def _setup_logging(verbose: bool = False, role: str | None = None) -> None:
    """``KESTREAM_LOG_FORMAT`` on stderr (:mod:`kestream.log_format`); ``role`` names the
    process in its lines (None: a CLI command)."""
    configure_logging(get_settings(), role, verbose=verbose)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"kestream {version('kestream')}")
        raise typer.Exit()


def _existing(path: Path | None, what: str, *, directory: bool = False) -> None:
    """Exits with 4, as any unusable input does, unless ``path`` is None or an existing file
    (``directory``: directory); click's own check would exit with its usage code."""
    if path is not None and not (path.is_dir() if directory else path.is_file()):
        kind = "directory" if directory else "file"
        raise _fail(f"{what} {path}: no such {kind}")


@app.callback()
def _load_plugins(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_version,
            is_eager=True,
            help="Print kestream's version (the installed package's) and exit.",
        ),
    ] = False,
) -> None:
    """Every command validates or runs flows: import the task plugins first (docs/tasks.md).

    Not for ``standalone``: its supervisor reads flows only to deploy ``--flows`` (it loads the
    plugins then), and each role process loads them itself; the task registry they import is
    a fifth of the supervisor's memory otherwise. Nor for ``executions``, which asks the API."""
    if ctx.invoked_subcommand not in _WITHOUT_FLOWS:
        _plugins_loaded()


def _plugins_loaded() -> None:
    from kestream.plugins.loading import PluginError, load_plugins

    try:
        load_plugins(get_settings())
    except PluginError as exc:
        raise _fail(str(exc)) from None


def parse_input_pairs(pairs: Sequence[str]) -> dict[str, str]:
    """``["a=1", "b=x=y"]`` -> ``{"a": "1", "b": "x=y"}``; typed parsing is the flow's job."""
    inputs: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--input expects key=value, got {pair!r}")
        inputs[key.strip()] = value
    return inputs


def file_inputs(inputs: dict[str, str]) -> tuple[dict[str, str], dict[str, Path]]:
    """Split ``--input`` values: ``@path`` names a file to upload (it must exist), ``@@text``
    is the text ``@text``; others are kept. The uploads keep their key as a placeholder, so the
    inputs can be checked before anything is stored."""
    kept: dict[str, str] = {}
    uploads: dict[str, Path] = {}
    for key, value in inputs.items():
        if value.startswith("@@"):
            kept[key] = value[1:]
        elif value.startswith("@"):
            path = Path(value[1:]).expanduser()
            if not path.is_file():
                raise ValueError(f"--input {key}=@{value[1:]}: no such file")
            uploads[key] = path
            kept[key] = f"kestra:///{key}"
        else:
            kept[key] = value
    return kept, uploads


def store_uploads(uploads: dict[str, Path], flow: Any, execution_id: str) -> dict[str, str]:
    """Store each ``--input key=@path`` file in the internal storage; its URI per key."""
    from kestream.storage import get_storage
    from kestream.storage.uploads import store_input_file

    storage = get_storage()
    return {
        key: store_input_file(storage, flow.namespace, flow.id, execution_id, key, path.name, path)
        for key, path in uploads.items()
    }


# -- run ---------------------------------------------------------------------------------------


@app.command()
def run(
    flow: Annotated[Path, typer.Argument(help="Flow YAML file.")],
    inputs: Annotated[
        list[str] | None,
        typer.Option(
            "--input",
            "-i",
            help="An input, key=value (repeat); key=@path uploads that file (FILE inputs), "
            "key=@@text gives the text @text.",
        ),
    ] = None,
    flows: Annotated[Path | None, typer.Option(help="Directory of flows it may call.")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print only the execution JSON on stdout.")
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the end.")] = 600.0,
) -> None:
    """Run one execution of FLOW until it ends or pauses, and print what happened."""
    _existing(flow, "flow")
    _existing(flows, "--flows", directory=True)
    _setup_logging()
    try:
        given = parse_input_pairs(inputs or [])
    except ValueError as exc:
        raise _fail(str(exc)) from None
    extra = [p.read_text() for p in _flow_files(flows)] if flows else []
    execution, logs = asyncio.run(_run(flow.read_text(), extra, given, timeout))
    if as_json:
        typer.echo(execution.model_dump_json(by_alias=True))
    else:
        print_execution(execution, logs)
    raise typer.Exit(exit_code(execution.state.current))


async def _run(
    flow_yaml: str, others: list[str], inputs: dict[str, str], timeout: float
) -> tuple[Execution, list[LogEntry]]:
    from kestream.kv.store import calls_kv
    from kestream.models.flow import parse_flow
    from kestream.models.ids import new_id
    from kestream.models.inputs import InputValidationError, parse_inputs
    from kestream.models.validation import FlowValidationError
    from kestream.secrets.encryption import scope_of

    try:
        flow = parse_flow(flow_yaml)
        inputs, uploads = file_inputs(inputs)
        if not calls_kv(flow.source):  # fail fast, before any broker starts (kv(): it has none)
            parse_inputs(flow.inputs, inputs, scope=scope_of(flow.namespace, flow.id))
        for other in others:
            parse_flow(other)
    except (FlowValidationError, InputValidationError, ValueError) as exc:
        raise _fail(str(exc)) from None
    execution_id = new_id()
    inputs = {**inputs, **store_uploads(uploads, flow, execution_id)}
    started = time.monotonic()
    async with _LocalRuntime() as runtime:
        _say(f"broker ready ({runtime.describe()}) in {time.monotonic() - started:.2f}s")
        client = runtime.client
        for other in others:
            await client.deploy(other)
        deployed = await client.deploy(flow_yaml)
        await client.submit(deployed.namespace, deployed.id, inputs, execution_id=execution_id)
        _say(f"execution {execution_id} of {deployed.namespace}.{deployed.id} submitted")
        progress = follow_progress(client.follow(execution_id), until_paused=True)
        execution = await asyncio.wait_for(progress, timeout)
        elapsed = time.monotonic() - started
        _say(f"execution {execution_id} {execution.state.current} after {elapsed:.2f}s")
        logs = await client.logs(execution_id)
    return execution, logs


class _LocalRuntime:
    """The broker (embedded unless configured), an executor, a worker and a client in-process."""

    def __init__(self) -> None:
        self.settings = get_settings()
        self.parts: list[Any] = []
        self.broker: Any = None
        self.ctx: Any = None
        self.client: Any = None

    def describe(self) -> str:
        kind = "embedded Tansu" if self.broker is not None else self.ctx.kind
        return f"{kind} at {self.ctx.bootstrap}"

    async def __aenter__(self) -> _LocalRuntime:
        from kestream.client import Client
        from kestream.executor.flow_registry import FlowRegistry
        from kestream.runtime.context import connect
        from kestream.runtime.embedded_broker import BrokerUnavailable, EmbeddedBroker
        from kestream.runtime.executor_service import ExecutorService
        from kestream.runtime.flows_table import FlowsTable
        from kestream.runtime.kafka_connection import embedded_refusal
        from kestream.runtime.kv_table import KVTablePart
        from kestream.runtime.process import tune_gc
        from kestream.runtime.worker_service import WorkerService

        tune_gc()
        bootstrap = self.settings.broker
        refusal = embedded_refusal(self.settings)
        if refusal is not None:
            raise _fail(refusal)
        try:
            if bootstrap is None:
                self.broker = EmbeddedBroker()
                await self.broker.astart()
                bootstrap = self.broker.bootstrap
        except BrokerUnavailable as exc:
            raise _fail(exc.reason) from None
        self.ctx = await connect(self.settings, bootstrap)
        kv = await KVTablePart.start(self.ctx)
        self.parts = [kv]
        registry = FlowRegistry()
        table = FlowsTable(self.ctx, registry)
        await table.start()
        await table.loaded.wait()
        private = self.broker is not None  # nobody else on this broker: own every partition
        # On its own broker this process's worker is the only one: it runs every worker group.
        executor = ExecutorService(
            self.ctx, registry, own_all_partitions=private, route_worker_groups=not private
        )
        worker = WorkerService(self.ctx, registry, own_all_partitions=private)
        self.parts = [kv, table, executor, worker]
        await executor.start()
        await worker.start()
        self.client = await Client.connect(self.settings, bootstrap=bootstrap)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.client is not None:
            await self.client.close()
        for part in reversed(self.parts):
            await part.stop()
        if self.broker is not None:
            await self.broker.astop()


def _flow_files(directory: Path | None) -> list[Path]:
    from kestream.runtime.supervisor import flow_files

    return sorted(flow_files(directory)) if directory else []


# -- roles -------------------------------------------------------------------------------------


@app.command()
def standalone(
    flows: Annotated[Path | None, typer.Option(help="Flows to deploy at start.")] = None,
) -> None:
    """Run every role on this machine (broker too if needed) until Ctrl-C."""
    from kestream.runtime.supervisor import Supervisor

    _existing(flows, "--flows", directory=True)
    if flows is not None:
        _plugins_loaded()  # the flows may use the plugins' task types
    _setup_logging(role="standalone")
    code = asyncio.run(Supervisor(get_settings(), flows).run())
    raise typer.Exit(code)


def _faust_role(role: str) -> None:
    """Run the faust worker of ``role`` (one role, or several comma-separated).

    faust's worker sets up logging itself: it is given kestream's (``logging_config``), so its
    lines and every library's have the process's one format (:mod:`kestream.log_format`), and
    ``--quiet`` keeps its start-up banner and signal echoes off the terminal, and its worker
    draws no progress spinner (faust's, on a terminal at level WARNING); the role logs its own
    line once ready."""
    import faust

    from kestream.runtime.faust_app import make_app

    class _Worker(faust.Worker):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.spinner = None

    settings = get_settings()
    _setup_logging(role=role)
    app_ = make_app(role)
    app_.conf.logging_config = logging_config(settings, role)
    app_.conf.Worker = cast(Any, _Worker)  # faust types the setting as a typing form
    level = {"DEBUG": "debug", "WARNING": "warn", "ERROR": "error"}.get(
        settings.log_level.upper(), "info"
    )
    sys.argv = [f"kestream {role}", "--quiet", "worker", "--loglevel", level]
    app_.main()


@app.command()
def executor() -> None:
    """Run one executor stream processor (a faust worker process)."""
    _faust_role("executor")


@app.command()
def worker(
    group: Annotated[
        str | None,
        typer.Option(
            help="Serve this worker group: run the tasks whose workerGroup.key is GROUP "
            "(default: KESTREAM_WORKER_GROUP; unset, the tasks without a workerGroup).",
        ),
    ] = None,
) -> None:
    """Run one worker process (a faust worker process)."""
    if group is not None:
        import os
        import re

        from kestream.tasks.worker_group import WORKER_GROUP_KEY_PATTERN

        if not re.fullmatch(WORKER_GROUP_KEY_PATTERN, group):
            raise _fail(
                f"--group {group!r}: a worker group key must match {WORKER_GROUP_KEY_PATTERN}"
            )
        os.environ["KESTREAM_WORKER_GROUP"] = group  # what the role's settings will read
        get_settings.cache_clear()
    _faust_role("worker")


@app.command()
def scheduler() -> None:
    """Run the scheduler: Schedule and Flow triggers (a faust worker process)."""
    _faust_role("scheduler")


@app.command()
def roles(
    names: Annotated[
        str,
        typer.Argument(
            metavar="ROLES",
            help="Comma-separated roles this process hosts: executor, worker, scheduler, api.",
        ),
    ],
) -> None:
    """Run several roles in one process (what `standalone` starts by default): less memory and
    a faster start than a process per role; a crash of any of them restarts them all."""
    from kestream.runtime.faust_app import parse_roles

    try:
        spec = ",".join(parse_roles(names))
    except ValueError as exc:
        raise _fail(str(exc)) from None
    _faust_role(spec)


@app.command()
def api() -> None:
    """Run the HTTP API on KESTREAM_WEB_PORT: REST, webhooks, follow, the index (faust worker)."""
    _faust_role("api")


# -- flows -------------------------------------------------------------------------------------


@app.command()
def validate(
    files: Annotated[list[Path], typer.Argument(help="Flow YAML files.")],
) -> None:
    """Check flow files; print every problem with its flow, task and line."""
    from kestream.models.flow import check_flow

    for path in files:
        _existing(path, "flow")
    bad = 0
    for path in files:
        problems = check_flow(path.read_text(), source_name=str(path))
        errors = [p for p in problems if getattr(p, "severity", "error") == "error"]
        for problem in problems:
            typer.echo(f"{path}: {problem}", err=True)
        if errors:
            bad += 1
        else:
            typer.echo(f"{path}: valid")
    raise typer.Exit(1 if bad else 0)


@flows_app.command("deploy")
def deploy(
    directory: Annotated[Path, typer.Argument(help="Directory of flow YAML files.")],
) -> None:
    """Deploy every flow of DIRECTORY to the broker named by KESTREAM_BROKER."""
    _existing(directory, "flows", directory=True)
    _setup_logging()
    settings = get_settings()
    if not settings.broker:
        raise _fail("KESTREAM_BROKER is not set: deploy to a running kestream's broker")

    async def _deploy() -> None:
        from kestream.client import Client

        async with await Client.connect(settings) as client:
            for path in _flow_files(directory):
                flow = await client.deploy(path.read_text())
                typer.echo(f"{path}: {flow.namespace}.{flow.id} revision {flow.revision}")

    asyncio.run(_deploy())


def main() -> None:
    """The ``kestream`` entry point; settings that cannot be read (a bad ``KESTREAM_*`` value)
    exit with 4, as other unusable input."""
    from pydantic import ValidationError

    try:
        app()
    except ValidationError as exc:
        typer.secho(
            f"kestream's settings are not valid: {settings_errors(exc)}",
            err=True,
            fg=typer.colors.RED,
        )
        sys.exit(EXIT_UNUSABLE)


def settings_errors(exc: ValidationError) -> str:
    """What is wrong with the settings, one ``setting: reason`` per line, without the values
    given: a value may be a secret, and a before-validator's error holds all of them."""
    lines = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        where = ".".join(str(part) for part in error["loc"]) or "settings"
        lines.append(f"{where}: {error['msg']}")
    return "\n  " + "\n  ".join(lines)


if __name__ == "__main__":
    main()
