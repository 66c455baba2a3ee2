#!/usr/bin/env bash
# ON THE GPU MACHINE (no network), from the repository root, after a call that carried .whl/
# (filled here by scripts/gpu-wheels.sh): install every wheel in .whl/ into /tmp/site, rebuilding
# repacked ones (.whl.tar.xz) first, then check that ray, ray.data, pydantic, structlog and every
# module of pipeline import. Idempotent: a second run with the same .whl/ only re-checks.
#
# Use it as the prefix of a device command:
#   bash scripts/gpu-install.sh && export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH && python3 -m pipeline bench ...
#
# Env: PYTHON (default python3): the interpreter to install for.
#      SITE (default /tmp/site): the --target directory.  WHEELS (default .whl): what was carried.
#      BUILD (default /tmp/gpu-wheels-build): where repacked wheels are rebuilt.
#      SMOKE=1: also start Ray (2 CPUs) and run a tiny Ray Data job (~10-20 s).
# Exit codes: 0 ok; 2 .whl/ missing, incomplete or damaged; 3 pip failed; 4 an import/smoke check failed.
set -euo pipefail
cd "$(dirname "$0")/.."

python="${PYTHON:-python3}"
site="${SITE:-/tmp/site}"
src="${WHEELS:-.whl}"
build="${BUILD:-/tmp/gpu-wheels-build}"
manifest="$src/MANIFEST"
stamp="$site/.gpu-install-stamp"

die() { local code="$1"; shift; echo "gpu-install: ERROR: $*" >&2; exit "$code"; }
command -v "$python" >/dev/null || die 2 "no interpreter '$python' (set PYTHON=...)"
"$python" -c 'import sys; assert sys.version_info[:2] == (3, 12), sys.version' 2>/dev/null \
  || die 2 "$python is $("$python" -V 2>&1), but .whl/ holds cp312 wheels"
[ -f "$manifest" ] || die 2 "$manifest not found: run scripts/gpu-wheels.sh on the machine with PyPI, and carry [\".whl\"] in the device call"

# 1. Everything the manifest names is here, whole.
main=() fallback=() packed=() missing=0
while read -r kind file sha size orig _; do
  case "$kind" in ''|'#'*) continue ;; esac
  path="$src/$file"
  if [ ! -f "$path" ]; then
    echo "gpu-install: ERROR: missing $path ($kind, $size bytes): re-run scripts/gpu-wheels.sh and carry .whl" >&2
    missing=$((missing + 1)); continue
  fi
  if [ "$(stat -c %s "$path")" != "$size" ] || [ "$(sha256sum "$path" | cut -d' ' -f1)" != "$sha" ]; then
    echo "gpu-install: ERROR: $path is damaged or from another run (size/sha256 differ from $manifest)" >&2
    missing=$((missing + 1)); continue
  fi
  case "$kind" in
    wheel) main+=("$path") ;;
    packed) packed+=("$path|$orig") ;;
    fallback) fallback+=("$path") ;;
    *) die 2 "unknown kind '$kind' in $manifest" ;;
  esac
done < "$manifest"
[ "$missing" -eq 0 ] || die 2 "$missing file(s) of $manifest missing or damaged; nothing installed"
[ "${#packed[@]}" -gt 0 ] || [ "${#main[@]}" -gt 0 ] || die 2 "$manifest names no wheels"
# Extra wheels in .whl/ the manifest does not name would be ignored: say so.
for path in "$src"/*.whl "$src"/*.tar.xz "$src"/fallback/*.whl; do
  [ -e "$path" ] || continue
  grep -q " ${path#"$src"/} " "$manifest" || echo "gpu-install: warning: $path is not in $manifest; ignored" >&2
done

want_stamp="$(sha256sum "$manifest" | cut -d' ' -f1) $(command -v "$python")"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want_stamp" ]; then
  echo "gpu-install: $site already holds this .whl/ (stamp matches); checking only"
  for item in "${packed[@]}"; do [ -f "$build/${item##*|}" ] && main+=("$build/${item##*|}"); done
else
  # 2. Rebuild repacked wheels (each member's sha256 is checked against the packed index).
  mkdir -p "$build"
  for item in "${packed[@]}"; do
    archive="${item%%|*}" orig="${item##*|}"
    archive_sha="$(sha256sum "$archive" | cut -d' ' -f1)"
    if [ -f "$build/$orig" ] && [ "$(cat "$build/$orig.from" 2>/dev/null)" = "$archive_sha" ]; then
      echo "gpu-install: $build/$orig already rebuilt"
    else
      rm -f "$build/$orig" "$build/$orig.from"
      "$python" scripts/gpu_wheelpack.py unpack "$archive" "$build" || die 2 "could not rebuild $orig from $archive"
      echo "$archive_sha" > "$build/$orig.from"
    fi
    main+=("$build/$orig")
  done

  # 3. Fallback wheels only where the machine's own package is missing or too old.
  needed=()
  if [ "${#fallback[@]}" -gt 0 ]; then
    mapfile -t needed < <(PYTHONPATH= "$python" scripts/gpu_wheelpack.py fallbacks "${main[@]}" --candidates "${fallback[@]}") \
      || die 2 "could not decide on fallback wheels"
  fi
  for path in "${needed[@]}"; do echo "gpu-install: the machine's copy is missing or too old; adding $(basename "$path")"; done

  # 4. Install. --upgrade replaces what an earlier run put in $site.
  echo "gpu-install: installing ${#main[@]} wheel(s) into $site"
  rm -f "$stamp"
  mkdir -p "$site"
  "$python" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target "$site" "${main[@]}" "${needed[@]}" || die 3 "pip install into $site failed"
fi

# 5. Report and check, with $site first on the path as the device command will have it.
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
echo "gpu-install: installed in $site:"
"$python" - "$site" <<'EOF'
import pathlib, sys
for d in sorted(pathlib.Path(sys.argv[1]).glob("*.dist-info")):
    print("  " + d.name[: -len(".dist-info")].replace("-", " ", 1))
EOF
echo "gpu-install: requirements of the installed wheels against this interpreter:"
if ! "$python" scripts/gpu_wheelpack.py reqcheck "${main[@]}" 2>/dev/null; then
  echo "gpu-install: warning: requirements above are not met (imports are checked next)" >&2
fi
"$python" - <<'EOF' || die 4 "import check failed (see above)"
import importlib, pkgutil, sys, traceback
failed = []
for name in ["ray", "ray.data", "ray.util.metrics", "pydantic", "structlog", "jsonschema", "yaml",
             "prometheus_client", "pyarrow", "pandas", "numpy", "fsspec", "psutil", "PIL"]:
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name); traceback.print_exc()
import pipeline
mods = ["pipeline"] + [m.name for m in pkgutil.walk_packages(pipeline.__path__, "pipeline.") if not m.name.endswith("__main__")]
for name in mods:
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name); traceback.print_exc()
import ray
print(f"gpu-install: imports ok except {failed}" if failed else
      f"gpu-install: imports ok: ray {ray.__version__} from {ray.__file__.rsplit('/', 2)[0]}, {len(mods)} pipeline modules")
sys.exit(1 if failed else 0)
EOF
if [ "${SMOKE:-0}" = 1 ]; then
  "$python" - <<'EOF' || die 4 "Ray smoke test failed"
import logging, ray, ray.data
ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
try:
    n = ray.data.range(10).map_batches(lambda b: b).count()
    assert n == 10, n
    print(f"gpu-install: smoke ok: ray.init + ray.data.range(10).map_batches(...).count() == {n}")
finally:
    ray.shutdown()
EOF
fi
echo "$want_stamp" > "$stamp"
echo "gpu-install: done. Now: export PYTHONPATH=$site PATH=$site/bin:\$PATH"
