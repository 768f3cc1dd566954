"""Secrets read from files (``KESTREAM_<NAME>_FILE``), so that they never sit in a process's
environment: through :class:`Settings` as a process reads them, from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from kestream.settings import Settings


def _secret(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_every_secret_reads_from_its_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("API_PASSWORD", "API_TOKENS", "BROKER_SASL_PASSWORD", "INDEX_URL"):
        monkeypatch.delenv(f"KESTREAM_{name}", raising=False)
    monkeypatch.setenv("KESTREAM_API_USERNAME", "ann")
    monkeypatch.setenv("KESTREAM_API_PASSWORD_FILE", _secret(tmp_path, "pw", "s3cret\n"))
    monkeypatch.setenv("KESTREAM_API_TOKENS_FILE", _secret(tmp_path, "tokens", "t1\nt2, t3\n"))
    monkeypatch.setenv(
        "KESTREAM_BROKER_SASL_PASSWORD_FILE", _secret(tmp_path, "sasl", "kafka-pw\n")
    )
    monkeypatch.setenv(
        "KESTREAM_INDEX_URL_FILE", _secret(tmp_path, "index", "postgresql://u:p@db/kestream\n")
    )
    settings = Settings()
    assert settings.api_password is not None
    assert settings.api_password.get_secret_value() == "s3cret"
    assert settings.api_bearer_tokens == ("t1", "t2", "t3")
    assert settings.broker_sasl_password is not None
    assert settings.broker_sasl_password.get_secret_value() == "kafka-pw"
    assert settings.index_url is not None
    assert settings.index_url.get_secret_value() == "postgresql://u:p@db/kestream"
    assert "s3cret" not in repr(settings)  # still masked in dumps


def test_a_secret_and_its_file_together_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KESTREAM_BROKER_SASL_PASSWORD", "in-env")
    monkeypatch.setenv("KESTREAM_BROKER_SASL_PASSWORD_FILE", _secret(tmp_path, "sasl", "x"))
    with pytest.raises(ValidationError, match="KESTREAM_BROKER_SASL_PASSWORD_FILE are both set"):
        Settings()


def test_an_unreadable_file_is_refused_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KESTREAM_INDEX_URL", raising=False)
    monkeypatch.setenv("KESTREAM_INDEX_URL_FILE", str(tmp_path / "missing"))
    with pytest.raises(ValidationError, match="KESTREAM_INDEX_URL_FILE: cannot read"):
        Settings()


def test_the_file_checks_apply_like_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A password from a file goes through the same checks (here: a user name is needed)."""
    monkeypatch.delenv("KESTREAM_API_USERNAME", raising=False)
    monkeypatch.delenv("KESTREAM_API_PASSWORD", raising=False)
    monkeypatch.setenv("KESTREAM_API_PASSWORD_FILE", _secret(tmp_path, "pw", "s3cret"))
    with pytest.raises(ValidationError, match="go together"):
        Settings()
