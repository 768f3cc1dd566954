"""Role processes are non-dumpable, so a script (same user, a child of the worker) cannot read
their initial environment, where the operator's secrets may be (``/proc/<pid>/environ``).

Each check runs in a fresh interpreter: the mark would otherwise stay on the test process. The
kernel's refusal itself only shows for a non-root user (root reads every process's environment);
as root, what is checked is that the helper sets the flag the kernel's check reads.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")


def _python(code: str, **env: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **env},
        timeout=60,
    )
    return done.stdout.strip()


def test_the_helper_marks_the_process_non_dumpable() -> None:
    code = (
        "from kestream.runtime.secrecy import is_dumpable, make_non_dumpable\n"
        "before = is_dumpable()\n"
        "print(before, make_non_dumpable(), is_dumpable())\n"
    )
    assert _python(code) == "True True False"


def test_a_forked_child_stays_non_dumpable_and_an_exec_does_not() -> None:
    """The worker's pool children (forked) keep the mark; a script (exec'd) does not carry it
    into its own process, which holds nothing of the worker's."""
    code = (
        "import os, subprocess, sys\n"
        "from kestream.runtime.secrecy import is_dumpable, make_non_dumpable\n"
        "make_non_dumpable()\n"
        "r, w = os.pipe()\n"
        "if os.fork() == 0:\n"
        "    os.write(w, str(is_dumpable()).encode()); os._exit(0)\n"
        "os.wait()\n"
        "exec_child = subprocess.run([sys.executable, '-c', "
        "'from kestream.runtime.secrecy import is_dumpable; print(is_dumpable())'], "
        "capture_output=True, text=True, check=True).stdout.strip()\n"
        "print(os.read(r, 10).decode(), exec_child)\n"
    )
    assert _python(code) == "False True"


#: The helper's own file, loaded by path: the probe may run under an interpreter without
#: kestream's dependencies (the system Python, when the test runs as root; see below).
SECRECY = Path(__file__).resolve().parents[3] / "kestream" / "runtime" / "secrecy.py"
NOBODY = 65534


def _as_a_plain_user() -> dict[str, object]:
    """How to run the probe as a non-root user: root reads every process's environment, so as
    root the probe runs as ``nobody`` under an interpreter that user can execute."""
    if os.geteuid() != 0:
        return {"executable": sys.executable}
    candidates = [sys.executable, "/usr/bin/python3", "/bin/python3"]
    for path in candidates:
        try:
            probe = subprocess.run(
                [path, "-c", "print('ok')"],
                user=NOBODY,
                group=NOBODY,
                capture_output=True,
                text=True,
                cwd="/",
            )
        except OSError:  # not executable by that user (under /root, for instance)
            continue
        if probe.stdout.strip() == "ok":
            return {"executable": path, "user": NOBODY, "group": NOBODY}
    raise AssertionError(f"no Python that user {NOBODY} can run among {candidates}")


def test_a_child_cannot_read_a_non_dumpable_parents_environment() -> None:
    how = _as_a_plain_user()
    # A copy that user can read, wherever the checkout is (a folder under /root is not).
    shared = Path(tempfile.mkdtemp(prefix="kestream-secrecy-"))
    shared.chmod(0o755)
    helper = shared / "secrecy.py"
    helper.write_text(SECRECY.read_text())
    helper.chmod(0o644)
    code = (
        "import importlib.util, os, subprocess, sys\n"
        f"spec = importlib.util.spec_from_file_location('secrecy', {str(helper)!r})\n"
        "secrecy = importlib.util.module_from_spec(spec); spec.loader.exec_module(secrecy)\n"
        "def child():\n"
        "    probe = \"import os; open(f'/proc/{os.getppid()}/environ', 'rb').read(); \"\n"
        "    probe += \"print('read')\"\n"
        "    r = subprocess.run([sys.executable, '-c', probe], capture_output=True, text=True)\n"
        "    return r.stdout.strip() or r.stderr.strip().splitlines()[-1].split(':')[0]\n"
        "before = child()\n"
        "secrecy.make_non_dumpable()\n"
        "print(before, child())\n"
    )
    executable = str(how.pop("executable"))
    try:
        done = subprocess.run(
            [executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"KESTREAM_API_PASSWORD": "probe", "PATH": os.environ.get("PATH", "")},
            timeout=60,
            cwd="/",
            **how,  # type: ignore[arg-type]
        )
    finally:
        shutil.rmtree(shared, ignore_errors=True)
    assert done.stdout.strip() == "read PermissionError"
