"""Where secret values come from: Kestra OSS's ``SECRET_<NAME>`` variables, and a secrets file.

- ``SECRET_<NAME>`` environment variables hold the value base64-encoded (Kestra's convention;
  line breaks inside the base64 are ignored). ``secret('my_secret')`` reads ``SECRET_MY_SECRET``:
  names are upper-cased, as Kestra does.
- ``KESTREAM_SECRETS_FILE`` names a YAML (or JSON) map of names to plain values; a name found
  there wins over the variable. The file is read when the resolver is made (a worker at start;
  :func:`process_resolver` reads it again when its modification time changes).

Only workers resolve secrets (:mod:`kestream.secrets.deferred`). A missing secret is Kestra's
``Cannot find secret for key 'NAME'.``; no message ever carries a value.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

__all__ = ["SecretError", "SecretResolver", "process_resolver"]

ENV_PREFIX = "SECRET_"


class SecretError(LookupError):
    """A secret that is missing or cannot be decoded (the message names it, never its value)."""


class SecretResolver:
    """Secret names to values (module docs)."""

    def __init__(self, environ: Mapping[str, str], file_values: Mapping[str, str]) -> None:
        self._environ = dict(environ)
        self._file = {name.upper(): value for name, value in file_values.items()}

    @classmethod
    def of(cls, environ: Mapping[str, str], secrets_file: str | None) -> SecretResolver:
        return cls(environ, read_secrets_file(secrets_file) if secrets_file else {})

    def file_values(self) -> list[str]:
        """The secrets file's values (the worker's log masking)."""
        return list(self._file.values())

    def resolve(self, name: str) -> str:
        key = name.upper()
        if key in self._file:
            return self._file[key]
        encoded = self._environ.get(ENV_PREFIX + key)
        if encoded is None:
            raise SecretError(f"Cannot find secret for key '{name}'.")
        try:
            raw = base64.b64decode("".join(encoded.split()), validate=True)
            return raw.decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise SecretError(
                f"Secret '{name}' ({ENV_PREFIX}{key}) is not base64-encoded UTF-8 text"
            ) from None


def read_secrets_file(path: str) -> dict[str, str]:
    """The file's map; a file that is not one raises SecretError naming the file, not its text."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SecretError(f"KESTREAM_SECRETS_FILE: cannot read {path}: {exc.strerror}") from None
    try:
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError:
        raise SecretError(f"KESTREAM_SECRETS_FILE: {path} is not YAML or JSON") from None
    if data is None:
        return {}
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise SecretError(f"KESTREAM_SECRETS_FILE: {path} must hold a map of names to values")
    return {name: value if isinstance(value, str) else str(value) for name, value in data.items()}


class _ProcessResolver:
    """The process's secrets file, read again when it changes (a rotation); the environment is
    read at each call (tests and embedding code set ``SECRET_*`` at run time)."""

    def __init__(self) -> None:
        self._stamp: tuple[str | None, float | None] | None = None
        self._file: dict[str, str] = {}

    def get(self, secrets_file: str | None) -> SecretResolver:
        stamp = (secrets_file, _mtime(secrets_file))
        if stamp != self._stamp:
            self._file = read_secrets_file(secrets_file) if secrets_file else {}
            self._stamp = stamp
        return SecretResolver(os.environ, self._file)


def _mtime(path: str | None) -> float | None:
    if not path:
        return None
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


_PROCESS = _ProcessResolver()


def process_resolver(secrets_file: str | None) -> SecretResolver:
    """This process's environment and ``secrets_file`` (``KESTREAM_SECRETS_FILE``)."""
    return _PROCESS.get(secrets_file)
