"""Large values out of records, and expressions reading through the references left instead.

Writing: :func:`offload` takes a map (a task run's outputs, an execution's inputs) together with
the bytes its record form already has, so the threshold check is a length comparison on bytes
someone had to encode anyway (the size guard of :mod:`.sizes`): a map within
``KESTREAM_OUTPUT_INLINE_MAX_BYTES`` costs nothing more. A larger one has its largest entries
stored (one file each) until the rest fits, or the whole map when many small entries make it
large; each stored entry becomes a reference (:mod:`kestream.storage.offload`).

Reading: :func:`outputs_view` / :func:`inputs_view` wrap an execution's variables in a
:class:`~kestream.storage.offload.Resolving` view when it holds references, so templates (on the
executor and, for texts calling ``secret()``, on the worker) see values, never references. A
:class:`ReferenceLoader` fetches them through the execution's file access rule and keeps what it
read in a cache bounded in bytes. A stored value that is gone fails the render, naming whose
value it was and its URI.
"""

from __future__ import annotations

import dataclasses
import sys
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import orjson

from kestream.executor import events as ev
from kestream.executor.sizes import human_size, over_limit, record_json
from kestream.executor.value_tags import CodecError, decode_value, encode_value
from kestream.expressions import RenderError
from kestream.storage.access import ExecutionFiles, FileAccessError
from kestream.storage.backend import Storage
from kestream.storage.current import get_storage
from kestream.storage.keys import TaskRunFiles, execution_prefix, safe_file_name, to_uri
from kestream.storage.offload import (
    OUTPUTS_FOLDER,
    REF_KEY,
    Resolving,
    adopt_references,
    holds_references,
    is_reference,
    outputs_key,
    reference,
    run_nonce,
    store,
)

#: Entries at most this large are never offloaded on their own: their reference (a URI of
#: ~150 bytes and a size) would save nothing.
ENTRY_MIN_BYTES = 512
#: What the cache of loaded values may hold, in decoded bytes (:func:`decoded_size`).
CACHE_MAX_BYTES = 64 * 1024 * 1024
#: The largest stored value a render reads (the executor's step and the worker's ``secret()``
#: texts hold it whole in memory, on the thread that steps): a larger one fails the render.
#: Tasks that need more read the file itself (``read()``, a task's ``from``).
READ_MAX_BYTES = 16 * 1024 * 1024
#: The most the executor writes to the storage for one value while it steps (on its event loop:
#: outputs of tasks it runs inline, flow outputs, a child's outputs handed to its parent): the
#: same as a render may read back. A larger value fails where it is made, saying so; measured
#: stall per value in docs/storage.md.
STEP_STORE_MAX_BYTES = READ_MAX_BYTES
#: How many times its JSON a decoded map or list weighs in memory (an estimate: Python's
#: objects for small strings, numbers and containers take several times their text).
DECODED_FACTOR = 4

#: ``key_for(index, name)``: where the entry ``name`` (``index``-th offloaded) is stored;
#: ``key_for(None, "")``: where the whole map is.
KeyFor = Callable[[int | None, str], str]


def encoded(value: Any) -> bytes:
    """``value`` in its record form (the changelog codec's tags, as records are written)."""
    return record_json(encode_value(value))


def offload(
    values: dict[str, Any],
    size: int,
    threshold: int,
    key_for: KeyFor,
    storage: Storage | None = None,
    whole: bytes | None = None,
    *,
    entries_only: bool = False,
    whole_map: bool = False,
) -> dict[str, Any] | None:
    """``values`` with references in place of what was stored, or None when ``size`` (its
    encoded length, already known) is within ``threshold`` (0: offloading is off).

    ``whole``: ``values`` already encoded, stored as is when the whole map must go.
    ``entries_only``: never the whole map (an execution's ``inputs``, which templates read
    by name from the root), only its large entries. ``whole_map``: always the whole map, as
    one reference (outputs handed to a parent task run, which sit one level deeper than a
    task run's own and are read whole).
    """
    if threshold <= 0 or size <= threshold:
        return None
    store_in = storage or get_storage()
    if whole_map:
        data = whole if whole is not None else encoded(values)
        return store(store_in, key_for(None, ""), data)
    parts = {name: encoded(value) for name, value in values.items()}
    out = dict(values)
    left = size
    planned: list[tuple[str, str, bytes]] = []  # (name, key, data): decided before any write
    ranked = sorted(parts.items(), key=lambda item: len(item[1]), reverse=True)
    for index, (name, data) in enumerate(ranked):
        if left <= threshold or len(data) <= ENTRY_MIN_BYTES:
            break
        key = key_for(index, name)
        planned.append((name, key, data))
        left -= len(data) - len(encoded(reference(to_uri(key), len(data))))
    if left > threshold and not entries_only:  # the small entries alone keep it large
        data = whole if whole is not None else encoded(values)
        return store(store_in, key_for(None, ""), data)  # one write, no entry files
    for name, key, data in planned:
        out[name] = store(store_in, key, data)
    return out


def measured(outputs: dict[str, Any] | None) -> bytes | None:
    """``outputs`` in their record form, what :func:`fit_outputs` measures (None: no outputs,
    or not encodable)."""
    if outputs is None:
        return None
    try:
        return encoded(outputs)
    except (TypeError, ValueError):
        return None


def outputs_keys(files: TaskRunFiles, attempt: int) -> KeyFor:
    """Where an attempt's offloaded outputs go: its task run's folder (Kestra's layout), in a
    folder of this run's own (:func:`~kestream.storage.offload.run_nonce`)."""
    nonce = run_nonce()
    return lambda index, name: outputs_key(files, attempt, index, name, nonce)


def decoded_size(value: Any, stored: int) -> int:
    """What ``value`` (decoded from ``stored`` bytes of JSON) takes in memory, estimated."""
    if type(value) is str or type(value) is bytes:
        return sys.getsizeof(value)
    if type(value) is dict or type(value) is list:
        return stored * DECODED_FACTOR
    return stored


def fit_outputs(
    task_id: str,
    outputs: dict[str, Any] | None,
    max_bytes: int | None,
    threshold: int,
    keys: Callable[[], KeyFor],
    data: bytes | None = None,
    *,
    whole_map: bool = False,
    entries_only: bool = False,
    what: str | None = None,
    store_max: int | None = None,
) -> tuple[dict[str, Any] | None, str | None]:
    """A task run's outputs as they travel, and why they cannot (None when they can).

    One encoding measures them (the size guard's, which there was before offloading): within
    ``threshold`` they travel as they are; past it they are offloaded (:func:`offload`); what
    remains past ``max_bytes`` (:func:`.sizes.outputs_budget` of the record limit; None: no
    limit) fails the run with :func:`.sizes.over_limit`'s message, as does a storage that
    cannot take them. ``keys()``: where they go (:func:`outputs_keys`), asked only then.
    ``data``: ``outputs`` already encoded (:func:`measured`). ``whole_map``,
    ``entries_only``: see :func:`offload`. ``what``: how messages name them (by default
    ``outputs of task '{task_id}'``). Past ``threshold`` this writes to the storage: a caller
    on an event loop runs it in a thread, or bounds what it writes with ``store_max`` (the
    executor's step: :data:`STEP_STORE_MAX_BYTES`), past which they fail instead.
    """
    if outputs is None or (max_bytes is None and threshold <= 0):
        return outputs, None
    what = what or f"outputs of task '{task_id}'"
    if data is None:
        data = measured(outputs)
        if data is None:  # not encodable at all: the portability check says why
            return outputs, None
    size = len(data)
    if 0 < threshold < size:
        if store_max is not None and size > store_max:
            return outputs, (
                f"{what} are {human_size(size)}, more than the {human_size(store_max)} the "
                "executor stores while it steps: run the task on a worker, or write a file"
            )
        try:
            stored = offload(
                outputs, size, threshold, keys(), whole=data,
                entries_only=entries_only, whole_map=whole_map,
            )  # fmt: skip
        except Exception as exc:  # the storage's own errors (a disk, a network): say which
            return outputs, f"{what} could not be stored: {exc}"
        if stored is not None:
            outputs, size = stored, len(encoded(stored))
    if max_bytes is not None and size > max_bytes:
        return outputs, over_limit(what, size, max_bytes, plural=True, of="outputs")
    return outputs, None


class ReferenceLoader:
    """Loads referenced values for renders, keeping the most recent ones (bounded in bytes).

    Stored values never change once written (an attempt writes its own files; an input is
    written once), so a cached value stays right. The access rule is applied before the cache
    is asked: a reference is only read for an execution that may read its file.
    """

    def __init__(
        self, max_bytes: int = CACHE_MAX_BYTES, read_max_bytes: int = READ_MAX_BYTES
    ) -> None:
        self.max_bytes = max_bytes
        self.read_max_bytes = read_max_bytes
        self._cache: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self._held = 0
        #: Values read from the storage (not from the cache): what tests and metrics count.
        self.fetched = 0

    def load(
        self, ref: dict[str, Any], files: ExecutionFiles, what: str, storage: Storage | None = None
    ) -> Any:
        uri = ref[REF_KEY]
        try:
            key = files.key(uri)
        except FileAccessError as exc:
            raise RenderError(f"The value of {what} cannot be read from '{uri}': {exc}") from None
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit[0]
        store_in = storage or get_storage()
        try:
            size = store_in.size(key)
            if size > self.read_max_bytes:
                raise RenderError(
                    f"The value of {what} stored at '{uri}' is {size} bytes, more than the "
                    f"{self.read_max_bytes} an expression may read"
                )
            data = store_in.get(key)
        except FileNotFoundError:
            raise RenderError(
                f"The value of {what} is stored at '{uri}', which is missing from the "
                "internal storage"
            ) from None
        try:
            value = decode_value(orjson.loads(data))
        except (orjson.JSONDecodeError, CodecError) as exc:
            raise RenderError(
                f"The value of {what} stored at '{uri}' is unreadable: {exc}"
            ) from None
        self.fetched += 1
        self._keep(key, value, decoded_size(value, len(data)))
        return value

    def _keep(self, key: str, value: Any, size: int) -> None:
        if size > self.max_bytes:
            return
        self._cache[key] = (value, size)
        self._held += size
        while self._held > self.max_bytes:
            _, (_, dropped) = self._cache.popitem(last=False)
            self._held -= dropped

    def clear(self) -> None:
        self._cache.clear()
        self._held = 0


#: The process's loader: every executor step and worker render of the process shares it.
LOADER = ReferenceLoader()


def _reader(files: ExecutionFiles) -> Callable[[dict[str, Any], str], Any]:
    return lambda ref, what: LOADER.load(ref, files, what)


def outputs_view(outputs: dict[str, Any], files: ExecutionFiles) -> Resolving:
    """The ``outputs`` variable of an execution that holds references."""
    return Resolving(outputs, _reader(files), "task")


def inputs_view(inputs: dict[str, Any], files: ExecutionFiles) -> dict[str, Any] | Resolving:
    """The ``inputs`` variable: ``inputs`` itself, or a view when one of them is stored."""
    if not holds_references(inputs):
        return inputs
    return Resolving(inputs, _reader(files), "input")


def resolving_variables(variables: dict[str, Any], files: ExecutionFiles) -> dict[str, Any]:
    """A job's deferred variables (texts calling ``secret()``, rendered on the worker) with
    ``outputs``, ``inputs`` and ``parents`` read through references, as on the executor."""
    out = dict(variables)
    read = _reader(files)
    if isinstance(out.get("outputs"), dict):
        out["outputs"] = Resolving(out["outputs"], read, "task")
    if isinstance(out.get("inputs"), dict):
        out["inputs"] = Resolving(out["inputs"], read, "input")
    if isinstance(out.get("parents"), list):
        out["parents"] = [_parent_view(entry, read) for entry in out["parents"]]
    if "parent" in out:
        out["parent"] = _parent_view(out["parent"], read)
    return out


def _parent_view(entry: Any, read: Callable[[dict[str, Any], str], Any]) -> Any:
    if isinstance(entry, dict) and holds_references(entry.get("outputs")):
        return {**entry, "outputs": Resolving(entry["outputs"], read, "task", "a parent task")}
    return entry


def parent_outputs(outputs: dict[str, Any], files: ExecutionFiles) -> Any:
    """A parent task run's ``outputs`` in ``parents``: a view when it holds references."""
    if not holds_references(outputs):
        return outputs
    return Resolving(outputs, _reader(files), "task", "a parent task")


def adopted(event: ev.ExecutionCreated, storage: Storage | None = None) -> ev.ExecutionCreated:
    """``event`` (a creation) with the stored values and files it carries from the execution
    it comes from (a replay's replayed execution, a CREATE_NEW_EXECUTION retry's predecessor)
    copied into its own folder, and its references and ``kestra://`` URIs pointing at the
    copies: a FILE input's upload, the files of the task runs a replay keeps, offloaded
    values. The new execution may read them, and a purge of the old one leaves them. Only
    that execution's folder is copied from, in the same flow: a URI anywhere else stays as it
    is (the access rule judges it where it is read). Blocking: off the event loop."""
    source = event.parent_id if event.parent_id is not None else event.retry_of
    if source is None or source == event.execution_id:
        return event
    sources = (execution_prefix(event.namespace, event.flow_id, source),)
    target = execution_prefix(event.namespace, event.flow_id, event.execution_id)
    inputs = event.inputs
    if inputs:
        inputs = adopt_references(inputs, sources, target, storage)
    replay = event.replay
    if replay is not None:
        snapshot = adopt_references(replay.snapshot, sources, target, storage)
        replay = ev.ReplayFrom(snapshot, replay.task_run_id)
    if inputs is event.inputs and replay is event.replay:
        return event
    return dataclasses.replace(event, inputs=inputs, replay=replay)


# -- values the executor gathers itself ------------------------------------------------------


def flow_outputs_keys(namespace: str, flow_id: str, execution_id: str) -> KeyFor:
    """Where a flow's offloaded outputs go: the execution's folder, ``_outputs/flow/``, in a
    folder of this step's own (an execution that ends again after a restart never overwrites
    the values its earlier end refers to)."""
    folder = f"{execution_prefix(namespace, flow_id, execution_id)}{OUTPUTS_FOLDER}/flow/"
    nonce = run_nonce()
    return lambda index, name: (
        folder
        + (
            f"{nonce}/outputs.json"
            if index is None
            else f"{nonce}/{index}-{safe_file_name(name, 'value')}.json"
        )
    )


def flow_outputs_view(outputs: dict[str, Any], files: ExecutionFiles) -> dict[str, Any] | Resolving:
    """``execution.outputs`` (what ``afterExecution`` tasks read): a view when one is stored."""
    if not holds_references(outputs):
        return outputs
    return Resolving(outputs, _reader(files), "flow output")


def parent_task_run_files(trigger: Any, task_run_id: str) -> TaskRunFiles | None:
    """The folder of the parent task run that started an execution (a Subflow's, a ForEachItem
    batch's), from the execution's ``trigger`` (its ``id`` the parent's task, its variables the
    parent execution); None when the trigger does not name one."""
    if not isinstance(trigger, dict):
        return None
    variables, task_id = trigger.get("variables"), trigger.get("id")
    if not isinstance(variables, dict) or not isinstance(task_id, str):
        return None
    ids = (variables.get("namespace"), variables.get("flowId"), variables.get("executionId"))
    if not all(isinstance(part, str) for part in ids):
        return None
    return TaskRunFiles(str(ids[0]), str(ids[1]), str(ids[2]), task_id, task_run_id)


def outputs_for_parent(
    outputs: dict[str, Any] | None,
    parent: TaskRunFiles | None,
    attempt: int,
    threshold: int,
    max_bytes: int | None,
) -> tuple[dict[str, Any] | None, str | None]:
    """A child execution's outputs (its flow outputs, or the ``outputs`` its Subflow task
    renders) as they travel to the parent task run waiting for them, and why they cannot (None
    when they can).

    Past ``threshold`` they are stored as one file in the *parent* task run's folder
    (``parent``, :func:`parent_task_run_files`), never the child's: the parent reads them under
    its own access rule, and a purge of the child leaves them (a purge of the parent removes
    them). They become one reference, which the parent keeps as its task run's ``outputs``
    entry (``outputs.sub.outputs`` reads the map, ``outputs.sub.outputs.x`` an entry of it).
    ``outputs`` must hold values, not references (a reference into the child's folder would
    break with the child). Called in the child's step: writes at most
    :data:`STEP_STORE_MAX_BYTES`, larger outputs fail the hand-over.
    """
    what = "the subflow's outputs"
    if parent is None:  # no parent task run named: only the record's size rule applies
        return fit_outputs("", outputs, max_bytes, 0, _no_keys, what=what)
    return fit_outputs(
        parent.task_id, outputs, max_bytes, threshold, lambda: outputs_keys(parent, attempt),
        whole_map=True, what=what, store_max=STEP_STORE_MAX_BYTES,
    )  # fmt: skip


def _no_keys() -> KeyFor:
    """Where nothing is offloaded (a threshold of 0): never asked."""
    raise AssertionError("nothing is offloaded with a threshold of 0")


def loaded_values(values: dict[str, Any], files: ExecutionFiles, what: str) -> dict[str, Any]:
    """``values`` with its entries that are references read (bounded like any render's read):
    values stored in an execution's own folder, to hand on to another one."""
    if not holds_references(values):
        return values
    view = Resolving(values, _reader(files), what)
    return {name: view[name] if is_reference(values[name]) else values[name] for name in values}


def gathered(
    items: list[Any],
    threshold: int,
    key: Callable[[], str],
    storage: Storage | None = None,
    *,
    size: int | None = None,
) -> list[Any]:
    """A list the executor grows one entry per event (a ForEachItem's children's outputs),
    kept within ``threshold``: once its record form is past it, the whole list (a reference to
    the previous spill first, when there was one) is stored as one file at ``key()`` and the
    list becomes that one reference. Each entry is written once or twice and each write is at
    most ``threshold`` plus one entry, so n entries cost O(n) bytes of storage, not O(n^2);
    :func:`kestream.storage.offload.expand_gathered` reads the list back in order. ``size``:
    the list's record size when the caller keeps it up to date (the list is then encoded only
    when it spills)."""
    if threshold <= 0:
        return items
    if size is not None and size <= threshold:
        return items
    data = encoded(items)
    if len(data) <= threshold:
        return items
    return [store(storage or get_storage(), key(), data)]
