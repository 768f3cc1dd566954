"""What every runtime role needs to talk to the broker: where it is, what kind it is, the topics."""

from __future__ import annotations

import os
from dataclasses import dataclass

from kestream.runtime.fetch_pacing import mark_embedded
from kestream.runtime.record_limit import RecordLimit
from kestream.runtime.tansu_compat import BrokerTraits, probe_broker
from kestream.runtime.topics import Topics, ensure_topics
from kestream.settings import Settings

#: The consumer group session on the embedded broker, unless ``KESTREAM_SESSION_TIMEOUT_MS``
#: is set (:func:`for_broker`).
EMBEDDED_SESSION_TIMEOUT_MS = 4_000


def for_broker(settings: Settings, traits: BrokerTraits) -> Settings:
    """``settings`` as the roles on this broker use them.

    On the embedded broker, unless a session is set, a 4 s consumer group session (the
    heartbeat stays ``KESTREAM_HEARTBEAT_INTERVAL_MS``, 1 s): Tansu answers a group's first
    JoinGroup only after half the session, rounded up to whole seconds (2 s at 4 s, 5 s at
    10 s), and every role's start waits for its joins. A shorter session starts the roles
    sooner (1 s at 2 s) but expels a member whose event loop is held up for more than the
    session less a heartbeat, and each expulsion costs a rebalance of its groups, the worker's
    running jobs on a partition that moves, an executor's recovery: on a loaded machine, a
    full garbage collection or a store's fsync on the loop outlasts 1.5 s. Its groups hold one
    machine's processes only; elsewhere (Kafka, a Tansu of one's own, whose groups may hold
    other machines' members, stalls included) the usual 10 s stays.

    With that session a worker's revoke grace is 0 unless one is set. Tansu completes a
    rebalance half a session after it began (2 s) whether or not every member has rejoined,
    and a member learns of the rebalance only at its next heartbeat (up to 1 s later): what is
    left for its revocation is about 1 s. A worker still waiting out its grace then misses the
    rebalance; its partitions go to another worker while its task runs go on, and its late
    rejoin starts another rebalance (the long worker-kill chaos test on a 2 s session: 147 of
    900 Sleeps had two effects with the 2 s grace, none without). Without the grace the
    worker rejoins at once; the task runs of a partition that comes back go on, those of a
    partition that went to another worker are stopped, unreported, when this worker's new
    assignment arrives, and run again from the start there (docs/tasks.md, "Workers and
    rebalances")."""
    if not traits.embedded or settings.session_timeout_ms is not None:
        return settings
    update: dict[str, float] = {"session_timeout_ms": EMBEDDED_SESSION_TIMEOUT_MS}
    if "worker_revoke_grace_s" not in settings.model_fields_set:
        update["worker_revoke_grace_s"] = 0.0
    return settings.model_copy(update=update)


@dataclass(frozen=True, slots=True)
class BrokerContext:
    settings: Settings
    bootstrap: str
    #: "tansu" (the embedded broker: workarounds on) or "kafka".
    kind: str
    topics: Topics
    #: The broker is kestream's embedded one (:attr:`~.tansu_compat.BrokerTraits.embedded`).
    embedded: bool = False
    #: The largest record this process produces, learnt at :func:`connect`; unset (a context
    #: built by hand), the setting's.
    learnt_limit: RecordLimit | None = None

    @property
    def record_limit(self) -> RecordLimit:
        return self.learnt_limit or RecordLimit.of(self.settings)


async def connect(settings: Settings, bootstrap: str | None = None) -> BrokerContext:
    """Identify the broker and make sure kestream's topics exist (:func:`reach`), once this
    process has taken its render budgets, and the ``envs`` and ``globals`` its flows see, from
    ``settings``.

    Every role (executor, worker, scheduler, API, embedded or not) and ``kestream run`` start
    here. The engine's settings are imported here, not with this module, so that a process that
    runs no flow and only reaches the broker (standalone's supervisor) never imports them.
    """
    from kestream.executor.instance_variables import InstanceVariables, set_instance_variables
    from kestream.expressions import set_render_timeout_ms, set_step_render_budget_ms

    set_render_timeout_ms(settings.render_timeout_ms)
    set_step_render_budget_ms(settings.step_render_budget_ms)
    set_instance_variables(
        InstanceVariables.from_environ(os.environ, settings.env_vars_prefix, settings.globals)
    )
    return await reach(settings, bootstrap)


async def reach(settings: Settings, bootstrap: str | None = None) -> BrokerContext:
    """Identify the broker and make sure kestream's topics exist: :func:`connect` for a process
    that runs no flow (standalone's supervisor, reading the members topic).

    ``bootstrap`` defaults to ``KESTREAM_BROKER``; starting the embedded broker when neither is
    given is the job of the process that owns it (the CLI or the supervisor), not of each role.
    """
    address = bootstrap or settings.broker
    if not address:
        raise ValueError("no broker: set KESTREAM_BROKER, or start kestream through its CLI")
    traits = await probe_broker(address, settings=settings)
    if traits.embedded:  # its consumers are paced and its producers ring (fetch_pacing)
        mark_embedded(address)
    settings = for_broker(settings, traits)
    topics, limit = await ensure_topics(settings, address, traits.kind)
    return BrokerContext(
        settings, address, traits.kind, topics, embedded=traits.embedded, learnt_limit=limit
    )
