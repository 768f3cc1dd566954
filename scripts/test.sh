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
# Integration tests run on both brokers: the embedded Tansu and a real Apache Kafka (KRaft) started
# from Maven Central's jars (skipped, with the reason printed, where java or mvn is missing).
export KESTREAM_TEST_BACKENDS="${KESTREAM_TEST_BACKENDS:-tansu,apache}"

echo "== ruff";          ruff check . && ruff format --check .
echo "== import rules";  lint-imports
echo "== mypy";          mypy
echo "== tests";         pytest -n 2 -rs "$@"
