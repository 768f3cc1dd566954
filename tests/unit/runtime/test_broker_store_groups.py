"""The broker mirror keeps the committed offsets of every consumer group the roles use.

Tansu cannot list groups, so :data:`CONSUMER_GROUPS` names them; this reads the runtime's
sources for the group names they pass to Kafka, so a new group cannot be forgotten there (its
consumers would read their topics from the start again after every restart).
"""

from __future__ import annotations

import re
from pathlib import Path

from kestream.runtime.broker_store import CONSUMER_GROUPS

RUNTIME = Path(__file__).resolve().parents[3] / "kestream"
#: ``group_id=...topic("NAME")`` and ``f"{...topic_prefix}NAME..."`` near a group.
_TOPIC_CALL = re.compile(r'group_id=\s*self\.settings\.topic\("([^"]+)"\)')
_PREFIXED = re.compile(r'group\w* = (?:None if [^"]+ else )?f"\{[\w.]*topic_prefix\}(\w[\w-]*)')


def _group_names() -> set[str]:
    names: set[str] = set()
    for path in RUNTIME.rglob("*.py"):
        text = path.read_text()
        names |= set(_TOPIC_CALL.findall(text)) | set(_PREFIXED.findall(text))
    return names


def test_every_group_of_the_roles_is_kept() -> None:
    found = _group_names()
    assert {"executor", "worker", "scheduler"} <= found  # the scan itself still sees them
    assert found - {"worker"} <= set(CONSUMER_GROUPS), found
