"""SECRET inputs, encrypted at rest with ``KESTREAM_ENCRYPTION_KEY`` (AES-256-GCM).

A SECRET input's value is encrypted where it enters (the API, the client, ``kestream.testing``,
the executor for defaults) into a *sealed* text, ``kestream:enc:v1:<base64url(nonce|data)>``,
before any record carries it: executions, the changelog and the index hold only that. Without a
key, an execution with a SECRET input is refused (as Kestra refuses one without its encryption
key). The key is any text of 32 characters or more; its SHA-256 is the AES key, so every
process with the same setting reads the same values.

A sealed text is bound to its flow (:func:`scope_of`, the AES-GCM associated data): the worker
decrypts it only for a task of that flow, so a sealed text pasted into another flow's inputs (a
STRING input, a webhook body, a KV value) decrypts nowhere, and a SECRET input refuses one sealed
for another flow. A Subflow hands its child a copy sealed again for the child (:func:`reseal`).

The sealed text is what expressions see in the executor. The worker replaces every sealed text of
its flow inside a job's properties with the value (:func:`unseal_within`) right before the task
runs, and masks the value in what comes back (:class:`~kestream.secrets.masking.Masker`). API
answers show ``******`` wherever a sealed text appears, inside longer texts too
(:func:`mask_sealed`).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kestream.secrets.masking import MASK, Masker
from kestream.settings import get_settings

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "PREFIX",
    "EncryptionError",
    "is_sealed",
    "mask_sealed",
    "reseal",
    "scope_of",
    "seal",
    "unseal",
    "unseal_within",
]

PREFIX = "kestream:enc:v1:"
MIN_KEY_LENGTH = 32
_SEALED = re.compile(re.escape(PREFIX) + r"[A-Za-z0-9_-]+={0,2}")
_SEALED_BYTES = re.compile(re.escape(PREFIX.encode()) + rb"[A-Za-z0-9_-]+={0,2}")
_NONCE = 12


class EncryptionError(ValueError):
    """No key, a key too short, or a sealed text this key did not seal (never shows a value)."""


def _cipher(key: str | None) -> AESGCM:
    # Imported on first use: the library takes 6 MB in every process that imports this module
    # (each role does), and only flows with SECRET inputs need it.
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

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


def scope_of(namespace: str, flow_id: str) -> str:
    """What a sealed text is bound to: its flow (neither part can hold ``/``, so two flows
    never share a scope)."""
    return f"{namespace}/{flow_id}"


def seal(text: str, scope: str, key: str | None = None) -> str:
    """``text`` encrypted for the flow ``scope`` (:func:`scope_of`)."""
    nonce = os.urandom(_NONCE)
    data = _cipher(key).encrypt(nonce, text.encode(), scope.encode())
    return PREFIX + base64.urlsafe_b64encode(nonce + data).decode()


def unseal(token: str, scope: str, key: str | None = None) -> str:
    """The value of ``token``; :class:`EncryptionError` when it was sealed for another flow or
    with another key (AES-GCM cannot tell which)."""
    from cryptography.exceptions import InvalidTag

    try:
        raw = base64.urlsafe_b64decode(token[len(PREFIX) :])
        return _cipher(key).decrypt(raw[:_NONCE], raw[_NONCE:], scope.encode()).decode()
    except (InvalidTag, ValueError) as exc:
        if isinstance(exc, EncryptionError):
            raise
        raise EncryptionError(
            "an encrypted SECRET value cannot be decrypted here: it belongs to another flow, "
            "or was encrypted with another KESTREAM_ENCRYPTION_KEY"
        ) from None


def reseal(value: Any, source: str, target: str) -> Any:
    """``value`` with each sealed text of the flow ``source`` inside its texts sealed again for
    ``target`` (a Subflow's inputs, handed from parent to child); texts sealed for any other
    flow stay as they are, and decrypt nowhere in ``target`` either."""
    if source == target or not holds_sealed(value):
        return value

    def again(match: re.Match[str]) -> str:
        try:
            return seal(unseal(match.group(0), source), target)
        except EncryptionError:
            return match.group(0)

    return _map_texts(value, lambda text: _SEALED.sub(again, text))


def unseal_within(value: Any, masker: Masker, scope: str) -> Any:
    """``value`` with each sealed text inside its texts decrypted for the flow ``scope``, the
    values added to ``masker`` (the worker, right before a task runs). A text sealed for
    another flow raises :class:`EncryptionError`."""

    def plain(match: re.Match[str]) -> str:
        text = unseal(match.group(0), scope)
        masker.add(text)
        return text

    return _map_texts(value, lambda text: _SEALED.sub(plain, text) if PREFIX in text else text)


def _map_texts(value: Any, change: Callable[[str], str]) -> Any:
    """``value`` with ``change`` applied to every text inside it, map keys included."""
    if isinstance(value, str):
        return change(value)
    if isinstance(value, dict):
        return {_map_texts(k, change): _map_texts(v, change) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_map_texts(item, change) for item in value]
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
    """A JSON document with every sealed text shown as ``******`` (API answers): a whole JSON
    string, or part of a longer one (a label ``pw=...``, an error quoting it, JSON inside a
    string); the mask holds no character JSON escapes, so the document stays valid."""
    if PREFIX.encode() not in body:
        return body
    return _SEALED_BYTES.sub(MASK.encode(), body)
