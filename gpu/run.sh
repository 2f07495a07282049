#!/usr/bin/env bash
# The GPU check (run on the device machine from the repository root, with gpu/out carried):
# (a) mma/ldmatrix fragment layouts vs a plain matmul, (b) the tensor-core property tests on
# the GPU backend, (c) forward TFLOP/s of our kernels vs PyTorch SDPA and FlexAttention.
# Results: docs/gpu-results/<date>-<device>.md (printed too).
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$root/gpu/out"
date_s="$(date -u +%Y-%m-%d)"
device="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1 | tr ' ' '-' || echo unknown)"
res_dir="$root/docs/gpu-results"
mkdir -p "$res_dir"
res="$res_dir/$date_s-$device.md"
{
  echo "# GPU check $date_s on $device"
  echo
  echo '## (b) property tests on exec::Backend::Cuda(0)'
  echo '```'
} > "$res"
export ATTNFORGE_CUDA_HOME="${ATTNFORGE_CUDA_HOME:-/usr/local/cuda}"
export LD_LIBRARY_PATH="$ATTNFORGE_CUDA_HOME/lib64:${LD_LIBRARY_PATH:-}"
timeout 300 "$out/bin/gpu_tests" --nocapture --test-threads=1 2>&1 | tee -a "$res"
echo "exit status: ${PIPESTATUS[0]}" | tee -a "$res"
echo '```' >> "$res"
echo '## (a) mma layout and (c) TFLOP/s' >> "$res"
timeout 280 python3 "$out/bench.py" --kernels "$out/kernels" 2>&1 | tee -a "$res"
echo "results: $res"
