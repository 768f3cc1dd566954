"""Webhook triggers: find the trigger a request's key names, and the execution it starts.

The HTTP route (``/api/v1/executions/webhook/{namespace}/{flowId}/{key}``) lives in the API;
this module holds what is pure about it. The key is a secret shared with the caller, so it is
compared in constant time (:func:`hmac.compare_digest`) and every webhook of the flow is
compared, whatever matches first: how long a wrong guess takes tells nothing about the key.

The trigger variables follow Kestra's Webhook output: ``body`` is the parsed JSON when the body
is a JSON object or array, else the text (a body that is not UTF-8 is given base64-encoded, as
Kestra does for binary bodies); ``headers`` and ``parameters`` map each name to the list of its
values.
"""

from __future__ import annotations

import base64
import hmac
from collections.abc import Iterable, Mapping
from typing import Any

from kestream.executor.events import ExecutionCreated
from kestream.models.flow import Flow, WebhookTrigger
from kestream.models.values import UnportableValue, check_portable, loads_json
from kestream.scheduler.conditions import condition_context, conditions_hold
from kestream.scheduler.executions import trigger_execution

__all__ = [
    "MultiValues",
    "find_webhook",
    "multi_values",
    "parse_body",
    "webhook_accepts",
    "webhook_execution",
]

#: Headers or query parameters: a map of one value or a list of values per name, or the
#: ``(name, value)`` pairs of a multi-dict (repeated names keep every value).
MultiValues = Mapping[str, str | Iterable[str]] | Iterable[tuple[str, str]] | None


def find_webhook(flow: Flow, key: str) -> WebhookTrigger | None:
    """The flow's enabled Webhook trigger whose ``key`` is ``key``, or None.

    A disabled trigger answers None, as an unknown key does: the caller cannot tell them apart.
    A disabled flow is the caller's to refuse (Kestra answers 409 for it, not 404).
    """
    given = key.encode()
    found: WebhookTrigger | None = None
    for trigger in flow.triggers:
        if isinstance(trigger, WebhookTrigger):
            # No early exit: compare every key so the time taken does not depend on a match.
            matches = hmac.compare_digest(trigger.key.encode(), given)
            if matches and found is None and not trigger.disabled:
                found = trigger
    return found


def parse_body(body: bytes | str | None, content_type: str | None = None) -> Any:
    """A request body as Kestra's Webhook exposes it: JSON object or array, else text.

    A binary body (a ``content_type`` that is not text, JSON, XML, a form, YAML or CSV, or bytes
    that are not UTF-8) is given base64-encoded.
    """
    if body is None:
        return None
    if isinstance(body, bytes):
        if content_type and not _textual(content_type):
            return base64.b64encode(body).decode("ascii")
        try:
            text = body.decode()
        except UnicodeDecodeError:
            return base64.b64encode(body).decode("ascii")
    else:
        text = body
    if text.lstrip()[:1] in ("{", "["):
        try:
            parsed = loads_json(text, "body")  # exact; what cannot be carried is refused
        except UnportableValue:
            raise
        except ValueError:
            return text
        if isinstance(parsed, dict | list):
            return parsed
    return text


_TEXTUAL = ("text/", "json", "xml", "x-www-form-urlencoded", "yaml", "csv")


def _textual(content_type: str) -> bool:
    kind = content_type.split(";", 1)[0].strip().lower()
    return not kind or any(marker in kind for marker in _TEXTUAL)


def multi_values(values: MultiValues) -> dict[str, list[str]]:
    """Headers or parameters as a map of lists, in the order given."""
    out: dict[str, list[str]] = {}
    if values is None:
        return out
    if isinstance(values, Mapping):
        for name, value in values.items():
            items = [value] if isinstance(value, str) else list(value)
            out.setdefault(str(name), []).extend(str(v) for v in items)
        return out
    for name, value in values:
        out.setdefault(str(name), []).append(str(value))
    return out


def webhook_execution(
    flow: Flow,
    trigger: WebhookTrigger,
    body: bytes | str | None,
    headers: MultiValues,
    parameters: MultiValues,
    execution_id: str,
    *,
    content_type: str | None = None,
) -> ExecutionCreated:
    """The execution a webhook call starts.

    Its inputs are the trigger's (see :func:`~kestream.scheduler.executions.trigger_execution`).
    Raises :class:`~kestream.models.values.UnportableValue` (with the path, such as
    ``body.items[2]``) for a call that holds what no record can carry.
    """
    variables = {
        "body": parse_body(body, content_type),
        "headers": multi_values(headers),
        "parameters": multi_values(parameters),
    }
    check_portable(variables)
    return trigger_execution(flow, trigger, execution_id, variables)


def webhook_accepts(flow: Flow, trigger: WebhookTrigger, event: ExecutionCreated) -> bool:
    """Whether the call passes the trigger's ``conditions``, which see its variables
    (``trigger.body``...). Raises :class:`~kestream.scheduler.conditions.ConditionError` for a
    condition that cannot be evaluated."""
    if not trigger.condition_models:
        return True
    variables = (event.trigger or {}).get("variables", {})
    return conditions_hold(trigger.condition_models, condition_context(flow, variables))
