"""The suite's own layout: test folders are not packages, so pytest imports each test module by
its file name, and two modules of one name stop the whole collection ("import file mismatch")."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_test_module_names_are_unique_across_the_suite() -> None:
    where: dict[str, list[str]] = defaultdict(list)
    for path in TESTS.rglob("*.py"):
        if "__pycache__" not in path.parts and path.name != "conftest.py":
            where[path.name].append(str(path.relative_to(TESTS)))
    repeated = {name: paths for name, paths in where.items() if len(paths) > 1}
    assert not repeated, f"rename one of each: {repeated}"
