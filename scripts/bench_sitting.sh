#!/usr/bin/env bash
# One sitting of bench/RESULTS.md: the floor, then every row on the embedded Tansu and on a fresh
# Apache Kafka from Maven Central's jars, then the broker-free rows and the plots. It empties the
# table first, so everything in it comes from this one sitting; the notes are kept, to be
# rewritten by hand with the figures. Run it on a quiet machine (nothing else heavy: on 2 cores
# any other load moves the percentiles); it takes about 55 minutes. It needs the bench extra
# (matplotlib), java and mvn (Apache Kafka from Maven Central's jars) and ../shared beside the
# repository, and checks them before it empties the table; it exits 1 if any run failed.
#
#   scripts/bench_sitting.sh [out-dir]     # JSON lines, stderr and a timeline in a new out-dir
set -uo pipefail
OUT="$(realpath -m "${1:-/tmp/kestream-sitting-$(date +%Y%m%d-%H%M%S)}")"
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
FLOOR="$OUT/floor"
FAILED=()

# Everything the sitting needs, checked before the table is emptied.
for need in "$PY" ../shared/peers/floor_bench.py; do
  [ -e "$need" ] || { echo "missing: $need" >&2; exit 2; }
done
for tool in java mvn; do
  command -v "$tool" >/dev/null || { echo "missing: $tool (the Apache Kafka rows)" >&2; exit 2; }
done
"$PY" -c "import matplotlib" 2>/dev/null || { echo "missing: matplotlib (pip install -e '.[bench]')" >&2; exit 2; }
[ -e "$OUT" ] && { echo "$OUT exists: give a new out-dir" >&2; exit 2; }
mkdir -p "$OUT"

log() { echo "$(date +%H:%M:%S) $*" | tee -a "$OUT/timeline.txt"; }
ran() {  # the exit status of the command just run, noted when it failed
  local rc=$1; shift
  log "rc=$rc"
  [ "$rc" = 0 ] || FAILED+=("$*")
}
bench() {
  log "python -m bench $*"
  "$PY" -m bench "$@" --json --write-results >> "$OUT/rows.jsonl" 2>> "$OUT/stderr.txt"
  ran $? "bench $*"
}

log "sitting at $(git rev-parse --short HEAD)"
"$PY" - <<'EOF'
from pathlib import Path

from bench import report

path = Path("bench/RESULTS.md")
notes = report.read_results(path).notes
path.write_text(report.render_results(report.Results(notes=notes), report.plot_files(path)))
EOF

rm -rf "$FLOOR"
for spec in "w1 1000,6000,12000" "w2 6000" "w3,w4 600"; do
  set -- $spec
  log "floor $1 $2"
  PEERS_FETCH_MAX_WAIT_MS=10 "$PY" ../shared/peers/floor_bench.py --config fetchwait10ms \
    --workloads "$1" --rates "$2" --duration 60 --out "$FLOOR" >> "$OUT/floor.txt" 2>&1
  ran $? "floor $1 $2"
done
F=(--floor "$FLOOR/results.jsonl")
for broker in "" "--kafka"; do
  bench W1 --rates 1000,6000,12000 --duration 60 --inline "${F[@]}" $broker
  bench W1 --rates 1000,6000,12000 --duration 60 --no-inline "${F[@]}" $broker
  bench W1 --ceiling --rates 36000,48000,60000,72000 --duration 60 --inline "${F[@]}" $broker
  bench W2 --rate 6000 --duration 60 --inline "${F[@]}" $broker
  bench W2 --rate 6000 --duration 60 --no-inline "${F[@]}" $broker
  bench W3 --inline "${F[@]}" $broker
  bench W3 --no-inline "${F[@]}" $broker
  bench W4 --rate 600 --duration 60 --inline "${F[@]}" $broker
  bench W4 --rate 600 --duration 60 --no-inline "${F[@]}" $broker
  bench idle --seconds 60 $broker
  bench startup --runs 3 --restarts 3 $broker
done
# standalone's own layout: the first executor, the worker and the API in one process
bench W1 --rate 6000 --duration 60 --no-inline --layout shared "${F[@]}"
bench W4 --rate 600 --duration 60 --no-inline --layout shared "${F[@]}"
# a script task (W7) and a Python task in a process and in a thread (W8)
bench W7 --rate 600 --duration 60
bench W8 --rate 6000 --duration 60 --isolation process,thread
for row in "W5 --triggers 100000" "W9" "feed"; do
  log "python -m bench $row"
  # shellcheck disable=SC2086
  "$PY" -m bench $row --json >> "$OUT/system.jsonl" 2>> "$OUT/stderr.txt"
  ran $? "bench $row"
done
"$PY" -m bench plot >> "$OUT/stderr.txt" 2>&1
ran $? "bench plot"
if [ "${#FAILED[@]}" -gt 0 ]; then
  log "FAILED (see $OUT/stderr.txt): ${FAILED[*]}"
  exit 1
fi
log "sitting ends; now rewrite the notes of bench/RESULTS.md from $OUT"
