"""YAML as Kestra reads flows, with the line of every value kept for error messages.

PyYAML follows YAML 1.1, which turns ``yes``/``no``/``on``/``off`` into booleans, ``12:30`` into
a base-60 integer, ``2024-01-01`` into a date and ``010`` into the octal 8. Kestra reads flows with
Jackson, which keeps all of those as text, and always reads mapping keys as text. This module
composes the node tree with PyYAML's parser (the C one when it is built) and constructs the values
itself with YAML 1.2 core-schema scalars, so a flow means here what it means in Kestra:

- only ``true``/``false`` (any of their three spellings) are booleans, ``~``/``null``/empty is null;
- decimal, ``0o`` and ``0x`` integers and decimal floats (``.inf``, ``.nan``) are numbers;
- everything else, timestamps included, is a string; mapping keys are the key's text (``1:`` is
  ``"1"``, as Jackson gives it to Kestra's Switch);
- anchors, aliases and ``<<`` merges work; duplicate keys are reported, not silently collapsed.

While it constructs, it records the 1-based line of every path (``("tasks", 0, "format")``) so
that validation can point at the line a problem comes from.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from kestream.models.values import MAX_DEPTH, find_unportable

try:
    from yaml import CSafeLoader as _BaseLoader
except ImportError:  # PyYAML built without libyaml: same results, slower
    from yaml import SafeLoader as _BaseLoader  # type: ignore[assignment]

PathKey = str | int
Path = tuple[PathKey, ...]


_STR = "tag:yaml.org,2002:str"
_NULL = "tag:yaml.org,2002:null"
_BOOL = "tag:yaml.org,2002:bool"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_MERGE = "tag:yaml.org,2002:merge"

_INT_RE = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
_FLOAT_RE = re.compile(
    r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)


class _KestraLoader(_BaseLoader):
    """PyYAML's safe loader with YAML 1.2 core-schema implicit types instead of YAML 1.1's."""


_KestraLoader.yaml_implicit_resolvers = {}
_KestraLoader.add_implicit_resolver(
    _BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_KestraLoader.add_implicit_resolver(
    _NULL, re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""]
)
_KestraLoader.add_implicit_resolver(_INT, _INT_RE, list("-+0123456789"))
_KestraLoader.add_implicit_resolver(_FLOAT, _FLOAT_RE, list("-+0123456789."))
_KestraLoader.add_implicit_resolver(_MERGE, re.compile(r"^<<$"), ["<"])


class YamlSyntaxError(ValueError):
    """The text is not YAML (or not YAML a flow can be made of), with the line where it breaks."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None) -> None:
        super().__init__(message if line is None else f"line {line}: {message}")
        self.message = message
        self.line = line
        self.column = column


@dataclass(frozen=True, slots=True)
class DuplicateKey:
    """A key given twice in one mapping: the later value wins, as in PyYAML, but it is reported."""

    path: Path
    line: int
    first_line: int


@dataclass(slots=True)
class SourceMap:
    """Where each value of a loaded document sits in its text (1-based lines)."""

    lines: dict[Path, int] = field(default_factory=dict)
    content_lines: dict[Path, int] = field(default_factory=dict)

    def exact_line(self, path: Sequence[PathKey]) -> int | None:
        """The line of exactly this path, or None when the document has no such value."""
        return self.lines.get(tuple(path))

    def line(self, path: Sequence[PathKey]) -> int | None:
        """The line of ``path``, or of its nearest ancestor present in the text.

        Values that are not in the text (a missing property, one filled in by plugin defaults)
        are reported at the line of the mapping that should hold them.
        """
        current = tuple(path)
        while current:
            found = self.lines.get(current)
            if found is not None:
                return found
            current = current[:-1]
        return self.lines.get(())

    def content_line(self, path: Sequence[PathKey]) -> int | None:
        """The line where a string's text starts (a block scalar starts below its ``|``)."""
        found = self.content_lines.get(tuple(path))
        return found if found is not None else self.line(path)


@dataclass(frozen=True, slots=True)
class YamlDocument:
    """Plain Python data (dicts, lists, scalars) and where each part of it came from."""

    data: Any
    source_map: SourceMap
    duplicate_keys: tuple[DuplicateKey, ...] = ()


def load_yaml(text: str) -> YamlDocument:
    """Parse one YAML document into plain data and its source map.

    Raises :class:`YamlSyntaxError` (with the line) for text that is not a single YAML document.
    An empty document loads as ``None``.
    """
    loader = _KestraLoader(text)
    try:
        node = loader.get_single_node()
        builder = _Builder(loader)
        data = None if node is None else builder.build(node, ())
    except yaml.MarkedYAMLError as exc:
        raise _syntax_error(exc) from None
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(f"invalid YAML: {exc}") from None
    finally:
        loader.dispose()
    return YamlDocument(data, builder.source_map, tuple(builder.duplicates))


def _syntax_error(exc: yaml.MarkedYAMLError) -> YamlSyntaxError:
    mark = exc.problem_mark or exc.context_mark
    parts = [p for p in (exc.context, exc.problem) if p]
    message = "invalid YAML: " + ", ".join(parts) if parts else "invalid YAML"
    if mark is None:
        return YamlSyntaxError(message)
    return YamlSyntaxError(message, mark.line + 1, mark.column + 1)


#: The most values one flow document may expand to, its aliases expanded.
MAX_NODES = 200_000


class _Builder:
    """Constructs plain values from composed nodes, recording each path's line on the way."""

    def __init__(self, loader: _KestraLoader) -> None:
        self.loader = loader
        self.source_map = SourceMap()
        self.duplicates: list[DuplicateKey] = []
        self._active: set[int] = set()
        self._built = 0

    def build(self, node: yaml.Node, path: Path) -> Any:
        # Aliases are expanded where they are used: a few hundred bytes of nested anchors
        # ("billion laughs") would otherwise build billions of values.
        self._built += 1
        if self._built > MAX_NODES:
            raise YamlSyntaxError(
                f"the document expands to more than {MAX_NODES} values (nested aliases?)",
                _line_of(node),
            )
        self.source_map.lines.setdefault(path, _line_of(node))
        if len(path) > MAX_DEPTH:  # PyYAML's own composer allows more than Python's stack
            raise YamlSyntaxError(f"nested deeper than {MAX_DEPTH} levels", _line_of(node))
        if id(node) in self._active:
            raise YamlSyntaxError("a YAML alias refers to itself", _line_of(node))
        self._active.add(id(node))
        try:
            return self._build(node, path)
        finally:
            self._active.discard(id(node))

    def _build(self, node: yaml.Node, path: Path) -> Any:
        if isinstance(node, yaml.ScalarNode):
            return _portable(self._scalar(node, path), node)
        if isinstance(node, yaml.SequenceNode) and node.tag == _SEQ:
            return [self._item(child, (*path, i)) for i, child in enumerate(node.value)]
        if isinstance(node, yaml.MappingNode) and node.tag == _MAP:
            return self._mapping(node, path)
        return _portable(self._other(node), node)

    def _item(self, node: yaml.Node, path: Path) -> Any:
        self.source_map.lines[path] = _line_of(node)
        return self.build(node, path)

    def _mapping(self, node: yaml.MappingNode, path: Path) -> dict[str, Any]:
        result: dict[str, Any] = {}
        first_lines: dict[str, int] = {}
        merged: list[yaml.Node] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                merged.append(value_node)
                continue
            key = self._key(key_node)
            line = _line_of(key_node)
            if key in first_lines:
                self.duplicates.append(DuplicateKey((*path, key), line, first_lines[key]))
            first_lines[key] = line
            self.source_map.lines[(*path, key)] = line
            result[key] = self.build(value_node, (*path, key))
        for source in merged:
            self._merge(result, source, path)
        return result

    def _merge(self, result: dict[str, Any], source: yaml.Node, path: Path) -> None:
        """``<<: *anchor`` (or a list of anchors): keys given in the mapping itself win."""
        sources = source.value if isinstance(source, yaml.SequenceNode) else [source]
        for item in sources:
            value = self.build(item, path)
            if not isinstance(value, dict):
                raise YamlSyntaxError("'<<' merges only mappings", _line_of(item))
            for key, merged_value in value.items():
                result.setdefault(key, merged_value)

    def _key(self, node: yaml.Node) -> str:
        if not isinstance(node, yaml.ScalarNode):
            raise YamlSyntaxError("mapping keys must be plain text", _line_of(node))
        return str(node.value)

    def _scalar(self, node: yaml.ScalarNode, path: Path) -> Any:
        block = node.style in ("|", ">")
        self.source_map.content_lines[path] = _line_of(node) + (1 if block else 0)
        constructor = _SCALARS.get(node.tag)
        if constructor is None:
            return self._other(node)
        try:
            return constructor(node.value)
        except ValueError:
            kind = node.tag.rsplit(":", 1)[-1]
            raise YamlSyntaxError(f"'{node.value}' is not a valid {kind}", _line_of(node)) from None

    def _other(self, node: yaml.Node) -> Any:
        """Explicitly tagged values (``!!binary``, ``!!set``...) go to PyYAML's safe constructor."""
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.MarkedYAMLError as exc:
            raise _syntax_error(exc) from None


def _portable(value: Any, node: yaml.Node) -> Any:
    """``value`` if every record can carry it: a flow is refused before it runs, with the line,
    rather than failing whichever task would hand the value on. ``.inf`` and ``.nan`` stay:
    they are YAML numbers, and an output that holds one fails its task run with the reason."""
    if isinstance(value, float):
        return value
    problem = find_unportable(value)
    if problem is not None:
        shown = f"'{node.value}': " if isinstance(node, yaml.ScalarNode) else ""
        raise YamlSyntaxError(f"{shown}{problem}", _line_of(node))
    return value


def _line_of(node: yaml.Node) -> int:
    """The 1-based line where ``node`` starts."""
    return int(node.start_mark.line) + 1


def _int(text: str) -> int:
    if text[:2] in ("0o", "0x"):
        return int(text, 0)
    return int(text, 10)


def _float(text: str) -> float:
    lowered = text.lower()
    if lowered.endswith(".inf"):
        return float("-inf") if lowered.startswith("-") else float("inf")
    if lowered == ".nan":
        return float("nan")
    return float(text)


def _bool(text: str) -> bool:
    return text.lower() == "true"


def _null(_text: str) -> None:
    return None


def _str(text: str) -> str:
    return text


_SCALARS: dict[str, Any] = {_STR: _str, _NULL: _null, _BOOL: _bool, _INT: _int, _FLOAT: _float}
