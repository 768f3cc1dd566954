"""``kestream executions ...`` against a real API role that requires credentials.

One ``kestream standalone`` per broker, its processes logging JSON (``KESTREAM_LOG_FORMAT``);
each test runs the installed command as a user does (a child process) with the API's URL and
credentials in its environment, and checks what it prints and the code it exits with.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from api_stack import PASSWORD, TOKEN, USERNAME, Stack, start_stack

from kestream.cli_output import EXIT_UNUSABLE

pytestmark = pytest.mark.integration

DONE = {"SUCCESS", "FAILED", "KILLED", "WARNING"}


@pytest.fixture(scope="module")
def stack(broker: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prefix = f"it.cli.{uuid.uuid4().hex[:10]}."
    workdir = tmp_path_factory.mktemp("cli")
    yield from start_stack(broker.bootstrap, prefix, workdir, {"KESTREAM_LOG_FORMAT": "json"})


@pytest.fixture(scope="module")
def ns(stack: Stack) -> str:
    ns = f"it.cli.n{uuid.uuid4().hex[:8]}"
    gate = stack.log_path.parent / "gate"
    for source in FLOWS.values():
        reply = stack.post_yaml("/flows", source.format(ns=ns, gate=gate))
        assert reply.status == 200, reply.body
    return ns


FLOWS = {
    "ok": """
id: ok
namespace: {ns}
tasks:
  - id: hello
    type: io.kestra.plugin.core.log.Log
    message: hello from ok
  - id: quiet
    type: io.kestra.plugin.core.log.Log
    level: DEBUG
    message: a debug line
""",
    "warn": """
id: warn
namespace: {ns}
tasks:
  - id: tolerated
    type: io.kestra.plugin.core.execution.Fail
    allowFailure: true
""",
    "fails": """
id: fails
namespace: {ns}
tasks:
  - id: broken
    type: io.kestra.plugin.core.execution.Fail
    errorMessage: broken on purpose
""",
    "gate": """
id: gate
namespace: {ns}
tasks:
  - id: wait
    type: io.kestra.plugin.core.flow.Pause
    onResume:
      - id: answer
        type: STRING
  - id: after
    type: io.kestra.plugin.core.log.Log
    message: "answer is {{{{ outputs.wait.onResume.answer }}}}"
""",
    # The afterExecution script says it started, then waits for the test's release.
    "notified": """
id: notified
namespace: {ns}
tasks:
  - id: hello
    type: io.kestra.plugin.core.log.Log
    message: hello from notified
afterExecution:
  - id: notify
    type: io.kestra.plugin.scripts.shell.Commands
    commands:
      - touch {gate}.started
      - while [ ! -f {gate}.release ]; do sleep 0.05; done
      - echo "notified {{{{ execution.state }}}}"
""",
}


def cli(
    stack: Stack, *args: str, auth: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``kestream executions ARGS`` with the API's URL and (by default) its Basic credentials."""
    return subprocess.run(
        [sys.executable, "-m", "kestream.cli", "executions", *args],
        capture_output=True,
        text=True,
        env=_env(stack, auth),
        timeout=120,
    )


def _env(stack: Stack, auth: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KESTREAM_")}
    env["KESTREAM_API_URL"] = stack.base
    env.update(
        auth
        if auth is not None
        else {"KESTREAM_API_USERNAME": USERNAME, "KESTREAM_API_PASSWORD": PASSWORD}
    )
    return env


def _until(condition: Callable[[], bool], timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def start(stack: Stack, ns: str, flow: str) -> str:
    created = stack.post_form(f"/executions/{ns}/{flow}", {})
    assert created.status == 200, created.body
    return str(created.json()["id"])


def test_follow_ends_with_the_code_of_the_end_state(stack: Stack, ns: str) -> None:
    ok, warn, fails = (start(stack, ns, flow) for flow in ("ok", "warn", "fails"))
    done = cli(stack, "follow", ok, "--json")
    assert done.returncode == 0, done.stderr
    execution = json.loads(done.stdout)
    assert execution["id"] == ok and execution["state"]["current"] == "SUCCESS"
    assert "hello: SUCCESS" in done.stderr  # run's progress lines
    assert cli(stack, "follow", warn).returncode == 2
    failed = cli(stack, "follow", fails)
    assert failed.returncode == 1
    assert f"Execution {fails} ({ns}.fails, revision 1): FAILED" in failed.stdout
    assert "broken on purpose" in failed.stdout  # its log lines, as run prints them


def test_follow_waits_for_the_after_execution_tasks(stack: Stack, ns: str) -> None:
    """The execution is SUCCESS while its afterExecution script waits; ``follow`` goes on until
    the script has ended, and prints the execution with it."""
    gate = stack.log_path.parent / "gate"
    started, release = Path(f"{gate}.started"), Path(f"{gate}.release")
    execution_id = start(stack, ns, "notified")
    follow = subprocess.Popen(
        [sys.executable, "-m", "kestream.cli", "executions", "follow", execution_id, "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(stack),
    )
    try:
        assert _until(started.exists), "the afterExecution script never started"
        assert follow.stderr is not None
        seen: list[
            str
        ] = []  # its progress lines, until it has shown the script running (under SUCCESS)
        while not seen or seen[-1] != "  notify: RUNNING":
            line = follow.stderr.readline()
            assert line, f"follow ended first: {seen}"
            seen.append(line.rstrip("\n"))
        release.touch()
        out, err = follow.communicate(timeout=120)
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()
    assert follow.returncode == 0, err
    execution = json.loads(out)
    runs = {run["taskId"]: run["state"]["current"] for run in execution["taskRunList"]}
    assert execution["state"]["current"] == "SUCCESS"
    assert runs == {"hello": "SUCCESS", "notify": "SUCCESS"}
    assert "notify: SUCCESS" in err  # run's progress lines, after "notify: RUNNING"


def test_get_and_logs_print_as_run_does(stack: Stack, ns: str) -> None:
    ok = start(stack, ns, "ok")
    stack.wait_state(ok, DONE)
    shown = cli(stack, "get", ok)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"Execution {ok} ({ns}.ok, revision 1): SUCCESS in ")
    assert "\nTask runs:\n  hello: SUCCESS\n  quiet: SUCCESS\n" in shown.stdout
    assert "  INFO  hello: hello from ok" in shown.stdout
    as_json = json.loads(cli(stack, "get", ok, "--json").stdout)
    assert as_json == stack.get(f"/executions/{ok}").json()

    lines = cli(stack, "logs", ok).stdout.splitlines()
    assert "  INFO  hello: hello from ok" in lines and "  DEBUG quiet: a debug line" in lines
    info_up = cli(stack, "logs", ok, "--level", "info", "--json").stdout.splitlines()
    assert [json.loads(line)["message"] for line in info_up] == ["hello from ok"]
    followed = cli(stack, "logs", ok, "--follow", "--json")
    assert followed.returncode == 0
    assert [json.loads(line)["taskId"] for line in followed.stdout.splitlines()] == [
        "hello",
        "quiet",
    ]


def test_list_filters_and_pages(stack: Stack, ns: str) -> None:
    ids = [start(stack, ns, "ok") for _ in range(3)]
    for execution_id in ids:
        stack.wait_state(execution_id, DONE)
    listed = json.loads(cli(stack, "list", "--namespace", ns, "--flow", "ok", "--json").stdout)
    assert set(ids) <= {e["id"] for e in listed["results"]}
    total = listed["total"]
    assert total >= 3
    failed_only = json.loads(
        cli(stack, "list", "--namespace", ns, "--state", "failed", "--json").stdout
    )
    assert {e["state"]["current"] for e in failed_only["results"]} <= {"FAILED"}
    assert not set(ids) & {e["id"] for e in failed_only["results"]}
    second = cli(stack, "list", "--namespace", ns, "--flow", "ok", "--size", "1", "--page", "2")
    assert second.returncode == 0, second.stderr
    (row,) = second.stdout.splitlines()
    assert row.split()[1:3] == [f"{ns}.ok", "SUCCESS"]
    assert f"executions 2-2 of {total} (page 2)" in second.stderr
    labelled = json.loads(
        cli(stack, "list", "--namespace", ns, "--label", "team:nobody", "--json").stdout
    )
    assert labelled == {"results": [], "total": 0}


def test_resume_kill_and_restart(stack: Stack, ns: str) -> None:
    paused = start(stack, ns, "gate")
    stack.wait_state(paused, {"PAUSED"})
    resumed = cli(stack, "resume", paused, "--input", "answer=42", "--wait", "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["state"]["current"] == "SUCCESS"
    assert "  INFO  after: answer is 42" in cli(stack, "logs", paused).stdout
    again = cli(stack, "resume", paused)
    assert again.returncode == EXIT_UNUSABLE
    assert "409" in again.stderr and "is not paused" in again.stderr

    victim = start(stack, ns, "gate")
    stack.wait_state(victim, {"PAUSED"})
    killed = cli(stack, "kill", victim, "--wait")
    assert killed.returncode == 1, killed.stderr
    assert f"Execution {victim} ({ns}.gate, revision 1): KILLED" in killed.stdout

    restarted = cli(stack, "restart", victim, "--json")
    assert restarted.returncode == 0, restarted.stderr
    assert json.loads(restarted.stdout)["state"]["current"] == "RESTARTED"
    stack.wait_state(victim, {"PAUSED"})
    assert cli(stack, "resume", victim, "-i", "answer=again", "--wait").returncode == 0


def test_credentials_are_the_api_s(stack: Stack, ns: str) -> None:
    ok = start(stack, ns, "ok")
    stack.wait_state(ok, DONE)
    by_token = cli(stack, "get", ok, "--json", auth={"KESTREAM_API_TOKENS": TOKEN})
    assert by_token.returncode == 0 and json.loads(by_token.stdout)["id"] == ok
    wrong = {"KESTREAM_API_USERNAME": USERNAME, "KESTREAM_API_PASSWORD": "not-it"}
    refused = cli(stack, "get", ok, auth=wrong)
    assert refused.returncode == EXIT_UNUSABLE and "401" in refused.stderr
    assert cli(stack, "get", "no-such-execution").returncode == EXIT_UNUSABLE


def test_every_process_logged_json_without_banners_or_secrets(stack: Stack, ns: str) -> None:
    """The supervisor and each role process wrote one JSON object per line (no faust banner,
    no traceback outside one), each with its role and process, none with a credential."""
    text = Path(stack.log_path).read_text()
    entries = [json.loads(line) for line in text.splitlines() if line.strip()]
    roles = {entry["role"] for entry in entries}
    assert "standalone" in roles and any("api" in role for role in roles)
    assert all({"time", "level", "logger", "message", "process"} <= e.keys() for e in entries)
    assert any(" ready: " in e["message"] for e in entries if e["role"] != "standalone")
    assert PASSWORD not in text and TOKEN not in text
    assert "ƒaµS†" not in text


def test_default_role_logs_are_readable_lines(broker: Any, tmp_path: Path) -> None:
    """Without KESTREAM_LOG_FORMAT: every line is kestream's text line (the supervisor's and
    each role process's, naming its roles and process), none of faust's banner table, from the
    start to the stop."""
    prefix = f"it.cli.text.{uuid.uuid4().hex[:10]}."
    for stack in start_stack(broker.bootstrap, prefix, tmp_path):
        assert stack.get(stack.base + "/health/ready").status == 200
    text = stack.log_path.read_text()  # from start to stop (faust echoes signals unless quiet)
    line = re.compile(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) +"
        r"(?P<role>[a-z,]+)\[\d+\] [\w.]+: .*"
    )
    roles = set()
    for row in text.splitlines():
        matched = line.fullmatch(row)
        assert matched, f"not a kestream log line: {row!r}"
        roles.add(matched["role"])
    assert "standalone" in roles and any("api" in role for role in roles)
    assert re.search(r"\] kestream\.app: .*ready: [\d.]+ s after the process started", text)
    assert "ƒaµS†" not in text and PASSWORD not in text
