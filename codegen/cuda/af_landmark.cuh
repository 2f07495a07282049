// Landmark attention (variants.md section 6). Needs af_dynamic.cuh.
// Block size Bl = mem_freq + 1; the last token of each block is its landmark. Query row i
// at p = i + Sk - Sq is in block c = p / Bl. Grouped softmax: a top-level softmax over the
// own block's non-landmark tokens j <= p and one entry per earlier block (score: its
// landmark's, value: that block's own softmax-weighted value average).

// Retrieval selection: sel[row * top_k + r] = r-th best earlier block by landmark score
// scale * q.k_lmk (ties: lower block), -1 padded. Work: c landmark dots per row.
template <typename T, int D>
__device__ __forceinline__ void afd_landmark_select(const T* q, const T* k, int* sel, int batch, int heads_q, int heads_kv,
                                    int seq_q, int seq_k, int mem_freq, int top_k, float scale) {
    AF_DYNAMIC_SHARED(float, afd_smem);
    AF_SHARED_VIEW(float, best_s, afd_smem, afd_warp() * 2 * top_k, top_k);
    AF_SHARED_VIEW(int, best_j, afd_smem, afd_warp() * 2 * top_k + top_k, top_k);
    const int i = blockIdx.x * AFD_WARPS + afd_warp(), h = blockIdx.y, b = blockIdx.z, lane = afd_lane();
    if (i >= seq_q) return;
    const int kh = h / (heads_q / heads_kv);
    const long long bl = mem_freq + 1;
    const long long pos = i + static_cast<long long>(seq_k) - seq_q, c = pos / bl;
    float qr[D / 32];
    afd_load_row<D>(qr, q + afd_row(b, h, i, heads_q, seq_q, D));
    const T* kb = k + afd_row(b, kh, 0, heads_kv, seq_k, D);
    int n = 0;
    for (long long blk = 0; blk < c; ++blk) {
        const float s = scale * afd_dot<D>(qr, kb + (blk * bl + bl - 1) * D);
        if (lane == 0) n = afd_topk_insert(best_s, best_j, n, top_k, s, static_cast<int>(blk));
    }
    if (lane == 0 && c > 0) AF_COUNT(AF_CTR_SELECT_WORK, c);
    n = __shfl_sync(AFD_FULL_MASK, n, 0);
    __syncwarp();
    int* out = sel + (static_cast<long long>(b * heads_q + h) * seq_q + i) * top_k;
    for (int r = lane; r < top_k; r += 32) out[r] = r < n ? best_j[r] : -1;
}

// Grouped-softmax attention in one pass. sel == nullptr: training mode (every earlier
// block); else the sel_width blocks listed for the row (-1 ends the list).
template <typename T, int D>
__device__ __forceinline__ void afd_landmark_attn(const T* q, const T* k, const T* v, const int* sel, T* o, float* lse,
                                  int batch, int heads_q, int heads_kv, int seq_q, int seq_k, int mem_freq,
                                  int sel_width, float scale) {
    const int i = blockIdx.x * AFD_WARPS + afd_warp(), h = blockIdx.y, b = blockIdx.z, lane = afd_lane();
    if (i >= seq_q) return;
    const int kh = h / (heads_q / heads_kv);
    const long long bl = mem_freq + 1;
    const long long pos = i + static_cast<long long>(seq_k) - seq_q, c = pos / bl;
    const long long row = static_cast<long long>(b * heads_q + h) * seq_q + i;
    float qr[D / 32];
    afd_load_row<D>(qr, q + afd_row(b, h, i, heads_q, seq_q, D));
    const T* kb = k + afd_row(b, kh, 0, heads_kv, seq_k, D);
    const T* vb = v + afd_row(b, kh, 0, heads_kv, seq_k, D);
    afd_softmax<D> top;  // Z = sum over Main
    afd_softmax_init(top);
    long long gathered = 0;
    // own block: c*Bl <= j <= p, landmarks excluded
    for (long long j = c * bl; j <= pos; ++j) {
        if (j % bl == bl - 1) continue;
        afd_softmax_add(top, scale * afd_dot<D>(qr, kb + j * D), vb + j * D);
        ++gathered;
    }
    const long long nblk = sel ? sel_width : c;
    for (long long r = 0; r < nblk; ++r) {
        const long long blk = sel ? sel[row * sel_width + r] : r;
        if (blk < 0) break;
        // inner softmax over the block's Bl - 1 members, then one top-level entry
        afd_softmax<D> in;
        afd_softmax_init(in);
        for (long long j = blk * bl; j < blk * bl + bl - 1; ++j)
            afd_softmax_add(in, scale * afd_dot<D>(qr, kb + j * D), vb + j * D);
        float avg[D / 32];
        afd_softmax_normalised(in, avg);
        afd_softmax_add_vec(top, scale * afd_dot<D>(qr, kb + (blk * bl + bl - 1) * D), avg);
        gathered += bl;
    }
    if (lane == 0) AF_COUNT(AF_CTR_KEYS_GATHERED, gathered);
    afd_softmax_store(top, o + row * D, lse + row);
}
