"""Loading the conformance corpus (Kestra's own test flows plus ``expected.json``).

The corpus lives outside the repository, in ``<repo>/../shared/conformance`` (overridable with the
environment variable ``KESTREAM_CONFORMANCE_DIR``). Its format is described in its ``README.md``.
A missing or empty corpus is an error, never an empty test run.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

ENV_VAR = "KESTREAM_CONFORMANCE_DIR"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DIR = REPO_ROOT.parent / "shared" / "conformance"

# A retry whose interval is at least this long makes a case wait on the wall clock.
SLOW_INTERVAL = timedelta(seconds=1)


class CorpusError(RuntimeError):
    """The corpus cannot be found or read."""


@dataclass(frozen=True)
class Entry:
    """One entry of ``expected.json``: one execution of a flow, and what to check."""

    index: int
    flow: str
    file: str
    inputs: dict[str, Any]
    inputs_validated: bool
    requires: tuple[str, ...]
    labels: dict[str, str] | None
    expect: dict[str, Any]
    phases: tuple[dict[str, Any], ...]
    children: tuple[dict[str, Any], ...]
    source: str
    root: Path = field(repr=False)
    #: Multi-execution steps (conformance-next's ``scenario``), run in order.
    scenario: tuple[dict[str, Any], ...] = ()

    @property
    def namespace(self) -> str:
        return self.flow.rsplit(".", 1)[0]

    @property
    def flow_id(self) -> str:
        return self.flow.rsplit(".", 1)[1]

    def flow_text(self) -> str:
        return read_text(self.root, self.file)

    def required_texts(self) -> list[str]:
        return [read_text(self.root, path) for path in self.requires]

    def case_id(self) -> str:
        """``"{index:03d}-{flow id}-{short inputs}"`` (no inputs suffix when there are none)."""
        base = f"{self.index:03d}-{self.flow_id}"
        short = short_inputs(self.inputs)
        return f"{base}-{short}" if short else base

    def needs_real_time(self) -> bool:
        """Whether this case waits on the wall clock (pause delay/timeout, retry >= 1s, Sleep)."""
        texts = [self.flow_text(), *self.required_texts()]
        return any(_flow_needs_real_time(yaml.safe_load(text)) for text in texts)


def corpus_dir() -> Path:
    """The corpus folder: ``$KESTREAM_CONFORMANCE_DIR`` or ``<repo>/../shared/conformance``."""
    configured = os.environ.get(ENV_VAR)
    return Path(configured).expanduser().resolve() if configured else DEFAULT_DIR


def load_entries(root: Path | None = None) -> list[Entry]:
    """Every entry of ``expected.json``, in file order. Raises :class:`CorpusError` loudly."""
    root = root or corpus_dir()
    expected = root / "expected.json"
    if not expected.is_file():
        raise CorpusError(
            f"conformance corpus not found: {expected} does not exist "
            f"(set {ENV_VAR} to the folder holding expected.json and flows/)"
        )
    try:
        raw = json.loads(expected.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CorpusError(f"cannot read {expected}: {exc}") from exc
    if not isinstance(raw, list) or not raw:
        raise CorpusError(f"{expected} holds no entries (expected a non-empty JSON list)")
    entries = [_entry(index, item, root) for index, item in enumerate(raw)]
    _check_files(entries)
    return entries


def read_text(root: Path, relative: str) -> str:
    path = root / relative
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CorpusError(f"cannot read corpus flow {path}: {exc}") from exc


def short_inputs(inputs: Mapping[str, Any], width: int = 24) -> str:
    """A compact, id-safe rendering of an inputs map: ``a=1,b='x'``."""
    parts = []
    for key, value in inputs.items():
        text = f"'{value}'" if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        text = re.sub(r"\s+", "_", text)
        if len(text) > width:
            text = text[: width - 1] + "~"
        parts.append(f"{key}={text}")
    return ",".join(parts)


def _entry(index: int, item: Any, root: Path) -> Entry:
    if not isinstance(item, dict):
        raise CorpusError(f"expected.json entry {index} is not an object")
    missing = {"flow", "file", "inputs", "expect", "source"} - item.keys()
    if missing:
        raise CorpusError(f"expected.json entry {index} lacks {sorted(missing)}")
    return Entry(
        index=index,
        flow=item["flow"],
        file=item["file"],
        inputs=dict(item["inputs"]),
        inputs_validated=bool(item.get("inputsValidated", True)),
        requires=tuple(item.get("requires", ())),
        labels=item.get("labels"),
        expect=dict(item["expect"]),
        phases=tuple(item.get("phases", ())),
        children=tuple(item.get("children", ())),
        source=item["source"],
        root=root,
        scenario=tuple(item.get("scenario", ())),
    )


def _check_files(entries: list[Entry]) -> None:
    for entry in entries:
        for relative in (entry.file, *entry.requires):
            if not (entry.root / relative).is_file():
                raise CorpusError(f"entry {entry.index} ({entry.flow}): missing file {relative}")


# --- real-time detection (informational `slow` marker) ---------------------------------------

_DURATION = re.compile(
    r"^P(?:(?P<d>\d+(?:\.\d+)?)D)?"
    r"(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$",
    re.IGNORECASE,
)


def parse_duration(text: str) -> timedelta | None:
    """An ISO-8601 duration like ``PT0.25S`` or ``P1DT2H``; ``None`` if it is not one."""
    match = _DURATION.match(text.strip())
    if not match or text.strip().upper() in {"P", "PT"}:
        return None
    part = {name: float(match.group(name) or 0) for name in "dhms"}
    return timedelta(days=part["d"], hours=part["h"], minutes=part["m"], seconds=part["s"])


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _at_least(value: Any, limit: timedelta) -> bool:
    duration = parse_duration(value) if isinstance(value, str) else None
    return duration is not None and duration >= limit


def _node_needs_real_time(node: dict[str, Any]) -> bool:
    task_type = str(node.get("type", ""))
    if task_type.endswith(".Sleep"):
        return True
    if task_type.endswith(".Pause") and ("delay" in node or "timeout" in node):
        return True
    retry = node.get("retry")
    if isinstance(retry, dict):
        intervals = (retry.get(key) for key in ("interval", "minInterval"))
        return any(_at_least(value, SLOW_INTERVAL) for value in intervals)
    return False


def _flow_needs_real_time(flow: Any) -> bool:
    # Static rule: a retry with an interval >= 1s marks the flow even if the retry never fires
    # (full.yaml declares one on a task that succeeds). The marker is informational only.
    return any(_node_needs_real_time(node) for node in _walk(flow))
