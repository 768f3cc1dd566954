"""Turn tokens into a syntax tree, with Pebble's operator precedences and tags.

Precedence climbing exactly as Pebble does it (unary operators bind tightest, the ternary only at
the top of an expression), plus Kestra's ``??`` / ``???`` at 120. Names of filters, functions and
tests are *not* checked here: Kestra flows may call plugin functions, and an unknown name must fail
the task run that renders it, not the deployment. Each token consumed is charged to the render
budget in progress, as the lexer charges each token it makes.
"""

from __future__ import annotations

from .budget import current_budget
from .errors import TemplateSyntaxError
from .lexer import (
    EOF,
    NAME,
    NUMBER,
    OP,
    PRINT_END,
    PRINT_START,
    PUNCT,
    STRING,
    TAG_END,
    TAG_START,
    TEXT,
    Token,
)
from .nodes import (
    Args,
    Binary,
    Call,
    Expr,
    FilterCall,
    For,
    GetItem,
    If,
    ListLit,
    Literal,
    MapLit,
    MethodCall,
    NestedTag,
    Output,
    Set,
    Stmt,
    Ternary,
    TestExpr,
    Text,
    Unary,
    Var,
)

BINARY_PRECEDENCE = {
    "or": 10,
    "and": 15,
    "is": 20,
    "is not": 20,
    "contains": 20,
    "in": 20,
    "not in": 20,
    "==": 30,
    "equals": 30,
    "!=": 30,
    ">": 30,
    "<": 30,
    ">=": 30,
    "<=": 30,
    "+": 40,
    "-": 40,
    "*": 60,
    "/": 60,
    "%": 60,
    "|": 100,
    "~": 110,
    "..": 120,
    "??": 120,
    "???": 120,
}
UNARY_PRECEDENCE = 500
UNARY_OPERATORS = ("not", "-", "+")
CONSTANTS = {
    "true": True,
    "TRUE": True,
    "false": False,
    "FALSE": False,
    "null": None,
    "NULL": None,
    "none": None,
    "NONE": None,
}
RESERVED_NAMES = frozenset(("true", "false", "null", "none"))
BLOCK_ENDS = {"if": ("elseif", "elif", "else", "endif"), "for": ("else", "endfor")}


class Parser:
    """Recursive-descent parser over one token list."""

    def __init__(self, tokens: list[Token], source: str) -> None:
        self.tokens = tokens
        self.index = 0
        self.source = source
        self.budget = current_budget()

    # -- token helpers -------------------------------------------------------------------------
    @property
    def current(self) -> Token:
        return self.tokens[self.index]

    def peek(self, offset: int = 1) -> Token:
        """The token ``offset`` places ahead (EOF past the end)."""
        index = min(self.index + offset, len(self.tokens) - 1)
        return self.tokens[index]

    def next(self) -> Token:
        """Consume and return the current token."""
        token = self.tokens[self.index]
        if token.kind != EOF:
            self.index += 1
        self.budget.spend(1)
        return token

    def at(self, kind: str, value: str | None = None) -> bool:
        """Whether the current token has this kind (and value)."""
        token = self.current
        return token.kind == kind and (value is None or token.value == value)

    def error(self, message: str, token: Token | None = None) -> TemplateSyntaxError:
        """A syntax error located at ``token`` (default: the current one)."""
        return TemplateSyntaxError(message, (token or self.current).line, self.source)

    def unexpected(self) -> TemplateSyntaxError:
        """Error for whatever token sits where it cannot."""
        token = self.current
        if token.kind in (PRINT_END, TAG_END, EOF):
            return self.error("Unexpected end of expression")
        return self.error(f'Unexpected token "{token.value}"')

    def expect(self, kind: str, value: str | None = None) -> Token:
        """Consume a token of this kind/value or fail."""
        if not self.at(kind, value):
            raise self.unexpected()
        return self.next()

    def expect_name(self) -> str:
        """A NAME token's text (also accepts word operators used as names, e.g. ``a.in``)."""
        token = self.current
        if token.kind == NAME or (token.kind == OP and token.value.isalpha()):
            self.next()
            return str(token.value)
        raise self.unexpected()

    # -- template level ------------------------------------------------------------------------
    def parse_template(self) -> list[Stmt]:
        """The whole template (with no stop tags, parse_body only returns at EOF)."""
        body, _ = self.parse_body(())
        return body

    def parse_body(self, stops: tuple[str, ...]) -> tuple[list[Stmt], str | None]:
        """Statements until one of the ``stops`` tags (returned, its name consumed) or EOF."""
        body: list[Stmt] = []
        while True:
            token = self.current
            if token.kind == TEXT:
                body.append(Text(self.next().value))
            elif token.kind == PRINT_START:
                body.append(self.parse_print())
            elif token.kind == TAG_START:
                self.next()
                name_token = self.current
                name = self.expect_name()
                if name in stops:
                    return body, name
                body.append(self.parse_tag(name, name_token))
            elif token.kind == EOF:
                return body, None
            else:  # pragma: no cover - the lexer never produces other tokens here
                raise self.unexpected()

    def parse_print(self) -> Stmt:
        """``{{ expr }}`` (or the deploy-valid, render-failing nested form)."""
        start = self.next()
        if start.nested:
            while not self.at(PRINT_END):
                self.next()
            self.next()
            return NestedTag(start.source, start.line)
        if self.at(PRINT_END):
            raise self.error("Empty expression")
        expr = self.parse_expression()
        self.expect(PRINT_END)
        return Output(expr, start.line)

    def parse_tag(self, name: str, token: Token) -> Stmt:
        """Dispatch on the tag name."""
        if name == "if":
            return self.parse_if(token)
        if name == "for":
            return self.parse_for(token)
        if name == "set":
            var = self.parse_new_name()
            self.expect(PUNCT, "=")
            expr = self.parse_expression()
            self.expect(TAG_END)
            return Set(var, expr)
        if name in ("elseif", "elif", "else", "endif", "endfor", "endraw", "endverbatim"):
            raise self.error(f"Unexpected tag [{name}] without its opening tag", token)
        raise self.error(f"Unknown tag [{name}]", token)

    def parse_new_name(self) -> str:
        """A variable name being assigned (``set``, ``for``)."""
        token = self.current
        name = self.expect_name()
        if name in RESERVED_NAMES:
            raise self.error(f"Can not assign a value to {name}", token)
        return name

    def parse_block(self, kind: str, opener: Token) -> tuple[list[Stmt], str]:
        """A tag body up to one of its closing tags; unclosed blocks are reported at the opener."""
        body, end = self.parse_body(BLOCK_ENDS[kind])
        if end is None:
            raise self.error(f"Unclosed tag [{kind}], expected end{kind}", opener)
        return body, end

    def parse_if(self, opener: Token) -> Stmt:
        """``if`` / ``elseif`` / ``else`` / ``endif``."""
        branches = []
        condition = self.parse_expression()
        self.expect(TAG_END)
        while True:
            body, end = self.parse_block("if", opener)
            branches.append((condition, body))
            if end in ("elseif", "elif"):
                condition = self.parse_expression()
                self.expect(TAG_END)
                continue
            otherwise = None
            if end == "else":
                self.expect(TAG_END)
                otherwise, end = self.parse_block("if", opener)
                if end != "endif":
                    raise self.error(f"Unexpected tag [{end}] after else")
            self.expect(TAG_END)
            return If(branches, otherwise)

    def parse_for(self, opener: Token) -> Stmt:
        """``for x in expr`` / ``else`` / ``endfor``."""
        var = self.parse_new_name()
        if not (self.at(OP, "in") or self.at(NAME, "in")):
            raise self.unexpected()
        self.next()
        iterable = self.parse_expression()
        self.expect(TAG_END)
        body, end = self.parse_block("for", opener)
        otherwise = None
        if end == "else":
            self.expect(TAG_END)
            otherwise, end = self.parse_block("for", opener)
            if end != "endfor":
                raise self.error(f"Unexpected tag [{end}] after else")
        self.expect(TAG_END)
        return For(var, iterable, body, otherwise, opener.line)

    # -- expressions ---------------------------------------------------------------------------
    def parse_expression(self, min_precedence: int = 0) -> Expr:
        """Precedence climbing over binary operators; the ternary only at the top level."""
        token = self.current
        if token.kind == OP and token.value in UNARY_OPERATORS:
            self.next()
            operand = self.parse_expression(UNARY_PRECEDENCE)
            expr: Expr = Unary(token.value, operand, token.line)
        else:
            expr = self.parse_operand()
        while True:
            token = self.current
            precedence = BINARY_PRECEDENCE.get(token.value) if token.kind == OP else None
            if precedence is None or precedence < min_precedence:
                break
            self.next()
            expr = self.parse_binary_rest(token, expr, precedence)
        if min_precedence == 0 and self.at(PUNCT, "?"):
            self.next()
            then = self.parse_expression()
            self.expect(PUNCT, ":")
            otherwise = self.parse_expression()
            expr = Ternary(expr, then, otherwise, token.line)
        return expr

    def parse_binary_rest(self, op: Token, left: Expr, precedence: int) -> Expr:
        """Right-hand side of one binary operator (filters and tests take a name, not a value)."""
        if op.value == "|":
            line = self.current.line
            name = self.expect_name()
            return FilterCall(left, name, self.parse_optional_args(), line)
        if op.value in ("is", "is not"):
            line = self.current.line
            name = self.expect_name()
            return TestExpr(left, name, self.parse_optional_args(), op.value == "is not", line)
        right = self.parse_expression(precedence + 1)
        return Binary(op.value, left, right, op.line)

    def parse_operand(self) -> Expr:
        """A parenthesised expression, a list/map literal or a primary, with its postfixes."""
        token = self.current
        if token.kind == PUNCT and token.value == "(":
            self.next()
            expr = self.parse_expression()
            self.expect(PUNCT, ")")
        elif token.kind == PUNCT and token.value == "[":
            expr = self.parse_list()
        elif token.kind == PUNCT and token.value == "{":
            expr = self.parse_map()
        else:
            expr = self.parse_primary()
        return self.parse_postfix(expr)

    def parse_primary(self) -> Expr:
        """Names, constants, numbers, strings, function calls."""
        token = self.current
        if token.kind == NAME:
            self.next()
            if token.value in CONSTANTS:
                return Literal(CONSTANTS[token.value], token.line)
            if self.at(PUNCT, "("):
                return Call(token.value, self.parse_args(), token.line)
            return Var(token.value, token.line)
        if token.kind == NUMBER:
            self.next()
            text = token.value.rstrip("L")
            return Literal(float(text) if "." in text else int(text), token.line)
        if token.kind == STRING:
            self.next()
            return self.string_node(token)
        raise self.unexpected()

    def string_node(self, token: Token) -> Expr:
        """A string literal, or a ``~`` chain for ``"a #{b} c"`` interpolation."""
        if not token.parts:
            return Literal(token.value, token.line)
        nodes: list[Expr] = []
        for part in token.parts:
            if isinstance(part, str):
                nodes.append(Literal(part, token.line))
            else:
                sub = Parser(part, self.source)
                nodes.append(sub.parse_expression())
                sub.expect(EOF)
        expr = nodes[0]
        for node in nodes[1:]:
            expr = Binary("~", expr, node, token.line)
        return expr

    def parse_postfix(self, expr: Expr) -> Expr:
        """``.name``, ``.name(args)`` and ``[expr]`` suffixes."""
        while True:
            token = self.current
            if token.kind == PUNCT and token.value == ".":
                self.next()
                name_token = self.current
                name = self.expect_name()
                if self.at(PUNCT, "("):
                    args = self.parse_args()
                    if args.named:
                        raise self.error("Can not use named arguments when calling a method")
                    expr = MethodCall(expr, name, args, name_token.line)
                else:
                    expr = GetItem(expr, Literal(name, name_token.line), name_token.line)
            elif token.kind == PUNCT and token.value == "[":
                self.next()
                key = self.parse_expression()
                self.expect(PUNCT, "]")
                expr = GetItem(expr, key, token.line)
            elif token.kind == PUNCT and token.value == "(":
                raise self.error("Only named functions can be called")
            else:
                return expr

    def parse_optional_args(self) -> Args:
        """Arguments of a filter or test, which may omit the parentheses."""
        return self.parse_args() if self.at(PUNCT, "(") else Args()

    def parse_args(self) -> Args:
        """``(a, b, name=c)``."""
        self.expect(PUNCT, "(")
        args = Args()
        while not self.at(PUNCT, ")"):
            if args.positional or args.named:
                self.expect(PUNCT, ",")
            if self.current.kind == NAME and self.peek().kind == PUNCT and self.peek().value == "=":
                name = self.parse_new_name()
                self.next()
                args.named.append((name, self.parse_expression()))
            else:
                if args.named:
                    raise self.error("Positional arguments must come before named arguments")
                args.positional.append(self.parse_expression())
        self.next()
        return args

    def parse_list(self) -> Expr:
        """``[a, b]``."""
        start = self.expect(PUNCT, "[")
        items: list[Expr] = []
        while not self.at(PUNCT, "]"):
            if items:
                self.expect(PUNCT, ",")
            items.append(self.parse_expression())
        self.next()
        return ListLit(items, start.line)

    def parse_map(self) -> Expr:
        """``{'k': v, k2: v2}``."""
        start = self.expect(PUNCT, "{")
        pairs: list[tuple[Expr, Expr]] = []
        while not self.at(PUNCT, "}"):
            if pairs:
                self.expect(PUNCT, ",")
            key = self.parse_expression()
            self.expect(PUNCT, ":")
            pairs.append((key, self.parse_expression()))
        self.next()
        return MapLit(pairs, start.line)


def parse(tokens: list[Token], source: str) -> list[Stmt]:
    """Syntax tree of a tokenized template."""
    try:
        return Parser(tokens, source).parse_template()
    except RecursionError:
        raise TemplateSyntaxError("Expression nested too deeply", 1, source) from None
