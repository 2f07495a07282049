// attnforge FMA forward main loop (f32 accumulation, every element type). Per thread block:
// BM query rows of one (b, h); warp w owns rows [ROWS w, ROWS w + ROWS), lane l the key
// columns l + 32 c of S and the output columns l + 32 t of O. Policies: see af_fwd.cuh.
//
// for each key tile of the schedule:
//     K, V -> shared as f32; S = Q K^T per scoring branch; allowed-element bits
//     S = score(S), masked; online softmax (score units); P -> shared; O += P V
// epilogue: O = acc / l, lse = m + ln(l)

// ---- loads, per scoring policy ----
// Q tile -> shared as f32 (rows past seq_q are zero); the scale is applied to the dot product.
template <class Tile, typename T, class SQ, class Layout>
__device__ __forceinline__ void af_fma_load_q(const af_dot_scoring&, const SQ& sQ, const af_fwd_args<T>& a,
                                              const af_fwd_block<T>& blk, const Layout& layout, int tid) {
    constexpr int BM = Tile::BM, D = Tile::D, NT = Tile::NT;
    for (int idx = tid; idx < BM * D; idx += NT) {
        const int r = idx / D, d = idx % D;
        const long long row = blk.m0 + r;
        sQ[idx] = row < blk.seq_q ? af_to_float(blk.qb[af_q_off(layout, a, blk, row) + d]) : 0.f;
    }
}

// LM-Infinite: Q tile -> shared, rotated at its position (branch 0, near) and at Deff (branch 1,
// far), rounded to the input dtype (the LM-Infinite contract). RoPE per element pair, kept
// rolled: one copy of the rotation code.
template <class Tile, typename T, class SQ, class Layout>
__device__ __forceinline__ void af_fma_load_q(const af_lminf_scoring& sc, const SQ& sQ, const af_fwd_args<T>& a,
                                              const af_fwd_block<T>& blk, const Layout& layout, int tid) {
    constexpr int BM = Tile::BM, D = Tile::D, NT = Tile::NT;
    const T* tag = nullptr;
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
        sQ[r * D + m] = af_round_as(tag, x0);
        sQ[r * D + m + D / 2] = af_round_as(tag, x1);
        sQ[BM * D + r * D + m] = af_round_as(tag, y0);
        sQ[BM * D + r * D + m + D / 2] = af_round_as(tag, y1);
    }
}

// K, V tile n0 -> shared as f32 (zero past seq_k); K rows padded to KS.
template <class Tile, int KS, typename T, class SK, class SV, class Layout>
__device__ __forceinline__ void af_fma_load_kv(const af_dot_scoring&, const SK& sK, const SV& sV, const af_fwd_args<T>& a,
                                               const af_fwd_block<T>& blk, const Layout& layout, long long n0, int tid) {
    constexpr int BN = Tile::BN, D = Tile::D, NT = Tile::NT;
    for (int idx = tid; idx < BN * D; idx += NT) {
        const int j = idx / D, d = idx % D;
        const long long kv = n0 + j;
        float kx = 0.f, vx = 0.f;
        if (kv < blk.seq_k) {
            const long long row = layout.kv_row(blk, kv);
            kx = af_to_float(blk.kb[row * a.k_stride_s + d]);
            vx = af_to_float(blk.vb[row * a.v_stride_s + d]);
        }
        sK[j * KS + d] = kx;
        sV[idx] = vx;
    }
}

// LM-Infinite: K tile -> shared rotated at its position (branch 0, rounded to the input dtype)
// and un-rotated (branch 1, BN * KS elements further); V as f32.
template <class Tile, int KS, typename T, class SK, class SV, class Layout>
__device__ __forceinline__ void af_fma_load_kv(const af_lminf_scoring& sc, const SK& sK, const SV& sV, const af_fwd_args<T>& a,
                                               const af_fwd_block<T>& blk, const Layout& layout, long long n0, int tid) {
    constexpr int BN = Tile::BN, D = Tile::D, NT = Tile::NT, RAW = Tile::BN * KS;
    const T* tag = nullptr;
    // RoPE per element pair, kept rolled: one copy of the rotation code
#pragma unroll 1
    for (int idx = tid; idx < BN * (D / 2); idx += NT) {
        const int j = idx / (D / 2), m = idx % (D / 2);
        const long long kv = n0 + j;
        float x0 = 0.f, x1 = 0.f;
        if (kv < blk.seq_k) {
            const long long row = layout.kv_row(blk, kv);
            x0 = af_to_float(blk.kb[row * a.k_stride_s + m]);
            x1 = af_to_float(blk.kb[row * a.k_stride_s + m + D / 2]);
        }
        sK[RAW + j * KS + m] = x0;
        sK[RAW + j * KS + m + D / 2] = x1;
        sc.rotate_k(x0, x1, kv, m, D);
        sK[j * KS + m] = af_round_as(tag, x0);
        sK[j * KS + m + D / 2] = af_round_as(tag, x1);
    }
    for (int idx = tid; idx < BN * D; idx += NT) {
        const int j = idx / D, d = idx % D;
        const long long kv = n0 + j;
        sV[idx] = kv < blk.seq_k ? af_to_float(blk.vb[layout.kv_row(blk, kv) * a.v_stride_s + d]) : 0.f;
    }
}

// S[r][c] += sum_d Q[r][d] * K[lane + 32 c][d] (Q at element q0 of sQ, K at element k0 of sK).
template <class Tile, int KS, class SQ, class SK>
__device__ __forceinline__ void af_fma_qk(float (&s)[Tile::BM / Tile::NW][Tile::BN / 32], const SQ& sQ, int q0, const SK& sK,
                                          int k0, int warp, int lane) {
    constexpr int D = Tile::D, ROWS = Tile::BM / Tile::NW, CPL = Tile::BN / 32;
#pragma unroll 4
    for (int d = 0; d < D; ++d) {
        float kk[CPL];
#pragma unroll
        for (int c = 0; c < CPL; ++c) kk[c] = sK[k0 + (lane + 32 * c) * KS + d];
#pragma unroll
        for (int r = 0; r < ROWS; ++r) {
            const float qv = sQ[q0 + (warp * ROWS + r) * D + d];
#pragma unroll
            for (int c = 0; c < CPL; ++c) s[r][c] += qv * kk[c];
        }
    }
}

template <class Tile, typename T, class Schedule, class BlockHooks, class Scoring, class Layout = af_dense_layout,
          class Stats = af_no_stats>
__device__ __forceinline__ void af_fwd_fma(const af_fwd_args<T>& a, const Schedule& schedule, const BlockHooks& block_hooks,
                                           const Scoring& scoring, const Layout& layout = Layout{}, const Stats& stats = Stats{}) {
    constexpr int BM = Tile::BM, BN = Tile::BN, D = Tile::D;
    constexpr int ROWS = BM / Tile::NW;  // query rows per warp
    constexpr int CPL = BN / 32;         // key columns per lane (S = Q K^T)
    constexpr int DPL = D / 32;          // output columns per lane (O += P V)
    constexpr int KS = D + 1;            // padded K row stride (conflict-free column reads)
    constexpr int NB = Scoring::BRANCHES;
    // [NB][BM][D] Q, [NB][BN][KS] K, [BN][D] V, [BM][BN] probabilities, all f32
    AF_DYNAMIC_SHARED(float, af_smem);
    AF_SHARED_VIEW(float, sQ, af_smem, 0, NB * BM * D);
    AF_SHARED_VIEW(float, sK, af_smem, NB * BM * D, NB * BN * KS);
    AF_SHARED_VIEW(float, sV, af_smem, NB * (BM * D + BN * KS), BN * D);
    AF_SHARED_VIEW(float, sP, af_smem, NB * (BM * D + BN * KS) + BN * D, BM * BN);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    af_fwd_block<T> blk;
    if (!layout.template block<BM>(a, blk)) return;  // past its sequence's rows (whole block)
    const Scoring sc = scoring.for_seq(blk.seq_k);
    const auto hooks = af_layout_hooks(layout, block_hooks, blk);  // per row under a packed layout
    af_fma_load_q<Tile>(sc, sQ, a, blk, layout, tid);

    // online softmax state (score units) and output accumulators, per owned row
    float m_i[ROWS], l_i[ROWS], acc[ROWS][DPL];
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        m_i[r] = -INFINITY;
        l_i[r] = 0.f;
#pragma unroll
        for (int t = 0; t < DPL; ++t) acc[r][t] = 0.f;
    }

    const auto tiles = schedule.template tiles<BN>(blk, blk.seq_k);
    long long cur = tiles.first, n0;
    int kind;
    while (tiles.next(cur, n0, kind)) {
        const int br = sc.tile_branches(blk.p_lo, blk.p_hi, n0, min(n0 + BN, (long long)blk.seq_k) - 1);
        af_count_tile<BN, decltype(hooks.mask)>(tid, kind, blk, n0, blk.seq_k);
        __syncthreads();  // previous tile's K, V, P are consumed
        af_fma_load_kv<Tile, KS>(sc, sK, sV, a, blk, layout, n0, tid);
        __syncthreads();

        // S = Q K^T per scoring branch the tile needs: lane owns key columns lane + 32 c
        float s[NB][ROWS][CPL];
#pragma unroll
        for (int bi = 0; bi < NB; ++bi) {
#pragma unroll
            for (int r = 0; r < ROWS; ++r)
#pragma unroll
                for (int c = 0; c < CPL; ++c) s[bi][r][c] = 0.f;
            if ((br >> bi) & 1) af_fma_qk<Tile, KS>(s[bi], sQ, bi * BM * D, sK, bi * BN * KS, warp, lane);
        }

        af_bits_t<ROWS * CPL> okb, nearb;
        af_element_bits<BM, BN, ROWS, CPL>(
            okb, nearb, hooks.mask, af_row_scoring(layout, sc, blk), kind, br, blk, n0, blk.seq_k, [&](int r) { return warp * ROWS + r; },
            [&](int c) { return lane + 32 * c; }, [](int r, int c) { return r * CPL + c; });
        // score mod, mask bits, online softmax; P -> shared
#pragma unroll
        for (int r = 0; r < ROWS; ++r) {
            const long long q_pos = blk.m0 + warp * ROWS + r + blk.shift;
            float x_c[CPL];
            float mx = -INFINITY;
#pragma unroll
            for (int c = 0; c < CPL; ++c) {
                const int bit = r * CPL + c;
                const long long kv_pos = n0 + lane + 32 * c;
                float x = (NB > 1 && !((nearb >> bit) & 1) ? s[NB - 1][r][c] : s[0][r][c]) * a.scale;  // scaled score
                if ((okb >> bit) & 1) {
                    x = hooks.score(x, q_pos, kv_pos);
                } else {
                    x = -INFINITY;  // masked
                }
                x_c[c] = x;
                mx = fmaxf(mx, x);
            }
            mx = af_warp_max(mx);
            const float m_new = fmaxf(m_i[r], mx);
            const float m_use = m_new == -INFINITY ? 0.f : m_new;  // all masked so far: exp2(-inf) = 0, no NaN
            // score units: only the difference to the max is scaled by log2 e, so scores of
            // magnitude ~1e3 lose no bits to a rounded s * log2 e
            const float alpha = exp2f((m_i[r] - m_use) * AF_LOG2E);
            float rs = 0.f;
#pragma unroll
            for (int c = 0; c < CPL; ++c) {
                const float p = exp2f((x_c[c] - m_use) * AF_LOG2E);
                rs += p;
                sP[(warp * ROWS + r) * BN + lane + 32 * c] = p;
            }
            l_i[r] = l_i[r] * alpha + af_warp_sum(rs);
            m_i[r] = m_new;
#pragma unroll
            for (int t = 0; t < DPL; ++t) acc[r][t] *= alpha;
        }
        __syncwarp();

        // O += P V: lane owns output columns lane + 32 t
#pragma unroll 2
        for (int j = 0; j < BN; ++j) {
            float vv[DPL];
#pragma unroll
            for (int t = 0; t < DPL; ++t) vv[t] = sV[j * D + lane + 32 * t];
#pragma unroll
            for (int r = 0; r < ROWS; ++r) {
                const float pj = sP[(warp * ROWS + r) * BN + j];
#pragma unroll
                for (int t = 0; t < DPL; ++t) acc[r][t] += pj * vv[t];
            }
        }
    }

    // epilogue: O = acc / l in the input dtype; lse = m + ln(l); empty rows: O = 0, lse = -inf
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        const long long row = blk.m0 + warp * ROWS + r;
        if (row < blk.seq_q) {
            const bool empty = l_i[r] == 0.f;
            const float inv = empty ? 0.f : 1.f / l_i[r];
            if (af_writes_partial(layout)) {  // a split decode block: f32 partials for the merge
                float* dst = af_o_partial(layout, a, blk, row);
#pragma unroll
                for (int t = 0; t < DPL; ++t) dst[lane + 32 * t] = empty ? 0.f : acc[r][t] * inv;
            } else {
#pragma unroll
                for (int t = 0; t < DPL; ++t) af_store(blk.ob + af_o_off(layout, a, blk, row) + lane + 32 * t, empty ? 0.f : acc[r][t] * inv);
            }
            float* const lse = af_lse_out(layout, a);
            if (lane == 0 && lse != nullptr) lse[layout.lse_at(a, blk, row)] = empty ? -INFINITY : m_i[r] + logf(l_i[r]);
        }
    }
    stats.template sweep<Tile>(a, blk, layout, schedule, hooks, sc);  // statistics policy (af_fwd.cuh)
}
