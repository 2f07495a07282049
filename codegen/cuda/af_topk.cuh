// Top-k retrieval attention for decoding (variants.md section 9) and the log-sum-exp
// merge. Needs af_dynamic.cuh. Query row i sits at p = i + Sk - Sq; keys j <= p.
// W = { j < s_start } U { j > p - s_end }, R = the topk best dot(q, k_j) among the others.

// Selection: sel[row * topk + r] = r-th best key of R (descending score), -1 padded; `row`
// is the query row's lse element (Rows: afd_dense_rows, afd_paged_rows).
// Work: one dot product per candidate, O(topk) list update: O(Sk * topk) per row, no S x S.
template <typename T, int D, typename Rows>
__device__ __forceinline__ void afd_topk_select_rows(Rows rows, const T* q, const T* k, int* sel, int heads_q,
                                                     int heads_kv, int s_start, int s_end, int topk) {
    AF_DYNAMIC_SHARED(float, afd_smem);
    AF_SHARED_VIEW(float, best_s, afd_smem, afd_warp() * 2 * topk, topk);
    AF_SHARED_VIEW(int, best_j, afd_smem, afd_warp() * 2 * topk + topk, topk);
    const int i = blockIdx.x * AFD_WARPS + afd_warp(), h = blockIdx.y, b = blockIdx.z, lane = afd_lane();
    const int kh = h / (heads_q / heads_kv);
    if (!rows.at(b, h, kh, i)) return;
    const long long pos = i + static_cast<long long>(rows.seq_k) - rows.seq_q;
    float qr[D / 32];
    afd_load_row<D>(qr, q + rows.q_row * D);
    const long long lo = s_start, hi = pos - s_end;  // candidates outside W
    int n = 0;
    for (long long j = lo; j <= hi; ++j) {
        const float s = afd_dot<D>(qr, k + rows.key(j) * D);  // R ranks by q.k (no scale)
        if (lane == 0) n = afd_topk_insert(best_s, best_j, n, topk, s, static_cast<int>(j));
    }
    if (lane == 0 && hi >= lo) AF_COUNT(AF_CTR_SELECT_WORK, hi - lo + 1);
    n = __shfl_sync(AFD_FULL_MASK, n, 0);
    __syncwarp();
    int* out = sel + rows.out_row * topk;
    for (int r = lane; r < topk; r += 32) out[r] = r < n ? best_j[r] : -1;
}

template <typename T, int D>
__device__ __forceinline__ void afd_topk_select(const T* q, const T* k, int* sel, int batch, int heads_q, int heads_kv,
                                int seq_q, int seq_k, int s_start, int s_end, int topk) {
    const afd_dense_rows rows = afd_dense_rows_of(heads_q, heads_kv, seq_q, seq_k);
    afd_topk_select_rows<T, D>(rows, q, k, sel, heads_q, heads_kv, s_start, s_end, topk);
}

// The selection over a paged cache (k = k_cache); sel [Hq, Tq, topk].
template <typename T, int D>
__device__ __forceinline__ void afd_topk_select_paged(const T* q, const T* k, int* sel, const int* cu_q,
                                                      const int* block_table, const int* seqlens_k, int max_pages,
                                                      int page_size, int heads_q, int heads_kv, int total_q,
                                                      int s_start, int s_end, int topk) {
    const afd_paged_rows rows =
        afd_paged_rows_of(cu_q, block_table, seqlens_k, max_pages, page_size, heads_q, heads_kv, total_q);
    afd_topk_select_rows<T, D>(rows, q, k, sel, heads_q, heads_kv, s_start, s_end, topk);
}

// Attention over W U R (part 0), W only (part 1) or R only (part 2); W and R are disjoint,
// so one online softmax covers the union. O is T (fused) or float (partials for the merge).
template <typename T, typename O, int D, typename Rows>
__device__ __forceinline__ void afd_topk_attn_rows(Rows rows, const T* q, const T* k, const T* v, const int* sel, O* o,
                                                   float* lse, int heads_q, int heads_kv, int s_start, int s_end,
                                                   int topk, float scale, int part) {
    const int i = blockIdx.x * AFD_WARPS + afd_warp(), h = blockIdx.y, b = blockIdx.z, lane = afd_lane();
    const int kh = h / (heads_q / heads_kv);
    if (!rows.at(b, h, kh, i)) return;
    const long long pos = i + static_cast<long long>(rows.seq_k) - rows.seq_q;
    const long long row = rows.out_row;
    float qr[D / 32];
    afd_load_row<D>(qr, q + rows.q_row * D);
    afd_softmax<D> st;
    afd_softmax_init(st);
    long long gathered = 0;
    if (part != 2) {
        // W: the sink [0, s_start) and the recent window (p - s_end, p]
        const long long sink_end = min(static_cast<long long>(s_start), pos + 1);
        for (long long j = 0; j < sink_end; ++j, ++gathered) {
            const long long kr = rows.key(j) * D;
            afd_softmax_add(st, scale * afd_dot<D>(qr, k + kr), v + kr);
        }
        for (long long j = max(static_cast<long long>(s_start), pos - s_end + 1); j <= pos; ++j, ++gathered) {
            const long long kr = rows.key(j) * D;
            afd_softmax_add(st, scale * afd_dot<D>(qr, k + kr), v + kr);
        }
    }
    if (part != 1) {
        // R: the selected keys (-1 ends the list)
        for (int r = 0; r < topk; ++r, ++gathered) {
            const long long j = sel[row * topk + r];
            if (j < 0) break;
            const long long kr = rows.key(j) * D;
            afd_softmax_add(st, scale * afd_dot<D>(qr, k + kr), v + kr);
        }
    }
    if (lane == 0) AF_COUNT(AF_CTR_KEYS_GATHERED, gathered);
    afd_softmax_store(st, o + rows.q_row * D, lse + row);
}

template <typename T, typename O, int D>
__device__ __forceinline__ void afd_topk_attn(const T* q, const T* k, const T* v, const int* sel, O* o, float* lse,
                              int batch, int heads_q, int heads_kv, int seq_q, int seq_k, int s_start,
                              int s_end, int topk, float scale, int part) {
    const afd_dense_rows rows = afd_dense_rows_of(heads_q, heads_kv, seq_q, seq_k);
    afd_topk_attn_rows<T, O, D>(rows, q, k, v, sel, o, lse, heads_q, heads_kv, s_start, s_end, topk, scale, part);
}

// The attention over a paged cache (k, v = k_cache, v_cache): o packed [Tq, Hq, D] like q,
// lse and sel [Hq, Tq] rows.
template <typename T, typename O, int D>
__device__ __forceinline__ void afd_topk_attn_paged(const T* q, const T* k, const T* v, const int* sel, O* o,
                                                    float* lse, const int* cu_q, const int* block_table,
                                                    const int* seqlens_k, int max_pages, int page_size, int heads_q,
                                                    int heads_kv, int total_q, int s_start, int s_end, int topk,
                                                    float scale, int part) {
    const afd_paged_rows rows =
        afd_paged_rows_of(cu_q, block_table, seqlens_k, max_pages, page_size, heads_q, heads_kv, total_q);
    afd_topk_attn_rows<T, O, D>(rows, q, k, v, sel, o, lse, heads_q, heads_kv, s_start, s_end, topk, scale, part);
}

// o = (e^{lse_a} o_a + e^{lse_b} o_b) / (e^{lse_a} + e^{lse_b}), computed stably; empty
// parts (lse = -inf) contribute nothing; both empty gives o = 0, lse = -inf.
template <typename T, int D>
__device__ __forceinline__ void afd_lse_merge(const float* o_a, const float* lse_a, const float* o_b, const float* lse_b,
                              T* o, float* lse, int rows) {
    const long long row = static_cast<long long>(blockIdx.x) * AFD_WARPS + afd_warp();
    const int lane = afd_lane();
    if (row >= rows) return;
    const float la = lse_a[row], lb = lse_b[row], m = fmaxf(la, lb);
    const bool empty = m == -INFINITY;
    const float wa = empty ? 0.f : expf(la - m), wb = empty ? 0.f : expf(lb - m);
    const float z = wa + wb, inv = empty ? 0.f : 1.f / z;
#pragma unroll
    for (int r = 0; r < D / 32; ++r) {
        const long long e = row * D + lane + 32 * r;
        o[e] = afd_from_f32<T>((wa * o_a[e] + wb * o_b[e]) * inv);
    }
    if (lane == 0) lse[row] = empty ? -INFINITY : m + logf(z);
}
