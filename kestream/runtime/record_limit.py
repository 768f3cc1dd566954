"""The record limit: the largest record this process may produce, learnt once at connect.

Three limits apply to one record, and the smallest wins:

- ``KESTREAM_MAX_RECORD_BYTES`` (default 1 MiB), which kestream also sets as ``max.message.bytes``
  on the topics it creates on Kafka, so the broker agrees with it;
- each topic's ``max.message.bytes`` as the broker reports it (``DescribeConfigs``), lower when
  someone created or altered the topics with a smaller value. The embedded Tansu broker neither
  answers ``DescribeConfigs`` (it closes the connection) nor enforces a limit, so there the
  setting alone counts;
- the producer's own ``max_request_size``, checked by aiokafka before a record leaves the
  process: :func:`kestream.runtime.kafka.make_producer` sets it to the setting (aiokafka's
  default, 1 MiB, would otherwise cap a larger setting).

:class:`RecordLimit` holds the result; the :class:`~kestream.runtime.context.BrokerContext`
carries the process's one instance (``ctx.record_limit``), and everything that sizes records
(the splitters in :mod:`kestream.runtime.records`, the output budget of the executor and the
workers, the Client's and the API's refusal of oversized requests) asks it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import MessageSizeTooLargeError

from kestream.executor.sizes import header_budget, outputs_budget, over_limit
from kestream.settings import Settings

log = logging.getLogger("kestream.records")

#: Bytes of a record that are not its value: the batch header (61), the record's framing (up to
#: about 20), its key (ids, a few hundred at most). Values get the limit minus this.
RECORD_MARGIN = 1024
#: The topic setting that bounds a record batch.
MAX_MESSAGE_BYTES = "max.message.bytes"
_DESCRIBE_TIMEOUT_S = 10.0


class RecordTooLarge(MessageSizeTooLargeError):
    """A record larger than the limit, refused before it reaches the producer.

    A subclass of aiokafka's own error, so whoever handles the producer's refusal (the API's
    413) handles this one the same way.
    """

    def __init__(self, what: str, size: int, limit: int, *, of: str = "") -> None:
        super().__init__(over_limit(what, size, limit, of=of))
        self.what, self.size, self.limit = what, size, limit

    def __str__(self) -> str:  # without aiokafka's "[Error 10] ..." prefix: people read it
        return str(self.args[0])


@dataclass(frozen=True, slots=True)
class RecordLimit:
    """The largest record this process produces (see the module docs)."""

    #: The record limit itself: key, value and framing.
    max_bytes: int
    #: Where it comes from, for the log and for people.
    source: str

    @classmethod
    def of(cls, settings: Settings, topics_max: int | None = None) -> RecordLimit:
        """The limit from the setting (also the producer's ``max_request_size``) and the
        topics' ``max.message.bytes`` (None: unknown)."""
        if topics_max is not None and topics_max < settings.max_record_bytes:
            return cls(topics_max, f"the topics' {MAX_MESSAGE_BYTES}")
        return cls(settings.max_record_bytes, "KESTREAM_MAX_RECORD_BYTES")

    @property
    def value_bytes(self) -> int:
        """The largest record value (the limit less :data:`RECORD_MARGIN`)."""
        return self.max_bytes - RECORD_MARGIN

    @property
    def output_bytes(self) -> int:
        """The largest outputs a task run may have (:func:`.sizes.outputs_budget`)."""
        return outputs_budget(self.value_bytes)

    @property
    def header_bytes(self) -> int:
        """The largest creation record an execution may start with (:func:`.sizes.header_budget`):
        its inputs, trigger and labels travel again in every one of its update records."""
        return header_budget(self.value_bytes)

    def fits(self, value: bytes | None) -> bool:
        return value is None or len(value) <= self.value_bytes

    def fits_header(self, created: bytes) -> bool:
        """Whether an execution created by the record ``created`` can have its updates written."""
        return len(created) <= self.header_bytes

    def check(self, value: bytes, what: str) -> bytes:
        """``value``, or :class:`RecordTooLarge` naming ``what`` when it does not fit."""
        if len(value) > self.value_bytes:
            raise RecordTooLarge(what, len(value), self.value_bytes)
        return value

    def check_header(self, created: bytes, what: str) -> bytes:
        """``created`` (an execution's creation record), or :class:`RecordTooLarge` naming
        ``what`` when its execution's updates could not be written (:meth:`fits_header`)."""
        if not self.fits_header(created):
            raise RecordTooLarge(what, len(created), self.header_bytes, of="a new execution")
        return created


def topic_configs(settings: Settings, kind: str) -> dict[str, str]:
    """The ``max.message.bytes`` kestream sets on the topics it creates (Kafka only: Tansu
    accepts topic configs and ignores them)."""
    return {MAX_MESSAGE_BYTES: str(settings.max_record_bytes)} if kind == "kafka" else {}


async def read_topics_max(admin: AIOKafkaAdminClient, names: Iterable[str]) -> int | None:
    """The smallest ``max.message.bytes`` of the topics ``names``, as the broker reports it;
    None when the broker does not say (Tansu, an old broker, an error: the log tells which)."""
    resources = [
        ConfigResource(ConfigResourceType.TOPIC, name, {MAX_MESSAGE_BYTES: None}) for name in names
    ]
    try:
        responses = await asyncio.wait_for(admin.describe_configs(resources), _DESCRIBE_TIMEOUT_S)
    except Exception as exc:  # any failure leaves the setting in charge; say so
        log.warning("cannot read the topics' %s (%r); using the setting", MAX_MESSAGE_BYTES, exc)
        return None
    found = [size for response in responses for size in _sizes(response)]
    return min(found) if found else None


def _sizes(response: Any) -> list[int]:
    sizes: list[int] = []
    for resource in response.resources:
        error_code, entries = resource[0], resource[4]
        if error_code:
            continue
        for entry in entries:
            name, value = entry[0], entry[1]
            if name == MAX_MESSAGE_BYTES and value is not None:
                sizes.append(int(value))
    return sizes
