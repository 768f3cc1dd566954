#!/usr/bin/env bash
# The unit tests against the lowest versions pyproject.toml allows (scripts/lowest_versions.py):
# a fresh venv in a temporary directory, kestream installed with those pins as constraints.
# Usage: scripts/test_lowest.sh [pytest arguments] (default: tests/unit).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="$(mktemp -d)/venv"
trap 'rm -rf "$(dirname "$venv")"' EXIT
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip packaging
"$venv/bin/python" scripts/lowest_versions.py > "$(dirname "$venv")/constraints.txt"
cat "$(dirname "$venv")/constraints.txt"
"$venv/bin/python" -m pip install -q -c "$(dirname "$venv")/constraints.txt" -e '.[test]'
"$venv/bin/python" -m pip list 2>/dev/null | grep -iE '^(pydantic|pydantic-settings|croniter|typer) '
"$venv/bin/python" -m pytest -q -p no:cacheprovider "${@:-tests/unit}"
