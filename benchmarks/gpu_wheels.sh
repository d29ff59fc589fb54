#!/usr/bin/env bash
# Fetch, on the CPU machine, what the GPU session (benchmarks/gpu_session.sh) carries to the
# H200 host, which has no network: the Python packages coretune needs there that its image
# lacks (scikit-optimize and pyaml; optuna, the default strategy's optimiser, and its needs;
# the image has numpy, scipy, scikit-learn, onnx, onnxruntime, click, rich, ml-dtypes,
# threadpoolctl, pytest, CuPy, torch), and for the pycuda build probe pycuda's sdist and its
# pure-Python needs. About 8.3 MB in all (SQLAlchemy 4.7 MB); no PoCL.
# Run from the repository root; the folder .whl is git-ignored (.git/info/exclude) and is
# named in the device call's `carry`.
set -euo pipefail
grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
mkdir -p .whl
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
  platforms+=(--platform "$p")
done
for package in scikit-optimize==0.10.2 pyaml==26.7.0 pytools==2026.1.1 platformdirs==4.14.9 \
               siphash24==1.9 mako==1.4.3 \
               optuna==5.1.0 alembic==1.20.1 sqlalchemy==2.1.9 colorlog==6.12.0 tqdm==4.70.1 \
               pyyaml==6.0.4; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${platforms[@]}" -d .whl "$package"
done
python3 -m pip download -q --no-deps --no-binary pycuda -d .whl pycuda==2026.1
ls -l .whl
