// attnforge backward kernels (variants.md section 12), FlexAttention's split: no atomics, so
// two runs give bit-identical gradients. Three kernels per variant, each an extern "C"
// wrapper around one template below, built from the forward's policies (af_fwd.cuh: the
// schedule, the per-block mask and score hooks) plus two of the backward's own:
//
//   af_bwd_delta: Delta_i = dot(dO_i, O_i) - dlse_i, one warp per query row;
//   af_bwd_dkdv:  one block per key tile of one kv head; walks the query heads of its GQA group
//                 in order and, per head, the query tiles of the transposed schedule:
//                 dV_j = sum_i P_ij dO_i, dK_j = scale sum_i dS_ij q_i;
//   af_bwd_dq:    one block per query tile of one query head; walks the forward schedule:
//                 dQ_i = scale sum_j dS_ij k_j, and the block's share of the score parameter's
//                 gradient sum_ij dS'_ij ds'/dtheta (one partial per block, summed by the host
//                 in a fixed order).
//
// with P_ij = exp(s'_ij - lse_i) on allowed entries (the forward's lse, natural log),
// dS'_ij = P_ij (dot(dO_i, v_j) - Delta_i) and dS_ij = dS'_ij ds'/ds.
//
// - query schedule (transposed): `queries<BM>(b, h, c0, c1, seq_q, seq_k)` returns a walk with
//   `first` and `next(cur, m0, kind)` over the query tiles that may see a key of [c0, c1]:
//     af_analytic_queries: closed-form query positions [lo(c0, c1), hi(c0, c1)) (the mask
//                          table's query_range), each tile classified by the forward's classifier
//     af_block_list_queries<BQ, BK>: the transposed block lists (built once on the host): per
//                          key block, the full, then the partial query blocks
// - grad hooks (per query head): `d_score(x, q_pos, kv_pos)` = ds'/ds at the raw scaled score x
//   and `d_param(x, q_pos, kv_pos)` = ds'/dtheta of the one learnable parameter (0 without).
//
// Arithmetic is f32 FMA for every element type; each thread block holds its K/V (dK/dV) or
// Q/dO (dQ) tile in shared memory as f32.

template <typename T>
struct af_bwd_args {
    const T* dout;      // dO [B, Hq, Sq, D], contiguous
    const float* dlse;  // [B, Hq, Sq] or null
    float* delta;       // [B, Hq, Sq]: written by af_bwd_delta, read by the others
    T* dq;              // [B, Hq, Sq, D], contiguous
    T* dk;              // [B, Hkv, Sk, D], contiguous
    T* dv;              // [B, Hkv, Sk, D], contiguous
    float* dparam;      // [B, Hq, ceil(Sq / BM)] partial parameter gradients of af_bwd_dq, or null
};

// ---- grad hooks ----
struct af_no_score_grad {
    static constexpr bool has_param = false;
    __device__ __forceinline__ float d_score(float, long long, long long) const { return 1.f; }
    __device__ __forceinline__ float d_param(float, long long, long long) const { return 0.f; }
};

template <class DScore, class DParam>
struct af_score_grad_fns {
    static constexpr bool has_param = true;
    DScore ds;  // (x, q_pos, kv_pos) -> ds'/ds
    DParam dp;  // (x, q_pos, kv_pos) -> ds'/dtheta
    __device__ __forceinline__ float d_score(float x, long long q, long long kv) const { return ds(x, q, kv); }
    __device__ __forceinline__ float d_param(float x, long long q, long long kv) const { return dp(x, q, kv); }
};

template <class DScore, class DParam>
__device__ __forceinline__ af_score_grad_fns<DScore, DParam> af_score_grad(DScore ds, DParam dp) {
    return {ds, dp};
}

// softcap s' = c tanh(s / c): ds'/ds = 1 - tanh^2(s / c), ds'/dc = tanh(s / c) - (s / c)(1 - tanh^2)
__device__ __forceinline__ float af_softcap_dscore(float s, float cap) {
    const float t = tanhf(s / cap);
    return 1.f - t * t;
}
__device__ __forceinline__ float af_softcap_dcap(float s, float cap) {
    const float u = s / cap, t = tanhf(u);
    return t - u * (1.f - t * t);
}
// ALiBi s' = s - slope |p - j|: ds'/dslope = -|p - j|
__device__ __forceinline__ float af_alibi_dslope(long long q, long long kv) { return -fabsf((float)(int)(q - kv)); }

// ---- transposed schedules ----
template <int BM, class Classify>
struct af_query_walk {
    long long first, row_hi, shift, c0, c1;
    int seq_q;
    Classify classify;
    __device__ __forceinline__ bool next(long long& cur, long long& m0, int& kind) const {
        while (cur < row_hi) {
            m0 = cur;
            cur += BM;
            const long long p_lo = m0 + shift, p_hi = min(m0 + BM, (long long)seq_q) - 1 + shift;
            kind = classify(p_lo, p_hi, c0, c1);
            if (kind != AF_TILE_SKIP) return true;  // skipped tiles are never visited
        }
        return false;
    }
};

template <class Lo, class Hi, class Classify>
struct af_analytic_queries {
    Lo lo;              // (c0, c1) -> first query position that may see a key of [c0, c1]
    Hi hi;              // (c0, c1) -> one past the last one
    Classify classify;  // the forward's (p_lo, p_hi, c0, c1) -> AF_TILE_*
    template <int BM>
    __device__ __forceinline__ af_query_walk<BM, Classify> queries(int, int, long long c0, long long c1, int seq_q,
                                                                   int seq_k) const {
        const long long shift = (long long)seq_k - seq_q;
        const long long r_lo = max(lo(c0, c1) - shift, 0LL), r_hi = min(hi(c0, c1) - shift, (long long)seq_q);
        return {(r_lo / BM) * BM, r_hi, shift, c0, c1, seq_q, classify};
    }
};

template <class Lo, class Hi, class Classify>
__device__ __forceinline__ af_analytic_queries<Lo, Hi, Classify> af_queries(Lo lo, Hi hi, Classify classify) {
    return {lo, hi, classify};
}

template <int BM, int BQ>
struct af_block_list_query_walk {
    static constexpr int SUB = BQ / BM;  // kernel query tiles per list block
    long long first;
    int n_full, n_part, seq_q;
    const int* full_idx;
    const int* part_idx;
    __device__ __forceinline__ bool next(long long& cur, long long& m0, int& kind) const {
        while (cur < (long long)(n_full + n_part) * SUB) {
            const int e = (int)(cur / SUB);
            kind = e < n_full ? AF_TILE_FULL : AF_TILE_PARTIAL;
            m0 = (long long)(e < n_full ? full_idx[e] : part_idx[e - n_full]) * BQ + (cur % SUB) * BM;
            ++cur;
            if (m0 < seq_q) return true;  // sub-tiles past the last query are not visited
        }
        return false;
    }
};

// The transposed lists of BQ x BK blocks: per (batch, head, key block) row, the full query
// blocks, then the partial ones (a batch or head extent of 1 is shared by all).
template <int BQ, int BK>
struct af_block_list_queries {
    const int* full_num;
    const int* full_idx;
    const int* partial_num;
    const int* partial_idx;
    int batches, heads, rows, width;
    template <int BM>
    __device__ __forceinline__ af_block_list_query_walk<BM, BQ> queries(int b, int h, long long c0, long long, int seq_q,
                                                                        int) const {
        const long long lrow = ((long long)(batches == 1 ? 0 : b) * heads + (heads == 1 ? 0 : h)) * rows + c0 / BK;
        return {0, full_num[lrow], partial_num[lrow], seq_q, full_idx + lrow * width, partial_idx + lrow * width};
    }
};

// ---- shared steps ----
// The score of one allowed entry and its gradients: P = exp(s' - lse), dS' = P (dP - Delta),
// dS = dS' ds'/ds; `pgrad` accumulates dS' ds'/dtheta. Disallowed entries (and empty rows,
// lse = -inf) give 0 and never NaN.
template <class Hooks, class Grad>
__device__ __forceinline__ float af_bwd_entry(bool ok, float s, float dp, float lse, float delta, float scale,
                                              long long q_pos, long long kv_pos, const Hooks& hooks, const Grad& grad,
                                              float& p_out, float& pgrad) {
    p_out = 0.f;
    if (!ok || lse == -INFINITY) return 0.f;
    const float x = s * scale;
    const float p = expf(hooks.score(x, q_pos, kv_pos) - lse);
    const float dsp = p * (dp - delta);
    p_out = p;
    if (Grad::has_param) pgrad += dsp * grad.d_param(x, q_pos, kv_pos);
    return dsp * grad.d_score(x, q_pos, kv_pos);
}

// Sum of v over the block's threads in a fixed order (the same bits every run): a warp
// butterfly, then the warps' sums in order by thread 0. `red` holds NW floats.
template <int NW>
__device__ __forceinline__ float af_block_sum_ordered(float v, float* red, int tid) {
    v = af_warp_sum(v);
    if ((tid & 31) == 0) red[tid >> 5] = v;
    __syncthreads();
    float s = 0.f;
    if (tid == 0)
#pragma unroll
        for (int w = 0; w < NW; ++w) s += red[w];
    return s;
}

// ---- Delta ----
template <int NW, int D, typename T>
__device__ __forceinline__ void af_bwd_delta(const af_fwd_args<T>& a, const af_bwd_args<T>& g) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const long long row = (long long)blockIdx.x * NW + warp;
    if (row >= a.seq_q) return;
    const int b = blockIdx.z, h = blockIdx.y;
    const T* o = a.o + (long long)b * a.o_stride_b + (long long)h * a.o_stride_h + row * a.o_stride_s;
    const long long r = ((long long)b * a.heads_q + h) * a.seq_q + row;
    const T* dout = g.dout + r * D;
    float s = 0.f;
#pragma unroll
    for (int d = lane; d < D; d += 32) s += af_to_float(o[d]) * af_to_float(dout[d]);
    s = af_warp_sum(s);
    if (lane == 0) g.delta[r] = s - (g.dlse != nullptr ? g.dlse[r] : 0.f);
}

// ---- dK, dV ----
// Block: key tile [n0, n0 + BN) of kv head hkv, batch b. Warp w owns keys w KR .. w KR + KR - 1,
// lane l the query columns l + 32 c of a query tile and the dimensions l + 32 t of dK / dV.
template <class Tile, typename T, class Queries, class BlockHooks, class GradHooks>
__device__ __forceinline__ void af_bwd_dkdv(const af_fwd_args<T>& a, const af_bwd_args<T>& g, const Queries& queries,
                                            const BlockHooks& block_hooks, const GradHooks& grad_hooks) {
    constexpr int BM = Tile::BM, BN = Tile::BN, D = Tile::D, NW = Tile::NW, NT = Tile::NT;
    constexpr int KR = BN / NW;   // keys per warp
    constexpr int CPL = BM / 32;  // query columns per lane
    constexpr int DPL = D / 32;   // gradient dimensions per lane
    constexpr int QS = D + 1;     // padded Q / dO row stride (conflict-free column reads)
    // [BN][D] K, [BN][D] V, [BM][QS] Q, [BM][QS] dO, [BN][BM] P, [BN][BM] dS, [BM] lse, [BM] Delta
    AF_DYNAMIC_SHARED(float, af_smem);
    AF_SHARED_VIEW(float, sK, af_smem, 0, BN * D);
    AF_SHARED_VIEW(float, sV, af_smem, BN * D, BN * D);
    AF_SHARED_VIEW(float, sQ, af_smem, 2 * BN * D, BM * QS);
    AF_SHARED_VIEW(float, sdO, af_smem, 2 * BN * D + BM * QS, BM * QS);
    AF_SHARED_VIEW(float, sP, af_smem, 2 * BN * D + 2 * BM * QS, BN * BM);
    AF_SHARED_VIEW(float, sdS, af_smem, 2 * BN * D + 2 * BM * QS + BN * BM, BN * BM);
    AF_SHARED_VIEW(float, sL, af_smem, 2 * BN * D + 2 * BM * QS + 2 * BN * BM, BM);
    AF_SHARED_VIEW(float, sDelta, af_smem, 2 * BN * D + 2 * BM * QS + 2 * BN * BM + BM, BM);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int b = blockIdx.z, hkv = blockIdx.y;
    const long long n0 = (long long)blockIdx.x * BN;
    const int cols_in = (int)min((long long)BN, (long long)a.seq_k - n0);
    const long long c0 = n0, c1 = n0 + cols_in - 1;
    const long long shift = (long long)a.seq_k - a.seq_q;
    const T* kb = a.k + (long long)b * a.k_stride_b + (long long)hkv * a.k_stride_h;
    const T* vb = a.v + (long long)b * a.v_stride_b + (long long)hkv * a.v_stride_h;
    for (int idx = tid; idx < BN * D; idx += NT) {
        const int j = idx / D, d = idx % D;
        const bool in = j < cols_in;
        sK[idx] = in ? af_to_float(kb[(n0 + j) * a.k_stride_s + d]) : 0.f;
        sV[idx] = in ? af_to_float(vb[(n0 + j) * a.v_stride_s + d]) : 0.f;
    }
    float dk[KR][DPL], dv[KR][DPL];
#pragma unroll
    for (int j = 0; j < KR; ++j)
#pragma unroll
        for (int t = 0; t < DPL; ++t) dk[j][t] = dv[j][t] = 0.f;

    const int group = a.heads_q / a.heads_kv;
#pragma unroll 1
    for (int gi = 0; gi < group; ++gi) {  // the query heads of the group, in order: deterministic sums
        const int h = hkv * group + gi;
        const auto hooks = block_hooks(b, h);
        const auto grad = grad_hooks(b, h);
        float unused_pgrad = 0.f;  // parameter gradients are af_bwd_dq's
        const T* qb = a.q + (long long)b * a.q_stride_b + (long long)h * a.q_stride_h;
        const long long rbase = ((long long)b * a.heads_q + h) * a.seq_q;
        const auto walk = queries.template queries<BM>(b, h, c0, c1, a.seq_q, a.seq_k);
        long long cur = walk.first, m0;
        int kind;
        while (walk.next(cur, m0, kind)) {
            const int rows_in = (int)min((long long)BM, (long long)a.seq_q - m0);
            __syncthreads();  // the previous tile's Q, dO, P, dS are consumed
            for (int idx = tid; idx < BM * D; idx += NT) {
                const int i = idx / D, d = idx % D;
                const bool in = i < rows_in;
                sQ[i * QS + d] = in ? af_to_float(qb[(m0 + i) * a.q_stride_s + d]) : 0.f;
                sdO[i * QS + d] = in ? af_to_float(g.dout[(rbase + m0 + i) * D + d]) : 0.f;
            }
            for (int i = tid; i < BM; i += NT) {
                sL[i] = i < rows_in ? a.lse[rbase + m0 + i] : -INFINITY;
                sDelta[i] = i < rows_in ? g.delta[rbase + m0 + i] : 0.f;
            }
            __syncthreads();
            // S^T = K Q^T and dP^T = V dO^T for the warp's keys x the lane's queries
            float s[KR][CPL], dp[KR][CPL];
#pragma unroll
            for (int j = 0; j < KR; ++j)
#pragma unroll
                for (int c = 0; c < CPL; ++c) s[j][c] = dp[j][c] = 0.f;
#pragma unroll 4
            for (int d = 0; d < D; ++d) {
                float qq[CPL], oo[CPL];
#pragma unroll
                for (int c = 0; c < CPL; ++c) {
                    qq[c] = sQ[(lane + 32 * c) * QS + d];
                    oo[c] = sdO[(lane + 32 * c) * QS + d];
                }
#pragma unroll
                for (int j = 0; j < KR; ++j) {
                    const float kk = sK[(warp * KR + j) * D + d], vv = sV[(warp * KR + j) * D + d];
#pragma unroll
                    for (int c = 0; c < CPL; ++c) {
                        s[j][c] += kk * qq[c];
                        dp[j][c] += vv * oo[c];
                    }
                }
            }
            const bool partial = decltype(hooks.mask)::active && kind == AF_TILE_PARTIAL;
#pragma unroll
            for (int j = 0; j < KR; ++j) {
                const int tj = warp * KR + j;
                const long long kv_pos = n0 + tj;
#pragma unroll
                for (int c = 0; c < CPL; ++c) {
                    const int i = lane + 32 * c;
                    const long long q_pos = m0 + i + shift;
                    bool ok = i < rows_in && tj < cols_in;
                    if (ok && partial) ok = hooks.mask(q_pos, kv_pos);
                    float p;
                    const float ds = af_bwd_entry(ok, s[j][c], dp[j][c], sL[i], sDelta[i], a.scale, q_pos, kv_pos,
                                                  hooks, grad, p, unused_pgrad);
                    sP[tj * BM + i] = p;
                    sdS[tj * BM + i] = ds;
                }
            }
            __syncwarp();
            // dV_j += sum_i P_ij dO_i, dK_j += sum_i dS_ij q_i (the warp's own rows of P and dS)
#pragma unroll 2
            for (int i = 0; i < BM; ++i) {
                float qv[DPL], ov[DPL];
#pragma unroll
                for (int t = 0; t < DPL; ++t) {
                    qv[t] = sQ[i * QS + lane + 32 * t];
                    ov[t] = sdO[i * QS + lane + 32 * t];
                }
#pragma unroll
                for (int j = 0; j < KR; ++j) {
                    const float pj = sP[(warp * KR + j) * BM + i], dsj = sdS[(warp * KR + j) * BM + i];
#pragma unroll
                    for (int t = 0; t < DPL; ++t) {
                        dv[j][t] += pj * ov[t];
                        dk[j][t] += dsj * qv[t];
                    }
                }
            }
        }
    }
    // dK = scale sum_i dS q, dV in the input dtype; keys no query sees get 0
#pragma unroll
    for (int j = 0; j < KR; ++j) {
        const int tj = warp * KR + j;
        if (tj < cols_in) {
            const long long r = ((long long)b * a.heads_kv + hkv) * a.seq_k + n0 + tj;
#pragma unroll
            for (int t = 0; t < DPL; ++t) {
                af_store(g.dk + r * D + lane + 32 * t, dk[j][t] * a.scale);
                af_store(g.dv + r * D + lane + 32 * t, dv[j][t]);
            }
        }
    }
}

// ---- dQ ----
// Block: query tile [m0, m0 + BM) of query head h, batch b (the forward's block). Warp w owns
// rows w ROWS .. w ROWS + ROWS - 1, lane l the key columns l + 32 c of a key tile and the
// dimensions l + 32 t of dQ.
template <class Tile, typename T, class Schedule, class BlockHooks, class GradHooks>
__device__ __forceinline__ void af_bwd_dq(const af_fwd_args<T>& a, const af_bwd_args<T>& g, const Schedule& schedule,
                                          const BlockHooks& block_hooks, const GradHooks& grad_hooks) {
    constexpr int BM = Tile::BM, BN = Tile::BN, D = Tile::D, NW = Tile::NW, NT = Tile::NT;
    constexpr int ROWS = BM / NW;  // query rows per warp
    constexpr int CPL = BN / 32;   // key columns per lane
    constexpr int DPL = D / 32;    // dQ dimensions per lane
    constexpr int KS = D + 1;      // padded K / V row stride (conflict-free column reads)
    // [BM][D] Q, [BM][D] dO, [BN][KS] K, [BN][KS] V, [BM][BN] dS, [NW] block sum
    AF_DYNAMIC_SHARED(float, af_smem);
    AF_SHARED_VIEW(float, sQ, af_smem, 0, BM * D);
    AF_SHARED_VIEW(float, sdO, af_smem, BM * D, BM * D);
    AF_SHARED_VIEW(float, sK, af_smem, 2 * BM * D, BN * KS);
    AF_SHARED_VIEW(float, sV, af_smem, 2 * BM * D + BN * KS, BN * KS);
    AF_SHARED_VIEW(float, sdS, af_smem, 2 * BM * D + 2 * BN * KS, BM * BN);
    AF_SHARED_VIEW(float, sRed, af_smem, 2 * BM * D + 2 * BN * KS + BM * BN, NW);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const af_fwd_block<T> blk = af_fwd_block_of<BM>(a);
    const auto hooks = block_hooks(blk.b, blk.h);
    const auto grad = grad_hooks(blk.b, blk.h);
    const long long rbase = ((long long)blk.b * a.heads_q + blk.h) * a.seq_q;
    for (int idx = tid; idx < BM * D; idx += NT) {
        const int r = idx / D, d = idx % D;
        const long long row = blk.m0 + r;
        const bool in = row < a.seq_q;
        sQ[idx] = in ? af_to_float(blk.qb[row * a.q_stride_s + d]) : 0.f;
        sdO[idx] = in ? af_to_float(g.dout[(rbase + row) * D + d]) : 0.f;
    }
    float lse[ROWS], delta[ROWS], acc[ROWS][DPL];
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        const long long row = blk.m0 + warp * ROWS + r;
        lse[r] = row < a.seq_q ? a.lse[rbase + row] : -INFINITY;
        delta[r] = row < a.seq_q ? g.delta[rbase + row] : 0.f;
#pragma unroll
        for (int t = 0; t < DPL; ++t) acc[r][t] = 0.f;
    }
    float pgrad = 0.f;  // this thread's share of sum dS' ds'/dtheta

    const auto tiles = schedule.template tiles<BN>(blk, a.seq_k);
    long long cur = tiles.first, n0;
    int kind;
    while (tiles.next(cur, n0, kind)) {
        __syncthreads();  // the previous tile's K, V, dS are consumed (and Q, dO stored)
        for (int idx = tid; idx < BN * D; idx += NT) {
            const int j = idx / D, d = idx % D;
            const long long kv = n0 + j;
            const bool in = kv < a.seq_k;
            sK[j * KS + d] = in ? af_to_float(blk.kb[kv * a.k_stride_s + d]) : 0.f;
            sV[j * KS + d] = in ? af_to_float(blk.vb[kv * a.v_stride_s + d]) : 0.f;
        }
        __syncthreads();
        float s[ROWS][CPL], dp[ROWS][CPL];
#pragma unroll
        for (int r = 0; r < ROWS; ++r)
#pragma unroll
            for (int c = 0; c < CPL; ++c) s[r][c] = dp[r][c] = 0.f;
#pragma unroll 4
        for (int d = 0; d < D; ++d) {
            float kk[CPL], vv[CPL];
#pragma unroll
            for (int c = 0; c < CPL; ++c) {
                kk[c] = sK[(lane + 32 * c) * KS + d];
                vv[c] = sV[(lane + 32 * c) * KS + d];
            }
#pragma unroll
            for (int r = 0; r < ROWS; ++r) {
                const float qv = sQ[(warp * ROWS + r) * D + d], ov = sdO[(warp * ROWS + r) * D + d];
#pragma unroll
                for (int c = 0; c < CPL; ++c) {
                    s[r][c] += qv * kk[c];
                    dp[r][c] += ov * vv[c];
                }
            }
        }
        af_bits_t<ROWS * CPL> okb, nearb;
        af_element_bits<BM, BN, ROWS, CPL>(
            okb, nearb, hooks.mask, af_dot_scoring{}, kind, 1, blk, n0, a.seq_k, [&](int r) { return warp * ROWS + r; },
            [&](int c) { return lane + 32 * c; }, [](int r, int c) { return r * CPL + c; });
#pragma unroll
        for (int r = 0; r < ROWS; ++r) {
            const long long q_pos = blk.m0 + warp * ROWS + r + blk.shift;
#pragma unroll
            for (int c = 0; c < CPL; ++c) {
                const long long kv_pos = n0 + lane + 32 * c;
                float p;
                sdS[(warp * ROWS + r) * BN + lane + 32 * c] =
                    af_bwd_entry((okb >> (r * CPL + c)) & 1, s[r][c], dp[r][c], lse[r], delta[r], a.scale, q_pos, kv_pos,
                                 hooks, grad, p, pgrad);
            }
        }
        __syncwarp();
        // dQ_i += sum_j dS_ij k_j (the warp's own rows of dS)
#pragma unroll 2
        for (int j = 0; j < BN; ++j) {
            float kv[DPL];
#pragma unroll
            for (int t = 0; t < DPL; ++t) kv[t] = sK[j * KS + lane + 32 * t];
#pragma unroll
            for (int r = 0; r < ROWS; ++r) {
                const float dsj = sdS[(warp * ROWS + r) * BN + j];
#pragma unroll
                for (int t = 0; t < DPL; ++t) acc[r][t] += dsj * kv[t];
            }
        }
    }
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        const long long row = blk.m0 + warp * ROWS + r;
        if (row < a.seq_q)
#pragma unroll
            for (int t = 0; t < DPL; ++t) af_store(g.dq + (rbase + row) * D + lane + 32 * t, acc[r][t] * a.scale);
    }
    if (decltype(grad)::has_param && g.dparam != nullptr) {  // uniform over the block
        const float sum = af_block_sum_ordered<NW>(pgrad, sRed, tid);
        if (tid == 0) g.dparam[((long long)blk.b * a.heads_q + blk.h) * gridDim.x + blockIdx.x] = sum;
    }
}
