"""SECRET inputs, encrypted at rest with ``KESTREAM_ENCRYPTION_KEY`` (AES-256-GCM).

A SECRET input's value is encrypted where it enters (the API, the client, ``kestream.testing``,
the executor for defaults) into a *sealed* text, ``kestream:enc:v1:<base64url(nonce|data)>``,
before any record carries it: executions, the changelog and the index hold only that. Without a
key, an execution with a SECRET input is refused (as Kestra refuses one without its encryption
key). The key is any text of 32 characters or more; its SHA-256 is the AES key, so every
process with the same setting reads the same values.

The sealed text is what expressions see in the executor. The worker replaces every sealed text
inside a job's properties with the value (:func:`unseal_within`) right before the task runs,
and masks the value in what comes back (:class:`~kestream.secrets.masking.Masker`). API answers
show ``******`` in its place (:func:`mask_sealed`).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kestream.secrets.masking import MASK, Masker
from kestream.settings import get_settings

__all__ = [
    "PREFIX",
    "EncryptionError",
    "is_sealed",
    "mask_sealed",
    "seal",
    "unseal",
    "unseal_within",
]

PREFIX = "kestream:enc:v1:"
MIN_KEY_LENGTH = 32
_SEALED = re.compile(re.escape(PREFIX) + r"[A-Za-z0-9_-]+={0,2}")
_SEALED_JSON = re.compile(rb'"' + re.escape(PREFIX.encode()) + rb'[A-Za-z0-9_-]+={0,2}"')
_NONCE = 12


class EncryptionError(ValueError):
    """No key, a key too short, or a sealed text this key did not seal (never shows a value)."""


def _cipher(key: str | None) -> AESGCM:
    if key is None:
        configured = get_settings().encryption_key
        key = configured.get_secret_value() if configured is not None else None
    if not key:
        raise EncryptionError(
            "SECRET inputs need KESTREAM_ENCRYPTION_KEY (a text of 32 characters or more) "
            "to be encrypted at rest"
        )
    if len(key) < MIN_KEY_LENGTH:
        raise EncryptionError(
            f"KESTREAM_ENCRYPTION_KEY must be at least {MIN_KEY_LENGTH} characters long"
        )
    return AESGCM(hashlib.sha256(key.encode()).digest())


def is_sealed(value: Any) -> bool:
    return isinstance(value, str) and _SEALED.fullmatch(value) is not None


def seal(text: str, key: str | None = None) -> str:
    """``text`` encrypted (a sealed text stays as it is)."""
    if is_sealed(text):
        return text
    nonce = os.urandom(_NONCE)
    data = _cipher(key).encrypt(nonce, text.encode(), None)
    return PREFIX + base64.urlsafe_b64encode(nonce + data).decode()


def unseal(token: str, key: str | None = None) -> str:
    try:
        raw = base64.urlsafe_b64decode(token[len(PREFIX) :])
        return _cipher(key).decrypt(raw[:_NONCE], raw[_NONCE:], None).decode()
    except (InvalidTag, ValueError) as exc:
        if isinstance(exc, EncryptionError):
            raise
        raise EncryptionError(
            "a SECRET input cannot be decrypted with this KESTREAM_ENCRYPTION_KEY"
        ) from None


def unseal_within(value: Any, masker: Masker) -> Any:
    """``value`` with each sealed text inside its texts decrypted, the values added to
    ``masker`` (the worker, right before a task runs)."""
    if isinstance(value, str):
        if PREFIX not in value:
            return value

        def plain(match: re.Match[str]) -> str:
            text = unseal(match.group(0))
            masker.add(text)
            return text

        return _SEALED.sub(plain, value)
    if isinstance(value, dict):
        return {unseal_within(k, masker): unseal_within(v, masker) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [unseal_within(item, masker) for item in value]
    return value


def holds_sealed(value: Any) -> bool:
    """Whether a text inside ``value`` holds a sealed text (a cheap scan)."""
    if isinstance(value, str):
        return PREFIX in value
    if isinstance(value, dict):
        return any(holds_sealed(k) or holds_sealed(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(holds_sealed(item) for item in value)
    return False


def mask_sealed(body: bytes) -> bytes:
    """A JSON document with every sealed text shown as ``******`` (API answers)."""
    if PREFIX.encode() not in body:
        return body
    return _SEALED_JSON.sub(b'"' + MASK.encode() + b'"', body)
