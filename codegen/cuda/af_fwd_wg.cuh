// attnforge Hopper forward main loop (sm_90a): warpgroup MMA. Per thread block: BM query rows
// of one (b, h), one warpgroup (4 warps, 128 threads) per 64 rows. Each warpgroup computes its
// 64 x BN score tile with wgmma m64nBNk16 (Q and K from shared memory through matrix
// descriptors) and O += P V with wgmma m64nDk16 (P from registers, V from shared memory,
// MN-major). Q, K and V sit in shared memory in wgmma's canonical 128-byte-swizzled layout
// (af_swz128), staged by cp.async in STAGES buffers; the policies are af_fwd.cuh's, unchanged.
//
// The accumulator fragment of wgmma (d_i of af_wgmma_acc<N> at row 16 (warp % 4) + lane / 4 +
// 8 ((i >> 1) & 1), column 8 (i / 4) + 2 (lane % 4) + (i & 1)) is, per warp, the C fragment of
// mma.m16n8k16 over n8 tiles i / 4: the masking and online softmax are those of af_fwd_tc.cuh
// with one 16-row slab per warp, and the C fragments of S pack into the A fragments of P V.
//
// for each key tile j of the schedule (a second cursor runs ahead to prefetch):
//     S = Q K^T (wgmma, shared x shared) [with 3+ stages, issued together with tile j - 1's P V]
//     allowed-element bits (partial and edge tiles); S = score(S), masked; online softmax
//     (log2 domain); O += P V (wgmma, registers x shared) [with 3+ stages: at tile j + 1]
// epilogue: O = acc / l, lse = ln(l) + m ln 2

// The element type's wgmma forms, pair packing and conversion.
template <typename T> struct af_wg_type;
template <> struct af_wg_type<__half> {
    template <int N>
    static __device__ __forceinline__ void qk(af_wgmma_acc<N>& d, unsigned long long a, unsigned long long b, int scale_d) {
        af_wgmma_m64k16_f16_ss<N>(d, a, b, scale_d);
    }
    template <int N>
    static __device__ __forceinline__ void pv(af_wgmma_acc<N>& d, const unsigned* a, unsigned long long b) {
        af_wgmma_m64k16_f16_rs_bmn<N>(d, a, b, 1);
    }
    static __device__ __forceinline__ unsigned pack(float lo, float hi) { return af_pack_f16(lo, hi); }
    static __device__ __forceinline__ __half from(float x) { return __float2half_rn(x); }
};
template <> struct af_wg_type<__nv_bfloat16> {
    template <int N>
    static __device__ __forceinline__ void qk(af_wgmma_acc<N>& d, unsigned long long a, unsigned long long b, int scale_d) {
        af_wgmma_m64k16_bf16_ss<N>(d, a, b, scale_d);
    }
    template <int N>
    static __device__ __forceinline__ void pv(af_wgmma_acc<N>& d, const unsigned* a, unsigned long long b) {
        af_wgmma_m64k16_bf16_rs_bmn<N>(d, a, b, 1);
    }
    static __device__ __forceinline__ unsigned pack(float lo, float hi) { return af_pack_bf16(lo, hi); }
    static __device__ __forceinline__ __nv_bfloat16 from(float x) { return __float2bfloat16_rn(x); }
};

// Element offset of (row, col) in a [ROWS][D] tile of 16-bit elements stored as D / 64 column
// blocks of [ROWS][64]: 128-byte rows, the 16-byte chunk c of row r at chunk c ^ (r % 8) (the
// PTX ISA's 128-byte swizzle; 8-row atoms of 1024 bytes). It is K-major for Q and K (A and B
// of Q K^T) and MN-major for V (B of P V), so one layout and one copy serve all three.
template <int ROWS>
__device__ __forceinline__ int af_swz128(int row, int col) {
    return (col >> 6) * (ROWS * 64) + row * 64 + ((((col >> 3) ^ row) & 7) << 3) + (col & 7);
}

// A [ROWS][D] tile of rows [r0, r0 + ROWS) of src (row stride `stride`) -> the shared view
// dst from element dst0 on (af_swz128) with cp.async; rows at or past `rows` are zero. Rows in range and 16-byte aligned (`vec`): a
// thread copies chunk column tid % (D / 8) of every (NT / (D / 8))-th row, offsets that are
// compile-time steps; otherwise per-chunk guards and element copies (rolled; the edge tile).
template <int ROWS, int D, int NT, class SV, typename T>
__device__ __forceinline__ void af_wg_load_rows(const SV& dst, int dst0, const T* src, long long stride, long long r0,
                                                long long rows, bool vec, int tid, T zero) {
    constexpr int CPR = D / 8;  // 16-byte chunks per row
    if (NT % CPR == 0 && (ROWS * CPR) % NT == 0 && vec && r0 + ROWS <= rows) {
        constexpr int RPP = NT / CPR;  // rows per pass
        const int j0 = tid / CPR, c = (tid % CPR) * 8;
        const T* p = src + (r0 + j0) * stride + c;
#pragma unroll
        for (int pass = 0; pass < ROWS / RPP; ++pass) {
            af_cp_async_16(&dst[dst0 + af_swz128<ROWS>(j0 + pass * RPP, c)], p);
            p += RPP * stride;
        }
        return;
    }
#pragma unroll 1
    for (int idx = tid; idx < ROWS * CPR; idx += NT) {
        const int j = idx / CPR, c = (idx % CPR) * 8;
        const long long r = r0 + j;
        const int off = dst0 + af_swz128<ROWS>(j, c);
        if (r < rows && vec) {
            af_cp_async_16(&dst[off], src + r * stride + c);
        } else {  // past the end, or unaligned rows (rare): element copies
#pragma unroll 1
            for (int e = 0; e < 8; ++e) dst[off + e] = r < rows ? src[r * stride + c + e] : zero;
        }
    }
}

template <class Tile, typename T, class Schedule, class BlockHooks, class Scoring>
__device__ __forceinline__ void af_fwd_wg(const af_fwd_args<T>& a, const Schedule& schedule, const BlockHooks& block_hooks,
                                          const Scoring& sc) {
    constexpr int BM = Tile::BM, BN = Tile::BN, D = Tile::D, STAGES = Tile::STAGES, NT = Tile::NT;
    constexpr int NT8 = BN / 8;  // n8 tiles of S per warp (C fragments)
    constexpr int DT8 = D / 8;   // n8 tiles of O per warp
    using TT = af_wg_type<T>;
    static_assert(BM == 16 * Tile::NW && BM % 64 == 0, "one warpgroup (4 warps) per 64 query rows");
    static_assert(Scoring::BRANCHES == 1, "the wgmma main loop has one scoring branch (LM-Infinite uses af_fwd_tc)");
    static_assert(BN % 16 == 0 && BN <= 128 && D % 64 == 0 && D <= 256, "wgmma tiles: BN <= 128, D in {64, 128, 256}");
    // [BM][D] Q, [STAGES][BN][D] K, [STAGES][BN][D] V, each in af_swz128 layout
    AF_DYNAMIC_SHARED(T, af_smem);
    AF_SHARED_VIEW(T, sQ, af_smem, 0, BM * D);
    AF_SHARED_VIEW(T, sK, af_smem, BM * D, STAGES * BN * D);
    AF_SHARED_VIEW(T, sV, af_smem, BM * D + STAGES * BN * D, STAGES * BN * D);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wg = warp >> 2;
    const af_fwd_block<T> blk = af_fwd_block_of<BM>(a);
    const auto hooks = block_hooks(blk.b, blk.h);
    const T zero = TT::from(0.f);
    af_require(a.scale > 0.f, "scale: must be a finite positive number");
    const float scale_log2 = a.scale * AF_LOG2E;
    const bool vec_q = (((unsigned long long)blk.qb & 15) | (unsigned long long)(a.q_stride_s & 7)) == 0;
    const bool vec_kv = ((((unsigned long long)blk.kb | (unsigned long long)blk.vb) & 15) |
                         (unsigned long long)((a.k_stride_s | a.v_stride_s) & 7)) == 0;
    af_wg_load_rows<BM, D, NT>(sQ, 0, blk.qb, a.q_stride_s, blk.m0, a.seq_q, vec_q, tid, zero);

    // Matrix descriptors (128-byte swizzle, 8-row atoms SBO = 1024 bytes apart): this
    // warpgroup's 64 Q rows, K and V at stage 0. An operand further on is the same descriptor
    // plus its byte offset / 16 (the start-address field, bits 0-13). Q and K are K-major
    // (k-step kk: column block kk / 4, 32 bytes per k16 inside the 128-byte row); V is
    // MN-major: LBO = BN * 128 bytes between its 64-column blocks, k-step kk 16 key rows
    // (2048 bytes) further.
    const unsigned long long desc_q = af_wgmma_desc(&sQ[wg * 64 * 64], 16, 1024, 128);
    const unsigned long long desc_k = af_wgmma_desc(&sK[0], 16, 1024, 128);
    const unsigned long long desc_v = af_wgmma_desc(&sV[0], BN * 128, 1024, 128);

    // online softmax state (log2 domain) of this thread's rows r = 0, 1: rows g + 8 r of the
    // warp's 16 (g = lane / 4); O accumulators: element 4 dt + e of the D / 8 output n8 tiles
    float m_i[2] = {-INFINITY, -INFINITY}, l_i[2] = {0.f, 0.f};
    af_wgmma_acc<D> o;
    af_wgmma_acc<BN> s;  // overwritten by each tile's first k-step (scale_d = 0)
#pragma unroll
    for (int i = 0; i < D / 2; ++i) o[i] = 0.f;
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) s[i] = 0.f;

    const auto tiles = schedule.template tiles<BN>(blk, a.seq_k);
    auto load_kv = [&](long long t0, int st) {
        af_wg_load_rows<BN, D, NT>(sK, st * BN * D, blk.kb, a.k_stride_s, t0, a.seq_k, vec_kv, tid, zero);
        af_wg_load_rows<BN, D, NT>(sV, st * BN * D, blk.vb, a.v_stride_s, t0, a.seq_k, vec_kv, tid, zero);
    };
    // With 3+ stages the loop is software-pipelined by one tile (FA3's intra-warpgroup
    // overlap): tile j's Q K^T and tile j - 1's P V are issued together, and tile j's softmax
    // runs while P V is in flight; O's rescale waits for it. V of tile j - 1 is then read while
    // tile j is current, so the prefetch runs STAGES - 2 tiles ahead (never into those two
    // stages). With 1 or 2 stages each tile's P V completes inside its iteration.
    constexpr bool OVERLAP = STAGES >= 3;
    constexpr int AHEAD = OVERLAP ? STAGES - 2 : STAGES - 1;  // prefetch distance in tiles
    // the cursor of the prefetch walk runs AHEAD tiles ahead; one commit group per tile
    // (possibly empty), so wait<AHEAD - 1> means "the current tile has landed"
    long long cur = tiles.first, n0;
    [[maybe_unused]] long long fcur = tiles.first, fn0;
    int kind;
    [[maybe_unused]] int fkind, it = 0;
    if constexpr (AHEAD > 0) {
#pragma unroll
        for (int st = 0; st < AHEAD; ++st) {
            if (tiles.next(fcur, fn0, fkind)) load_kv(fn0, st);
            af_cp_async_commit();
        }
    }
    unsigned pa[BN / 16][4];  // P of the last softmaxed tile: A fragments of P V (k-step kk)
    float alpha[2];           // its rescale of O, applied once O's previous P V has completed
    int pv_kst = -1;          // stage offset of that tile's V; -1: no P V pending
    // O += P V: BN / 16 k-steps of wgmma m64nDk16 (issued, committed, not waited for)
    auto issue_pv = [&](int vst) {
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk) TT::template pv<D>(o, pa[kk], desc_v + (vst + kk * 16 * 64) / 8);
        af_wgmma_commit_group();
    };
    while (tiles.next(cur, n0, kind)) {
        const int br = sc.tile_branches(blk.p_lo, blk.p_hi, n0, min(n0 + BN, (long long)a.seq_k) - 1);
        af_count_tile<BN, decltype(hooks.mask)>(tid, kind, blk, n0, a.seq_k);
        int kst;  // stage offset of this tile
        if constexpr (AHEAD == 0) {
            __syncthreads();  // previous tile's K, V are consumed
            load_kv(n0, 0);
            af_cp_async_commit();
            af_cp_async_wait<0>();
            af_fence_proxy_async();  // cp.async wrote through the generic proxy; wgmma reads through the async one
            __syncthreads();
            kst = 0;
        } else {
            af_cp_async_wait<AHEAD - 1>();  // this thread's copies of tile `it` have landed
            af_fence_proxy_async();         // ... visible to wgmma (the async proxy)
            __syncthreads();                // ... everyone's; the stage being refilled is consumed
            if (tiles.next(fcur, fn0, fkind)) load_kv(fn0, (it + AHEAD) % STAGES);
            af_cp_async_commit();
            kst = (it % STAGES) * BN * D;
            ++it;
        }

        // S = Q K^T: D / 16 k-steps of wgmma m64nBNk16, one commit group; then (overlapped)
        // the previous tile's P V
        af_wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
            const int q_off = (kk >> 2) * BM * 64 + (kk & 3) * 16, k_off = kst + (kk >> 2) * BN * 64 + (kk & 3) * 16;
            TT::template qk<BN>(s, desc_q + q_off / 8, desc_k + k_off / 8, kk > 0);
        }
        af_wgmma_commit_group();
        if (OVERLAP && pv_kst >= 0) {
            issue_pv(pv_kst);
            af_wgmma_wait_group<1>();  // S has landed (groups complete in order); P V in flight
        } else {
            af_wgmma_wait_group<0>();
        }

        // The tile's scores as values v whose score in log2 units is v * f (see af_fwd_tc):
        // interior tiles without score modification keep the raw dot products.
        float f = AF_LOG2E;
        if (af_is_identity_score<decltype(hooks.score)>::value &&
            !af_tile_is_edge<BM, BN, decltype(hooks.mask), Scoring>(kind, br, blk, n0, a.seq_k)) {
            f = scale_log2;
        } else {
            af_bits_t<NT8 * 4> okb, nearb;
            // rows r = e >> 1, key columns c = 2 j + (e & 1) of element e of n8 tile j
            af_element_bits<BM, BN, 2, 2 * NT8>(
                okb, nearb, hooks.mask, sc, kind, br, blk, n0, a.seq_k,
                [&](int r) { return warp * 16 + (lane >> 2) + 8 * r; },
                [&](int c) { return (c >> 1) * 8 + 2 * (lane & 3) + (c & 1); },
                [](int r, int c) { return 4 * (c >> 1) + 2 * r + (c & 1); });
#pragma unroll
            for (int i = 0; i < BN / 2; ++i) {
                const long long q_pos = blk.m0 + warp * 16 + (lane >> 2) + 8 * ((i >> 1) & 1) + blk.shift;
                const long long kv_pos = n0 + (i >> 2) * 8 + 2 * (lane & 3) + (i & 1);
                const float x = s[i] * a.scale;  // scaled score
                s[i] = ((okb >> i) & 1) ? hooks.score(x, q_pos, kv_pos) : -INFINITY;
            }
        }
        // online softmax: row max of v (element i is on row state (i >> 1) & 1), quad-reduced;
        // P = exp2(v f - m) in place
        float mx[2] = {-INFINITY, -INFINITY}, m_use[2];
#pragma unroll
        for (int i = 0; i < BN / 2; ++i) mx[(i >> 1) & 1] = fmaxf(mx[(i >> 1) & 1], s[i]);
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
            const float m_new = fmaxf(m_i[r], mx[r] * f);
            m_use[r] = m_new == -INFINITY ? 0.f : m_new;  // all masked so far: exp2(-inf) = 0, no NaN
            alpha[r] = exp2f(m_i[r] - m_use[r]);
            m_i[r] = m_new;
            l_i[r] *= alpha[r];
        }
#pragma unroll
        for (int i = 0; i < BN / 2; ++i) {
            s[i] = exp2f(fmaf(s[i], f, -m_use[(i >> 1) & 1]));
            l_i[(i >> 1) & 1] += s[i];
        }
        if (OVERLAP) af_wgmma_wait_group<0>();  // the previous P V has completed: O and pa are free
#pragma unroll
        for (int dt = 0; dt < DT8; ++dt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) o[4 * dt + e] *= alpha[e >> 1];
        }
        // P packed into the A fragments of P V (k-step kk: n8 tiles 2 kk, 2 kk + 1)
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk)
#pragma unroll
            for (int q = 0; q < 4; ++q) pa[kk][q] = TT::pack(s[8 * kk + 2 * q], s[8 * kk + 2 * q + 1]);
        if (OVERLAP) {
            pv_kst = kst;  // issued with the next tile's Q K^T
        } else {
            af_wgmma_fence();
            issue_pv(kst);
            af_wgmma_wait_group<0>();
        }
    }
    if (OVERLAP && pv_kst >= 0) {  // the last tile's P V
        af_wgmma_fence();
        issue_pv(pv_kst);
        af_wgmma_wait_group<0>();
    }

    // epilogue (as af_fwd_tc): quad-reduce l; O = acc / l stored as packed 16-bit pairs;
    // lse = ln(l) + m ln 2; empty rows: O = 0, lse = -inf
    af_require((((unsigned long long)blk.ob & 3) | (unsigned long long)(a.o_stride_s & 1)) == 0,
               "o: rows must be 4-byte aligned (even o_stride_s, 4-byte aligned o); pass a contiguous output");
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        l_i[r] += __shfl_xor_sync(0xffffffffu, l_i[r], 1);
        l_i[r] += __shfl_xor_sync(0xffffffffu, l_i[r], 2);
        const long long row = blk.m0 + warp * 16 + (lane >> 2) + 8 * r;
        if (row < a.seq_q) {
            const bool empty = l_i[r] == 0.f;
            const float inv = empty ? 0.f : 1.f / l_i[r];
            T* dst = blk.ob + row * a.o_stride_s + 2 * (lane & 3);
#pragma unroll
            for (int dt = 0; dt < DT8; ++dt) af_st_global_b32(dst + dt * 8, TT::pack(o[4 * dt + 2 * r] * inv, o[4 * dt + 2 * r + 1] * inv));
            if ((lane & 3) == 0 && a.lse != nullptr)
                a.lse[((long long)blk.b * a.heads_q + blk.h) * a.seq_q + row] = empty ? -INFINITY : m_i[r] * AF_LN2 + logf(l_i[r]);
        }
    }
}
