#!/usr/bin/env bash
# Set up .venv with the pipeline installed. `scripts/setup.sh dev` adds the test tools:
# dev extras, the gpu extra (so tests load the real NVML bindings, here without a driver), the Helm library (helm-sdkpy) and, as root, Debian's Prometheus, Pushgateway, headless Java runtime (for pyspark) and Chromium with its driver (the report's browser test).
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-run}"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null || python=python3

if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
fi
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)

if [ "$mode" = dev ]; then
  "${pip[@]}" -e '.[dev,gpu,models,tables]'
  # helm-sdkpy bundles Helm v4's Go library; it declares Python >= 3.12 but works on 3.11.
  .venv/bin/python -c 'import helm_sdkpy' 2>/dev/null || "${pip[@]}" --ignore-requires-python 'helm-sdkpy==0.1.32'
  need_prometheus=false need_java=false need_browser=false
  if ! command -v promtool >/dev/null || ! command -v prometheus-pushgateway >/dev/null; then
    need_prometheus=true
  fi
  # pyspark (tests/pipeline/test_readers.py) needs a Java runtime: Debian's default headless JRE
  # (OpenJDK 17 on bookworm), without X11 or fonts.
  if ! command -v java >/dev/null; then
    need_java=true
  fi
  # tests/pipeline/test_report.py opens the report in a real headless browser through Selenium:
  # Debian's chromium and chromium-driver (the driver matches the browser's version).
  if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    need_browser=true
  fi
  if [ "$need_prometheus" = true ] || [ "$need_java" = true ] || [ "$need_browser" = true ]; then
    if [ "$(id -u)" = 0 ]; then
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq
      if [ "$need_prometheus" = true ]; then
        apt-get install -y -qq prometheus prometheus-pushgateway >/dev/null
        # The Debian packages start services we do not want; tests start their own servers.
        for service in prometheus prometheus-pushgateway prometheus-node-exporter; do
          (service "$service" stop || true) >/dev/null 2>&1
        done
      fi
      if [ "$need_java" = true ]; then
        apt-get install -y -qq --no-install-recommends default-jre-headless >/dev/null
      fi
      if [ "$need_browser" = true ]; then
        apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
      fi
    else
      [ "$need_prometheus" = false ] ||
        echo "note: prometheus/promtool/pushgateway missing and not root: those tests will skip" >&2
      [ "$need_java" = false ] ||
        echo "note: no Java runtime and not root: the Spark reader tests (tests/pipeline/test_readers.py) will skip" >&2
      [ "$need_browser" = false ] ||
        echo "note: no chromium/chromedriver and not root: the report's browser tests (tests/pipeline/test_report.py) will skip" >&2
    fi
  fi
else
  "${pip[@]}" -e .
fi
