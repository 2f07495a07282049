// Core Context Aware attention, CCA (variants.md section 8). Needs af_dynamic.cuh.
// S = Sq = Sk, group g, window w, P = max(0, (S - w) / g) pooled groups.

// Pooling: group p's core token, weighted by the group's last query (scale 1/sqrt(D)):
// kbar_p = sum_t alpha_t k_{pg+t}, vbar_p = sum_t alpha_t v_{pg+t}, kept in f32.
template <typename T, int D>
__device__ __forceinline__ void afd_cca_pool(const T* q, const T* k, const T* v, float* kbar, float* vbar, int batch,
                             int heads_q, int heads_kv, int seq, int group, int pooled, float pool_scale) {
    const int p = blockIdx.x * AFD_WARPS + afd_warp(), h = blockIdx.y, b = blockIdx.z, lane = afd_lane();
    if (p >= pooled) return;
    const int kh = h / (heads_q / heads_kv);
    float qr[D / 32];
    afd_load_row<D>(qr, q + afd_row(b, h, static_cast<long long>(p + 1) * group - 1, heads_q, seq, D));
    afd_softmax<D> sk, sv;  // same weights, two accumulators
    afd_softmax_init(sk);
    afd_softmax_init(sv);
    for (long long t = static_cast<long long>(p) * group; t < static_cast<long long>(p + 1) * group; ++t) {
        const T* krow = k + afd_row(b, kh, t, heads_kv, seq, D);
        const float s = pool_scale * afd_dot<D>(qr, krow);
        afd_softmax_add(sk, s, krow);
        afd_softmax_add(sv, s, v + afd_row(b, kh, t, heads_kv, seq, D));
    }
    if (lane == 0) AF_COUNT(AF_CTR_SELECT_WORK, group);
    const long long out = afd_row(b, h, p, heads_q, pooled, D);
    float kk[D / 32], vv[D / 32];
    afd_softmax_normalised(sk, kk);
    afd_softmax_normalised(sv, vv);
#pragma unroll
    for (int r = 0; r < D / 32; ++r) {
        kbar[out + lane + 32 * r] = kk[r];
        vbar[out + lane + 32 * r] = vv[r];
    }
}

// Joint softmax of query i over core tokens p < n_i and raw tokens n_i g <= c <= i,
// n_i = (i + 1 - w) / g when i + 1 > w, else 0.
template <typename T, int D>
__device__ __forceinline__ void afd_cca_attn(const T* q, const T* k, const T* v, const float* kbar, const float* vbar, T* o,
                             float* lse, int batch, int heads_q, int heads_kv, int seq, int group, int window,
                             int pooled, float scale) {
    const int i = blockIdx.x * AFD_WARPS + afd_warp(), h = blockIdx.y, b = blockIdx.z, lane = afd_lane();
    if (i >= seq) return;
    const int kh = h / (heads_q / heads_kv);
    const long long n = i + 1 > window ? (static_cast<long long>(i) + 1 - window) / group : 0;
    float qr[D / 32];
    afd_load_row<D>(qr, q + afd_row(b, h, i, heads_q, seq, D));
    afd_softmax<D> st;
    afd_softmax_init(st);
    for (long long p = 0; p < n; ++p) {
        const long long r = afd_row(b, h, p, heads_q, pooled, D);
        afd_softmax_add(st, scale * afd_dot<D>(qr, kbar + r), vbar + r);
    }
    for (long long c = n * group; c <= i; ++c)
        afd_softmax_add(st, scale * afd_dot<D>(qr, k + afd_row(b, kh, c, heads_kv, seq, D)),
                        v + afd_row(b, kh, c, heads_kv, seq, D));
    if (lane == 0) AF_COUNT(AF_CTR_KEYS_GATHERED, n + (i + 1 - n * group));
    const long long row = static_cast<long long>(b * heads_q + h) * seq + i;
    afd_softmax_store(st, o + row * D, lse + row);
}
