"""A SASL_SSL-only client listener for :class:`~kestream.runtime.apache_kafka.ApacheKafka`.

Tests and the benchmark check that every client kestream opens honours the broker security
settings by running against a Kafka that accepts nothing else. The TLS material is made when the
broker is prepared, with Java's ``keytool`` (Kafka needs Java anyway, and the Python side then
needs no cryptography package): a throwaway CA, a broker certificate it signs for ``localhost``
and ``127.0.0.1`` in a PKCS12 keystore, the CA in a PKCS12 truststore for the broker, and the
CA as PEM for kestream's ``KESTREAM_BROKER_SSL_CAFILE``. SASL is PLAIN with one user, declared
in the listener's JAAS configuration; the broker's own inter-broker connections use a second
user on the same listener. The controller listener stays PLAINTEXT on loopback.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import SecretStr

from kestream.runtime.embedded_broker import run_checked
from kestream.runtime.kafka_connection import SecurityFields
from kestream.settings import SaslMechanism, SecurityProtocol

#: The client listener's name in ``listeners`` (and so in ``listener.name.<name>.*`` keys).
LISTENER = "SASL_SSL"
_BROKER_USER = "broker"
_DAYS = "2"
_KEY = ("-keyalg", "RSA", "-keysize", "2048")


@dataclass(frozen=True)
class TlsMaterial:
    """Files made by :func:`make_tls_material`; both PKCS12 stores share ``password``."""

    ca_pem: Path
    keystore: Path
    truststore: Path
    password: str


def make_tls_material(
    directory: Path, *, keytool: str = "keytool", hosts: tuple[str, ...] = ("localhost",)
) -> TlsMaterial:
    """A CA and a broker certificate it signed, valid two days for ``hosts`` and 127.0.0.1.

    The CA carries a critical ``basicConstraints`` and ``keyUsage``, the broker certificate a
    subject alternative name per host and an authority key identifier, so that strict X.509
    verification accepts the chain too (``openssl verify -x509_strict`` does; Python 3.13's
    default context sets the same flag).
    """
    directory.mkdir(parents=True, exist_ok=True)
    password = secrets.token_hex(16)
    ca_store, ca_pem = directory / "ca.p12", directory / "ca.pem"
    keystore, truststore = directory / "broker.p12", directory / "truststore.p12"
    csr, signed = directory / "broker.csr", directory / "broker.pem"
    names = ",".join([*(f"dns:{h}" for h in hosts), "ip:127.0.0.1"])

    def tool(*args: str | Path) -> None:
        command = [keytool, *map(str, args), "-storepass", password, "-noprompt"]
        run_checked(command, cwd=directory, timeout=60.0, what=f"keytool {args[0]}")

    store = ("-storetype", "PKCS12", "-validity", _DAYS)
    tool(
        "-genkeypair",
        "-alias",
        "ca",
        *_KEY,
        "-dname",
        "CN=kestream test CA",
        *store,
        "-ext",
        "bc:c=ca:true",
        "-ext",
        "KU:c=keyCertSign,cRLSign",
        "-keystore",
        ca_store,
    )
    tool("-exportcert", "-rfc", "-alias", "ca", "-keystore", ca_store, "-file", ca_pem)
    tool(
        "-genkeypair",
        "-alias",
        "broker",
        *_KEY,
        "-dname",
        f"CN={hosts[0]}",
        *store,
        "-keystore",
        keystore,
    )
    tool("-certreq", "-alias", "broker", "-keystore", keystore, "-file", csr)
    tool(
        "-gencert",
        "-alias",
        "ca",
        "-keystore",
        ca_store,
        "-infile",
        csr,
        "-outfile",
        signed,
        "-rfc",
        "-validity",
        _DAYS,
        "-ext",
        f"SAN={names}",
        "-ext",
        "KU:c=digitalSignature,keyEncipherment",
        "-ext",
        "EKU=serverAuth,clientAuth",
    )
    tool("-importcert", "-alias", "ca", "-file", ca_pem, "-keystore", keystore)
    tool("-importcert", "-alias", "broker", "-file", signed, "-keystore", keystore)
    tool(
        "-importcert",
        "-alias",
        "ca",
        "-file",
        ca_pem,
        "-keystore",
        truststore,
        "-storetype",
        "PKCS12",
    )
    return TlsMaterial(ca_pem, keystore, truststore, password)


def _token() -> str:
    return secrets.token_urlsafe(18)


@dataclass(frozen=True)
class SaslSslListener:
    """One PLAIN user on a SASL_SSL listener: what the broker is told and what clients get."""

    username: str = "kestream"
    password: str = field(default_factory=_token, repr=False)
    _broker_password: str = field(default_factory=_token, repr=False)

    def broker_properties(self, tls: TlsMaterial) -> dict[str, str]:
        """``server.properties`` entries for the listener named :data:`LISTENER`."""
        prefix = f"listener.name.{LISTENER.lower()}"
        users = {_BROKER_USER: self._broker_password, self.username: self.password}
        jaas = " ".join(
            [
                "org.apache.kafka.common.security.plain.PlainLoginModule required",
                f'username="{_BROKER_USER}" password="{self._broker_password}"',
                *(f'user_{name}="{secret}"' for name, secret in users.items()),
            ]
        )
        return {
            "sasl.enabled.mechanisms": "PLAIN",
            "sasl.mechanism.inter.broker.protocol": "PLAIN",
            f"{prefix}.plain.sasl.jaas.config": jaas + ";",
            "ssl.keystore.type": "PKCS12",
            "ssl.keystore.location": str(tls.keystore),
            "ssl.keystore.password": tls.password,
            "ssl.key.password": tls.password,
            "ssl.truststore.type": "PKCS12",
            "ssl.truststore.location": str(tls.truststore),
            "ssl.truststore.password": tls.password,
            "ssl.client.auth": "none",
        }

    def client_fields(self, tls: TlsMaterial) -> SecurityFields:
        """The security settings of a client that gets in (no client certificate)."""
        return SecurityFields(
            broker_security_protocol=SecurityProtocol.SASL_SSL,
            broker_sasl_mechanism=SaslMechanism.PLAIN,
            broker_sasl_username=self.username,
            broker_sasl_password=SecretStr(self.password),
            broker_ssl_cafile=str(tls.ca_pem),
            broker_ssl_certfile=None,
            broker_ssl_keyfile=None,
        )
