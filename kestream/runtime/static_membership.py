"""Static group membership (Kafka's KIP-345) for the executor, the worker and the scheduler lease.

A member killed with SIGKILL keeps its partitions until its session expires (10 s on Kafka),
and a member killed while its JoinGroup was pending holds a rebalance for the whole rebalance
timeout (measured: 16 s of an executor's partitions unserved after two kills in a row). A
process restarted with the same ``group.instance.id`` takes the dead member's place at its
first JoinGroup: the coordinator fences the old member id and, when nothing else changed, hands
the new process the same partitions without a rebalance.

Two costs, both handled here:

- aiokafka sends no LeaveGroup for a static member, so a clean stop would leave its partitions
  unserved for a session. :func:`stop_member` leaves explicitly (LeaveGroup by member id,
  which Kafka accepts for a static member) once the caller has committed.
- A replacement keeps the group generation, so a fence on the generation alone cannot tell
  it from the process it replaced: the scheduler lease also compares the member id, which
  aiokafka renews once the coordinator refuses it, as the executor's and the worker's write
  gate does (:mod:`.write_gate`). The worker's sticky assignor is told the generation of the
  assignment its replacement receives (:mod:`.sticky_assignor`), the dead member's, which is
  the group's: its claim at the next rebalance is as current as its predecessor's was. Two
  live processes given one id replace each other at every heartbeat (measured on Kafka 4.4),
  so the id must be unique among live processes: the operator's
  (``KESTREAM_GROUP_INSTANCE_ID``, one per process), or ``standalone``'s, derived per child
  and restarted only after the child exited. A group keeps its own ids, so the roles of one
  process (each in its own group, each once: one worker consumer per process) share it.

Only Apache Kafka gets the id. Tansu does honour it (a probe with a 20 s session: a replacement
with the dead member's id owned its partitions after 13 s, Tansu's delay of a first join, one
without it after 36 s; LeaveGroup by member id is accepted too), but the embedded broker's
session is 4 s already, and what a group coordinator does with fenced ids under load was only
measured on Kafka.
"""

from __future__ import annotations

import hashlib
import socket
from typing import Any

from aiokafka import AIOKafkaConsumer

from kestream.settings import Settings

__all__ = ["child_instance_id", "static_member", "stop_member"]


def static_member(settings: Settings, kind: str) -> dict[str, Any]:
    """Keyword arguments for a group consumer: the instance id on Kafka when one is set."""
    if kind != "kafka" or not settings.group_instance_id:
        return {}
    return {"group_instance_id": settings.group_instance_id}


def child_instance_id(settings: Settings, slot: str) -> str:
    """The instance id of ``standalone``'s child ``slot``: the operator's id when set, else this
    host and data directory (one standalone per data directory holds its lock), then the slot,
    so a restarted child takes its predecessor's place and no other process shares it."""
    base = settings.group_instance_id
    if not base:
        directory = str(settings.data_path.resolve()).encode()
        base = f"{socket.gethostname()}-{hashlib.sha256(directory).hexdigest()[:12]}"
    return f"{base}.{slot}"


async def stop_member(consumer: AIOKafkaConsumer) -> None:
    """Stop ``consumer`` and leave its group, static member or not, so its partitions move at
    once. Manual commits only: the caller commits what it processed before calling this."""
    coordinator = getattr(consumer, "_coordinator", None)
    if coordinator is not None:
        # aiokafka's stop skips LeaveGroup while an instance id is set; leaving by member id
        # is what a dynamic member does and Kafka accepts it for a static one.
        coordinator._group_instance_id = None
    await consumer.stop()
