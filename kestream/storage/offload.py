"""Values too large to travel in a record, kept in the internal storage and referenced.

A task run's outputs, an execution's inputs and a restart's snapshot travel inside Kafka
records, which have a size limit, and every record that repeats them pays for their bytes. Past
``KESTREAM_OUTPUT_INLINE_MAX_BYTES`` such a value is written to the internal storage, in the
folder of the execution it belongs to, and a *reference* stands where it was::

    {"@ref": "kestra:///company/team/flow/executions/ID/tasks/t/RUN/_outputs/1/0-body.json",
     "size": 1834522}

The reference is plain data (the execution JSON the API serves shows it as is); expressions read
through it (:class:`Resolving`), so ``outputs.t.body`` is the value whatever its size. The files
live under the execution's folder, so deleting or purging the execution removes them with its
other files.

Only a map of exactly these two keys, whose ``@ref`` is a ``kestra://`` URI, is a reference. A
task could output such a map itself; reading through it then reaches only what the execution
may read anyway (the caller checks the path with :class:`~kestream.storage.access.ExecutionFiles`).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import orjson

from kestream.storage.backend import Storage
from kestream.storage.current import get_storage
from kestream.storage.keys import (
    URI_PREFIX,
    StorageUriError,
    TaskRunFiles,
    execution_prefix,
    input_key,
    parse_uri,
    safe_file_name,
    to_uri,
)

REF_KEY = "@ref"
SIZE_KEY = "size"
#: Folder of a task run's offloaded outputs (inside the task run's own folder).
OUTPUTS_FOLDER = "_outputs"
#: Folder of an execution's stored snapshots (restarts, replays), inside its own folder.
SNAPSHOTS_FOLDER = "_snapshots"
#: The file name of an offloaded input's value (inside the input's folder).
INPUT_VALUE_NAME = "_value.json"
#: Folder of stored plans (the lanes a flowable planned: a ForEach's values), inside the folder
#: of the task run that planned them (or the execution's, for its own lanes).
PLANS_FOLDER = "_plan"


def reference(uri: str, size: int) -> dict[str, Any]:
    """The small map that stands for a stored value of ``size`` bytes at ``uri``."""
    return {REF_KEY: uri, SIZE_KEY: size}


def is_reference(value: Any) -> bool:
    """Whether ``value`` is a reference (see the module doc)."""
    return (
        type(value) is dict
        and len(value) == 2
        and type(value.get(REF_KEY)) is str
        and value[REF_KEY].startswith(URI_PREFIX)
        and type(value.get(SIZE_KEY)) is int
    )


def holds_references(value: Any) -> bool:
    """Whether ``value`` (a task run's outputs, an execution's inputs) is a reference or has
    one as an entry: where offloading puts them. O(entries), no deeper."""
    if type(value) is not dict:
        return False
    if REF_KEY in value and is_reference(value):
        return True
    for entry in value.values():  # noqa: SIM110 (a loop, not any(): runs for every result)
        if type(entry) is dict and REF_KEY in entry:
            return True
    return False


def run_nonce() -> str:
    """A folder name of its own for one run of a job: a job run twice (redelivered, run again
    after a rebalance) never overwrites the objects the result applied first refers to."""
    return secrets.token_hex(6)


def outputs_key(
    files: TaskRunFiles, attempt: int, index: int | None, name: str = "", nonce: str = ""
) -> str:
    """Where one offloaded output of an attempt goes (``index``: its rank among the entries
    offloaded, so two names that slug alike never share a file), or the whole map (None);
    ``nonce``: the run's own folder (:func:`run_nonce`)."""
    leaf = "outputs.json" if index is None else f"{index}-{safe_file_name(name, 'value')}.json"
    folder = f"{OUTPUTS_FOLDER}/{attempt}/" + (f"{nonce}/" if nonce else "")
    return files.key(folder + leaf)


def input_value_key(namespace: str, flow_id: str, execution_id: str, input_id: str) -> str:
    """Where an offloaded input's value goes (Kestra's folder for that input)."""
    return input_key(namespace, flow_id, execution_id, input_id, INPUT_VALUE_NAME)


def snapshot_key(namespace: str, flow_id: str, execution_id: str, name: str) -> str:
    """Where a stored snapshot of the execution ``execution_id`` goes (``name``: a file name)."""
    folder = execution_prefix(namespace, flow_id, execution_id)
    return f"{folder}{SNAPSHOTS_FOLDER}/{safe_file_name(name)}"


def plan_key(folder: str, attempt: int, nonce: str) -> str:
    """Where a plan made by attempt ``attempt`` of a task run (``folder``: its folder, or the
    execution's for its own lanes) is stored; ``nonce``: the step's own name for it."""
    return f"{folder}{PLANS_FOLDER}/{attempt}/{safe_file_name(nonce)}.json"


def store(storage: Storage, key: str, data: bytes) -> dict[str, Any]:
    """Write ``data`` (already encoded) under ``key``; the reference to it."""
    storage.put(key, data)
    return reference(to_uri(key), len(data))


class SnapshotError(ValueError):
    """A stored snapshot named by a record that cannot be read (the record is refused)."""


class StorageUnavailable(RuntimeError):
    """The storage failed for a reason other than a missing file (a network error, a 5xx, a
    timeout): what it was asked may well succeed later, so the caller retries (not a
    ValueError: a record that hits it is not malformed)."""


def fetch_snapshot(
    uri: Any, execution_id: str, storage: Storage | None = None, *, snapshot_of: str | None = None
) -> dict[str, Any]:
    """The execution JSON a restart or replay record names by ``uri`` instead of carrying it.

    Only a file in the snapshots folder of the execution ``execution_id`` is read: a record
    cannot make the executor read anything else; ``snapshot_of``: the id the snapshot must
    have (a restart's own execution). A missing or malformed snapshot is a
    :class:`SnapshotError` (the record is refused), any other storage error
    :class:`StorageUnavailable` (the record is tried again). Blocking: off the event loop.
    """
    try:
        key = parse_uri(uri)
    except StorageUriError as exc:
        raise SnapshotError(f"the snapshot's URI is not valid: {exc}") from None
    if f"/executions/{execution_id}/{SNAPSHOTS_FOLDER}/" not in f"/{key}":
        raise SnapshotError(f"'{uri}' is not a snapshot of execution {execution_id}")
    data = _read(storage or get_storage(), key, f"the snapshot '{uri}'")
    try:
        snapshot = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise SnapshotError(f"the snapshot '{uri}' is not JSON: {exc}") from None
    if not isinstance(snapshot, dict):
        raise SnapshotError(f"the snapshot '{uri}' is not an execution JSON object")
    if snapshot_of is not None and snapshot.get("id") != snapshot_of:
        raise SnapshotError(f"the snapshot '{uri}' is not one of execution {snapshot_of}")
    return snapshot


def fetch_plan(ref: Any, execution_id: str, storage: Storage | None = None) -> dict[str, Any]:
    """The plan record a changelog plan record names by ``ref`` (``{"lanes": ..., "deps": ...}``).

    Only a file in a plans folder of the execution ``execution_id`` is read. A missing or
    malformed plan is a :class:`SnapshotError`, any other storage error a
    :class:`StorageUnavailable` (read once: the caller decides whether, and how, to try
    again). Blocking: off the event loop.
    """
    if not is_reference(ref):
        raise SnapshotError(f"the stored plan {ref!r} is not a reference")
    uri = ref[REF_KEY]
    try:
        key = parse_uri(uri)
    except StorageUriError as exc:
        raise SnapshotError(f"the stored plan's URI is not valid: {exc}") from None
    if f"/executions/{execution_id}/" not in f"/{key}" or f"/{PLANS_FOLDER}/" not in key:
        raise SnapshotError(f"'{uri}' is not a stored plan of execution {execution_id}")
    data = _read(storage or get_storage(), key, f"the stored plan '{uri}'")
    try:
        plan = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise SnapshotError(f"the stored plan '{uri}' is not JSON: {exc}") from None
    if not isinstance(plan, dict) or not isinstance(plan.get("lanes"), list):
        raise SnapshotError(f"the stored plan '{uri}' holds no lanes")
    return plan


def _read(store_in: Storage, key: str, what: str) -> bytes:
    """``key``'s bytes: a missing file is a :class:`SnapshotError` (the record naming it is
    bad), any other error a :class:`StorageUnavailable` (a network, a 5xx, a timeout)."""
    try:
        return store_in.get(key)
    except FileNotFoundError:
        raise SnapshotError(f"{what} is missing from the internal storage") from None
    except Exception as exc:  # the store's own errors
        raise StorageUnavailable(f"{what} cannot be read now: {exc!r}") from exc


def adopt_references(
    value: Any, sources: tuple[str, ...], target: str, storage: Storage | None = None
) -> Any:
    """``value`` (JSON data: an execution's inputs, a snapshot) with every reference and
    every ``kestra://`` URI into one of the folders ``sources`` copied into the folder
    ``target`` (same path below it) and pointing there; anything else as is.

    A replay or a retry that creates a new execution carries values stored in the folder of
    the execution it comes from (references to offloaded values) and files of it (a FILE
    input's upload, the files its task runs wrote, named by URI wherever they sit: an
    ``outputFiles`` map, a list, a stored value's entries), which its own access rule refuses
    and which a purge of that execution removes: its copies are its own. The copies' keys
    depend only on the source's, and a copy already there is kept, so running this again (a
    record read again) writes the same keys. Files are copied without being held in memory
    (:meth:`~kestream.storage.backend.Storage.copy`). A copy whose source is gone is left to
    fail where it is read (the value points at the missing copy and says so). Storage errors
    other than a missing file raise :class:`StorageUnavailable`. Blocking: call it off the
    event loop.
    """
    adopt = _Adoption(sources, target, storage or get_storage())
    return adopt.rewritten(value, adopt.reference)


class _Adoption:
    """One adoption's copies: what was copied already (each source copied once) and where."""

    def __init__(self, sources: tuple[str, ...], target: str, store: Storage) -> None:
        self.sources, self.target, self.store = sources, target, store
        self.files: dict[str, str] = {}  # source key -> the URI of its copy
        #: How a stored value naming a file of a source shows it, looked for before parsing.
        self.marks = (_REF_MARK, *(orjson.dumps(to_uri(prefix))[:-1] for prefix in sources))

    def reference(self, ref: dict[str, Any]) -> Any:
        return _adopted(ref, self)

    def file(self, uri: str) -> str:
        """The URI of the copy of the file ``uri`` names (made if it is not there yet), or
        ``uri`` itself when it lies outside the sources."""
        try:
            key = parse_uri(uri)
        except StorageUriError:
            return uri
        if not key.startswith(self.sources):
            return uri
        copied = self.files.get(key)
        if copied is None:
            copy = _copy_key(key, self.sources, self.target)
            try:
                if not self.store.exists(copy):
                    self.store.copy(key, copy)
            except FileNotFoundError:
                pass  # gone: the URI names the missing copy, to fail where it is read
            except Exception as exc:
                raise StorageUnavailable(f"'{uri}' cannot be copied now: {exc!r}") from exc
            copied = self.files[key] = to_uri(copy)
        return copied

    def rewritten(self, value: Any, reference: Callable[[dict[str, Any]], Any]) -> Any:
        """``value`` with each reference replaced by ``reference(it)`` and each URI by
        :meth:`file`'s."""
        if type(value) is dict:
            if is_reference(value):
                return reference(value)
            return {key: self.rewritten(entry, reference) for key, entry in value.items()}
        if type(value) is list:
            return [self.rewritten(entry, reference) for entry in value]
        if type(value) is str and value.startswith(URI_PREFIX):
            return self.file(value)
        return value


def _adopted(ref: dict[str, Any], adopt: _Adoption) -> Any:
    """The reference to ``ref``'s copy in ``target`` (made if it is not there yet), or ``ref``
    itself when it points outside ``sources``.

    A stored value may hold references itself: a spill of a ForEachItem's gathered list starts
    with one to the spill before it and holds those to children's outputs stored alone. Such a
    copy has them rewritten to point at copies of their own (made first), so the new execution
    reads only its own folder and a purge of the old one breaks nothing. Spills chain one
    behind the other: the files are walked with a stack of their own, never with recursion.
    The URIs of files inside a copied value are copied too (:meth:`_Adoption.file`)."""
    sources, target, store = adopt.sources, adopt.target, adopt.store
    root = _source_key(ref, sources)
    if root is None:
        return ref
    copies: dict[str, dict[str, Any]] = {}  # source key -> the reference to its copy
    # (source key, its reference's size, the value read when it holds references, else _UNREAD)
    pending: list[tuple[str, int, Any]] = [(root, ref[SIZE_KEY], _UNREAD)]
    walking = {root}
    while pending:
        key, size, value = pending[-1]
        copy = _copy_key(key, sources, target)
        if value is _UNREAD:
            value = _copied_or_read(key, copy, size, store, copies, adopt.marks)
            if value is _UNREAD:  # copied as it is (or its copy already there, or gone)
                pending.pop()
                walking.discard(key)
                continue
            nested: dict[str, int] = {}
            for node in _references(value):
                inner = _source_key(node, sources)
                # a key on the stack already is a cycle (a malformed value): its reference stays
                if inner is not None and inner not in copies and inner not in walking:
                    nested[inner] = node[SIZE_KEY]
            pending[-1] = (key, size, value)
            if nested:
                pending.extend((inner, inner_size, _UNREAD) for inner, inner_size in nested.items())
                walking.update(nested)
                continue
        data = orjson.dumps(adopt.rewritten(value, lambda node: _copied(node, copies)))
        _put_copy(store, copy, data, key)
        copies[key] = reference(to_uri(copy), len(data))
        pending.pop()
        walking.discard(key)
    return copies[root]


#: A value not read yet (JSON has no such value: ``None`` is ``null``).
_UNREAD: Any = object()
#: How a stored value that holds references shows it, cheaply looked for before parsing.
_REF_MARK = orjson.dumps(REF_KEY)


def _source_key(ref: dict[str, Any], sources: tuple[str, ...]) -> str | None:
    """``ref``'s key when it lies in one of the folders ``sources``; else None."""
    try:
        key = parse_uri(ref[REF_KEY])
    except StorageUriError:
        return None
    return key if any(key.startswith(prefix) for prefix in sources) else None


def _copy_key(key: str, sources: tuple[str, ...], target: str) -> str:
    source = next(prefix for prefix in sources if key.startswith(prefix))
    return target + key[len(source) :]


def _copied_or_read(
    key: str,
    copy: str,
    size: int,
    store: Storage,
    copies: dict[str, dict[str, Any]],
    marks: tuple[bytes, ...],
) -> Any:
    """Copy ``key`` to ``copy`` as it is and note the copy's reference in ``copies``, unless it
    holds references or URIs of the sources' files (one of ``marks``): then its value, to
    rewrite (:data:`_UNREAD` otherwise). A copy already
    there is kept (its nested copies were made before it); a source that is gone leaves the
    reference pointing at the missing copy, to fail where it is read."""
    try:
        if store.exists(copy):
            copies[key] = reference(to_uri(copy), store.size(copy))
            return _UNREAD
        data = store.get(key)
    except FileNotFoundError:
        copies[key] = reference(to_uri(copy), size)
        return _UNREAD
    except Exception as exc:
        raise StorageUnavailable(f"'{to_uri(key)}' cannot be copied now: {exc!r}") from exc
    if any(mark in data for mark in marks):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass  # not a stored value (a file a reference-shaped output names): copied as is
    _put_copy(store, copy, data, key)
    copies[key] = reference(to_uri(copy), len(data))
    return _UNREAD


def _put_copy(store: Storage, copy: str, data: bytes, key: str) -> None:
    try:
        store.put(copy, data)
    except Exception as exc:
        raise StorageUnavailable(f"'{to_uri(key)}' cannot be copied now: {exc!r}") from exc


def _references(value: Any) -> Iterator[dict[str, Any]]:
    """Every reference inside ``value`` (JSON data), depth first."""
    stack = [value]
    while stack:
        node = stack.pop()
        if type(node) is dict:
            if is_reference(node):
                yield node
            else:
                stack.extend(node.values())
        elif type(node) is list:
            stack.extend(node)


def _copied(ref: dict[str, Any], copies: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The reference to ``ref``'s copy in ``copies``, or ``ref`` when it has none."""
    try:
        return copies.get(parse_uri(ref[REF_KEY]), ref)
    except StorageUriError:
        return ref


class Resolving(Mapping[str, Any]):
    """A read-only view of a map whose entries may be references, resolved when read.

    Expressions read ``outputs``/``inputs`` through it in the executions that hold references:
    ``view[key]`` is the value itself (``load(reference, what)`` fetches it; ``what`` names
    whose value it is for an error, "task 'fetch'"), a nested map is another view, anything else
    is returned as is. Iterating, ``len`` and ``in`` never load anything. ``raw`` is the map
    itself, references included: what must travel on (a job's variables) travels in that form.
    """

    __slots__ = ("_kind", "_load", "_what", "raw")

    def __init__(
        self,
        raw: dict[str, Any],
        load: Callable[[dict[str, Any], str], Any],
        kind: str,
        what: str | None = None,
    ) -> None:
        self.raw = raw
        self._load = load
        self._kind = kind
        self._what = what

    def __getitem__(self, key: str) -> Any:
        value = self.raw[key]
        if type(value) is not dict:
            return value
        what = self._what or f"{self._kind} '{key}'"
        if is_reference(value):
            return self._load(value, what)
        return Resolving(value, self._load, self._kind, what)

    def __iter__(self) -> Iterator[str]:
        return iter(self.raw)

    def __len__(self) -> int:
        return len(self.raw)

    def __contains__(self, key: object) -> bool:
        return key in self.raw

    def __repr__(self) -> str:
        return f"Resolving({self.raw!r})"


def unwrap(value: Any) -> Any:
    """``value`` as data: a :class:`Resolving` view's map (references included), else itself."""
    return value.raw if isinstance(value, Resolving) else value


def as_data(value: Any) -> Any:
    """A template variable as data that can travel (a job's variables): views unwrapped where
    contexts put them, ``outputs``/``inputs`` themselves and a ``parent``'s (or each of the
    ``parents``') ``outputs``; anything else as is."""
    if isinstance(value, Resolving):
        return value.raw
    if type(value) is dict and isinstance(value.get("outputs"), Resolving):
        return {**value, "outputs": value["outputs"].raw}
    if type(value) is list and any(type(v) is dict and "outputs" in v for v in value):
        return [as_data(entry) for entry in value]
    return value


def expand_gathered(items: list[Any], load: Callable[[dict[str, Any]], Any]) -> list[Any]:
    """The entries of a list the executor gathered (``kestream.executor.references.gathered``),
    in order: a reference whose value is a list is an earlier spill, read in its place (its own
    first entry may be the spill before it); a reference to anything else is one entry stored
    alone (a child's outputs past the threshold), read too. ``load(reference)``: the value.
    Iterative, so a long chain of spills needs no deep recursion; a spill named twice (a list
    no executor gathers: a child's outputs shaped as a reference to a spill) is a ValueError,
    not an endless read."""
    out: list[Any] = []
    pending: list[tuple[list[Any], int]] = [(items, 0)]
    spills: set[str] = set()
    while pending:
        entries, index = pending.pop()
        while index < len(entries):
            entry = entries[index]
            index += 1
            value = load(entry) if is_reference(entry) else entry
            if is_reference(entry) and type(value) is list:
                if entry[REF_KEY] in spills:
                    raise ValueError(f"the spill '{entry[REF_KEY]}' is named twice")
                spills.add(entry[REF_KEY])
                pending.append((entries, index))
                entries, index = value, 0
                continue
            out.append(value)
    return out
