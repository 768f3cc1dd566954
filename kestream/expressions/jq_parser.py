"""Parser for the safe jq subset behind Kestra's ``jq`` filter.

Produces a small tuple-based tree. Everything that would reach outside the input value (``$ENV``,
``env``, ``input``, ``import``, ``include``, ``@formats``, variables, ``def``) is rejected here with
a message naming the construct, so unsupported syntax never half-runs.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .budget import current_budget

Node = tuple[Any, ...]


class JqError(Exception):
    """A jq compile or runtime error (caught by ``?`` and ``try`` at runtime)."""


_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+|\#[^\n]*)
  | (?P<number>\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<field>\.[A-Za-z_][A-Za-z0-9_]*)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*(?:::[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<var>\$[A-Za-z_]\w*|\$__loc__)
  | (?P<format>@[A-Za-z0-9_]+)
  | (?P<op>\?//|\.\.|==|!=|<=|>=|//=|\|=|\+=|-=|\*=|/=|%=|//|[.\[\]{}()|,:;?<>+\-*/%=])
    """,
    re.VERBOSE,
)
KEYWORDS = frozenset(("and", "or", "if", "then", "elif", "else", "end", "try", "catch"))
UNSUPPORTED = frozenset(
    (
        "def", "reduce", "foreach", "label", "import", "include", "as", "input", "inputs",
        "env", "debug", "stderr", "input_filename", "input_line_number", "halt", "halt_error",
        "getpath", "setpath", "delpaths", "path", "paths", "leaf_paths", "splits", "ltrimstr_",
        "now", "localtime", "gmtime", "mktime", "strftime", "strptime", "todate", "fromdate",
        "get_search_list", "modulemeta", "builtins", "input_line", "$__prog_args",
    )
)  # fmt: skip
_COMPARISONS = ("==", "!=", "<", "<=", ">", ">=")


def tokenize(source: str) -> list[tuple[str, str]]:
    """(kind, text) tokens of a jq program; each one is charged to the render budget in progress,
    as the template lexer charges its own (a program may be text anyone sent)."""
    tokens: list[tuple[str, str]] = []
    budget = current_budget()
    pos = 0
    while pos < len(source):
        budget.spend(1)
        match = _TOKEN_RE.match(source, pos)
        if match is None:
            raise JqError(f"jq syntax error: unexpected character {source[pos]!r}")
        kind = match.lastgroup or ""
        text = match.group()
        pos = match.end()
        if kind == "ws":
            continue
        if kind == "var":
            raise JqError(f"jq variables are not supported: {text}")
        if kind == "format":
            raise JqError(f"jq format strings are not supported: {text}")
        if kind == "op" and text.endswith("=") and text not in ("==", "!=", "<=", ">="):
            raise JqError(f"jq assignment operators are not supported: {text}")
        if kind == "op" and text == "?//":
            raise JqError("jq destructuring alternative ?// is not supported")
        tokens.append((kind, text))
    tokens.append(("eof", ""))
    return tokens


def _string_value(text: str) -> str:
    """A jq string literal (JSON escapes; ``\\(...)`` interpolation is not supported)."""
    if "\\(" in text:
        raise JqError("jq string interpolation \\(...) is not supported")
    try:
        return str(json.loads(text))
    except ValueError:
        raise JqError(f"jq syntax error: invalid string {text}") from None


class JqParser:
    """Recursive-descent parser; one instance per program."""

    def __init__(self, source: str) -> None:
        self.tokens = tokenize(source)
        self.index = 0
        self.budget = current_budget()

    def peek(self) -> tuple[str, str]:
        return self.tokens[self.index]

    def next(self) -> tuple[str, str]:
        self.budget.spend(1)
        token = self.tokens[self.index]
        self.index = min(self.index + 1, len(self.tokens) - 1)
        return token

    def at(self, text: str) -> bool:
        kind, value = self.peek()
        return value == text and kind in ("op", "ident")

    def expect(self, text: str) -> None:
        if not self.at(text):
            raise JqError(f"jq syntax error: expected {text!r}, found {self.peek()[1] or 'end'!r}")
        self.next()

    def parse_program(self) -> Node:
        node = self.parse_pipe()
        if self.peek()[0] != "eof":
            raise JqError(f"jq syntax error: unexpected {self.peek()[1]!r}")
        return node

    def parse_pipe(self, allow_comma: bool = True) -> Node:
        """``a | b`` (lowest precedence, right-associative)."""
        left = self.parse_comma() if allow_comma else self.parse_alternative()
        if self.at("|"):
            self.next()
            return ("pipe", left, self.parse_pipe(allow_comma))
        return left

    def parse_comma(self) -> Node:
        left = self.parse_alternative()
        while self.at(","):
            self.next()
            left = ("comma", left, self.parse_alternative())
        return left

    def parse_alternative(self) -> Node:
        """``a // b`` (right-associative)."""
        left = self.parse_or()
        if self.at("//"):
            self.next()
            return ("alt", left, self.parse_alternative())
        return left

    def parse_or(self) -> Node:
        left = self.parse_and()
        while self.at("or"):
            self.next()
            left = ("or", left, self.parse_and())
        return left

    def parse_and(self) -> Node:
        left = self.parse_comparison()
        while self.at("and"):
            self.next()
            left = ("and", left, self.parse_comparison())
        return left

    def parse_comparison(self) -> Node:
        left = self.parse_additive()
        kind, text = self.peek()
        if kind == "op" and text in _COMPARISONS:
            self.next()
            return ("binop", text, left, self.parse_additive())
        return left

    def parse_additive(self) -> Node:
        left = self.parse_multiplicative()
        while self.peek() in (("op", "+"), ("op", "-")):
            op = self.next()[1]
            left = ("binop", op, left, self.parse_multiplicative())
        return left

    def parse_multiplicative(self) -> Node:
        left = self.parse_unary()
        while self.peek() in (("op", "*"), ("op", "/"), ("op", "%")):
            op = self.next()[1]
            left = ("binop", op, left, self.parse_unary())
        return left

    def parse_unary(self) -> Node:
        if self.at("-"):
            self.next()
            return ("neg", self.parse_unary())
        return self.parse_postfix(self.parse_term())

    def parse_postfix(self, node: Node) -> Node:
        """``.a``, ``[i]``, ``[]``, ``[a:b]``, ``."k"`` and ``?`` after a term."""
        while True:
            kind, text = self.peek()
            if kind == "field":
                self.next()
                node = ("index", node, ("literal", text[1:]))
            elif kind == "op" and text == "." and self.tokens[self.index + 1][0] == "string":
                self.next()
                node = ("index", node, ("literal", _string_value(self.next()[1])))
            elif kind == "op" and text == "." and self.tokens[self.index + 1][1] == "[":
                self.next()
            elif kind == "op" and text == "[":
                node = self.parse_bracket(node)
            elif kind == "op" and text == "?":
                self.next()
                node = ("try", node, None)
            else:
                return node

    def parse_bracket(self, target: Node) -> Node:
        """``[]``, ``[expr]``, ``[a:b]``."""
        self.expect("[")
        if self.at("]"):
            self.next()
            return ("iterate", target)
        start = None if self.at(":") else self.parse_pipe()
        if self.at(":"):
            self.next()
            end = None if self.at("]") else self.parse_pipe()
            self.expect("]")
            return ("slice", target, start, end)
        self.expect("]")
        return ("index", target, start)

    def parse_term(self) -> Node:
        kind, text = self.peek()
        if kind == "number":
            self.next()
            number = float(text)
            return ("literal", int(number) if number.is_integer() and "." not in text else number)
        if kind == "string":
            self.next()
            return ("literal", _string_value(text))
        if kind == "field":
            self.next()
            return ("index", ("identity",), ("literal", text[1:]))
        if kind == "op":
            return self.parse_punctuation_term(text)
        if kind == "ident":
            return self.parse_identifier(text)
        raise JqError(f"jq syntax error: unexpected {text or 'end of expression'!r}")

    def parse_punctuation_term(self, text: str) -> Node:
        if text == ".":
            self.next()
            if self.peek()[0] == "string":
                return ("index", ("identity",), ("literal", _string_value(self.next()[1])))
            return ("identity",)
        if text == "..":
            self.next()
            return ("call", "recurse", [])
        if text == "(":
            self.next()
            node = self.parse_pipe()
            self.expect(")")
            return node
        if text == "[":
            self.next()
            if self.at("]"):
                self.next()
                return ("array", None)
            node = self.parse_pipe()
            self.expect("]")
            return ("array", node)
        if text == "{":
            return self.parse_object()
        raise JqError(f"jq syntax error: unexpected {text!r}")

    def parse_identifier(self, name: str) -> Node:
        if name in UNSUPPORTED or "::" in name:
            raise JqError(f"jq '{name}' is not supported")
        if name == "if":
            return self.parse_if()
        if name == "try":
            self.next()
            body = self.parse_postfix(self.parse_term())
            handler = None
            if self.at("catch"):
                self.next()
                handler = self.parse_postfix(self.parse_term())
            return ("try", body, handler)
        if name in KEYWORDS:
            raise JqError(f"jq syntax error: unexpected {name!r}")
        self.next()
        args: list[Node] = []
        if self.at("("):
            self.next()
            args.append(self.parse_pipe())
            while self.at(";"):
                self.next()
                args.append(self.parse_pipe())
            self.expect(")")
        return ("call", name, args)

    def parse_if(self) -> Node:
        """``if c then a (elif c then b)* (else d)? end``."""
        self.expect("if")
        branches = []
        condition = self.parse_pipe()
        self.expect("then")
        branches.append((condition, self.parse_pipe()))
        while self.at("elif"):
            self.next()
            condition = self.parse_pipe()
            self.expect("then")
            branches.append((condition, self.parse_pipe()))
        otherwise: Node = ("identity",)
        if self.at("else"):
            self.next()
            otherwise = self.parse_pipe()
        self.expect("end")
        return ("if", branches, otherwise)

    def parse_object(self) -> Node:
        """``{a: f, "b": g, (k): v, c}``."""
        self.expect("{")
        entries: list[tuple[Node, Node]] = []
        while not self.at("}"):
            if entries:
                self.expect(",")
            entries.append(self.parse_object_entry())
        self.next()
        return ("object", entries)

    def parse_object_entry(self) -> tuple[Node, Node]:
        kind, text = self.next()
        if kind == "ident":
            key: Node = ("literal", text)
        elif kind == "string":
            key = ("literal", _string_value(text))
        elif kind == "op" and text == "(":
            key = self.parse_pipe()
            self.expect(")")
        else:
            raise JqError(f"jq syntax error: invalid object key {text!r}")
        if not self.at(":"):
            if key[0] != "literal":
                raise JqError("jq syntax error: object key needs a value")
            return key, ("index", ("identity",), key)
        self.next()
        return key, self.parse_object_value()

    def parse_object_value(self) -> Node:
        """An object value: no top-level comma, pipes allowed."""
        left = self.parse_alternative()
        if self.at("|"):
            self.next()
            return ("pipe", left, self.parse_object_value())
        return left


def parse_jq(source: str) -> Node:
    """The tree of a jq program, or JqError."""
    try:
        return JqParser(source).parse_program()
    except RecursionError:
        raise JqError("jq expression nested too deeply") from None
