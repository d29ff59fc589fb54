#!/usr/bin/env bash
# One whole GPU session in one device call (issue 16), writing everything under $OUT:
#
#   device run, carry [".whl"], timeout_s 540:
#     bash benchmarks/gpu_session.sh
#
# 1. installs the carried wheels (benchmarks/gpu_wheels.sh fetched them) and coretune from
#    this tree into /tmp/site, with no network and no PoCL;
# 2. starts the pycuda probe in the background: does pycuda's sdist build there against the
#    local nvcc and driver, and how long does it take (bounded; log in $OUT/pycuda_build.log);
# 3. runs benchmarks/gpu_session.py: versions, the CUDA tests, ops against cuBLAS/cuDNN,
#    time-budgeted tunes, whole models against torch eager, and a short table last.
#
# Dry run on the CPU machine (PoCL, tiny sizes, the same steps):
#   OUT=/tmp/gpu_dry PY=/path/to/venv/bin/python bash benchmarks/gpu_session.sh --dry-run
set -u
PY=${PY:-python3}
OUT=${OUT:-/tmp/gpu_session_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
site=$(mktemp -d)/site
dry_run=false
[[ " $* " == *" --dry-run "* ]] && dry_run=true  # here: the venv has them, for its own Python
if ls .whl/*.whl >/dev/null 2>&1 && ! $dry_run; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" .whl/*.whl || exit 1
fi
"$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir \
  --target "$site" . >"$OUT/install.log" 2>&1 || { tail -20 "$OUT/install.log"; exit 1; }
export PYTHONPATH="$site"
export PATH="$site/bin:$PATH"

if [ -f .whl/pycuda-2026.1.tar.gz ] && ! $dry_run; then
  (
    # pycuda's configure takes the CUDA root from nvcc's folder: name the real one.
    start=$(date +%s)
    nvcc_path=$("$PY" -c 'import shutil; print(shutil.which("nvcc") or "")')
    cuda_root=$(dirname "$(dirname "$(readlink -f "$nvcc_path")")")
    [ -f "$cuda_root/include/cuda.h" ] || cuda_root=/usr/local/cuda
    build=$(mktemp -d)
    tar xzf .whl/pycuda-2026.1.tar.gz -C "$build"
    cd "$build"/pycuda-2026.1 && "$PY" configure.py --cuda-root="$cuda_root" >/dev/null &&
      timeout 300 "$PY" -m pip wheel -q --no-index --no-deps --no-build-isolation \
        -w /tmp/pycuda_wheel . >"$OUT/pycuda_build.log" 2>&1
    echo "rc=$? seconds=$(( $(date +%s) - start )) cuda_root=$cuda_root" >"$OUT/pycuda_build.status"
  ) &
fi

"$PY" benchmarks/gpu_session.py --out "$OUT" "$@"
status=$?
wait
[ -f "$OUT/pycuda_build.status" ] && echo "pycuda sdist build: $(cat "$OUT/pycuda_build.status")"
exit $status
