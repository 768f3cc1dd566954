"""Serialising filters: ``toJson`` (aliases ``json``, ``jsonEncode``) and ``toYaml`` (``yaml``)."""

from __future__ import annotations

from typing import Any

import yaml

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
    return yaml.safe_dump(plain, default_flow_style=False, sort_keys=False, allow_unicode=True)
