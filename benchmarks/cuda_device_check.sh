#!/usr/bin/env bash
# One-shot GPU check (run on a machine with a GPU, PyTorch/CuPy, nvcc, pybind11 and
# scikit-build-core already installed; no network needed): builds cnnkit with CUDA for the local
# GPU's architecture, runs the CUDA tests, then the CUDA benchmark. Output also lands in $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/cnnkit-device}
mkdir -p "$OUT"
exec > >(tee "$OUT/device_check.log") 2>&1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 --version; nvcc --version | tail -1
arch=$(python3 -c "import torch; m,n=torch.cuda.get_device_capability(); print(f'{m}{n}')" 2>/dev/null || echo 90)
echo "building for sm_$arch"
export CMAKE_BUILD_PARALLEL_LEVEL=$(nproc)
t0=$(date +%s)
CNNKIT_CUDA=ON SKBUILD_CMAKE_DEFINE="CMAKE_CUDA_ARCHITECTURES=$arch" \
  python3 -m pip install --no-build-isolation --no-deps --no-index -q . > "$OUT/build.log" 2>&1
rc=$?; echo "build rc=$rc in $(( $(date +%s) - t0 )) s"; [ $rc -eq 0 ] || { tail -40 "$OUT/build.log"; exit 1; }
(cd /tmp && python3 -c "import cnnkit, json; print(json.dumps(cnnkit.build_info()))")
python3 -m pytest -q -o filterwarnings= -p no:cacheprovider tests/test_optim_cuda.py 2>&1 | tail -15
python3 benchmarks/bench_optim_cuda.py
