// LongHeads (variants.md section 15). Needs af_dynamic.cuh; the summary and attention
// kernels also af_attn.cuh (af_rope_freq / af_rope_pair, the static kernels' RoPE).
// Chunk c is tokens [c w, (c + 1) w); query row i sits at t = i + Sk - Sq, own chunk c = t / w.
// Inputs are un-rotated: RoPE (half-split, base theta) is applied here, in registers, to
// the rows a warp reads, and the rotated row is rounded to T (the rotated-operand contract
// of section 5); no rotated copy is written anywhere.

// The RoPE frequencies of this lane's pairs: pair r is (x[r], x[r + D / 64]), element
// m = lane + 32 r of the first half.
template <int D>
__device__ __forceinline__ void afd_lh_freqs(float (&f)[D / 64], float theta) {
    const float log2_theta = log2f(theta);
#pragma unroll
    for (int r = 0; r < D / 64; ++r) f[r] = af_rope_freq(afd_lane() + 32 * r, D, log2_theta);
}

// x = rope(row, pos) rounded to T, held by the warp (lane l: elements l + 32 r).
template <int D, typename T>
__device__ __forceinline__ void afd_lh_rope_row(float (&x)[D / 32], const T* row, long long pos,
                                                const float (&f)[D / 64]) {
    afd_load_row<D>(x, row);
#pragma unroll
    for (int r = 0; r < D / 64; ++r) af_rope_pair(x[r], x[r + D / 64], pos, f[r]);
#pragma unroll
    for (int r = 0; r < D / 32; ++r) x[r] = afd_f32(afd_from_f32<T>(x[r]));
}

// dot(a, b) of two warp-held rows, result in every lane.
template <int D>
__device__ __forceinline__ float afd_lh_dot(const float (&a)[D / 32], const float (&b)[D / 32]) {
    float s = 0.f;
#pragma unroll
    for (int r = 0; r < D / 32; ++r) s += a[r] * b[r];
    return afd_warp_sum(s);
}

// Chunk summaries (prefill, Sq == Sk = seq): one warp per complete chunk c of head h.
// qt_i, kt_i rotated at i mod w; o_i = non-causal softmax(qt_i . kt / sqrt(D)) v over the
// chunk; cbar = mean o_i; r_c = softmax(cbar . kt / sqrt(D)) kt. Work: w^2 + w dots.
template <typename T, int D>
__device__ __forceinline__ void afd_longheads_summary(const T* q, const T* k, const T* v, float* r, int batch,
                                                      int heads_q, int heads_kv, int seq, int chunk, float theta) {
    const int c = blockIdx.x * AFD_WARPS + afd_warp(), h = blockIdx.y, b = blockIdx.z, lane = afd_lane();
    const int n_chunks = seq / chunk;
    if (c >= n_chunks) return;
    const int kh = h / (heads_q / heads_kv);
    const float inv = 1.f / sqrtf(static_cast<float>(D));
    float f[D / 64];
    afd_lh_freqs<D>(f, theta);
    const long long base = static_cast<long long>(c) * chunk;
    float cbar[D / 32];
#pragma unroll
    for (int e = 0; e < D / 32; ++e) cbar[e] = 0.f;
    for (int i = 0; i < chunk; ++i) {
        float qt[D / 32];
        afd_lh_rope_row<D>(qt, q + afd_row(b, h, base + i, heads_q, seq, D), i, f);
        afd_softmax<D> st;
        afd_softmax_init(st);
        for (int j = 0; j < chunk; ++j) {
            float kt[D / 32];
            afd_lh_rope_row<D>(kt, k + afd_row(b, kh, base + j, heads_kv, seq, D), j, f);
            afd_softmax_add(st, inv * afd_lh_dot<D>(qt, kt), v + afd_row(b, kh, base + j, heads_kv, seq, D));
        }
        float o[D / 32];
        afd_softmax_normalised(st, o);
#pragma unroll
        for (int e = 0; e < D / 32; ++e) cbar[e] += o[e];
    }
#pragma unroll
    for (int e = 0; e < D / 32; ++e) cbar[e] /= static_cast<float>(chunk);
    afd_softmax<D> st;
    afd_softmax_init(st);
    for (int j = 0; j < chunk; ++j) {
        float kt[D / 32];
        afd_lh_rope_row<D>(kt, k + afd_row(b, kh, base + j, heads_kv, seq, D), j, f);
        afd_softmax_add_vec(st, inv * afd_lh_dot<D>(cbar, kt), kt);
    }
    if (lane == 0) AF_COUNT(AF_CTR_SELECT_WORK, static_cast<long long>(chunk) * chunk + chunk);
    float out[D / 32];
    afd_softmax_normalised(st, out);
    const long long at = afd_row(b, h, c, heads_q, n_chunks, D);
#pragma unroll
    for (int e = 0; e < D / 32; ++e) r[at + lane + 32 * e] = out[e];
}

// Selection: sel[row * sel_width ..] = the row's chunks, ascending, -1 padded. t < begin:
// every chunk 0..=c. Otherwise 0, c-1, c and the m_chunks - 3 best of [1, c-2] by the
// un-rotated q_t . r_j (no scale; ties: lower index, afd_topk_insert). Work: c - 2 dots.
template <typename T, int D>
__device__ __forceinline__ void afd_longheads_select(const T* q, const float* r, int* sel, int batch, int heads_q,
                                                     int heads_kv, int seq_q, int seq_k, int n_chunks, int chunk,
                                                     int m_chunks, int begin, int sel_width) {
    const int cap = m_chunks - 3 > 0 ? m_chunks - 3 : 1;
    AF_DYNAMIC_SHARED(float, afd_smem);
    AF_SHARED_VIEW(float, best_s, afd_smem, afd_warp() * 2 * cap, cap);
    AF_SHARED_VIEW(int, best_j, afd_smem, afd_warp() * 2 * cap + cap, cap);
    const int i = blockIdx.x * AFD_WARPS + afd_warp(), h = blockIdx.y, b = blockIdx.z, lane = afd_lane();
    if (i >= seq_q) return;
    const long long t = i + static_cast<long long>(seq_k) - seq_q;
    const int c = static_cast<int>(t / chunk);
    int* out = sel + (static_cast<long long>(b * heads_q + h) * seq_q + i) * sel_width;
    if (t < begin) {
        for (int e = lane; e < sel_width; e += 32) out[e] = e <= c ? e : -1;
        return;
    }
    float qr[D / 32];
    afd_load_row<D>(qr, q + afd_row(b, h, i, heads_q, seq_q, D));
    int n = 0;
    if (m_chunks > 3) {
        for (int j = 1; j <= c - 2; ++j) {
            const float s = afd_dot<D>(qr, r + afd_row(b, h, j, heads_q, n_chunks, D));
            if (lane == 0) n = afd_topk_insert(best_s, best_j, n, cap, s, j);
        }
    }
    if (lane == 0) {
        if (c >= 3) AF_COUNT(AF_CTR_SELECT_WORK, c - 2);
        // ascending: insertion sort of the picked candidates (all in [1, c-2])
        for (int a = 1; a < n; ++a) {
            const int x = best_j[a];
            int p = a;
            while (p > 0 && best_j[p - 1] > x) {
                best_j[p] = best_j[p - 1];
                --p;
            }
            best_j[p] = x;
        }
        int w = 0;
        out[w++] = 0;
        for (int a = 0; a < n; ++a) out[w++] = best_j[a];
        if (c >= 2) out[w++] = c - 1;
        out[w++] = c;
        while (w < sel_width) out[w++] = -1;
    }
}

// Attention over the selected chunks' tokens in list order (own chunk c up to t): n keys,
// key number m rotated at position m, the query at n - 1; values un-rotated.
template <typename T, int D>
__device__ __forceinline__ void afd_longheads_attn(const T* q, const T* k, const T* v, const int* sel, T* o,
                                                   float* lse, int batch, int heads_q, int heads_kv, int seq_q,
                                                   int seq_k, int chunk, int sel_width, float theta, float scale) {
    const int i = blockIdx.x * AFD_WARPS + afd_warp(), h = blockIdx.y, b = blockIdx.z, lane = afd_lane();
    if (i >= seq_q) return;
    const int kh = h / (heads_q / heads_kv);
    const long long t = i + static_cast<long long>(seq_k) - seq_q, c = t / chunk;
    const long long row = static_cast<long long>(b * heads_q + h) * seq_q + i;
    const int* list = sel + row * sel_width;
    long long n = 0;
    for (int e = 0; e < sel_width && list[e] >= 0; ++e) n += list[e] == c ? t - c * chunk + 1 : chunk;
    float f[D / 64];
    afd_lh_freqs<D>(f, theta);
    float qt[D / 32];
    afd_lh_rope_row<D>(qt, q + afd_row(b, h, i, heads_q, seq_q, D), n - 1, f);
    const T* kb = k + afd_row(b, kh, 0, heads_kv, seq_k, D);
    const T* vb = v + afd_row(b, kh, 0, heads_kv, seq_k, D);
    afd_softmax<D> st;
    afd_softmax_init(st);
    long long m = 0;
    for (int e = 0; e < sel_width && list[e] >= 0; ++e) {
        const long long lo = list[e] * static_cast<long long>(chunk);
        const long long hi = min(lo + chunk, t + 1);
        for (long long j = lo; j < hi; ++j, ++m) {
            float kt[D / 32];
            afd_lh_rope_row<D>(kt, kb + j * D, m, f);
            afd_softmax_add(st, scale * afd_lh_dot<D>(qt, kt), vb + j * D);
        }
    }
    if (lane == 0) AF_COUNT(AF_CTR_KEYS_GATHERED, m);
    afd_softmax_store(st, o + row * D, lse + row);
}
