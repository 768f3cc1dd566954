"""Serialising filters: ``toJson`` (aliases ``json``, ``jsonEncode``) and ``toYaml`` (``yaml``)."""

from __future__ import annotations

from typing import Any

import yaml

from .budget import current_budget
from .registry import template_filter
from .text import parse_json, to_json


@template_filter("toJson", "json", "jsonEncode")
def json_encode(value: Any) -> str:
    """The value as compact JSON (``null`` for null), like Kestra's Jackson mapper."""
    return to_json(value)


@template_filter("toYaml", "yaml")
def yaml_encode(value: Any) -> str:
    """The value as block-style YAML (via its JSON form, so dates print as Kestra prints them)."""
    plain = parse_json(to_json(value))
    return yaml.dump(
        plain, Dumper=_CountedDumper, default_flow_style=False, sort_keys=False, allow_unicode=True
    )


class _CountedDumper(yaml.SafeDumper):
    """PyYAML's safe dumper, each node counted against the render budget when represented and
    when written (pure Python: about 10 us per node)."""

    def represent_data(self, data: Any) -> Any:
        current_budget().spend()
        return super().represent_data(data)

    def serialize_node(self, node: Any, parent: Any, index: Any) -> None:
        current_budget().spend()
        super().serialize_node(node, parent, index)
