#!/usr/bin/env bash
# The GPU check: everything a GPU machine must prove, as JSON and a log (docs/benchmarks.md).
#
#   scripts/gpu-check.sh [--stage 1|2|all] [--rehearse] [--out DIR] [--images N]
#
# Stage 1 needs only torch: the `gpu` tests (precision, a real out-of-memory, nvJPEG,
# copy/compute overlap) and the model, decode and decode->predict measurements of
# benchmarks/gpucheck.py. Stage 2 needs Ray: the `gpu` tests that run the whole job, then
# `pipeline bench` (20,000 images, ResNet-50) and the targets. --rehearse runs both stages
# on this CPU machine with a small model and a few images (CI does, so the check cannot rot).
#
# Output (in $OUT, else ./gpu-check-output): gpu-check-stageN.json, gpu-tests-stageN.xml,
# bench.json and multi-bench.json (stage 2; multi-bench not in a rehearsal), gpu-check.log.
# Exit 1 if a test failed or a measurement broke.
set -uo pipefail
cd "$(dirname "$0")/.."

stage=all rehearse=0 images=20000
out="${OUT:-gpu-check-output}"
while [ $# -gt 0 ]; do
  case "$1" in
    --stage) stage="$2"; shift 2 ;;
    --rehearse) rehearse=1; shift ;;
    --out) out="$2"; shift 2 ;;
    --images) images="$2"; shift 2 ;;
    *) echo "gpu-check: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
case "$stage" in 1|2|all) ;; *) echo "gpu-check: --stage must be 1, 2 or all, not $stage" >&2; exit 2 ;; esac
mkdir -p "$out"
out="$(cd "$out" && pwd)"
work="${GPU_CHECK_WORKDIR:-/tmp/gpu-check-work}"
mkdir -p "$work"
exec > >(tee -a "$out/gpu-check.log") 2>&1

if [ "$rehearse" = 1 ]; then
  python="${PYTHON:-.venv/bin/python}"
  bench_args=(--images 48 --model resnet18 --model-seconds 1 --naive-images 4)
  check_args=(--rehearse)
else
  # The GPU machine's own python (with torch), the source tree, and wheels installed
  # by scripts/gpu-install.sh in /tmp/site (docs/benchmarks.md).
  python="${PYTHON:-python3}"
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  bench_args=(--images "$images" --model resnet50 --model-seconds 5 --naive-images 16)
  multi_args=(--images 2000 --size 96 --rounds 1)
  check_args=()
fi
export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled
echo "gpu-check $(date -u +%Y-%m-%dT%H:%M:%SZ) stage=$stage rehearse=$rehearse python=$python"
"$python" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available())'
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

status=0
gpu_tests() {  # $1: stage, $2...: test paths. Warnings are shown, not errors: other torch there.
  local xml="$out/gpu-tests-stage$1.xml"
  shift
  "$python" -m pytest -m gpu -p no:cacheprovider -W default -rs --junitxml "$xml" "$@"
  local rc=$?
  # 5: nothing collected (every gpu test deselected): a broken check, not a pass.
  if [ "$rc" -ne 0 ]; then echo "gpu-check: pytest exited $rc" >&2; status=1; fi
}

if [ "$stage" = 1 ] || [ "$stage" = all ]; then
  gpu_tests 1 tests/gpu/test_gpu_path.py
  "$python" -m benchmarks.gpucheck stage1 "${check_args[@]}" --workdir "$work" \
    --tests-xml "$out/gpu-tests-stage1.xml" --out "$out/gpu-check-stage1.json" || status=1
fi

if [ "$stage" = 2 ] || [ "$stage" = all ]; then
  if ! "$python" -c 'import ray' 2>/dev/null; then
    echo "gpu-check: stage 2 needs Ray: run scripts/gpu-install.sh with Ray's wheels first" >&2
    exit 1
  fi
  gpu_tests 2 tests/gpu/test_gpu_job.py
  "$python" -m pipeline bench "${bench_args[@]}" --workdir "$work/bench" --json "$out/bench.json" || status=1
  if [ -f "$out/bench.json" ]; then
    "$python" -m benchmarks.gpucheck stage2 "${check_args[@]}" --bench-json "$out/bench.json" \
      --tests-xml "$out/gpu-tests-stage2.xml" --out "$out/gpu-check-stage2.json" || status=1
  fi
  # ResNet-50 + ResNet-18 in one models: pass against the two runs back to back (#30). Not
  # rehearsed: its three runs would add about a minute to CI's rehearsal (run it by hand there).
  if [ "$rehearse" = 0 ]; then
    "$python" -m benchmarks.multi_bench "${multi_args[@]}" --json "$out/multi-bench.json" || status=1
  fi
fi
echo "gpu-check: done, exit $status; results in $out"
exit "$status"
