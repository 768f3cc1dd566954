"""Split template text into tokens: text, ``{{ }}`` / ``{% %}`` delimiters and expression tokens.

Follows Pebble's lexer: operators are matched before names, brackets are tracked so that a ``}}``
inside a map literal does not close the expression, ``{{-`` / ``-}}`` trim whitespace, and
``{% raw %}`` / ``{% verbatim %}`` blocks are copied verbatim. A ``{%`` or ``{{`` met *inside* an
expression is recorded (``nested``) instead of rejected, because Kestra accepts such flows at deploy
time and only fails when the expression is rendered.

Tokenizing is charged to the render budget in progress (:func:`.budget.current_budget`), one unit
per token and per 256 characters of string literal, so that text compiled while rendering (what
``render()`` is handed) stops within the budget however long it is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .budget import current_budget
from .errors import TemplateSyntaxError

TEXT = "TEXT"
PRINT_START = "PRINT_START"
PRINT_END = "PRINT_END"
TAG_START = "TAG_START"
TAG_END = "TAG_END"
NAME = "NAME"
NUMBER = "NUMBER"
STRING = "STRING"
OP = "OP"
PUNCT = "PUNCT"
EOF = "EOF"

WORD_OPERATORS = ("is not", "not in", "contains", "equals", "and", "not", "is", "or", "in")
SYMBOL_OPERATORS: tuple[str, ...] = ("???", "??", "==", "!=", ">=", "<=", "..", ">", "<", "+")
SYMBOL_OPERATORS = (*SYMBOL_OPERATORS, "-", "*", "/", "%", "|", "~")
_OPERATOR_RE = re.compile(
    "|".join(
        [w.replace(" ", r"\s+") + r"(?![\w])" for w in WORD_OPERATORS]
        + [re.escape(s) for s in SYMBOL_OPERATORS]
    )
)
_NAME_RE = re.compile(r"[^\W\d]\w*")
_NUMBER_RE = re.compile(r"\d+(?:\.\d+)?L?")
_OPEN_RE = re.compile(r"\{[{%#]")
_RAW_OPEN_RE = re.compile(r"\s*(raw|verbatim)\s*(-?)%\}")
_PUNCTUATION = "()[]{}?:.,="
_PAIRS = {"(": ")", "[": "]", "{": "}"}


@dataclass(slots=True)
class Token:
    """One token; ``value`` is a str, or for strings with ``#{}`` a list of str / token lists."""

    kind: str
    value: Any
    line: int
    nested: bool = False
    source: str = ""
    parts: list[Any] = field(default_factory=list)


class Lexer:
    """Single-use tokenizer over one template text."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1
        self.tokens: list[Token] = []
        self.trim_next = False
        self.budget = current_budget()

    def error(self, message: str, line: int | None = None) -> TemplateSyntaxError:
        """A syntax error at ``line`` (default: the current line)."""
        return TemplateSyntaxError(message, self.line if line is None else line, self.text)

    def advance_to(self, end: int) -> None:
        """Move to ``end``, counting the newlines passed over."""
        self.line += self.text.count("\n", self.pos, end)
        self.pos = end

    def tokenize(self) -> list[Token]:
        """Tokenize the whole text; ends with an EOF token."""
        text = self.text
        while self.pos < len(text):
            match = _OPEN_RE.search(text, self.pos)
            end = match.start() if match else len(text)
            chunk = text[self.pos : end]
            if self.trim_next:
                chunk = chunk.lstrip()
                self.trim_next = False
            if match and text.startswith("-", match.end()):
                chunk = chunk.rstrip()
            if chunk:
                self.tokens.append(Token(TEXT, chunk, self.line))
            self.advance_to(end)
            if match is None:
                break
            self.budget.spend(1)
            self.lex_delimited(match.group())
        self.tokens.append(Token(EOF, None, self.line))
        return self.tokens

    def lex_delimited(self, opener: str) -> None:
        """Handle what follows ``{{``, ``{%`` or ``{#`` at the current position."""
        start_line = self.line
        self.pos += 2
        if self.text.startswith("-", self.pos):
            self.pos += 1
        if opener == "{#":
            self.lex_comment(start_line)
        elif opener == "{{":
            self.lex_expression(PRINT_START, PRINT_END, "}}", start_line)
        else:
            raw = _RAW_OPEN_RE.match(self.text, self.pos)
            if raw:
                self.lex_raw(raw, start_line)
            else:
                self.lex_expression(TAG_START, TAG_END, "%}", start_line)

    def lex_comment(self, start_line: int) -> None:
        """Skip a comment, honouring a ``-#}`` trim."""
        end = self.text.find("#}", self.pos)
        if end < 0:
            raise self.error("Unclosed comment", start_line)
        self.trim_next = self.text[end - 1] == "-" and end > self.pos
        self.advance_to(end + 2)

    def lex_raw(self, raw: re.Match[str], start_line: int) -> None:
        """Copy a ``{% raw %}...{% endraw %}`` block as text (``verbatim`` is Pebble's name)."""
        tag = raw.group(1)
        closer = re.compile(r"\{%(-?)\s*end" + tag + r"\s*(-?)%\}")
        self.advance_to(raw.end())
        end = closer.search(self.text, self.pos)
        if end is None:
            raise self.error(f"Unclosed tag {{% {tag} %}}", start_line)
        body = self.text[self.pos : end.start()]
        if raw.group(2):
            body = body.lstrip()
        if end.group(1):
            body = body.rstrip()
        if body:
            self.tokens.append(Token(TEXT, body, self.line))
        self.advance_to(end.end())
        self.trim_next = bool(end.group(2))

    def lex_expression(self, start: str, end: str, closer: str, start_line: int) -> None:
        """Tokens up to the closing delimiter met outside any bracket."""
        head = Token(start, None, start_line)
        self.tokens.append(head)
        expr_start = self.pos
        brackets: list[tuple[str, int]] = []
        text = self.text
        while True:
            self.skip_whitespace()
            if self.pos >= len(text):
                if brackets:
                    raise self.error(f'Unclosed "{brackets[-1][0]}"', brackets[-1][1])
                opener = "{{" if start == PRINT_START else "{%"
                raise self.error(f'Unclosed "{opener}"', start_line)
            at_close = text.startswith(closer, self.pos) or text.startswith("-" + closer, self.pos)
            if at_close and not brackets:
                self.trim_next = text[self.pos] == "-"
                head.source = text[expr_start : self.pos]
                self.advance_to(self.pos + len(closer) + (1 if self.trim_next else 0))
                self.tokens.append(Token(end, None, self.line))
                return
            if text.startswith(("{{", "{%"), self.pos):
                head.nested = True
            self.lex_token(brackets)

    def skip_whitespace(self) -> None:
        """Skip blanks and newlines between expression tokens."""
        text = self.text
        pos = self.pos
        while pos < len(text) and text[pos].isspace():
            pos += 1
        self.advance_to(pos)

    def lex_token(self, brackets: list[tuple[str, int]]) -> None:
        """One expression token at the current position."""
        text, pos = self.text, self.pos
        self.budget.spend(1)
        char = text[pos]
        match = _OPERATOR_RE.match(text, pos)
        if match:
            self.push(OP, " ".join(match.group().split()), match.end())
            return
        match = _NAME_RE.match(text, pos)
        if match:
            self.push(NAME, match.group(), match.end())
            return
        match = _NUMBER_RE.match(text, pos)
        if match:
            self.push(NUMBER, match.group(), match.end())
            return
        if char in _PUNCTUATION:
            self.track_bracket(char, brackets)
            self.push(PUNCT, char, pos + 1)
            return
        if char in "'\"":
            self.lex_string(char)
            return
        raise self.error(f"Unexpected character [{char}]")

    def push(self, kind: str, value: str, end: int) -> None:
        """Append a token and move past it."""
        self.tokens.append(Token(kind, value, self.line))
        self.advance_to(end)

    def track_bracket(self, char: str, brackets: list[tuple[str, int]]) -> None:
        """Keep the bracket stack that decides where the expression ends."""
        if char in _PAIRS:
            brackets.append((char, self.line))
        elif char in ")]}":
            if not brackets:
                raise self.error(f'Unexpected "{char}"')
            opened, _ = brackets.pop()
            if _PAIRS[opened] != char:
                raise self.error(f'Unclosed "{opened}"')

    def lex_string(self, quote: str) -> None:
        """A quoted string; double quotes may hold ``#{expr}`` interpolations (as in Pebble)."""
        line = self.line
        text = self.text
        pos = self.pos + 1
        parts: list[Any] = []
        buf: list[str] = []
        while True:
            if pos >= len(text):
                raise self.error(f'Unclosed "{quote}"', line)
            char = text[pos]
            if char == "\\" and pos + 1 < len(text):
                nxt = text[pos + 1]
                buf.append(nxt if nxt in (quote, "\\") else "\\" + nxt)
                pos += 2
            elif char == quote:
                break
            elif quote == '"' and text.startswith("#{", pos):
                parts.append("".join(buf))
                buf = []
                pos = self.lex_interpolation(pos + 2, parts)
            else:
                buf.append(char)
                pos += 1
        parts.append("".join(buf))
        self.budget.spend((pos - self.pos) >> 8)
        token = Token(STRING, "".join(p for p in parts if isinstance(p, str)), line)
        if len(parts) > 1:
            token.parts = [p for p in parts if not (isinstance(p, str) and not p)]
        self.tokens.append(token)
        self.advance_to(pos + 1)

    def lex_interpolation(self, pos: int, parts: list[Any]) -> int:
        """Tokens of one ``#{...}``; returns the position after its closing brace."""
        saved = self.tokens
        self.tokens = []
        self.advance_to(pos)
        brackets: list[tuple[str, int]] = []
        while True:
            self.skip_whitespace()
            if self.pos >= len(self.text):
                raise self.error('Unclosed "#{"')
            if not brackets and self.text[self.pos] == "}":
                break
            self.lex_token(brackets)
        self.tokens.append(Token(EOF, None, self.line))
        parts.append(self.tokens)
        self.tokens = saved
        return self.pos + 1


def tokenize(text: str) -> list[Token]:
    """Tokens of ``text``; raises TemplateSyntaxError on unclosed delimiters or strings."""
    return Lexer(text).tokenize()
