"""aiokafka clients configured from kestream's settings and the broker's kind.

The broker-specific choices (no idempotent producer and a 10 ms fetch wait on the embedded Tansu;
idempotence on Kafka) come from :mod:`kestream.runtime.tansu_compat`; connection security
(TLS, SASL) from the settings.
"""

from __future__ import annotations

import ssl
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from kestream.runtime.tansu_compat import consumer_options, producer_options
from kestream.settings import SecurityProtocol, Settings


def client_options(settings: Settings) -> dict[str, Any]:
    """Security options shared by producers, consumers and the admin client."""
    options: dict[str, Any] = {"security_protocol": settings.broker_security_protocol.value}
    if settings.broker_security_protocol in (SecurityProtocol.SSL, SecurityProtocol.SASL_SSL):
        context = ssl.create_default_context(cafile=settings.broker_ssl_cafile)
        if settings.broker_ssl_certfile:
            context.load_cert_chain(settings.broker_ssl_certfile, settings.broker_ssl_keyfile)
        options["ssl_context"] = context
    if settings.broker_sasl_mechanism is not None:
        options["sasl_mechanism"] = settings.broker_sasl_mechanism.value
        options["sasl_plain_username"] = settings.broker_sasl_username
        password = settings.broker_sasl_password
        options["sasl_plain_password"] = password.get_secret_value() if password else None
    return options


def make_producer(settings: Settings, bootstrap: str, kind: str) -> AIOKafkaProducer:
    options = producer_options(kind)
    options["linger_ms"] = settings.producer_linger_ms
    return AIOKafkaProducer(bootstrap_servers=bootstrap, **options, **client_options(settings))


def make_consumer(
    settings: Settings, bootstrap: str, kind: str, *, group_id: str | None, **extra: Any
) -> AIOKafkaConsumer:
    """A consumer with kestream's defaults: manual commits, earliest offsets, short fetch wait."""
    options: dict[str, Any] = {
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        **consumer_options(kind),
    }
    options["session_timeout_ms"] = settings.session_timeout_ms
    options["heartbeat_interval_ms"] = settings.heartbeat_interval_ms
    if settings.consumer_fetch_max_wait_ms is not None:
        options["fetch_max_wait_ms"] = settings.consumer_fetch_max_wait_ms
    elif kind != "tansu":
        options["fetch_max_wait_ms"] = 100
    options.update(extra)
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group_id, **options, **client_options(settings)
    )
