"""Conformance suite setup.

The tests folder has no ``__init__.py`` files, so the helper modules of this folder
(``conformance_corpus``, ``conformance_checks``) are made importable here, whatever pytest's
import mode. Their names carry a ``conformance_`` prefix so they cannot shadow helpers of other
test folders, which share the same flat module namespace. The repository root is added too, so a
plain ``pytest`` (not only ``python -m pytest``) imports the working tree's ``kestream`` even when
the package is not installed in the environment.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
for _path in (str(_HERE.parents[1]), str(_HERE)):
    if _path not in sys.path:
        sys.path.insert(0, _path)
