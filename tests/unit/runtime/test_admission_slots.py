"""The executor processor's admission part without a broker: the records it reads and writes,
what a batch stages (answers with the commands, slot records with the changelogs), and the
dead letter of a request that cannot be read."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord

from kestream.executor import events as ev
from kestream.executor.admission import Ask, Release, SlotTable
from kestream.models.state import StateType as S
from kestream.runtime import records
from kestream.runtime.admission_slots import AdmissionSlots
from kestream.runtime.executor_outbox import Outbox
from kestream.runtime.executor_writer import DeadLetters
from kestream.runtime.metrics import Metrics
from kestream.runtime.record_limit import RecordLimit
from kestream.runtime.topics import Topics
from kestream.settings import Settings

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SETTINGS = Settings(topic_prefix="t.")
TOPICS = Topics.of(SETTINGS)


def record(value: bytes, offset: int = 0) -> ConsumerRecord[Any, Any]:
    return ConsumerRecord(
        TOPICS.admissions, 3, offset, 0, 0, b"ns/f", value, None, 4, len(value), []
    )


def slots() -> AdmissionSlots:
    letters = DeadLetters(TOPICS, RecordLimit.of(SETTINGS), Metrics())
    return AdmissionSlots(TOPICS, letters, clock=lambda: T0)


def test_requests_and_answers_round_trip_through_their_records() -> None:
    ask = Ask("ns", "f", "e1", 2, 3, "CANCEL", True)
    release = Release("ns", "f", "e1", 2, 3)
    assert records.decode_slot_request(records.encode_slot_request(ask)) == ask
    assert records.decode_slot_request(records.encode_slot_request(release)) == release
    answer = ev.Admission("e1", "ns", "f", 2, S.QUEUED, T0)
    assert records.decode_event(records.encode_event(answer)) == answer


@pytest.mark.parametrize(
    "body",
    [
        b'{"type": "ask", "namespace": "ns", "flowId": "f", "id": "e", "attempt": 0, "limit": 1}',
        b'{"type": "ask", "namespace": "ns", "flowId": "f", "id": "e", "attempt": 1}',
        b'{"type": "grab", "namespace": "ns", "flowId": "f", "id": "e", "attempt": 1, "limit": 1}',
        b'{"type": "ask", "namespace": "ns", "flowId": "f", "id": "e", "attempt": 1, "limit": 1,'
        b' "behavior": "PANIC"}',
        b"[1, 2]",
        b"not json",
    ],
)
def test_a_request_that_cannot_be_read_is_a_dead_letter(body: bytes) -> None:
    part, out = slots(), Outbox()
    part.handle(3, record(body), out)
    assert [topic for topic, *_ in out.commands] == [TOPICS.dead_letter]
    assert out.tables == [] and part.tables.get(3) is None


def test_an_answer_that_is_not_a_decision_is_refused() -> None:
    body = records.event_value(ev.Admission("e1", "ns", "f", 1, S.RUNNING, T0))
    body["decision"] = "SUCCESS"
    with pytest.raises(records.RecordError):
        records.decode_event(records.dumps(body))


def test_answers_go_with_the_commands_and_slot_records_with_the_changelogs() -> None:
    part, out = slots(), Outbox()
    for n, eid in enumerate(("e1", "e2")):
        part.handle(3, record(records.encode_slot_request(Ask("ns", "f", eid, 1, 1)), n), out)
    part.handle(3, record(records.encode_slot_request(Release("ns", "f", "e1", 1, 1)), 2), out)
    answers = [records.decode_event(value) for _, _, value, _ in out.commands]
    assert [(a.execution_id, a.decision) for a in answers if isinstance(a, ev.Admission)] == [
        ("e1", S.RUNNING),
        ("e2", S.QUEUED),
        ("e2", S.RUNNING),
    ]
    assert {topic for topic, *_ in out.commands} == {TOPICS.executions}
    written = [(topic, key, partition) for topic, key, _, partition in out.tables]
    assert written == [
        (TOPICS.admission_changelog, "ns/f/e1", 3),
        (TOPICS.admission_changelog, "ns/f/e2", 3),
        (TOPICS.admission_changelog, "ns/f/e1", 3),  # its tombstone
        (TOPICS.admission_changelog, "ns/f/e2", 3),  # now running
    ]
    latest: dict[str, Any] = {}
    for _, key, value, _ in out.tables:
        if value is None:
            latest.pop(key, None)
        else:
            latest[key] = records.loads(value)
    restored = SlotTable.restore(latest)
    assert restored.holders("ns", "f") == ["e2"] == part.tables[3].holders("ns", "f")
