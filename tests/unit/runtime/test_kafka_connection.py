"""Connection security: the one set of aiokafka options every client takes, and faust's copy."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import faust
import pytest
from faust.types.auth import AuthProtocol

from kestream.runtime.faust_app import faust_settings
from kestream.runtime.kafka_connection import (
    BrokerSecurityError,
    client_options,
    embedded_refusal,
    security_environment,
    security_fields,
    with_security,
)
from kestream.runtime.supervisor import Supervisor
from kestream.settings import Settings


def make(**fields: Any) -> Settings:
    """Settings from ``fields`` alone (``model_validate`` reads no environment)."""
    return Settings.model_validate({"broker": "127.0.0.1:9092", **fields})


SASL = {
    "broker_sasl_mechanism": "SCRAM-SHA-512",
    "broker_sasl_username": "svc",
    "broker_sasl_password": "pw",
}


def test_plaintext_and_no_settings_add_nothing_but_the_protocol() -> None:
    assert client_options(make()) == {"security_protocol": "PLAINTEXT"}
    assert client_options(None) == {}


def test_sasl_ssl_gives_a_verifying_tls_context_and_the_credentials() -> None:
    options = client_options(make(broker_security_protocol="SASL_SSL", **SASL))
    context = options.pop("ssl_context")
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
    assert options == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "svc",
        "sasl_plain_password": "pw",
    }


def test_sasl_plaintext_has_no_tls_context() -> None:
    options = client_options(make(broker_security_protocol="SASL_PLAINTEXT", **SASL))
    assert "ssl_context" not in options and options["sasl_mechanism"] == "SCRAM-SHA-512"


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"broker_security_protocol": "SASL_SSL"}, "KESTREAM_BROKER_SASL_MECHANISM"),
        (
            {"broker_security_protocol": "SASL_SSL", **SASL, "broker_sasl_password": None},
            "KESTREAM_BROKER_SASL_PASSWORD",
        ),
        ({**SASL}, "KESTREAM_BROKER_SASL_USERNAME"),  # credentials under PLAINTEXT
        ({"broker_ssl_cafile": "/ca.pem"}, "KESTREAM_BROKER_SSL_CAFILE"),
        (
            {"broker_security_protocol": "SASL_PLAINTEXT", **SASL, "broker_ssl_cafile": "/c"},
            "KESTREAM_BROKER_SSL_CAFILE",
        ),
        (
            {"broker_security_protocol": "SSL", "broker_ssl_keyfile": "/key.pem"},
            "KESTREAM_BROKER_SSL_CERTFILE",
        ),
    ],
)
def test_incomplete_or_ignored_settings_are_refused_by_name(
    fields: dict[str, Any], named: str
) -> None:
    with pytest.raises(BrokerSecurityError, match=named):
        client_options(make(**fields))


def test_an_unreadable_ca_file_is_refused_by_name(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.pem"
    with pytest.raises(BrokerSecurityError, match="KESTREAM_BROKER_SSL_CAFILE"):
        client_options(make(broker_security_protocol="SSL", broker_ssl_cafile=str(missing)))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(BrokerSecurityError, match=r"garbage\.pem"):
        client_options(make(broker_security_protocol="SSL", broker_ssl_cafile=str(garbage)))


def test_child_environment_replaces_every_inherited_security_variable() -> None:
    fields = security_fields(make(broker_security_protocol="SASL_SSL", **SASL))
    inherited = {
        "PATH": "/bin",
        "KESTREAM_BROKER_SSL_CERTFILE": "/stale.pem",
        "KESTREAM_BROKER_SASL_PASSWORD": "old",
    }
    env = with_security(inherited, fields)
    assert env == {
        "PATH": "/bin",
        "KESTREAM_BROKER_SECURITY_PROTOCOL": "SASL_SSL",
        "KESTREAM_BROKER_SASL_MECHANISM": "SCRAM-SHA-512",
        "KESTREAM_BROKER_SASL_USERNAME": "svc",
        "KESTREAM_BROKER_SASL_PASSWORD": "pw",
    }
    assert security_environment(security_fields(make())) == {
        "KESTREAM_BROKER_SECURITY_PROTOCOL": "PLAINTEXT"
    }


def _faust_credentials(settings: Settings, tmp_path: Path) -> Any:
    settings = settings.model_copy(update={"data_dir": str(tmp_path)})
    return faust_settings(settings, "worker").get("broker_credentials")


@pytest.mark.parametrize(
    ("protocol", "faust_protocol"),
    [("SASL_SSL", AuthProtocol.SASL_SSL), ("SASL_PLAINTEXT", AuthProtocol.SASL_PLAINTEXT)],
)
def test_faust_gets_the_same_protocol_and_credentials(
    protocol: str, faust_protocol: AuthProtocol, tmp_path: Path
) -> None:
    credentials = _faust_credentials(make(broker_security_protocol=protocol, **SASL), tmp_path)
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.protocol is faust_protocol
    assert (credentials.username, credentials.password) == ("svc", "pw")
    assert credentials.mechanism.value == "SCRAM-SHA-512"
    assert (credentials.ssl_context is not None) == (protocol == "SASL_SSL")


def test_faust_gets_tls_alone_for_ssl_and_nothing_for_plaintext(tmp_path: Path) -> None:
    credentials = _faust_credentials(make(broker_security_protocol="SSL"), tmp_path)
    assert isinstance(credentials, faust.SSLCredentials)
    assert credentials.protocol is AuthProtocol.SSL
    assert _faust_credentials(make(), tmp_path) is None


def test_the_embedded_broker_refuses_secured_settings() -> None:
    secured = Settings.model_validate({"broker_security_protocol": "SASL_SSL", **SASL})
    refusal = embedded_refusal(secured)
    assert refusal is not None and "KESTREAM_BROKER is unset" in refusal
    assert embedded_refusal(secured.model_copy(update={"broker": "kafka:9093"})) is None
    assert embedded_refusal(Settings.model_validate({})) is None


async def test_standalone_stops_before_starting_anything_on_secured_settings_alone() -> None:
    secured = Settings.model_validate({"broker_security_protocol": "SASL_SSL", **SASL})
    supervisor = Supervisor(secured, None)
    assert await supervisor.run() == 2
    assert supervisor.broker is None and not supervisor.slots
