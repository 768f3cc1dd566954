"""Which produce failures are about the record, and which about the broker.

Every role that produces decides the same way: a record the broker refuses for what it is (too
large for the topic, an invalid topic, a policy) will be refused again, so retrying it is
pointless and it must be dealt with (dead-lettered, or replaced by a failure that says why);
any other failure (a connection lost, a request timed out, a leader moving) says the broker is
away for now, and the record is sent again once it is back.

An authorization error (:func:`authorization_fault`: the topic's ACLs refuse this client) is
neither: every record of the topic is refused until an operator grants it, so sending again
only spins, and no record is to blame. The role stops, loudly: the executor, as on any failure
that is not one record's; the worker, at the first refusal of the lines a running job logs,
or once the result of the job whose lines it could not write stands, or at once on its results
or dead-letter topic (the job left undone, for its partition's next owner).

Either way the refusal is for good (:func:`permanent_fault`): a record refused so is acted on at
once, never sent again in the hope that it passes.
"""

from __future__ import annotations

from aiokafka import errors as kafka_errors

__all__ = [
    "AUTHORIZATION_FAULTS",
    "RECORD_FAULTS",
    "authorization_fault",
    "permanent_fault",
    "record_fault",
]

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


#: Broker answers that this client may not do what it asked (the ACLs of a topic, a group, the
#: cluster, a transactional id).
AUTHORIZATION_FAULTS = (
    kafka_errors.TopicAuthorizationFailedError,
    kafka_errors.GroupAuthorizationFailedError,
    kafka_errors.ClusterAuthorizationFailedError,
    kafka_errors.TransactionalIdAuthorizationFailed,
)


def authorization_fault(exc: BaseException) -> bool:
    """Whether a produce failure is the broker refusing this client what it asked (see the
    module docstring)."""
    return isinstance(exc, AUTHORIZATION_FAULTS)


def permanent_fault(exc: BaseException) -> bool:
    """Whether a produce failure will come again however often the record is sent: the
    record's own fault (:func:`record_fault`) or this client's rights
    (:func:`authorization_fault`), as opposed to the broker being away."""
    return record_fault(exc) or authorization_fault(exc)
