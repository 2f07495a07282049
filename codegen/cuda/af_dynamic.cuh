// attnforge dynamic-sparsity helpers (landmark, HAX, CCA, top-k): shared by every
// selection and gather-attention kernel of `attnforge_codegen::dynamic`.
// Layout: one warp per query row; lane l owns the head-dimension elements l + 32 r.
// Scores, softmax and accumulation in f32; the softmax runs online (natural-log domain).

#ifndef AF_SHARED_VIEW
// CUDA form of the simulator's checked view (`count` elements of `type` at element
// `offset` of `base`), until the prelude carries it.
#define AF_SHARED_VIEW(type, name, base, offset, count) \
    type* name = reinterpret_cast<type*>(&(base)[offset])
#endif

#define AFD_FULL_MASK 0xffffffffu
// Query rows (warps) per thread block of the per-row kernels.
#define AFD_WARPS 4

// ---- conversions ----
__device__ __forceinline__ float afd_f32(float x) { return x; }
__device__ __forceinline__ float afd_f32(__half x) { return __half2float(x); }
__device__ __forceinline__ float afd_f32(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T afd_from_f32(float x);
template <>
__device__ __forceinline__ float afd_from_f32<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half afd_from_f32<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 afd_from_f32<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

__device__ __forceinline__ int afd_lane() { return threadIdx.x & 31; }
__device__ __forceinline__ int afd_warp() { return threadIdx.x >> 5; }

// Butterfly sum: every lane ends with the same value (f32 addition is commutative).
__device__ __forceinline__ float afd_warp_sum(float s) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(AFD_FULL_MASK, s, o);
    return s;
}

// x[r] = row[lane + 32 r]
template <int D, typename T>
__device__ __forceinline__ void afd_load_row(float (&x)[D / 32], const T* row) {
    const int lane = afd_lane();
#pragma unroll
    for (int r = 0; r < D / 32; ++r) x[r] = afd_f32(row[lane + 32 * r]);
}

// dot(q, krow), q held by the warp (afd_load_row), result in every lane.
template <int D, typename T>
__device__ __forceinline__ float afd_dot(const float (&q)[D / 32], const T* krow) {
    const int lane = afd_lane();
    float s = 0.f;
#pragma unroll
    for (int r = 0; r < D / 32; ++r) s += q[r] * afd_f32(krow[lane + 32 * r]);
    return afd_warp_sum(s);
}

// ---- online softmax over a stream of (score, value row) ----
template <int D>
struct afd_softmax {
    float m;             // running max score
    float l;             // sum of exp(s - m)
    float acc[D / 32];   // sum of exp(s - m) * v (this lane's elements)
};

template <int D>
__device__ __forceinline__ void afd_softmax_init(afd_softmax<D>& st) {
    st.m = -INFINITY;
    st.l = 0.f;
#pragma unroll
    for (int r = 0; r < D / 32; ++r) st.acc[r] = 0.f;
}

// Rescale to a new max when s exceeds it; returns p = exp(s - m). All lanes agree on s.
template <int D>
__device__ __forceinline__ float afd_softmax_admit(afd_softmax<D>& st, float s) {
    if (s > st.m) {
        const float c = expf(st.m - s);  // exp(-inf) = 0 on the first key
        st.l *= c;
#pragma unroll
        for (int r = 0; r < D / 32; ++r) st.acc[r] *= c;
        st.m = s;
    }
    const float p = expf(s - st.m);
    st.l += p;
    return p;
}

// o += softmax weight of score s times the value row vrow (T or float).
template <int D, typename V>
__device__ __forceinline__ void afd_softmax_add(afd_softmax<D>& st, float s, const V* vrow) {
    const float p = afd_softmax_admit(st, s);
    const int lane = afd_lane();
#pragma unroll
    for (int r = 0; r < D / 32; ++r) st.acc[r] += p * afd_f32(vrow[lane + 32 * r]);
}

// Same with a value vector already held by the warp (this lane's elements).
template <int D>
__device__ __forceinline__ void afd_softmax_add_vec(afd_softmax<D>& st, float s, const float (&val)[D / 32]) {
    const float p = afd_softmax_admit(st, s);
#pragma unroll
    for (int r = 0; r < D / 32; ++r) st.acc[r] += p * val[r];
}

// The normalised output of a finished softmax (0 when nothing was added).
template <int D>
__device__ __forceinline__ void afd_softmax_normalised(const afd_softmax<D>& st, float (&out)[D / 32]) {
    const float inv = st.l > 0.f ? 1.f / st.l : 0.f;
#pragma unroll
    for (int r = 0; r < D / 32; ++r) out[r] = st.acc[r] * inv;
}

// Write o = acc / l and lse = m + ln l; an empty row gives o = 0, lse = -inf (never NaN).
template <int D, typename O>
__device__ __forceinline__ void afd_softmax_store(const afd_softmax<D>& st, O* orow, float* lse_at) {
    float out[D / 32];
    afd_softmax_normalised(st, out);
    const int lane = afd_lane();
#pragma unroll
    for (int r = 0; r < D / 32; ++r) orow[lane + 32 * r] = afd_from_f32<O>(out[r]);
    if (lane == 0 && lse_at) *lse_at = st.l > 0.f ? st.m + logf(st.l) : -INFINITY;
}

// ---- bounded top-k list (one thread) ----
// best_s/best_j hold n <= cap entries sorted by descending score; entries arrive in
// ascending index order, so an equal score never displaces an earlier entry (ties: lower
// index wins). Returns the new count. O(cap) per insertion.
template <class S, class J>
__device__ __forceinline__ int afd_topk_insert(S best_s, J best_j, int n, int cap, float s, int j) {
    if (n == cap && !(s > best_s[cap - 1])) return n;
    int p = n < cap ? n : cap - 1;
    while (p > 0 && best_s[p - 1] < s) {
        best_s[p] = best_s[p - 1];
        best_j[p] = best_j[p - 1];
        --p;
    }
    best_s[p] = s;
    best_j[p] = j;
    return n < cap ? n + 1 : n;
}

// Row index helpers: element offset of row s of head h in batch b of a contiguous
// [B, H, S, D] tensor.
__device__ __forceinline__ long long afd_row(int b, int h, long long s, int heads, long long seq, int d) {
    return ((static_cast<long long>(b) * heads + h) * seq + s) * d;
}

// Where the query row i of (sequence b, head h) and its keys live, for the per-row kernels
// of the decode families. `at` fills seq_q, seq_k (the row's sequence), q_row (its row of
// D elements in q and o), out_row (its element of lse, row of sel) and returns false for
// a row past the sequence; `key(j)` is the row of key j of kv head kh in k and v.
// Dense q, o [B, Hq, Sq, D], k, v [B, Hkv, Sk, D], lse [B, Hq, Sq].
struct afd_dense_rows {
    int heads_q, heads_kv, seq_q, seq_k;
    long long q_row, out_row, k0;
    __device__ __forceinline__ bool at(int b, int h, int kh, int i) {
        q_row = (static_cast<long long>(b) * heads_q + h) * seq_q + i;
        out_row = q_row;
        k0 = (static_cast<long long>(b) * heads_kv + kh) * seq_k;
        return i < seq_q;
    }
    __device__ __forceinline__ long long key(long long j) const { return k0 + j; }
};

__device__ __forceinline__ afd_dense_rows afd_dense_rows_of(int heads_q, int heads_kv, int seq_q, int seq_k) {
    afd_dense_rows r;
    r.heads_q = heads_q;
    r.heads_kv = heads_kv;
    r.seq_q = seq_q;
    r.seq_k = seq_k;
    return r;
}

// A paged KV cache (variants.md section 13): q, o packed [Tq, Hq, D] by cu_q, lse [Hq, Tq],
// k, v [num_pages, page_size, Hkv, D] through the block table (af_page_row).
struct afd_paged_rows {
    const int* cu_q;
    const int* block_table;  // [B, max_pages]
    const int* seqlens_k;    // [B]
    int max_pages, page_shift, heads_q, heads_kv, total_q, seq_q, seq_k, kh;
    const int* pages;
    long long q_row, out_row;
    __device__ __forceinline__ bool at(int b, int h, int kh_, int i) {
        const int q0 = cu_q[b];
        seq_q = cu_q[b + 1] - q0;
        seq_k = seqlens_k[b];
        kh = kh_;
        pages = block_table + static_cast<long long>(b) * max_pages;
        q_row = (static_cast<long long>(q0) + i) * heads_q + h;
        out_row = static_cast<long long>(h) * total_q + q0 + i;
        return i < seq_q;
    }
    __device__ __forceinline__ long long key(long long j) const {
        return af_page_row(pages, page_shift, j) * heads_kv + kh;
    }
};

__device__ __forceinline__ afd_paged_rows afd_paged_rows_of(const int* cu_q, const int* block_table,
                                                            const int* seqlens_k, int max_pages, int page_size,
                                                            int heads_q, int heads_kv, int total_q) {
    afd_paged_rows r;
    r.cu_q = cu_q;
    r.block_table = block_table;
    r.seqlens_k = seqlens_k;
    r.max_pages = max_pages;
    r.page_shift = af_page_shift(page_size);
    r.heads_q = heads_q;
    r.heads_kv = heads_kv;
    r.total_q = total_q;
    return r;
}
