"""kestream's topics: their names, partition counts, and their creation at start."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from kestream.runtime.kafka_connection import client_options
from kestream.settings import Settings

if TYPE_CHECKING:
    # Imported where topics are created: the record limit brings the engine's codec, which the
    # supervisor (it reads the topic names only) would otherwise hold in memory for nothing.
    from kestream.runtime.record_limit import RecordLimit

log = logging.getLogger("kestream.topics")


@dataclass(frozen=True, slots=True)
class Topics:
    """Full topic names under ``KESTREAM_TOPIC_PREFIX``.

    ``executions``, ``results`` and ``changelog`` are keyed by execution id and co-partitioned
    (the executor reads the first two as streams and writes the third per input partition).
    ``triggers`` holds the scheduler's trigger state (keyed ``namespace/flowId/triggerId``) and
    ``members`` each role process's status (keyed by role and process): both compacted tables.
    ``trigger_commands`` carries the triggers API's changes to the scheduler, which alone writes
    trigger records (:mod:`kestream.scheduler.commands`).
    """

    executions: str
    results: str
    worker_tasks: str
    updates: str
    logs: str
    flows: str
    changelog: str
    #: Flow concurrency (:mod:`kestream.executor.admission`): slot requests keyed by flow
    #: (``namespace/flowId``), and the slot table's changelog, per partition like the inputs.
    admissions: str
    admission_changelog: str
    dead_letter: str
    triggers: str
    members: str
    #: The KV store (:mod:`kestream.runtime.kv_table`): compacted, keyed ``namespace/key``.
    kv: str
    trigger_commands: str

    @classmethod
    def of(cls, settings: Settings) -> Topics:
        return cls(
            executions=settings.topic("executions"),
            results=settings.topic("worker-results"),
            worker_tasks=settings.topic("worker-tasks"),
            updates=settings.topic("execution-updates"),
            logs=settings.topic("logs"),
            flows=settings.topic("flows"),
            changelog=settings.topic("executor-state-changelog"),
            admissions=settings.topic("admissions"),
            admission_changelog=settings.topic("admission-changelog"),
            dead_letter=settings.topic("dead-letter"),
            triggers=settings.topic("triggers"),
            members=settings.topic("members"),
            kv=settings.topic("kv"),
            trigger_commands=settings.topic("trigger-commands"),
        )

    def group_tasks(self, key: str) -> str:
        """The jobs topic of worker group ``key`` (:mod:`kestream.tasks.worker_group`), named
        after ``worker_tasks``; ``None``-group jobs stay on ``worker_tasks`` itself."""
        return f"{self.worker_tasks}-{key}"

    def jobs_topic(self, group: str | None) -> str:
        """Where the jobs (and kills) of a task of worker group ``group`` go."""
        return self.worker_tasks if group is None else self.group_tasks(group)

    def specs(self, partitions: int) -> list[tuple[str, int, bool]]:
        """``(name, partitions, compacted)`` of every topic."""
        return [
            (self.executions, partitions, False),
            (self.results, partitions, False),
            (self.worker_tasks, partitions, False),
            (self.updates, partitions, False),
            (self.logs, partitions, False),
            (self.changelog, partitions, True),
            (self.admissions, partitions, False),
            (self.admission_changelog, partitions, True),
            (self.flows, 1, True),
            (self.dead_letter, 1, False),
            (self.triggers, 1, True),
            (self.members, 1, True),
            (self.kv, 1, True),
            (self.trigger_commands, 1, False),
        ]


async def ensure_topics(
    settings: Settings, bootstrap: str, kind: str
) -> tuple[Topics, RecordLimit]:
    """Create kestream's topics with the configured partitions (existing ones are kept), and
    learn the record limit they impose (:mod:`kestream.runtime.record_limit`).

    On Kafka the topics are created with ``max.message.bytes`` set to
    ``KESTREAM_MAX_RECORD_BYTES``; topics that already existed keep theirs, so the limit is
    read back from the broker either way.
    """
    from kestream.runtime.record_limit import RecordLimit, read_topics_max

    topics = Topics.of(settings)
    limit = RecordLimit.of(settings)
    specs = topics.specs(settings.partitions)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **client_options(settings))
    await admin.start()
    try:
        await _create_missing(admin, settings, kind, specs)
        if kind == "kafka":  # Tansu closes the connection on DescribeConfigs
            names = [name for name, _, _ in specs]
            limit = RecordLimit.of(settings, await read_topics_max(admin, names))
    finally:
        await admin.close()
    log.info("record limit: %d bytes (%s)", limit.max_bytes, limit.source)
    return topics, limit


async def ensure_group_topics(
    settings: Settings, bootstrap: str, kind: str, names: list[str]
) -> None:
    """Create worker groups' jobs topics (:meth:`Topics.group_tasks`) that do not exist yet.

    They are made like ``worker-tasks`` (same partitions, same record limit; jobs are keyed by
    execution id, so a run and its kill share a partition), by whichever comes first: a worker
    of the group when it starts, or the executor before it sends the group's first job.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **client_options(settings))
    await admin.start()
    try:
        await _create_missing(
            admin, settings, kind, [(n, settings.partitions, False) for n in names]
        )
    finally:
        await admin.close()


async def _create_missing(
    admin: AIOKafkaAdminClient, settings: Settings, kind: str, specs: list[tuple[str, int, bool]]
) -> None:
    existing = set(await admin.list_topics())
    from kestream.runtime.record_limit import topic_configs

    record_configs = topic_configs(settings, kind)
    wanted = [
        NewTopic(
            name,
            num_partitions=count,
            replication_factor=settings.replication_factor,
            # Compaction only where the broker applies it (Tansu accepts and ignores it).
            topic_configs={"cleanup.policy": "compact", **record_configs}
            if compacted and kind == "kafka"
            else record_configs,
        )
        for name, count, compacted in specs
        if name not in existing
    ]
    if wanted:
        with contextlib.suppress(TopicAlreadyExistsError):  # another process was first
            await admin.create_topics(wanted)
        log.info("created topics: %s", ", ".join(t.name for t in wanted))
