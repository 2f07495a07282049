#!/usr/bin/env bash
# Build everything the GPU check needs into gpu/out/ (run here, on the dev machine):
# the GPU property-test binary, the release `attnforge` CLI (for the tuner), and the
# benchmark kernels (.cu + launch metadata JSON). Then carry gpu/out to the device and run
# gpu/run.sh. libnvrtc is not carried: the device's CUDA toolkit provides it (run.sh).
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
# the CLI, for part (d): the tuner measuring with CUDA events
cargo build --release -p attnforge --bin attnforge
cp "$CARGO_TARGET_DIR/release/attnforge" "$out/bin/attnforge"
strip "$out/bin/gpu_tests" "$out/bin/attnforge" 2>/dev/null || true
# libnvrtc (about 100 MB) does not fit the 64 MiB carry limit: run.sh points the binaries at
# the device's CUDA toolkit instead (ATTNFORGE_CUDA_HOME, toolkit layout, LD_LIBRARY_PATH).
# benchmark kernels
ATTNFORGE_EMIT_DIR="$out/kernels" cargo test --release -p attnforge-codegen --test gpu emit_bench_kernels
# the simulator's mma fragment check kernel, with the codegen prelude in front
{ cat codegen/cuda/af_prelude.cuh codegen/cuda/af_attn.cuh; cat sim/tests/cuda/mma_check.cu; } > "$out/kernels/mma_check.cu"
# the simulator's Hopper test kernels (wgmma shapes and swizzles; TMA + mbarrier + setmaxnreg),
# with the prelude and af_hopper.cuh in front: part (h), the emulation against the hardware
{
  cat codegen/cuda/af_prelude.cuh codegen/cuda/af_hopper.cuh
  sed -n '1,/^\/\/ TMA: thread 0 loads/p' sim/tests/cuda/hopper.cu | head -n -1
  sed -n '1,/^\/\/ Every non-wgmma helper/p' sim/tests/cuda/hopper_gpu.cu | head -n -1
} > "$out/kernels/hopper_check.cu"
# the Python package (abi3 wheel, release) for part (pt): attnforge.torch on CUDA tensors
CARGO_TARGET_DIR="$root/target/python-release" .toolchain/pyenv/bin/maturin build --release --quiet \
  -m python/Cargo.toml -o "$out/wheel"
cp gpu/run.sh gpu/bench.py gpu/hopper_check.py gpu/torch_cuda_check.py "$out/"
du -sh "$out"
kib=$(du -sk "$out" | cut -f1)
if [ "$kib" -gt $((60 * 1024)) ]; then
  echo "gpu/out is ${kib} KiB: over the 60 MiB budget under the device tool's 64 MiB carry limit" >&2
  exit 1
fi
