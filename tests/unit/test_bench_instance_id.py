"""The benchmark's roles never share the shell's static group instance id."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.stack import Stack, StackConfig


def test_the_roles_do_not_inherit_the_shells_group_instance_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KESTREAM_GROUP_INSTANCE_ID", "laptop")
    stack = Stack(StackConfig(broker="kafka", run_dir=tmp_path), [])
    stack.bootstrap = "127.0.0.1:9092"
    env = stack._role_env()
    assert "KESTREAM_GROUP_INSTANCE_ID" not in env  # else every executor would be "laptop"
    assert env["KESTREAM_BROKER"] == "127.0.0.1:9092"
