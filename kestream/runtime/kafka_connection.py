"""How every Kafka client kestream opens connects: TLS and SASL options from the settings.

Producers, consumers, the admin client, the broker probes (:func:`make_client`), faust's
credentials and the benchmark all take their connection options from :func:`client_options`, so
a secured broker (``KESTREAM_BROKER_SECURITY_PROTOCOL`` and the ``KESTREAM_BROKER_SASL_*`` and
``KESTREAM_BROKER_SSL_*`` settings) is honoured by all of them or by none. The settings are
checked first (:func:`check_security`): an incomplete combination, such as SASL credentials
with a PLAINTEXT protocol, would otherwise connect without them and fail far from its cause.

This module sits below :mod:`kestream.runtime.tansu_compat` and
:mod:`kestream.runtime.embedded_broker` (whose probes need it), so it imports neither.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any, TypedDict

from aiokafka import AIOKafkaClient
from pydantic import SecretStr

from kestream.settings import SaslMechanism, SecurityProtocol, Settings

_TLS = frozenset({SecurityProtocol.SSL, SecurityProtocol.SASL_SSL})
_SASL = frozenset({SecurityProtocol.SASL_PLAINTEXT, SecurityProtocol.SASL_SSL})


class BrokerSecurityError(ValueError):
    """The ``KESTREAM_BROKER_*`` security settings cannot make a working connection."""


class SecurityFields(TypedDict):
    """Every connection-security field of :class:`~kestream.settings.Settings`.

    Given all together (``Settings(**fields)``) they replace whatever the environment holds, so a
    broker kestream starts itself can hand out exactly the settings that reach it.
    """

    broker_security_protocol: SecurityProtocol
    broker_sasl_mechanism: SaslMechanism | None
    broker_sasl_username: str | None
    broker_sasl_password: SecretStr | None
    broker_ssl_cafile: str | None
    broker_ssl_certfile: str | None
    broker_ssl_keyfile: str | None


def security_fields(settings: Settings) -> SecurityFields:
    """The connection-security fields of ``settings``."""
    return SecurityFields(
        broker_security_protocol=settings.broker_security_protocol,
        broker_sasl_mechanism=settings.broker_sasl_mechanism,
        broker_sasl_username=settings.broker_sasl_username,
        broker_sasl_password=settings.broker_sasl_password,
        broker_ssl_cafile=settings.broker_ssl_cafile,
        broker_ssl_certfile=settings.broker_ssl_certfile,
        broker_ssl_keyfile=settings.broker_ssl_keyfile,
    )


def security_environment(fields: SecurityFields) -> dict[str, str]:
    """The ``KESTREAM_BROKER_*`` variables a child process reads back as ``fields``.

    Unset fields are left out: the caller must remove those names from the child's environment
    (:func:`with_security`), or an inherited value would mix in.
    """
    env: dict[str, str] = {}
    for name, value in fields.items():
        if value is None:
            continue
        text = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
        env[f"KESTREAM_{name.upper()}"] = text
    return env


def with_security(environ: Mapping[str, str], fields: SecurityFields) -> dict[str, str]:
    """``environ`` with its broker security variables replaced by those of ``fields``."""
    names = {f"KESTREAM_{name.upper()}" for name in SecurityFields.__annotations__}
    kept = {key: value for key, value in environ.items() if key not in names}
    return {**kept, **security_environment(fields)}


def check_security(settings: Settings) -> None:
    """Refuse security settings that are incomplete or that the protocol would ignore.

    SASL protocols need a mechanism, a user name and a password; the SASL and SSL file settings
    are refused under a protocol that does not use them (they would be silently dropped, and the
    broker's refusal would name none of them); a key file needs its certificate file.
    """
    protocol = settings.broker_security_protocol
    sasl = {
        "KESTREAM_BROKER_SASL_MECHANISM": settings.broker_sasl_mechanism,
        "KESTREAM_BROKER_SASL_USERNAME": settings.broker_sasl_username,
        "KESTREAM_BROKER_SASL_PASSWORD": settings.broker_sasl_password,
    }
    tls = {
        "KESTREAM_BROKER_SSL_CAFILE": settings.broker_ssl_cafile,
        "KESTREAM_BROKER_SSL_CERTFILE": settings.broker_ssl_certfile,
        "KESTREAM_BROKER_SSL_KEYFILE": settings.broker_ssl_keyfile,
    }
    if protocol in _SASL:
        missing = [name for name, value in sasl.items() if value is None]
        if missing:
            raise BrokerSecurityError(
                f"KESTREAM_BROKER_SECURITY_PROTOCOL={protocol.value} needs {', '.join(missing)}"
            )
    else:
        _refuse_unused(protocol, sasl, "SASL_SSL or SASL_PLAINTEXT")
    if protocol not in _TLS:
        _refuse_unused(protocol, tls, "SSL or SASL_SSL")
    if settings.broker_ssl_keyfile is not None and settings.broker_ssl_certfile is None:
        raise BrokerSecurityError(
            "KESTREAM_BROKER_SSL_KEYFILE is set without KESTREAM_BROKER_SSL_CERTFILE: "
            "a client key needs its certificate"
        )


def _refuse_unused(protocol: SecurityProtocol, values: Mapping[str, object], wanted: str) -> None:
    given = [name for name, value in values.items() if value is not None]
    if given:
        raise BrokerSecurityError(
            f"{', '.join(given)} set, but KESTREAM_BROKER_SECURITY_PROTOCOL={protocol.value} "
            f"does not use it: set the protocol to {wanted}, or unset them"
        )


def embedded_refusal(settings: Settings) -> str | None:
    """Why the embedded broker cannot serve these settings, or None when it can.

    It listens PLAINTEXT on loopback only; secured settings without ``KESTREAM_BROKER`` are a
    forgotten broker address, and every client would fail its TLS or SASL handshake with it.
    """
    protocol = settings.broker_security_protocol
    if settings.broker or protocol is SecurityProtocol.PLAINTEXT:
        return None
    return (
        f"KESTREAM_BROKER_SECURITY_PROTOCOL={protocol.value} but KESTREAM_BROKER is unset, and "
        "the embedded broker speaks PLAINTEXT only: set KESTREAM_BROKER to your Kafka, or "
        "unset the KESTREAM_BROKER_* security settings"
    )


def ssl_context(settings: Settings) -> ssl.SSLContext:
    """A client TLS context: the broker's certificate checked against ``broker_ssl_cafile``
    (the system's CAs when unset) including its host name, and the client certificate if any."""
    try:
        context = ssl.create_default_context(cafile=settings.broker_ssl_cafile)
    except (OSError, ssl.SSLError) as exc:
        raise BrokerSecurityError(
            f"KESTREAM_BROKER_SSL_CAFILE={settings.broker_ssl_cafile}: cannot load it ({exc})"
        ) from exc
    if settings.broker_ssl_certfile is not None:
        try:
            context.load_cert_chain(settings.broker_ssl_certfile, settings.broker_ssl_keyfile)
        except (OSError, ssl.SSLError) as exc:
            raise BrokerSecurityError(
                f"KESTREAM_BROKER_SSL_CERTFILE={settings.broker_ssl_certfile} / "
                f"KESTREAM_BROKER_SSL_KEYFILE={settings.broker_ssl_keyfile}: cannot load the "
                f"client certificate ({exc})"
            ) from exc
    return context


def client_options(settings: Settings | None) -> dict[str, Any]:
    """aiokafka keyword arguments for the connection's security, shared by every client.

    ``None`` stands for a broker kestream started itself on loopback without security (the
    embedded Tansu, a test Kafka): no options, whatever the environment says. aiokafka passes
    ``sasl_plain_username``/``sasl_plain_password`` to the SCRAM mechanisms too.
    """
    if settings is None:
        return {}
    check_security(settings)
    protocol = settings.broker_security_protocol
    options: dict[str, Any] = {"security_protocol": protocol.value}
    if protocol in _TLS:
        options["ssl_context"] = ssl_context(settings)
    if protocol in _SASL:
        assert settings.broker_sasl_mechanism is not None  # check_security saw to it
        assert settings.broker_sasl_password is not None
        options["sasl_mechanism"] = settings.broker_sasl_mechanism.value
        options["sasl_plain_username"] = settings.broker_sasl_username
        options["sasl_plain_password"] = settings.broker_sasl_password.get_secret_value()
    return options


def make_client(settings: Settings | None, bootstrap: str, *, timeout: float) -> AIOKafkaClient:
    """A bare aiokafka client (metadata, raw requests) for probes, with the same security."""
    return AIOKafkaClient(
        bootstrap_servers=bootstrap,
        request_timeout_ms=int(timeout * 1000),
        **client_options(settings),
    )
