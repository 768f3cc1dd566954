"""aiokafka clients configured from kestream's settings and the broker's kind.

The broker-specific choices (no idempotent producer and a 10 ms fetch wait on the embedded Tansu;
idempotence on Kafka) come from :mod:`kestream.runtime.tansu_compat`; connection security
(TLS, SASL) from :func:`kestream.runtime.kafka_connection.client_options`, the one place every
client kestream opens takes it from.
"""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from kestream.runtime.doorbell import RingingProducer
from kestream.runtime.fetch_pacing import PacedConsumer, paced_consumer_options, producer_bell
from kestream.runtime.kafka_connection import client_options
from kestream.runtime.processing_guarantee import isolation_level
from kestream.runtime.tansu_compat import consumer_options, producer_options
from kestream.settings import Settings


def make_producer(
    settings: Settings, bootstrap: str, kind: str, *, transactional_id: str | None = None
) -> AIOKafkaProducer:
    """A producer with kestream's defaults; ``transactional_id``: a transactional one (the
    executor's under exactly-once, :mod:`kestream.runtime.executor_transactions`)."""
    options = producer_options(kind)
    if transactional_id is not None:
        options.update(transactional_id=transactional_id, enable_idempotence=True, acks="all")
    options["linger_ms"] = settings.producer_linger_ms
    options["max_request_size"] = settings.max_record_bytes  # see kestream.runtime.record_limit
    options.update(client_options(settings))
    bell = producer_bell(settings, bootstrap, kind)  # wakes paced consumers (fetch_pacing)
    if bell is not None:
        return RingingProducer(bell, bootstrap_servers=bootstrap, **options)
    return AIOKafkaProducer(bootstrap_servers=bootstrap, **options)


def make_consumer(
    settings: Settings, bootstrap: str, kind: str, *, group_id: str | None, **extra: Any
) -> AIOKafkaConsumer:
    """A consumer with kestream's defaults: manual commits, earliest offsets, short fetch wait,
    committed records only under exactly-once."""
    options: dict[str, Any] = {
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": isolation_level(settings, kind),
        **consumer_options(kind),
    }
    options["session_timeout_ms"] = settings.session_timeout()
    options["rebalance_timeout_ms"] = settings.rebalance_timeout()
    options["heartbeat_interval_ms"] = settings.heartbeat_interval_ms
    if settings.consumer_fetch_max_wait_ms is not None:
        options["fetch_max_wait_ms"] = settings.consumer_fetch_max_wait_ms
    elif kind != "tansu":
        options["fetch_max_wait_ms"] = 100
    options.update(extra)
    options.update(client_options(settings))
    paced = paced_consumer_options(settings, bootstrap, kind)  # idle consumers stop polling
    if paced:
        return PacedConsumer(bootstrap_servers=bootstrap, group_id=group_id, **options, **paced)
    return AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group_id, **options)
