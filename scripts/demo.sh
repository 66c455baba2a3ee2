#!/usr/bin/env bash
# Set up and run the demo: sample images -> local Ray cluster -> Parquet + _SUCCESS manifest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/pipeline demo "$@"
