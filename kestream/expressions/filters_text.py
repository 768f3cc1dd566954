"""String filters: Pebble's core ones and Kestra's additions (substring*, startsWith, slugify...).

Every filter passes ``null`` through unchanged, as Pebble's and Kestra's filters do. Regular
expressions supplied by templates (``split``, ``replace(regexp=true)``) are matched by
:mod:`.patterns`, within the render's time budget.
"""

from __future__ import annotations

import base64
import hashlib
import re
import unicodedata
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote_plus, unquote_plus

from . import patterns
from .errors import RenderError
from .limits import MAX_TEXT, text_too_long
from .operators import check_text, replaced
from .registry import template_filter
from .text import java_text, to_text

_REPLACEMENT_TOKEN = re.compile(r"\\(.)|\$(\d+|\{\w+\})|\\", re.DOTALL)


def _java_replacement(replacement: str) -> str:
    """Java's replacement text (``$1``, ``${name}``, ``\\$`` escapes) as a Python template."""
    return _REPLACEMENT_TOKEN.sub(_replacement_token, replacement)


def _replacement_token(match: re.Match[str]) -> str:
    escaped, group = match.group(1), match.group(2)
    if escaped is not None:  # ``\x`` is the character x itself
        return escaped.replace("\\", "\\\\")
    if group is not None:
        return f"\\g<{group.strip('{}')}>"
    return "\\\\"  # a lone trailing backslash


def _text(value: Any) -> str:
    """A filter input as a string (Java's ``toString``)."""
    return value if isinstance(value, str) else java_text(value)


@template_filter("lower")
def lower(value: Any) -> Any:
    return None if value is None else _text(value).lower()


@template_filter("upper")
def upper(value: Any) -> Any:
    return None if value is None else _text(value).upper()


@template_filter("capitalize")
def capitalize(value: Any) -> Any:
    """First character upper-cased, the rest untouched (Pebble)."""
    if value is None:
        return None
    text = _text(value)
    return text[:1].upper() + text[1:]


@template_filter("title")
def title(value: Any) -> Any:
    """First letter of every whitespace-separated word upper-cased."""
    if value is None:
        return None
    return re.sub(r"(^|\s)(\S)", lambda m: m.group(1) + m.group(2).upper(), _text(value))


@template_filter("trim")
def trim(value: Any) -> Any:
    return None if value is None else _text(value).strip()


@template_filter("abbreviate")
def abbreviate(value: Any, length: int) -> Any:
    """Cut to ``length`` characters including a trailing ``...``."""
    if value is None:
        return None
    text = _text(value)
    if len(text) <= length:
        return text
    return text[: max(length - 3, 0)] + "..." if length >= 3 else text[:length]


def _replace_text(text: str, pairs: Mapping[Any, Any], regexp: bool) -> str:
    for search, replacement in pairs.items():
        if regexp:
            pattern, template = java_text(search), _java_replacement(java_text(replacement))
            text = _regex_replaced(pattern, template, text)
        else:
            text = replaced(text, java_text(search), java_text(replacement))
    return text


def _regex_replaced(pattern: str, template: str, text: str) -> str:
    """Every match of ``pattern`` replaced by ``template``, refused before the result passes the
    size limit.

    With at most ``len(text) + 1`` matches, each replaced by the template's text plus at most all
    of ``text`` per group reference, most results are known to fit and are built at C speed. The
    others (an empty pattern replaced by a long text) count their length match by match instead.
    """
    size = len(text)
    longest_piece = len(template) + template.count("\\g<") * size
    if size + (size + 1) * longest_piece <= MAX_TEXT:
        return check_text(patterns.sub(pattern, template, text))

    def expand(match: patterns.Match) -> str:
        nonlocal size
        piece: str = match.expand(template)
        size += len(piece) - (match.end() - match.start())
        if size > MAX_TEXT:
            raise text_too_long()
        return piece

    return check_text(patterns.sub(pattern, expand, text))


def _replace_value(value: Any, pairs: Mapping[Any, Any], regexp: bool) -> Any:
    """Replace in a string, or in every string of a map/list (Kestra's replace)."""
    if isinstance(value, Mapping):
        return {k: _replace_value(v, pairs, regexp) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_replace_value(v, pairs, regexp) for v in value]
    return _replace_text(_text(value), pairs, regexp)


@template_filter("replace")
def replace(value: Any, replace_pairs: Any, replacement: Any = None, regexp: Any = False) -> Any:
    """``replace({'a': 'b'}, regexp=false)`` (Kestra) or ``replace('a', 'b'[, regexp])``."""
    if value is None:
        return None
    if replace_pairs is None:
        raise RenderError("The argument 'replace_pairs' is required.")
    if isinstance(replace_pairs, Mapping):
        pairs: Mapping[Any, Any] = replace_pairs
        regexp = replacement if isinstance(replacement, bool) else regexp
    else:
        pairs = {java_text(replace_pairs): "" if replacement is None else java_text(replacement)}
    if not isinstance(regexp, bool):
        raise RenderError("argument 'regexp' must be a boolean")
    return _replace_value(value, pairs, regexp)


_REGEX_META = frozenset(".$|()[]{}^?*+\\")


def _regex_split(pattern: str, text: str, limit: int) -> list[str]:
    """Split on regex matches without Python's captured-group extras (Java semantics)."""
    parts: list[str] = []
    start = 0
    for match in patterns.finditer(pattern, text):
        if limit > 0 and len(parts) == limit - 1:
            break
        if match.end() == 0:
            continue
        parts.append(text[start : match.start()])
        start = match.end()
    parts.append(text[start:])
    return parts


@template_filter("split")
def split(value: Any, delimiter: Any, limit: int = 0) -> Any:
    """Java's ``String.split``: regex delimiter, trailing empty strings dropped when limit is 0."""
    if value is None:
        return None
    if not isinstance(delimiter, str):
        raise RenderError("missing delimiter parameter in split filter")
    text = _text(value)
    if text == "":
        return [""]
    if not delimiter:
        parts = list(text)
    elif _REGEX_META.isdisjoint(delimiter):
        parts = text.split(delimiter, limit - 1) if limit > 0 else text.split(delimiter)
    else:
        parts = _regex_split(delimiter, text, limit)
    if limit == 0:
        while parts and parts[-1] == "":
            parts.pop()
    return parts


@template_filter("startsWith")
def starts_with(value: Any, prefix: Any) -> Any:
    return None if value is None else _text(value).startswith(java_text(prefix))


@template_filter("endsWith")
def ends_with(value: Any, suffix: Any) -> Any:
    return None if value is None else _text(value).endswith(java_text(suffix))


def _cut(value: Any, separator: str, *, last: bool, after: bool) -> Any:
    """Kestra's substring filters: the text before or after the first or last separator.

    When the separator is missing, "before" keeps the whole text and "after" gives "" (an empty
    separator gives "" for the first-separator forms and for "after last", as Kestra does).
    """
    if value is None:
        return None
    text = _text(value)
    if not separator:
        return text if last and not after else ""
    index = text.rfind(separator) if last else text.find(separator)
    if index < 0:
        return "" if after else text
    return text[index + len(separator) :] if after else text[:index]


@template_filter("substringBefore")
def substring_before(value: Any, separator: str) -> Any:
    """Text before the first separator; all of it when absent."""
    return _cut(value, separator, last=False, after=False)


@template_filter("substringAfter")
def substring_after(value: Any, separator: str) -> Any:
    """Text after the first separator; empty when absent."""
    return _cut(value, separator, last=False, after=True)


@template_filter("substringBeforeLast")
def substring_before_last(value: Any, separator: str) -> Any:
    """Text before the last separator; all of it when absent or separator empty."""
    return _cut(value, separator, last=True, after=False)


@template_filter("substringAfterLast")
def substring_after_last(value: Any, separator: str) -> Any:
    """Text after the last separator; empty when absent or separator empty."""
    return _cut(value, separator, last=True, after=True)


@template_filter("slugify")
def slugify(value: Any) -> Any:
    """Lower-case ASCII words joined by dashes."""
    if value is None:
        return None
    text = unicodedata.normalize("NFKD", _text(value)).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


@template_filter("urlencode")
def urlencode(value: Any) -> Any:
    """``URLEncoder.encode(x, UTF-8)``: spaces become ``+``, ``*`` stays, ``~`` is encoded."""
    if value is None:
        return None
    return quote_plus(_text(value), safe="*").replace("~", "%7E")


@template_filter("urldecode")
def urldecode(value: Any) -> Any:
    return None if value is None else unquote_plus(_text(value))


@template_filter("base64encode")
def base64encode(value: Any) -> Any:
    return None if value is None else base64.b64encode(_text(value).encode()).decode()


@template_filter("base64decode")
def base64decode(value: Any) -> Any:
    """Decode base64 into UTF-8 text."""
    if value is None:
        return None
    try:
        return base64.b64decode(_text(value), validate=True).decode()
    except (ValueError, UnicodeDecodeError) as exc:
        raise RenderError(f"invalid base64 input: {exc}") from None


def _digest(algorithm: str) -> Any:
    def digest(value: Any) -> Any:
        if value is None:
            return None
        return hashlib.new(algorithm, _text(value).encode()).hexdigest()

    digest.__doc__ = f"Hex {algorithm} of the UTF-8 text."
    return digest


template_filter("md5")(_digest("md5"))
template_filter("sha1")(_digest("sha1"))
template_filter("sha256")(_digest("sha256"))
template_filter("sha512")(_digest("sha512"))


@template_filter("escapeChar")
def escape_char(value: Any, type: str) -> Any:
    """Escape quotes for embedding in a single-quoted, double-quoted or shell string."""
    replacements = {"single": ("'", "\\'"), "double": ('"', '\\"'), "shell": ("'", "'\\''")}
    if value is None:
        return None
    pair = replacements.get(str(type).lower())
    if pair is None:
        raise RenderError(
            "expects the value of 'type' to be either 'single', 'double', or 'shell'."
        )
    if isinstance(value, Mapping):
        return {k: escape_char(v, type) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [escape_char(v, type) for v in value]
    return _text(value).replace(*pair)


def _line_separator(text: str) -> str:
    for separator in ("\r\n", "\n\r", "\n", "\r"):
        if separator in text:
            return separator
    return "\n"


def _indent(value: Any, amount: Any, prefix: str, leading: bool) -> Any:
    if value is None:
        return None
    text = to_text(value)
    if not text:
        return text
    if not isinstance(amount, int) or isinstance(amount, bool) or amount < 0:
        raise RenderError("expects a positive integer >=0 as argument 'amount'.")
    newline = _line_separator(text)
    if leading:
        text = newline + text
    if len(text) + text.count(newline) * len(java_text(prefix)) * amount > MAX_TEXT:
        raise text_too_long()  # refused before building it: lines x amount can be huge
    return text.replace(newline, newline + prefix * amount)


@template_filter("indent")
def indent(value: Any, amount: Any, prefix: str = " ") -> Any:
    """Indent every line but the first by ``amount`` prefixes."""
    return _indent(value, amount, prefix, leading=False)


@template_filter("nindent")
def nindent(value: Any, amount: Any, prefix: str = " ") -> Any:
    """A newline, then every line indented by ``amount`` prefixes."""
    return _indent(value, amount, prefix, leading=True)


@template_filter("raw")
def raw(value: Any) -> Any:
    """Pebble's ``raw``: a no-op since Kestra disables auto-escaping."""
    return value


@template_filter("string", "toString")
def to_string(value: Any) -> Any:
    """The value as it would print inside ``{{ }}``."""
    return None if value is None else to_text(value)
