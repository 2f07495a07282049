// attnforge device prelude: the platform layer shared by every generated kernel.
// Under NVRTC (no ATTNFORGE_SIM) it includes the CUDA half/bfloat16 headers and defines
// the shared-memory macros, the work counters (no-ops) and the af_* PTX wrappers with
// real inline asm. Under the CPU simulator (g++ -include afsim.hpp, which defines
// ATTNFORGE_SIM) the shim provides all of these and this block is skipped.
#ifndef ATTNFORGE_SIM
#include <cuda_fp16.h>
#include <cuda_bf16.h>

// NVRTC has no <math.h>: +infinity as a bit pattern.
#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

// Static shared array: AF_SHARED(float, tile, 64 * 65);
#define AF_SHARED(type, name, count) __shared__ type name[count]
// Dynamic shared memory (size given at launch), 16-byte aligned for cp.async.
#define AF_DYNAMIC_SHARED(type, name) extern __shared__ __align__(16) type name[]
// A typed view of `count` elements of `type` at element `offset` of a shared array (carves
// the dynamic region into tiles). The simulator bounds-, poison- and race-checks `name[i]`.
#define AF_SHARED_VIEW(type, name, base, offset, count) type* name = reinterpret_cast<type*>(&(base)[offset])

// Work counters are summed per launch by the simulator; on a GPU they cost nothing.
enum af_counter {
    AF_CTR_TILE_FULL = 0,
    AF_CTR_TILE_PARTIAL = 1,
    AF_CTR_MASK_EVAL = 2,
    AF_CTR_KEYS_GATHERED = 3,
    AF_CTR_SELECT_WORK = 4
};
#define AF_COUNT(counter, n) ((void)0)

// ---- PTX wrappers (real asm; the simulator emulates the same signatures) ----

// D = A * B + C, m16n8k16, row.col, f16 inputs, f32 accumulators (PTX ISA fragment layout).
__device__ __forceinline__ void af_mma_m16n8k16_f16(float* d, const unsigned* a, const unsigned* b, const float* c) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]),
          "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
}

// Same with bf16 inputs.
__device__ __forceinline__ void af_mma_m16n8k16_bf16(float* d, const unsigned* a, const unsigned* b, const float* c) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]),
          "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
}

// The shared-window address of a pointer into shared memory (32 bits).
__device__ __forceinline__ unsigned af_smem_addr(const void* p) {
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// Four 8x8 b16 matrices from shared memory; lane l supplies the row address of matrix l/8.
__device__ __forceinline__ void af_ldmatrix_x4(unsigned* r, const void* smem_row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(af_smem_addr(smem_row)));
}

// Same, transposed.
__device__ __forceinline__ void af_ldmatrix_x4_trans(unsigned* r, const void* smem_row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(af_smem_addr(smem_row)));
}

// The same two at a shared-window address (af_smem_addr): arithmetic on it stays 32-bit, and
// a constant added to it becomes the instruction's immediate offset.
__device__ __forceinline__ void af_ldmatrix_x4_at(unsigned* r, unsigned smem_addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr));
}
__device__ __forceinline__ void af_ldmatrix_x4_trans_at(unsigned* r, unsigned smem_addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr));
}

// Two 8x8 b16 matrices (lanes 0-15 supply row addresses).
__device__ __forceinline__ void af_ldmatrix_x2(unsigned* r, const void* smem_row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(af_smem_addr(smem_row)));
}

// Asynchronous 16-byte global -> shared copy (L2 only), completed by af_cp_async_wait.
__device__ __forceinline__ void af_cp_async_16(void* smem_dst, const void* gmem_src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(af_smem_addr(smem_dst)), "l"(gmem_src));
}

// Same to a shared-window address (af_smem_addr).
__device__ __forceinline__ void af_cp_async_16_at(unsigned smem_dst, const void* gmem_src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_dst), "l"(gmem_src));
}

__device__ __forceinline__ void af_cp_async_commit() {
    asm volatile("cp.async.commit_group;\n" ::);
}

// Wait until at most N committed groups are still pending.
template <int N>
__device__ __forceinline__ void af_cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
// 32-bit store to global memory (a packed pair of 16-bit elements); 4-byte aligned.
__device__ __forceinline__ void af_st_global_b32(void* gmem_dst, unsigned v) {
    *static_cast<unsigned*>(gmem_dst) = v;
}

// A kernel precondition the host launch checks first: on violation the launch fails
// (`__trap`) instead of computing garbage or faulting somewhere else.
__device__ __forceinline__ void af_require(bool ok, const char* what) {
    (void)what;
    if (!ok) __trap();
}

// x, hidden from the compiler's value tracking: a per-lane offset computed once stays in a
// register (instead of being recomputed from the thread index at every use), and sums with
// it stay additions, whose constants fold into the address of a load.
__device__ __forceinline__ int af_opaque(int x) {
    int y;
    asm("mov.b32 %0, %1;" : "=r"(y) : "r"(x));
    return y;
}
#else
__device__ __forceinline__ int af_opaque(int x) { return x; }
#endif  // ATTNFORGE_SIM

// ---- paged KV cache (variants.md section 13) ----
// log2 of a page size (a power of two in 1..1024, checked on the host).
__device__ __forceinline__ int af_page_shift(int page_size) {
    int s = 0;
    while ((1 << s) < page_size) ++s;
    return s;
}
// The cache row of key kv of a sequence whose block-table row is `pages`: slot
// kv % page_size of page pages[kv / page_size].
__device__ __forceinline__ long long af_page_row(const int* pages, int page_shift, long long kv) {
    return ((long long)pages[kv >> page_shift] << page_shift) | (kv & ((1 << page_shift) - 1));
}
