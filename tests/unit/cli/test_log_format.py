"""KESTREAM_LOG_FORMAT: readable lines or one JSON object per line, secrets masked in both."""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.standalone import process_phases
from kestream.log_format import configure_logging, make_formatter, secret_values
from kestream.secrets.masking import MASK
from kestream.settings import Settings

PASSWORD = 'pa"ss word-1'
TOKEN = "tok-5b1f0c2e9d"
DB_PASSWORD = "db-pw-77"


def _settings(**values: str) -> Settings:
    return Settings(
        api_username="admin",
        api_password=PASSWORD,
        api_tokens=f"{TOKEN},other-token-x",
        index_url=f"postgresql://kestream:{DB_PASSWORD}@db.example/kestream",
        **values,
    )


def _record(message: str, *args: object, exc: bool = False, **extra: object) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise RuntimeError(f"boom with {PASSWORD}")
        except RuntimeError:
            exc_info = sys.exc_info()
    record = logging.LogRecord(
        "kestream.app", logging.WARNING, __file__, 1, message, args, exc_info
    )
    record.__dict__.update(extra)
    return record


def test_text_lines_of_a_role_name_it_and_its_process() -> None:
    line = make_formatter(_settings(), "executor,worker").format(_record("ready in %d s", 3))
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} WARNING executor,worker\[\d+\] kestream.app: "
        r"ready in 3 s",
        line,
    )


def test_text_lines_of_a_command_are_short() -> None:
    line = make_formatter(_settings(), None).format(_record("hello"))
    assert re.fullmatch(r"\d\d:\d\d:\d\d WARNING kestream.app: hello", line)


def test_the_bench_still_reads_a_process_s_ready_line() -> None:
    """bench/standalone.py parses the start-up breakdown out of the role processes' lines."""
    message = (
        "executor and worker ready: 3.10 s after the process started (interpreter, imports and "
        "faust 1.20 s, broker and topics 0.30 s)"
    )
    line = make_formatter(_settings(), "executor,worker").format(_record(message))
    assert process_phases(line) == [
        (
            "executor+worker",
            {"total": 3.10, "interpreter, imports and faust": 1.20, "broker and topics": 0.30},
        )
    ]


def test_json_lines_have_the_fields_a_collector_needs() -> None:
    formatter = make_formatter(_settings(log_format="json"), "worker")
    line = formatter.format(_record("task %s done", "t1", execution_id="E1"))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "WARNING"
    assert entry["logger"] == "kestream.app"
    assert entry["message"] == "task t1 done"
    assert entry["role"] == "worker"
    assert isinstance(entry["process"], int)
    assert entry["time"].endswith("+00:00")
    assert entry["execution_id"] == "E1"  # `extra` fields come along


def test_json_of_a_command_says_cli_and_carries_the_exception() -> None:
    formatter = make_formatter(_settings(log_format="json"), None)
    entry = json.loads(formatter.format(_record("failed", exc=True)))
    assert entry["role"] == "cli"
    assert "RuntimeError: boom with" in entry["exc_info"]


@pytest.mark.parametrize("kind", ["text", "json"])
def test_secrets_are_masked_in_messages_exceptions_and_fields(kind: str) -> None:
    formatter = make_formatter(_settings(log_format=kind), "api")
    basic = base64.b64encode(PASSWORD.encode()).decode()
    line = formatter.format(
        _record(
            "password %s token %s db %s b64 %s",
            PASSWORD,
            TOKEN,
            DB_PASSWORD,
            basic,
            exc=True,
            header=f"Bearer {TOKEN}",
        )
    )
    for secret in (PASSWORD, TOKEN, DB_PASSWORD, basic, json.dumps(PASSWORD)[1:-1]):
        assert secret not in line
    assert line.count(MASK) >= 5
    if kind == "json":
        entry = json.loads(line)  # still one valid JSON object once masked
        assert entry["header"] == f"Bearer {MASK}"
        assert entry["message"] == f"password {MASK} token {MASK} db {MASK} b64 {MASK}"


def test_secret_values_are_every_secret_setting() -> None:
    values = secret_values(_settings(encryption_key="k" * 32))
    assert {PASSWORD, TOKEN, "other-token-x", DB_PASSWORD, "k" * 32} <= set(values)


@pytest.fixture
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level, hook, thread_hook = (
        root.handlers[:],
        root.level,
        sys.excepthook,
        threading.excepthook,
    )
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    sys.excepthook = hook
    threading.excepthook = thread_hook
    logging.captureWarnings(False)


@pytest.mark.usefixtures("_restore_logging")
def test_configured_logging_writes_json_to_stderr_and_quietens_libraries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    configure_logging(_settings(log_format="json"), "scheduler")
    logging.getLogger("kestream.scheduler").info("lease %s", PASSWORD)
    logging.getLogger("aiokafka.conn").info("a library's chatter")
    logging.getLogger("faust.app").warning("a library's warning")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(e["logger"], e["message"]) for e in lines] == [
        ("kestream.scheduler", f"lease {MASK}"),
        ("faust.app", "a library's warning"),
    ]


def test_a_crash_is_one_json_object() -> None:
    """An exception nothing catches is logged as JSON, its traceback masked, not printed."""
    code = (
        "from kestream.log_format import configure_logging\n"
        "from kestream.settings import Settings\n"
        "configure_logging(Settings(log_format='json', api_tokens='crash-token-1'), 'api')\n"
        "raise RuntimeError('crashed holding crash-token-1')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    (entry,) = [json.loads(line) for line in done.stderr.splitlines()]
    assert entry["level"] == "CRITICAL"
    assert entry["message"] == f"uncaught exception: crashed holding {MASK}"
    assert "Traceback" in entry["exc_info"] and "crash-token-1" not in entry["exc_info"]


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_crash_a_thread_s_crash_and_a_warning_are_masked(log_format: str) -> None:
    """Python prints these to stderr itself, past every formatter: they are logged instead."""
    code = (
        "import threading, warnings\n"
        "from kestream.log_format import configure_logging\n"
        "from kestream.settings import Settings\n"
        f"settings = Settings(log_format='{log_format}', api_tokens='crash-token-1')\n"
        "configure_logging(settings, 'api')\n"
        "warnings.warn('warned holding crash-token-1')\n"
        "def boom():\n"
        "    raise ValueError('thread holding crash-token-1')\n"
        "t = threading.Thread(target=boom, name='side'); t.start(); t.join()\n"
        "raise RuntimeError('crashed holding crash-token-1')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "crash-token-1" not in done.stderr
    for said in ("warned holding", "thread holding", "crashed holding", "Traceback"):
        assert said in done.stderr
    assert done.stderr.count(MASK) >= 3


def test_secret_values_hold_the_forms_a_message_shows() -> None:
    """A URL's password percent-decoded as well as written (KESTREAM_API_URL's too), and the
    Basic header's base64 of user:password."""
    settings = Settings(
        api_username="admin",
        api_password="p@ss",
        index_url="postgresql://u:pa%2Fss99@db/k",
        api_url="http://cli:url%40pw77@api.example",
    )
    values = set(secret_values(settings))
    assert {"pa%2Fss99", "pa/ss99", "url%40pw77", "url@pw77"} <= values
    assert base64.b64encode(b"admin:p@ss").decode() in values


def test_a_worker_s_lines_mask_the_values_secret_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets_file = tmp_path / "secrets.yaml"
    secrets_file.write_text("DB_PASS: file-secret-42\n")
    monkeypatch.setenv("SECRET_API_KEY", base64.b64encode(b"env-secret-43").decode())
    settings = Settings(secrets_file=str(secrets_file))
    line = f"rendered file-secret-42 and env-secret-43 with {TOKEN}"
    worker = make_formatter(settings, "executor,worker").format(_record(line))
    assert "file-secret-42" not in worker and "env-secret-43" not in worker
    assert "file-secret-42" in make_formatter(settings, "executor").format(_record(line))
