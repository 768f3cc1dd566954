"""Conformance suite setup.

The tests folder has no ``__init__.py`` files, so the helper modules of this folder
(``conformance_corpus``, ``conformance_checks``) are made importable here, whatever pytest's
import mode. Their names carry a ``conformance_`` prefix so they cannot shadow helpers of other
test folders, which share the same flat module namespace. (The repository root is on the path
through ``pythonpath`` in pyproject.toml.)
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
