"""The example plugin package (examples/kestream-slack) against a local HTTP server.

It is loaded as a user would without installing it: its folder on ``sys.path`` and its module in
``KESTREAM_PLUGINS``.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

import kestream
from kestream.models.state import StateType
from kestream.plugins.loading import load_plugins
from kestream.settings import Settings
from kestream.testing import Driver

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "kestream-slack"
MODULE = "kestream_slack.tasks"


class Hook:
    """A webhook endpoint that records what it receives and answers ``status``."""

    def __init__(self) -> None:
        self.received: list[Any] = []
        self.status = 200
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append(await request.json())
        return web.Response(status=self.status, text="ok" if self.status == 200 else "no_service")


@pytest.fixture
async def hook() -> AsyncIterator[Hook]:
    state = Hook()
    app = web.Application()
    app.router.add_post("/services/T0/B0/x", state.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    state.url = f"http://127.0.0.1:{port}/services/T0/B0/x"
    yield state
    await runner.cleanup()


@pytest.fixture(autouse=True)
def slack_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLE))
    for name in ("kestream_slack", MODULE):  # import afresh: the registry is fresh per test
        monkeypatch.delitem(sys.modules, name, raising=False)
    assert load_plugins(Settings(plugins=MODULE)) == [MODULE]


def flow(task: str) -> str:
    return "id: notify\nnamespace: company.team\ntasks:\n  - id: send\n" + task


async def test_message_text_is_posted_as_text(hook: Hook) -> None:
    execution = await kestream.arun(
        flow(
            "    type: io.kestra.plugin.slack.notifications.SlackIncomingWebhook\n"
            f"    url: {hook.url}\n"
            '    messageText: "Hello from the workflow {{ flow.id }}"\n'
        )
    )
    assert execution.state.current is StateType.SUCCESS
    assert hook.received == [{"text": "Hello from the workflow notify"}]


async def test_the_rendered_payload_is_posted_as_is_under_the_older_name(hook: Hook) -> None:
    execution = await kestream.arun(
        flow(
            "    type: io.kestra.plugin.notifications.slack.SlackIncomingWebhook\n"
            f"    url: {hook.url}\n"
            "    payload: |\n"
            "      {\n"
            '        "blocks": [{"type": "section",\n'
            '                    "text": {"type": "mrkdwn", "text": "Run *{{ execution.id }}*"}}]\n'
            "      }\n"
        )
    )
    assert execution.state.current is StateType.SUCCESS
    text = f"Run *{execution.id}*"
    assert hook.received == [
        {"blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]}
    ]


async def test_a_non_2xx_answer_fails_with_the_code_and_body(hook: Hook) -> None:
    hook.status = 500
    driver = Driver()
    try:
        driver.deploy(
            flow(
                "    type: io.kestra.plugin.slack.notifications.SlackIncomingWebhook\n"
                f"    url: {hook.url}\n"
                "    messageText: hi\n"
            )
        )
        execution = await driver.astart("company.team", "notify")
        messages = [entry.message for entry in driver.logs(execution.id)]
    finally:
        driver.runner.close()
    assert execution.state.current is StateType.FAILED
    assert "Slack webhook answered 500: no_service" in messages


async def test_a_message_is_required_and_payload_must_be_json(hook: Hook) -> None:
    driver = Driver()
    try:
        for task_id, body in (("none", ""), ("bad", "    payload: 'not json {{ 1 }}'\n")):
            driver.deploy(
                "id: notify\nnamespace: company.team\ntasks:\n"
                f"  - id: {task_id}\n"
                "    type: io.kestra.plugin.slack.notifications.SlackIncomingWebhook\n"
                f"    url: {hook.url}\n" + body
            )
            execution = await driver.astart("company.team", "notify")
            assert execution.state.current is StateType.FAILED
            messages = " | ".join(entry.message for entry in driver.logs(execution.id))
            expected = "'payload' (JSON) or 'messageText'" if task_id == "none" else "not JSON"
            assert expected in messages
    finally:
        driver.runner.close()
    assert hook.received == []


def test_the_example_declares_its_entry_point() -> None:
    text = (EXAMPLE / "pyproject.toml").read_text()
    assert '[project.entry-points."kestream.tasks"]' in text
    assert f'slack = "{MODULE}"' in text
