"""How kestream's processes write their own log lines (``KESTREAM_LOG_FORMAT``).

Every process (a CLI command, the ``standalone`` supervisor, each role process) configures the
root logger once, here, so that every line has one shape whoever logged it (kestream, faust,
aiokafka):

- ``text`` (the default): a readable line. A role process's lines name its roles and process id
  (``2026-12-05 14:53:44.120 INFO    executor,worker[2561] kestream.app: ...``), since every
  process of ``standalone`` writes to the same terminal; a CLI command's are short
  (``14:53:44 INFO    kestream.cli: ...``).
- ``json``: one JSON object per line, for a log collector: ``time`` (ISO-8601, UTC), ``level``,
  ``logger``, ``message``, ``role`` (the roles of the process, ``standalone``, or ``cli``),
  ``process`` (its id), plus ``exc_info`` when an exception is logged and any ``extra`` fields.
  Written by python-json-logger.

Whatever the format, a line is masked last, once formatted: the secret values of the process's
settings (the API's password and tokens, the SASL password, the index URL and its password, the
encryption key, the S3 secret key) become ``******`` through the engine's
:class:`~kestream.secrets.masking.Masker`, so a secret that reached a message, an exception or a
JSON field (escaped as JSON escapes it) never shows.
"""

from __future__ import annotations

import base64
import logging
import logging.config
import os
import sys
import threading
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

from pydantic import SecretStr
from pythonjsonlogger.json import JsonFormatter

from kestream.secrets.masking import Masker
from kestream.settings import Settings

__all__ = ["MaskingFormatter", "configure_logging", "logging_config", "secret_values"]

#: Loggers of the libraries below kestream: their INFO lines are noise next to kestream's own.
QUIET_LOGGERS = ("aiokafka", "faust", "mode", "kafka")

#: The record's fields of a JSON line, as a ``%`` format (python-json-logger reads the names).
_JSON_FIELDS = "%(levelname)s %(name)s %(message)s %(process)s"
_JSON_RENAMES = {"levelname": "level", "name": "logger"}


def secret_values(settings: Settings) -> list[str]:
    """The secret values of ``settings``: each ``SecretStr`` field, each bearer token apart,
    the password inside a URL (the index URL; ``KESTREAM_API_URL``'s too), as written and
    percent-decoded, since a message may show either without the rest, and the API's Basic
    credentials as the ``Authorization`` header carries them (base64 of ``user:password``)."""
    values: list[str] = list(settings.api_bearer_tokens)
    urls = [settings.api_url] if settings.api_url else []
    for name in type(settings).model_fields:
        secret = getattr(settings, name)
        if not isinstance(secret, SecretStr):
            continue
        value = secret.get_secret_value()
        values.append(value)
        urls.append(value)
    for url in urls:
        if "://" not in url:
            continue
        try:
            password = urlsplit(url).password
        except ValueError:
            password = None
        if password:
            values += [password, unquote(password)]
    if settings.api_username is not None and settings.api_password is not None:
        pair = f"{settings.api_username}:{settings.api_password.get_secret_value()}"
        values.append(base64.b64encode(pair.encode()).decode())
    return [value for value in values if value]


class MaskingFormatter(logging.Formatter):
    """Formats with ``inner``, then masks every secret value in the whole line (module docs)."""

    def __init__(self, inner: logging.Formatter, secrets: list[str]) -> None:
        super().__init__()
        self.inner = inner
        self.masker = Masker()
        for value in secrets:
            self.masker.add(value)

    def format(self, record: logging.LogRecord) -> str:
        return self.masker.text(self.inner.format(record))


def _text_formatter(role: str | None) -> logging.Formatter:
    if role is None:
        return logging.Formatter(
            "%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S"
        )
    return logging.Formatter(
        f"%(asctime)s.%(msecs)03d %(levelname)-7s {role}[%(process)d] %(name)s: %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
    )


def _json_formatter(role: str | None) -> logging.Formatter:
    return JsonFormatter(
        _JSON_FIELDS,
        rename_fields=dict(_JSON_RENAMES),
        static_fields={"role": role or "cli"},
        timestamp="time",
    )


def make_formatter(settings: Settings, role: str | None) -> logging.Formatter:
    """The formatter of ``KESTREAM_LOG_FORMAT``, masking the settings' secrets, and in a
    worker's process the values ``secret()`` reads too (:func:`task_secret_values`)."""
    json = settings.log_format == "json"
    inner = _json_formatter(role) if json else _text_formatter(role)
    secrets = secret_values(settings)
    if role is not None and "worker" in role.split(","):
        secrets += task_secret_values(settings)
    return MaskingFormatter(inner, secrets)


def task_secret_values(settings: Settings) -> list[str]:
    """The values of ``secret()`` as the process starts: each ``SECRET_<NAME>`` variable,
    decoded, and the secrets file's (a file rotated later is not read again here). A task
    masks its own lines; this masks the worker's (an exception that quotes a rendered value)."""
    from kestream.secrets.resolver import ENV_PREFIX, SecretError, process_resolver

    try:
        resolver = process_resolver(settings.secrets_file)
    except SecretError:
        return []  # the worker reports the file when a task asks for a secret
    values = list(resolver.file_values())
    for name in os.environ:
        if name.startswith(ENV_PREFIX):
            try:
                values.append(resolver.resolve(name.removeprefix(ENV_PREFIX)))
            except SecretError:
                continue
    return values


def log_level(settings: Settings, verbose: bool = False) -> int:
    if verbose:
        return logging.DEBUG
    level = logging.getLevelName(settings.log_level.strip().upper())
    return level if isinstance(level, int) else logging.INFO


def logging_config(
    settings: Settings, role: str | None, *, verbose: bool = False
) -> dict[str, Any]:
    """The :func:`logging.config.dictConfig` of a process: one handler on stderr with the
    formatter of :func:`make_formatter`; the libraries' loggers (:data:`QUIET_LOGGERS`) at
    WARNING, or kestream's level when that is higher. faust takes it as its
    ``logging_config``, so a role process's faust worker sets up this logging, not its own."""
    level = log_level(settings, verbose)
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"kestream": {"()": make_formatter, "settings": settings, "role": role}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "kestream",
                "level": level,
                "stream": sys.stderr,
            }
        },
        "loggers": {name: {"level": max(level, logging.WARNING)} for name in QUIET_LOGGERS},
        "root": {"level": level, "handlers": ["stderr"]},
    }


def configure_logging(
    settings: Settings, role: str | None = None, *, verbose: bool = False
) -> None:
    """Set up this process's logging (module docs). Whatever the format, an exception nothing
    caught (in the main thread or another) and a warning (:mod:`warnings`) are logged too, so
    they are masked as every line is (Python would print them to stderr as they are); in JSON
    a crash reaches the log collector as one object (``CRITICAL``, its traceback in
    ``exc_info``), not as lines of a traceback."""
    logging.config.dictConfig(logging_config(settings, role, verbose=verbose))
    logging.captureWarnings(True)
    sys.excepthook = log_uncaught
    threading.excepthook = _log_uncaught_in_thread


def log_uncaught(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, value, tb)
        return
    logging.getLogger("kestream").critical(
        "uncaught exception: %s", value, exc_info=(kind, value, tb)
    )


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None or issubclass(args.exc_type, SystemExit):
        return  # what threading's own hook ignores
    name = args.thread.name if args.thread is not None else "a thread"
    logging.getLogger("kestream").critical(
        "uncaught exception in %s: %s",
        name,
        args.exc_value,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )
