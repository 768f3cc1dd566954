"""The command line's exit codes: each documented meaning has one code, and click's usage
errors do not borrow WARNING's 2."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from kestream.cli import app
from kestream.cli_output import EXIT_CODES, EXIT_UNUSABLE, EXIT_USAGE, exit_code
from kestream.models.state import StateType
from kestream.settings import get_settings

runner = CliRunner()


@pytest.fixture(autouse=True)
def _fresh_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("KESTREAM_API_URL", "KESTREAM_LOG_FORMAT", "KESTREAM_BROKER"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_every_documented_meaning_has_its_own_code() -> None:
    assert exit_code(StateType.SUCCESS) == 0
    assert exit_code(StateType.FAILED) == exit_code(StateType.KILLED) == 1
    assert exit_code(StateType.WARNING) == 2
    assert exit_code(StateType.PAUSED) == 3
    assert EXIT_UNUSABLE == 4 and EXIT_USAGE == 64
    assert {EXIT_UNUSABLE, EXIT_USAGE}.isdisjoint(EXIT_CODES.values())


def test_version_is_the_installed_package_s() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"kestream {version('kestream')}"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["run", "missing.yaml"], "flow missing.yaml: no such file"),
        (["validate", "missing.yaml"], "flow missing.yaml: no such file"),
        (["flows", "deploy", "missing-dir"], "flows missing-dir: no such directory"),
    ],
)
def test_a_missing_file_is_unusable_input(
    args: list[str], says: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, args)
    assert result.exit_code == EXIT_UNUSABLE, result.output
    assert says in result.output


def test_run_refuses_a_missing_flows_directory(tmp_path: Path) -> None:
    flow = tmp_path / "f.yaml"
    flow.write_text("id: f\nnamespace: a.b\ntasks: []\n")
    result = runner.invoke(app, ["run", str(flow), "--flows", str(tmp_path / "nope")])
    assert result.exit_code == EXIT_UNUSABLE
    assert "no such directory" in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["run", "--no-such-option", "x.yaml"],
        ["run"],  # FLOW missing
        ["no-such-command"],
        ["executions", "get"],  # EXECUTION_ID missing
        ["executions", "list", "--page", "0"],  # out of range
        [],  # no command: the help, as a usage error
    ],
)
def test_a_wrong_command_line_exits_with_ex_usage(args: list[str]) -> None:
    assert runner.invoke(app, args).exit_code == EXIT_USAGE


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["executions", "list", "--label", "nocolon"], "'nocolon' is not a label as key:value"),
        (["executions", "logs", "E1", "--level", "LOUD"], "--level must be one of"),
        (["executions", "resume", "E1", "--input", "novalue"], "--input expects key=value"),
    ],
)
def test_bad_option_values_are_usage_errors(args: list[str], says: str) -> None:
    """As ``--page 0``: the command line is wrong, 64, checked before the API is called."""
    result = runner.invoke(app, args)
    assert result.exit_code == EXIT_USAGE
    assert says in result.output


def test_an_api_that_cannot_be_reached_is_unusable(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:  # a port nobody listens on once it is closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("KESTREAM_API_URL", f"http://127.0.0.1:{port}")
    result = runner.invoke(app, ["executions", "get", "E1"])
    assert result.exit_code == EXIT_UNUSABLE
    assert f"cannot reach the API at http://127.0.0.1:{port}/api/v1/main/executions/E1" in (
        result.output
    )


def _kestream(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kestream.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_the_entry_point_keeps_the_codes(tmp_path: Path) -> None:
    """Through ``main()`` as installed: a usage error is 64, a missing file 4, and a setting
    that cannot be read 4 with the setting named (not a traceback)."""
    assert _kestream("run", "--nope").returncode == EXIT_USAGE
    assert _kestream("run", str(tmp_path / "x.yaml")).returncode == EXIT_UNUSABLE

    env = {**os.environ, "KESTREAM_LOG_FORMAT": "xml"}
    bad = _kestream("validate", str(tmp_path / "x.yaml"), env=env)
    assert bad.returncode == EXIT_UNUSABLE
    assert "log_format" in bad.stderr and "Traceback" not in bad.stderr


def test_a_bad_setting_never_prints_a_secret(tmp_path: Path) -> None:
    """A before-validator's error (both KESTREAM_API_PASSWORD and its _FILE) would quote every
    setting given, tokens and passwords in clear; the message names the settings only."""
    secret_file = tmp_path / "password"
    secret_file.write_text("from-the-file")
    env = {
        **os.environ,
        "KESTREAM_API_TOKENS": "s3cr3tTok-1234",
        "KESTREAM_API_PASSWORD": "pw-in-clear-99",
        "KESTREAM_API_PASSWORD_FILE": str(secret_file),
        "KESTREAM_INDEX_URL": "postgresql://u:dbpass-77@db/kestream",
    }
    bad = _kestream("validate", str(tmp_path / "x.yaml"), env=env)
    assert bad.returncode == EXIT_UNUSABLE
    assert "KESTREAM_API_PASSWORD and KESTREAM_API_PASSWORD_FILE" in bad.stderr
    for secret in ("s3cr3tTok-1234", "pw-in-clear-99", "dbpass-77", "from-the-file"):
        assert secret not in bad.stderr + bad.stdout
    # A field's own error does not quote its value either (it may be a secret's).
    env = {**os.environ, "KESTREAM_API_MAX_FOLLOWS": "not-a-number-secret"}
    bad = _kestream("validate", str(tmp_path / "x.yaml"), env=env)
    assert bad.returncode == EXIT_UNUSABLE and "api_max_follows" in bad.stderr
    assert "not-a-number-secret" not in bad.stderr


def test_the_usage_error_is_the_one_typer_raises() -> None:
    """Whichever click typer uses (its own copy or the installed one)."""
    from kestream.cli import _UsageError

    assert _UsageError.__name__ == "UsageError"
    assert issubclass(typer.BadParameter, _UsageError)
    result = runner.invoke(app, ["run"])  # a missing argument, raised by typer's click
    assert isinstance(result.exception, SystemExit) and result.exit_code == EXIT_USAGE
