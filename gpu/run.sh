#!/usr/bin/env bash
# The GPU check (run on the device machine from the repository root, with gpu/out carried):
# (h) the simulator's Hopper emulation (wgmma shapes and swizzles, TMA + mbarrier + setmaxnreg)
# against the hardware, (b) the tensor-core and warpgroup-MMA property tests on the GPU
# backend, (b2) `attnforge check --all --backend cuda`, (a) mma/ldmatrix fragment layouts and
# (c) forward TFLOP/s of our kernels vs PyTorch SDPA and FlexAttention, (c2) the sm_90a
# warpgroup-MMA kernels next to the default tile and SDPA, (d) the autotuner measuring
# candidates with CUDA events (criterion) on a few kernels.
# (sv) the serving kernels (decode with split-KV and the merge, paged prefill) against the
# reference: `attnforge check --layout decode|paged --all --backend cuda` (on request).
# (bw) the backward kernels against the reference and timed, (b3) `attnforge check --backward
# --all --backend cuda`.
# (pt) attnforge.torch on CUDA tensors (in place, PyTorch's stream) against the CPU reference:
# the wheel of gpu/out/wheel installed into a temporary folder (needs torch and numpy there).
# PARTS selects and orders the parts (default: "h b b2 c c2 d"; bw, b3, sv, pt on request); each is
# time-boxed (40 + 200 + 120 + 170 + 100 + 110 s; bw 90, b3 150, sv 120, pt 120): pick a subset that fits the
# device tool's 10 minutes per command, e.g. PARTS="h b c2 d" (about 7.5 minutes at most).
# Results: docs/gpu-results/<date>-<device>.md, copied to $OUT (the device tool brings $OUT
# back) with the tuner's reports as one archive.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$root/gpu/out"
back="${OUT:-$root/gpu/results}"
parts="${PARTS:-h b b2 c c2 d}"
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
  echo "# GPU check $date_s on $device (parts: $parts)"
  echo
  echo "Driver: $(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n1);"
  echo "CUDA toolkit for NVRTC: $ATTNFORGE_CUDA_HOME ($(ls "$ATTNFORGE_CUDA_HOME"/lib64/libnvrtc.so.* 2>/dev/null | head -n1))."
} > "$res"

# part <title> <seconds> <command...>: one time-boxed part, its output fenced into the results
part() {
  local title="$1" secs="$2"
  shift 2
  { echo; echo "## $title"; echo '```'; } >> "$res"
  PYTHONUNBUFFERED=1 timeout "$secs" "$@" 2>&1 | tee -a "$res"
  echo "exit status: ${PIPESTATUS[0]}" | tee -a "$res"
  echo '```' >> "$res"
  cp "$res" "$back/gpu-results.md"
}

tune_dir="$(mktemp -d)"
for p in $parts; do
  case "$p" in
    h) part "(h) Hopper helpers vs the hardware" 40 python3 "$out/hopper_check.py" "$out/kernels" ;;
    b) part "(b) property tests on exec::Backend::Cuda(0)" 200 "$out/bin/gpu_tests" --nocapture --test-threads=5 ;;
    b2) part "(b2) attnforge check --all --backend cuda" 120 "$out/bin/attnforge" check --all --backend cuda ;;
    bw) part "(bw) backward kernels: gpu_backward (vs the reference, then timed)" 90 "$out/bin/gpu_tests" gpu_backward --nocapture ;;
    b3) part "(b3) attnforge check --backward --all --backend cuda" 150 "$out/bin/attnforge" check --backward --all --backend cuda ;;
    sv) part "(sv) serving kernels: attnforge check --layout decode / paged --all --backend cuda" 120 \
          sh -c "\"$out/bin/attnforge\" check --layout decode --all --backend cuda; \"$out/bin/attnforge\" check --layout paged --all --backend cuda" ;;
    pt)
      pt_dir="$(mktemp -d)"
      python3 -m pip install -q --no-deps --target "$pt_dir" "$out"/wheel/*.whl >/dev/null
      part "(pt) attnforge.torch on CUDA tensors vs the CPU reference" 120 \
        env PYTHONPATH="$pt_dir" python3 "$out/torch_cuda_check.py"
      ;;
    c) part "(a) mma layout and (c) TFLOP/s" 170 python3 "$out/bench.py" --kernels "$out/kernels" --budget-s 120 ;;
    c2) part "(c2) warpgroup-MMA (sm_90a) kernels" 100 python3 "$out/bench.py" --wgmma-only --kernels "$out/kernels" ;;
    d)
      part "(d) autotuning on the GPU (attnforge tune, criterion + CUDA events)" 110 \
        "$out/bin/attnforge" tune --arch sm_90 --out "$tune_dir/reports" --cache "$tune_dir/cache.json" \
        --variant flash_fwd_causal_d128_bf16 --variant flash_fwd_full_d128_bf16 \
        --variant flash_fwd_causal_d64_f16 --variant flash_fwd_document_d128_bf16
      [ -f "$tune_dir/reports/index.md" ] && cat "$tune_dir/reports/index.md" >> "$res"
      tar -czf "$back/tune-reports.tar.gz" -C "$tune_dir" . 2>/dev/null
      cp "$res" "$back/gpu-results.md"
      ;;
    *) echo "unknown part $p (parts: h b b2 bw b3 sv pt c c2 d)" | tee -a "$res" ;;
  esac
done
echo "results: $res (and $back/gpu-results.md)"
