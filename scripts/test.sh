#!/usr/bin/env bash
# The whole check, on a fresh machine: install kestream with its test extras into .venv, then run
# ruff (lint + format), the import contract, mypy, and the test suite (unit, conformance,
# integration on the embedded broker and on a real Apache Kafka started from Maven Central's jars).
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
export PATH="$PWD/.venv/bin:$PATH"

echo "== ruff";          ruff check . && ruff format --check .
echo "== import rules";  lint-imports
echo "== mypy";          mypy
echo "== tests";         pytest -n 2 "$@"
