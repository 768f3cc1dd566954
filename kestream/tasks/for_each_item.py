"""ForEachItem: split a stored file into batches and run one subflow execution per batch.

As Kestra does, the task is a flowable whose one lane holds three internal tasks, named after it:

- ``{id}_split`` (``ForEachItem$ForEachItemSplit``, on a worker): the storage :class:`Split`
  itself, cutting ``items`` by ``batch.rows``, ``batch.bytes`` or ``batch.partitions``; its
  ``uris`` output lists the batch files;
- ``{id}_items`` (``ForEachItem$ForEachItemExecutable``, in the executor): a :class:`Subflow`
  that starts one child execution per batch, ``{{ taskrun.items }}`` naming the batch's file in
  its ``inputs``, and counts their end states in ``iterations``;
- ``{id}_merge`` (``ForEachItem$ForEachItemMergeOutputs``, on a worker): writes the children's
  outputs, one JSON line per child, to the file ``subflowOutputs``.

The internal tasks are built from the ForEachItem's own properties when the flow is read, so they
are in the flow's task index like any nested task: the executor, the worker and a restart find
them by id.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from kestream.models.ids import derived_id
from kestream.models.instants import parse_instant
from kestream.storage.backend import Storage
from kestream.storage.keys import to_uri
from kestream.storage.offload import REF_KEY, expand_gathered
from kestream.tasks.base import ChildPlan, FlowableTask, RunInfo, Task, TaskError
from kestream.tasks.files import readable_key, run_files
from kestream.tasks.flow import one_lane
from kestream.tasks.storage import Split, StorageTask, uri_list
from kestream.tasks.subflow import Subflow

_TYPE = "io.kestra.plugin.core.flow.ForEachItem"
#: The variable of ``taskrun`` that names a batch's file while its subflow's inputs render.
ITEMS_VARIABLE = "items"
#: The variable of ``taskrun`` that numbers the batch, from 1.
ITERATION_VARIABLE = "iteration"
#: The ForEachItem properties its executable task takes as a Subflow's.
_SUBFLOW_PROPERTIES: set[str] = {
    "namespace", "flowId", "revision", "inputs", "labels", "wait", "transmitFailed",
    "inheritLabels", "scheduleDate",
}  # fmt: skip


class Batch(BaseModel):
    """How ``items`` is cut: by ``rows`` (1 by default), ``bytes`` or ``partitions``."""

    model_config = ConfigDict(extra="forbid")

    rows: int | str | None = None
    bytes: str | int | None = None
    partitions: int | str | None = None
    separator: str = "\n"

    @model_validator(mode="after")
    def _one_way(self) -> Batch:
        if len(self._chosen()) > 1:
            raise ValueError("batch: give only one of rows, bytes, partitions")
        return self

    def _chosen(self) -> dict[str, Any]:
        given = {n: getattr(self, n) for n in ("rows", "bytes", "partitions")}
        return {n: v for n, v in given.items() if v is not None}

    def split_properties(self) -> dict[str, Any]:
        """The :class:`Split` properties of this batching; one row per batch when none given."""
        return {**(self._chosen() or {"rows": 1}), "separator": self.separator}


class ForEachItemSplit(Split):
    """The storage Split under ForEachItem's name (its outputs are the same)."""

    type_name: ClassVar[str] = f"{_TYPE}$ForEachItemSplit"
    aliases: ClassVar[tuple[str, ...]] = ()


class ForEachItemExecutable(Subflow):
    """One child execution per batch file listed by ``splits`` (the split task's ``uris``).

    The executor renders ``inputs`` once per batch, with ``taskrun.items`` the batch's URI
    (:meth:`kestream.executor.step.Step.run_batches`).
    """

    type_name: ClassVar[str] = f"{_TYPE}$ForEachItemExecutable"
    aliases: ClassVar[tuple[str, ...]] = ()
    dynamic: ClassVar[tuple[str, ...]] = ("namespace", "flowId", "labels", "splits", "scheduleDate")

    splits: str
    scheduleDate: str | None = None

    def batch_uris(self, rendered: Any) -> list[str]:
        """The batch files from the rendered ``splits`` (a JSON list)."""
        return uri_list(rendered, "splits")

    def schedule_date(self, rendered: Any) -> datetime | None:
        """When the children start: the rendered ``scheduleDate`` (ISO-8601), or now."""
        if rendered in (None, ""):
            return None
        try:
            return parse_instant(str(rendered))
        except ValueError:
            raise TaskError(f"scheduleDate: '{rendered}' is not an ISO-8601 date-time") from None


def batch_child_id(execution_id: str, task_run_id: str, attempt: int, index: int) -> str:
    """The id of the child execution of batch ``index`` (0-based) of an attempt: derived, so a
    step processed again creates the same children."""
    return derived_id(execution_id, "subflow", task_run_id, attempt, index)


class ForEachItemMergeOutputs(StorageTask):
    """Write the children's outputs (``outputs``, a JSON list rendered from the executable's
    output of that name) as JSON lines to one file, ``subflowOutputs``.

    The executor keeps that list within the inline threshold: what it stored on the way (a
    spill of the list so far, a child's outputs past the threshold) stands as a reference in
    the executable's folder, read here in order (:func:`expand_gathered`)."""

    type_name: ClassVar[str] = f"{_TYPE}$ForEachItemMergeOutputs"
    dynamic: ClassVar[tuple[str, ...]] = ("outputs",)

    outputs: str

    def run_storage(self, props: dict[str, Any], run: RunInfo, storage: Storage) -> dict[str, Any]:
        try:
            children = orjson.loads(str(props.get("outputs") or "[]"))
        except orjson.JSONDecodeError as exc:
            raise TaskError(f"outputs: invalid JSON list: {exc}") from None
        if not isinstance(children, list):
            raise TaskError("outputs: expects a list of the subflows' outputs")
        try:
            children = expand_gathered(children, lambda ref: _stored_value(run, storage, ref))
        except ValueError as exc:  # a spill named twice: what a reference-shaped output makes
            raise TaskError(f"outputs: {exc}") from None
        key = run_files(run).key("outputs.ion")
        with storage.writer(key) as out:
            for child in children:
                out.write(orjson.dumps(child) + b"\n")
        return {"subflowOutputs": to_uri(key)}


def _stored_value(run: RunInfo, storage: Storage, ref: dict[str, Any]) -> Any:
    """The value a reference in the children's outputs names, read under the run's access
    rule (its own execution's files)."""
    from kestream.executor.codec import CodecError, decode_value  # the executor imports tasks

    key = readable_key(run, ref[REF_KEY], "outputs")
    try:
        return decode_value(orjson.loads(storage.get(key)))
    except FileNotFoundError:
        raise TaskError(f"outputs: '{ref[REF_KEY]}' is missing from the internal storage") from None
    except (orjson.JSONDecodeError, CodecError) as exc:
        raise TaskError(f"outputs: '{ref[REF_KEY]}' is unreadable: {exc}") from None


class ForEachItem(FlowableTask):
    type_name: ClassVar[str] = _TYPE
    aliases: ClassVar[tuple[str, ...]] = ("io.kestra.core.tasks.flows.ForEachItem",)

    items: str
    batch: Batch = Field(default_factory=Batch)
    namespace: str
    flowId: str
    revision: int | None = None
    inputs: dict[str, Any] = Field(default_factory=dict)
    labels: dict[str, Any] | list[dict[str, Any]] = Field(default_factory=dict)
    wait: bool = True
    transmitFailed: bool = True
    inheritLabels: bool = False
    scheduleDate: str | None = None

    _internal: list[Task] = PrivateAttr(default_factory=list)

    def model_post_init(self, context: Any, /) -> None:
        split_id, items_id, merge_id = (f"{self.id}_{n}" for n in ("split", "items", "merge"))
        split = ForEachItemSplit.model_validate(
            {"id": split_id, "type": ForEachItemSplit.type_name, "from": self.items}
            | self.batch.split_properties()
        )
        executable = ForEachItemExecutable.model_validate(
            {
                "id": items_id,
                "type": ForEachItemExecutable.type_name,
                # this iteration's, inside a loop
                "splits": f"{{{{ currentEachOutput(outputs['{split_id}']).uris }}}}",
                **self.model_dump(include=_SUBFLOW_PROPERTIES),
            }
        )
        if not self.wait:  # the children's outputs are not waited for: nothing to merge
            self._internal = [split, executable]
            return
        merge = ForEachItemMergeOutputs.model_validate(
            {
                "id": merge_id,
                "type": ForEachItemMergeOutputs.type_name,
                "outputs": (
                    f"{{{{ currentEachOutput(outputs['{items_id}'] ?? {{}}).outputs ?? [] }}}}"
                ),
            }
        )
        self._internal = [split, executable, merge]

    def branches(self) -> list[list[Task]]:
        return [self._internal]

    def plan(self, props: dict[str, Any]) -> ChildPlan:
        return ChildPlan(one_lane(self._internal))
