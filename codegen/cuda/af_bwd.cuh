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
// - scoring: af_dot_scoring, or af_lminf_scoring (LM-Infinite: a near branch with q and k
//   rotated at their positions and a far branch with q rotated at Deff and k un-rotated; each
//   branch accumulates its own rotated-coordinate gradient, rotated back by the transpose
//   rotation at the end: dQ = R(p)^T dQ_near + R(Deff)^T dQ_far, dK = R(j)^T dK_near + dK_far).
//
// Arithmetic is f32 FMA for every element type; each thread block holds its K/V (dK/dV) or
// Q/dO (dQ) tile in shared memory as f32 (per scoring branch: the rotated q and k rounded to
// the input dtype, as the forward kernels score them).

template <typename T>
struct af_bwd_args {
    const T* dout;      // dO [B, Hq, Sq, D], contiguous
    const float* dlse;  // [B, Hq, Sq] or null
    float* delta;       // [B, Hq, Sq]: written by af_bwd_delta, read by the others
    T* dq;              // [B, Hq, Sq, D], contiguous
    T* dk;              // [B, Hkv, Sk, D], contiguous
    T* dv;              // [B, Hkv, Sk, D], contiguous
    float* dparam;      // [B, Hq, ceil(Sq / BM)] partial parameter gradients of af_bwd_dq, or null
    float* dq_accum;    // [B, Hq, Sq, D] f32 dQ sums of the atomic-dQ variant (zeroed by af_bwd_delta), or null
};

// ---- grad hooks ----
// PARAMS: how the learnable parameters' gradient accumulates: none; one scalar per thread
// (built-in softcap / ALiBi: `d_param`); or a per-thread row of the learnable vector theta in
// shared memory (user score functions: `add_params(row, dsp, x, q_pos, kv_pos)` adds
// dS' ds'/dtheta[e] to row[e] for every element e the entry depends on; `theta_len` elements).
#define AF_PARAMS_NONE 0
#define AF_PARAMS_SCALAR 1
#define AF_PARAMS_ROWS 2

struct af_no_score_grad {
    static constexpr int PARAMS = AF_PARAMS_NONE;
    int theta_len = 0;
    __device__ __forceinline__ float d_score(float, long long, long long) const { return 1.f; }
    __device__ __forceinline__ float d_param(float, long long, long long) const { return 0.f; }
    __device__ __forceinline__ void add_params(float*, float, float, long long, long long) const {}
};

template <class DScore, class DParam>
struct af_score_grad_fns {
    static constexpr int PARAMS = AF_PARAMS_SCALAR;
    DScore ds;  // (x, q_pos, kv_pos) -> ds'/ds
    DParam dp;  // (x, q_pos, kv_pos) -> ds'/dtheta
    int theta_len = 0;
    __device__ __forceinline__ float d_score(float x, long long q, long long kv) const { return ds(x, q, kv); }
    __device__ __forceinline__ float d_param(float x, long long q, long long kv) const { return dp(x, q, kv); }
    __device__ __forceinline__ void add_params(float*, float, float, long long, long long) const {}
};

template <class DScore, class DParam>
__device__ __forceinline__ af_score_grad_fns<DScore, DParam> af_score_grad(DScore ds, DParam dp) {
    return {ds, dp};
}

template <class DScore, class AddParams>
struct af_user_score_grad_fns {
    static constexpr int PARAMS = AF_PARAMS_ROWS;
    DScore ds;       // (x, q_pos, kv_pos) -> ds'/ds
    AddParams add;   // (row, dS', x, q_pos, kv_pos): row[e] += dS' ds'/dtheta[e]
    int theta_len;   // elements of the learnable vector
    __device__ __forceinline__ float d_score(float x, long long q, long long kv) const { return ds(x, q, kv); }
    __device__ __forceinline__ float d_param(float, long long, long long) const { return 0.f; }
    __device__ __forceinline__ void add_params(float* row, float dsp, float x, long long q, long long kv) const {
        add(row, dsp, x, q, kv);
    }
};

template <class DScore, class AddParams>
__device__ __forceinline__ af_user_score_grad_fns<DScore, AddParams> af_user_score_grad(DScore ds, AddParams add,
                                                                                       int theta_len) {
    return {ds, add, theta_len};
}

// row[off[k] + i] += v for parameter k of a user function (theta offsets per parameter, in
// declaration order, and one past the last): a scalar has i = 0; a table index outside the
// table adds nothing (its forward read was out of bounds too: the host checks tables).
__device__ __forceinline__ void af_theta_add(float* row, const int* off, int k, long long i, float v) {
    if (i >= 0 && i < (long long)(off[k + 1] - off[k])) row[off[k] + i] += v;
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
// dS = dS' ds'/ds; with PARAMS, dS' ds'/dtheta goes to `pgrad` (scalar) or `prow` (rows).
// Disallowed entries (and empty rows, lse = -inf) give 0 and never NaN.
template <bool PARAMS, class Hooks, class Grad>
__device__ __forceinline__ float af_bwd_entry(bool ok, float s, float dp, float lse, float delta, float scale,
                                              long long q_pos, long long kv_pos, const Hooks& hooks, const Grad& grad,
                                              float& p_out, float& pgrad, float* prow) {
    p_out = 0.f;
    if (!ok || lse == -INFINITY) return 0.f;
    const float x = s * scale;
    const float p = expf(hooks.score(x, q_pos, kv_pos) - lse);
    const float dsp = p * (dp - delta);
    p_out = p;
    if (PARAMS && Grad::PARAMS == AF_PARAMS_SCALAR) pgrad += dsp * grad.d_param(x, q_pos, kv_pos);
    if (PARAMS && Grad::PARAMS == AF_PARAMS_ROWS) grad.add_params(prow, dsp, x, q_pos, kv_pos);
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
    // the atomic-dQ variant adds into dq_accum: zero it here, before the dK/dV kernel runs, so
    // that no extra launch (or host memset) is needed and repeated runs start from 0
    if (g.dq_accum != nullptr)
        for (int d = lane; d < D; d += 32) g.dq_accum[r * D + d] = 0.f;
}

// The atomic-dQ variant's last kernel (in place of af_bwd_dq): dQ = scale * dq_accum in the
// input dtype, one block per query tile of BM rows (the af_bwd_dq grid).
template <class Tile, typename T>
__device__ __forceinline__ void af_bwd_dq_convert(const af_fwd_args<T>& a, const af_bwd_args<T>& g) {
    constexpr int BM = Tile::BM, D = Tile::D, NT = Tile::NT;
    const long long m0 = (long long)blockIdx.x * BM;
    const long long rbase = ((long long)blockIdx.z * a.heads_q + blockIdx.y) * a.seq_q;
    for (int idx = threadIdx.x; idx < BM * D; idx += NT) {
        const long long row = m0 + idx / D;
        if (row < a.seq_q) af_store(g.dq + (rbase + row) * D + idx % D, a.scale * g.dq_accum[(rbase + row) * D + idx % D]);
    }
}

// ---- loads and final rotations, per scoring policy ----
// Rows [r0, r0 + R) (at most `valid`) of a [*, D] tensor with row stride `stride` -> shared
// f32 at row stride S; zero past `valid`.
template <int R, int D, int S, int NT, typename T>
__device__ __forceinline__ void af_bwd_rows(float* dst, const T* src, long long r0, long long valid, long long stride,
                                            int tid) {
    for (int idx = tid; idx < R * D; idx += NT) {
        const int r = idx / D, d = idx % D;
        dst[r * S + d] = r0 + r < valid ? af_to_float(src[(r0 + r) * stride + d]) : 0.f;
    }
}

// The same rows rotated (RoPE pairs) at position pos(row) and rounded to T, as the forward
// kernels store LM-Infinite's rotated q and k. Kept rolled: one copy of the rotation code.
template <int R, int D, int S, int NT, typename T, class Pos>
__device__ __forceinline__ void af_bwd_rows_rope(float* dst, const T* src, long long r0, long long valid,
                                                 long long stride, Pos pos, float log2_theta, int tid) {
    const T* tag = nullptr;
#pragma unroll 1
    for (int idx = tid; idx < R * (D / 2); idx += NT) {
        const int r = idx / (D / 2), m = idx % (D / 2);
        const long long row = r0 + r;
        float x0 = 0.f, x1 = 0.f;
        if (row < valid) {
            x0 = af_to_float(src[row * stride + m]);
            x1 = af_to_float(src[row * stride + m + D / 2]);
        }
        af_rope_pair(x0, x1, pos(row), af_rope_freq(m, D, log2_theta));
        dst[r * S + m] = af_round_as(tag, x0);
        dst[r * S + m + D / 2] = af_round_as(tag, x1);
    }
}

// Q rows of a tile, per branch: plain, or (LM-Infinite) rotated at the row's position (branch
// 0) and at Deff (branch 1, R * S elements further).
template <int R, int D, int S, int NT, typename T>
__device__ __forceinline__ void af_bwd_load_q(const af_dot_scoring&, float* dst, const T* src, long long r0, long long valid,
                                              long long stride, long long, int tid) {
    af_bwd_rows<R, D, S, NT>(dst, src, r0, valid, stride, tid);
}
template <int R, int D, int S, int NT, typename T>
__device__ __forceinline__ void af_bwd_load_q(const af_lminf_scoring& sc, float* dst, const T* src, long long r0,
                                              long long valid, long long stride, long long shift, int tid) {
    af_bwd_rows_rope<R, D, S, NT>(dst, src, r0, valid, stride, [=](long long row) { return row + shift; }, sc.log2_theta, tid);
    af_bwd_rows_rope<R, D, S, NT>(dst + R * S, src, r0, valid, stride, [=](long long) { return sc.d_eff; }, sc.log2_theta, tid);
}
// K rows, per branch: plain, or rotated at the key's position (branch 0) and un-rotated (branch 1).
template <int R, int D, int S, int NT, typename T>
__device__ __forceinline__ void af_bwd_load_k(const af_dot_scoring&, float* dst, const T* src, long long r0, long long valid,
                                              long long stride, int tid) {
    af_bwd_rows<R, D, S, NT>(dst, src, r0, valid, stride, tid);
}
template <int R, int D, int S, int NT, typename T>
__device__ __forceinline__ void af_bwd_load_k(const af_lminf_scoring& sc, float* dst, const T* src, long long r0,
                                              long long valid, long long stride, int tid) {
    af_bwd_rows_rope<R, D, S, NT>(dst, src, r0, valid, stride, [](long long row) { return row; }, sc.log2_theta, tid);
    af_bwd_rows<R, D, S, NT>(dst + R * S, src, r0, valid, stride, tid);
}

// Rotate the pair back: the transpose of af_rope_pair's rotation at the same position.
__device__ __forceinline__ void af_rope_pair_transpose(float& x0, float& x1, long long pos, float f) {
    float c0 = 1.f, s0 = 0.f;  // (cos, sin) of the angle, from af_rope_pair's reduction
    af_rope_pair(c0, s0, pos, f);
    const float y0 = x0 * c0 + x1 * s0;
    const float y1 = x1 * c0 - x0 * s0;
    x0 = y0;
    x1 = y1;
}

// Gradients of a lane's dimensions lane + 32 t, per branch, to the un-rotated input's: plain
// (branch 0 as is), or branch 0 rotated back at `near_pos` plus branch 1 rotated back at
// `far_pos` (queries: Deff) or taken as is (keys, far_pos < 0). The pair (m, m + D/2) lies in
// one lane: t and t + DPL/2.
template <int DPL, int NB>
__device__ __forceinline__ void af_bwd_unrotate(const af_dot_scoring&, float (&g)[NB][DPL], int, long long, long long) {}
template <int DPL, int NB>
__device__ __forceinline__ void af_bwd_unrotate(const af_lminf_scoring& sc, float (&g)[NB][DPL], int lane, long long near_pos,
                                                long long far_pos) {
    constexpr int D = DPL * 32;
#pragma unroll
    for (int t = 0; t < DPL / 2; ++t) {
        const float f = af_rope_freq(lane + 32 * t, D, sc.log2_theta);
        af_rope_pair_transpose(g[0][t], g[0][t + DPL / 2], near_pos, f);
        if (far_pos >= 0) af_rope_pair_transpose(g[NB - 1][t], g[NB - 1][t + DPL / 2], far_pos, f);
    }
#pragma unroll
    for (int t = 0; t < DPL; ++t) g[0][t] += g[NB - 1][t];
}

// The position a far-branch query is rotated at (LM-Infinite's Deff; -1: no far branch).
__device__ __forceinline__ long long af_far_position(const af_dot_scoring&) { return -1; }
__device__ __forceinline__ long long af_far_position(const af_lminf_scoring& sc) { return sc.d_eff; }

// ---- dK, dV ----
// Block: key tile [n0, n0 + BN) of kv head hkv, batch b. Warp w owns keys w KR .. w KR + KR - 1,
// lane l the query columns l + 32 c of a query tile and the dimensions l + 32 t of dK / dV.
template <class Tile, typename T, class Queries, class BlockHooks, class GradHooks, class Scoring>
__device__ __forceinline__ void af_bwd_dkdv(const af_fwd_args<T>& a, const af_bwd_args<T>& g, const Queries& queries,
                                            const BlockHooks& block_hooks, const GradHooks& grad_hooks, const Scoring& sc) {
    constexpr int BM = Tile::BM, BN = Tile::BN, D = Tile::D, NW = Tile::NW, NT = Tile::NT;
    constexpr int NB = Scoring::BRANCHES;
    constexpr int KR = BN / NW;   // keys per warp
    constexpr int CPL = BM / 32;  // query columns per lane
    constexpr int DPL = D / 32;   // gradient dimensions per lane
    constexpr int QS = D + 1;     // padded Q / dO row stride (conflict-free column reads)
    // [NB][BN][D] K, [BN][D] V, [NB][BM][QS] Q, [BM][QS] dO, [BN][BM] P, [NB][BN][BM] dS, [BM] lse, [BM] Delta
    constexpr int OK_ = 0, OV = NB * BN * D, OQ = OV + BN * D, OO = OQ + NB * BM * QS, OP = OO + BM * QS;
    constexpr int OS = OP + BN * BM, OL = OS + NB * BN * BM, ODL = OL + BM;
    AF_DYNAMIC_SHARED(float, af_smem);
    AF_SHARED_VIEW(float, sK, af_smem, OK_, NB * BN * D);
    AF_SHARED_VIEW(float, sV, af_smem, OV, BN * D);
    AF_SHARED_VIEW(float, sQ, af_smem, OQ, NB * BM * QS);
    AF_SHARED_VIEW(float, sdO, af_smem, OO, BM * QS);
    AF_SHARED_VIEW(float, sP, af_smem, OP, BN * BM);
    AF_SHARED_VIEW(float, sdS, af_smem, OS, NB * BN * BM);
    AF_SHARED_VIEW(float, sL, af_smem, OL, BM);
    AF_SHARED_VIEW(float, sDelta, af_smem, ODL, BM);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int b = blockIdx.z, hkv = blockIdx.y;
    const long long n0 = (long long)blockIdx.x * BN;
    const int cols_in = (int)min((long long)BN, (long long)a.seq_k - n0);
    const long long c0 = n0, c1 = n0 + cols_in - 1;
    const long long shift = (long long)a.seq_k - a.seq_q;
    const T* kb = a.k + (long long)b * a.k_stride_b + (long long)hkv * a.k_stride_h;
    const T* vb = a.v + (long long)b * a.v_stride_b + (long long)hkv * a.v_stride_h;
    af_bwd_load_k<BN, D, D, NT>(sc, sK, kb, n0, a.seq_k, a.k_stride_s, tid);
    af_bwd_rows<BN, D, D, NT>(sV, vb, n0, a.seq_k, a.v_stride_s, tid);
    float dk[KR][NB][DPL], dv[KR][DPL];
#pragma unroll
    for (int j = 0; j < KR; ++j)
#pragma unroll
        for (int t = 0; t < DPL; ++t) {
            dv[j][t] = 0.f;
#pragma unroll
            for (int bi = 0; bi < NB; ++bi) dk[j][bi][t] = 0.f;
        }

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
            const int br = sc.tile_branches(m0 + shift, m0 + rows_in - 1 + shift, c0, c1);
            __syncthreads();  // the previous tile's Q, dO, P, dS are consumed
            af_bwd_load_q<BM, D, QS, NT>(sc, sQ, qb, m0, a.seq_q, a.q_stride_s, shift, tid);
            af_bwd_rows<BM, D, QS, NT>(sdO, g.dout + rbase * D, m0, a.seq_q, D, tid);
            for (int i = tid; i < BM; i += NT) {
                sL[i] = i < rows_in ? a.lse[rbase + m0 + i] : -INFINITY;
                sDelta[i] = i < rows_in ? g.delta[rbase + m0 + i] : 0.f;
            }
            __syncthreads();
            // S^T = K Q^T per branch the tile needs and dP^T = V dO^T, the warp's keys x the lane's queries
            float s[NB][KR][CPL], dp[KR][CPL];
#pragma unroll
            for (int j = 0; j < KR; ++j)
#pragma unroll
                for (int c = 0; c < CPL; ++c) {
                    dp[j][c] = 0.f;
#pragma unroll
                    for (int bi = 0; bi < NB; ++bi) s[bi][j][c] = 0.f;
                }
#pragma unroll
            for (int bi = 0; bi < NB; ++bi) {
                if (!((br >> bi) & 1)) continue;
#pragma unroll 4
                for (int d = 0; d < D; ++d) {
                    float qq[CPL];
#pragma unroll
                    for (int c = 0; c < CPL; ++c) qq[c] = sQ[bi * BM * QS + (lane + 32 * c) * QS + d];
#pragma unroll
                    for (int j = 0; j < KR; ++j) {
                        const float kk = sK[bi * BN * D + (warp * KR + j) * D + d];
#pragma unroll
                        for (int c = 0; c < CPL; ++c) s[bi][j][c] += kk * qq[c];
                    }
                }
            }
#pragma unroll 4
            for (int d = 0; d < D; ++d) {
                float oo[CPL];
#pragma unroll
                for (int c = 0; c < CPL; ++c) oo[c] = sdO[(lane + 32 * c) * QS + d];
#pragma unroll
                for (int j = 0; j < KR; ++j) {
                    const float vv = sV[(warp * KR + j) * D + d];
#pragma unroll
                    for (int c = 0; c < CPL; ++c) dp[j][c] += vv * oo[c];
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
                    const int bi = NB > 1 && !((br & 1) && sc.near(q_pos, kv_pos)) ? NB - 1 : 0;
                    float p;
                    const float ds = af_bwd_entry<false>(ok, bi == 0 ? s[0][j][c] : s[NB - 1][j][c], dp[j][c], sL[i],
                                                         sDelta[i], a.scale, q_pos, kv_pos, hooks, grad, p, unused_pgrad,
                                                         nullptr);
                    sP[tj * BM + i] = p;
#pragma unroll
                    for (int bb = 0; bb < NB; ++bb) sdS[bb * BN * BM + tj * BM + i] = bb == bi ? ds : 0.f;
                }
            }
            __syncwarp();
            // dV_j += sum_i P_ij dO_i, dK_j += sum_i dS_ij q_i per branch (the warp's own rows of P and dS)
#pragma unroll 2
            for (int i = 0; i < BM; ++i) {
                float qv[NB][DPL], ov[DPL];
#pragma unroll
                for (int t = 0; t < DPL; ++t) {
                    ov[t] = sdO[i * QS + lane + 32 * t];
#pragma unroll
                    for (int bi = 0; bi < NB; ++bi) qv[bi][t] = sQ[bi * BM * QS + i * QS + lane + 32 * t];
                }
#pragma unroll
                for (int j = 0; j < KR; ++j) {
                    const float pj = sP[(warp * KR + j) * BM + i];
#pragma unroll
                    for (int t = 0; t < DPL; ++t) dv[j][t] += pj * ov[t];
#pragma unroll
                    for (int bi = 0; bi < NB; ++bi) {
                        const float dsj = sdS[bi * BN * BM + (warp * KR + j) * BM + i];
#pragma unroll
                        for (int t = 0; t < DPL; ++t) dk[j][bi][t] += dsj * qv[bi][t];
                    }
                }
            }
        }
    }
    // dK = scale sum_i dS q (rotated back per branch), dV, in the input dtype; keys no query sees get 0
#pragma unroll
    for (int j = 0; j < KR; ++j) {
        const int tj = warp * KR + j;
        af_bwd_unrotate<DPL, NB>(sc, dk[j], lane, n0 + tj, -1);
        if (tj < cols_in) {
            const long long r = ((long long)b * a.heads_kv + hkv) * a.seq_k + n0 + tj;
#pragma unroll
            for (int t = 0; t < DPL; ++t) {
                af_store(g.dk + r * D + lane + 32 * t, dk[j][0][t] * a.scale);
                af_store(g.dv + r * D + lane + 32 * t, dv[j][t]);
            }
        }
    }
}

// ---- dQ ----
// Block: query tile [m0, m0 + BM) of query head h, batch b (the forward's block). Warp w owns
// rows w ROWS .. w ROWS + ROWS - 1, lane l the key columns l + 32 c of a key tile and the
// dimensions l + 32 t of dQ.
template <class Tile, typename T, class Schedule, class BlockHooks, class GradHooks, class Scoring>
__device__ __forceinline__ void af_bwd_dq(const af_fwd_args<T>& a, const af_bwd_args<T>& g, const Schedule& schedule,
                                          const BlockHooks& block_hooks, const GradHooks& grad_hooks, const Scoring& sc) {
    constexpr int BM = Tile::BM, BN = Tile::BN, D = Tile::D, NW = Tile::NW, NT = Tile::NT;
    constexpr int NB = Scoring::BRANCHES;
    constexpr int ROWS = BM / NW;  // query rows per warp
    constexpr int CPL = BN / 32;   // key columns per lane
    constexpr int DPL = D / 32;    // dQ dimensions per lane
    constexpr int KS = D + 1;      // padded K / V row stride (conflict-free column reads)
    // [NB][BM][D] Q, [BM][D] dO, [NB][BN][KS] K, [BN][KS] V, [NB][BM][BN] dS, [NW] block sum,
    // [NT][theta_len] parameter-gradient rows (user score functions)
    constexpr int OO = NB * BM * D, OK_ = OO + BM * D, OV = OK_ + NB * BN * KS, OS = OV + BN * KS, OR = OS + NB * BM * BN;
    AF_DYNAMIC_SHARED(float, af_smem);
    AF_SHARED_VIEW(float, sQ, af_smem, 0, NB * BM * D);
    AF_SHARED_VIEW(float, sdO, af_smem, OO, BM * D);
    AF_SHARED_VIEW(float, sK, af_smem, OK_, NB * BN * KS);
    AF_SHARED_VIEW(float, sV, af_smem, OV, BN * KS);
    AF_SHARED_VIEW(float, sdS, af_smem, OS, NB * BM * BN);
    AF_SHARED_VIEW(float, sRed, af_smem, OR, NW);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const af_fwd_block<T> blk = af_fwd_block_of<BM>(a);
    const auto hooks = block_hooks(blk.b, blk.h);
    const auto grad = grad_hooks(blk.b, blk.h);
    using Grad = decltype(grad);
    const int theta_len = Grad::PARAMS == AF_PARAMS_ROWS ? grad.theta_len : 0;
    AF_SHARED_VIEW(float, sTheta, af_smem, OR + NW, NT * theta_len);
    float* prow = sTheta + tid * theta_len;  // this thread's row: only it writes there until the end
    for (int e = 0; e < theta_len; ++e) prow[e] = 0.f;
    const long long rbase = ((long long)blk.b * a.heads_q + blk.h) * a.seq_q;
    af_bwd_load_q<BM, D, D, NT>(sc, sQ, blk.qb, blk.m0, a.seq_q, a.q_stride_s, blk.shift, tid);
    af_bwd_rows<BM, D, D, NT>(sdO, g.dout + rbase * D, blk.m0, a.seq_q, D, tid);
    float lse[ROWS], delta[ROWS], acc[ROWS][NB][DPL];
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        const long long row = blk.m0 + warp * ROWS + r;
        lse[r] = row < a.seq_q ? a.lse[rbase + row] : -INFINITY;
        delta[r] = row < a.seq_q ? g.delta[rbase + row] : 0.f;
#pragma unroll
        for (int bi = 0; bi < NB; ++bi)
#pragma unroll
            for (int t = 0; t < DPL; ++t) acc[r][bi][t] = 0.f;
    }
    float pgrad = 0.f;  // this thread's share of sum dS' ds'/dtheta

    const auto tiles = schedule.template tiles<BN>(blk, a.seq_k);
    long long cur = tiles.first, n0;
    int kind;
    while (tiles.next(cur, n0, kind)) {
        const int br = sc.tile_branches(blk.p_lo, blk.p_hi, n0, min(n0 + BN, (long long)a.seq_k) - 1);
        __syncthreads();  // the previous tile's K, V, dS are consumed (and Q, dO stored)
        af_bwd_load_k<BN, D, KS, NT>(sc, sK, blk.kb, n0, a.seq_k, a.k_stride_s, tid);
        af_bwd_rows<BN, D, KS, NT>(sV, blk.vb, n0, a.seq_k, a.v_stride_s, tid);
        __syncthreads();
        float s[NB][ROWS][CPL], dp[ROWS][CPL];
#pragma unroll
        for (int r = 0; r < ROWS; ++r)
#pragma unroll
            for (int c = 0; c < CPL; ++c) {
                dp[r][c] = 0.f;
#pragma unroll
                for (int bi = 0; bi < NB; ++bi) s[bi][r][c] = 0.f;
            }
#pragma unroll
        for (int bi = 0; bi < NB; ++bi) {
            if (!((br >> bi) & 1)) continue;
#pragma unroll 4
            for (int d = 0; d < D; ++d) {
                float kk[CPL];
#pragma unroll
                for (int c = 0; c < CPL; ++c) kk[c] = sK[bi * BN * KS + (lane + 32 * c) * KS + d];
#pragma unroll
                for (int r = 0; r < ROWS; ++r) {
                    const float qv = sQ[bi * BM * D + (warp * ROWS + r) * D + d];
#pragma unroll
                    for (int c = 0; c < CPL; ++c) s[bi][r][c] += qv * kk[c];
                }
            }
        }
#pragma unroll 4
        for (int d = 0; d < D; ++d) {
            float vv[CPL];
#pragma unroll
            for (int c = 0; c < CPL; ++c) vv[c] = sV[(lane + 32 * c) * KS + d];
#pragma unroll
            for (int r = 0; r < ROWS; ++r) {
                const float ov = sdO[(warp * ROWS + r) * D + d];
#pragma unroll
                for (int c = 0; c < CPL; ++c) dp[r][c] += ov * vv[c];
            }
        }
        af_bits_t<ROWS * CPL> okb, nearb;
        af_element_bits<BM, BN, ROWS, CPL>(
            okb, nearb, hooks.mask, sc, kind, br, blk, n0, a.seq_k, [&](int r) { return warp * ROWS + r; },
            [&](int c) { return lane + 32 * c; }, [](int r, int c) { return r * CPL + c; });
#pragma unroll
        for (int r = 0; r < ROWS; ++r) {
            const long long q_pos = blk.m0 + warp * ROWS + r + blk.shift;
#pragma unroll
            for (int c = 0; c < CPL; ++c) {
                const int bit = r * CPL + c;
                const long long kv_pos = n0 + lane + 32 * c;
                const int bi = NB > 1 && !((nearb >> bit) & 1) ? NB - 1 : 0;
                float p;
                const float ds = af_bwd_entry<true>((okb >> bit) & 1, bi == 0 ? s[0][r][c] : s[NB - 1][r][c], dp[r][c],
                                                    lse[r], delta[r], a.scale, q_pos, kv_pos, hooks, grad, p, pgrad, prow);
#pragma unroll
                for (int bb = 0; bb < NB; ++bb) sdS[bb * BM * BN + (warp * ROWS + r) * BN + lane + 32 * c] = bb == bi ? ds : 0.f;
            }
        }
        __syncwarp();
        // dQ_i += sum_j dS_ij k_j per branch (the warp's own rows of dS)
#pragma unroll 2
        for (int j = 0; j < BN; ++j) {
#pragma unroll
            for (int bi = 0; bi < NB; ++bi) {
                float kv[DPL];
#pragma unroll
                for (int t = 0; t < DPL; ++t) kv[t] = sK[bi * BN * KS + j * KS + lane + 32 * t];
#pragma unroll
                for (int r = 0; r < ROWS; ++r) {
                    const float dsj = sdS[bi * BM * BN + (warp * ROWS + r) * BN + j];
#pragma unroll
                    for (int t = 0; t < DPL; ++t) acc[r][bi][t] += dsj * kv[t];
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        const long long row = blk.m0 + warp * ROWS + r;
        af_bwd_unrotate<DPL, NB>(sc, acc[r], lane, row + blk.shift, af_far_position(sc));
        if (row < a.seq_q)
#pragma unroll
            for (int t = 0; t < DPL; ++t) af_store(g.dq + (rbase + row) * D + lane + 32 * t, acc[r][0][t] * a.scale);
    }
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
