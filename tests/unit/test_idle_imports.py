"""What an idle process holds in memory: libraries only some work needs are imported when that
work first comes, not when the process starts (the idle RSS of ``kestream standalone``).

Each check imports in a fresh interpreter, so what other tests imported does not count.
"""

from __future__ import annotations

import subprocess
import sys

import pytest


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
