"""Pins of the lowest versions pyproject.toml allows for kestream's own dependencies.

``scripts/test_lowest.sh`` installs kestream with these as pip constraints (the test extra at
its usual versions) and runs the unit tests, so a lower bound that the code has outgrown (a
pydantic feature, croniter's DST behaviour) fails there, not on a user's machine. Each
requirement must have a ``>=`` lower bound; one without is an error, since "any version" is a
bound nobody checked.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version


def lowest_pins(pyproject: Path) -> list[str]:
    """``name==lower[.*][; marker]`` for each of ``[project] dependencies``."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    pins = []
    for text in project["dependencies"]:
        requirement = Requirement(text)
        lower = [spec.version for spec in requirement.specifier if spec.operator == ">="]
        if len(lower) != 1:
            raise SystemExit(f"{requirement.name}: needs exactly one >= lower bound in {text!r}")
        marker = f"; {requirement.marker}" if requirement.marker else ""
        # ">=2.11" allows 2.11.0, which may never have been released (regex has 2024.4.16, no
        # 2024.4): a bound of fewer than three parts pins its series, the newest of it.
        series = ".*" if len(Version(lower[0]).release) < 3 else ""
        pins.append(f"{requirement.name}=={lower[0]}{series}{marker}")
    return pins


if __name__ == "__main__":
    root = Path(__file__).resolve().parent.parent
    sys.stdout.write("".join(f"{pin}\n" for pin in lowest_pins(root / "pyproject.toml")))
