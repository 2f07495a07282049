//! Shared helpers and test kernels for the live NVRTC tests.
#![allow(dead_code)]

use std::fmt::Display;

/// Unwraps with the error's Display (which carries the `cargo xtask setup` hint when the
/// toolchain is missing): these tests fail, never skip, without the toolchain.
pub fn ok<T, E: Display>(r: Result<T, E>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    }
}

/// A small kernel with 256 floats of static shared memory (1024 bytes) and one barrier.
pub const SMALL: &str = r#"
extern "C" __global__ void small_k(const float* a, float* o, int n) {
    __shared__ float s[256];
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    s[threadIdx.x] = i < n ? a[i] : 0.0f;
    __syncthreads();
    if (i < n) o[i] = s[255 - threadIdx.x] * 2.0f;
}
"#;

/// A kernel that indexes a 256-float local array with a runtime index: it must get a stack
/// frame of at least 1024 bytes.
pub const SPILLING: &str = r#"
extern "C" __global__ void spill_k(float* o, int n, int idx) {
    float a[256];
    for (int i = 0; i < 256; ++i) a[i] = o[i * n + threadIdx.x];
    o[threadIdx.x] = a[idx & 255];
}
"#;

/// One `mma.sync.m16n8k16` with f16 inputs and f32 accumulators (inline PTX).
pub const MMA: &str = r#"
extern "C" __global__ void mma_k(const unsigned* a, const unsigned* b, float* c) {
    const unsigned* pa = a + threadIdx.x * 4;
    const unsigned* pb = b + threadIdx.x * 2;
    float d0 = 0.f, d1 = 0.f, d2 = 0.f, d3 = 0.f;
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d0), "+f"(d1), "+f"(d2), "+f"(d3)
        : "r"(pa[0]), "r"(pa[1]), "r"(pa[2]), "r"(pa[3]), "r"(pb[0]), "r"(pb[1]));
    float* pc = c + threadIdx.x * 4;
    pc[0] = d0; pc[1] = d1; pc[2] = d2; pc[3] = d3;
}
"#;

/// An attention-like forward kernel (online softmax, K/V tiles in shared memory, warp
/// shuffles), head dim 64, one warp per query row, instantiated for `__half` and
/// `__nv_bfloat16`. Symbols: `attn_test_d64_f16`, `attn_test_d64_bf16`.
pub const ATTENTION: &str = r#"
#include <cuda_fp16.h>
#include <cuda_bf16.h>
// NVRTC has no <cmath>: INFINITY is not predefined.
#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
template <class T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

constexpr int D = 64;        // head dim: 2 values per lane
constexpr int BN = 64;       // keys per tile
constexpr int WARPS = 4;     // query rows per block

template <class T>
__device__ void attn_fwd(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                         T* __restrict__ o, float* __restrict__ lse, int seq_q, int seq_k,
                         float scale, int causal) {
    __shared__ T ks[BN][D];
    __shared__ T vs[BN][D];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int head = blockIdx.y;
    const int row = blockIdx.x * WARPS + warp;
    const long long qoff = ((long long)head * seq_q + row) * D;
    const long long kvoff = (long long)head * seq_k * D;
    const bool active = row < seq_q;
    const int pos = row + (seq_k - seq_q);  // bottom-right aligned position
    float q0 = 0.f, q1 = 0.f;
    if (active) { q0 = to_f(q[qoff + 2 * lane]) * scale; q1 = to_f(q[qoff + 2 * lane + 1]) * scale; }
    float m = -INFINITY, l = 0.f, a0 = 0.f, a1 = 0.f;
    for (int start = 0; start < seq_k; start += BN) {
        // K, V tile -> shared memory
        for (int e = threadIdx.x; e < BN * D; e += WARPS * 32) {
            int r = e / D, c = e % D, j = start + r;
            ks[r][c] = j < seq_k ? k[kvoff + (long long)j * D + c] : from_f<T>(0.f);
            vs[r][c] = j < seq_k ? v[kvoff + (long long)j * D + c] : from_f<T>(0.f);
        }
        __syncthreads();
        for (int r = 0; r < BN; ++r) {
            int j = start + r;
            // s = q . k_j (warp reduction)
            float s = q0 * to_f(ks[r][2 * lane]) + q1 * to_f(ks[r][2 * lane + 1]);
            for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
            bool allowed = j < seq_k && (!causal || j <= pos);
            if (!allowed) continue;
            // online softmax: rescale the running sum and accumulator
            float m_new = fmaxf(m, s);
            float corr = expf(m - m_new), p = expf(s - m_new);
            l = l * corr + p;
            a0 = a0 * corr + p * to_f(vs[r][2 * lane]);
            a1 = a1 * corr + p * to_f(vs[r][2 * lane + 1]);
            m = m_new;
        }
        __syncthreads();
    }
    if (!active) return;
    float inv = l > 0.f ? 1.f / l : 0.f;
    o[qoff + 2 * lane] = from_f<T>(a0 * inv);
    o[qoff + 2 * lane + 1] = from_f<T>(a1 * inv);
    if (lane == 0) lse[(long long)head * seq_q + row] = l > 0.f ? m + logf(l) : -INFINITY;
}

extern "C" __global__ void attn_test_d64_f16(const __half* q, const __half* k, const __half* v,
        __half* o, float* lse, int seq_q, int seq_k, float scale, int causal) {
    attn_fwd<__half>(q, k, v, o, lse, seq_q, seq_k, scale, causal);
}
extern "C" __global__ void attn_test_d64_bf16(const __nv_bfloat16* q, const __nv_bfloat16* k,
        const __nv_bfloat16* v, __nv_bfloat16* o, float* lse, int seq_q, int seq_k, float scale,
        int causal) {
    attn_fwd<__nv_bfloat16>(q, k, v, o, lse, seq_q, seq_k, scale, causal);
}
"#;
