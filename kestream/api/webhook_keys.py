"""Webhook keys hidden from callers without credentials, in a flow's JSON and in its source.

A Webhook trigger's key is the credential of its route: whoever reads it can start the flow.
On a server without credentials (loopback only) nobody is authenticated, so the flow routes
answer every Webhook ``key`` as :data:`MASK`; a caller with credentials gets the flow as
deployed. In the source, the key is replaced where the YAML has it (the trigger's ``key``
value, located by the YAML parser, quotes, block scalars and anchors included), so the rest of
the text is unchanged, comments and layout too.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from kestream.models.flow import Flow, WebhookTrigger

__all__ = ["MASK", "mask_webhook_keys"]

MASK = "******"
_QUOTED_MASK = f'"{MASK}"'
_PROPERTIES = re.compile(r"(?:[&!]\S*\s+)+")


def mask_webhook_keys(body: dict[str, Any], flow: Flow) -> dict[str, Any]:
    """``body`` (the flow's JSON, as :func:`~kestream.api.flow_routes.flow_json` builds it)
    with its Webhook triggers' keys masked, in ``triggers`` and in ``source``."""
    keys = {t.id: t.key for t in flow.triggers if isinstance(t, WebhookTrigger)}
    if not keys:
        return body
    triggers = body.get("triggers")
    if isinstance(triggers, list):
        body["triggers"] = [
            {**trigger, "key": MASK}
            if isinstance(trigger, dict) and trigger.get("id") in keys and "key" in trigger
            else trigger
            for trigger in triggers
        ]
    source = body.get("source")
    if isinstance(source, str):
        body["source"] = _mask_source(source, keys)
    return body


def _mask_source(source: str, keys: dict[str, str]) -> str:
    """The source with each key's YAML value masked; then any other occurrence of a key's
    text (a description that quotes the webhook's URL, a merge key that escaped the parser's
    walk) is masked too: the text of a key never leaves, even where that masks more."""
    spans = sorted(_key_spans(source, set(keys)), reverse=True)
    for start, end in spans:
        value = source[start:end]
        # The span starts with the node's anchor or tag, if any (kept: aliases name it), and a
        # block scalar's ends with its line break (kept: the next line stays a line).
        head = _PROPERTIES.match(value)
        kept = head.group(0) if head else ""
        tail = value[len(value.rstrip()) :]
        source = source[:start] + kept + _QUOTED_MASK + tail + source[end:]
    for key in sorted(set(keys.values()), key=len, reverse=True):
        source = source.replace(key, MASK)
    return source


def _key_spans(source: str, webhooks: set[str]) -> set[tuple[int, int]]:
    """Where the ``key`` values of the named triggers are in ``source`` (character offsets).

    A set: triggers that share one anchored key name the same span.
    """
    root = yaml.compose(source, Loader=yaml.SafeLoader)
    spans: set[tuple[int, int]] = set()
    triggers = _value(root, "triggers")
    if not isinstance(triggers, yaml.SequenceNode):
        return spans
    for trigger in triggers.value:
        trigger_id = _value(trigger, "id")
        key = _value(trigger, "key")
        if (
            isinstance(trigger_id, yaml.ScalarNode)
            and trigger_id.value in webhooks
            and isinstance(key, yaml.ScalarNode)
        ):
            spans.add((key.start_mark.index, key.end_mark.index))
    return spans


def _value(node: yaml.Node | None, name: str) -> yaml.Node | None:
    if not isinstance(node, yaml.MappingNode):
        return None
    for key, value in node.value:
        if isinstance(key, yaml.ScalarNode) and key.value == name:
            return value
    return None
