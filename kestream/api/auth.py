"""Who may call the web servers: the credentials check and the bind rule.

Credentials are Kestra OSS's HTTP Basic (``KESTREAM_API_USERNAME``/``KESTREAM_API_PASSWORD``)
and bearer tokens (``KESTREAM_API_TOKENS``). What a request presents is hashed (SHA-256) and
the digest compared with :func:`hmac.compare_digest` against every known one, whatever matched
first: digests all have one length, so the time an answer takes tells nothing about how much of
a guess was right, nor how long a credential is. Header bytes that are not UTF-8 (aiohttp keeps
them as surrogates) are hashed as the bytes they were: they simply match nothing. Nothing here
logs a credential.

Without credentials a web server is open, so it must be reachable from this machine only: a
server asked to bind another address refuses to start (:func:`bind_refusal`), and an open server
answers only requests whose ``Host`` names loopback (:func:`is_loopback`), which stops a web
page that re-points its own DNS name at 127.0.0.1 (DNS rebinding) from reaching it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

from kestream.settings import Settings

__all__ = ["Credentials", "bind_refusal", "host_is_loopback", "is_loopback"]


@dataclass(frozen=True, slots=True)
class Credentials:
    """The SHA-256 digests of the credentials a request may present; build with :meth:`of`
    (None: none are set)."""

    username: bytes | None
    password: bytes | None
    tokens: tuple[bytes, ...]

    @classmethod
    def of(cls, settings: Settings) -> Credentials | None:
        if not settings.api_credentials_set:
            return None
        username, password = settings.api_username, settings.api_password
        return cls(
            username=_digest(username.encode()) if username else None,
            password=_digest(password.get_secret_value().encode()) if password else None,
            tokens=tuple(_digest(token.encode()) for token in settings.api_bearer_tokens),
        )

    def accept(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header carries valid credentials."""
        if not authorization:
            return False
        raw = authorization.encode("utf-8", "surrogateescape")  # the bytes as sent
        scheme, _, value = raw.strip().partition(b" ")
        scheme = scheme.lower()
        if scheme == b"basic":
            return self._basic(value.strip())
        if scheme == b"bearer":
            return self._bearer(_digest(value.strip()))
        return False

    def _basic(self, value: bytes) -> bool:
        if self.username is None or self.password is None:
            return False
        try:
            decoded = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return False
        user, sep, password = decoded.partition(b":")
        # Both compared, always: a wrong user name takes as long as a wrong password.
        user_ok = hmac.compare_digest(_digest(user), self.username)
        password_ok = hmac.compare_digest(_digest(password), self.password)
        return bool(sep) and user_ok and password_ok

    def _bearer(self, digest: bytes) -> bool:
        matched = False
        for known in self.tokens:
            matched |= hmac.compare_digest(digest, known)
        return matched


def _digest(secret: bytes) -> bytes:
    return hashlib.sha256(secret).digest()


def is_loopback(host: str) -> bool:
    """``host`` (a name or an address, IPv6 with or without brackets) is this machine only.

    Names are not resolved: only ``localhost`` counts, so what is decided does not depend on
    DNS (a rebinding attack makes any name resolve to 127.0.0.1).
    """
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_is_loopback(host_header: str | None) -> bool:
    """A request's ``Host`` (``127.0.0.1:8080``, ``[::1]:8080``, ``localhost``) names loopback."""
    if not host_header:
        return False
    try:
        name = urlsplit(f"//{host_header}").hostname
    except ValueError:
        return False
    return name is not None and is_loopback(name)


def bind_refusal(settings: Settings) -> str | None:
    """Why a web server must not start with these settings, or None when it may.

    Every role's web server binds ``KESTREAM_WEB_HOST``; without credentials, only a loopback
    address is allowed, or the API (deploy, start, kill) would be open to the network.
    """
    if settings.api_credentials_set or is_loopback(settings.web_host):
        return None
    where = settings.web_host or "every interface"
    return (
        f"KESTREAM_WEB_HOST={settings.web_host} would serve the API (and /metrics) on {where} "
        "without authentication, so kestream refuses to start. Set KESTREAM_API_USERNAME and "
        "KESTREAM_API_PASSWORD (or KESTREAM_API_TOKENS) to require credentials, or set "
        "KESTREAM_WEB_HOST=127.0.0.1 to serve this machine only."
    )
