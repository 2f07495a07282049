// Landmark attention (variants.md section 6). Needs af_dynamic.cuh.
// Block size Bl = mem_freq + 1; the last token of each block is its landmark. Query row i
// at p = i + Sk - Sq is in block c = p / Bl. Grouped softmax: a top-level softmax over the
// own block's non-landmark tokens j <= p and one entry per earlier block (score: its
// landmark's, value: that block's own softmax-weighted value average).

// Retrieval selection: sel[row * top_k + r] = r-th best earlier block by landmark score
// scale * q.k_lmk (ties: lower block), -1 padded; `row` is the query row's lse element
// (Rows: afd_dense_rows, afd_paged_rows). Work: c landmark dots per row.
template <typename T, int D, typename Rows>
__device__ __forceinline__ void afd_landmark_select_rows(Rows rows, const T* q, const T* k, int* sel, int heads_q,
                                                         int heads_kv, int mem_freq, int top_k, float scale) {
    AF_DYNAMIC_SHARED(float, afd_smem);
    AF_SHARED_VIEW(float, best_s, afd_smem, afd_warp() * 2 * top_k, top_k);
    AF_SHARED_VIEW(int, best_j, afd_smem, afd_warp() * 2 * top_k + top_k, top_k);
    const int i = blockIdx.x * AFD_WARPS + afd_warp(), h = blockIdx.y, b = blockIdx.z, lane = afd_lane();
    const int kh = h / (heads_q / heads_kv);
    if (!rows.at(b, h, kh, i)) return;
    const long long bl = mem_freq + 1;
    const long long pos = i + static_cast<long long>(rows.seq_k) - rows.seq_q, c = pos / bl;
    float qr[D / 32];
    afd_load_row<D>(qr, q + rows.q_row * D);
    int n = 0;
    for (long long blk = 0; blk < c; ++blk) {
        const float s = scale * afd_dot<D>(qr, k + rows.key(blk * bl + bl - 1) * D);
        if (lane == 0) n = afd_topk_insert(best_s, best_j, n, top_k, s, static_cast<int>(blk));
    }
    if (lane == 0 && c > 0) AF_COUNT(AF_CTR_SELECT_WORK, c);
    n = __shfl_sync(AFD_FULL_MASK, n, 0);
    __syncwarp();
    int* out = sel + rows.out_row * top_k;
    for (int r = lane; r < top_k; r += 32) out[r] = r < n ? best_j[r] : -1;
}

template <typename T, int D>
__device__ __forceinline__ void afd_landmark_select(const T* q, const T* k, int* sel, int batch, int heads_q, int heads_kv,
                                    int seq_q, int seq_k, int mem_freq, int top_k, float scale) {
    const afd_dense_rows rows = afd_dense_rows_of(heads_q, heads_kv, seq_q, seq_k);
    afd_landmark_select_rows<T, D>(rows, q, k, sel, heads_q, heads_kv, mem_freq, top_k, scale);
}

// The selection over a paged cache (k = k_cache); sel [Hq, Tq, top_k].
template <typename T, int D>
__device__ __forceinline__ void afd_landmark_select_paged(const T* q, const T* k, int* sel, const int* cu_q,
                                                          const int* block_table, const int* seqlens_k, int max_pages,
                                                          int page_size, int heads_q, int heads_kv, int total_q,
                                                          int mem_freq, int top_k, float scale) {
    const afd_paged_rows rows =
        afd_paged_rows_of(cu_q, block_table, seqlens_k, max_pages, page_size, heads_q, heads_kv, total_q);
    afd_landmark_select_rows<T, D>(rows, q, k, sel, heads_q, heads_kv, mem_freq, top_k, scale);
}

// Grouped-softmax attention in one pass. sel == nullptr: training mode (every earlier
// block); else the sel_width blocks listed for the row (-1 ends the list).
template <typename T, int D, typename Rows>
__device__ __forceinline__ void afd_landmark_attn_rows(Rows rows, const T* q, const T* k, const T* v, const int* sel,
                                                       T* o, float* lse, int heads_q, int heads_kv, int mem_freq,
                                                       int sel_width, float scale) {
    const int i = blockIdx.x * AFD_WARPS + afd_warp(), h = blockIdx.y, b = blockIdx.z, lane = afd_lane();
    const int kh = h / (heads_q / heads_kv);
    if (!rows.at(b, h, kh, i)) return;
    const long long bl = mem_freq + 1;
    const long long pos = i + static_cast<long long>(rows.seq_k) - rows.seq_q, c = pos / bl;
    const long long row = rows.out_row;
    float qr[D / 32];
    afd_load_row<D>(qr, q + rows.q_row * D);
    afd_softmax<D> top;  // Z = sum over Main
    afd_softmax_init(top);
    long long gathered = 0;
    // own block: c*Bl <= j <= p, landmarks excluded
    for (long long j = c * bl; j <= pos; ++j) {
        if (j % bl == bl - 1) continue;
        const long long kr = rows.key(j) * D;
        afd_softmax_add(top, scale * afd_dot<D>(qr, k + kr), v + kr);
        ++gathered;
    }
    const long long nblk = sel ? sel_width : c;
    for (long long r = 0; r < nblk; ++r) {
        const long long blk = sel ? sel[row * sel_width + r] : r;
        if (blk < 0) break;
        // inner softmax over the block's Bl - 1 members, then one top-level entry
        afd_softmax<D> in;
        afd_softmax_init(in);
        for (long long j = blk * bl; j < blk * bl + bl - 1; ++j) {
            const long long kr = rows.key(j) * D;
            afd_softmax_add(in, scale * afd_dot<D>(qr, k + kr), v + kr);
        }
        float avg[D / 32];
        afd_softmax_normalised(in, avg);
        afd_softmax_add_vec(top, scale * afd_dot<D>(qr, k + rows.key(blk * bl + bl - 1) * D), avg);
        gathered += bl;
    }
    if (lane == 0) AF_COUNT(AF_CTR_KEYS_GATHERED, gathered);
    afd_softmax_store(top, o + rows.q_row * D, lse + row);
}

template <typename T, int D>
__device__ __forceinline__ void afd_landmark_attn(const T* q, const T* k, const T* v, const int* sel, T* o, float* lse,
                                  int batch, int heads_q, int heads_kv, int seq_q, int seq_k, int mem_freq,
                                  int sel_width, float scale) {
    const afd_dense_rows rows = afd_dense_rows_of(heads_q, heads_kv, seq_q, seq_k);
    afd_landmark_attn_rows<T, D>(rows, q, k, v, sel, o, lse, heads_q, heads_kv, mem_freq, sel_width, scale);
}

// The attention over a paged cache (k, v = k_cache, v_cache): o packed [Tq, Hq, D] like q,
// lse and sel [Hq, Tq] rows.
template <typename T, int D>
__device__ __forceinline__ void afd_landmark_attn_paged(const T* q, const T* k, const T* v, const int* sel, T* o,
                                                        float* lse, const int* cu_q, const int* block_table,
                                                        const int* seqlens_k, int max_pages, int page_size,
                                                        int heads_q, int heads_kv, int total_q, int mem_freq,
                                                        int sel_width, float scale) {
    const afd_paged_rows rows =
        afd_paged_rows_of(cu_q, block_table, seqlens_k, max_pages, page_size, heads_q, heads_kv, total_q);
    afd_landmark_attn_rows<T, D>(rows, q, k, v, sel, o, lse, heads_q, heads_kv, mem_freq, sel_width, scale);
}
