"""``kestream executions ...``: list, look at and act on executions through a running API.

Each command calls the API's Kestra 1.x routes (:mod:`kestream.api_client`: where the API is and
its credentials come from the settings the API reads) and prints what ``kestream run`` prints:
an execution's readable report on stdout, progress on stderr, or with ``--json`` only the JSON.
``follow`` and the actions' ``--wait`` end with the exit code of the execution's end state, as
``run`` does; an API that cannot be reached or refuses the request exits with 4
(:mod:`kestream.cli_output`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import orjson
import typer

from kestream.cli_output import exit_code, fail, follow_progress, log_line, print_execution, say
from kestream.settings import get_settings

if TYPE_CHECKING:  # imported when a command runs: `kestream standalone` and the roles skip them
    from kestream.api_client import ApiClient
    from kestream.models.execution import Execution, LogEntry

executions_app = typer.Typer(
    help="List, follow and act on executions through the API (KESTREAM_API_URL).",
    no_args_is_help=True,
)

T = TypeVar("T")

JsonOption = Annotated[
    bool, typer.Option("--json", help="Print only the JSON on stdout (progress stays on stderr).")
]
WaitOption = Annotated[
    bool,
    typer.Option(
        "--wait", help="Follow the execution to its end, print it, and exit with its state's code."
    ),
]
ExecutionId = Annotated[str, typer.Argument(metavar="EXECUTION_ID", help="The execution's id.")]
LEVELS = ("TRACE", "DEBUG", "INFO", "WARN", "ERROR")


# -- option values: checked while the command line is parsed, so a bad one is a usage error (64)


def _level(value: str | None) -> str | None:
    if value is not None and value.upper() not in LEVELS:
        raise typer.BadParameter(f"--level must be one of {', '.join(LEVELS)}, not {value!r}")
    return value.upper() if value else None


def _label_pairs(values: list[str] | None) -> dict[str, str]:
    """``--label key:value`` as the API reads a label (``query.label_pair``)."""
    from kestream.api.index.query import QueryError, label_pair

    try:
        return dict(label_pair("--label", pair) for pair in values or [])
    except QueryError as exc:
        raise typer.BadParameter(str(exc)) from None


def _checked_labels(values: list[str] | None) -> list[str]:
    _label_pairs(values)
    return list(values or [])


def _input_pairs(values: list[str] | None) -> list[str]:
    from kestream.cli import parse_input_pairs

    try:
        parse_input_pairs(values or [])
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    return list(values or [])


def _call(work: Callable[[ApiClient], Awaitable[T]]) -> T:
    """Run ``work`` with a client of the configured API; an :class:`ApiError` exits with 4."""
    from pydantic import ValidationError

    from kestream.api_client import ApiClient, ApiError
    from kestream.log_format import configure_logging

    settings = get_settings()
    configure_logging(settings)  # the client's warnings, in KESTREAM_LOG_FORMAT

    async def _with_client() -> T:
        async with ApiClient.from_settings(settings) as client:
            return await work(client)

    try:
        return asyncio.run(_with_client())
    except ApiError as exc:
        raise fail(str(exc)) from None
    except (ValidationError, KeyError) as exc:
        # JSON, but not what kestream's API answers (another server, another version).
        if isinstance(exc, ValidationError):
            first = exc.errors(include_url=False, include_input=False)[0]
            where = ".".join(str(part) for part in first["loc"])
            why = f"{exc.error_count()} field(s) wrong, {where}: {first['msg']}"
        else:
            why = f"{type(exc).__name__}: {exc}"
        raise fail(
            f"the API's answer is not what kestream expects ({why}); is KESTREAM_API_URL a "
            "kestream API of this version?"
        ) from None


def _execution(data: dict[str, Any]) -> Execution:
    from kestream.models.execution import Execution

    return Execution.model_validate(data)


def _log_entries(lines: list[dict[str, Any]]) -> list[LogEntry]:
    from kestream.models.execution import LogEntry

    return [LogEntry.model_validate(line) for line in lines]


def _echo_json(data: Any) -> None:
    typer.echo(orjson.dumps(data).decode())


async def _show(client: ApiClient, data: dict[str, Any], as_json: bool) -> None:
    """Print an execution as ``run`` does: its JSON, or its report with its log lines."""
    if as_json:
        _echo_json(data)
        return
    print_execution(_execution(data), _log_entries(await client.logs(data["id"])))


async def _followed(client: ApiClient, execution_id: str) -> dict[str, Any]:
    """Follow to the end with ``run``'s progress on stderr; the execution's last JSON."""
    last: dict[str, Any] = {}

    async def _updates() -> AsyncIterator[Execution]:
        async for data in client.follow(execution_id):
            last.clear()
            last.update(data)
            yield _execution(data)

    await follow_progress(_updates(), until_paused=False)
    return last


async def _finish(client: ApiClient, execution_id: str, as_json: bool) -> int:
    """Follow to the end, print the execution, and answer the exit code of its state."""
    data = await _followed(client, execution_id)
    await _show(client, data, as_json)
    return exit_code(_execution(data).state.current)


# -- reading -------------------------------------------------------------------------------------


@executions_app.command("list")
def list_(
    namespace: Annotated[
        str | None, typer.Option(help="Only this namespace and the ones under it.")
    ] = None,
    flow: Annotated[str | None, typer.Option(help="Only this flow's id.")] = None,
    state: Annotated[
        list[str] | None, typer.Option(help="Only executions in this state (repeat).")
    ] = None,
    label: Annotated[
        list[str] | None,
        typer.Option(
            help="Only executions with this label, key:value (repeat).", callback=_checked_labels
        ),
    ] = None,
    page: Annotated[int, typer.Option(min=1, help="Page, from 1.")] = 1,
    size: Annotated[int, typer.Option(min=1, max=1000, help="Executions per page.")] = 25,
    as_json: JsonOption = False,
) -> None:
    """List executions, newest first: one page, and how many match in all."""
    labels = _label_pairs(label)
    from kestream.api_client import SearchFilters

    states = [s.strip().upper() for s in state or []]
    filters = SearchFilters(namespace, flow, states, labels, page, size)
    answer = _call(lambda client: client.search(filters))
    if as_json:
        _echo_json(answer)
        return
    results, total = answer["results"], answer["total"]
    for data in results:
        item = _execution(data)
        typer.echo(
            f"{item.id}  {item.namespace}.{item.flowId}  {item.state.current:<10} "
            f"{item.state.startDate or '-'}  {item.state.duration or '-'}"
        )
    first = (page - 1) * size + 1
    shown = f"{first}-{first + len(results) - 1} of {total}" if results else f"none of {total}"
    say(f"executions {shown} (page {page})")


@executions_app.command()
def get(execution_id: ExecutionId, as_json: JsonOption = False) -> None:
    """Print one execution as it stands, with its log lines."""

    async def _get(client: ApiClient) -> None:
        await _show(client, await client.execution(execution_id), as_json)

    _call(_get)


@executions_app.command()
def follow(execution_id: ExecutionId, as_json: JsonOption = False) -> None:
    """Follow an execution to its end (progress on stderr), print it as `run` does, and exit
    with the code of its end state."""
    raise typer.Exit(_call(lambda client: _finish(client, execution_id, as_json)))


@executions_app.command()
def logs(
    execution_id: ExecutionId,
    level: Annotated[
        str | None,
        typer.Option(help=f"The lowest level shown: {', '.join(LEVELS)}.", callback=_level),
    ] = None,
    follow_: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines until the end.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per line, as the API gives it.")
    ] = False,
) -> None:
    """Print an execution's log lines (with --follow, as they come until it has ended)."""
    min_level = level

    def _print(line: dict[str, Any]) -> None:
        if as_json:
            _echo_json(line)
        else:
            typer.echo(log_line(_log_entries([line])[0]))

    async def _logs(client: ApiClient) -> None:
        if follow_:
            async for line in client.follow_logs(execution_id, min_level):
                _print(line)
            return
        async for line in client.log_lines(execution_id, min_level):
            _print(line)

    _call(_logs)


# -- acting --------------------------------------------------------------------------------------


@executions_app.command()
def kill(execution_id: ExecutionId, wait: WaitOption = False, as_json: JsonOption = False) -> None:
    """Kill an execution (its running subflows too), then print it."""

    async def _kill(client: ApiClient) -> int:
        await client.kill(execution_id)
        say(f"execution {execution_id}: kill requested")
        if wait:
            return await _finish(client, execution_id, as_json)
        await _show(client, await client.execution(execution_id), as_json)
        return 0

    raise typer.Exit(_call(_kill))


@executions_app.command()
def restart(
    execution_id: ExecutionId, wait: WaitOption = False, as_json: JsonOption = False
) -> None:
    """Restart a FAILED, KILLED or WARNING execution: its failed task runs get a new attempt."""

    async def _restart(client: ApiClient) -> int:
        restarted = await client.restart(execution_id)
        say(f"execution {execution_id}: restarted")
        if wait:
            return await _finish(client, execution_id, as_json)
        await _show(client, restarted, as_json)
        return 0

    raise typer.Exit(_call(_restart))


@executions_app.command()
def resume(
    execution_id: ExecutionId,
    inputs: Annotated[
        list[str] | None,
        typer.Option(
            "--input",
            "-i",
            help="An onResume input of the Pause, key=value (repeat).",
            callback=_input_pairs,
        ),
    ] = None,
    wait: WaitOption = False,
    as_json: JsonOption = False,
) -> None:
    """Resume a paused execution, with the Pause's onResume inputs."""
    from kestream.cli import parse_input_pairs

    given = parse_input_pairs(inputs or [])

    async def _resume(client: ApiClient) -> int:
        await client.resume(execution_id, given)
        say(f"execution {execution_id}: resumed")
        if wait:
            return await _finish(client, execution_id, as_json)
        await _show(client, await client.execution(execution_id), as_json)
        return 0

    raise typer.Exit(_call(_resume))
