"""What an idle process holds in memory: libraries only some work needs are imported when that
work first comes, not when the process starts (the idle RSS of ``kestream standalone``).

Each check imports in a fresh interpreter, so what other tests imported does not count.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

#: The engine, and what only the role processes use: about 20 MB of a process's resident memory.
_ENGINE = (
    "kestream.executor.codec",
    "kestream.models.flow",
    "kestream.expressions",
    "kestream.runtime.records",
    "aiohttp",
    "prometheus_client",
)


def _loaded_after(imports: str, modules: tuple[str, ...]) -> list[str]:
    code = f"import sys; {imports};print(','.join(m for m in {modules!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return [name for name in result.stdout.strip().split(",") if name]


@pytest.mark.parametrize(
    ("imports", "deferred"),
    [
        # every role imports the secrets module; only SECRET inputs need AES (6 MB)
        ("import kestream.secrets.encryption", ("cryptography",)),
        # every role imports the storage package; only files need obstore's Rust store (4 MB)
        ("import kestream.storage, kestream.storage.offload", ("obstore",)),
        # the supervisor reads topic names; the record limit brings the engine's codec (5 MB)
        ("import kestream.runtime.supervisor", ("kestream.executor.codec", "obstore")),
        # the supervisor reads member records; the other records' codec is the engine's
        ("import kestream.runtime.members", _ENGINE),
    ],
)
def test_an_idle_process_does_not_import_what_only_some_work_needs(
    imports: str, deferred: tuple[str, ...]
) -> None:
    assert _loaded_after(imports, deferred) == []


def test_the_deferred_libraries_come_with_their_first_use() -> None:
    code = (
        "from pathlib import Path; import tempfile;"
        "from kestream.secrets.encryption import seal, unseal;"
        "token = seal('v', 'ns/flow', key='k' * 32);"
        "assert unseal(token, 'ns/flow', key='k' * 32) == 'v';"
        "from kestream.storage.backend import Storage;"
        "store = Storage.local(Path(tempfile.mkdtemp()));"
        "store.put('ns/f/x', b'data'); assert store.get('ns/f/x') == b'data'"
    )
    loaded = _loaded_after(code, ("cryptography", "obstore"))
    assert loaded == ["cryptography", "obstore"]


def test_the_supervisor_follows_the_members_topic_without_the_engine(tmp_path: Path) -> None:
    """standalone's supervisor reads the members topic to kill hung children: it reaches the
    broker and reads member records, and never imports the engine that its children run (the
    broker's answers are stubbed: what is checked is what the watch imports)."""
    code = f"""
import asyncio, sys
from kestream.runtime import context, members, supervisor
from kestream.runtime.topics import Topics
from kestream.runtime.tansu_compat import BrokerTraits
from kestream.runtime.embedded_broker import EMBEDDED_CLUSTER_ID
from kestream.runtime.record_limit import RecordLimit
from kestream.settings import Settings

async def probe(address, settings):
    return BrokerTraits("tansu", EMBEDDED_CLUSTER_ID, idempotent_producer=False)

async def ensure(settings, address, kind):
    return Topics.of(settings), RecordLimit.of(settings)

async def start(self, ctx=None):
    pass

context.probe_broker, context.ensure_topics, members.MemberBoard.start = probe, ensure, start
sup = supervisor.Supervisor(Settings(data_dir={str(tmp_path)!r}), None)
asyncio.run(sup._follow_members("127.0.0.1:1"))
assert sup._members is not None, "no board"
print(",".join(m for m in {_ENGINE!r} if m in sys.modules))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_an_executor_process_imports_neither_the_worker_nor_the_api_index() -> None:
    """A process that hosts an executor alone (standalone's second) starts its processor
    without the worker's modules (and the scheduler's engine under them), and its ops routes'
    guard without the API's index (its store, SQLite). Its processor is stubbed: what is
    checked is what its start imports."""
    code = """
import asyncio, sys
from kestream.runtime import executor_service, faust_app, local_handoff

class Stub:
    def __init__(self, *args, **kwargs):
        pass

    async def start(self):
        pass

executor_service.ExecutorService = Stub
local_handoff.connect = lambda ctx, role, processor: None
faust_app.preload(("executor",))
asyncio.run(faust_app._start_processor("executor", None, None, None, None))
found = ("kestream.runtime.worker_service", "kestream.scheduler", "kestream.api.index", "sqlite3")
print(",".join(m for m in found if m in sys.modules))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
