#!/usr/bin/env bash
# GPU check of pyprune's CUDA kernels, for a machine with a GPU and no internet
# (torch with CUDA, nvcc, CMake, ninja, pybind11 and scikit-build-core already
# installed).  About 6 minutes: every step has its own time limit.
#
#   OUT=/some/dir bash benchmarks/gpu_check.sh
#
#  1. pip install --no-build-isolation .   (CUDA archs: this GPU's only, for time;
#     GPU_CHECK_ARCHS=default builds the shipping list 80-real;90-real;90-virtual)
#  2. the CUDA tests (tests/ops/test_{rank,select}_cuda.py, -m cuda)
#  3. benchmarks/bench_rank.py and bench_select.py --device cuda --json $OUT/...
#  4. a reduced selection under compute-sanitizer --tool memcheck, then racecheck
#
# BUDGET=<seconds> caps the whole run (default 900): each step's limit is cut
# to what is left, and steps that no longer fit are skipped (and reported).
#
# Logs and JSON land in $OUT (default ./gpu_check_out); $OUT/summary.txt lists
# each step's exit status.  The exit status is non-zero if any step failed.
set -u
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
PY="${PYTHON:-$(command -v python3 || command -v python)}"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
FAILED=0
START=$(date +%s)

if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH="/usr/local/cuda/bin:$PATH"
fi
export CUDACXX="${CUDACXX:-$(command -v nvcc || true)}"

BUDGET="${BUDGET:-900}"  # seconds for the whole script: a step gets at most what is left
step() {  # step NAME LIMIT_S COMMAND...
  local name="$1" limit="$2"
  shift 2
  local left=$(( BUDGET - ($(date +%s) - START) - 5 ))
  if [ "$left" -lt 20 ]; then
    echo "$name skipped (budget ${BUDGET}s spent)" | tee -a "$SUMMARY"; FAILED=1; return 1
  fi
  if [ "$limit" -gt "$left" ]; then limit=$left; fi
  local t0=$(date +%s)
  echo "== $name (limit ${limit}s)"
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  local dt=$(( $(date +%s) - t0 ))
  tail -n 15 "$OUT/$name.log"
  echo "$name rc=$rc ${dt}s" | tee -a "$SUMMARY"
  if [ "$rc" -ne 0 ]; then FAILED=1; fi
  return $rc
}

nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"
nvcc --version | tail -n 2

ARCHS="${GPU_CHECK_ARCHS:-native}"
PIP_ARGS=(install --no-build-isolation --no-deps --no-index)
if [ "$ARCHS" = "native" ]; then
  CC=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d ' .')
  if [ -n "$CC" ]; then PIP_ARGS+=(--config-settings="cmake.define.PYPRUNE_CUDA_ARCHS=${CC}-real"); fi
elif [ "$ARCHS" != "default" ]; then
  PIP_ARGS+=(--config-settings="cmake.define.PYPRUNE_CUDA_ARCHS=$ARCHS")
fi
# The wheel is kept in $OUT/wheel; WHEEL=<path to a wheel from an earlier run> installs that instead.
if [ -n "${WHEEL:-}" ]; then
  step build 120 "$PY" -m pip install --no-deps --no-index --force-reinstall "$WHEEL" || { echo "install failed"; exit 1; }
else
  WHEEL_ARGS=("${PIP_ARGS[@]}")
  WHEEL_ARGS[0]=wheel
  step build 240 bash -c '"$0" -m pip "$@" -w "'"$OUT/wheel"'" "'"$REPO"'" && "$0" -m pip install --no-deps --no-index --force-reinstall "'"$OUT"'"/wheel/pyprune-*.whl' \
    "$PY" "${WHEEL_ARGS[@]}" || { echo "build failed: see $OUT/build.log"; exit 1; }
fi

# Run from a scratch directory so `import pyprune` finds the installed package,
# not the source tree (which holds no compiled module).
RUN_DIR="$(mktemp -d)"
cd "$RUN_DIR"
"$PY" -c "import pyprune, json; i = pyprune.build_info(); print(pyprune.__file__); print(json.dumps(i)); \
assert i['cuda'] and i['cuda_devices'] > 0, 'native CUDA kernels not usable'" 2>&1 | tee "$OUT/build_info.txt"
if [ "${PIPESTATUS[0]}" -ne 0 ]; then echo "build_info rc=1" | tee -a "$SUMMARY"; FAILED=1; fi

PYTEST=("$PY" -m pytest --rootdir "$REPO" -c "$REPO/pyproject.toml" -p no:cacheprovider -q)
T="$REPO/tests/ops"
step tests 120 "${PYTEST[@]}" -rfE --tb=short "$T/test_rank_cuda.py" "$T/test_select_cuda.py" -m cuda

cd "$REPO"
step bench_rank 90 "$PY" benchmarks/bench_rank.py --device cuda --dtype float32 float16 --torch-max-maps 256 \
  --json "$OUT/rank_cuda.json"
step bench_rank_imagenet 120 "$PY" benchmarks/bench_rank.py --device cuda --dtype float32 float16 --shapes imagenet \
  --torch-max-maps 256 \
  --json "$OUT/rank_cuda_imagenet.json"
step bench_select 60 "$PY" benchmarks/bench_select.py --device cuda --json "$OUT/select_cuda.json"


cd "$RUN_DIR"
# Reduced selections: small and medium sizes, every kernel variant (block
# sizes 32..256, Gram and bidiagonal, shared-memory and global workspace).
SAN_RANK=(
  "$T/test_rank_cuda.py::test_cuda_identical_to_cpu[-7x13-float32]"
  "$T/test_rank_cuda.py::test_cuda_identical_to_cpu[-32x32-float32]"
  "$T/test_rank_cuda.py::test_feature_maps_channels_last[-float16]"
  "$T/test_rank_cuda.py::test_cuda_identical_to_cpu[-40x100-float64]"
  "$T/test_rank_cuda.py::test_cuda_identical_to_cpu[-56x56-bfloat16]"
  "$T/test_rank_cuda.py::test_cuda_identical_to_cpu[-112x112-float16]"
  "$T/test_rank_cuda.py::test_non_finite_reported[nan-float32-cuda]"
  "$T/test_rank_cuda.py::test_singular_values_near_tol[32x32-float32-cuda]"
  "$T/test_rank_cuda.py::test_singular_values_near_tol[56x40-float64-cuda]"
)
SAN_RANK_GLOBAL=("$T/test_rank_cuda.py::test_global_workspace_path[cuda]")
SAN_SELECT=(
  "$T/test_select_cuda.py::test_conv_bn_linear_in_place_one_call[float32-cuda]"
  "$T/test_select_cuda.py::test_dtypes_multi_job[complex128-cuda]"
  "$T/test_select_cuda.py::test_unaligned_and_strided_out_of_place[cuda]"
)
SAN=(compute-sanitizer --error-exitcode 97 --target-processes all)
step memcheck 100 "${SAN[@]}" --tool memcheck "${PYTEST[@]}" "${SAN_RANK[@]}" "${SAN_RANK_GLOBAL[@]}" "${SAN_SELECT[@]}"
step racecheck 100 "${SAN[@]}" --tool racecheck --racecheck-report hazard "${PYTEST[@]}" "${SAN_RANK[@]:0:4}" "${SAN_SELECT[@]:0:1}"


echo "total $(( $(date +%s) - START ))s" | tee -a "$SUMMARY"
rm -rf "$RUN_DIR"
exit $FAILED
