#!/usr/bin/env bash
# The whole check, on a fresh machine: install kestream with its test extras into .venv, then run
# ruff (lint + format), the import contract, mypy, the web UI's type check, the test suite
# (unit, conformance, the UI in Chromium, integration on the embedded broker and on a real
# Apache Kafka started from Maven Central's jars), then the unit tests on the lowest versions
# pyproject allows.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
export PATH="$PWD/.venv/bin:$PATH"
# Integration tests run on both brokers: the embedded Tansu and a real Apache Kafka (KRaft) started
# from Maven Central's jars (skipped, with the reason printed, where java or mvn is missing).
export KESTREAM_TEST_BACKENDS="${KESTREAM_TEST_BACKENDS:-tansu,apache}"

# The web UI's browser tests drive Debian's Chromium and its type check runs TypeScript from npm:
# as root, install what is missing (elsewhere a missing browser fails those tests, saying so).
missing=()
[ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] || missing+=(chromium chromium-driver)
command -v npm >/dev/null || missing+=(nodejs npm)
if [ "${#missing[@]}" -gt 0 ] && [ "$(id -u)" = 0 ]; then
  apt-get update -q && apt-get install -y -q "${missing[@]}"
fi

echo "== ruff";          ruff check . && ruff format --check .
echo "== import rules";  lint-imports
echo "== mypy";          mypy
echo "== ui types";      scripts/check_ui.sh
echo "== tests";         pytest -n 2 -rs "$@"
# pyproject's lower bounds are real: the unit tests again, in a temporary venv holding the lowest
# versions it allows (scripts/test_lowest.sh). KESTREAM_TEST_LOWEST=0 leaves it out of a local run.
if [ "${KESTREAM_TEST_LOWEST:-1}" != 0 ]; then
  echo "== lowest versions"; scripts/test_lowest.sh tests/unit -n 2 -q
fi
