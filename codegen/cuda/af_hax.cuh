// HAX: LSH hashing attention with sparse key selection (variants.md section 7).
// Needs af_dynamic.cuh. S = Sq = Sk; N = D (feature dim of q2/k2); nb hash bits.
// Sharing of hyperplanes / ks across heads: mode 0 shared, 1 per query head, 2 per kv head;
// batch stride 0 when shared over the batch.

__device__ __forceinline__ long long afd_shared_head(int mode, int h, int kh) {
    return mode == 0 ? 0 : (mode == 1 ? h : kh);
}

// Hash preprocessing and LSH buckets, one thread block per (batch, query head):
// 1. centre and L2-normalise each column of q2 (head h) and k2 (kv head) over the sequence;
// 2. code(x) = sum_t [x_hat . Hp[:, t] > 0] 2^t;
// 3. one ordered scan builds the bucket chains: lsh_prev[j] = the previous key with
//    code_k[j]'s bucket, lsh_head[i] = the latest key j <= i in code_q[i]'s bucket.
// Work O(S * D * nb + S); shared memory 4 D floats + 2^nb ints.
template <typename T, int D>
__device__ __forceinline__ void afd_hax_hash(const T* q2, const T* k2, const float* hp, int* code_q, int* code_k, int* lsh_head,
                             int* lsh_prev, int batch, int heads_q, int heads_kv, int seq, int nb,
                             long long hp_bstride, int hp_mode) {
    AF_DYNAMIC_SHARED(float, afd_smem);
    AF_SHARED_VIEW(float, mean, afd_smem, 0, 2 * D);
    AF_SHARED_VIEW(float, norm, afd_smem, 2 * D, 2 * D);
    AF_SHARED_VIEW(int, last, afd_smem, 4 * D, 1 << nb);
    const int h = blockIdx.x, b = blockIdx.y, kh = h / (heads_q / heads_kv), tid = threadIdx.x;
    const T* xq = q2 + afd_row(b, h, 0, heads_q, seq, D);
    const T* xk = k2 + afd_row(b, kh, 0, heads_kv, seq, D);
    const float* H = hp + b * hp_bstride + afd_shared_head(hp_mode, h, kh) * D * nb;  // [N, nb]
    // 1. column statistics: columns 0..D-1 of q2, D..2D-1 of k2
    for (int col = tid; col < 2 * D; col += blockDim.x) {
        const T* x = col < D ? xq : xk;
        const int c = col % D;
        float s = 0.f;
        for (long long t = 0; t < seq; ++t) s += afd_f32(x[t * D + c]);
        const float mu = s / static_cast<float>(seq);
        float ss = 0.f;
        for (long long t = 0; t < seq; ++t) {
            const float d = afd_f32(x[t * D + c]) - mu;
            ss += d * d;
        }
        mean[col] = mu;
        norm[col] = fmaxf(sqrtf(ss), 1e-12f);
    }
    __syncthreads();
    // 2. sign bits against the hyperplanes
    const long long base = static_cast<long long>(b * heads_q + h) * seq;
    for (long long e = tid; e < 2LL * seq; e += blockDim.x) {
        const bool is_k = e >= seq;
        const long long t = is_k ? e - seq : e;
        const T* x = (is_k ? xk : xq) + t * D;
        const int off = is_k ? D : 0;
        int code = 0;
        for (int bit = 0; bit < nb; ++bit) {
            float d = 0.f;
            for (int c = 0; c < D; ++c) d += (afd_f32(x[c]) - mean[off + c]) / norm[off + c] * H[c * nb + bit];
            if (d > 0.f) code |= 1 << bit;
        }
        (is_k ? code_k : code_q)[base + t] = code;
    }
    __syncthreads();
    // 3. bucket chains (one ordered scan; 2^nb table of the latest key per bucket)
    if (tid == 0) {
        for (int c = 0; c < (1 << nb); ++c) last[c] = -1;
        for (long long t = 0; t < seq; ++t) {
            const int ck = code_k[base + t];
            lsh_prev[base + t] = last[ck];
            last[ck] = static_cast<int>(t);
            lsh_head[base + t] = last[code_q[base + t]];
        }
        AF_COUNT(AF_CTR_SELECT_WORK, seq);
    }
}

// Key selection (cumulative top-k of ks), one thread per (batch, query head): a scan in
// sequence order keeps the k_ks best of ks[0..=i] (ties: lower index) in a sorted list and
// writes it per row: ks_idx[row * k_ks + r] (-1 padded) and ks_thr[row] = the list's worst
// member (j <= i is in the set iff (ks[j], -j) >= (ks[thr], -thr)). Work O(S * k_ks).
template <int D>
__device__ __forceinline__ void afd_hax_keysel(const float* ks, int* ks_idx, int* ks_thr, int batch, int heads_q, int heads_kv,
                               int seq, int k_ks, long long ks_bstride, int ks_mode) {
    AF_DYNAMIC_SHARED(float, afd_smem);
    AF_SHARED_VIEW(float, best_s, afd_smem, 0, k_ks);
    AF_SHARED_VIEW(int, best_j, afd_smem, k_ks, k_ks);
    const int h = blockIdx.x, b = blockIdx.y, kh = h / (heads_q / heads_kv), lane = afd_lane();
    const float* sc = ks + b * ks_bstride + afd_shared_head(ks_mode, h, kh) * seq;
    const long long base = static_cast<long long>(b * heads_q + h) * seq;
    if (lane != 0) return;  // the scan is sequential: one thread keeps and writes the list
    int n = 0;
    for (long long i = 0; i < seq; ++i) {
        n = afd_topk_insert(best_s, best_j, n, k_ks, sc[i], static_cast<int>(i));
        for (int r = 0; r < k_ks; ++r) ks_idx[(base + i) * k_ks + r] = r < n ? best_j[r] : -1;
        ks_thr[base + i] = best_j[n - 1];
    }
    AF_COUNT(AF_CTR_SELECT_WORK, seq);
}

// Attention of row i over (key-selection set) U (the k_lsh most recent keys of its bucket),
// gathered per query (token-level sparsity); LSH keys already in the key-selection set are
// skipped by the threshold test, so every key is visited once.
template <typename T, int D>
__device__ __forceinline__ void afd_hax_attn(const T* q2, const T* k2, const T* x, const float* ks, const int* ks_idx,
                             const int* ks_thr, const int* lsh_head, const int* lsh_prev, T* o, float* lse,
                             int batch, int heads_q, int heads_kv, int seq, int k_lsh, int k_ks,
                             long long ks_bstride, int ks_mode, float scale) {
    const int i = blockIdx.x * AFD_WARPS + afd_warp(), h = blockIdx.y, b = blockIdx.z, lane = afd_lane();
    if (i >= seq) return;
    const int kh = h / (heads_q / heads_kv);
    const long long base = static_cast<long long>(b * heads_q + h) * seq, row = base + i;
    float qr[D / 32];
    afd_load_row<D>(qr, q2 + afd_row(b, h, i, heads_q, seq, D));
    const T* kb = k2 + afd_row(b, kh, 0, heads_kv, seq, D);
    const T* vb = x + afd_row(b, kh, 0, heads_kv, seq, D);
    const float* sc = ks + b * ks_bstride + afd_shared_head(ks_mode, h, kh) * seq;
    afd_softmax<D> st;
    afd_softmax_init(st);
    long long gathered = 0;
    const int n_ks = static_cast<int>(min(static_cast<long long>(k_ks), static_cast<long long>(i) + 1));
    for (int r = 0; r < n_ks; ++r, ++gathered) {
        const long long j = ks_idx[row * k_ks + r];
        afd_softmax_add(st, scale * afd_dot<D>(qr, kb + j * D), vb + j * D);
    }
    const int thr = k_ks > 0 ? ks_thr[row] : -1;
    const float thr_s = thr >= 0 ? sc[thr] : 0.f;
    int j = lsh_head[row];
    for (int c = 0; c < k_lsh && j >= 0; ++c, j = lsh_prev[base + j]) {
        const bool in_ks = thr >= 0 && (sc[j] > thr_s || (sc[j] == thr_s && j <= thr));
        if (in_ks) continue;
        afd_softmax_add(st, scale * afd_dot<D>(qr, kb + static_cast<long long>(j) * D), vb + static_cast<long long>(j) * D);
        ++gathered;
    }
    if (lane == 0) AF_COUNT(AF_CTR_KEYS_GATHERED, gathered);
    afd_softmax_store(st, o + row * D, lse + row);
}
