//! The mutant catalog of `cargo xtask mutants`: realistic one-line generator bugs, each
//! applied by an exact text pattern (never a line number) to the CUDA templates or to the
//! Rust code that prints the kernels. A pattern that no longer matches the sources the way
//! the entry says is reported STALE and fails the run; the xtask test
//! `catalog_patterns_match_current_sources` fails in CI the same way, so the catalog is kept
//! current as the templates change: update the pattern (or drop the entry) in the same
//! commit that moves the code.
//!
//! Patterns in Rust files are matched against the Rust source, so text inside `format!`-style
//! strings carries its `{{`/`}}` escapes.

/// What part of the generator a mutant breaks (a report groups by it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Category {
    /// Element mask predicates (`af_mask_*`, the mask hook of the element loop).
    MaskPredicate,
    /// Closed-form tile classifiers and the analytic key-tile range.
    TileClassifier,
    /// Online softmax (running max, rescales, reductions).
    Softmax,
    /// Epilogue: O = acc / l, the stores.
    Epilogue,
    /// Grouped-query attention head maps.
    Gqa,
    /// Score modifications (softcap, ALiBi).
    ScoreMod,
    /// LM-Infinite branches, clamp and RoPE positions.
    LmInfiniteScoring,
    /// cp.async pipeline stages and the tile cursor.
    Pipeline,
    /// Barriers (`__syncthreads`, `__syncwarp`).
    Barrier,
    /// Global-memory bounds guards of loads and stores.
    Bounds,
    /// Dynamic families: selection (landmark, HAX, top-k ranking and sets).
    Selection,
    /// Dynamic families: pooling and grouped softmax (CCA, landmark blocks).
    Pooling,
    /// Runtime block lists (host builder and kernel cursor).
    BlockLists,
    /// lse and empty rows.
    LseEmptyRows,
}

impl Category {
    /// Every category, in report order.
    pub const ALL: [Category; 14] = [
        Category::MaskPredicate,
        Category::TileClassifier,
        Category::Softmax,
        Category::Epilogue,
        Category::Gqa,
        Category::ScoreMod,
        Category::LmInfiniteScoring,
        Category::Pipeline,
        Category::Barrier,
        Category::Bounds,
        Category::Selection,
        Category::Pooling,
        Category::BlockLists,
        Category::LseEmptyRows,
    ];

    /// Name used by `--category` and the report.
    pub fn name(self) -> &'static str {
        match self {
            Category::MaskPredicate => "mask",
            Category::TileClassifier => "classifier",
            Category::Softmax => "softmax",
            Category::Epilogue => "epilogue",
            Category::Gqa => "gqa",
            Category::ScoreMod => "score-mod",
            Category::LmInfiniteScoring => "lm-infinite",
            Category::Pipeline => "pipeline",
            Category::Barrier => "barrier",
            Category::Bounds => "bounds",
            Category::Selection => "selection",
            Category::Pooling => "pooling",
            Category::BlockLists => "block-lists",
            Category::LseEmptyRows => "lse-empty-rows",
        }
    }

    /// The category named `s`.
    pub fn parse(s: &str) -> Option<Category> {
        Category::ALL.into_iter().find(|c| c.name() == s)
    }
}

/// Which match of the pattern is mutated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Occurrence {
    /// The pattern must occur exactly once.
    Unique,
    /// The pattern must occur exactly `of` times; match `index` (0-based) is mutated.
    Nth {
        /// Which match.
        index: usize,
        /// How many matches the file must have.
        of: usize,
    },
}

/// One mutant.
#[derive(Clone, Copy, Debug)]
pub struct Mutant {
    /// Stable identifier (`--only`).
    pub id: &'static str,
    /// What it breaks.
    pub category: Category,
    /// File, relative to the workspace root.
    pub file: &'static str,
    /// Exact text replaced.
    pub pattern: &'static str,
    /// Which match is replaced.
    pub occurrence: Occurrence,
    /// Replacement text.
    pub replacement: &'static str,
    /// One line: the bug it simulates.
    pub description: &'static str,
    /// Why the mutant cannot change any output or counter (known-equivalent mutants only).
    /// It is reported "equivalent" only if its outputs and visited-tile counters are indeed
    /// identical to the original's on the check problems.
    pub equivalent: Option<&'static str>,
    /// Named in the Why section of issue 16.
    pub named_in_issue: bool,
}

const fn m(
    id: &'static str,
    category: Category,
    file: &'static str,
    pattern: &'static str,
    replacement: &'static str,
    description: &'static str,
) -> Mutant {
    Mutant {
        id,
        category,
        file,
        pattern,
        occurrence: Occurrence::Unique,
        replacement,
        description,
        equivalent: None,
        named_in_issue: false,
    }
}

impl Mutant {
    const fn nth(mut self, index: usize, of: usize) -> Self {
        self.occurrence = Occurrence::Nth { index, of };
        self
    }
    const fn equivalent(mut self, reason: &'static str) -> Self {
        self.equivalent = Some(reason);
        self
    }
    const fn named(mut self) -> Self {
        self.named_in_issue = true;
        self
    }
}

const ATTN: &str = "codegen/cuda/af_attn.cuh";
const FWD: &str = "codegen/cuda/af_fwd.cuh";
const FWD_TC: &str = "codegen/cuda/af_fwd_tc.cuh";
const FWD_FMA: &str = "codegen/cuda/af_fwd_fma.cuh";
const IR: &str = "codegen/src/ir.rs";
const MASK_TABLE: &str = "codegen/src/masks.rs";
const SCORE_TABLE: &str = "codegen/src/scores.rs";
const BLOCKS: &str = "codegen/src/blocks.rs";
const DYN: &str = "codegen/cuda/af_dynamic.cuh";
const CCA: &str = "codegen/cuda/af_cca.cuh";
const LANDMARK: &str = "codegen/cuda/af_landmark.cuh";
const HAX: &str = "codegen/cuda/af_hax.cuh";
const TOPK: &str = "codegen/cuda/af_topk.cuh";
const LONGHEADS: &str = "codegen/cuda/af_longheads.cuh";

use Category::*;

/// The catalog.
pub const CATALOG: &[Mutant] = &[
    // ---- element mask predicates ----
    m("mask-causal-strict", MaskPredicate, ATTN,
      "bool af_mask_causal(long long q, long long kv) { return kv <= q; }",
      "bool af_mask_causal(long long q, long long kv) { return kv < q; }",
      "causal mask excludes the diagonal (kv <= q -> kv < q)"),
    m("mask-local-right-strict", MaskPredicate, ATTN,
      "(right < 0 || kv <= q + right)",
      "(right < 0 || kv < q + right)",
      "local mask: right window edge off by one"),
    m("mask-local-left-strict", MaskPredicate, ATTN,
      "(left < 0 || kv >= q - left)",
      "(left < 0 || kv > q - left)",
      "local mask: left window edge off by one"),
    m("mask-prefix-inclusive", MaskPredicate, ATTN,
      "return kv <= q || kv < prefix;",
      "return kv <= q || kv <= prefix;",
      "prefix-LM: the prefix includes key `prefix`"),
    m("mask-document-no-row-guard", MaskPredicate, ATTN,
      "return (q >= 0) & (af_doc_id(doc, q) == doc[kv]);",
      "return af_doc_id(doc, q) == doc[kv];",
      "document mask: no guard for query positions before the keys (a query before the first key would see document 0)"),
    m("mask-share-question-any-doc", MaskPredicate, ATTN,
      "(((dq != 0) & (dk == 0)) | ((dq == dk) & (kv <= q)))",
      "((dk == 0) | ((dq == dk) & (kv <= q)))",
      "share-question: the question prefix also sees itself non-causally"),
    m("mask-global-local-global-edge", MaskPredicate, ATTN,
      "|| q < g || kv < g;",
      "|| q < g || kv <= g;",
      "global-local: one key too many is global"),
    m("mask-block-causal-doc-strict", MaskPredicate, ATTN,
      "(int)kv / bc <= (int)q / bc",
      "(int)kv / bc < (int)q / bc",
      "block-causal document: the own block is excluded"),
    m("mask-lambda-window-inclusive", MaskPredicate, ATTN,
      "return kv <= q && (kv < g || q - kv < l);",
      "return kv <= q && (kv < g || q - kv <= l);",
      "Lambda mask: window one key too wide"),
    m("mask-element-ignores-shift", MaskPredicate, FWD,
      "ok = mask(blk.m0 + min(tr, rows_in - 1) + blk.shift, kv_eval) & ok;",
      "ok = mask(blk.m0 + min(tr, rows_in - 1), kv_eval) & ok;",
      "element mask uses the query row instead of its position (ignores the Sk - Sq shift)")
        .named(),
    m("mask-local-swapped-windows", MaskPredicate, IR,
      "chain(params.iter().copied())",
      "chain(params.iter().rev().copied())",
      "mask hooks pass the table parameters reversed (local: left and right windows swapped)"),
    m("mask-global-local-swapped-positions", MaskPredicate, IR,
      "&[\"q_pos\", \"kv_pos\"]",
      "&[\"kv_pos\", \"q_pos\"]",
      "element mask hooks (without doc ids) with query and key positions swapped"),
    m("mask-edge-bits-keys-in-range", MaskPredicate, FWD,
      "blk.rows_valid < BM || n0 + BN > seq_k ||",
      "blk.rows_valid < BM ||",
      "allowed-element bits not evaluated on the last key tile (keys past seq_k allowed)"),
    m("mask-edge-bits-one-more-tile", MaskPredicate, FWD,
      "blk.rows_valid < BM || n0 + BN > seq_k ||",
      "blk.rows_valid < BM || n0 + BN >= seq_k ||",
      "allowed-element bits also evaluated on a full tile that ends exactly at seq_k")
        .equivalent("on an interior full tile every element is in range, so the rolled loop sets every bit; the mask itself only runs on partial tiles"),
    // ---- tile classifiers and analytic key ranges ----
    m("cls-chunked-full-last-row", TileClassifier, ATTN,
      "(c1 <= p_lo && (int)p_hi / chunk == (int)c0 / chunk)",
      "(c1 <= p_hi && (int)p_hi / chunk == (int)c0 / chunk)",
      "chunked_causal classifier calls a tile crossing the diagonal full"),
    m("mask-chunked-boundary", MaskPredicate, ATTN,
      "q - kv <= (int)q % chunk",
      "q - kv < (int)q % chunk",
      "chunked_causal predicate drops the chunk's first key"),
    m("keys-dilated-lo-remainder", TileClassifier, ATTN,
      "(r == 0 || p_hi - p_lo >= dilation - r) ? 0LL : (long long)r",
      "(r == 0 || p_hi - p_lo >= dilation - r) ? 0LL : (long long)r + 1",
      "dilated_causal key range starts one key late below the reach"),
    m("cls-dilated-skip-multiple", TileClassifier, ATTN,
      "(long long)((int)far / dilation) * dilation < near",
      "(long long)((int)far / dilation) * dilation <= near",
      "dilated_causal classifier skips a tile whose only allowed distance is its nearest"),
    m("cls-local-skip-right", TileClassifier, ATTN,
      "c0 > p_hi + right",
      "c0 >= p_hi + right",
      "local classifier skips the partial tile that starts at the right window edge")
        .named(),
    m("cls-local-skip-left", TileClassifier, ATTN,
      "c1 < p_lo - left",
      "c1 <= p_lo - left",
      "local classifier skips the partial tile that ends at the left window edge"),
    m("cls-local-full-left", TileClassifier, ATTN,
      "(left < 0 || c0 >= p_hi - left)",
      "(left < 0 || c0 >= p_lo - left)",
      "local classifier: full test uses the first query row for the left edge"),
    m("cls-causal-full-uses-p-hi", TileClassifier, ATTN,
      "return c1 <= p_lo ? AF_TILE_FULL : AF_TILE_PARTIAL;",
      "return c1 <= p_hi ? AF_TILE_FULL : AF_TILE_PARTIAL;",
      "causal classifier calls a diagonal tile full"),
    m("cls-causal-skip-diagonal", TileClassifier, ATTN,
      "if (c0 > p_hi) return AF_TILE_SKIP;",
      "if (c0 >= p_hi) return AF_TILE_SKIP;",
      "causal classifier skips the tile that starts at the last query's position"),
    m("cls-prefix-skip-off-by-one", TileClassifier, ATTN,
      "if (c0 > p_hi && c0 >= prefix) return AF_TILE_SKIP;",
      "if (c0 > p_hi && c0 >= prefix - 1) return AF_TILE_SKIP;",
      "prefix-LM classifier skips the tile that starts at the last prefix key"),
    m("cls-global-local-gap", TileClassifier, ATTN,
      "if (p_lo >= g && c0 >= g && gap > w) return AF_TILE_SKIP;",
      "if (p_lo >= g && c0 >= g && gap >= w) return AF_TILE_SKIP;",
      "global-local classifier skips a tile exactly w away"),
    m("cls-lambda-window-edge", TileClassifier, ATTN,
      "const bool any_window = l > 0 && p_hi - c0 >= 0 && p_lo - c1 <= (long long)l - 1;",
      "const bool any_window = l > 0 && p_hi - c0 >= 0 && p_lo - c1 < (long long)l - 1;",
      "Lambda classifier skips the partial tile at the window edge (<= L - 1 -> < L - 1)")
        .named(),
    m("cls-lambda-global-diagonal", TileClassifier, ATTN,
      "const bool any_global = c0 < g && c0 <= p_hi;",
      "const bool any_global = c0 < g && c0 < p_hi;",
      "Lambda classifier: global keys at the last query's position not seen"),
    m("cls-lambda-full-window", TileClassifier, ATTN,
      "return (c1 <= p_lo && (rc > c1 || p_hi - rc < l)) ? AF_TILE_FULL : AF_TILE_PARTIAL;",
      "return (c1 <= p_lo && (rc > c1 || p_hi - rc <= l)) ? AF_TILE_FULL : AF_TILE_PARTIAL;",
      "Lambda classifier calls a tile full when one element is just outside the window"),
    m("range-causal-hi", TileClassifier, MASK_TABLE,
      "\"min((long long)seq_k, p_hi + 1)\"",
      "\"min((long long)seq_k, p_hi)\"",
      "causal key range stops one key early (misses a tile starting at p_hi)"),
    m("range-local-lo", TileClassifier, MASK_TABLE,
      "max(0LL, p_lo - window_left)",
      "max(0LL, p_lo - window_left + 1)",
      "local key range starts one key late (misses a tile ending at p_lo - left)"),
    m("range-local-hi", TileClassifier, MASK_TABLE,
      "min((long long)seq_k, p_hi + window_right + 1)",
      "min((long long)seq_k, p_hi + window_right)",
      "local key range stops one key early"),
    m("range-p-hi", TileClassifier, FWD,
      "blk.p_hi = blk.m0 + blk.rows_valid - 1 + blk.shift;",
      "blk.p_hi = blk.m0 + blk.rows_valid + blk.shift;",
      "last query position of the block off by one")
        .nth(0, 2),
    m("cursor-start", TileClassifier, FWD,
      "return {(kv_lo / BN) * BN,",
      "return {(kv_lo / BN + 1) * BN,",
      "the tile cursor starts one tile late")
        .nth(0, 2),
    // ---- score modifications ----
    m("score-softcap-f32-unscaled", ScoreMod, ATTN,
      "return cap * tanhf(s / cap);",
      "return cap * tanhf(s);",
      "f32 softcap computes cap * tanh(s)")
        .named(),
    m("score-softcap-fast-sign", ScoreMod, ATTN,
      "__fdividef(1.f, 1.f + exp2f(s * k))",
      "__fdividef(1.f, 1.f + exp2f(-s * k))",
      "fast softcap (f16/bf16) with the sign of the exponent flipped"),
    m("score-softcap-k", ScoreMod, SCORE_TABLE,
      "2.f * AF_LOG2E / softcap;",
      "AF_LOG2E / softcap;",
      "fast softcap's exp2 scale missing the factor 2"),
    m("score-alibi-no-abs", ScoreMod, ATTN,
      "return s - slope * fabsf((float)(int)(q - kv));",
      "return s - slope * (float)(int)(q - kv);",
      "ALiBi bias without the absolute value (wrong for keys after the query)"),
    m("score-alibi-kv-head", ScoreMod, SCORE_TABLE,
      "const float slope = alibi_slopes[h];",
      "const float slope = alibi_slopes[hkv];",
      "ALiBi slopes indexed by the kv head instead of the query head")
        .named(),
    // ---- LM-Infinite ----
    m("lminf-clamp", LmInfiniteScoring, FWD,
      "d_eff(min((long long)dist_limit_, (long long)seq_k - 1))",
      "d_eff(min((long long)dist_limit_, (long long)seq_k))",
      "LM-Infinite distance clamp Sk - 1 -> Sk")
        .named(),
    m("lminf-near-bit", LmInfiniteScoring, FWD,
      "return q_pos - kv_pos < local_window;",
      "return q_pos - kv_pos <= local_window;",
      "LM-Infinite: an element at distance L takes the near branch"),
    m("lminf-far-branch", LmInfiniteScoring, ATTN,
      "const bool far = c0 < g && p_hi - c0 >= l;",
      "const bool far = c0 < g && p_hi - c0 > l;",
      "LM-Infinite: far branch not computed for a tile whose only far element is at distance L"),
    m("lminf-all-far", LmInfiniteScoring, ATTN,
      "const bool all_far = c1 < g && p_lo - c1 >= l;",
      "const bool all_far = c1 < g && p_lo - c1 >= l - 1;",
      "LM-Infinite classifier calls a mixed near/far tile full"),
    m("lminf-rope-query-row", LmInfiniteScoring, FWD_FMA,
      "sc.rotate_q(x0, x1, y0, y1, af_q_pos(layout, blk, row), m, D);",
      "sc.rotate_q(x0, x1, y0, y1, row, m, D);",
      "LM-Infinite (f32 path): query rotated at its row, not its position"),
    m("lminf-mask-swapped", LmInfiniteScoring, MASK_TABLE,
      "    LAMBDA_PARAMS[0],\n    LAMBDA_PARAMS[1],\n",
      "    LAMBDA_PARAMS[1],\n    LAMBDA_PARAMS[0],\n",
      "LM-Infinite element mask (and classifier) with G and L swapped"),
    // ---- GQA ----
    m("gqa-head-mod", Gqa, FWD,
      "blk.hkv = blk.h / (a.heads_q / a.heads_kv);",
      "blk.hkv = blk.h % a.heads_kv;",
      "GQA head map h / group -> h % Hkv")
        .nth(0, 2)
        .named(),
    m("gqa-lse-kv-head", Gqa, FWD,
      "return ((long long)blk.b * a.heads_q + blk.h) * a.seq_q + row;",
      "return ((long long)blk.b * a.heads_q + blk.hkv) * a.seq_q + row;",
      "the dense layout stores lse at the kv head's row"),
    m("gqa-landmark-attn-mod", Gqa, LANDMARK,
      "const int kh = h / (heads_q / heads_kv);",
      "const int kh = h % heads_kv;",
      "landmark attention: GQA head map h / group -> h % Hkv")
        .nth(1, 2),
    m("gqa-hax-hash-mod", Gqa, HAX,
      "b = blockIdx.y, kh = h / (heads_q / heads_kv), tid",
      "b = blockIdx.y, kh = h % heads_kv, tid",
      "HAX hashing: GQA head map h / group -> h % Hkv"),
    // ---- online softmax ----
    m("softmax-tc-no-max-guard", Softmax, FWD_TC,
      "m_use[r] = m_new == -INFINITY ? 0.f : m_new;",
      "m_use[r] = m_new;",
      "tensor-core path: all-masked guard of the running max removed")
        .named(),
    m("softmax-fma-no-max-guard", Softmax, FWD_FMA,
      "const float m_use = m_new == -INFINITY ? 0.f : m_new;",
      "const float m_use = m_new;",
      "f32 path: all-masked guard of the running max removed")
        .named(),
    m("softmax-tc-l-not-rescaled", Softmax, FWD_TC,
      "l_i[r] *= alpha;",
      "/* l_i not rescaled */",
      "tensor-core path: the row sum is not rescaled when the max grows"),
    m("softmax-fma-l-not-rescaled", Softmax, FWD_FMA,
      "l_i[r] = l_i[r] * alpha + af_warp_sum(rs);",
      "l_i[r] = l_i[r] + af_warp_sum(rs);",
      "f32 path: the row sum is not rescaled when the max grows"),
    m("softmax-tc-interior-scale", Softmax, FWD_TC,
      "f = scale_log2;",
      "f = AF_LOG2E;",
      "tensor-core interior tiles forget the softmax scale folded into the exponent"),
    m("softmax-tc-quad-max", Softmax, FWD_TC,
      "mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));",
      "/* quad max over lanes 0-1 only */",
      "tensor-core path: row max reduced over 2 of the 4 lanes of a quad"),
    m("softmax-fma-no-warp-max", Softmax, FWD_FMA,
      "mx = af_warp_max(mx);",
      "/* lane-local max */",
      "f32 path: row max not reduced over the warp"),
    m("softmax-warp-sum-short", Softmax, ATTN,
      "for (int off = 16; off > 0; off >>= 1) x += __shfl_xor_sync(0xffffffffu, x, off);",
      "for (int off = 16; off > 1; off >>= 1) x += __shfl_xor_sync(0xffffffffu, x, off);",
      "warp sum skips the last butterfly step"),
    m("softmax-dyn-admit-ties", Softmax, DYN,
      "if (s > st.m) {",
      "if (s >= st.m) {",
      "dynamic softmax also rescales when the score equals the running max")
        .equivalent("at s == m the rescale factor is expf(0) = 1 exactly and m is unchanged"),
    m("softmax-dyn-l-not-rescaled", Softmax, DYN,
      "st.l *= c;",
      "/* l not rescaled */",
      "dynamic softmax: the row sum is not rescaled when the max grows"),
    m("softmax-dyn-warp-sum-short", Softmax, DYN,
      "for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(AFD_FULL_MASK, s, o);",
      "for (int o = 16; o > 1; o >>= 1) s += __shfl_xor_sync(AFD_FULL_MASK, s, o);",
      "dynamic dot product: warp sum skips the last butterfly step"),
    // ---- epilogue, lse, empty rows ----
    m("epi-tc-quad-l", Epilogue, FWD_TC,
      "l_i[r] += __shfl_xor_sync(0xffffffffu, l_i[r], 2);",
      "/* l reduced over 2 lanes */",
      "tensor-core epilogue: row sum reduced over 2 of the 4 lanes"),
    m("epi-fma-store-guard", Epilogue, FWD_FMA,
      "af_o_off(layout, a, blk, row) + lane + 32 * t, empty ? 0.f : acc[r][t] * inv",
      "af_o_off(layout, a, blk, row) + lane + 32 * t, acc[r][t] * inv",
      "f32 epilogue stores acc * inv on empty rows too")
        .equivalent("on an empty row inv = 0 and acc = 0 (every p was exp2(-inf) = 0), so acc * inv = 0"),
    m("lse-tc-empty-inv", LseEmptyRows, FWD_TC,
      "const float inv = empty ? 0.f : 1.f / l_i[r];",
      "const float inv = 1.f / l_i[r];",
      "tensor-core epilogue divides by l = 0 on empty rows (0 * inf = NaN)"),
    m("lse-fma-units", LseEmptyRows, FWD_FMA,
      "empty ? -INFINITY : m_i[r] + logf(l_i[r]);",
      "empty ? -INFINITY : m_i[r] * AF_LN2 + logf(l_i[r]);",
      "FMA epilogue: lse converts a max already in score units as if it were in log2 units"),
    m("lse-tc-ln2", LseEmptyRows, FWD_TC,
      "m_i[r] * AF_LN2 + logf(l_i[r])",
      "m_i[r] + logf(l_i[r])",
      "tensor-core epilogue: lse forgets the log2 -> ln conversion of the max"),
    m("lse-dyn-normalise-empty", LseEmptyRows, DYN,
      "const float inv = st.l > 0.f ? 1.f / st.l : 0.f;",
      "const float inv = 1.f / st.l;",
      "dynamic softmax divides by l = 0 on empty rows"),
    m("lse-dyn-empty-guard", LseEmptyRows, DYN,
      "*lse_at = st.l > 0.f ? st.m + logf(st.l) : -INFINITY;",
      "*lse_at = st.m + logf(st.l);",
      "dynamic lse without the empty-row guard")
        .equivalent("an empty row has m = -inf and logf(0) = -inf, whose sum is -inf as required"),
    m("lse-merge-empty-test", LseEmptyRows, TOPK,
      "const bool empty = m == -INFINITY;",
      "const bool empty = la == -INFINITY;",
      "lse merge decides emptiness by the first part only"),
    // ---- pipeline (cp.async stages) and tile cursor ----
    m("pipe-prefetch-stage", Pipeline, FWD_TC,
      "prefetch((vst + STAGES - 1) % STAGES);",
      "prefetch((vst + 1) % STAGES);",
      "prefetch into stage vst + 1 instead of vst + STAGES - 1 (same for 2 stages, wrong for 3)")
        .named(),
    m("pipe-wait-count", Pipeline, FWD_TC,
      "af_cp_async_wait<STAGES - 2>();",
      "af_cp_async_wait<STAGES - 1>();",
      "waits for one group too few (the current tile may not have landed)"),
    m("pipe-read-stage", Pipeline, FWD_TC,
      "kst = vst * BN * D;",
      "kst = ((vst + 1) % STAGES) * BN * D;",
      "reads the next tile's stage"),
    m("pipe-prologue-depth", Pipeline, FWD_TC,
      "for (int st = 0; st < STAGES - 1; ++st) {",
      "for (int st = 0; st < STAGES - 2; ++st) {",
      "prologue prefetches one tile too few"),
    // ---- barriers ----
    m("bar-tc-stage-free", Barrier, FWD_TC,
      "__syncthreads();  // ... and everyone's; the stage of the previous tile is free again",
      "// (barrier removed)",
      "pipelined loop without the barrier after the cp.async wait"),
    m("bar-tc-single-stage-landed", Barrier, FWD_TC,
      "__syncthreads();  // every thread's copies have landed",
      "// (barrier removed)",
      "single-stage loop reads K/V before every thread's copies landed"),
    m("bar-fma-consumed", Barrier, FWD_FMA,
      "__syncthreads();  // previous tile's K, V, P are consumed",
      "// (barrier removed)",
      "f32 loop overwrites K/V/P while other warps still read them"),
    m("bar-fma-loaded", Barrier, FWD_FMA,
      "blk, layout, n0, tid);\n        __syncthreads();",
      "blk, layout, n0, tid);",
      "f32 loop reads K/V before every thread stored them"),
    m("bar-fma-syncwarp-p", Barrier, FWD_FMA,
      "__syncwarp();\n\n        // O += P V: lane owns",
      "\n\n        // O += P V: lane owns",
      "f32 loop reads other lanes' P without __syncwarp"),
    m("bar-landmark-select-syncwarp", Barrier, LANDMARK,
      "    __syncwarp();\n    int* out = sel",
      "    int* out = sel",
      "landmark selection: lanes read lane 0's list without __syncwarp"),
    // ---- global-memory bounds ----
    m("bounds-tc-kv-guard", Bounds, FWD_TC,
      "if (kv < blk.seq_k && vec_kv) {",
      "if (vec_kv) {",
      "K/V cp.async copy without its kv < seq_k guard (reads past the K/V rows)")
        .named(),
    m("bounds-fma-kv-guard", Bounds, FWD_FMA,
      "if (kv < blk.seq_k) {\n            const long long row = layout.kv_row(blk, kv);\n            kx = ",
      "if (true) {\n            const long long row = layout.kv_row(blk, kv);\n            kx = ",
      "f32 K/V copy without its kv < seq_k guard"),
    m("bounds-tc-kv-interior", Bounds, FWD_TC,
      "return Layout::CONTIGUOUS_KV && pl.fast && (unsigned)t0 + Tile::BN <= (unsigned)blk.seq_k;",
      "return Layout::CONTIGUOUS_KV && pl.fast;",
      "the last, partial K/V tile takes the unguarded interior copy path (reads past the K/V rows)"),
    m("bounds-tc-q-guard", Bounds, FWD_TC,
      "if (row < blk.seq_q && vec_q) {",
      "if (vec_q) {",
      "Q cp.async copy without its row < seq_q guard"),
    m("bounds-tc-store-guard", Bounds, FWD_TC,
      "if (row < blk.seq_q) {\n            const bool empty",
      "if (true) {\n            const bool empty",
      "tensor-core epilogue stores rows past seq_q"),
    // ---- block lists ----
    m("lists-kind", BlockLists, FWD,
      "kind = e < n_full ? AF_TILE_FULL : AF_TILE_PARTIAL;",
      "kind = e <= n_full ? AF_TILE_FULL : AF_TILE_PARTIAL;",
      "the first partial block is treated as full"),
    m("lists-past-seq-k", BlockLists, FWD,
      "if (n0 < seq_k) return true;",
      "return true;",
      "sub-tiles past the last key are visited"),
    m("lists-head-kv", BlockLists, FWD,
      "(heads == 1 ? 0 : blk.h)",
      "(heads == 1 ? 0 : blk.hkv)",
      "per-head block lists read at the kv head"),
    m("lists-builder-no-shift", BlockLists, BLOCKS,
      "let shift = seq_k as i64 - seq_q as i64;",
      "let shift = 0i64;",
      "block-list builder ignores the Sk - Sq shift"),
    m("lists-builder-single-element", BlockLists, BLOCKS,
      "} else if n > 0 {",
      "} else if n > 1 {",
      "block-list builder drops blocks with exactly one allowed element"),
    // ---- dynamic families: selection ----
    m("sel-topk-tie-break", Selection, DYN,
      "while (p > 0 && best_s[p - 1] < s) {",
      "while (p > 0 && best_s[p - 1] <= s) {",
      "top-k list: an equal score displaces an earlier entry (ties: higher index wins)"),
    m("sel-topk-full-tie", Selection, DYN,
      "if (n == cap && !(s > best_s[cap - 1])) return n;",
      "if (n == cap && !(s >= best_s[cap - 1])) return n;",
      "full top-k list: an equal score replaces the last entry"),
    m("sel-topk-window-overlap", Selection, TOPK,
      "const long long lo = s_start, hi = pos - s_end;",
      "const long long lo = s_start, hi = pos - s_end + 1;",
      "top-k candidates overlap the recent window by one key"),
    m("sel-topk-recent-window", Selection, TOPK,
      "max(static_cast<long long>(s_start), pos - s_end + 1)",
      "max(static_cast<long long>(s_start), pos - s_end)",
      "top-k recent window one key too wide"),
    m("sel-topk-sink-clamp", Selection, TOPK,
      "min(static_cast<long long>(s_start), pos + 1)",
      "static_cast<long long>(s_start)",
      "top-k sink not clamped to the query position (early rows see future keys)"),
    m("sel-landmark-own-block", Selection, LANDMARK,
      "for (long long blk = 0; blk < c; ++blk) {",
      "for (long long blk = 0; blk <= c; ++blk) {",
      "landmark retrieval also ranks the query's own block"),
    m("sel-hax-thr-tie", Selection, HAX,
      "(sc[j] == thr_s && j <= thr)",
      "(sc[j] == thr_s && j < thr)",
      "HAX: the threshold key itself is gathered twice (key selection and LSH)"),
    m("sel-hax-thr-best", Selection, HAX,
      "ks_thr[base + i] = best_j[n - 1];",
      "ks_thr[base + i] = best_j[0];",
      "HAX key-selection threshold is the best member instead of the worst"),
    m("sel-hax-k-lsh", Selection, HAX,
      "for (int c = 0; c < k_lsh && j >= 0; ++c, j = lsh_prev[base + j]) {",
      "for (int c = 0; c <= k_lsh && j >= 0; ++c, j = lsh_prev[base + j]) {",
      "HAX gathers k_lsh + 1 bucket keys"),
    m("sel-hax-chain-order", Selection, HAX,
      "lsh_prev[base + t] = last[ck];\n            last[ck] = static_cast<int>(t);",
      "last[ck] = static_cast<int>(t);\n            lsh_prev[base + t] = last[ck];",
      "HAX bucket chain links each key to itself (statements swapped)"),
    m("sel-hax-no-centring", Selection, HAX,
      "const float d = afd_f32(x[t * D + c]) - mu;",
      "const float d = afd_f32(x[t * D + c]);",
      "HAX column norm computed without centring"),
    // ---- dynamic families: pooling and grouped softmax ----
    m("pool-cca-first-query", Pooling, CCA,
      "afd_row(b, h, static_cast<long long>(p + 1) * group - 1, heads_q, seq, D)",
      "afd_row(b, h, static_cast<long long>(p) * group, heads_q, seq, D)",
      "CCA pooling weighted by the group's first query instead of its last")
        .named(),
    m("pool-cca-groups", Pooling, CCA,
      "(static_cast<long long>(i) + 1 - window) / group",
      "(static_cast<long long>(i) - window) / group",
      "CCA: one pooled group too few for some rows"),
    m("pool-cca-raw-last", Pooling, CCA,
      "for (long long c = n * group; c <= i; ++c)",
      "for (long long c = n * group; c < i; ++c)",
      "CCA: the query's own token is not attended"),
    m("pool-cca-scale", Pooling, CCA,
      "const float s = pool_scale * afd_dot<D>(qr, krow);",
      "const float s = afd_dot<D>(qr, krow);",
      "CCA pooling weights without the 1/sqrt(D) scale"),
    m("pool-landmark-no-exclusion", Pooling, LANDMARK,
      "if (j % bl == bl - 1) continue;",
      "/* landmarks not excluded */",
      "landmark: the own block's landmark token is attended as a plain key"),
    m("pool-landmark-inner-range", Pooling, LANDMARK,
      "for (long long j = blk * bl; j < blk * bl + bl - 1; ++j)",
      "for (long long j = blk * bl; j < blk * bl + bl; ++j)",
      "landmark: the block average includes its landmark"),
    m("pool-dyn-acc-not-rescaled", Pooling, DYN,
      "for (int r = 0; r < D / 32; ++r) st.acc[r] *= c;",
      "/* acc not rescaled */",
      "dynamic softmax: accumulators not rescaled when the max grows"),
    // ---- LongHeads ----
    m("sel-longheads-forced-prev", Selection, LONGHEADS,
      "if (c >= 2) out[w++] = c - 1;",
      "/* chunk c - 1 not forced */",
      "LongHeads: chunk c - 1 is not forced (the official code's decoding artefact)"),
    m("sel-longheads-begin", Selection, LONGHEADS,
      "if (t < begin) {",
      "if (t <= begin) {",
      "LongHeads: the row at t = B still attends every chunk"),
    m("lh-longheads-query-position", LmInfiniteScoring, LONGHEADS,
      "i, heads_q, seq_q, D), n - 1, f);",
      "i, heads_q, seq_q, D), t, f);",
      "LongHeads: the query is rotated at its true position, not at n - 1"),
    m("pool-longheads-mean", Pooling, LONGHEADS,
      "cbar[e] /= static_cast<float>(chunk);",
      "cbar[e] /= static_cast<float>(chunk + 1);",
      "LongHeads summaries: cbar is not the mean of the chunk's outputs"),
];
