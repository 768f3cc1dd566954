"""Identifiers in Kestra's style: 22-character base62 text from 128 random bits; the rule a
namespace follows (here, so that modules below the flow model can check one too)."""

from __future__ import annotations

import hashlib
import os

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
#: Kestra's namespace rule: lower-case letters, digits, ``.``, ``_`` and ``-``.
NAMESPACE_PATTERN = r"^[a-z0-9][a-z0-9._-]*$"


def new_id() -> str:
    """A fresh random id (execution, task run), as short and URL-safe as Kestra's."""
    return _base62(int.from_bytes(os.urandom(16), "big"))


def _base62(number: int) -> str:
    out = []
    for _ in range(22):
        number, digit = divmod(number, 62)
        out.append(_ALPHABET[digit])
    return "".join(out)


def derived_id(*parts: object) -> str:
    """A stable id derived from ``parts``: the same inputs always give the same id.

    The executor names what it creates (task runs, child executions, retried executions) this
    way, so a step that is processed again after a crash produces the same ids, and every
    consumer downstream can recognise the repeat (DESIGN.md section 3).
    """
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=16).digest()
    return _base62(int.from_bytes(digest, "big"))
