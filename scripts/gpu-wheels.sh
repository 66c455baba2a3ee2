#!/usr/bin/env bash
# Fill .whl/ with every wheel the GPU machine lacks for `import pipeline`, `python3 -m pipeline bench`
# and `pipeline run` on an embedded Ray cluster, sized to travel in ONE device call (carry [".whl"]).
# Run here (PyPI reachable), from anywhere; scripts/gpu-install.sh installs them there.
#
# The GPU machine: CPython 3.12 x86_64 manylinux, no network, torch/torchvision/numpy/pandas/pyarrow/
# fsspec/pyyaml/requests/click/filelock/msgpack/protobuf/packaging/aiohttp/prometheus-client/psutil/
# pillow/grpcio/jinja2/attrs/typing-extensions... already installed (DEVICE_HAS below). Missing there:
# ray[data] (+ jsonschema and its deps), pydantic (+ core, annotated-types, typing-inspection),
# structlog. Not fetched: s3fs/botocore/boto3 (only s3:// URIs need them, and the machine has no
# network; pipeline/storage/ imports botocore inside try/except), ray's `default` extra (the dashboard; pipeline calls ray.init(include_dashboard=False)).
#
# ray's wheel (~79 MB) is over one call's carry. scripts/gpu_wheelpack.py repacks it as a solid
# .tar.xz of its uncompressed members (nested ray_dist.jar expanded too), ~42 MB; gpu-install.sh
# rebuilds the wheel and checks every member's sha256. The original stays in .whl-cache/ (not carried).
#
# Env: HOST_PYTHON (default .venv/bin/python) runs pip download and the packer.
#      MAX_MIB (default 55): fail if .whl/ would be bigger.
set -euo pipefail
cd "$(dirname "$0")/.."

host_python="${HOST_PYTHON:-.venv/bin/python}"
max_mib="${MAX_MIB:-55}"
dest=.whl
cache=.whl-cache
pack_over_mib=20  # wheels bigger than this are repacked (only ray's is)

die() { echo "gpu-wheels: error: $*" >&2; exit 1; }
[ -x "$host_python" ] || command -v "$host_python" >/dev/null || die "no $host_python (run scripts/setup.sh, or set HOST_PYTHON)"

# Versions pinned in pyproject.toml win; the rest are what .venv (CI and development) runs.
pin() {  # pin NAME: the ==version pyproject.toml gives NAME, or nothing
  "$host_python" - "$1" <<'EOF'
import re, sys, tomllib
want = re.sub(r"[-_.]+", "-", sys.argv[1]).lower()
for dep in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]:
    m = re.match(r"\s*([A-Za-z0-9_.-]+)(\[[^]]*\])?\s*==\s*([^;\s]+)", dep)
    if m and re.sub(r"[-_.]+", "-", m.group(1)).lower() == want:
        print(m.group(3))
EOF
}
ray_version="$(pin ray)"; pydantic_version="$(pin pydantic)"; structlog_version="$(pin structlog)"
[ -n "$ray_version" ] && [ -n "$pydantic_version" ] && [ -n "$structlog_version" ] \
  || die "pyproject.toml no longer pins ray, pydantic and structlog with =="

WANT=(
  "ray==$ray_version"
  "pydantic==$pydantic_version"
  "pydantic-core==2.50.4"          # pydantic $pydantic_version requires exactly this one
  "annotated-types==0.8.0"
  "typing-inspection==0.4.5"
  "structlog==$structlog_version"
  "jsonschema==4.26.0"             # ray core requires jsonschema
  "referencing==0.37.0"
  "rpds-py==2026.9.1"
  "jsonschema-specifications==2025.9.1"
)
# Installed there only if the machine's own copy is missing or too old for the wheels above
# (pydantic and its core require typing-extensions>=4.16.0).
FALLBACK=(
  "typing-extensions==4.16.0"
)
# What the GPU machine already has (normalised names); the closure check below may rely on these.
DEVICE_HAS="absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs
certifi charset-normalizer click cloudpickle contourpy filelock frozenlist fsspec grpcio h11 httpcore
httpx huggingface-hub idna jinja2 markupsafe msgpack multidict numpy nvidia-ml-py packaging pandas
pillow pip pluggy prometheus-client propcache protobuf psutil pyarrow pytest pytest-timeout pyyaml
requests rich safetensors setuptools six typing-extensions urllib3 wheel yarl zipp torch torchvision"

download() {  # download DIR SPEC...
  local dir="$1"; shift
  "$host_python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d "$dir" "$@"
}

mkdir -p "$cache/dl" "$cache/fallback"
echo "gpu-wheels: downloading ${#WANT[@]} wheels (+${#FALLBACK[@]} fallback) for cp312 manylinux x86_64"
download "$cache/dl" "${WANT[@]}"
download "$cache/fallback" "${FALLBACK[@]}"

# Exactly one wheel per wanted spec (a stale version left in the cache is not picked up).
pick() {  # pick DIR SPEC: the cached wheel file for SPEC
  local dir="$1" name="${2%%==*}" version="${2##*==}" norm matches
  norm="$(echo "$name" | tr '.-' '__' | tr '[:upper:]' '[:lower:]')"
  shopt -s nullglob nocaseglob
  matches=("$dir/${norm}-${version}-"*.whl)
  shopt -u nullglob nocaseglob
  [ "${#matches[@]}" -eq 1 ] || die "expected one wheel for $2 in $dir, found ${#matches[@]}: ${matches[*]:-none}"
  echo "${matches[0]}"
}

# Rebuild .whl/ from scratch so nothing stale travels.
rm -rf "$dest"
mkdir -p "$dest/fallback"
manifest="$dest/MANIFEST"
echo "# kind file sha256 bytes [original-wheel original-sha256]  (written by scripts/gpu-wheels.sh)" > "$manifest"
wheels=()
for spec in "${WANT[@]}"; do
  whl="$(pick "$cache/dl" "$spec")"; base="$(basename "$whl")"; wheels+=("$whl")
  size=$(stat -c %s "$whl")
  if [ "$size" -gt $((pack_over_mib * 1048576)) ]; then
    packed="$cache/$base.tar.xz"
    orig_sha="$(sha256sum "$whl" | cut -d' ' -f1)"
    if [ ! -s "$packed" ] || [ "$(cat "$packed.src-sha256" 2>/dev/null)" != "$orig_sha" ]; then
      echo "gpu-wheels: repacking $base ($((size / 1048576)) MiB); a few minutes on 2 cores"
      "$host_python" scripts/gpu_wheelpack.py pack "$whl" "$packed"
      echo "$orig_sha" > "$packed.src-sha256"
    fi
    cp "$packed" "$dest/"
    echo "packed $base.tar.xz $(sha256sum "$packed" | cut -d' ' -f1) $(stat -c %s "$packed") $base $orig_sha" >> "$manifest"
  else
    cp "$whl" "$dest/"
    echo "wheel $base $(sha256sum "$whl" | cut -d' ' -f1) $size" >> "$manifest"
  fi
done
for spec in "${FALLBACK[@]}"; do
  whl="$(pick "$cache/fallback" "$spec")"; base="$(basename "$whl")"
  cp "$whl" "$dest/fallback/"
  echo "fallback fallback/$base $(sha256sum "$whl" | cut -d' ' -f1) $(stat -c %s "$whl")" >> "$manifest"
done

# Closure check: every requirement of every wheel (ray with its `data` extra) is either carried
# or already on the GPU machine.
"$host_python" - "$DEVICE_HAS" "${wheels[@]}" <<'EOF'
import re, sys, zipfile
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
env = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
       "platform_python_implementation": "CPython", "os_name": "posix"}
have = {canonicalize_name(n) for n in sys.argv[1].split()}
carried = {canonicalize_name(p.rsplit("/", 1)[-1].split("-")[0]) for p in sys.argv[2:]}
bad = []
for path in sys.argv[2:]:
    with zipfile.ZipFile(path) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        lines = zf.read(meta).decode().splitlines()
    name = canonicalize_name(path.rsplit("/", 1)[-1].split("-")[0])
    extras = [""] + (["data"] if name == "ray" else [])
    for line in lines:
        if not line.startswith("Requires-Dist:"):
            continue
        req = Requirement(line.split(":", 1)[1].strip())
        if req.marker and not any(req.marker.evaluate({**env, "extra": e}) for e in extras):
            continue
        dep = canonicalize_name(req.name)
        if dep not in carried and dep not in have:
            bad.append(f"{req} (needed by {name})")
if bad:
    sys.exit("gpu-wheels: error: neither carried nor on the GPU machine:\n  " + "\n  ".join(bad))
print(f"gpu-wheels: closure ok: {len(carried)} carried wheels + the GPU machine's packages")
EOF

total=$(du -sb "$dest" | cut -f1)
echo "gpu-wheels: $dest/ holds:"
ls -l "$dest" "$dest/fallback" | grep -v '^total' | awk 'NF>=9 {printf "  %10d  %s\n", $5, $9} /:$/ {print "  " $0}'
awk -v t="$total" -v m="$max_mib" 'BEGIN { printf "gpu-wheels: total %.1f MiB (limit %s MiB); carry [\".whl\"], then on the GPU machine: bash scripts/gpu-install.sh\n", t / 1048576, m }'
[ "$total" -le $((max_mib * 1048576)) ] || die "$dest/ is over $max_mib MiB"
