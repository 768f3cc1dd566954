"""``io.kestra.plugin.slack.notifications.SlackIncomingWebhook``: post a message to Slack.

Kestra's properties: ``url`` (the incoming webhook), and the message as ``payload`` (JSON text,
rendered, sent as is) or ``messageText`` (plain text, sent as ``{"text": ...}``). A reply other
than 2xx fails the task run with the status code and the body Slack sent back. The older type name
``io.kestra.plugin.notifications.slack.SlackIncomingWebhook`` is accepted too.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from pydantic import Field, model_validator

import kestream

#: How much of an error reply's body the failure message quotes.
_BODY_EXCERPT = 500


class SlackIncomingWebhook(kestream.PythonTask):
    """Send a Slack message through an incoming webhook."""

    type_name = "io.kestra.plugin.slack.notifications.SlackIncomingWebhook"
    aliases = ("io.kestra.plugin.notifications.slack.SlackIncomingWebhook",)

    url: str = Field(min_length=1)
    payload: str | None = None
    message_text: str | None = Field(default=None, alias="messageText")

    @model_validator(mode="after")
    def _one_message(self) -> SlackIncomingWebhook:
        if (self.payload is None) == (self.message_text is None):
            raise ValueError("give the message as 'payload' (JSON) or 'messageText', one of them")
        return self

    def body(self) -> dict[str, Any]:
        """The JSON document to post."""
        if self.message_text is not None:
            return {"text": self.message_text}
        try:
            document = json.loads(self.payload or "")
        except json.JSONDecodeError as exc:
            raise kestream.TaskError(f"'payload' is not JSON: {exc}") from None
        if not isinstance(document, dict):
            raise kestream.TaskError("'payload' must be a JSON object")
        return document

    async def execute(self, run: kestream.RunContext) -> None:
        timeout = aiohttp.ClientTimeout(total=60)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(self.url, json=self.body()) as reply,
        ):
            text = await reply.text()
            if not 200 <= reply.status < 300:
                raise kestream.TaskError(
                    f"Slack webhook answered {reply.status}: {text[:_BODY_EXCERPT]}"
                )
        run.logger.debug("Slack webhook answered %s", reply.status)
