// attnforge tensor-core forward main loop (mma.sync m16n8k16, f32 accumulation; ldmatrix;
// cp.async with STAGES K/V buffers). Per thread block: BM query rows of one (b, h); warp w
// owns query rows [WM w, WM w + WM) of the tile (WM = BM / warps: 16 or 32 rows, one or two
// 16-row slabs, so a K/V fragment feeds one or two mma). Policies: see af_fwd.cuh.
//
// for each key tile of the schedule (the prefetch walk runs STAGES - 1 tiles ahead and
// classifies each tile once for the visit):
//     S = Q K^T per scoring branch; allowed-element bits (partial and edge tiles)
//     S = score(S), masked; online softmax (log2 domain); O += P V (P stays in registers)
// epilogue: O = acc / l, lse = ln(l) + m ln 2

// The element type's mma, pair packing and conversion.
template <typename T> struct af_tc_type;
template <> struct af_tc_type<__half> {
    static __device__ __forceinline__ void mma(float* d, const unsigned* a, const unsigned* b, const float* c) { af_mma_m16n8k16_f16(d, a, b, c); }
    static __device__ __forceinline__ unsigned pack(float lo, float hi) { return af_pack_f16(lo, hi); }
    static __device__ __forceinline__ __half from(float x) { return __float2half_rn(x); }
};
template <> struct af_tc_type<__nv_bfloat16> {
    static __device__ __forceinline__ void mma(float* d, const unsigned* a, const unsigned* b, const float* c) { af_mma_m16n8k16_bf16(d, a, b, c); }
    static __device__ __forceinline__ unsigned pack(float lo, float hi) { return af_pack_bf16(lo, hi); }
    static __device__ __forceinline__ __nv_bfloat16 from(float x) { return __float2bfloat16_rn(x); }
};

// ---- loads, per scoring policy ----
// Q tile -> shared with cp.async (lands with the first committed group); rows past seq_q are zero.
template <class Tile, typename T, class SQ, class Layout>
__device__ __forceinline__ void af_tc_load_q(const af_dot_scoring&, const SQ& sQ, const af_fwd_args<T>& a,
                                             const af_fwd_block<T>& blk, const Layout& layout, int tid, T zero) {
    constexpr int BM = Tile::BM, D = Tile::D, NT = Tile::NT;
    // cp.async needs 16-byte aligned rows: base pointer and row stride a multiple of 8 elements
    const bool vec_q = (((unsigned long long)blk.qb & 15) | (unsigned long long)(a.q_stride_s & 7)) == 0;
    for (int idx = tid; idx < BM * (D / 8); idx += NT) {
        const int r = idx / (D / 8), c = (idx % (D / 8)) * 8;
        const long long row = blk.m0 + r;
        const int off = af_swz<D>(r, c);
        if (row < blk.seq_q && vec_q) {
            af_cp_async_16(&sQ[off], blk.qb + af_q_off(layout, a, blk, row) + c);
        } else {  // unaligned rows (rare): element copies, kept rolled
#pragma unroll 1
            for (int e = 0; e < 8; ++e) sQ[off + e] = row < blk.seq_q ? blk.qb[af_q_off(layout, a, blk, row) + c + e] : zero;
        }
    }
}

// LM-Infinite: Q tile -> shared, rotated at its position (branch 0, near) and at Deff (branch 1,
// far) through registers; rows past seq_q are zero. RoPE per element pair, kept rolled: one copy
// of the rotation code.
template <class Tile, typename T, class SQ, class Layout>
__device__ __forceinline__ void af_tc_load_q(const af_lminf_scoring& sc, const SQ& sQ, const af_fwd_args<T>& a,
                                             const af_fwd_block<T>& blk, const Layout& layout, int tid, T) {
    constexpr int BM = Tile::BM, D = Tile::D, NT = Tile::NT;
    using TT = af_tc_type<T>;
#pragma unroll 1
    for (int idx = tid; idx < BM * (D / 2); idx += NT) {
        const int r = idx / (D / 2), m = idx % (D / 2);
        const long long row = blk.m0 + r;
        float x0 = 0.f, x1 = 0.f;
        if (row < blk.seq_q) {
            x0 = af_to_float(blk.qb[af_q_off(layout, a, blk, row) + m]);
            x1 = af_to_float(blk.qb[af_q_off(layout, a, blk, row) + m + D / 2]);
        }
        float y0, y1;
        sc.rotate_q(x0, x1, y0, y1, af_q_pos(layout, blk, row), m, D);
        const int o0 = af_swz<D>(r, m), o1 = af_swz<D>(r, m + D / 2);
        sQ[o0] = TT::from(x0);
        sQ[o1] = TT::from(x1);
        sQ[BM * D + o0] = TT::from(y0);
        sQ[BM * D + o1] = TT::from(y1);
    }
}

// Whether K and V rows can go through cp.async (16-byte aligned base pointers and row strides).
template <typename T>
__device__ __forceinline__ bool af_tc_kv_vector(const af_dot_scoring&, const af_fwd_args<T>& a, const af_fwd_block<T>& blk) {
    return ((((unsigned long long)blk.kb | (unsigned long long)blk.vb) & 15) | (unsigned long long)((a.k_stride_s | a.v_stride_s) & 7)) == 0;
}
// LM-Infinite rotates K through registers: only V goes through cp.async.
template <typename T>
__device__ __forceinline__ bool af_tc_kv_vector(const af_lminf_scoring&, const af_fwd_args<T>& a, const af_fwd_block<T>& blk) {
    return (((unsigned long long)blk.vb & 15) | (unsigned long long)(a.v_stride_s & 7)) == 0;
}

// This thread's share of a K/V tile copy: 16-byte chunk column c of rows j0, j0 + RPP, ...
// (RPP = threads / chunks per row), one row per pass. Built once per block, so an interior
// tile's copies go from the tile's row pointer, pass p at p pass bytes (a 32-bit step held in
// one register; NVVM chains the passes, an add with carry each), into shared-window addresses
// that are compile-time steps from the stage's (rows 8 apart share their swizzle: the
// cp.async's immediate). Strides whose pass step is not a 32-bit byte count take the rolled
// path.
template <class Tile, typename T>
struct af_tc_kv_plan {
    static constexpr int CPR = Tile::D / 8;  // 16-byte chunks per row
    static constexpr bool PASSED = Tile::NT % CPR == 0 && (Tile::BN * CPR) % Tile::NT == 0;
    static constexpr int RPP = PASSED ? Tile::NT / CPR : 1;  // rows per pass
    static constexpr int PASSES = PASSED ? Tile::BN / RPP : 0;
    const char* k;         // this thread's first chunk of key row 0 (row j0, column c)
    const char* v;
    long long k_row;       // bytes between key rows
    long long v_row;
    unsigned k_pass;       // bytes between one pass's row and the next (RPP rows)
    unsigned v_pass;
    bool fast;             // interior tiles take the passes: cp.async-able rows, 32-bit steps
    int j0, c, soff;       // first row, chunk column (elements), shared offset in a stage
    // shared offset of pass p's chunk from pass 0's (a constant when RPP is a multiple of 8)
    __device__ __forceinline__ int off(int p) const {
        if constexpr (RPP % 8 == 0) return p * RPP * Tile::D;
        else return af_swz<Tile::D>(j0 + p * RPP, c) - soff;
    }
};
// Whether a pass step of RPP rows of `stride` elements is a 32-bit byte count.
template <class P, typename T>
__device__ __forceinline__ bool af_tc_pass_fits(long long stride) {
    return stride >= 0 && stride <= 0xffffffffll / (P::RPP * (long long)sizeof(T));
}
template <class Tile, typename T, class Scoring>
__device__ __forceinline__ af_tc_kv_plan<Tile, T> af_tc_kv_plan_of(const Scoring& sc, const af_fwd_args<T>& a,
                                                                   const af_fwd_block<T>& blk, int tid) {
    using P = af_tc_kv_plan<Tile, T>;
    af_tc_kv_plan<Tile, T> pl;
    pl.j0 = tid / P::CPR;
    pl.c = (tid % P::CPR) * 8;
    pl.soff = af_swz<Tile::D>(pl.j0, pl.c);
    pl.k = reinterpret_cast<const char*>(blk.kb + pl.j0 * a.k_stride_s + pl.c);
    pl.v = reinterpret_cast<const char*>(blk.vb + pl.j0 * a.v_stride_s + pl.c);
    pl.k_row = a.k_stride_s * (long long)sizeof(T);
    pl.v_row = a.v_stride_s * (long long)sizeof(T);
    pl.k_pass = (unsigned)(P::RPP * pl.k_row);
    pl.v_pass = (unsigned)(P::RPP * pl.v_row);
    pl.fast = P::PASSED && af_tc_kv_vector(sc, a, blk) && af_tc_pass_fits<P, T>(a.k_stride_s) &&
              af_tc_pass_fits<P, T>(a.v_stride_s);
    return pl;
}

// Whether tile t0 takes the interior copy path: every row in range (t0 < seq_k, an int), the
// plan's passes usable, and key rows contiguous (a paged cache takes the per-chunk path
// through the page table).
template <class Tile, typename T, class Layout>
__device__ __forceinline__ bool af_tc_kv_interior(const af_fwd_block<T>& blk, const Layout&, const af_tc_kv_plan<Tile, T>& pl,
                                                  long long t0) {
    return Layout::CONTIGUOUS_KV && pl.fast && (unsigned)t0 + Tile::BN <= (unsigned)blk.seq_k;
}

// The plan's cp.async passes of one K, V tile whose BN key rows are contiguous from row r
// (an interior tile, or a paged tile inside one page) into stage st: no bounds or alignment
// tests, the plan vouched for them.
template <class Tile, typename T, class SK, class SV>
__device__ __forceinline__ void af_tc_copy_passes(const SK& sK, const SV& sV, const af_tc_kv_plan<Tile, T>& pl, unsigned r,
                                                  int st) {
    constexpr int BN = Tile::BN, D = Tile::D;
    const char* const kp = pl.k + r * pl.k_row;
    const char* const vp = pl.v + r * pl.v_row;
    const unsigned dk = af_smem_addr(&sK[st * BN * D + pl.soff]);
    const unsigned dv = af_smem_addr(&sV[st * BN * D + pl.soff]);
#pragma unroll
    for (int p = 0; p < af_tc_kv_plan<Tile, T>::PASSES; ++p) {
        af_cp_async_16_at(dk + pl.off(p) * (int)sizeof(T), kp + (unsigned long long)pl.k_pass * p);
        af_cp_async_16_at(dv + pl.off(p) * (int)sizeof(T), vp + (unsigned long long)pl.v_pass * p);
    }
}

// K, V tile t0 -> stage st with cp.async (16-byte chunks); rows past seq_k are zero.
// Interior tiles: the plan's pointers, no bounds or alignment tests. Edge tiles (the last,
// partial one) and unaligned tensors: per-chunk index math and guards, kept rolled.
// vec_kv, tid and zero come by reference like the other loop invariants: passed by value,
// NVVM lays out this loop's branches differently and the main loop gets more instructions.
template <class Tile, typename T, class SK, class SV, class Layout>
__device__ __forceinline__ void af_tc_load_kv(const af_dot_scoring&, const SK& sK, const SV& sV, const af_fwd_args<T>& a,
                                              const af_fwd_block<T>& blk, const Layout& layout, const af_tc_kv_plan<Tile, T>& pl,
                                              long long t0, int st, const bool& vec_kv, const int& tid, const T& zero) {
    constexpr int BN = Tile::BN, D = Tile::D, NT = Tile::NT;
    if (af_tc_kv_interior<Tile>(blk, layout, pl, t0)) {
        af_tc_copy_passes<Tile, T>(sK, sV, pl, (unsigned)t0, st);
        return;
    }
    if constexpr (!Layout::CONTIGUOUS_KV) {
        // a paged tile within one page: one block-table entry, then the plan's passes from it.
        // The slot is a 32-bit index: a cache of 2^32 slots (>= 128 bytes each) would not fit
        // in a GPU's memory.
        long long r0;
        if (pl.fast && (unsigned)t0 + BN <= (unsigned)blk.seq_k && af_kv_tile_row<BN>(layout, blk, t0, r0)) {
            af_tc_copy_passes<Tile, T>(sK, sV, pl, (unsigned)r0, st);
            return;
        }
    }
#pragma unroll 1
    for (int idx = tid; idx < BN * (D / 8); idx += NT) {
        const int j = idx / (D / 8), c = (idx % (D / 8)) * 8;
        const long long kv = t0 + j;
        const int off = st * BN * D + af_swz<D>(j, c);
        const long long row = Layout::CONTIGUOUS_KV ? kv : kv < blk.seq_k ? layout.kv_row(blk, kv) : 0;
        if (kv < blk.seq_k && vec_kv) {
            af_cp_async_16(&sK[off], blk.kb + row * a.k_stride_s + c);
            af_cp_async_16(&sV[off], blk.vb + row * a.v_stride_s + c);
        } else {  // unaligned rows (rare): element copies, kept rolled
#pragma unroll 1
            for (int e = 0; e < 8; ++e) {
                sK[off + e] = kv < blk.seq_k ? blk.kb[row * a.k_stride_s + c + e] : zero;
                sV[off + e] = kv < blk.seq_k ? blk.vb[row * a.v_stride_s + c + e] : zero;
            }
        }
    }
}

// LM-Infinite: K tile t0 -> stage st rotated at its position (branch 0) and un-rotated
// (branch 1, STAGES * BN * D elements further), through registers; V with cp.async.
template <class Tile, typename T, class SK, class SV, class Layout>
__device__ __forceinline__ void af_tc_load_kv(const af_lminf_scoring& sc, const SK& sK, const SV& sV, const af_fwd_args<T>& a,
                                              const af_fwd_block<T>& blk, const Layout& layout, const af_tc_kv_plan<Tile, T>& pl,
                                              long long t0, int st, const bool& vec_v, const int& tid, const T& zero) {
    constexpr int BN = Tile::BN, D = Tile::D, NT = Tile::NT, RAW = Tile::STAGES * Tile::BN * Tile::D;
    using TT = af_tc_type<T>;
    // RoPE per element pair, kept rolled: one copy of the rotation code
#pragma unroll 1
    for (int idx = tid; idx < BN * (D / 2); idx += NT) {
        const int j = idx / (D / 2), m = idx % (D / 2);
        const long long kv = t0 + j;
        float x0 = 0.f, x1 = 0.f;
        if (kv < blk.seq_k) {
            const long long row = layout.kv_row(blk, kv);
            x0 = af_to_float(blk.kb[row * a.k_stride_s + m]);
            x1 = af_to_float(blk.kb[row * a.k_stride_s + m + D / 2]);
        }
        const int o0 = st * BN * D + af_swz<D>(j, m), o1 = st * BN * D + af_swz<D>(j, m + D / 2);
        sK[RAW + o0] = TT::from(x0);
        sK[RAW + o1] = TT::from(x1);
        sc.rotate_k(x0, x1, kv, m, D);
        sK[o0] = TT::from(x0);
        sK[o1] = TT::from(x1);
    }
    if (af_tc_kv_interior<Tile>(blk, layout, pl, t0)) {
        const char* const vp = pl.v + (unsigned)t0 * pl.v_row;
        const unsigned dv = af_smem_addr(&sV[st * BN * D + pl.soff]);
#pragma unroll
        for (int p = 0; p < af_tc_kv_plan<Tile, T>::PASSES; ++p)
            af_cp_async_16_at(dv + pl.off(p) * (int)sizeof(T), vp + (unsigned long long)pl.v_pass * p);
        return;
    }
#pragma unroll 1
    for (int idx = tid; idx < BN * (D / 8); idx += NT) {
        const int j = idx / (D / 8), c = (idx % (D / 8)) * 8;
        const long long kv = t0 + j;
        const int off = st * BN * D + af_swz<D>(j, c);
        const long long row = Layout::CONTIGUOUS_KV ? kv : kv < blk.seq_k ? layout.kv_row(blk, kv) : 0;
        if (kv < blk.seq_k && vec_v) {
            af_cp_async_16(&sV[off], blk.vb + row * a.v_stride_s + c);
        } else {  // unaligned rows (rare): element copies, kept rolled
#pragma unroll 1
            for (int e = 0; e < 8; ++e) sV[off + e] = kv < blk.seq_k ? blk.vb[row * a.v_stride_s + c + e] : zero;
        }
    }
}

// A lane's ldmatrix row addresses in a swizzled [rows][D] tile (af_swz) of 16-bit elements, as
// shared-window addresses (af_smem_addr), at each pair of 16-byte chunks kk (columns
// 16 kk + 8 b): the address of af_swz<D>(row + 8 n, 16 kk + 8 b) is at(kk) + 16 n D bytes. The
// swizzle XORs the chunk index with row & 7, so pair kk's offset depends on kk & 3 only, plus
// 128 bytes (kk >> 2): four per-lane addresses, computed once per block (a K/V stage moves
// them by a per-tile constant, `plus`), make every fragment address of a tile one of them plus
// a compile-time offset: the ldmatrix's immediate, no address arithmetic per load.
template <int D>
struct af_tc_frag_addr {
    unsigned o[4];
    __device__ __forceinline__ unsigned at(int kk) const { return o[kk & 3] + (kk >> 2) * 128; }
    __device__ __forceinline__ af_tc_frag_addr plus(unsigned bytes) const {
        af_tc_frag_addr f;
#pragma unroll
        for (int m = 0; m < 4; ++m) f.o[m] = o[m] + bytes;
        return f;
    }
};
// ... of the tile at element 0 of `s`
template <int D, class S>
__device__ __forceinline__ af_tc_frag_addr<D> af_tc_frag_addr_of(const S& s, int row, int b) {
    static_assert(D >= 64, "a period of 4 chunk pairs needs 8 chunks per row");
    af_tc_frag_addr<D> f;
#pragma unroll
    for (int m = 0; m < 4; ++m) f.o[m] = (unsigned)af_opaque((int)af_smem_addr(&s[af_swz<D>(row, 16 * m + 8 * b)]));
    return f;
}

// S += Q K^T on tensor cores for one warp's SL 16-row slabs (C fragments of slab sl are
// s[sl NT8 ..]), from swizzled shared tiles (qa, ka: the lane's fragment row addresses in the
// Q tile and the K tile). Each K fragment feeds SL pairs of mma. The
// loop over the head dimension is fully unrolled.
template <class Tile, int SL, typename T>
__device__ __forceinline__ void af_tc_qk(float (&s)[SL * Tile::BN / 8][4], const af_tc_frag_addr<Tile::D>& qa, const af_tc_frag_addr<Tile::D>& ka) {
    constexpr int D = Tile::D, NT8 = Tile::BN / 8;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
        unsigned qf[SL][4];  // A fragments: lane gives row WM warp + 16 sl + (lane & 15), k chunk lane >> 4
#pragma unroll
        for (int sl = 0; sl < SL; ++sl) af_ldmatrix_x4_at(qf[sl], qa.at(kk) + sl * 32 * D);
#pragma unroll
        for (int np = 0; np < NT8 / 2; ++np) {
            unsigned kb[4];  // B fragments of n8 tiles 2 np, 2 np + 1 (key rows are B columns)
            af_ldmatrix_x4_at(kb, ka.at(kk) + np * 32 * D);
#pragma unroll
            for (int sl = 0; sl < SL; ++sl) {
                af_tc_type<T>::mma(s[sl * NT8 + 2 * np], qf[sl], kb, s[sl * NT8 + 2 * np]);
                af_tc_type<T>::mma(s[sl * NT8 + 2 * np + 1], qf[sl], kb + 2, s[sl * NT8 + 2 * np + 1]);
            }
        }
    }
}

template <class Tile, typename T, class Schedule, class BlockHooks, class Scoring, class Layout = af_dense_layout,
          class Stats = af_no_stats>
__device__ __forceinline__ void af_fwd_tc(const af_fwd_args<T>& a, const Schedule& schedule, const BlockHooks& block_hooks,
                                          const Scoring& scoring, const Layout& layout = Layout{}, const Stats& stats = Stats{}) {
    constexpr int BM = Tile::BM, BN = Tile::BN, D = Tile::D, STAGES = Tile::STAGES;
    constexpr int WM = BM / Tile::NW;  // query rows per warp
    constexpr int SL = WM / 16;        // 16-row slabs per warp
    constexpr int NT8 = BN / 8;        // n8 tiles of S per slab (C fragments)
    constexpr int DT8 = D / 8;         // n8 tiles of O per slab
    constexpr int NB = Scoring::BRANCHES;
    using TT = af_tc_type<T>;
    static_assert(BM == WM * Tile::NW && (SL == 1 || SL == 2), "one or two 16-row slabs per warp");
    // [NB][BM][D] Q, [NB][STAGES][BN][D] K, [STAGES][BN][D] V, all swizzled (af_swz)
    AF_DYNAMIC_SHARED(T, af_smem);
    AF_SHARED_VIEW(T, sQ, af_smem, 0, NB * BM * D);
    AF_SHARED_VIEW(T, sK, af_smem, NB * BM * D, NB * STAGES * BN * D);
    AF_SHARED_VIEW(T, sV, af_smem, NB * (BM * D + STAGES * BN * D), STAGES * BN * D);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    af_fwd_block<T> blk;
    if (!layout.template block<BM>(a, blk)) return;  // past its sequence's rows (whole block)
    const Scoring sc = scoring.for_seq(blk.seq_k);
    const auto hooks = af_layout_hooks(layout, block_hooks, blk);  // per row under a packed layout
    const T zero = TT::from(0.f);
    const bool vec_kv = af_tc_kv_vector(sc, a, blk);
    // the row max of raw scores is the max in log2 units only for a positive scale
    af_require(a.scale > 0.f, "scale: must be a finite positive number");
    const float scale_log2 = a.scale * AF_LOG2E;
    const af_tc_kv_plan<Tile, T> kv_plan = af_tc_kv_plan_of<Tile>(sc, a, blk, tid);
    // no query row of the block past seq_q (opaque: one register, not recomputed per tile). A
    // packed (decode) block's rows past its group's tokens hold zero queries whose results are
    // never written, so they do not make its tiles edge tiles: one token of a group of 4 fills
    // 4 of 64 rows, and every tile in range would otherwise take the per-element path.
    const bool rows_full = Layout::PACKED || af_opaque(blk.rows_valid == BM) != 0;
    // ldmatrix row addresses of this lane: Q (A operand) row WM warp + (lane & 15), chunk
    // lane >> 4; K (B operand, key rows) row (lane & 7) + 8 (lane >> 4), chunk (lane >> 3) & 1;
    // V (B operand, transposed) row (lane & 7) + 8 ((lane >> 3) & 1), chunk lane >> 4
    const af_tc_frag_addr<D> q_frag = af_tc_frag_addr_of<D>(sQ, warp * WM + (lane & 15), lane >> 4);
    const af_tc_frag_addr<D> k_frag = af_tc_frag_addr_of<D>(sK, (lane & 7) + ((lane >> 4) << 3), (lane >> 3) & 1);
    const af_tc_frag_addr<D> v_frag = af_tc_frag_addr_of<D>(sV, (lane & 7) + ((lane >> 3) & 1) * 8, lane >> 4);
    af_tc_load_q<Tile>(sc, sQ, a, blk, layout, tid, zero);

    // online softmax state (log2 domain) of this thread's rows: r = 2 sl + h is row g + 8 h
    // (g = lane / 4) of slab sl; the O accumulators, C fragments of the D / 8 output n8 tiles
    // of each slab (acc[sl DT8 + dt])
    float m_i[2 * SL], l_i[2 * SL], acc[SL * DT8][4];
#pragma unroll
    for (int r = 0; r < 2 * SL; ++r) {
        m_i[r] = -INFINITY;
        l_i[r] = 0.f;
    }
#pragma unroll
    for (int dt = 0; dt < SL * DT8; ++dt)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[dt][e] = 0.f;

    const auto tiles = schedule.template tiles<BN>(blk, blk.seq_k);
    auto load_kv = [&](long long t0, int st) { af_tc_load_kv<Tile>(sc, sK, sV, a, blk, layout, kv_plan, t0, st, vec_kv, tid, zero); };
    // pipeline: the prefetch walk runs STAGES - 1 tiles ahead of the visit, one commit group per
    // tile (possibly empty), so wait<STAGES - 2> means "the current tile has landed". Each tile
    // is classified once, by the prefetch walk (a mask's classifier can cost tens of
    // instructions, divisions included): it records the tiles it is ahead by in `ahead`, a
    // ring of STAGES - 1 entries, oldest first, that the visit consumes. An entry is one
    // register, n0 | stage << 2 | kind (n0 < seq_k is an int and a multiple of BN >= 16; the
    // K/V stage the tile was copied to, < 3; kind < 4), 0 for "no more tiles" (kind
    // AF_TILE_SKIP); the ring is shifted by compile-time indices, so it stays in registers,
    // and the stage travels with the tile instead of in a counter of its own (d = 256 tiles
    // run at the 255-register limit).
    long long n0;
    int kind;
    [[maybe_unused]] long long fcur = tiles.first;
    [[maybe_unused]] int ahead[STAGES > 1 ? STAGES - 1 : 1];
    auto prefetch = [&](int st) {  // the next tile of the prefetch walk -> stage st, and its entry
        long long fn0;
        int fkind;
        if (!tiles.next(fcur, fn0, fkind)) return 0;
        load_kv(fn0, st);
        return (int)fn0 | st << 2 | fkind;
    };
    [[maybe_unused]] long long cur = tiles.first;  // the visit's own walk (one stage: no prefetch)
    if constexpr (STAGES > 1) {
#pragma unroll
        for (int st = 0; st < STAGES - 1; ++st) ahead[st] = 0;
#pragma unroll
        for (int st = 0; st < STAGES - 1; ++st) {
            ahead[st] = prefetch(st);
            af_cp_async_commit();
        }
    }
    while (true) {
        int vst = 0;  // the K/V stage of this tile
        if constexpr (STAGES == 1) {
            if (!tiles.next(cur, n0, kind)) break;
        } else {
            if (ahead[0] == 0) break;
            n0 = (unsigned)(ahead[0] & ~15);  // zero-extended: no high word to keep
            vst = (ahead[0] >> 2) & 3;
            kind = ahead[0] & 3;
        }
        const int br = sc.tile_branches(blk.p_lo, blk.p_hi, n0, min(n0 + BN, (long long)blk.seq_k) - 1);
        af_count_tile<BN, decltype(hooks.mask)>(tid, kind, blk, n0, blk.seq_k);
        int kst;  // stage offset of this tile
        if constexpr (STAGES == 1) {
            __syncthreads();  // previous tile's K, V are consumed
            load_kv(n0, 0);
            af_cp_async_commit();
            af_cp_async_wait<0>();
            __syncthreads();  // every thread's copies have landed
            kst = 0;
        } else {
            af_cp_async_wait<STAGES - 2>();  // this thread's copies of this tile have landed
            __syncthreads();  // ... and everyone's; the stage of the previous tile is free again
#pragma unroll
            for (int i = 0; i + 1 < STAGES - 1; ++i) ahead[i] = ahead[i + 1];
            ahead[STAGES - 2] = prefetch((vst + STAGES - 1) % STAGES);
            af_cp_async_commit();
            kst = vst * BN * D;
        }

        // S = Q K^T on tensor cores (f32 accumulation), per warp WM x BN in C fragments (n8
        // tile j of slab sl is s[.][sl NT8 + j]), per scoring branch the tile needs
        float s[NB][SL * NT8][4];
#pragma unroll
        for (int bi = 0; bi < NB; ++bi) {
#pragma unroll
            for (int j = 0; j < SL * NT8; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) s[bi][j][e] = 0.f;
            if ((br >> bi) & 1) {
                // branch bi's Q tile and this tile's K stage (2-byte elements)
                af_tc_qk<Tile, SL, T>(s[bi], q_frag.plus(bi * BM * D * 2), k_frag.plus((bi * STAGES * BN * D + kst) * 2));
            }
        }

        // The tile's scores go to s[0] as values v whose score in log2 units is v * f. Interior
        // tiles of a kernel without score modification keep the raw dot products: f = scale
        // log2 e is folded into the max (per row) and into the exponent's FFMA, and there is
        // no mask select. Edge and partial tiles, tiles merging scoring branches and score
        // modifications apply scale, score and mask per element (f = log2 e).
        float f = AF_LOG2E;
        // interior: not af_tile_is_edge, with the block's row test hoisted and 32-bit key positions
        const bool interior = rows_full && (unsigned)n0 + BN <= (unsigned)blk.seq_k &&
                              !(decltype(hooks.mask)::active && kind == AF_TILE_PARTIAL) && !(NB > 1 && br == 3);
        if (af_is_identity_score<decltype(hooks.score)>::value && interior) {
            f = scale_log2;
            if constexpr (NB > 1) {
                if (!(br & 1)) {  // one branch, not the near one
#pragma unroll
                    for (int j = 0; j < SL * NT8; ++j)
#pragma unroll
                        for (int e = 0; e < 4; ++e) s[0][j][e] = s[NB - 1][j][e];
                }
            }
        } else {
            // element e of n8 tile j of slab sl of the C fragments is row 16 sl + g + 8 (e >> 1)
            // of the warp's rows, column 8 j + 2 t + (e & 1) (g = lane >> 2, t = lane & 3); it is
            // element 4 (sl NT8 + j) + e of the allowed-element bits
            af_bits_t<SL * NT8 * 4> okb, nearb;
            // rows: r = 2 sl + (e >> 1); key columns: c = 2 (j % NT8) + (e & 1)
            af_element_bits<BM, BN, 2 * SL, 2 * NT8>(
                okb, nearb, hooks.mask, af_row_scoring(layout, sc, blk), kind, br, blk, n0, blk.seq_k,
                [&](int r) { return warp * WM + 16 * (r >> 1) + (lane >> 2) + 8 * (r & 1); },
                [&](int c) { return (c >> 1) * 8 + 2 * (lane & 3) + (c & 1); },
                [](int r, int c) { return 4 * ((r >> 1) * NT8 + (c >> 1)) + 2 * (r & 1) + (c & 1); });
            // score mod and mask bits on the C fragments
#pragma unroll
            for (int j = 0; j < SL * NT8; ++j) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int bit = 4 * j + e;
                    const long long q_pos = blk.m0 + warp * WM + 16 * (j / NT8) + (lane >> 2) + 8 * (e >> 1) + blk.shift;
                    const long long kv_pos = n0 + (j % NT8) * 8 + 2 * (lane & 3) + (e & 1);
                    float x = (NB > 1 && !((nearb >> bit) & 1) ? s[NB - 1][j][e] : s[0][j][e]) * a.scale;  // scaled score
                    if ((okb >> bit) & 1) {
                        x = hooks.score(x, q_pos, kv_pos);
                    } else {
                        x = -INFINITY;  // masked
                    }
                    s[0][j][e] = x;
                }
            }
        }
        // online softmax on the C fragments: the row max of v, then in log2 units (f > 0)
        // (element e of n8 tile j is on row state r = 2 (j / NT8) + (e >> 1))
        float mx[2 * SL];
#pragma unroll
        for (int r = 0; r < 2 * SL; ++r) mx[r] = -INFINITY;
#pragma unroll
        for (int j = 0; j < SL * NT8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) mx[2 * (j / NT8) + (e >> 1)] = fmaxf(mx[2 * (j / NT8) + (e >> 1)], s[0][j][e]);
        float m_use[2 * SL];
#pragma unroll
        for (int r = 0; r < 2 * SL; ++r) {
            // the 4 lanes of a quad share a row
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
            const float m_new = fmaxf(m_i[r], mx[r] * f);
            m_use[r] = m_new == -INFINITY ? 0.f : m_new;  // all masked so far: exp2(-inf) = 0, no NaN
            const float alpha = exp2f(m_i[r] - m_use[r]);
            m_i[r] = m_new;
            l_i[r] *= alpha;
#pragma unroll
            for (int dt = 0; dt < DT8; ++dt) {
                acc[(r >> 1) * DT8 + dt][2 * (r & 1)] *= alpha;
                acc[(r >> 1) * DT8 + dt][2 * (r & 1) + 1] *= alpha;
            }
        }
        // P = exp2(v f - m) (one FFMA) stays in registers; l sums this lane's columns
        // (quad-reduced at the end)
        float (&p)[SL * NT8][4] = s[0];
#pragma unroll
        for (int j = 0; j < SL * NT8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                p[j][e] = exp2f(fmaf(p[j][e], f, -m_use[2 * (j / NT8) + (e >> 1)]));
                l_i[2 * (j / NT8) + (e >> 1)] += p[j][e];
            }

        // O += P V: the C fragments of S (n8 tiles 2 kk, 2 kk + 1 of a slab) are the A fragment
        // of P; each V fragment feeds SL pairs of mma
        const af_tc_frag_addr<D> va = v_frag.plus(kst * 2);
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk) {
            unsigned pa[SL][4];
#pragma unroll
            for (int sl = 0; sl < SL; ++sl) {
                const int j = sl * NT8 + 2 * kk;
                pa[sl][0] = TT::pack(p[j][0], p[j][1]);
                pa[sl][1] = TT::pack(p[j][2], p[j][3]);
                pa[sl][2] = TT::pack(p[j + 1][0], p[j + 1][1]);
                pa[sl][3] = TT::pack(p[j + 1][2], p[j + 1][3]);
            }
#pragma unroll
            for (int dp = 0; dp < D / 16; ++dp) {
                unsigned vf[4];  // B fragments of output n8 tiles 2 dp, 2 dp + 1 (.trans: V rows are k)
                af_ldmatrix_x4_trans_at(vf, va.at(dp) + kk * 32 * D);
#pragma unroll
                for (int sl = 0; sl < SL; ++sl) {
                    TT::mma(acc[sl * DT8 + 2 * dp], pa[sl], vf, acc[sl * DT8 + 2 * dp]);
                    TT::mma(acc[sl * DT8 + 2 * dp + 1], pa[sl], vf + 2, acc[sl * DT8 + 2 * dp + 1]);
                }
            }
        }
    }

    // epilogue: quad-reduce l; O = acc / l in the input dtype, stored as packed 16-bit pairs (one
    // 32-bit store per pair: o rows must be 4-byte aligned); lse = ln(l) + m ln 2; empty rows:
    // O = 0 (acc is 0, inv = 0), lse = -inf
    af_require((((unsigned long long)blk.ob & 3) | (unsigned long long)(a.o_stride_s & 1)) == 0,
               "o: rows must be 4-byte aligned (even o_stride_s, 4-byte aligned o); pass a contiguous output");
#pragma unroll
    for (int r = 0; r < 2 * SL; ++r) {
        l_i[r] += __shfl_xor_sync(0xffffffffu, l_i[r], 1);
        l_i[r] += __shfl_xor_sync(0xffffffffu, l_i[r], 2);
        const long long row = blk.m0 + warp * WM + 16 * (r >> 1) + (lane >> 2) + 8 * (r & 1);
        if (row < blk.seq_q) {
            const bool empty = l_i[r] == 0.f;
            const float inv = empty ? 0.f : 1.f / l_i[r];
            if (af_writes_partial(layout)) {  // a split decode block: f32 partials for the merge
                float* dst = af_o_partial(layout, a, blk, row) + 2 * (lane & 3);
#pragma unroll
                for (int dt = 0; dt < DT8; ++dt) {
                    const float* o = acc[(r >> 1) * DT8 + dt];
                    dst[dt * 8] = o[2 * (r & 1)] * inv;
                    dst[dt * 8 + 1] = o[2 * (r & 1) + 1] * inv;
                }
            } else {
                T* dst = blk.ob + af_o_off(layout, a, blk, row) + 2 * (lane & 3);
#pragma unroll
                for (int dt = 0; dt < DT8; ++dt) {
                    const float* o = acc[(r >> 1) * DT8 + dt];
                    af_st_global_b32(dst + dt * 8, TT::pack(o[2 * (r & 1)] * inv, o[2 * (r & 1) + 1] * inv));
                }
            }
            float* const lse = af_lse_out(layout, a);
            if ((lane & 3) == 0 && lse != nullptr)
                lse[layout.lse_at(a, blk, row)] = empty ? -INFINITY : m_i[r] * AF_LN2 + logf(l_i[r]);
        }
    }
    stats.template sweep<Tile>(a, blk, layout, schedule, hooks, sc);  // statistics policy (af_fwd.cuh)
}
