// attnforge attention helpers: conversions, warp reductions, element masks, closed-form
// tile classifiers, score modifications and RoPE. Positions are absolute (query row i sits
// at i + seq_k - seq_q); a tile is query positions [p_lo, p_hi] x key positions [c0, c1],
// all in range. The classifiers mirror attnforge_codegen::blocks::classify_tile (Rust) and
// are exact: SKIP iff no element is allowed, FULL iff every element is.

#define AF_TILE_SKIP 0
#define AF_TILE_FULL 1
#define AF_TILE_PARTIAL 2
#define AF_LOG2E 1.4426950408889634f
#define AF_LN2 0.6931471805599453f

// ---- element conversions ----
__device__ __forceinline__ float af_to_float(float x) { return x; }
__device__ __forceinline__ float af_to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float af_to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ void af_store(float* p, float x) { *p = x; }
__device__ __forceinline__ void af_store(__half* p, float x) { *p = __float2half_rn(x); }
__device__ __forceinline__ void af_store(__nv_bfloat16* p, float x) { *p = __float2bfloat16_rn(x); }

// ---- warp reductions (all 32 lanes participate) ----
__device__ __forceinline__ float af_warp_max(float x) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, off));
    return x;
}
__device__ __forceinline__ float af_warp_sum(float x) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) x += __shfl_xor_sync(0xffffffffu, x, off);
    return x;
}

// ---- element masks: allowed(q_pos, kv_pos) ----
__device__ __forceinline__ bool af_mask_causal(long long q, long long kv) { return kv <= q; }
// local(left, right): q - left <= kv <= q + right; a negative bound is unbounded.
__device__ __forceinline__ bool af_mask_local(long long q, long long kv, int left, int right) {
    return (left < 0 || kv >= q - left) && (right < 0 || kv <= q + right);
}
__device__ __forceinline__ bool af_mask_prefix_lm(long long q, long long kv, int prefix) {
    return kv <= q || kv < prefix;
}
// The document predicates load both ids without a branch (q < 0, a query before the first key,
// reads id 0 and is then refused): the per-key id is shared by a thread's rows and the per-row
// id hoisted out of the loop over keys (af_element_bits).
__device__ __forceinline__ int af_doc_id(const int* doc, long long pos) {
    return doc[pos < 0 ? 0 : pos];
}
__device__ __forceinline__ bool af_mask_document(const int* doc, long long q, long long kv) {
    return (q >= 0) & (af_doc_id(doc, q) == doc[kv]);
}
__device__ __forceinline__ bool af_mask_causal_document(const int* doc, long long q, long long kv) {
    return (kv <= q) & (af_doc_id(doc, q) == doc[kv]);
}
// Doc id 0 is the shared question prefix.
__device__ __forceinline__ bool af_mask_share_question(const int* doc, long long q, long long kv) {
    const int dq = af_doc_id(doc, q), dk = doc[kv];
    return (q >= 0) & (((dq != 0) & (dk == 0)) | ((dq == dk) & (kv <= q)));
}
__device__ __forceinline__ bool af_mask_global_local(long long q, long long kv, int w, int g) {
    const long long d = q - kv;
    return (d <= w && -d <= w) || q < g || kv < g;
}
__device__ __forceinline__ bool af_mask_block_causal_document(const int* doc, long long q, long long kv, int bc) {
    // positions are below seq_k <= INT_MAX: 32-bit divisions (a 64-bit one is a long subroutine)
    return (q >= 0) & (af_doc_id(doc, q) == doc[kv]) & ((int)kv / bc <= (int)q / bc);
}
__device__ __forceinline__ bool af_mask_lambda(long long q, long long kv, int g, int l) {
    return kv <= q && (kv < g || q - kv < l);
}

// ---- closed-form tile classifiers ----
__device__ __forceinline__ int af_tile_causal(long long p_lo, long long p_hi, long long c0, long long c1) {
    if (c0 > p_hi) return AF_TILE_SKIP;
    return c1 <= p_lo ? AF_TILE_FULL : AF_TILE_PARTIAL;
}
__device__ __forceinline__ int af_tile_local(long long p_lo, long long p_hi, long long c0, long long c1, int left, int right) {
    if ((right >= 0 && c0 > p_hi + right) || (left >= 0 && c1 < p_lo - left)) return AF_TILE_SKIP;
    const bool full = (left < 0 || c0 >= p_hi - left) && (right < 0 || c1 <= p_lo + right);
    return full ? AF_TILE_FULL : AF_TILE_PARTIAL;
}
__device__ __forceinline__ int af_tile_prefix_lm(long long p_lo, long long p_hi, long long c0, long long c1, int prefix) {
    if (c0 > p_hi && c0 >= prefix) return AF_TILE_SKIP;
    return (c1 <= p_lo || c1 < prefix) ? AF_TILE_FULL : AF_TILE_PARTIAL;
}
__device__ __forceinline__ int af_tile_global_local(long long p_lo, long long p_hi, long long c0, long long c1, int w, int g) {
    long long gap = c0 - p_hi;
    if (p_lo - c1 > gap) gap = p_lo - c1;
    if (gap < 0) gap = 0;
    if (p_lo >= g && c0 >= g && gap > w) return AF_TILE_SKIP;
    const long long rp = p_lo > g ? p_lo : g, rc = c0 > g ? c0 : g;
    const long long span = (p_hi - rc) > (c1 - rp) ? (p_hi - rc) : (c1 - rp);
    return (rp > p_hi || rc > c1 || span <= w) ? AF_TILE_FULL : AF_TILE_PARTIAL;
}
__device__ __forceinline__ int af_tile_lambda(long long p_lo, long long p_hi, long long c0, long long c1, int g, int l) {
    const bool any_global = c0 < g && c0 <= p_hi;
    const bool any_window = l > 0 && p_hi - c0 >= 0 && p_lo - c1 <= (long long)l - 1;
    if (!(any_global || any_window)) return AF_TILE_SKIP;
    const long long rc = c0 > g ? c0 : g;
    return (c1 <= p_lo && (rc > c1 || p_hi - rc < l)) ? AF_TILE_FULL : AF_TILE_PARTIAL;
}

// ---- chunked_causal(C) and dilated_causal(w, d) (variants.md section 11) ----
// Host versions: attnforge_codegen::masks (chunked_causal_tile, dilated_causal_key_range, ...).
// Positions lie below seq_k <= INT_MAX, so divisions and remainders are 32-bit (a 64-bit
// one is a long subroutine); a product of two int parameters is formed in 64 bits.
// chunked_causal(C), C >= 1: kv <= q in q's chunk [C floor(q / C), q]; q - kv <= q mod C
// says the same with one remainder.
__device__ __forceinline__ bool af_mask_chunked_causal(long long q, long long kv, int chunk) {
    return kv <= q && q - kv <= (int)q % chunk;
}
// dilated_causal(w, d), w >= 0, d >= 1: the distance q - kv is one of 0, d, ..., w d.
__device__ __forceinline__ bool af_mask_dilated_causal(long long q, long long kv, int window, int dilation) {
    const long long dist = q - kv;
    return dist >= 0 && dist <= (long long)window * dilation && (int)dist % dilation == 0;
}
// A row p reaches the keys [C floor(p / C), p], both ends nondecreasing in p: some element
// is allowed iff the first row at or right of column c0 exists and its chunk starts by c1;
// all are iff c1 is left of the first row and the last row's chunk starts by c0.
__device__ __forceinline__ int af_tile_chunked_causal(long long p_lo, long long p_hi, long long c0, long long c1, int chunk) {
    const long long p = c0 > p_lo ? c0 : p_lo;
    if (p > p_hi || (int)p / chunk > (int)c1 / chunk) return AF_TILE_SKIP;
    return (c1 <= p_lo && (int)p_hi / chunk == (int)c0 / chunk) ? AF_TILE_FULL : AF_TILE_PARTIAL;
}
// The distances q - kv over the tile are every integer of [p_lo - c1, p_hi - c0]. Some
// element is allowed iff a multiple of d lies in that range clipped to [0, w d]; every one
// is iff all distances are allowed: with d >= 2 two neighbouring distances never both are,
// so only a 1 x 1 tile, or with d = 1 a tile whose distances all lie in [0, w].
__device__ __forceinline__ int af_tile_dilated_causal(long long p_lo, long long p_hi, long long c0, long long c1, int window, int dilation) {
    const long long reach = (long long)window * dilation;
    const long long near = p_lo - c1 > 0 ? p_lo - c1 : 0;
    const long long far = p_hi - c0 < reach ? p_hi - c0 : reach;
    // a range of at least d distances holds a multiple of d: the division (far < seq_k, so
    // an int one) is only needed for a narrower range, which a visited tile rarely has
    if (far < near) return AF_TILE_SKIP;
    if (far - near < dilation - 1 && (long long)((int)far / dilation) * dilation < near) return AF_TILE_SKIP;
    const bool full = (p_lo == p_hi && c0 == c1) || (dilation == 1 && p_lo - c1 >= 0 && p_hi - c0 <= reach);
    return full ? AF_TILE_FULL : AF_TILE_PARTIAL;
}
// Key range [lo, hi) of the query positions [p_lo, p_hi] (0 <= p_lo <= p_hi < seq_k), exact:
// lo is the first allowed key of some row, hi - 1 the last (row p_hi's own position).
__device__ __forceinline__ long long af_keys_lo_chunked_causal(long long p_lo, long long /*p_hi*/, int /*seq_k*/, int chunk) {
    return p_lo <= 0 ? 0LL : (long long)((int)p_lo / chunk) * chunk;
}
__device__ __forceinline__ long long af_keys_hi_chunked_causal(long long /*p_lo*/, long long p_hi, int seq_k, int /*chunk*/) {
    return p_hi + 1 < seq_k ? p_hi + 1 : (long long)seq_k;
}
// Row p's first key is p - w d once p >= w d, else p mod d; below w d it is 0 exactly when
// a multiple of d lies in [p_lo, p_hi] (w d itself is one, so that covers p_hi >= w d).
__device__ __forceinline__ long long af_keys_lo_dilated_causal(long long p_lo, long long p_hi, int /*seq_k*/, int window, int dilation) {
    const long long reach = (long long)window * dilation;
    if (p_lo >= reach) return p_lo - reach;
    if (p_lo <= 0) return 0LL;
    const int r = (int)p_lo % dilation;
    return (r == 0 || p_hi - p_lo >= dilation - r) ? 0LL : (long long)r;
}
__device__ __forceinline__ long long af_keys_hi_dilated_causal(long long /*p_lo*/, long long p_hi, int seq_k, int /*window*/, int /*dilation*/) {
    return p_hi + 1 < seq_k ? p_hi + 1 : (long long)seq_k;
}

// ---- score modifications (before the mask) ----
__device__ __forceinline__ float af_score_softcap(float s, float cap) { return cap * tanhf(s / cap); }
// The same as cap - 2 cap / (1 + exp(2 s / cap)): one exp2 and one fast reciprocal, no
// branch (exp2 overflowing to +inf gives cap, underflowing to 0 gives -cap); absolute error
// about 1e-7 cap, far inside the rounding of f16/bf16 scores. `k` = 2 log2(e) / cap. The
// f16/bf16 kernels use it; f32 kernels keep tanhf, whose compiled code is several times larger.
__device__ __forceinline__ float af_score_softcap_fast(float s, float cap, float k) {
    return cap - 2.f * cap * __fdividef(1.f, 1.f + exp2f(s * k));
}
__device__ __forceinline__ float af_score_alibi(float s, float slope, long long q, long long kv) {
    // q - kv lies in (-seq_q, seq_k): an int, whose conversion is one instruction (a 64-bit
    // integer to float conversion is several)
    return s - slope * fabsf((float)(int)(q - kv));
}

// ---- LM-Infinite (variants.md section 5) ----
// Which score branches a tile needs: bit 0 = near branch (q - kv < L, true-distance RoPE),
// bit 1 = far branch (kv < G, q - kv >= L, query rotated at Deff, key un-rotated).
__device__ __forceinline__ int af_lminf_branches(long long p_lo, long long p_hi, long long c0, long long c1, int g, int l) {
    const bool near = l > 0 && p_hi - c0 >= 0 && p_lo - c1 <= (long long)l - 1;
    const bool far = c0 < g && p_hi - c0 >= l;
    return (near ? 1 : 0) | (far ? 2 : 0);
}
// FULL when every element takes the same branch (no per-element selection).
__device__ __forceinline__ int af_tile_lminf(long long p_lo, long long p_hi, long long c0, long long c1, int g, int l) {
    const int br = af_lminf_branches(p_lo, p_hi, c0, c1, g, l);
    if (br == 0) return AF_TILE_SKIP;
    const bool all_near = c1 <= p_lo && p_hi - c0 < l;
    const bool all_far = c1 < g && p_lo - c1 >= l;
    return (all_near || all_far) ? AF_TILE_FULL : AF_TILE_PARTIAL;
}
// RoPE frequency f_m = theta^(-2m/D) (half-split convention, m < D/2).
__device__ __forceinline__ float af_rope_freq(int m, int d, float log2_theta) {
    return exp2f(-(float)(2 * m) / (float)d * log2_theta);
}
// Rotate the pair (x0, x1) = (x_m, x_{m+D/2}) by angle pos * f (pos >= 0). The angle is
// reduced to [-pi, pi] here (2*pi split in two constants) so that the fast __sinf/__cosf
// apply: sincosf's slow path for large arguments needs a local-memory stack frame.
__device__ __forceinline__ void af_rope_pair(float& x0, float& x1, long long pos, float f) {
    const float a = (float)pos * f;
    const float k = (float)(long long)(a * 0.15915494309189535f + 0.5f);
    const float r = (a - k * 6.28125f) - k * 1.9353071795864769e-3f;
    const float sn = __sinf(r), cs = __cosf(r);
    const float y0 = x0 * cs - x1 * sn;
    const float y1 = x1 * cs + x0 * sn;
    x0 = y0;
    x1 = y1;
}

// ---- tensor-core mainloop (mma.sync m16n8k16, ldmatrix, cp.async) ----
// Element offset of (row, col) in a [rows][D] tile of 16-bit elements whose 16-byte chunks
// are XOR-swizzled by row: the 8 rows an ldmatrix reads at one logical chunk land in 8
// distinct chunks, so the 8 x 16 bytes cover all 32 banks (no conflicts for D >= 64).
template <int D>
__device__ __forceinline__ int af_swz(int row, int col) {
    constexpr int MASK = D / 8 < 8 ? D / 8 - 1 : 7;
    const int c = col >> 3;
    return row * D + (((c ^ row) & MASK) | (c & ~MASK)) * 8 + (col & 7);
}
// Two f32 values -> packed 16-bit pair (lower element index in the low half), the register
// format of mma A/B fragments.
__device__ __forceinline__ unsigned af_pack_f16(float lo, float hi) {
    return (unsigned)__half_as_ushort(__float2half_rn(lo)) | ((unsigned)__half_as_ushort(__float2half_rn(hi)) << 16);
}
__device__ __forceinline__ unsigned af_pack_bf16(float lo, float hi) {
    return (unsigned)__bfloat16_as_ushort(__float2bfloat16_rn(lo)) |
           ((unsigned)__bfloat16_as_ushort(__float2bfloat16_rn(hi)) << 16);
}
