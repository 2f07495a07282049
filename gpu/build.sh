#!/usr/bin/env bash
# Build everything the GPU check needs into gpu/out/ (run here, on the dev machine):
# the GPU property-test binary, libnvrtc + headers it loads, and the benchmark kernels
# (.cu + launch metadata JSON). Then carry gpu/out to the device and run gpu/run.sh.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$root/gpu/out"
cd "$root"
cargo xtask setup
export CARGO_TARGET_DIR="$root/target/gpu-check"
rm -rf "$out"
mkdir -p "$out/bin" "$out/kernels"
# test binary (release); its path comes from cargo's JSON messages
cargo test --release -p attnforge-codegen --test gpu --no-run --message-format=json \
  | python3 -c 'import json,sys
for l in sys.stdin:
    try: m = json.loads(l)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "gpu":
        print(m["executable"])' > "$out/bin/.path"
cp "$(cat "$out/bin/.path")" "$out/bin/gpu_tests"
rm "$out/bin/.path"
# libnvrtc (about 100 MB) does not fit the 64 MiB carry limit: run.sh points the binary at
# the device's CUDA installation instead (ATTNFORGE_CUDA_HOME).
# benchmark kernels
ATTNFORGE_EMIT_DIR="$out/kernels" cargo test --release -p attnforge-codegen --test gpu emit_bench_kernels
# the simulator's mma fragment check kernel, with the codegen prelude in front
{ cat kernels/codegen/cuda/af_prelude.cuh kernels/codegen/cuda/af_attn.cuh; cat kernels/sim/tests/cuda/mma_check.cu; } > "$out/kernels/mma_check.cu"
cp gpu/run.sh gpu/bench.py "$out/"
du -sh "$out"
