#!/usr/bin/env bash
# Copy the repository's alert rules and Grafana dashboards into the chart, which cannot read
# files outside itself: monitoring/alerts/*.yaml -> batch-inference/files/alerts/,
# monitoring/grafana/*.json -> batch-inference/files/grafana/. Copies of files removed from
# monitoring/ are removed too. tests/deploy checks that the copies equal their sources.
#
#   deploy/helm/sync-monitoring.sh        (from anywhere in the repository)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
chart_files="$here/batch-inference/files"

sync() {  # sync <source dir> <pattern> <destination dir>
  local src=$1 pattern=$2 dest=$3 file
  mkdir -p "$dest"
  find "$dest" -maxdepth 1 -type f -name "$pattern" -delete
  shopt -s nullglob
  for file in "$src"/$pattern; do
    cp -- "$file" "$dest/"
    echo "copied ${file#"$repo"/} -> ${dest#"$repo"/}/"
  done
  shopt -u nullglob
}

sync "$repo/monitoring/alerts" '*.yaml' "$chart_files/alerts"
sync "$repo/monitoring/grafana" '*.json' "$chart_files/grafana"
