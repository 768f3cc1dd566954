"""The benchmark hands one set of broker security settings to its client and every role."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from bench.stack import Stack, StackConfig, fresh_kafka_listener
from kestream.runtime.apache_kafka_sasl import SaslSslListener, TlsMaterial
from kestream.runtime.kafka_connection import SecurityFields, security_fields
from kestream.settings import SaslMechanism, SecurityProtocol, Settings


def fields(**changes: object) -> SecurityFields:
    base = {
        "broker_security_protocol": "SASL_SSL",
        "broker_sasl_mechanism": "PLAIN",
        "broker_sasl_username": "bench",
        "broker_sasl_password": "pw",
    }
    return security_fields(Settings.model_validate({**base, **changes}))


def test_kafka_is_fresh_plaintext_or_sasl_ssl_for_the_configured_user() -> None:
    assert fresh_kafka_listener(security_fields(Settings.model_validate({}))) is None
    listener = fresh_kafka_listener(fields())
    assert listener is not None
    assert (listener.username, listener.password) == ("bench", "pw")
    with pytest.raises(ValueError, match="use --broker"):
        fresh_kafka_listener(fields(broker_sasl_mechanism="SCRAM-SHA-256"))
    with pytest.raises(ValueError, match="SASL_PLAINTEXT"):
        fresh_kafka_listener(fields(broker_security_protocol="SASL_PLAINTEXT"))


def test_roles_and_client_get_the_same_security(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KESTREAM_BROKER_SSL_CERTFILE", "/stale/client.pem")
    stack = Stack(StackConfig(broker="kafka", run_dir=tmp_path), [])
    tls = TlsMaterial(tmp_path / "ca.pem", tmp_path / "k.p12", tmp_path / "t.p12", "x")
    stack.security = SaslSslListener(username="bench", password="pw").client_fields(tls)
    stack.bootstrap = "127.0.0.1:9093"

    env = stack._role_env()
    assert env["KESTREAM_BROKER_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert env["KESTREAM_BROKER_SASL_PASSWORD"] == "pw"
    assert env["KESTREAM_BROKER_SSL_CAFILE"] == str(tmp_path / "ca.pem")
    assert "KESTREAM_BROKER_SSL_CERTFILE" not in env  # the inherited one would mix in

    settings = stack.settings
    assert settings.broker_security_protocol is SecurityProtocol.SASL_SSL
    assert settings.broker_sasl_mechanism is SaslMechanism.PLAIN
    assert settings.broker_sasl_password == SecretStr("pw")
    assert settings.broker_ssl_certfile is None
    assert settings.broker_ssl_cafile == str(tmp_path / "ca.pem")
