#!/usr/bin/env bash
# Why does the document kernel run 87% of full attention's time while visiting about 40% of
# its key tiles (docs/gpu-results/2026-12-04-NVIDIA-H200.md)? Nsight Compute on the H200:
# instructions executed, duration, occupancy and warp stall reasons of full, causal,
# document and causal_document (bf16, d128, default tile, B=2 Hq=16 S=4096, documents of a
# third). Needs gpu/out from gpu/build.sh; writes $OUT/ncu_<kernel>.txt.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${OUT:-$root/gpu/results}"
mkdir -p "$out"
export ATTNFORGE_CUDA_HOME="${ATTNFORGE_CUDA_HOME:-/usr/local/cuda}"
export LD_LIBRARY_PATH="$ATTNFORGE_CUDA_HOME/lib64:${LD_LIBRARY_PATH:-}"
export ATTNFORGE_MAX_ELEMENTS=1000000000
ncu="$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -n1)"
d="$(mktemp -d)"
python3 - "$d" <<'PY'
import sys, numpy as np
d = sys.argv[1]; r = np.random.default_rng(0)
for n in "qkv":
    np.save(f"{d}/{n}.npy", r.standard_normal((2, 16, 4096, 128), dtype=np.float32))
np.save(f"{d}/doc.npy", (np.arange(4096) // 1365).astype(np.int32))
PY
for k in flash_fwd_full_d128_bf16 flash_fwd_causal_d128_bf16 flash_fwd_document_d128_bf16 flash_fwd_causal_document_d128_bf16; do
  doc=()
  case "$k" in *document*) doc=(--doc "$d/doc.npy");; esac
  timeout 90 "$ncu" --clock-control none -k regex:flash_fwd \
    --section SpeedOfLight --section Occupancy --section WarpStateStats --section LaunchStats \
    --metrics smsp__inst_executed.sum,gpu__time_duration.sum --print-details all \
    "$root/gpu/out/bin/attnforge" run "$k" --dtype bf16 --q "$d/q.npy" --k "$d/k.npy" --v "$d/v.npy" \
    "${doc[@]}" --out "$d/o.npy" --backend cuda > "$out/ncu_$k.txt" 2>&1
  echo "$k: exit $?"
  grep -E "Duration|inst_executed|Warp Cycles Per Issued|Achieved Occupancy|Registers Per|Stall|stall" "$out/ncu_$k.txt" | head -n 20
done
