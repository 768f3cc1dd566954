"""What aiokafka knows of a consumer's group membership and keeps only privately, read in one
place: its generation, its member id, and how its coordination task ended.

The scheduler lease fences on the generation and member id, the member fence (and through it the
write gate) compares them, the worker's sticky assignor claims partitions under the generation,
and the worker and the lease stop when the coordination task (joins, syncs, heartbeats) died.
aiokafka 0.13 and 0.14 keep these on ``consumer._coordinator``; the fencing readers of
generation and member id raise rather than guess where a version keeps them elsewhere, and
tests/unit/runtime/test_aiokafka_internals.py checks the fields against the installed aiokafka.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaConsumer

__all__ = ["coordination_failure", "group_generation", "member_id", "membership"]


def group_generation(consumer: AIOKafkaConsumer) -> int:
    """The consumer's group generation, which aiokafka keeps only privately (its coordinator's
    ``generation``). Raises rather than guess when a version of aiokafka keeps it elsewhere: a
    fence that silently reads nothing would let an expelled member keep writing (the scheduler
    lease, the sticky assignor's claims)."""
    coordinator = getattr(consumer, "_coordinator", None)
    generation = getattr(coordinator, "generation", None)
    if isinstance(generation, bool) or not isinstance(generation, int):
        raise RuntimeError(
            "this aiokafka keeps no readable group generation (consumer._coordinator.generation):"
            " the member cannot be fenced"
        )
    return generation


def coordination_failure(consumer: AIOKafkaConsumer) -> BaseException | None:
    """How the consumer's group coordination (aiokafka's private coordination task, which
    joins, syncs and heartbeats) ended, if it did; None while it runs, or where this aiokafka
    keeps no such task (nothing to read: the scheduler lease then relies on its generation and
    member id alone)."""
    task = getattr(getattr(consumer, "_coordinator", None), "_coordination_task", None)
    if not isinstance(task, asyncio.Future) or not task.done():
        return None
    if task.cancelled():
        return asyncio.CancelledError("the group coordination was cancelled")
    return task.exception() or RuntimeError("the group coordination ended")


def member_id(consumer: AIOKafkaConsumer) -> str:
    """The consumer's member id in its group (aiokafka keeps it privately, as the generation);
    raises when unreadable, for the same reason as :func:`group_generation`."""
    found = getattr(getattr(consumer, "_coordinator", None), "member_id", None)
    if not isinstance(found, str):
        raise RuntimeError(
            "this aiokafka keeps no readable member id (consumer._coordinator.member_id): the"
            " member cannot be fenced"
        )
    return found


def membership(coordinator: Any) -> tuple[int, str] | None:
    """The generation and member id ``coordinator`` (a consumer's ``_coordinator``) last heard,
    or None where it keeps neither: the member fence only compares them, so it reads leniently
    where :func:`group_generation` and :func:`member_id` raise."""
    generation = getattr(coordinator, "generation", None)
    found = getattr(coordinator, "member_id", None)
    if not isinstance(generation, int) or not isinstance(found, str):
        return None
    return generation, found
