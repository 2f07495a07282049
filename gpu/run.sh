#!/usr/bin/env bash
# The GPU check (run on the device machine from the repository root, with gpu/out carried):
# (a) mma/ldmatrix fragment layouts vs a plain matmul, (b) the tensor-core property tests on
# the GPU backend, (c) forward TFLOP/s of our kernels vs PyTorch SDPA and FlexAttention,
# (d) the autotuner measuring candidates with CUDA events (criterion) on a few kernels.
# Results: docs/gpu-results/<date>-<device>.md, copied to $OUT (the device tool brings $OUT
# back) with the tuner's reports as one archive. Parts are time-boxed (110 + 120 + 170 + 110 s) to stay under 9 minutes.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$root/gpu/out"
back="${OUT:-$root/gpu/results}"
mkdir -p "$back"
date_s="$(date -u +%Y-%m-%d)"
device="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1 | tr ' ' '-')"
device="${device:-unknown}"
res_dir="$root/docs/gpu-results"
mkdir -p "$res_dir"
res="$res_dir/$date_s-$device.md"
# NVRTC from the device's CUDA toolkit (toolkit layout: include/, lib64/libnvrtc.so.N, bin/)
if [ -z "${ATTNFORGE_CUDA_HOME:-}" ]; then
  for c in /usr/local/cuda /usr/local/cuda-13.0 /usr/local/cuda-12.9 /opt/cuda; do
    if [ -f "$c/include/cuda_bf16.h" ]; then export ATTNFORGE_CUDA_HOME="$c"; break; fi
  done
fi
export ATTNFORGE_CUDA_HOME="${ATTNFORGE_CUDA_HOME:-/usr/local/cuda}"
export LD_LIBRARY_PATH="$ATTNFORGE_CUDA_HOME/lib64:$ATTNFORGE_CUDA_HOME/lib:${LD_LIBRARY_PATH:-}"
{
  echo "# GPU check $date_s on $device"
  echo
  echo "Driver: $(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n1);"
  echo "CUDA toolkit for NVRTC: $ATTNFORGE_CUDA_HOME ($(ls "$ATTNFORGE_CUDA_HOME"/lib64/libnvrtc.so.* 2>/dev/null | head -n1))."
  echo
  echo '## (b) property tests on exec::Backend::Cuda(0)'
  echo '```'
} > "$res"
timeout 110 "$out/bin/gpu_tests" --nocapture --test-threads=5 2>&1 | tee -a "$res"
echo "exit status: ${PIPESTATUS[0]}" | tee -a "$res"
echo '```' >> "$res"
cp "$res" "$back/gpu-results.md"
# the whole catalog with its suites (Sq != Sk, GQA, large magnitudes, mask edges, stages)
{
  echo
  echo '## (b2) attnforge check --all --backend cuda'
  echo '```'
} >> "$res"
timeout 120 "$out/bin/attnforge" check --all --backend cuda 2>&1 | tee -a "$res"
echo "exit status: ${PIPESTATUS[0]}" | tee -a "$res"
echo '```' >> "$res"
cp "$res" "$back/gpu-results.md"
{
  echo
  echo '## (h) Hopper helpers vs the hardware'
  echo '```'
} >> "$res"
PYTHONUNBUFFERED=1 timeout 60 python3 "$out/hopper_check.py" "$out/kernels" 2>&1 | tee -a "$res"
echo "exit status: ${PIPESTATUS[0]}" | tee -a "$res"
echo '```' >> "$res"
echo '## (a) mma layout and (c) TFLOP/s' >> "$res"
PYTHONUNBUFFERED=1 timeout 170 python3 "$out/bench.py" --kernels "$out/kernels" --budget-s 120 2>&1 | tee -a "$res"
echo "exit status: ${PIPESTATUS[0]}" | tee -a "$res"
cp "$res" "$back/gpu-results.md"
# (d) the tuner on the GPU: candidates timed by criterion with the CUDA-event measurement
{
  echo
  echo '## (d) autotuning on the GPU (attnforge tune, criterion + CUDA events)'
  echo '```'
} >> "$res"
tune_dir="$(mktemp -d)"
timeout 110 "$out/bin/attnforge" tune --arch sm_90 --out "$tune_dir/reports" --cache "$tune_dir/cache.json" \
  --variant flash_fwd_causal_d128_bf16 --variant flash_fwd_full_d128_bf16 \
  --variant flash_fwd_causal_d64_f16 --variant flash_fwd_document_d128_bf16 2>&1 | tee -a "$res"
echo "exit status: ${PIPESTATUS[0]}" | tee -a "$res"
echo '```' >> "$res"
[ -f "$tune_dir/reports/index.md" ] && cat "$tune_dir/reports/index.md" >> "$res"
tar -czf "$back/tune-reports.tar.gz" -C "$tune_dir" . 2>/dev/null
cp "$res" "$back/gpu-results.md"
echo "results: $res (and $back/gpu-results.md)"
