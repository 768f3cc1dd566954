"""Which consumers get a group.instance.id, and the ids standalone gives its children."""

from __future__ import annotations

from pathlib import Path

from kestream.runtime.static_membership import child_instance_id, static_member
from kestream.settings import Settings


def test_only_kafka_gets_the_instance_id_and_only_when_one_is_set() -> None:
    with_id = Settings(group_instance_id="executor-3")
    assert static_member(with_id, "kafka") == {"group_instance_id": "executor-3"}
    assert static_member(with_id, "tansu") == {}
    assert static_member(Settings(), "kafka") == {}


def test_children_ids_differ_by_slot_and_by_data_dir(tmp_path: Path) -> None:
    one = Settings(data_dir=str(tmp_path / "one"))
    other = Settings(data_dir=str(tmp_path / "other"))
    slots = {child_instance_id(one, slot) for slot in ("executor-1", "executor-2")}
    assert len(slots) == 2
    assert child_instance_id(one, "executor-1") == child_instance_id(one, "executor-1")
    assert child_instance_id(one, "executor-1") != child_instance_id(other, "executor-1")


def test_an_operators_id_is_the_base_of_each_childs() -> None:
    settings = Settings(group_instance_id="node-a")
    assert child_instance_id(settings, "executor-2") == "node-a.executor-2"
