"""Run one workload at one rate (or W3's series) on a fresh stack and measure it.

Open loop (BENCHMARKS.md): execution ``i`` is due at ``t0 + i * 60 / rate`` and is submitted at
that moment from this process, whether or not earlier ones have ended, each submission in its
own task, so a slow kestream makes latencies grow instead of slowing the offer down (no
coordinated omission). Latency runs from the *due* time to the terminal state's time as the
executor stamped it (the last entry of the execution's state history), the same end point the
bare-aiokafka floor uses; the moment this client saw the terminal update is kept too (``seen``),
one fetch later.

Everything offered must end within 10 s after the last offer (the collection window); what has
not is the backlog at end. Unfinished executions are then given ``drain_s`` more seconds so that
the percentiles say how late they were; still unfinished, they count as infinitely late.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench import report, requests, steady, workloads
from bench.requests import Sends
from bench.stack import Stack, StackConfig, Usage, describe, role_errors
from kestream.client import Client
from kestream.models.flow import WebhookTrigger, parse_flow

log = logging.getLogger("bench")

#: How long after the window closes updates of executions that ended inside it may still arrive.
_DELIVERY_GRACE_S = 1.0
#: How long one W3 execution may take before it counts as never ended: about ten times its
#: target (150 ms and 10 s), enough to measure a slow one without waiting forever on a stuck one.
_W3_TIMEOUT_S = {160: 30.0, 10_000: 120.0}


@dataclass(slots=True)
class Sample:
    """One offered execution: when it was due, sent, ended (executor's stamp) and seen here."""

    due: float
    lag: float | None = None
    sent: float | None = None
    end: float | None = None
    seen: float | None = None
    state: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class RunOptions:
    """What the command line asked for, besides the workload and rates."""

    duration_s: float = 60.0
    drain_s: float = 20.0
    w3_runs: int = 5
    w3_big_runs: int = 1
    w3_timeout_s: float | None = None
    broker: str = "embedded"
    bootstrap: str | None = None
    stream_threads: int = 0
    inline: bool | None = None
    profile: bool = False
    run_root: Path = Path("/tmp/kestream-bench")
    #: "client" (kestream's Python API: a produce) or "webhook" (HTTP to the API role).
    via: str = "client"
    #: Role processes: "separate" or "shared" (:attr:`StackConfig.layout`).
    layout: str = "separate"
    #: Count broker requests and doorbell rings per execution (:mod:`bench.requests`).
    count_requests: bool = False

    def stack_config(self, tag: str) -> StackConfig:
        return StackConfig(
            broker=self.broker,
            bootstrap=self.bootstrap,
            stream_threads=self.stream_threads,
            inline=self.inline,
            profile=self.profile,
            run_dir=self.run_root / tag,
            api=self.via == "webhook",
            layout=self.layout,
        )


# -- open loop -------------------------------------------------------------------------------------


#: Starts one execution of the workload's flow; returns its id.
Submit = Callable[[], Awaitable[str]]


def client_submit(client: Client, flow: tuple[str, str]) -> Submit:
    """Through kestream's Python API: one produce to the executions topic."""

    async def submit() -> str:
        return await client.submit(*flow)

    return submit


def webhook_submit(session: aiohttp.ClientSession, url: str) -> Submit:
    """Through the API role's webhook route: an HTTP POST whose answer names the execution."""

    async def submit() -> str:
        async with session.post(url, json={}) as response:
            if response.status != 200:
                raise RuntimeError(f"webhook answered {response.status}: {await response.text()}")
            body = await response.json()
            return str(body["id"])

    return submit


def webhook_url(stack: Stack, workload: workloads.Workload) -> str:
    """The workload flow's webhook route on the stack's API role."""
    flow = parse_flow(workload.flow_source())
    keys = [t.key for t in flow.triggers if isinstance(t, WebhookTrigger)]
    if not keys or stack.api_port is None:
        raise ValueError(f"{workload.name}: its flow has no Webhook trigger to enter through")
    path = f"/api/v1/main/executions/webhook/{flow.namespace}/{flow.id}/{keys[0]}"
    return f"http://127.0.0.1:{stack.api_port}{path}"


async def _submit(submit: Submit, sample: Sample) -> str | None:
    sample.lag = time.time() - sample.due
    try:
        execution_id = await submit()
    except Exception as exc:  # counted as never ended; the run goes on
        sample.error = f"submit: {exc}"
        return None
    sample.sent = time.time()
    return execution_id


async def _await_end(client: Client, execution_id: str, sample: Sample) -> None:
    execution = await client.wait(execution_id)
    sample.seen = time.time()
    sample.end = execution.state.histories[-1].date.timestamp()
    sample.state = execution.state.current.value


async def _offer_one(
    client: Client, submit: Submit, sample: Sample, waits: list[asyncio.Task[None]]
) -> None:
    execution_id = await _submit(submit, sample)
    if execution_id is not None:
        waits.append(asyncio.create_task(_await_end(client, execution_id, sample)))


async def offer(
    client: Client, submit: Submit, rate_per_min: float, duration_s: float
) -> tuple[list[Sample], list[asyncio.Task[None]]]:
    """Submit ``rate * duration`` executions on schedule; returns the samples and their waits.

    Returns once every submission was acknowledged; the waits are still running.
    """
    count = round(rate_per_min * duration_s / 60.0)
    interval = 60.0 / rate_per_min
    start = time.time() + 0.1
    samples = [Sample(start + i * interval) for i in range(count)]
    waits: list[asyncio.Task[None]] = []
    submits: list[asyncio.Task[None]] = []
    for sample in samples:
        delay = sample.due - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        submits.append(asyncio.create_task(_offer_one(client, submit, sample, waits)))
    await asyncio.gather(*submits)
    return samples, waits


async def _wait_until(tasks: list[asyncio.Task[None]], deadline: float) -> None:
    pending = [t for t in tasks if not t.done()]
    timeout = deadline - time.time()
    if pending and timeout > 0:
        await asyncio.wait(pending, timeout=timeout)


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(BaseException):
            await task


async def collect(
    stack: Stack, samples: list[Sample], waits: list[asyncio.Task[None]], drain_s: float
) -> tuple[float, Usage]:
    """Wait out the collection window; returns when it closed and the usage at that moment."""
    last_offer = max((s.sent for s in samples if s.sent is not None), default=time.time())
    window_close = last_offer + workloads.COLLECT_WINDOW_S
    await _wait_until(waits, window_close + _DELIVERY_GRACE_S)
    usage = stack.usage()
    stack.check_alive()
    if drain_s > 0 and any(not t.done() for t in waits):
        log.warning("backlog at window close; draining up to %.0f s more", drain_s)
        await _wait_until(waits, time.time() + drain_s)
    await _cancel(waits)
    return window_close, usage


# -- runs ------------------------------------------------------------------------------------------


async def run_rate(workload: workloads.Workload, rate: float, options: RunOptions) -> report.Row:
    """One workload at one rate on a fresh stack."""
    isolation = f"-{workload.isolation}" if workload.isolation else ""
    tag = f"{workload.name}{isolation}-{int(rate)}-{_inline_tag(options.inline)}"
    config = options.stack_config(tag)
    async with Stack(config, [workload]) as stack, aiohttp.ClientSession() as session:
        client = stack.require_client()
        submit = (
            webhook_submit(session, webhook_url(stack, workload))
            if options.via == "webhook"
            else client_submit(client, stack.deployed[workload.flow_file])
        )
        stack.mark()
        start = time.time()
        readings = asyncio.create_task(steady.read_during(stack.cpu_now, start, options.duration_s))
        sends = (
            asyncio.create_task(_count_sends(stack, start, options.duration_s))
            if options.count_requests
            else None
        )
        samples, waits = await offer(client, submit, rate, options.duration_s)
        first, last = await readings
        counted = await sends if sends is not None else {}
        window_close, usage = await collect(stack, samples, waits, options.drain_s)
        profiles = await stack.end_profiles()
        where = describe(stack)
    row = report.rate_row(
        workload, rate, options.duration_s, _inline(options), samples, window_close, usage
    )
    report.add_steady_cost(row, steady.steady_cost(first, last, (s.end for s in samples)))
    report.add_sends(row, requests.per_execution(counted, row.extra.get("steady_ended", 0)))
    row.extra.update(where)
    row.extra["role_errors"] = role_errors(stack)
    if profiles:
        row.extra["profiles"] = report.profile_summary(profiles, config.run_dir)
    return row


async def _count_sends(stack: Stack, start: float, duration_s: float) -> dict[str, Sends]:
    """Each process's broker requests and doorbell rings over the steady window."""
    await asyncio.sleep(max(0.0, start + steady.FIRST_AT * duration_s - time.time()))
    window = (steady.LAST_AT - steady.FIRST_AT) * duration_s
    return await requests.count_sends(stack.pids(), window)


async def run_series(workload: workloads.Workload, options: RunOptions, runs: int) -> report.Row:
    """W3: ``runs`` executions one after another on a fresh stack; wall time of each."""
    tag = f"{workload.name}-{workload.iterations}-{_inline_tag(options.inline)}"
    config = options.stack_config(tag)
    timeout = options.w3_timeout_s or _W3_TIMEOUT_S.get(workload.iterations or 0, 120.0)
    async with Stack(config, [workload]) as stack:
        client = stack.require_client()
        flow = stack.deployed[workload.flow_file]
        stack.mark()
        started = time.time()
        samples = [await _one_after_another(client, flow, timeout) for _ in range(runs)]
        elapsed = time.time() - started
        usage = stack.usage()
        profiles = await stack.end_profiles()
        where = describe(stack)
    row = report.series_row(workload, elapsed, _inline(options), samples, usage)
    row.extra.update(where)
    row.extra["role_errors"] = role_errors(stack)
    if profiles:
        row.extra["profiles"] = report.profile_summary(profiles, config.run_dir)
    return row


async def _one_after_another(client: Client, flow: tuple[str, str], timeout: float) -> Sample:
    sample = Sample(time.time())
    execution_id = await _submit(client_submit(client, flow), sample)
    if execution_id is not None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(_await_end(client, execution_id, sample), timeout)
    return sample


def _inline(options: RunOptions) -> bool:
    """The inline switch the roles ran with: the option, else the user's setting."""
    if options.inline is not None:
        return options.inline
    from kestream.settings import Settings

    return Settings().executor_inline_tasks


def _inline_tag(inline: bool | None) -> str:
    return {True: "inline", False: "no-inline", None: "default"}[inline]
