// attnforge Hopper forward main loop (sm_90a): warpgroup MMA. Per thread block: BM query rows
// of one (b, h), one consumer warpgroup (4 warps, 128 threads) per 64 rows, optionally a
// producer warpgroup (warp specialization, see af_fwd_wg). Each consumer warpgroup computes its
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
// for each key tile j of the schedule (its K and V staged ahead by cp.async):
//     S = Q K^T (wgmma, shared x shared) [software-pipelined: issued with tile j - 1's P V]
//     allowed-element bits (partial and edge tiles); S = score(S), masked; online softmax
//     (log2 domain); O += P V (wgmma, registers x shared) [software-pipelined: at tile j + 1]
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

// Pins an accumulator's registers at this point of the instruction stream: nothing that reads
// or writes them moves across it (CUTLASS's warpgroup_fence_operand). The wgmma waits carry no
// register operands, so without it the compiler may hoist the softmax's reads of S or O's
// rescale above the wait that completes them, and ptxas then serializes every wgmma (C7514).
// The simulator checks the order itself (reading an accumulator before its wait is an error).
#ifdef ATTNFORGE_SIM
template <int N> inline void af_wg_fence_operand(af_wgmma_acc<N>&) {}
template <int K> inline void af_wg_fence_operand(unsigned (&)[K][4]) {}
#else
template <int N>
__device__ __forceinline__ void af_wg_fence_operand(af_wgmma_acc<N>& acc) {
#pragma unroll
    for (int i = 0; i < N / 2; ++i) asm volatile("" : "+f"(acc.r[i])::"memory");
}
template <int K>
__device__ __forceinline__ void af_wg_fence_operand(unsigned (&a)[K][4]) {
#pragma unroll
    for (int k = 0; k < K; ++k)
#pragma unroll
        for (int q = 0; q < 4; ++q) asm volatile("" : "+r"(a[k][q])::"memory");
}
#endif

// Per-thread state of a consumer warpgroup: online softmax (log2 domain) of this thread's rows
// r = 0, 1 (rows g + 8 r of the warp's 16, g = lane / 4), the O and S accumulators (element 4 j
// + e of n8 tile j), P of the last softmaxed tile as the A fragments of P V (k-step kk) and its
// rescale of O (applied once O's previous P V has completed).
template <int BN, int D>
struct af_wg_state {
    float m_i[2], l_i[2], alpha[2];
    unsigned pa[BN / 16][4];
    af_wgmma_acc<D> o;
    af_wgmma_acc<BN> s;
};

// Everything a consumer warpgroup's tile step reads: the block, its hooks and scoring, the
// descriptors (Q: this warpgroup's 64 rows; K, V: stage 0) and the lane's place.
template <typename T, class Hooks, class Scoring>
struct af_wg_ctx {
    const af_fwd_args<T>& a;
    const af_fwd_block<T>& blk;
    const Hooks& hooks;
    const Scoring& sc;
    unsigned long long desc_q, desc_k, desc_v;
    int warp, lane;  // warp: the consumer warp's index (its 16 rows), lane
    float scale_log2;
};

// S = Q K^T of the tile at stage offset kst: D / 16 k-steps of wgmma m64nBNk16, one commit group.
template <class Tile, typename T, class Hooks, class Scoring>
__device__ __forceinline__ void af_wg_issue_qk(af_wg_state<Tile::BN, Tile::D>& st, const af_wg_ctx<T, Hooks, Scoring>& c, int kst) {
    constexpr int BM = Tile::BM, BN = Tile::BN, D = Tile::D;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
        const int q_off = (kk >> 2) * BM * 64 + (kk & 3) * 16, k_off = kst + (kk >> 2) * BN * 64 + (kk & 3) * 16;
        af_wg_type<T>::template qk<BN>(st.s, c.desc_q + q_off / 8, c.desc_k + k_off / 8, kk > 0);
    }
    af_wgmma_commit_group();
}

// O += P V of the tile whose V is at stage offset vst: BN / 16 k-steps of wgmma m64nDk16, one
// commit group (not waited for).
template <class Tile, typename T, class Hooks, class Scoring>
__device__ __forceinline__ void af_wg_issue_pv(af_wg_state<Tile::BN, Tile::D>& st, const af_wg_ctx<T, Hooks, Scoring>& c, int vst) {
#pragma unroll
    for (int kk = 0; kk < Tile::BN / 16; ++kk) af_wg_type<T>::template pv<Tile::D>(st.o, st.pa[kk], c.desc_v + (vst + kk * 16 * 64) / 8);
    af_wgmma_commit_group();
}

// The landed S of key tile n0: mask and score (partial and edge tiles), the online softmax
// (new row max, O's rescale alpha, l), P = exp2(v f - m) in place in S. Reads no register of an
// in-flight P V (O and P are touched by af_wg_rescale_pack, after it completes).
template <class Tile, typename T, class Hooks, class Scoring>
__device__ __forceinline__ void af_wg_softmax(af_wg_state<Tile::BN, Tile::D>& st, const af_wg_ctx<T, Hooks, Scoring>& c,
                                              long long n0, int kind, int br) {
    constexpr int BM = Tile::BM, BN = Tile::BN, NT8 = BN / 8;
    const af_fwd_args<T>& a = c.a;
    const af_fwd_block<T>& blk = c.blk;
    const int warp = c.warp, lane = c.lane;
    // values v whose score in log2 units is v * f (see af_fwd_tc): interior tiles without score
    // modification keep the raw dot products
    float f = AF_LOG2E;
    if (af_is_identity_score<decltype(c.hooks.score)>::value &&
        !af_tile_is_edge<BM, BN, decltype(c.hooks.mask), Scoring>(kind, br, blk, n0, a.seq_k)) {
        f = c.scale_log2;
    } else {
        af_bits_t<NT8 * 4> okb, nearb;
        // rows r = e >> 1, key columns c = 2 j + (e & 1) of element e of n8 tile j
        af_element_bits<BM, BN, 2, 2 * NT8>(
            okb, nearb, c.hooks.mask, c.sc, kind, br, blk, n0, a.seq_k,
            [&](int r) { return warp * 16 + (lane >> 2) + 8 * r; },
            [&](int col) { return (col >> 1) * 8 + 2 * (lane & 3) + (col & 1); },
            [](int r, int col) { return 4 * (col >> 1) + 2 * r + (col & 1); });
#pragma unroll
        for (int i = 0; i < BN / 2; ++i) {
            const long long q_pos = blk.m0 + warp * 16 + (lane >> 2) + 8 * ((i >> 1) & 1) + blk.shift;
            const long long kv_pos = n0 + (i >> 2) * 8 + 2 * (lane & 3) + (i & 1);
            const float x = st.s[i] * a.scale;  // scaled score
            st.s[i] = ((okb >> i) & 1) ? c.hooks.score(x, q_pos, kv_pos) : -INFINITY;
        }
    }
    // row max of v (element i is on row state (i >> 1) & 1), quad-reduced
    float mx[2] = {-INFINITY, -INFINITY}, m_use[2];
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) mx[(i >> 1) & 1] = fmaxf(mx[(i >> 1) & 1], st.s[i]);
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
        const float m_new = fmaxf(st.m_i[r], mx[r] * f);
        m_use[r] = m_new == -INFINITY ? 0.f : m_new;  // all masked so far: exp2(-inf) = 0, no NaN
        st.alpha[r] = exp2f(st.m_i[r] - m_use[r]);
        st.m_i[r] = m_new;
        st.l_i[r] *= st.alpha[r];
    }
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) {
        st.s[i] = exp2f(fmaf(st.s[i], f, -m_use[(i >> 1) & 1]));
        st.l_i[(i >> 1) & 1] += st.s[i];
    }
}

// O *= alpha; P packed into the A fragments of P V (k-step kk: n8 tiles 2 kk, 2 kk + 1).
template <class Tile, typename T>
__device__ __forceinline__ void af_wg_rescale_pack(af_wg_state<Tile::BN, Tile::D>& st) {
#pragma unroll
    for (int dt = 0; dt < Tile::D / 8; ++dt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) st.o[4 * dt + e] *= st.alpha[e >> 1];
    }
#pragma unroll
    for (int kk = 0; kk < Tile::BN / 16; ++kk)
#pragma unroll
        for (int q = 0; q < 4; ++q) st.pa[kk][q] = af_wg_type<T>::pack(st.s[8 * kk + 2 * q], st.s[8 * kk + 2 * q + 1]);
}

// One key tile of a consumer warpgroup (its K and V landed at stage offset kst). OVERLAP:
// software-pipelined by one tile (FA3's intra-warpgroup overlap): this tile's Q K^T is issued
// together with the previous tile's P V (pending: pv_kst >= 0), the softmax runs while P V is
// in flight, and the previous tile's stage is handed back (release) once P V has completed; this
// tile's P V waits for the next call (or af_wg_finish). Otherwise the tile's P V completes here.
// PENDING (compile time: a branch between a wgmma's issue and its wait makes ptxas serialize
// every wgmma, C7514/C7520) says whether a previous P V is pending: the drivers call the
// PENDING = false form for the first tile only.
template <class Tile, bool OVERLAP, bool PENDING, typename T, class Hooks, class Scoring, class Release>
__device__ __forceinline__ void af_wg_consume(af_wg_state<Tile::BN, Tile::D>& st, const af_wg_ctx<T, Hooks, Scoring>& c,
                                              int& pv_kst, int kst, long long n0, int kind, int br, const Release& release) {
    static_assert(OVERLAP || !PENDING, "a P V is pending only in the overlapped loop");
    af_wg_fence_operand(st.s);
    af_wgmma_fence();
    af_wg_issue_qk<Tile>(st, c, kst);
    constexpr bool pending = PENDING;
    if (pending) {
        af_wg_issue_pv<Tile>(st, c, pv_kst);
        af_wgmma_wait_group<1>();  // S has landed (groups complete in order); P V in flight
    } else {
        af_wgmma_wait_group<0>();
    }
    af_wg_fence_operand(st.s);
    af_wg_softmax<Tile>(st, c, n0, kind, br);
    if (pending) {
        af_wgmma_wait_group<0>();  // the previous P V has completed: O, P and its stage are free
        af_wg_fence_operand(st.o);
        af_wg_fence_operand(st.pa);
        release(pv_kst);
    }
    af_wg_rescale_pack<Tile, T>(st);
    af_wg_fence_operand(st.o);
    af_wg_fence_operand(st.pa);
    if (OVERLAP) {
        pv_kst = kst;  // issued with the next tile's Q K^T
    } else {
        af_wgmma_fence();
        af_wg_issue_pv<Tile>(st, c, kst);
        af_wgmma_wait_group<0>();
        af_wg_fence_operand(st.o);
        release(kst);
    }
}

// The last tile's P V of an overlapped loop.
template <class Tile, typename T, class Hooks, class Scoring, class Release>
__device__ __forceinline__ void af_wg_finish(af_wg_state<Tile::BN, Tile::D>& st, const af_wg_ctx<T, Hooks, Scoring>& c, int pv_kst,
                                             const Release& release) {
    if (pv_kst >= 0) {
        af_wgmma_fence();
        af_wg_issue_pv<Tile>(st, c, pv_kst);
        af_wgmma_wait_group<0>();
        af_wg_fence_operand(st.o);
        release(pv_kst);
    }
}

// Epilogue of a consumer warp (as af_fwd_tc): quad-reduce l; O = acc / l stored as packed
// 16-bit pairs; lse = ln(l) + m ln 2; empty rows: O = 0, lse = -inf.
template <class Tile, typename T>
__device__ __forceinline__ void af_wg_epilogue(af_wg_state<Tile::BN, Tile::D>& st, const af_fwd_args<T>& a, const af_fwd_block<T>& blk,
                                               int warp, int lane) {
    af_require((((unsigned long long)blk.ob & 3) | (unsigned long long)(a.o_stride_s & 1)) == 0,
               "o: rows must be 4-byte aligned (even o_stride_s, 4-byte aligned o); pass a contiguous output");
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        float l = st.l_i[r];
        l += __shfl_xor_sync(0xffffffffu, l, 1);
        l += __shfl_xor_sync(0xffffffffu, l, 2);
        const long long row = blk.m0 + warp * 16 + (lane >> 2) + 8 * r;
        if (row < a.seq_q) {
            const bool empty = l == 0.f;
            const float inv = empty ? 0.f : 1.f / l;
            T* dst = blk.ob + row * a.o_stride_s + 2 * (lane & 3);
#pragma unroll
            for (int dt = 0; dt < Tile::D / 8; ++dt)
                af_st_global_b32(dst + dt * 8, af_wg_type<T>::pack(st.o[4 * dt + 2 * r] * inv, st.o[4 * dt + 2 * r + 1] * inv));
            if ((lane & 3) == 0 && a.lse != nullptr)
                a.lse[((long long)blk.b * a.heads_q + blk.h) * a.seq_q + row] = empty ? -INFINITY : st.m_i[r] * AF_LN2 + logf(l);
        }
    }
}

template <class Tile, typename T>
__device__ __forceinline__ void af_wg_init(af_wg_state<Tile::BN, Tile::D>& st) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        st.m_i[r] = -INFINITY;
        st.l_i[r] = 0.f;
    }
#pragma unroll
    for (int i = 0; i < Tile::D / 2; ++i) st.o[i] = 0.f;
#pragma unroll
    for (int i = 0; i < Tile::BN / 2; ++i) st.s[i] = 0.f;  // overwritten by each tile's first k-step
}

// Kernel entry. Tile::NW == BM / 16: every warp computes and all threads stage K and V with
// cp.async (STAGES buffers; with 3+ stages the loop is software-pipelined). Tile::NW == BM / 16
// + 4: warp specialization, a producer warpgroup stages Q, K and V with cp.async and hands the
// stages to the consumer warpgroups through mbarriers (full / empty per stage); the consumers
// never wait on a block-wide barrier (with 3 stages they run the software-pipelined loop);
// with two consumer warpgroups the producer gives registers to them (setmaxnreg).
template <class Tile, typename T, class Schedule, class BlockHooks, class Scoring>
__device__ __forceinline__ void af_fwd_wg(const af_fwd_args<T>& a, const Schedule& schedule, const BlockHooks& block_hooks,
                                          const Scoring& sc) {
    constexpr int BM = Tile::BM, BN = Tile::BN, D = Tile::D, STAGES = Tile::STAGES;
    constexpr int CONSUMERS = BM / 64;  // consumer warpgroups
    constexpr bool WS = Tile::NW == 4 * CONSUMERS + 4;
    using TT = af_wg_type<T>;
    static_assert(BM % 64 == 0 && (Tile::NW == 4 * CONSUMERS || WS), "one warpgroup (4 warps) per 64 query rows (+ 4 producer warps)");
    static_assert(!WS || STAGES >= 2, "warp specialization needs 2+ stages");
    static_assert(Scoring::BRANCHES == 1, "the wgmma main loop has one scoring branch (LM-Infinite uses af_fwd_tc)");
    static_assert(BN % 16 == 0 && BN <= 128 && D % 64 == 0 && D <= 256, "wgmma tiles: BN <= 128, D in {64, 128, 256}");
    // [BM][D] Q, [STAGES][BN][D] K, [STAGES][BN][D] V, each in af_swz128 layout; then (WS) the
    // mbarriers: Q full, STAGES full, STAGES empty
    AF_DYNAMIC_SHARED(T, af_smem);
    AF_SHARED_VIEW(T, sQ, af_smem, 0, BM * D);
    AF_SHARED_VIEW(T, sK, af_smem, BM * D, STAGES * BN * D);
    AF_SHARED_VIEW(T, sV, af_smem, BM * D + STAGES * BN * D, STAGES * BN * D);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const af_fwd_block<T> blk = af_fwd_block_of<BM>(a);
    const auto hooks = block_hooks(blk.b, blk.h);
    const T zero = TT::from(0.f);
    af_require(a.scale > 0.f, "scale: must be a finite positive number");
    const bool vec_q = (((unsigned long long)blk.qb & 15) | (unsigned long long)(a.q_stride_s & 7)) == 0;
    const bool vec_kv = ((((unsigned long long)blk.kb | (unsigned long long)blk.vb) & 15) |
                         (unsigned long long)((a.k_stride_s | a.v_stride_s) & 7)) == 0;
    const auto tiles = schedule.template tiles<BN>(blk, a.seq_k);
    // Matrix descriptors (128-byte swizzle, 8-row atoms SBO = 1024 bytes apart): this
    // warpgroup's 64 Q rows, K and V at stage 0. An operand further on is the same descriptor
    // plus its byte offset / 16 (the start-address field, bits 0-13). Q and K are K-major
    // (k-step kk: column block kk / 4, 32 bytes per k16 inside the 128-byte row); V is
    // MN-major: LBO = BN * 128 bytes between its 64-column blocks, k-step kk 16 key rows
    // (2048 bytes) further.
    const int cw = warp % (4 * CONSUMERS);  // consumer warp (its 16 rows); the producer's is unused
    const af_wg_ctx<T, decltype(hooks), Scoring> ctx{
        a, blk, hooks, sc,
        af_wgmma_desc(&sQ[(cw >> 2) * 64 * 64], 16, 1024, 128),
        af_wgmma_desc(&sK[0], 16, 1024, 128),
        af_wgmma_desc(&sV[0], BN * 128, 1024, 128),
        cw, lane, a.scale * AF_LOG2E};
    long long cur = tiles.first, n0;
    int kind;
    if constexpr (WS) {
        AF_SHARED_VIEW(unsigned long long, bars, af_smem, BM * D + 2 * STAGES * BN * D, 1 + 2 * STAGES);
        if (tid == 0) {
            af_mbarrier_init(&bars[0], 128);  // Q: the producer's 128 threads
            for (int i = 0; i < STAGES; ++i) {
                af_mbarrier_init(&bars[1 + i], 128);                        // stage i full: producer threads
                af_mbarrier_init(&bars[1 + STAGES + i], 128 * CONSUMERS);  // stage i empty: consumer threads
            }
        }
        __syncthreads();
        if (warp >= 4 * CONSUMERS) {
            // producer warpgroup: Q, then each tile's K and V into stage it % STAGES once its
            // previous occupant is released; a stage is announced full when this thread's
            // copies have landed (one cp.async group per tile, announced after the next
            // tile's copies are issued, or before waiting for a stage: the consumers may need
            // the unannounced tile to release it)
            if constexpr (CONSUMERS > 1) af_setmaxnreg_dec<40>();
            const int ptid = tid - 128 * CONSUMERS;
            af_wg_load_rows<BM, D, 128>(sQ, 0, blk.qb, a.q_stride_s, blk.m0, a.seq_q, vec_q, ptid, zero);
            af_cp_async_commit();
            af_cp_async_wait<0>();
            af_fence_proxy_async();
            af_mbarrier_arrive(&bars[0]);
            auto announce = [&](int t) {
                af_fence_proxy_async();  // this thread's landed copies, visible to wgmma
                af_mbarrier_arrive(&bars[1 + t % STAGES]);
            };
            int it = 0, pending = -1;  // pending: the tile issued but not announced
            while (tiles.next(cur, n0, kind)) {
                const int stage = it % STAGES;
                if (it >= STAGES) {
                    if (pending >= 0) {
                        af_cp_async_wait<0>();
                        announce(pending);
                        pending = -1;
                    }
                    af_mbarrier_wait_parity(&bars[1 + STAGES + stage], ((it / STAGES) - 1) & 1);
                }
                af_wg_load_rows<BN, D, 128>(sK, stage * BN * D, blk.kb, a.k_stride_s, n0, a.seq_k, vec_kv, ptid, zero);
                af_wg_load_rows<BN, D, 128>(sV, stage * BN * D, blk.vb, a.v_stride_s, n0, a.seq_k, vec_kv, ptid, zero);
                af_cp_async_commit();
                if (pending >= 0) {
                    af_cp_async_wait<1>();  // the pending tile's copies have landed
                    announce(pending);
                }
                pending = it++;
            }
            if (pending >= 0) {
                af_cp_async_wait<0>();
                announce(pending);
            }
            return;
        }
        if constexpr (CONSUMERS > 1) af_setmaxnreg_inc<232>();
        af_wg_state<BN, D> st;
        af_wg_init<Tile, T>(st);
        af_mbarrier_wait_parity(&bars[0], 0);
        auto release = [&](int kst) { af_mbarrier_arrive(&bars[1 + STAGES + kst / (BN * D)]); };
        // overlapped, the consumers hold two stages (K of tile j, V of tile j - 1): with 2
        // stages the producer could not run ahead (measured on the H200: 393 against 549
        // TFLOP/s with 3 stages), so 2 stages run the plain loop
        constexpr bool OVERLAP = STAGES >= 3;
        int it = 0, pv_kst = -1;
        while (tiles.next(cur, n0, kind)) {
            const int br = sc.tile_branches(blk.p_lo, blk.p_hi, n0, min(n0 + BN, (long long)a.seq_k) - 1);
            af_count_tile<BN, decltype(hooks.mask)>(tid, kind, blk, n0, a.seq_k);
            const int stage = it % STAGES;
            af_mbarrier_wait_parity(&bars[1 + stage], (it / STAGES) & 1);
            if (OVERLAP && it > 0) af_wg_consume<Tile, OVERLAP, OVERLAP>(st, ctx, pv_kst, stage * BN * D, n0, kind, br, release);
            else af_wg_consume<Tile, OVERLAP, false>(st, ctx, pv_kst, stage * BN * D, n0, kind, br, release);
            ++it;
        }
        if constexpr (OVERLAP) af_wg_finish<Tile>(st, ctx, pv_kst, release);
        af_wg_epilogue<Tile, T>(st, a, blk, cw, lane);
    } else {
        constexpr int NT = Tile::NT;
        af_wg_state<BN, D> st;
        af_wg_init<Tile, T>(st);
        af_wg_load_rows<BM, D, NT>(sQ, 0, blk.qb, a.q_stride_s, blk.m0, a.seq_q, vec_q, tid, zero);
        auto load_kv = [&](long long t0, int stage) {
            af_wg_load_rows<BN, D, NT>(sK, stage * BN * D, blk.kb, a.k_stride_s, t0, a.seq_k, vec_kv, tid, zero);
            af_wg_load_rows<BN, D, NT>(sV, stage * BN * D, blk.vb, a.v_stride_s, t0, a.seq_k, vec_kv, tid, zero);
        };
        // With 3+ stages the loop is software-pipelined: V of tile j - 1 is read while tile j
        // is current, so the prefetch runs STAGES - 2 tiles ahead (never into those two
        // stages); the block-wide barrier of each tile is what frees a stage (no release).
        constexpr bool OVERLAP = STAGES >= 3;
        constexpr int AHEAD = OVERLAP ? STAGES - 2 : STAGES - 1;  // prefetch distance in tiles
        // the prefetch walk's cursor runs AHEAD tiles ahead; one commit group per tile
        // (possibly empty), so wait<AHEAD - 1> means "the current tile has landed"
        [[maybe_unused]] long long fcur = tiles.first, fn0;
        [[maybe_unused]] int fkind, it = 0;
        if constexpr (AHEAD > 0) {
#pragma unroll
            for (int stage = 0; stage < AHEAD; ++stage) {
                if (tiles.next(fcur, fn0, fkind)) load_kv(fn0, stage);
                af_cp_async_commit();
            }
        }
        auto release = [](int) {};
        int pv_kst = -1;
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
            if (OVERLAP && pv_kst >= 0) af_wg_consume<Tile, OVERLAP, OVERLAP>(st, ctx, pv_kst, kst, n0, kind, br, release);
            else af_wg_consume<Tile, OVERLAP, false>(st, ctx, pv_kst, kst, n0, kind, br, release);
        }
        if constexpr (OVERLAP) af_wg_finish<Tile>(st, ctx, pv_kst, release);
        af_wg_epilogue<Tile, T>(st, a, blk, cw, lane);
    }
}
