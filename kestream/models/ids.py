"""Identifiers in Kestra's style: 22-character base62 text from 128 random bits."""

from __future__ import annotations

import os

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def new_id() -> str:
    """A fresh random id (execution, task run), as short and URL-safe as Kestra's."""
    number = int.from_bytes(os.urandom(16), "big")
    out = []
    for _ in range(22):
        number, digit = divmod(number, 62)
        out.append(_ALPHABET[digit])
    return "".join(out)
