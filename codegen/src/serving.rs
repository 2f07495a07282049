//! Host-side checks of the serving layouts (variants.md section 13), run before any launch:
//! packed variable-length batches (`cu_seqlens_q`, `cu_seqlens_k`) and a paged KV cache
//! (`block_table`, `seqlens_k`, `page_size`). Every check runs and every error is returned,
//! each naming the array and the index (`block_table[1][3]`), what is wrong and the fix.
//! Nothing here panics or reads out of bounds on bad input; the lengths are runtime values
//! and never part of a kernel.
//!
//! ```
//! use attnforge_codegen::serving::{validate_serving, KeyLayout, ServingProblem};
//! let p = ServingProblem {
//!     heads_q: 8,
//!     heads_kv: 2,
//!     head_dim: 128,
//!     value_dim: 128,
//!     total_q: 3,
//!     cu_seqlens_q: &[0, 1, 3],
//!     keys: KeyLayout::Paged {
//!         num_pages: 4,
//!         page_size: 16,
//!         block_table: &[2, 0, 4, -1], // row 1 reads page 4 of 4
//!         max_pages: 2,
//!         seqlens_k: &[20, 9],
//!     },
//!     sq_gt_sk_allowed: false,
//!     doc: None,
//! };
//! let errs = validate_serving(&p).unwrap_err();
//! assert_eq!(errs[0].path, "block_table[1][0]");
//! ```

use crate::check::SpecError;
use crate::masks::DocRule;

/// The largest element offset a kernel's 32-bit index arithmetic reaches.
const MAX_OFFSET: u128 = i32::MAX as u128;

/// Where the keys of a serving call live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyLayout<'a> {
    /// Packed keys `k: [total_k, Hkv, D]`, `v: [total_k, Hkv, Dv]`; sequence `b` owns rows
    /// `cu_seqlens_k[b] .. cu_seqlens_k[b + 1]`.
    Varlen {
        /// Rows of the packed k and v.
        total_k: usize,
        /// `[B + 1]` offsets.
        cu_seqlens_k: &'a [i32],
    },
    /// A paged cache `k_cache, v_cache: [num_pages, page_size, Hkv, D or Dv]`; key `j` of
    /// sequence `b` is slot `j % page_size` of page `block_table[b][j / page_size]`.
    Paged {
        /// Pages in the cache.
        num_pages: usize,
        /// Keys per page: a power of two from 1 to 1024.
        page_size: usize,
        /// `[B, max_pages]` row-major; only the first `ceil(seqlens_k[b] / page_size)`
        /// entries of row `b` are read (the rest may be -1).
        block_table: &'a [i32],
        /// Row width of `block_table`.
        max_pages: usize,
        /// `[B]` key lengths.
        seqlens_k: &'a [i32],
    },
}

/// Per-key doc ids of a doc mask, laid out like the keys: `[total_k]` for
/// [`KeyLayout::Varlen`], `[num_pages * page_size]` for [`KeyLayout::Paged`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DocIds<'a> {
    /// The ids.
    pub ids: &'a [i32],
    /// The mask's rule on its ids (`MaskDef::doc_rule`); [`DocRule::QuestionPrefix`]: id 0
    /// (the question) must be a prefix of each sequence's ids.
    pub rule: DocRule,
}

/// A serving call's runtime layout, checked by [`validate_serving`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServingProblem<'a> {
    /// Query heads `Hq`.
    pub heads_q: usize,
    /// Key/value heads `Hkv` (dividing `Hq`).
    pub heads_kv: usize,
    /// Head dimension `D`.
    pub head_dim: usize,
    /// Value dimension `Dv`.
    pub value_dim: usize,
    /// Rows of the packed q `[total_q, Hq, D]` (and of `out`).
    pub total_q: usize,
    /// `[B + 1]` query offsets.
    pub cu_seqlens_q: &'a [i32],
    /// The keys.
    pub keys: KeyLayout<'a>,
    /// Whether the variant defines `Sq_b > Sk_b` (full and causal without a score
    /// modification, variants.md section 0).
    pub sq_gt_sk_allowed: bool,
    /// The doc ids, when the mask reads them.
    pub doc: Option<DocIds<'a>>,
}

/// What a valid layout gives the launch: the batch and the longest sequences.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServingGeometry {
    /// Number of sequences `B`.
    pub batch: usize,
    /// `max_b Sq_b`.
    pub max_seqlen_q: usize,
    /// `max_b Sk_b`.
    pub max_seqlen_k: usize,
}

struct Errs(Vec<SpecError>);

impl Errs {
    fn push(
        &mut self,
        path: impl Into<String>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.0.push(SpecError::new(path, message, fix));
    }
}

/// Check a `[B + 1]` offsets array against the packed length `total`: non-empty, first entry
/// 0, non-decreasing, last entry `total`. Returns the sequence lengths when valid.
pub fn validate_cu_seqlens(
    name: &str,
    cu: &[i32],
    total: usize,
) -> Result<Vec<usize>, Vec<SpecError>> {
    let mut e = Errs(Vec::new());
    let Some(&first) = cu.first() else {
        e.push(
            name,
            "is empty",
            "pass B + 1 offsets starting with 0 ([0] for no sequences)",
        );
        return Err(e.0);
    };
    if first != 0 {
        e.push(
            format!("{name}[0]"),
            format!("is {first}"),
            "the first offset must be 0",
        );
    }
    for (i, w) in cu.windows(2).enumerate() {
        if w[1] < w[0] {
            e.push(
                format!("{name}[{}]", i + 1),
                format!("is {} but the entry before it is {}", w[1], w[0]),
                "offsets must be non-decreasing (sequence lengths are differences of neighbours)",
            );
        }
    }
    let last = cu[cu.len() - 1];
    if i64::from(last) != total as i64 {
        e.push(
            format!("{name}[{}]", cu.len() - 1),
            format!("is {last} but the packed tensor has {total} rows"),
            "the last offset must equal the packed length",
        );
    }
    if !e.0.is_empty() {
        return Err(e.0);
    }
    Ok(cu.windows(2).map(|w| (w[1] - w[0]) as usize).collect())
}

/// Check that a row-major `[rows, inner...]` array keeps every element offset within
/// 32 bits; the error names the first row that does not.
fn check_offsets(e: &mut Errs, array: &str, rows: usize, inner: u128, row_name: &str, fix: &str) {
    if inner == 0 {
        return;
    }
    let max_rows = (MAX_OFFSET + 1) / inner;
    if rows as u128 > max_rows {
        e.push(
            format!("{array}[{max_rows}]"),
            format!(
                "{array} has {} elements: {row_name} {max_rows} and later lie past element 2^31 - 1, beyond the kernels' 32-bit offsets",
                rows as u128 * inner
            ),
            format!("{fix} (at most {max_rows} {row_name}s per launch)"),
        );
    }
}

/// Validate a serving layout before a launch (variants.md section 13). Returns the batch
/// and the longest sequences, or every error found.
///
/// Rules: sizes >= 1 and `Hkv` dividing `Hq`; each `cu_seqlens` non-empty, starting at 0,
/// non-decreasing, ending at its packed length, both of `B + 1` entries; paged: `page_size`
/// a power of two in 1..=1024, `seqlens_k` of `B` entries each >= 0, `block_table` of
/// `B * max_pages` entries, `ceil(seqlens_k[b] / page_size) <= max_pages` (so
/// `seqlens_k[b] <= max_pages * page_size`) and every entry read in `[0, num_pages)`;
/// `Sq_b <= Sk_b` unless the variant defines `Sq_b > Sk_b`; doc ids laid out like the keys
/// (and, under [`DocRule::QuestionPrefix`], the question a prefix of each sequence); every array's
/// element offsets within `2^31 - 1`.
pub fn validate_serving(p: &ServingProblem<'_>) -> Result<ServingGeometry, Vec<SpecError>> {
    let mut e = Errs(Vec::new());
    for (field, v) in [
        ("heads_q", p.heads_q),
        ("heads_kv", p.heads_kv),
        ("head_dim", p.head_dim),
        ("value_dim", p.value_dim),
    ] {
        if v == 0 || v > i32::MAX as usize {
            e.push(
                field,
                format!("must be in 1..=2^31-1: got {v}"),
                "pass a positive size that fits in a 32-bit int",
            );
        }
    }
    if p.heads_kv > 0 && p.heads_q % p.heads_kv != 0 {
        e.push(
            "heads_kv",
            format!("{} does not divide heads_q ({})", p.heads_kv, p.heads_q),
            "use a heads_kv that divides heads_q (query head h reads kv head h / (Hq / Hkv))",
        );
    }
    let (hq, hkv) = (p.heads_q as u128, p.heads_kv as u128);
    let (d, dv) = (p.head_dim as u128, p.value_dim as u128);
    let split = "split the batch into several launches";
    check_offsets(&mut e, "q", p.total_q, hq * d, "row", split);
    check_offsets(&mut e, "out", p.total_q, hq * dv, "row", split);
    check_offsets(&mut e, "lse", p.heads_q, p.total_q as u128, "head", split);

    let sq = match validate_cu_seqlens("cu_seqlens_q", p.cu_seqlens_q, p.total_q) {
        Ok(l) => Some(l),
        Err(mut v) => {
            e.0.append(&mut v);
            None
        }
    };
    let batch = p.cu_seqlens_q.len().checked_sub(1);
    let sk: Option<Vec<usize>> = match p.keys {
        KeyLayout::Varlen {
            total_k,
            cu_seqlens_k,
        } => {
            check_offsets(&mut e, "k", total_k, hkv * d, "row", split);
            check_offsets(&mut e, "v", total_k, hkv * dv, "row", split);
            if let Some(b) = batch {
                if cu_seqlens_k.len() != b + 1 {
                    e.push(
                        "cu_seqlens_k",
                        format!(
                            "has {} entries but cu_seqlens_q has {} (B = {b})",
                            cu_seqlens_k.len(),
                            b + 1
                        ),
                        "pass B + 1 offsets in both",
                    );
                }
            }
            match validate_cu_seqlens("cu_seqlens_k", cu_seqlens_k, total_k) {
                Ok(l) => Some(l),
                Err(mut v) => {
                    e.0.append(&mut v);
                    None
                }
            }
        }
        KeyLayout::Paged {
            num_pages,
            page_size,
            block_table,
            max_pages,
            seqlens_k,
        } => paged(
            &mut e,
            p,
            batch,
            num_pages,
            page_size,
            block_table,
            max_pages,
            seqlens_k,
        ),
    };
    let (Some(sq), Some(sk)) = (sq, sk) else {
        return Err(e.0);
    };
    if sq.len() != sk.len() {
        return Err(e.0);
    }
    if !p.sq_gt_sk_allowed {
        for (b, (&q, &k)) in sq.iter().zip(&sk).enumerate() {
            if q > k {
                e.push(
                    format!("cu_seqlens_q[{}]", b + 1),
                    format!("sequence {b} has Sq_b = {q} query rows but only Sk_b = {k} keys"),
                    "Sq_b > Sk_b is defined only for the full and causal masks without a score modification; pass at most Sk_b queries (they are the last Sq_b positions)",
                );
            }
        }
    }
    if let Some(doc) = p.doc {
        check_doc(&mut e, p, doc, &sk);
    }
    if !e.0.is_empty() {
        return Err(e.0);
    }
    Ok(ServingGeometry {
        batch: sq.len(),
        max_seqlen_q: sq.iter().copied().max().unwrap_or(0),
        max_seqlen_k: sk.iter().copied().max().unwrap_or(0),
    })
}

/// The paged rules; returns the key lengths when they can be trusted.
#[allow(clippy::too_many_arguments)]
fn paged(
    e: &mut Errs,
    p: &ServingProblem<'_>,
    batch: Option<usize>,
    num_pages: usize,
    page_size: usize,
    block_table: &[i32],
    max_pages: usize,
    seqlens_k: &[i32],
) -> Option<Vec<usize>> {
    let before = e.0.len();
    let (hkv, d, dv) = (p.heads_kv as u128, p.head_dim as u128, p.value_dim as u128);
    let fix = "use fewer pages per cache tensor";
    check_offsets(
        e,
        "k_cache",
        num_pages,
        page_size as u128 * hkv * d,
        "page",
        fix,
    );
    check_offsets(
        e,
        "v_cache",
        num_pages,
        page_size as u128 * hkv * dv,
        "page",
        fix,
    );
    let ps_ok = page_size.is_power_of_two() && page_size <= 1024;
    if !ps_ok {
        e.push(
            "page_size",
            format!("is {page_size}"),
            "use a power of two from 1 to 1024",
        );
    }
    let b = batch?;
    if seqlens_k.len() != b {
        e.push(
            "seqlens_k",
            format!("has {} entries for {b} sequences", seqlens_k.len()),
            "pass one key length per sequence (B = cu_seqlens_q.len() - 1)",
        );
    }
    if b.checked_mul(max_pages) != Some(block_table.len()) {
        e.push(
            "block_table",
            format!(
                "has {} entries but [B {b}, max_pages {max_pages}] needs {}",
                block_table.len(),
                b as u128 * max_pages as u128
            ),
            "pass a row-major [B, max_pages] table",
        );
    }
    check_offsets(
        e,
        "block_table",
        b,
        max_pages as u128,
        "row",
        "split the batch into several launches",
    );
    if e.0.len() > before || !ps_ok {
        return None;
    }
    let mut lens = Vec::with_capacity(b);
    for (s, &k) in seqlens_k.iter().enumerate() {
        if k < 0 {
            e.push(
                format!("seqlens_k[{s}]"),
                format!("is {k}"),
                "key lengths must be >= 0",
            );
            continue;
        }
        let k = k as usize;
        let pages = k.div_ceil(page_size);
        if pages > max_pages {
            e.push(
                format!("seqlens_k[{s}]"),
                format!(
                    "is {k}: {pages} pages of {page_size} but block_table rows hold only {max_pages} (at most {} keys)",
                    max_pages * page_size
                ),
                "widen block_table to ceil(Sk_b / page_size) pages or shorten the sequence",
            );
            continue;
        }
        for i in 0..pages {
            let page = block_table[s * max_pages + i];
            if page < 0 || page as usize >= num_pages {
                e.push(
                    format!("block_table[{s}][{i}]"),
                    format!(
                        "is page {page}, read for keys {}..{}, but the cache has {num_pages} pages",
                        i * page_size,
                        ((i + 1) * page_size).min(k)
                    ),
                    "point every page a sequence reads at a page in [0, num_pages)",
                );
            }
        }
        lens.push(k);
    }
    (e.0.len() == before).then_some(lens)
}

/// Doc ids: length of the key layout; [`DocRule::QuestionPrefix`] needs id 0 as a prefix per sequence.
fn check_doc(e: &mut Errs, p: &ServingProblem<'_>, doc: DocIds<'_>, sk: &[usize]) {
    let (want, layout) = match p.keys {
        KeyLayout::Varlen { total_k, .. } => (Some(total_k), "packed like the keys: [total_k]"),
        KeyLayout::Paged {
            num_pages,
            page_size,
            ..
        } => (
            num_pages.checked_mul(page_size),
            "paged like the keys: [num_pages * page_size]",
        ),
    };
    if want != Some(doc.ids.len()) {
        e.push(
            "doc",
            format!(
                "has {} ids but {} are needed",
                doc.ids.len(),
                want.map_or("more than usize::MAX".into(), |w| w.to_string())
            ),
            format!("pass one id per key slot, {layout}"),
        );
        return;
    }
    if doc.rule != DocRule::QuestionPrefix {
        return;
    }
    for (b, &k) in sk.iter().enumerate() {
        // (index into doc.ids, position j) of sequence b's keys
        let id = |j: usize| -> (usize, i32) {
            let at = match p.keys {
                KeyLayout::Varlen { cu_seqlens_k, .. } => cu_seqlens_k[b] as usize + j,
                KeyLayout::Paged {
                    page_size,
                    block_table,
                    max_pages,
                    ..
                } => {
                    block_table[b * max_pages + j / page_size] as usize * page_size + j % page_size
                }
            };
            (at, doc.ids[at])
        };
        let prefix = (0..k).take_while(|&j| id(j).1 == 0).count();
        if let Some(j) = (prefix..k).find(|&j| id(j).1 == 0) {
            e.push(
                format!("doc[{}]", id(j).0),
                format!(
                    "key {j} of sequence {b} has id 0 (the question) after the question prefix of length {prefix}"
                ),
                "put the question (id 0) first in each sequence and give the answers ids other than 0",
            );
        }
    }
}
/// The most query tokens per sequence a decode kernel ([`crate::spec::Layout::Decode`])
/// serves: its packed rows (`Hq / Hkv * Sq_b`) must sit in the first query block of the
/// block lists (at least 32 rows) and decoding is 1 token, or a few with speculation.
pub const DECODE_MAX_SEQ_Q: usize = 16;

/// The most key splits per sequence a decode launch accepts.
pub const DECODE_MAX_SPLITS: usize = 256;

/// Streaming multiprocessors assumed when no device is given (an H100 SXM / H200: 132).
pub const DEFAULT_SMS: usize = 132;

/// The number of key splits of a decode launch, from the problem and the device: enough
/// blocks to fill the SMs twice over (`B * Hkv * row_blocks * splits >= 2 * sms`, so a
/// batch of a few long sequences still uses the whole GPU), never more than the key tiles
/// of the longest sequence (`ceil(max_seqlen_k / block_n)`: a split without keys only
/// costs a block and a merge term), at least 1. `row_blocks = ceil(Hq / Hkv * max_seqlen_q
/// / block_m)` (the packed rows). A serving engine calls this once per step (it is cheap)
/// or overrides it (`RunParams::num_splits`, `attnforge run --num-splits`; not a tuner knob yet).
pub fn decode_splits(
    batch: usize,
    (heads_q, heads_kv): (usize, usize),
    (max_seqlen_q, max_seqlen_k): (usize, usize),
    (block_m, block_n): (usize, usize),
    sms: usize,
) -> usize {
    let rows = heads_q / heads_kv.max(1) * max_seqlen_q.max(1);
    let blocks = batch.max(1) * heads_kv.max(1) * rows.div_ceil(block_m.max(1));
    let want = (2 * sms.max(1)).div_ceil(blocks);
    let tiles = max_seqlen_k.div_ceil(block_n.max(1)).max(1);
    want.clamp(1, tiles.min(DECODE_MAX_SPLITS))
}

/// The decode rules on top of [`validate_serving`]: `num_splits` in
/// `1..=DECODE_MAX_SPLITS`, every `Sq_b <= DECODE_MAX_SEQ_Q`, and with more than one split
/// `Sq_b <= Sk_b` (the split reference's rule: the decoded tokens' keys are in the cache).
/// Every error is returned, naming the field and the fix.
pub fn validate_decode(
    cu_seqlens_q: &[i32],
    seqlens_k: &[i32],
    num_splits: usize,
) -> Result<(), Vec<SpecError>> {
    let mut errs = Vec::new();
    if !(1..=DECODE_MAX_SPLITS).contains(&num_splits) {
        errs.push(SpecError::new(
            "num_splits",
            format!("num_splits = {num_splits}, outside 1..={DECODE_MAX_SPLITS}"),
            "pass 1 (no split) or more, or leave it unset for decode_splits' choice",
        ));
    }
    for (b, w) in cu_seqlens_q.windows(2).enumerate() {
        let sq = i64::from(w[1]) - i64::from(w[0]);
        let path = format!("cu_seqlens_q[{}]", b + 1);
        if sq > DECODE_MAX_SEQ_Q as i64 {
            errs.push(SpecError::new(
                path,
                format!("sequence {b} has {sq} query tokens; the decode kernel takes at most {DECODE_MAX_SEQ_Q}"),
                "run longer chunks with layout = \"paged\" (chunked prefill)",
            ));
        } else if num_splits > 1 && seqlens_k.get(b).is_some_and(|&sk| sq > i64::from(sk)) {
            errs.push(SpecError::new(
                path,
                format!(
                    "sequence {b} has {sq} query tokens but {} keys: split-KV needs Sq_b <= Sk_b",
                    seqlens_k[b]
                ),
                "write the decoded tokens' keys to the cache first, or pass num_splits = 1",
            ));
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs)
    }
}
