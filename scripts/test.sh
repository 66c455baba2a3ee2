#!/usr/bin/env bash
# Set up the dev environment, then lint, type-check and run every test.
# Extra arguments go to pytest (e.g. scripts/test.sh tests/pipeline -k config).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
.venv/bin/ruff check pipeline tests deploy
.venv/bin/ruff format --check pipeline tests deploy
.venv/bin/mypy
set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: failing on purpose" >&2
  exit 1
fi
exit "$status"
