// attnforge statistics follow-up kernel (variants.md section 14, docs/statistics.md): from the
// per-query-block key sums that af_key_mass_stats (af_fwd.cuh) wrote, per (kv head g, batch b):
//   key_mass[b, h, j]  = sum over query blocks, in block order (deterministic), for h in group g
//   key_score[b, g, j] = max-pool of width pool (odd, window clipped) of the sum / max over the group
//   top_keys[b, g, t]  = the top_k keys of key_score with score > 0, descending, ties by lower
//                        index, -1 padded
// Why a separate kernel: key_score reduces over the query heads of a group and top_keys over
// every key, i.e. over many forward blocks; a cross-block reduction in the forward kernel would
// need a grid-wide barrier or atomics (run-to-run nondeterministic sums). This kernel reads
// B Hq ceil(Sq / BM) Sk floats once: small next to the forward.
// Grid (heads_kv, batch), NT threads; dynamic shared memory NT floats + NT ints.

struct af_stats_args {
    const float* partial;  // [B, Hq, qblocks, Sk]
    float* key_mass;       // [B, Hq, Sk]
    float* key_score;      // [B, Hkv, Sk]
    float* raw;            // [B, Hkv, Sk] scratch: key_score before the pool
    int* top_keys;         // [B, Hkv, top_k]
    int batch, heads_q, heads_kv, seq_k, qblocks;
    int reduce_max;  // 0: sum over the group, 1: max
    int pool;        // odd max-pool width (1: none)
    int top_k;       // entries of top_keys (0: none)
};

// The better of two candidates (score, index): the higher score, then the lower index; an
// index of -1 is no candidate.
__device__ __forceinline__ bool af_stats_better(float s, int j, float bs, int bj) {
    return j >= 0 && (bj < 0 || s > bs || (s == bs && j < bj));
}

template <int NT>
__device__ __forceinline__ void af_stats_reduce(const af_stats_args& a) {
    AF_DYNAMIC_SHARED(float, af_smem);
    AF_SHARED_VIEW(float, s_red, af_smem, 0, NT);
    AF_SHARED_VIEW(int, j_red, af_smem, NT, NT);  // after the NT floats
    const int g = blockIdx.x, b = blockIdx.y, tid = threadIdx.x;
    const int group = a.heads_q / a.heads_kv;
    const long long sk = a.seq_k;
    float* raw = a.raw + ((long long)b * a.heads_kv + g) * sk;
    float* score = a.key_score + ((long long)b * a.heads_kv + g) * sk;
    for (long long j = tid; j < sk; j += NT) {
        float red = 0.f;
        for (int hh = 0; hh < group; ++hh) {
            const long long bh = (long long)b * a.heads_q + g * group + hh;
            const float* p = a.partial + bh * a.qblocks * sk + j;
            float m = 0.f;
            for (int qb = 0; qb < a.qblocks; ++qb) m += p[qb * sk];  // fixed order: deterministic
            a.key_mass[bh * sk + j] = m;
            red = hh == 0 ? m : (a.reduce_max ? fmaxf(red, m) : red + m);
        }
        raw[j] = red;
    }
    __syncthreads();  // raw is complete
    const long long r = a.pool / 2;
    for (long long j = tid; j < sk; j += NT) {
        float m = raw[j];
        for (long long x = max(0ll, j - r); x <= min(sk - 1, j + r); ++x) m = fmaxf(m, raw[x]);
        score[j] = m;
    }
    __syncthreads();  // key_score is complete
    // top_keys: top_k rounds of a block-wide arg-max over the keys ranked after the previous
    // pick (lower score, or equal score and higher index): no per-key state, exact ties
    int* top = a.top_keys + ((long long)b * a.heads_kv + g) * a.top_k;
    float last_s = INFINITY;
    int last_j = -1;
    for (int t = 0; t < a.top_k; ++t) {
        float bs = 0.f;
        int bj = -1;
        for (long long j = tid; j < sk; j += NT) {
            const float s = score[j];
            const bool after = s < last_s || (s == last_s && j > last_j);
            if (s > 0.f && after && af_stats_better(s, (int)j, bs, bj)) {
                bs = s;
                bj = (int)j;
            }
        }
        s_red[tid] = bs;
        j_red[tid] = bj;
        __syncthreads();
        for (int w = NT / 2; w > 0; w >>= 1) {
            if (tid < w && af_stats_better(s_red[tid + w], j_red[tid + w], s_red[tid], j_red[tid])) {
                s_red[tid] = s_red[tid + w];
                j_red[tid] = j_red[tid + w];
            }
            __syncthreads();
        }
        last_s = s_red[0];
        last_j = j_red[0];
        __syncthreads();  // slot 0 is read by every thread before the next round writes it
        if (tid == 0) top[t] = last_j;
        if (last_j < 0) {  // no eligible key left (uniform: every thread read the same pick)
            for (int u = t + 1 + tid; u < a.top_k; u += NT) top[u] = -1;
            break;
        }
    }
}
