#!/usr/bin/env bash
# Type-checks the web UI's ES modules (kestream/ui/*.js) from their JSDoc annotations with
# TypeScript's checker (strict, checkJs). Nothing is built: the files served are the files
# checked, so there is no build output to keep in step with its sources.
set -euo pipefail
cd "$(dirname "$0")/ui"
if ! command -v npm >/dev/null; then
  echo "npm is needed to type-check the UI (Debian: apt-get install -y nodejs npm)" >&2
  exit 1
fi
npm ci --no-audit --no-fund --silent
npx --no-install tsc -p tsconfig.json
