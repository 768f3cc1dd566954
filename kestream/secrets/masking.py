"""Masking: every resolved secret value, wherever it would show, becomes ``******``.

What the worker sends back of a task that used secrets (its log lines, its error, its outputs)
passes through the :class:`Masker` of that attempt. It masks each value the attempt resolved and
the forms a value commonly takes on its way out: base64 (a Basic ``Authorization`` header),
URL-encoded (a query string), and, for a secret holding a JSON document, each text inside it of
:data:`MIN_LENGTH` characters or more (``json(secret('x')).password``). Values shorter than
:data:`MIN_LENGTH` are not masked: masking one or two characters would garble every line.

A script's output becomes one log line per line, so a multi-line value (a PEM key, a service
account's JSON) never shows whole: each of its lines of :data:`MIN_LINE_LENGTH` characters or
more is masked on its own, and so is each line of its base64 form wrapped as ``base64`` and PEM
wrap it (76 and 64 characters). A shorter line of such a value is left alone: ``}`` or ``END``
would mask ordinary text.

A value the task transforms otherwise (reversed, hashed, cut in pieces) is not recognised: the
task's author decides what a task prints.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, quote_plus

__all__ = ["MASK", "MIN_LENGTH", "MIN_LINE_LENGTH", "Masker"]

MASK = "******"
MIN_LENGTH = 3
#: The shortest line of a multi-line value, or of a wrapped base64 form, masked on its own.
MIN_LINE_LENGTH = 8
#: The widths ``base64`` (76) and PEM (64) wrap base64 text at.
_BASE64_WIDTHS = (64, 76)


def _forms(value: str) -> Iterable[str]:
    yield value
    if "\n" in value or "\r" in value:
        yield from _pieces(line.strip() for line in value.splitlines())
    raw = value.encode()
    encoded = base64.b64encode(raw).decode()
    yield encoded
    for width in _BASE64_WIDTHS:
        if len(encoded) > width:
            yield from _pieces(encoded[at : at + width] for at in range(0, len(encoded), width))
    yield base64.urlsafe_b64encode(raw).decode()
    yield quote(value, safe="")
    yield quote_plus(value)
    yield json.dumps(value)[1:-1]  # as it appears inside a JSON document
    try:
        document = json.loads(value)
    except ValueError:
        return
    yield from _texts(document)


def _pieces(pieces: Iterable[str]) -> Iterable[str]:
    return (piece for piece in pieces if len(piece) >= MIN_LINE_LENGTH)


def _texts(document: Any) -> Iterable[str]:
    if isinstance(document, str):
        yield document
    elif isinstance(document, dict):
        for item in document.values():
            yield from _texts(item)
    elif isinstance(document, list):
        for item in document:
            yield from _texts(item)


class Masker:
    """The values of one attempt's secrets, and how to mask them in text and data."""

    def __init__(self) -> None:
        self._needles: set[str] = set()
        self._pattern: re.Pattern[str] | None = None

    def add(self, value: str) -> None:
        new = {form for form in _forms(value) if len(form) >= MIN_LENGTH} - self._needles
        if new:
            self._needles |= new
            ordered = sorted(self._needles, key=len, reverse=True)  # longest first
            self._pattern = re.compile("|".join(re.escape(n) for n in ordered))

    def __bool__(self) -> bool:
        return self._pattern is not None

    def text(self, text: str) -> str:
        return text if self._pattern is None else self._pattern.sub(MASK, text)

    def value(self, value: Any) -> Any:
        """``value`` with every text inside it masked (map keys too)."""
        if self._pattern is None:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.value(k): self.value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(item) for item in value]
        return value
