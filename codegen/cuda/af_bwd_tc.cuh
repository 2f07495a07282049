// attnforge tensor-core backward main loops (mma.sync m16n8k16, f32 accumulation; ldmatrix from
// XOR-swizzled shared tiles of the 16-bit input type), the main-loop choice of af_bwd.cuh's
// dK/dV and dQ kernels for f16/bf16 with one scoring branch (the selection is
// codegen::backward::mainloop). FlashAttention-2's backward structure, without its atomics:
//
//   af_bwd_dkdv_tc: warp w owns keys [16 w, 16 w + 16) of the key tile; per query tile of the
//                   transposed schedule (QM rows): S^T = K Q^T and dP^T = V dO^T (mma, the
//                   warp's keys x the tile's queries in C fragments), P^T and dS^T per element by
//                   af_bwd_entry (the FMA form's hooks), dV += P^T dO and dK += dS^T Q (mma:
//                   the C fragments of P^T / dS^T, rounded to T, are the A fragments);
//   af_bwd_dq_tc:   warp w owns query rows [16 w, 16 w + 16) of the query tile; per key tile of
//                   the forward schedule: S = Q K^T, dP = dO V^T (mma), dS per element (and
//                   the parameter gradient, per thread as in the FMA form), dQ += dS K (mma).
//
// Rounding: Q, K, V, dO are exact in the mma (their own type); P and dS are rounded to T before
// the P^T dO, dS^T Q and dS K products, as FlashAttention-2 does and as the reference's naive
// path (the error scale of the tolerance rule) does. Sums run in a fixed order: deterministic.
// Needs af_fwd_tc.cuh (af_tc_type, af_tc_qk, af_tc_frag_addr) and af_bwd.cuh (af_bwd_entry).

// The n extent and head dimension of a product for af_tc_qk (its Tile::BN, Tile::D).
template <int N, int HD>
struct af_bwd_tc_shape {
    static constexpr int BN = N, D = HD;
};

// Rows [r0, r0 + R) of a [*, D] tensor (row stride `stride` elements) -> swizzled shared tile
// (af_swz<D>) with cp.async when 16-byte aligned (the caller commits and waits); rows past
// `valid` are zero. Unaligned tensors: element copies, kept rolled.
template <int R, int D, int NT, typename T, class S>
__device__ __forceinline__ void af_bwd_tc_rows(const S& dst, const T* src, long long r0, long long valid, long long stride,
                                               int tid) {
    const bool vec = (((unsigned long long)src & 15) | (unsigned long long)(stride & 7)) == 0;
    const T zero = af_tc_type<T>::from(0.f);
    for (int idx = tid; idx < R * (D / 8); idx += NT) {
        const int r = idx / (D / 8), c = (idx % (D / 8)) * 8;
        const long long row = r0 + r;
        const int off = af_swz<D>(r, c);
        if (row < valid && vec) {
            af_cp_async_16(&dst[off], src + row * stride + c);
        } else {
#pragma unroll 1
            for (int e = 0; e < 8; ++e) dst[off + e] = row < valid ? src[row * stride + c + e] : zero;
        }
    }
}

// acc (C fragments of n8 tiles 2 dp, 2 dp + 1 over D) += A B, the A fragment `pa` (16 x 16,
// k chunk kk of the shared operand) and B from the swizzled [k][D] tile at `bt` (ldmatrix
// .trans: the tile's rows are the k dimension).
template <int D, typename T>
__device__ __forceinline__ void af_bwd_tc_acc(float (&acc)[D / 8][4], const unsigned (&pa)[4], const af_tc_frag_addr<D>& bt,
                                              int kk) {
#pragma unroll
    for (int dp = 0; dp < D / 16; ++dp) {
        unsigned bf[4];
        af_ldmatrix_x4_trans_at(bf, bt.at(dp) + kk * 32 * D);
        af_tc_type<T>::mma(acc[2 * dp], pa, bf, acc[2 * dp]);
        af_tc_type<T>::mma(acc[2 * dp + 1], pa, bf + 2, acc[2 * dp + 1]);
    }
}

// The A fragment of k chunk kk from C fragments c (n8 tiles 2 kk, 2 kk + 1), rounded to T.
template <typename T, int N>
__device__ __forceinline__ void af_bwd_tc_afrag(unsigned (&pa)[4], const float (&c)[N][4], int kk) {
    using TT = af_tc_type<T>;
    pa[0] = TT::pack(c[2 * kk][0], c[2 * kk][1]);
    pa[1] = TT::pack(c[2 * kk][2], c[2 * kk][3]);
    pa[2] = TT::pack(c[2 * kk + 1][0], c[2 * kk + 1][1]);
    pa[3] = TT::pack(c[2 * kk + 1][2], c[2 * kk + 1][3]);
}

// Stores a warp's 16 x D C fragments (rows row0 + g, row0 + g + 8, g = lane / 4) times `mul`
// into a contiguous [*, D] tensor, rows below `valid` only.
template <int D, typename T>
__device__ __forceinline__ void af_bwd_tc_store(T* dst, const float (&acc)[D / 8][4], long long row0, long long valid,
                                                float mul, int lane) {
#pragma unroll
    for (int e2 = 0; e2 < 2; ++e2) {
        const long long row = row0 + (lane >> 2) + 8 * e2;
        if (row < valid)
#pragma unroll
            for (int dt = 0; dt < D / 8; ++dt)
#pragma unroll
                for (int e = 0; e < 2; ++e) af_store(dst + row * D + 8 * dt + 2 * (lane & 3) + e, acc[dt][2 * e2 + e] * mul);
    }
}

// ---- dQ policy of af_bwd_dkdv_tc ----
// af_bwd_dq_separate (the default): dQ is af_bwd_dq_tc's (S and dP computed a second time,
// every sum in a fixed order: bit-deterministic). af_bwd_dq_atomic (FlashAttention-2's form, a
// tuner option): the dK/dV block also multiplies the query tile's dS (QM x BN, rounded to T,
// staged in shared memory) by its K tile and atomicAdd's the QM x D partial into the f32 buffer
// dq_accum; af_bwd_dq_convert scales and rounds it. No second S / dP, but the order of the
// float additions depends on the blocks' timing, so dQ is not bit-reproducible.
struct af_bwd_dq_separate {
    static constexpr bool ATOMIC = false;
};
struct af_bwd_dq_atomic {
    static constexpr bool ATOMIC = true;
};

// dq_acc[rows < rows_in] += dS K for one query tile: dS [QM][BN + 8] in sdS (row stride padded
// so the A-fragment loads of 8 rows hit distinct banks), K the block's swizzled key tile sK
// (ldmatrix .trans, the keys are k). Warp w takes the 16-row slab w % (QM / 16) and the
// 16-column chunks dp = pw + WPS i (pw = w / (QM / 16), WPS warps per slab): their ldmatrix
// addresses are computed per warp, so the code holds one chunk set, not every warp's; one pair
// of n8 accumulators at a time keeps the registers of the dK/dV loop's.
template <int QM, int BN, int D, int NW, typename T, class S, class SK>
__device__ __forceinline__ void af_bwd_tc_dq_atomic(float* dq_acc, const S& sdS, const SK& sK, int rows_in, int warp,
                                                    int lane) {
    constexpr int SL = QM / 16, WPS = NW / SL, SS = BN + 8;
    static_assert(NW % SL == 0, "the warps cover the query tile's 16-row slabs");
    using TT = af_tc_type<T>;
    constexpr int NCH = D / 16 / WPS;
    static_assert(NCH >= 1, "a 16-column chunk per warp at least");
    const int r0 = 16 * (warp % SL) + (lane >> 2), pw = warp / SL;
    // ldmatrix .trans rows of this lane in sK: key (lane & 7) + 8 ((lane >> 3) & 1), chunk lane >> 4
    unsigned kaddr[NCH];
#pragma unroll
    for (int i = 0; i < NCH; ++i)
        kaddr[i] = af_smem_addr(&sK[af_swz<D>((lane & 7) + ((lane >> 3) & 1) * 8, 16 * (pw + WPS * i) + 8 * (lane >> 4))]);
    unsigned pa[BN / 16][4];  // A fragments of dS (rows r0, r0 + 8; keys 16 kk + 2 (lane & 3) ..)
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk)
#pragma unroll
        for (int f = 0; f < 4; ++f) {
            const int idx = (r0 + 8 * (f & 1)) * SS + 16 * kk + 8 * (f >> 1) + 2 * (lane & 3);
            const T lo = sdS[idx], hi = sdS[idx + 1];
            pa[kk][f] = TT::pack(af_to_float(lo), af_to_float(hi));
        }
#pragma unroll
    for (int i = 0; i < NCH; ++i) {
        const int dp = pw + WPS * i;
        float acc[2][4] = {};
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk) {
            unsigned bf[4];
            af_ldmatrix_x4_trans_at(bf, kaddr[i] + kk * 32 * D);
            TT::mma(acc[0], pa[kk], bf, acc[0]);
            TT::mma(acc[1], pa[kk], bf + 2, acc[1]);
        }
#pragma unroll
        for (int e = 0; e < 8; ++e) {
            const int row = r0 + 8 * ((e & 3) >> 1), col = 16 * dp + 8 * (e >> 2) + 2 * (lane & 3) + (e & 1);
            if (row < rows_in) atomicAdd(&dq_acc[(long long)row * D + col], acc[e >> 2][e & 3]);
        }
    }
}

// ---- dK, dV ----
// Block: key tile [n0, n0 + BN) of kv head hkv (BN = 16 warps). Per warp: dK, dV of its 16 keys
// as C fragments (D / 8 n8 tiles each); S^T and dP^T of a QM-query tile (QM / 8 n8 tiles).
template <class Tile, typename T, class Queries, class BlockHooks, class GradHooks, class Scoring,
          class DQ = af_bwd_dq_separate>
__device__ __forceinline__ void af_bwd_dkdv_tc(const af_fwd_args<T>& a, const af_bwd_args<T>& g, const Queries& queries,
                                               const BlockHooks& block_hooks, const GradHooks& grad_hooks, const Scoring& sc,
                                               DQ = {}) {
    constexpr int BM = Tile::BM, BN = Tile::BN, D = Tile::D, NW = Tile::NW, NT = Tile::NT;
    // query rows per step of the transposed schedule: BM, or 32 at d > 64, where S^T and dP^T
    // of 64 queries (64 registers) next to the 2 D f32 accumulators of dK and dV spill; the
    // Q / dO buffers keep BM rows (a 32-row step uses the first half)
    constexpr int QM = D > 64 && BM > 32 ? 32 : BM, QT8 = QM / 8;
    static_assert(BN == 16 * NW && BM % QM == 0 && QM % 16 == 0 && Scoring::BRANCHES == 1, "one 16-key slab per warp, one branch");
    // [BN][D] K, [BN][D] V, [BM][D] Q, [BM][D] dO (T, swizzled), then [BM] lse, [BM] Delta (f32),
    // then for the atomic-dQ policy dS [QM][BN + 8] (T)
    constexpr int OV = BN * D, OQ = 2 * BN * D, OO = OQ + BM * D, OL = OO + BM * D, OS = OL + 4 * BM;
    AF_DYNAMIC_SHARED(T, af_smem);
    AF_SHARED_VIEW(T, sK, af_smem, 0, BN * D);
    AF_SHARED_VIEW(T, sV, af_smem, OV, BN * D);
    AF_SHARED_VIEW(T, sQ, af_smem, OQ, BM * D);
    AF_SHARED_VIEW(T, sdO, af_smem, OO, BM * D);
    AF_SHARED_VIEW(float, sL, af_smem, OL, BM);
    AF_SHARED_VIEW(float, sDelta, af_smem, OL + 2 * BM, BM);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int b = blockIdx.z, hkv = blockIdx.y;
    const long long n0 = (long long)blockIdx.x * BN;
    const int cols_in = (int)min((long long)BN, (long long)a.seq_k - n0);
    const long long c0 = n0, c1 = n0 + cols_in - 1;
    const long long shift = (long long)a.seq_k - a.seq_q;
    af_bwd_tc_rows<BN, D, NT>(sK, a.k + (long long)b * a.k_stride_b + (long long)hkv * a.k_stride_h, n0, a.seq_k,
                              a.k_stride_s, tid);
    af_bwd_tc_rows<BN, D, NT>(sV, a.v + (long long)b * a.v_stride_b + (long long)hkv * a.v_stride_h, n0, a.seq_k,
                              a.v_stride_s, tid);
    af_cp_async_commit();
    // ldmatrix rows of this lane: K, V (A operands) row 16 warp + (lane & 15), chunk lane >> 4;
    // Q, dO as B operands of S^T, dP^T (query rows are n) row (lane & 7) + 8 (lane >> 4), chunk
    // (lane >> 3) & 1; as B operands of dK, dV (.trans: query rows are k) row (lane & 7) +
    // 8 ((lane >> 3) & 1), chunk lane >> 4
    const af_tc_frag_addr<D> k_frag = af_tc_frag_addr_of<D>(sK, warp * 16 + (lane & 15), lane >> 4);
    const af_tc_frag_addr<D> v_frag = af_tc_frag_addr_of<D>(sV, warp * 16 + (lane & 15), lane >> 4);
    const af_tc_frag_addr<D> q_frag = af_tc_frag_addr_of<D>(sQ, (lane & 7) + ((lane >> 4) << 3), (lane >> 3) & 1);
    const af_tc_frag_addr<D> o_frag = af_tc_frag_addr_of<D>(sdO, (lane & 7) + ((lane >> 4) << 3), (lane >> 3) & 1);
    const af_tc_frag_addr<D> qt_frag = af_tc_frag_addr_of<D>(sQ, (lane & 7) + ((lane >> 3) & 1) * 8, lane >> 4);
    const af_tc_frag_addr<D> ot_frag = af_tc_frag_addr_of<D>(sdO, (lane & 7) + ((lane >> 3) & 1) * 8, lane >> 4);
    float dk[D / 8][4], dv[D / 8][4];
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt)
#pragma unroll
        for (int e = 0; e < 4; ++e) dk[dt][e] = dv[dt][e] = 0.f;

    const int group = a.heads_q / a.heads_kv;
#pragma unroll 1
    for (int gi = 0; gi < group; ++gi) {  // the query heads of the group, in order: deterministic sums
        const int h = hkv * group + gi;
        const auto hooks = block_hooks(b, h);
        const auto grad = grad_hooks(b, h);
        float unused_pgrad = 0.f;  // parameter gradients are af_bwd_dq's
        const T* qb = a.q + (long long)b * a.q_stride_b + (long long)h * a.q_stride_h;
        const long long rbase = ((long long)b * a.heads_q + h) * a.seq_q;
        const auto walk = queries.template queries<QM>(b, h, c0, c1, a.seq_q, a.seq_k);
        long long cur = walk.first, m0;
        int kind;
        while (walk.next(cur, m0, kind)) {
            const int rows_in = (int)min((long long)QM, (long long)a.seq_q - m0);
            __syncthreads();  // the previous tile's Q, dO, lse, Delta are consumed
            af_bwd_tc_rows<QM, D, NT>(sQ, qb, m0, a.seq_q, a.q_stride_s, tid);
            af_bwd_tc_rows<QM, D, NT>(sdO, g.dout + rbase * D, m0, a.seq_q, D, tid);
            af_cp_async_commit();
            for (int i = tid; i < QM; i += NT) {
                sL[i] = i < rows_in ? a.lse[rbase + m0 + i] : -INFINITY;
                sDelta[i] = i < rows_in ? g.delta[rbase + m0 + i] : 0.f;
            }
            af_cp_async_wait<0>();
            __syncthreads();
            const bool partial = decltype(hooks.mask)::active && kind == AF_TILE_PARTIAL;
            // S^T = K Q^T, dP^T = V dO^T of the query tile
            float st[QT8][4], dpt[QT8][4];
#pragma unroll
            for (int j = 0; j < QT8; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) st[j][e] = dpt[j][e] = 0.f;
            af_tc_qk<af_bwd_tc_shape<QM, D>, 1, T>(st, k_frag, q_frag);
            af_tc_qk<af_bwd_tc_shape<QM, D>, 1, T>(dpt, v_frag, o_frag);
            // element e of n8 tile j: key 16 warp + lane / 4 + 8 (e >> 1), query 8 j
            // + 2 (lane & 3) + (e & 1); P^T -> st, dS^T -> dpt
#pragma unroll
            for (int j = 0; j < QT8; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int tj = warp * 16 + (lane >> 2) + 8 * (e >> 1);
                    const int i = 8 * j + 2 * (lane & 3) + (e & 1);
                    const long long q_pos = m0 + i + shift, kv_pos = n0 + tj;
                    bool ok = i < rows_in && tj < cols_in;
                    if (ok && partial) ok = hooks.mask(q_pos, kv_pos);
                    float p;
                    dpt[j][e] = af_bwd_entry<false>(ok, st[j][e], dpt[j][e], sL[i], sDelta[i], a.scale, q_pos, kv_pos,
                                                    hooks, grad, p, unused_pgrad, nullptr);
                    st[j][e] = p;
                }
            // dV += P^T dO, dK += dS^T Q: k chunk kk of the tile's queries
#pragma unroll
            for (int kk = 0; kk < QM / 16; ++kk) {
                unsigned pa[4], sa[4];
                af_bwd_tc_afrag<T>(pa, st, kk);
                af_bwd_tc_afrag<T>(sa, dpt, kk);
                af_bwd_tc_acc<D, T>(dv, pa, ot_frag, kk);
                af_bwd_tc_acc<D, T>(dk, sa, qt_frag, kk);
            }
            if constexpr (DQ::ATOMIC) {
                // dS (rows: queries) into shared for the dQ partial; the next tile's first
                // __syncthreads orders these reads before the next writes
                AF_SHARED_VIEW(T, sdS, af_smem, OS, QM * (BN + 8));
#pragma unroll
                for (int j = 0; j < QT8; ++j)
#pragma unroll
                    for (int e = 0; e < 4; ++e)
                        sdS[(8 * j + 2 * (lane & 3) + (e & 1)) * (BN + 8) + warp * 16 + (lane >> 2) + 8 * (e >> 1)] =
                            af_tc_type<T>::from(dpt[j][e]);
                __syncthreads();
                af_bwd_tc_dq_atomic<QM, BN, D, NW, T>(g.dq_accum + (rbase + m0) * D, sdS, sK, rows_in, warp, lane);
            }
        }
    }
    af_cp_async_wait<0>();  // K, V of a key tile no query sees
    // dK = scale sum_i dS q, dV, in the input dtype; keys no query sees get 0
    const long long r0 = ((long long)b * a.heads_kv + hkv) * a.seq_k;
    af_bwd_tc_store<D>(g.dk + r0 * D, dk, n0 + warp * 16, a.seq_k, a.scale, lane);
    af_bwd_tc_store<D>(g.dv + r0 * D, dv, n0 + warp * 16, a.seq_k, 1.f, lane);
}

// ---- dQ ----
// Block: query tile [m0, m0 + BM) of query head h (the forward's block, BM = 16 warps). Per
// warp: dQ of its 16 rows as C fragments; S and dP of a key tile (BN / 8 n8 tiles).
template <class Tile, typename T, class Schedule, class BlockHooks, class GradHooks, class Scoring>
__device__ __forceinline__ void af_bwd_dq_tc(const af_fwd_args<T>& a, const af_bwd_args<T>& g, const Schedule& schedule,
                                             const BlockHooks& block_hooks, const GradHooks& grad_hooks, const Scoring& sc) {
    constexpr int BM = Tile::BM, BN = Tile::BN, D = Tile::D, NW = Tile::NW, NT = Tile::NT;
    constexpr int NT8 = BN / 8;
    static_assert(BM == 16 * NW && Scoring::BRANCHES == 1, "one 16-row slab per warp, one branch");
    // [BM][D] Q, [BM][D] dO, [BN][D] K, [BN][D] V (T, swizzled), then [NW] block sum and
    // [NT][theta_len] parameter-gradient rows (f32)
    constexpr int OO = BM * D, OK_ = 2 * BM * D, OV = OK_ + BN * D, OR = OV + BN * D;
    AF_DYNAMIC_SHARED(T, af_smem);
    AF_SHARED_VIEW(T, sQ, af_smem, 0, BM * D);
    AF_SHARED_VIEW(T, sdO, af_smem, OO, BM * D);
    AF_SHARED_VIEW(T, sK, af_smem, OK_, BN * D);
    AF_SHARED_VIEW(T, sV, af_smem, OV, BN * D);
    AF_SHARED_VIEW(float, sRed, af_smem, OR, NW);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const af_fwd_block<T> blk = af_fwd_block_of<BM>(a);
    const auto hooks = block_hooks(blk.b, blk.h);
    const auto grad = grad_hooks(blk.b, blk.h);
    using Grad = decltype(grad);
    const int theta_len = Grad::PARAMS == AF_PARAMS_ROWS ? grad.theta_len : 0;
    AF_SHARED_VIEW(float, sTheta, af_smem, OR + 2 * NW, NT * theta_len);
    float* prow = sTheta + tid * theta_len;  // this thread's row: only it writes there until the end
    for (int e = 0; e < theta_len; ++e) prow[e] = 0.f;
    const long long rbase = ((long long)blk.b * a.heads_q + blk.h) * a.seq_q;
    af_bwd_tc_rows<BM, D, NT>(sQ, blk.qb, blk.m0, a.seq_q, a.q_stride_s, tid);
    af_bwd_tc_rows<BM, D, NT>(sdO, g.dout + rbase * D, blk.m0, a.seq_q, D, tid);
    af_cp_async_commit();  // lands with the first key tile's wait
    // ldmatrix rows of this lane: Q, dO (A operands) row 16 warp + (lane & 15), chunk lane >> 4;
    // K, V as B operands of S, dP (key rows are n) row (lane & 7) + 8 (lane >> 4), chunk
    // (lane >> 3) & 1; K as the B operand of dQ (.trans: key rows are k) row (lane & 7) +
    // 8 ((lane >> 3) & 1), chunk lane >> 4
    const af_tc_frag_addr<D> q_frag = af_tc_frag_addr_of<D>(sQ, warp * 16 + (lane & 15), lane >> 4);
    const af_tc_frag_addr<D> o_frag = af_tc_frag_addr_of<D>(sdO, warp * 16 + (lane & 15), lane >> 4);
    const af_tc_frag_addr<D> k_frag = af_tc_frag_addr_of<D>(sK, (lane & 7) + ((lane >> 4) << 3), (lane >> 3) & 1);
    const af_tc_frag_addr<D> v_frag = af_tc_frag_addr_of<D>(sV, (lane & 7) + ((lane >> 4) << 3), (lane >> 3) & 1);
    const af_tc_frag_addr<D> kt_frag = af_tc_frag_addr_of<D>(sK, (lane & 7) + ((lane >> 3) & 1) * 8, lane >> 4);
    // this thread's rows r: 16 warp + lane / 4 + 8 r
    float lse[2], delta[2], acc[D / 8][4];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const long long row = blk.m0 + warp * 16 + (lane >> 2) + 8 * r;
        lse[r] = row < a.seq_q ? a.lse[rbase + row] : -INFINITY;
        delta[r] = row < a.seq_q ? g.delta[rbase + row] : 0.f;
    }
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[dt][e] = 0.f;
    float pgrad = 0.f;  // this thread's share of sum dS' ds'/dtheta

    const auto tiles = schedule.template tiles<BN>(blk, a.seq_k);
    long long cur = tiles.first, n0;
    int kind;
    while (tiles.next(cur, n0, kind)) {
        const int br = sc.tile_branches(blk.p_lo, blk.p_hi, n0, min(n0 + BN, (long long)a.seq_k) - 1);
        __syncthreads();  // the previous tile's K, V are consumed
        af_bwd_tc_rows<BN, D, NT>(sK, blk.kb, n0, a.seq_k, a.k_stride_s, tid);
        af_bwd_tc_rows<BN, D, NT>(sV, blk.vb, n0, a.seq_k, a.v_stride_s, tid);
        af_cp_async_commit();
        af_cp_async_wait<0>();
        __syncthreads();
        float s[NT8][4], dp[NT8][4];
#pragma unroll
        for (int j = 0; j < NT8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) s[j][e] = dp[j][e] = 0.f;
        af_tc_qk<Tile, 1, T>(s, q_frag, k_frag);
        af_tc_qk<Tile, 1, T>(dp, o_frag, v_frag);
        // element e of n8 tile j: row r = e >> 1, key column c = 2 j + (e & 1); bit 4 j + e
        af_bits_t<NT8 * 4> okb, nearb;
        af_element_bits<BM, BN, 2, 2 * NT8>(
            okb, nearb, hooks.mask, sc, kind, br, blk, n0, a.seq_k,
            [&](int r) { return warp * 16 + (lane >> 2) + 8 * r; },
            [&](int c) { return (c >> 1) * 8 + 2 * (lane & 3) + (c & 1); },
            [](int r, int c) { return 4 * (c >> 1) + 2 * r + (c & 1); });
#pragma unroll
        for (int j = 0; j < NT8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int bit = 4 * j + e, r = e >> 1;
                const long long q_pos = blk.m0 + warp * 16 + (lane >> 2) + 8 * r + blk.shift;
                const long long kv_pos = n0 + 8 * j + 2 * (lane & 3) + (e & 1);
                float p;
                s[j][e] = af_bwd_entry<true>((okb >> bit) & 1, s[j][e], dp[j][e], lse[r], delta[r], a.scale, q_pos, kv_pos,
                                             hooks, grad, p, pgrad, prow);
            }
        // dQ += dS K: the C fragments of dS (n8 tiles 2 kk, 2 kk + 1) are the A fragment of key chunk kk
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk) {
            unsigned sa[4];
            af_bwd_tc_afrag<T>(sa, s, kk);
            af_bwd_tc_acc<D, T>(acc, sa, kt_frag, kk);
        }
    }
    af_cp_async_wait<0>();  // Q, dO of a block without key tiles
    af_bwd_tc_store<D>(g.dq + rbase * D, acc, blk.m0 + warp * 16, a.seq_q, a.scale, lane);
    const long long block = ((long long)blk.b * a.heads_q + blk.h) * gridDim.x + blockIdx.x;
    if (Grad::PARAMS == AF_PARAMS_SCALAR && g.dparam != nullptr) {  // uniform over the block
        const float sum = af_block_sum_ordered<NW>(pgrad, sRed, tid);
        if (tid == 0) g.dparam[block] = sum;
    }
    if (Grad::PARAMS == AF_PARAMS_ROWS && g.dparam != nullptr) {
        __syncthreads();  // every row is final
        for (int e = tid; e < theta_len; e += NT) {
            float sum = 0.f;
            for (int t = 0; t < NT; ++t) sum += sTheta[t * theta_len + e];  // threads in order: deterministic
            g.dparam[block * theta_len + e] = sum;
        }
    }
}
