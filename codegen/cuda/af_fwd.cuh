// attnforge forward kernels: the policies and per-block state shared by the two main-loop
// templates (af_fwd_tc.cuh: tensor cores; af_fwd_fma.cuh: f32 FMA). A generated kernel is an
// extern "C" wrapper that builds the policies from its arguments and calls one main loop:
//
//   af_fwd_tc<af_tile<BM, BN, WARPS, STAGES, D>>(args, schedule, block_hooks, scoring);
//
// - args (af_fwd_args<T>): the tensors, shapes, strides and scale every forward kernel has.
// - schedule: which key tiles a query block visits and how each is classified
//   (AF_TILE_FULL / AF_TILE_PARTIAL; skipped tiles are never visited). Interface:
//   `tiles<BN>(block, seq_k)` returns a walk with `first` (the start cursor) and
//   `next(cur, n0, kind)` (advances to the next visited tile at key n0).
//     af_analytic_schedule: closed-form key range [lo(p_lo, p_hi), hi(p_lo, p_hi)) and a tile
//                           classifier (p_lo, p_hi, c0, c1) -> AF_TILE_*
//     af_block_list_schedule<BQ, BK>: runtime lists of full, then partial blocks
// - layout: where a block's rows live (af_dense_layout, af_varlen_layout, af_paged_layout):
//   `block<BM>(a, blk)` fills the block's af_fwd_block (false: the block lies past its
//   sequence and exits), `kv_row(blk, kv)` is the row of key kv in k / v (the page slot
//   under a paged cache), `lse_at(a, blk, row)` the element of a query row in lse,
//   CONTIGUOUS_KV whether key rows are kv_row = kv.
// - block_hooks(b, h): the per-query-block policies, af_block_hooks{mask, score}:
//     mask:  af_no_mask, or af_element_mask{allowed(q_pos, kv_pos)} (partial tiles only)
//     score: af_no_score_mod, or any callable (x, q_pos, kv_pos) -> modified score
// - scoring: how a tile's raw scores are formed. Interface: BRANCHES (score tiles per key
//   tile), tile_branches(p_lo, p_hi, c0, c1) (bit i: branch i is needed by the tile; a tile
//   needing several selects per element), near(q_pos, kv_pos) (element takes branch 0); the
//   main loops overload their Q / K loads on it.
//     af_dot_scoring:   s = scale * q.k (one branch)
//     af_lminf_scoring: LM-Infinite, near branch (RoPE at true positions) and far branch
//                       (query rotated at Deff, key un-rotated), merged per element

// ---- tile shape and kernel arguments ----
// The packed rows of a decode block (af_decode_layout): the M tile holds the Sq_b query tokens
// of every query head of one GQA group, head-major; packed row r = r0 + (tile row) is token
// i = r % seq_q of head h0 + r / seq_q, at position i + shift (shift = Sk_b - Sq_b). The main
// loops see tile rows as positions (m0 = shift = 0); the layout's hooks map them back, so each
// row's mask and score see its own head and position.
struct af_packed_rows {
    int b, h0, r0, seq_q;
    long long shift;
    __device__ __forceinline__ void at(long long row, int& h, long long& pos) const {
        const int r = r0 + (int)row, g = r / seq_q;
        h = h0 + g;
        pos = r - (long long)g * seq_q + shift;
    }
};

template <int BM_, int BN_, int NW_, int STAGES_, int D_>
struct af_tile {
    static constexpr int BM = BM_;          // query rows per block
    static constexpr int BN = BN_;          // key columns per tile
    static constexpr int NW = NW_;          // warps
    static constexpr int STAGES = STAGES_;  // K/V shared-memory stages (tensor cores)
    static constexpr int D = D_;            // head dimension
    static constexpr int NT = NW * 32;      // threads
};

template <typename T>
struct af_fwd_args {
    const T* q;
    const T* k;
    const T* v;
    T* o;
    float* lse;  // [batch, heads_q, seq_q], natural log; null to skip
    int batch, heads_q, heads_kv, seq_q, seq_k;
    long long q_stride_b, q_stride_h, q_stride_s;
    long long k_stride_b, k_stride_h, k_stride_s;
    long long v_stride_b, v_stride_h, v_stride_s;
    long long o_stride_b, o_stride_h, o_stride_s;
    float scale;
};

// The query block of this thread block: batch (sequence) b, query head h (kv head hkv under
// GQA), its sequence's seq_q query rows and seq_k keys, query rows [m0, m0 + rows_valid) at
// positions [p_lo, p_hi] (row i sits at i + shift), the base pointers of its q, k, v and o
// rows, q0 (the sequence's first row in packed q, o; 0 for dense) and pages (the block-table row
// of a paged cache, null otherwise). A decode block (af_decode_layout) also has `rows`, the
// map of its packed rows to (head, position), and its key split.
template <typename T>
struct af_fwd_block {
    int b, h, hkv, seq_q, seq_k;
    long long m0, shift, rows_valid, p_lo, p_hi;
    const T* qb;
    const T* kb;
    const T* vb;
    T* ob;
    long long q0;
    const int* pages;
    af_packed_rows rows;
    int split, num_splits;
};

template <int BM, typename T>
__device__ __forceinline__ af_fwd_block<T> af_fwd_block_of(const af_fwd_args<T>& a) {
    af_fwd_block<T> blk;
    blk.b = blockIdx.z;
    blk.h = blockIdx.y;
    blk.hkv = blk.h / (a.heads_q / a.heads_kv);  // GQA: query head h reads kv head h / group
    blk.m0 = (long long)blockIdx.x * BM;
    blk.shift = (long long)a.seq_k - a.seq_q;
    blk.rows_valid = min((long long)BM, (long long)a.seq_q - blk.m0);
    blk.p_lo = blk.m0 + blk.shift;
    blk.p_hi = blk.m0 + blk.rows_valid - 1 + blk.shift;
    blk.qb = a.q + (long long)blk.b * a.q_stride_b + (long long)blk.h * a.q_stride_h;
    blk.kb = a.k + (long long)blk.b * a.k_stride_b + (long long)blk.hkv * a.k_stride_h;
    blk.vb = a.v + (long long)blk.b * a.v_stride_b + (long long)blk.hkv * a.v_stride_h;
    blk.ob = a.o + (long long)blk.b * a.o_stride_b + (long long)blk.h * a.o_stride_h;
    blk.seq_q = a.seq_q;
    blk.seq_k = a.seq_k;
    blk.q0 = 0;
    blk.pages = nullptr;
    return blk;
}

// ---- layouts ----
// Dense [B, H, S, D] tensors (strides free): one grid of ceil(seq_q / BM) x Hq x B blocks.
struct af_dense_layout {
    static constexpr bool CONTIGUOUS_KV = true;
    static constexpr bool PACKED = false;  // one head per block, rows m0 + tile row
    template <int BM, typename T>
    __device__ __forceinline__ bool block(const af_fwd_args<T>& a, af_fwd_block<T>& blk) const {
        blk = af_fwd_block_of<BM>(a);
        return true;
    }
    template <typename T>
    __device__ __forceinline__ long long kv_row(const af_fwd_block<T>&, long long kv) const { return kv; }
    // element of query row `row` in lse [B, Hq, Sq]
    template <typename T>
    __device__ __forceinline__ long long lse_at(const af_fwd_args<T>& a, const af_fwd_block<T>& blk, long long row) const {
        return ((long long)blk.b * a.heads_q + blk.h) * a.seq_q + row;
    }
    // keys per row of the statistics partials [B, Hq, qblocks, stats_keys] (af_key_mass_stats)
    template <typename T>
    __device__ __forceinline__ long long stats_keys(const af_fwd_args<T>& a) const { return a.seq_k; }
};

// Element of query row `row` of a serving block in lse [Hq, Tq] (a.seq_q = Tq).
template <typename T>
__device__ __forceinline__ long long af_serving_lse_at(const af_fwd_args<T>& a, const af_fwd_block<T>& blk, long long row) {
    return (long long)blk.h * a.seq_q + blk.q0 + row;
}

// The block of sequence b = blockIdx.z of a serving layout: q packed [Tq, Hq, D] from row q0
// (a.seq_q = Tq), o packed like q, lse [Hq, Tq]; k and v rows from kb, vb (kv head hkv added).
// False when the block lies past the sequence's seq_q rows (it exits before any barrier).
template <int BM, typename T>
__device__ __forceinline__ bool af_serving_block(const af_fwd_args<T>& a, af_fwd_block<T>& blk, long long q0, int seq_q,
                                                 int seq_k, const T* kb, const T* vb) {
    blk.b = blockIdx.z;
    blk.h = blockIdx.y;
    blk.hkv = blk.h / (a.heads_q / a.heads_kv);
    blk.seq_q = seq_q;
    blk.seq_k = seq_k;
    blk.m0 = (long long)blockIdx.x * BM;
    blk.shift = (long long)seq_k - seq_q;
    blk.rows_valid = min((long long)BM, (long long)seq_q - blk.m0);
    blk.p_lo = blk.m0 + blk.shift;
    blk.p_hi = blk.m0 + blk.rows_valid - 1 + blk.shift;
    blk.qb = a.q + q0 * a.q_stride_s + (long long)blk.h * a.q_stride_h;
    blk.kb = kb + (long long)blk.hkv * a.k_stride_h;
    blk.vb = vb + (long long)blk.hkv * a.v_stride_h;
    blk.ob = a.o + q0 * a.o_stride_s + (long long)blk.h * a.o_stride_h;
    blk.q0 = q0;
    blk.pages = nullptr;
    return blk.m0 < seq_q;
}

// Packed variable-length sequences (FlashAttention's varlen): sequence b is query rows
// cu_q[b] .. cu_q[b + 1] of q and key rows cu_k[b] .. cu_k[b + 1] of k, v ([Tk, Hkv, D]).
// Grid: ceil(max_b Sq_b / BM) x Hq x B.
struct af_varlen_layout {
    static constexpr bool CONTIGUOUS_KV = true;
    static constexpr bool PACKED = false;  // one head per block, rows m0 + tile row
    const int* cu_q;
    const int* cu_k;
    template <int BM, typename T>
    __device__ __forceinline__ bool block(const af_fwd_args<T>& a, af_fwd_block<T>& blk) const {
        const int b = blockIdx.z, q0 = cu_q[b], k0 = cu_k[b];
        return af_serving_block<BM>(a, blk, q0, cu_q[b + 1] - q0, cu_k[b + 1] - k0, a.k + (long long)k0 * a.k_stride_s,
                                    a.v + (long long)k0 * a.v_stride_s);
    }
    // sequence b's keys (for af_decode_layout): key count, k and v rows of key 0, no pages
    template <typename T>
    __device__ __forceinline__ void seq_keys(const af_fwd_args<T>& a, int b, int& sk, const T*& kb, const T*& vb,
                                             const int*& pages) const {
        const int k0 = cu_k[b];
        sk = cu_k[b + 1] - k0;
        kb = a.k + (long long)k0 * a.k_stride_s;
        vb = a.v + (long long)k0 * a.v_stride_s;
        pages = nullptr;
    }
    template <typename T>
    __device__ __forceinline__ long long kv_row(const af_fwd_block<T>&, long long kv) const { return kv; }
    template <typename T>
    __device__ __forceinline__ long long lse_at(const af_fwd_args<T>& a, const af_fwd_block<T>& blk, long long row) const {
        return af_serving_lse_at(a, blk, row);
    }
    // statistics row length: Tk key rows, a bound on every Sk_b (keys past Sk_b stay 0)
    template <typename T>
    __device__ __forceinline__ long long stats_keys(const af_fwd_args<T>& a) const { return a.seq_k; }
};

// A paged KV cache k, v: [num_pages, page_size, Hkv, D] (row stride k_stride_s = Hkv D is a
// page slot); key j of sequence b is slot j % page_size of page block_table[b][j / page_size];
// queries packed as in varlen (cu_q). page_size is a runtime power of two (1..1024).
struct af_paged_layout {
    static constexpr bool CONTIGUOUS_KV = false;
    static constexpr bool PACKED = false;  // one head per block, rows m0 + tile row
    const int* cu_q;
    const int* block_table;  // [B, max_pages]
    const int* seqlens_k;    // [B]
    int max_pages, page_shift;
    __device__ __forceinline__ af_paged_layout(const int* cq, const int* bt, const int* sk, int mp, int page_size)
        : cu_q(cq), block_table(bt), seqlens_k(sk), max_pages(mp), page_shift(af_page_shift(page_size)) {}
    template <int BM, typename T>
    __device__ __forceinline__ bool block(const af_fwd_args<T>& a, af_fwd_block<T>& blk) const {
        const int b = blockIdx.z, q0 = cu_q[b];
        const bool live = af_serving_block<BM>(a, blk, q0, cu_q[b + 1] - q0, seqlens_k[b], a.k, a.v);
        blk.pages = block_table + (long long)b * max_pages;
        return live;
    }
    // sequence b's keys (for af_decode_layout): key count, the caches, its block-table row
    template <typename T>
    __device__ __forceinline__ void seq_keys(const af_fwd_args<T>& a, int b, int& sk, const T*& kb, const T*& vb,
                                             const int*& pages) const {
        sk = seqlens_k[b];
        kb = a.k;
        vb = a.v;
        pages = block_table + (long long)b * max_pages;
    }
    template <typename T>
    __device__ __forceinline__ long long kv_row(const af_fwd_block<T>& blk, long long kv) const {
        return af_page_row(blk.pages, page_shift, kv);
    }
    // the row of key t0 when keys t0 .. t0 + BN - 1 lie in one page (consecutive slots: one
    // block-table entry per tile); false when the tile crosses a page boundary
    template <int BN, typename T>
    __device__ __forceinline__ bool tile_row(const af_fwd_block<T>& blk, long long t0, long long& row) const {
        const int in = (int)t0 & ((1 << page_shift) - 1);
        if (in + BN > (1 << page_shift)) return false;
        row = ((long long)blk.pages[t0 >> page_shift] << page_shift) | in;
        return true;
    }
    template <typename T>
    __device__ __forceinline__ long long lse_at(const af_fwd_args<T>& a, const af_fwd_block<T>& blk, long long row) const {
        return af_serving_lse_at(a, blk, row);
    }
    // statistics row length: the block table's reach max_pages page_size, a bound on every Sk_b
    template <typename T>
    __device__ __forceinline__ long long stats_keys(const af_fwd_args<T>&) const { return (long long)max_pages << page_shift; }
};

// Whether the BN keys from t0 are consecutive rows of k and v, and the row of key t0: always
// (row t0) for contiguous keys; under a paged cache when the tile lies in one page (`tile_row`).
template <int BN, class Layout, typename T>
__device__ __forceinline__ bool af_kv_tile_row(const Layout& l, const af_fwd_block<T>& blk, long long t0, long long& row) {
    if constexpr (Layout::CONTIGUOUS_KV) {
        row = t0;
        return true;
    } else {
        return l.template tile_row<BN>(blk, t0, row);
    }
}

// ---- schedules ----
// Classifier of a mask whose in-range tiles are all full.
struct af_all_full {
    __device__ __forceinline__ int operator()(long long, long long, long long, long long) const { return AF_TILE_FULL; }
};

template <int BN, class Classify>
struct af_analytic_walk {
    long long first, kv_hi, p_lo, p_hi;
    int seq_k;
    Classify classify;
    __device__ __forceinline__ bool next(long long& cur, long long& n0, int& kind) const {
        while (cur < kv_hi) {
            n0 = cur;
            cur += BN;
            const long long c0 = n0, c1 = min(n0 + BN, (long long)seq_k) - 1;
            kind = classify(p_lo, p_hi, c0, c1);
            if (kind != AF_TILE_SKIP) return true;  // skipped tiles are never visited
        }
        return false;
    }
};

template <class Lo, class Hi, class Classify>
struct af_analytic_schedule {
    Lo lo;              // (p_lo, p_hi) -> first key position that may be allowed
    Hi hi;              // (p_lo, p_hi) -> one past the last one
    Classify classify;  // (p_lo, p_hi, c0, c1) -> AF_TILE_SKIP / FULL / PARTIAL
    template <int BN, typename T>
    __device__ __forceinline__ af_analytic_walk<BN, Classify> tiles(const af_fwd_block<T>& blk, int seq_k) const {
        const long long kv_lo = lo(blk.p_lo, blk.p_hi);
        return {(kv_lo / BN) * BN, hi(blk.p_lo, blk.p_hi), blk.p_lo, blk.p_hi, seq_k, classify};
    }
};

template <class Lo, class Hi, class Classify>
__device__ __forceinline__ af_analytic_schedule<Lo, Hi, Classify> af_analytic(Lo lo, Hi hi, Classify classify) {
    return {lo, hi, classify};
}

// The analytic schedule of a serving layout: lo and hi also take the block's sequence
// lengths (seq_q, seq_k), which are runtime values per sequence.
template <class Lo, class Hi, class Classify>
struct af_analytic_seq_schedule {
    Lo lo;              // (p_lo, p_hi, seq_q, seq_k) -> first key position that may be allowed
    Hi hi;              // (p_lo, p_hi, seq_q, seq_k) -> one past the last one
    Classify classify;  // (p_lo, p_hi, c0, c1) -> AF_TILE_SKIP / FULL / PARTIAL
    template <int BN, typename T>
    __device__ __forceinline__ af_analytic_walk<BN, Classify> tiles(const af_fwd_block<T>& blk, int seq_k) const {
        const long long kv_lo = lo(blk.p_lo, blk.p_hi, blk.seq_q, seq_k);
        return {(kv_lo / BN) * BN, hi(blk.p_lo, blk.p_hi, blk.seq_q, seq_k), blk.p_lo, blk.p_hi, seq_k, classify};
    }
};

template <class Lo, class Hi, class Classify>
__device__ __forceinline__ af_analytic_seq_schedule<Lo, Hi, Classify> af_analytic_seq(Lo lo, Hi hi, Classify classify) {
    return {lo, hi, classify};
}

template <int BN, int BK>
struct af_block_list_walk {
    static constexpr int SUB = BK / BN;  // kernel tiles per list block
    long long first;
    int n_full, n_part, seq_k;
    const int* full_idx;
    const int* part_idx;
    __device__ __forceinline__ bool next(long long& cur, long long& n0, int& kind) const {
        while (cur < (long long)(n_full + n_part) * SUB) {
            const int e = (int)(cur / SUB);
            kind = e < n_full ? AF_TILE_FULL : AF_TILE_PARTIAL;
            n0 = (long long)(e < n_full ? full_idx[e] : part_idx[e - n_full]) * BK + (cur % SUB) * BN;
            ++cur;
            if (n0 < seq_k) return true;  // sub-tiles past the last key are not visited
        }
        return false;
    }
};

// Runtime block lists of BQ x BK blocks: per (batch, head, query block) row, the full blocks,
// then the partial ones (a batch or head extent of 1 is shared by all).
template <int BQ, int BK>
struct af_block_list_schedule {
    const int* full_num;
    const int* full_idx;
    const int* partial_num;
    const int* partial_idx;
    int batches, heads, rows, width;
    template <int BN, typename T>
    __device__ __forceinline__ af_block_list_walk<BN, BK> tiles(const af_fwd_block<T>& blk, int seq_k) const {
        const long long lrow = ((long long)(batches == 1 ? 0 : blk.b) * heads + (heads == 1 ? 0 : blk.h)) * rows + blk.m0 / BQ;
        return {0, full_num[lrow], partial_num[lrow], seq_k, full_idx + lrow * width, partial_idx + lrow * width};
    }
};

// ---- per-block hooks: element mask and score modification ----
struct af_no_mask {
    static constexpr bool active = false;
    __device__ __forceinline__ bool operator()(long long, long long) const { return true; }
};

template <class F>
struct af_element_mask {
    static constexpr bool active = true;  // evaluated on partial tiles
    F allowed;                            // (q_pos, kv_pos) -> bool
    __device__ __forceinline__ bool operator()(long long q_pos, long long kv_pos) const { return allowed(q_pos, kv_pos); }
};

template <class F>
__device__ __forceinline__ af_element_mask<F> af_mask(F allowed) {
    return {allowed};
}

struct af_no_score_mod {
    __device__ __forceinline__ float operator()(float x, long long, long long) const { return x; }
};

// Whether a score modification is the identity (the main loops then fold the scale into the
// softmax of interior tiles).
template <class Score> struct af_is_identity_score { static constexpr bool value = false; };
template <> struct af_is_identity_score<af_no_score_mod> { static constexpr bool value = true; };

template <class Mask, class Score>
struct af_block_hooks {
    Mask mask;
    Score score;  // (x, q_pos, kv_pos) -> modified score, before the mask
};

template <class Mask, class Score>
__device__ __forceinline__ af_block_hooks<Mask, Score> af_hooks(Mask mask, Score score) {
    return {mask, score};
}

// ---- scoring ----
struct af_dot_scoring {
    static constexpr int BRANCHES = 1;
    __device__ __forceinline__ int tile_branches(long long, long long, long long, long long) const { return 1; }
    __device__ __forceinline__ bool near(long long, long long) const { return true; }
    __device__ __forceinline__ af_dot_scoring for_seq(int) const { return *this; }
};

// LM-Infinite (variants.md section 5): branch 0 (near, q - kv < L) rotates q and k at their
// positions, branch 1 (far) rotates q at Deff and leaves k un-rotated.
struct af_lminf_scoring {
    static constexpr int BRANCHES = 2;
    int global_tokens, local_window, dist_limit;
    long long d_eff;   // clamped distance of the far branch
    float log2_theta;  // log2 of the RoPE base
    __device__ __forceinline__ af_lminf_scoring(int g, int l, int dist_limit_, float rope_theta, int seq_k)
        : global_tokens(g),
          local_window(l),
          dist_limit(dist_limit_),
          d_eff(min((long long)dist_limit_, (long long)seq_k - 1)),
          log2_theta(logf(rope_theta) * AF_LOG2E) {}
    // the policy of a sequence of seq_k keys (Deff is clamped by the sequence's length)
    __device__ __forceinline__ af_lminf_scoring for_seq(int seq_k) const {
        af_lminf_scoring s = *this;
        s.d_eff = min((long long)dist_limit, (long long)seq_k - 1);
        return s;
    }
    __device__ __forceinline__ int tile_branches(long long p_lo, long long p_hi, long long c0, long long c1) const {
        return af_lminf_branches(p_lo, p_hi, c0, c1, global_tokens, local_window);
    }
    __device__ __forceinline__ bool near(long long q_pos, long long kv_pos) const { return q_pos - kv_pos < local_window; }
    // The one definition of the rotations every LM-Infinite kernel applies (forward main
    // loops, statistics sweep), so their scores agree to the bit. Query pair (x0, x1) =
    // (q_m, q_{m + D/2}): near branch at the query's position (in place), far branch at Deff
    // into (y0, y1).
    __device__ __forceinline__ void rotate_q(float& x0, float& x1, float& y0, float& y1, long long q_pos, int m, int d) const {
        const float f = af_rope_freq(m, d, log2_theta);
        y0 = x0;
        y1 = x1;
        af_rope_pair(x0, x1, q_pos, f);
        af_rope_pair(y0, y1, d_eff, f);
    }
    // Key pair of the near branch, rotated at its position (the far branch reads k un-rotated).
    __device__ __forceinline__ void rotate_k(float& x0, float& x1, long long kv, int m, int d) const {
        af_rope_pair(x0, x1, kv, af_rope_freq(m, d, log2_theta));
    }
};

// ---- decode: GQA groups packed into the M tile, keys split across blocks ----
// Per-row hooks of a decode block: the mask and score of packed row `row` are those of its
// own head at its own position (af_packed_rows). A kernel without a mask or a score
// modification keeps af_no_mask / af_no_score_mod, so the main loops' fast paths still apply.
template <class BH, class Mask>
struct af_packed_mask {
    static constexpr bool active = Mask::active;
    BH block_hooks;
    af_packed_rows rows;
    __device__ __forceinline__ bool operator()(long long row, long long kv_pos) const {
        int h;
        long long pos;
        rows.at(row, h, pos);
        return block_hooks(rows.b, h).mask(pos, kv_pos);
    }
};
template <class BH>
struct af_packed_score {
    BH block_hooks;
    af_packed_rows rows;
    __device__ __forceinline__ float operator()(float x, long long row, long long kv_pos) const {
        int h;
        long long pos;
        rows.at(row, h, pos);
        return block_hooks(rows.b, h).score(x, pos, kv_pos);
    }
};
template <class BH, class Mask>
__device__ __forceinline__ af_packed_mask<BH, Mask> af_pack_mask(const BH& bh, const af_packed_rows& rows, const Mask&) {
    return {bh, rows};
}
template <class BH>
__device__ __forceinline__ af_no_mask af_pack_mask(const BH&, const af_packed_rows&, const af_no_mask&) {
    return {};
}
template <class BH, class Score>
__device__ __forceinline__ af_packed_score<BH> af_pack_score(const BH& bh, const af_packed_rows& rows, const Score&) {
    return {bh, rows};
}
template <class BH>
__device__ __forceinline__ af_no_score_mod af_pack_score(const BH&, const af_packed_rows&, const af_no_score_mod&) {
    return {};
}
// A scoring policy seen from packed rows: near() at the row's own position (LM-Infinite's
// branch choice); af_element_bits only reads BRANCHES and near.
template <class Scoring>
struct af_packed_near {
    static constexpr int BRANCHES = Scoring::BRANCHES;
    Scoring sc;
    af_packed_rows rows;
    __device__ __forceinline__ bool near(long long row, long long kv_pos) const {
        int h;
        long long pos;
        rows.at(row, h, pos);
        return sc.near(pos, kv_pos);
    }
};

// Decode (variants.md section 13; Sq_b of 1..16 tokens per sequence) on the keys of `Keys`
// (af_paged_layout: a paged cache; af_varlen_layout: packed keys): one
// block per (packed row block, split, kv head hkv = blockIdx.y, sequence b = blockIdx.z). The
// M tile packs the Sq_b tokens of the Hq / Hkv query heads of kv head hkv (af_packed_rows), so
// every K/V tile is read once for the whole group; blockIdx.x = split + num_splits * (row
// block). Split s of a sequence attends keys [s chunk, (s + 1) chunk) with chunk =
// ceil(ceil(Sk_b / num_splits) / BN) BN (the reference's split_kv_ranges with align = BN;
// af_split_schedule) and, when num_splits > 1, writes f32 partials o_part [num_splits, Tq, Hq,
// D] and lse_part [num_splits, Hq, Tq] that af_split_merge merges; num_splits = 1 writes o and
// lse directly. Grid: num_splits ceil(Hq / Hkv max_b Sq_b / BM) x Hkv x B.
template <class Keys>
struct af_decode_layout {
    static constexpr bool CONTIGUOUS_KV = Keys::CONTIGUOUS_KV;
    static constexpr bool PACKED = true;
    Keys keys;  // cu_q, each sequence's keys (seq_keys) and their rows (kv_row)
    int num_splits;
    float* o_part;
    float* lse_part;
    template <int BM, typename T>
    __device__ __forceinline__ bool block(const af_fwd_args<T>& a, af_fwd_block<T>& blk) const {
        const int b = blockIdx.z, q0 = keys.cu_q[b], sq = keys.cu_q[b + 1] - q0;
        int sk;
        const T* kb;
        const T* vb;
        keys.seq_keys(a, b, sk, kb, vb, blk.pages);
        const int group = a.heads_q / a.heads_kv;
        const long long rows = (long long)group * sq;  // packed rows of the group
        blk.b = b;
        blk.hkv = blockIdx.y;
        blk.h = blk.hkv * group;  // first head of the group (its block-list row)
        blk.split = blockIdx.x % num_splits;
        blk.num_splits = num_splits;
        const long long r0 = (long long)(blockIdx.x / num_splits) * BM;
        if (r0 >= rows) return false;  // past the group's rows (whole block; sq = 0 included)
        blk.rows = {b, blk.h, (int)r0, sq, (long long)sk - sq};
        blk.seq_k = sk;
        // tile rows are positions: m0 = shift = 0, seq_q = the rows left from r0 (row < seq_q
        // is the row test of the main loops)
        blk.seq_q = (int)(rows - r0);
        blk.m0 = 0;
        blk.shift = 0;
        blk.rows_valid = min((long long)BM, rows - r0);
        // the real positions of the block's rows (all of the sequence's when it spans heads)
        const long long last = r0 + blk.rows_valid - 1;
        const bool one_head = r0 / sq == last / sq;
        blk.p_lo = (one_head ? r0 % sq : 0) + blk.rows.shift;
        blk.p_hi = (one_head ? last % sq : sq - 1) + blk.rows.shift;
        blk.qb = a.q + (long long)q0 * a.q_stride_s + (long long)blk.h * a.q_stride_h;
        blk.kb = kb + (long long)blk.hkv * a.k_stride_h;
        blk.vb = vb + (long long)blk.hkv * a.v_stride_h;
        blk.ob = a.o + (long long)q0 * a.o_stride_s + (long long)blk.h * a.o_stride_h;
        blk.q0 = q0;
        return true;
    }
    template <typename T>
    __device__ __forceinline__ long long kv_row(const af_fwd_block<T>& blk, long long kv) const { return keys.kv_row(blk, kv); }
    template <int BN, typename T>
    __device__ __forceinline__ bool tile_row(const af_fwd_block<T>& blk, long long t0, long long& row) const {
        return keys.template tile_row<BN>(blk, t0, row);
    }
    // element offsets of packed row `row` in q (from blk.qb) and o (from blk.ob), its position
    template <typename T>
    __device__ __forceinline__ long long q_off(const af_fwd_args<T>& a, const af_fwd_block<T>& blk, long long row) const {
        const int r = blk.rows.r0 + (int)row, g = r / blk.rows.seq_q;
        return (long long)(r - g * blk.rows.seq_q) * a.q_stride_s + (long long)g * a.q_stride_h;
    }
    template <typename T>
    __device__ __forceinline__ long long o_off(const af_fwd_args<T>& a, const af_fwd_block<T>& blk, long long row) const {
        const int r = blk.rows.r0 + (int)row, g = r / blk.rows.seq_q;
        return (long long)(r - g * blk.rows.seq_q) * a.o_stride_s + (long long)g * a.o_stride_h;
    }
    template <typename T>
    __device__ __forceinline__ long long q_pos(const af_fwd_block<T>& blk, long long row) const {
        int h;
        long long pos;
        blk.rows.at(row, h, pos);
        return pos;
    }
    // lse [Hq, Tq] (num_splits = 1), or lse_part [num_splits, Hq, Tq]
    template <typename T>
    __device__ __forceinline__ long long lse_at(const af_fwd_args<T>& a, const af_fwd_block<T>& blk, long long row) const {
        int h;
        long long pos;
        blk.rows.at(row, h, pos);
        const long long i = pos - blk.rows.shift;
        return ((long long)blk.split * a.heads_q + h) * a.seq_q + blk.q0 + i;
    }
    // statistics row length: the keys' bound on every Sk_b (af_key_mass_stats)
    template <typename T>
    __device__ __forceinline__ long long stats_keys(const af_fwd_args<T>& a) const { return keys.stats_keys(a); }
    __device__ __forceinline__ bool partial() const { return num_splits > 1; }
    template <typename T>
    __device__ __forceinline__ float* o_part_row(const af_fwd_args<T>& a, const af_fwd_block<T>& blk, long long row) const {
        return o_part + (long long)blk.split * a.seq_q * a.o_stride_s + blk.q0 * a.o_stride_s +
               (long long)blk.h * a.o_stride_h + o_off(a, blk, row);
    }
    template <class BH, typename T>
    __device__ __forceinline__ auto hooks(const BH& block_hooks, const af_fwd_block<T>& blk) const {
        const auto inner = block_hooks(blk.b, blk.h);
        return af_hooks(af_pack_mask(block_hooks, blk.rows, inner.mask), af_pack_score(block_hooks, blk.rows, inner.score));
    }
    template <class Scoring, typename T>
    __device__ __forceinline__ af_packed_near<Scoring> row_scoring(const Scoring& sc, const af_fwd_block<T>& blk) const {
        return {sc, blk.rows};
    }
};

// The layout's view of a block's rows, for the main loops: unpacked layouts (dense, varlen,
// paged) have rows m0 + tile row of head h; a packed one (af_decode_layout) maps them itself.
template <class Layout, typename T>
__device__ __forceinline__ long long af_q_off(const Layout& l, const af_fwd_args<T>& a, const af_fwd_block<T>& blk, long long row) {
    if constexpr (Layout::PACKED) return l.q_off(a, blk, row);
    else return row * a.q_stride_s;
}
template <class Layout, typename T>
__device__ __forceinline__ long long af_o_off(const Layout& l, const af_fwd_args<T>& a, const af_fwd_block<T>& blk, long long row) {
    if constexpr (Layout::PACKED) return l.o_off(a, blk, row);
    else return row * a.o_stride_s;
}
template <class Layout, typename T>
__device__ __forceinline__ long long af_q_pos(const Layout& l, const af_fwd_block<T>& blk, long long row) {
    if constexpr (Layout::PACKED) return l.q_pos(blk, row);
    else return row + blk.shift;
}
template <class Layout, class BH, typename T>
__device__ __forceinline__ auto af_layout_hooks(const Layout& l, const BH& block_hooks, const af_fwd_block<T>& blk) {
    if constexpr (Layout::PACKED) return l.hooks(block_hooks, blk);
    else return block_hooks(blk.b, blk.h);
}
template <class Layout, class Scoring, typename T>
__device__ __forceinline__ auto af_row_scoring(const Layout& l, const Scoring& sc, const af_fwd_block<T>& blk) {
    if constexpr (Layout::PACKED) return l.row_scoring(sc, blk);
    else return sc;
}
// The query heads of a block's rows, for the statistics partials: an unpacked block has one
// (blk.h, every row); a packed decode block spans heads h0 + r0 / Sq_b .. of its group, and
// row `row` belongs to the one af_row_head returns (counted from the first).
template <class Layout, typename T>
__device__ __forceinline__ int af_row_heads(const Layout&, const af_fwd_block<T>& blk, int& h_first) {
    if constexpr (Layout::PACKED) {
        const int g0 = blk.rows.r0 / blk.rows.seq_q, g1 = (blk.rows.r0 + (int)blk.rows_valid - 1) / blk.rows.seq_q;
        h_first = blk.rows.h0 + g0;
        return g1 - g0 + 1;
    } else {
        h_first = blk.h;
        return 1;
    }
}
template <class Layout, typename T>
__device__ __forceinline__ int af_row_head(const Layout&, const af_fwd_block<T>& blk, long long row) {
    if constexpr (Layout::PACKED) return (blk.rows.r0 + (int)row) / blk.rows.seq_q - blk.rows.r0 / blk.rows.seq_q;
    else return 0;
}
// Whether the block writes f32 partials (a split decode) instead of o, lse.
template <class Layout>
__device__ __forceinline__ bool af_writes_partial(const Layout& l) {
    if constexpr (Layout::PACKED) return l.partial();
    else return false;
}

// The f32 partial row of a split decode block (unpacked layouts have none), and where lse goes.
template <class Layout, typename T>
__device__ __forceinline__ float* af_o_partial(const Layout& l, const af_fwd_args<T>& a, const af_fwd_block<T>& blk, long long row) {
    if constexpr (Layout::PACKED) return l.o_part_row(a, blk, row);
    else return nullptr;
}
template <class Layout, typename T>
__device__ __forceinline__ float* af_lse_out(const Layout& l, const af_fwd_args<T>& a) {
    if constexpr (Layout::PACKED) return l.partial() ? l.lse_part : a.lse;
    else return a.lse;
}

// A walk restricted to the keys [lo, hi) of a split (lo a multiple of BN, hi one or seq_k).
// Analytic walks are clipped at both ends; other walks skip the tiles outside.
template <int BN, class Classify>
__device__ __forceinline__ af_analytic_walk<BN, Classify> af_clip_walk(af_analytic_walk<BN, Classify> w, long long lo, long long hi) {
    w.first = max(w.first, lo);
    w.kv_hi = min(w.kv_hi, hi);
    return w;
}
template <class Walk>
struct af_range_walk {
    Walk inner;
    long long first, lo, hi;
    __device__ __forceinline__ bool next(long long& cur, long long& n0, int& kind) const {
        while (inner.next(cur, n0, kind))
            if (n0 >= lo && n0 < hi) return true;
        return false;
    }
};
template <class Walk>
__device__ __forceinline__ af_range_walk<Walk> af_clip_walk(Walk w, long long lo, long long hi) {
    return {w, w.first, lo, hi};
}

// The schedule of a split decode: the inner schedule's tiles within the block's key split,
// chunk = ceil(ceil(Sk_b / num_splits) / BN) BN keys per split (the last ones shorter or empty).
// The inner schedule sees the block's real query rows: seq_q = Sq_b, positions [p_lo, p_hi].
template <class Inner>
struct af_split_schedule {
    Inner inner;
    template <int BN, typename T>
    __device__ __forceinline__ auto tiles(const af_fwd_block<T>& blk, int seq_k) const {
        af_fwd_block<T> real = blk;
        real.seq_q = blk.rows.seq_q;
        const long long per = (seq_k + (long long)blk.num_splits - 1) / blk.num_splits;
        const long long chunk = (per + BN - 1) / BN * BN;
        const long long lo = blk.split * chunk, hi = min(lo + chunk, (long long)seq_k);
        return af_clip_walk(inner.template tiles<BN>(real, seq_k), lo, hi);
    }
};
template <class Inner>
__device__ __forceinline__ af_split_schedule<Inner> af_split(Inner inner) {
    return {inner};
}

// v rounded to the element type and back (identity for f32): LM-Infinite's rotated q and k
// are rounded to the input dtype before the dot product, as the tensor-core loop stores them.
__device__ __forceinline__ float af_round_as(const float*, float v) { return v; }
__device__ __forceinline__ float af_round_as(const __half*, float v) { return af_to_float(__float2half_rn(v)); }
__device__ __forceinline__ float af_round_as(const __nv_bfloat16*, float v) { return af_to_float(__float2bfloat16_rn(v)); }

// ---- shared per-tile steps ----
// A word with one bit per element of this thread's share of a score tile (COUNT <= 64).
template <bool WIDE> struct af_bits_word { using type = unsigned; };
template <> struct af_bits_word<true> { using type = unsigned long long; };
template <int COUNT> using af_bits_t = typename af_bits_word<(COUNT > 32)>::type;

// Work counters of a visited tile (thread 0).
template <int BN, class Mask, typename T>
__device__ __forceinline__ void af_count_tile(int tid, int kind, const af_fwd_block<T>& blk, long long n0, int seq_k) {
    if (tid == 0) {
        if (kind == AF_TILE_FULL) AF_COUNT(AF_CTR_TILE_FULL, 1);
        else AF_COUNT(AF_CTR_TILE_PARTIAL, 1);
        if (Mask::active && kind == AF_TILE_PARTIAL) AF_COUNT(AF_CTR_MASK_EVAL, blk.rows_valid * (min(n0 + BN, (long long)seq_k) - n0));
    }
}

// Whether a visited tile needs per-element work: a partial tile of an element mask, an edge
// tile (rows past seq_q, keys past seq_k) or a tile needing several scoring branches. The
// others are interior: every element allowed, one branch.
template <int BM, int BN, class Mask, class Scoring, typename T>
__device__ __forceinline__ bool af_tile_is_edge(int kind, int br, const af_fwd_block<T>& blk, long long n0, int seq_k) {
    return (Mask::active && kind == AF_TILE_PARTIAL) || blk.rows_valid < BM || n0 + BN > seq_k ||
           (Scoring::BRANCHES > 1 && br == 3);
}

// Bit i of okb: element i of this thread's share of the tile is allowed (in range and, on
// partial tiles, by the element mask); bit i of nearb: it takes scoring branch 0. They are
// evaluated on partial tiles, edge tiles (rows past seq_q, keys past seq_k) and tiles that need
// several scoring branches; interior full tiles skip it. A thread's share is NR rows x NC key
// columns: row(r) and col(c) give their places in the tile, bit(r, c) the element's bit. The
// loop over columns is *rolled* (the mask code is emitted NR times, not once per element: a
// mask with loads and divisions does not multiply the kernel's size) and the rows are unrolled
// inside it, so what a mask reads per key (a document id) is loaded once per column and what
// it reads per query row is loop-invariant: a document mask loads NC + NR ids per tile, not
// 2 NR NC (measured on an H200: per-element loads made the document kernel execute 1.78x
// full attention's instructions per visited tile, docs/gpu-results/2026-12-04-NVIDIA-H200.md).
template <int BM, int BN, int NR, int NC, class Mask, class Scoring, typename T, class Row, class Col, class Bit>
__device__ __forceinline__ void af_element_bits(af_bits_t<NR * NC>& okb, af_bits_t<NR * NC>& nearb, const Mask& mask,
                                                const Scoring& sc, int kind, int br, const af_fwd_block<T>& blk,
                                                long long n0, int seq_k, Row row, Col col, Bit bit) {
    using W = af_bits_t<NR * NC>;
    okb = ~W(0);
    nearb = (br & 1) ? ~W(0) : W(0);
    if (af_tile_is_edge<BM, BN, Mask, Scoring>(kind, br, blk, n0, seq_k)) {
        okb = W(0);
        nearb = W(0);
        // rows and key columns of the tile that are in range
        const int rows_in = (int)blk.rows_valid, cols_in = (int)min((long long)BN, (long long)seq_k - n0);
        const bool partial = Mask::active && kind == AF_TILE_PARTIAL;
#pragma unroll 1
        for (int c = 0; c < NC; ++c) {
            const int tc = col(c);
            const long long kv_pos = n0 + tc;
            // the mask is evaluated unconditionally, at positions clamped into the tile's range
            // (its result is dropped outside it): no branch around its loads, so they can be
            // shared by the rows (per key) and hoisted out of this loop (per row)
            const long long kv_eval = n0 + min(tc, cols_in - 1);
#pragma unroll
            for (int r = 0; r < NR; ++r) {
                const int tr = row(r);
                const long long q_pos = blk.m0 + tr + blk.shift;
                bool ok = tr < rows_in && tc < cols_in;
                if (partial) ok = mask(blk.m0 + min(tr, rows_in - 1) + blk.shift, kv_eval) & ok;
                const int i = bit(r, c);
                okb |= (W)ok << i;
                nearb |= (W)sc.near(q_pos, kv_pos) << i;
            }
        }
    }
}

// ---- split-KV merge (the second kernel of a split decode) ----
// Merges the f32 partials of af_decode_layout in split order, so the result does not depend
// on the schedule: m = max_s lse_s, w_s = e^{lse_s - m}, o = sum_s w_s o_s / sum_s w_s, lse =
// m + ln(sum_s w_s) (variants.md section 9's formula over N parts, as in afd_lse_merge; empty
// parts, lse = -inf, add nothing; all empty: o = 0, lse = -inf). One warp per (token t, head h)
// row of o [Tq, Hq, D] and lse [Hq, Tq]; o_part [num_splits, Tq, Hq, D], lse_part
// [num_splits, Hq, Tq]. Grid: ceil(Tq Hq / warps) blocks of 32 warps threads.
template <int D, typename T>
__device__ __forceinline__ void af_split_merge(const float* o_part, const float* lse_part, T* o, float* lse, int num_splits,
                                               int tokens, int heads) {
    const int lane = threadIdx.x & 31;
    const long long row = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);  // t Hq + h
    if (row >= (long long)tokens * heads) return;
    const long long t = row / heads, h = row % heads;
    const long long lrow = h * tokens + t, lstride = (long long)heads * tokens, ostride = lstride * D;
    float m = -INFINITY;
    for (int s = 0; s < num_splits; ++s) m = fmaxf(m, lse_part[s * lstride + lrow]);
    float acc[D / 32];
#pragma unroll
    for (int c = 0; c < D / 32; ++c) acc[c] = 0.f;
    float z = 0.f;
    if (m != -INFINITY) {
        for (int s = 0; s < num_splits; ++s) {
            const float w = expf(lse_part[s * lstride + lrow] - m);
            z += w;
#pragma unroll
            for (int c = 0; c < D / 32; ++c) acc[c] += w * o_part[s * ostride + row * D + lane + 32 * c];
        }
    }
    const float inv = z > 0.f ? 1.f / z : 0.f;
#pragma unroll
    for (int c = 0; c < D / 32; ++c) af_store(o + row * D + lane + 32 * c, acc[c] * inv);
    if (lane == 0) lse[lrow] = m == -INFINITY ? -INFINITY : m + logf(z);
}

// ---- statistics policy (variants.md section 14, docs/statistics.md) ----
// The main loops call stats.sweep<Tile>(a, blk, layout, schedule, hooks, sc) after their
// epilogue (a decode spec: af_stats_sweep_only, a kernel of its own after the split merge).
// key_mass needs each row's final lse, which a one-pass online softmax only knows at the end,
// so the statistics are a second sweep over the same key tiles once lse is written.
//   af_no_stats:       nothing (the default: a kernel without statistics is unchanged)
//   af_key_mass_stats: P = exp(s - lse) summed over the block's rows per key into
//                      partial[b, h, blockIdx.x, :] (every key of the row written, 0 where the
//                      block visits no tile); af_stats_reduce (af_stats.cuh) then sums the query
//                      blocks in a fixed order (deterministic, no float atomics).
struct af_no_stats {
    template <class Tile, typename T, class Layout, class Schedule, class Hooks, class Scoring>
    __device__ __forceinline__ void sweep(const af_fwd_args<T>&, const af_fwd_block<T>&, const Layout&, const Schedule&,
                                          const Hooks&, const Scoring&) const {}
};

// The statistics sweep's staging, per scoring policy: Q of the block and K of tile n0 into
// d-major tiles of T (Q [D][BM], K [D][BN]), the element values the main loop multiplies.
// Q rows past seq_q copy the last row and keys past seq_k the last key (their weight is
// dropped). LM-Infinite stages both branches (near, then far one tile further: the query
// rotated at its position / at Deff, the key rotated / raw), rounded to T as the main loops
// round them (af_lminf_scoring::rotate_q / rotate_k).
template <int BM, int D, int NT, typename T, class S, class Layout>
__device__ __forceinline__ void af_stats_stage_q(const af_dot_scoring&, const S& sQ, const af_fwd_args<T>& a,
                                                 const af_fwd_block<T>& blk, const Layout& layout, int tid) {
    for (int idx = tid; idx < BM * D; idx += NT) {
        const int r = idx / D, d = idx % D;
        sQ[d * BM + r] = blk.qb[af_q_off(layout, a, blk, blk.m0 + min((long long)r, blk.rows_valid - 1)) + d];
    }
}
template <int BM, int D, int NT, typename T, class S, class Layout>
__device__ __forceinline__ void af_stats_stage_q(const af_lminf_scoring& sc, const S& sQ, const af_fwd_args<T>& a,
                                                 const af_fwd_block<T>& blk, const Layout& layout, int tid) {
    const T* tag = nullptr;
#pragma unroll 1
    for (int idx = tid; idx < BM * (D / 2); idx += NT) {
        const int r = idx / (D / 2), m = idx % (D / 2);
        const long long row = blk.m0 + min((long long)r, blk.rows_valid - 1);
        const long long off = af_q_off(layout, a, blk, row);
        float x0 = af_to_float(blk.qb[off + m]), x1 = af_to_float(blk.qb[off + m + D / 2]);
        float y0, y1;
        sc.rotate_q(x0, x1, y0, y1, af_q_pos(layout, blk, row), m, D);
        sQ[m * BM + r] = static_cast<T>(af_round_as(tag, x0));
        sQ[(m + D / 2) * BM + r] = static_cast<T>(af_round_as(tag, x1));
        sQ[D * BM + m * BM + r] = static_cast<T>(af_round_as(tag, y0));
        sQ[D * BM + (m + D / 2) * BM + r] = static_cast<T>(af_round_as(tag, y1));
    }
}
template <int BN, int D, int NT, typename T, class S, class Layout>
__device__ __forceinline__ void af_stats_stage_k(const af_dot_scoring&, const S& sK, const af_fwd_args<T>& a,
                                                 const af_fwd_block<T>& blk, const Layout& layout, long long n0, int tid) {
    for (int idx = tid; idx < BN * D; idx += NT) {
        const int c = idx / D, d = idx % D;
        const long long kv = min(n0 + c, (long long)blk.seq_k - 1);
        sK[d * BN + c] = blk.kb[layout.kv_row(blk, kv) * a.k_stride_s + d];
    }
}
template <int BN, int D, int NT, typename T, class S, class Layout>
__device__ __forceinline__ void af_stats_stage_k(const af_lminf_scoring& sc, const S& sK, const af_fwd_args<T>& a,
                                                 const af_fwd_block<T>& blk, const Layout& layout, long long n0, int tid) {
    const T* tag = nullptr;
#pragma unroll 1
    for (int idx = tid; idx < BN * (D / 2); idx += NT) {
        const int c = idx / (D / 2), m = idx % (D / 2);
        const long long kv = min(n0 + c, (long long)blk.seq_k - 1), row = layout.kv_row(blk, kv);
        const T k0 = blk.kb[row * a.k_stride_s + m], k1 = blk.kb[row * a.k_stride_s + m + D / 2];
        sK[D * BN + m * BN + c] = k0;
        sK[D * BN + (m + D / 2) * BN + c] = k1;
        float x0 = af_to_float(k0), x1 = af_to_float(k1);
        sc.rotate_k(x0, x1, kv, m, D);
        sK[m * BN + c] = static_cast<T>(af_round_as(tag, x0));
        sK[(m + D / 2) * BN + c] = static_cast<T>(af_round_as(tag, x1));
    }
}

// s[b][i][c] = q(rg RPT + i) . k(cg CB + c) of scoring branch b in f32, from the staged tiles;
// 0 when the row group has no row in range (`live` false: a decode block holds a few rows of
// its M tile, so most row groups, whole warps at block_n 128, skip the dot product).
template <int BM, int BN, int D, int NB, int RPT, int CB, typename T, class SQ, class SK>
__device__ __forceinline__ void af_stats_scores(float (&s)[NB][RPT][CB], const SQ& sQ, const SK& sK, int rg, int cg,
                                                bool live) {
#pragma unroll
    for (int b = 0; b < NB; ++b)
#pragma unroll
        for (int i = 0; i < RPT; ++i)
#pragma unroll
            for (int c = 0; c < CB; ++c) s[b][i][c] = 0.f;
    if (!live) return;
#pragma unroll 4
    for (int d = 0; d < D; ++d) {
#pragma unroll
        for (int b = 0; b < NB; ++b) {
            float qq[RPT], kk[CB];
#pragma unroll
            for (int i = 0; i < RPT; ++i) qq[i] = af_to_float(static_cast<T>(sQ[b * D * BM + d * BM + rg * RPT + i]));
#pragma unroll
            for (int c = 0; c < CB; ++c) kk[c] = af_to_float(static_cast<T>(sK[b * D * BN + d * BN + cg * CB + c]));
#pragma unroll
            for (int i = 0; i < RPT; ++i)
#pragma unroll
                for (int c = 0; c < CB; ++c) s[b][i][c] += qq[i] * kk[c];
        }
    }
}

struct af_key_mass_stats {
    float* partial;             // [B, Hq, gridDim.x, layout.stats_keys(a)]
    static constexpr int CB = 4;  // key columns per thread (register block CB x rows per thread)
    // The scores are recomputed in f32 from q and k staged in shared memory (one code path for
    // every main loop; the main loop's fragments are gone): the same masked, modified, scaled
    // score the main loop used, up to rounding. Thread (row group rg, column group cg) holds
    // an RPT x CB block of scores per scoring branch (rows rg RPT.., keys cg CB..); the RGN row
    // groups' column sums are added in a fixed order through shared memory, once per query
    // head of the block's rows (one, except a packed decode block: af_row_heads). Shared
    // memory (the main loop's, free after the epilogue): Q [NB][D][BM] and K [NB][D][BN] as
    // T, then RGN x BN floats; the tile check keeps it within the main loop's
    // (attnforge_codegen::tile, stats_sweep_smem_bytes).
    template <class Tile, typename T, class Layout, class Schedule, class Hooks, class Scoring>
    __device__ void sweep(const af_fwd_args<T>& a, const af_fwd_block<T>& blk, const Layout& layout, const Schedule& schedule,
                          const Hooks& hooks, const Scoring& sc) const {
        constexpr int BM = Tile::BM, BN = Tile::BN, D = Tile::D, NT = Tile::NT, NB = Scoring::BRANCHES;
        constexpr int CG = BN / CB, RGN = NT / CG, RPT = BM / RGN;
        static_assert(NT % CG == 0 && BM % RGN == 0 && RPT >= 1, "the tile splits into CB-column blocks");
        AF_DYNAMIC_SHARED(T, af_stats_smem);
        AF_SHARED_VIEW(T, sQ, af_stats_smem, 0, NB * D * BM);
        AF_SHARED_VIEW(T, sK, af_stats_smem, NB * D * BM, NB * D * BN);
        AF_SHARED_VIEW(float, red, af_stats_smem, NB * D * (BM + BN), RGN * BN);
        const int tid = threadIdx.x, cg = tid % CG, rg = tid / CG;
        const long long row_keys = layout.stats_keys(a);  // >= blk.seq_k (serving layouts: padded)
        int h_first;
        const int heads = af_row_heads(layout, blk, h_first);
        // the partial row of the block's g-th head
        const auto prow = [&](int g) {
            return partial + (((long long)blk.b * a.heads_q + h_first + g) * gridDim.x + blockIdx.x) * row_keys;
        };
        const auto rsc = af_row_scoring(layout, sc, blk);  // branch choice at each row's position
        __syncthreads();  // every row's lse is written; the main loop's shared memory is free
        for (int g = 0; g < heads; ++g)
            for (long long j = tid; j < row_keys; j += NT) prow(g)[j] = 0.f;
        af_stats_stage_q<BM, D, NT>(sc, sQ, a, blk, layout, tid);
        float lse[RPT];  // -inf: an empty row or a row past seq_q, no weight
        int head[RPT];   // the row's head among the block's
#pragma unroll
        for (int i = 0; i < RPT; ++i) {
            const long long r = rg * RPT + i;
            lse[i] = r < blk.rows_valid ? a.lse[layout.lse_at(a, blk, blk.m0 + r)] : -INFINITY;
            head[i] = r < blk.rows_valid ? af_row_head(layout, blk, blk.m0 + r) : 0;
        }
        const auto tiles = schedule.template tiles<BN>(blk, blk.seq_k);
        long long cur = tiles.first, n0;
        int kind;
        while (tiles.next(cur, n0, kind)) {
            const bool partial_tile = decltype(hooks.mask)::active && kind == AF_TILE_PARTIAL;
            __syncthreads();  // the previous tile's K and column sums are consumed
            af_stats_stage_k<BN, D, NT>(sc, sK, a, blk, layout, n0, tid);
            __syncthreads();
            float s[NB][RPT][CB];
            af_stats_scores<BM, BN, D, NB, RPT, CB, T>(s, sQ, sK, rg, cg, rg * RPT < blk.rows_valid);
            for (int g = 0; g < heads; ++g) {
                if (g > 0) __syncthreads();  // the previous head's column sums are consumed
                float col[CB];
#pragma unroll
                for (int c = 0; c < CB; ++c) col[c] = 0.f;
#pragma unroll
                for (int i = 0; i < RPT; ++i) {
                    const long long q_pos = blk.m0 + rg * RPT + i + blk.shift;
#pragma unroll
                    for (int c = 0; c < CB; ++c) {
                        const long long kv = n0 + cg * CB + c;
                        // other heads' rows, empty rows, rows past seq_q, keys past seq_k,
                        // masked elements: no weight
                        if (head[i] != g || lse[i] == -INFINITY || kv >= blk.seq_k || (partial_tile && !hooks.mask(q_pos, kv)))
                            continue;
                        // the element's scoring branch, selected as the main loops select it
                        const float x = NB > 1 && !rsc.near(q_pos, kv) ? s[NB - 1][i][c] : s[0][i][c];
                        col[c] += exp2f((hooks.score(x * a.scale, q_pos, kv) - lse[i]) * AF_LOG2E);
                    }
                }
#pragma unroll
                for (int c = 0; c < CB; ++c) red[rg * BN + cg * CB + c] = col[c];
                __syncthreads();
                for (int c = tid; c < BN; c += NT) {
                    float t = 0.f;
                    for (int r = 0; r < RGN; ++r) t += red[r * BN + c];
                    if (n0 + c < blk.seq_k) prow(g)[n0 + c] = t;
                }
            }
        }
    }
};

// The statistics sweep as a kernel of its own: a decode block's lse is final only after the
// split-KV merge (a second launch), so a decode spec's sweep is a third launch over the merged
// lse, on the decode grid without splits (the layout built with num_splits = 1). It sets up
// the block as the main loops do and calls the same policy.
template <class Tile, typename T, class Schedule, class BlockHooks, class Scoring, class Layout, class Stats>
__device__ __forceinline__ void af_stats_sweep_only(const af_fwd_args<T>& a, const Schedule& schedule,
                                                    const BlockHooks& block_hooks, const Scoring& scoring,
                                                    const Layout& layout, const Stats& stats) {
    af_fwd_block<T> blk;
    if (!layout.template block<Tile::BM>(a, blk)) return;  // past its sequence's rows (whole block)
    const Scoring sc = scoring.for_seq(blk.seq_k);
    const auto hooks = af_layout_hooks(layout, block_hooks, blk);
    stats.template sweep<Tile>(a, blk, layout, schedule, hooks, sc);
}
