"""Which produce failures are about the record, and which about the broker.

Every role that produces decides the same way: a record the broker refuses for what it is (too
large for the topic, an invalid topic, a policy) will be refused again, so retrying it is
pointless and it must be dealt with (dead-lettered, or replaced by a failure that says why);
any other failure (a connection lost, a request timed out, a leader moving) says the broker is
away for now, and the record is sent again once it is back.
"""

from __future__ import annotations

from aiokafka import errors as kafka_errors

__all__ = ["RECORD_FAULTS", "record_fault"]

#: Broker answers that are about one record, not the broker.
RECORD_FAULTS = (
    kafka_errors.MessageSizeTooLargeError,
    kafka_errors.RecordTooLargeError,
    kafka_errors.RecordListTooLargeError,
    kafka_errors.CorruptRecordException,
    kafka_errors.InvalidTopicError,
    kafka_errors.UnsupportedForMessageFormatError,
    kafka_errors.PolicyViolationError,
)


def record_fault(exc: BaseException) -> bool:
    """Whether a produce failure is about the record itself (sending it again cannot help)
    rather than the broker (sending it again once the broker is back will)."""
    if isinstance(exc, kafka_errors.KafkaError):
        return isinstance(exc, RECORD_FAULTS)
    return isinstance(exc, TypeError | ValueError)  # a value or key the client cannot send
