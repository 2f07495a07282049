//! Host-side masks, tile classification and runtime block lists (FlexAttention BlockMask
//! semantics, variants.md section 4).
//!
//! * [`HostMask`] evaluates every built-in mask by its table definition (positions, not rows).
//! * [`classify_tile`] is the closed-form tile classifier of the analytic masks (from the
//!   mask table); the CUDA classifiers in `cuda/af_attn.cuh` are transliterations of it.
//! * [`build_block_lists`] builds lists from any predicate (a Rust closure for user masks),
//!   [`validate_block_lists`] checks lists given by a caller.
//!
//! ```
//! use attnforge_codegen::blocks::{build_block_lists, HostMask};
//! use attnforge_codegen::masks::{BuiltinMask, MaskParams};
//! use attnforge_codegen::spec::BlockSize;
//! let m = HostMask::new(BuiltinMask::from_tag("causal").unwrap(), &MaskParams::None);
//! let l = build_block_lists(1, 1, 256, 256, BlockSize { q: 128, k: 128 }, |b, h, i, j| m.allowed(b, h, i, j));
//! assert_eq!(l.full(0, 0, 1), &[0]);
//! assert_eq!(l.partial(0, 0, 1), &[1]);
//! ```

use serde::{Deserialize, Serialize};

use crate::check::{Errors, SpecError};
use crate::masks::{BuiltinMask, MaskParams};
use crate::spec::BlockSize;

/// Classification of a tile (or block) of the score matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TileKind {
    /// No element allowed: never visited.
    Skip,
    /// Every element allowed: visited without evaluating the mask.
    Full,
    /// Some elements allowed: the mask is evaluated per element.
    Partial,
}

/// A built-in mask with its runtime data, evaluated on the host by its table definition
/// ([`crate::masks::MaskDef::host_allowed`]; positions, not rows).
#[derive(Clone, Debug, PartialEq)]
pub struct HostMask {
    /// The mask.
    pub mask: BuiltinMask,
    /// Parameter values in table order.
    pub values: Vec<f64>,
    /// Document ids, `[1 or B, seq_k]` row-major (empty when the mask reads none).
    pub doc: Vec<i32>,
    /// `Sk` (the length of one doc row).
    pub seq_k: usize,
}

impl HostMask {
    /// A mask without document ids.
    pub fn new(mask: BuiltinMask, params: &MaskParams) -> Self {
        HostMask {
            mask,
            values: params.ordered(mask, 0),
            doc: Vec::new(),
            seq_k: 0,
        }
    }
    /// Builder: document ids (`seq_k` or `B * seq_k`).
    pub fn with_doc(mut self, doc: Vec<i32>, seq_k: usize) -> Self {
        self.doc = doc;
        self.seq_k = seq_k;
        self
    }

    /// `allowed(b, h, p, j)` at query position `p` and key position `j` (both in range).
    pub fn allowed(&self, b: usize, _h: usize, p: i64, j: i64) -> bool {
        let row = if self.doc.len() > self.seq_k {
            &self.doc[b * self.seq_k..(b + 1) * self.seq_k]
        } else {
            &self.doc[..]
        };
        (self.mask.def().host_allowed)(&self.values, row, p, j)
    }

    /// Whether [`classify_tile`] has a closed form for this mask (otherwise lists are used).
    pub fn is_analytic(&self) -> bool {
        self.mask.def().host_classify.is_some()
    }
}

/// Closed-form classification of the tile of query positions `plo..=phi` and key positions
/// `c0..=c1` (all in range, non-empty) for the analytic masks; `None` for list-driven masks.
/// Exact: `Skip` iff no element is allowed, `Full` iff every element is (LM-Infinite: and
/// takes one score branch, see [`classify_lminf_tile`]).
pub fn classify_tile(mask: &HostMask, plo: i64, phi: i64, c0: i64, c1: i64) -> Option<TileKind> {
    mask.mask
        .def()
        .host_classify
        .map(|f| f(&mask.values, plo, phi, c0, c1))
}

pub use crate::masks::classify_lminf_tile;

/// Runtime block lists (FlexAttention `BlockMask`): for each `(b, h, r)`, ascending lists of
/// full and partial key blocks. Arrays are row-major with extents
/// `[batches, heads, rows]` (counts) and `[batches, heads, rows, width]` (indices; entries
/// past the count are padding, -1). `batches`/`heads` may be 1 (broadcast).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockLists {
    /// Batch extent (1 or B).
    pub batches: usize,
    /// Head extent (1 or Hq).
    pub heads: usize,
    /// Query blocks `ceil(Sq / BQ)`.
    pub rows: usize,
    /// Key blocks `ceil(Sk / BK)` (indices are below it).
    pub cols: usize,
    /// Row width of the index arrays.
    pub width: usize,
    /// Full-block counts.
    pub full_num: Vec<i32>,
    /// Full-block indices.
    pub full_idx: Vec<i32>,
    /// Partial-block counts.
    pub partial_num: Vec<i32>,
    /// Partial-block indices.
    pub partial_idx: Vec<i32>,
}

impl BlockLists {
    fn row(&self, b: usize, h: usize, r: usize) -> usize {
        (b * self.heads + h) * self.rows + r
    }
    /// Full blocks of `(b, h, r)` (b/h taken modulo a broadcast extent of 1).
    pub fn full(&self, b: usize, h: usize, r: usize) -> &[i32] {
        let i = self.row(
            if self.batches == 1 { 0 } else { b },
            if self.heads == 1 { 0 } else { h },
            r,
        );
        &self.full_idx[i * self.width..i * self.width + self.full_num[i] as usize]
    }
    /// Partial blocks of `(b, h, r)`.
    pub fn partial(&self, b: usize, h: usize, r: usize) -> &[i32] {
        let i = self.row(
            if self.batches == 1 { 0 } else { b },
            if self.heads == 1 { 0 } else { h },
            r,
        );
        &self.partial_idx[i * self.width..i * self.width + self.partial_num[i] as usize]
    }
    /// The transposed lists (the backward's schedule for list-driven masks): row `c` of
    /// `(b, h)` lists, in ascending order, the query blocks whose row lists key block `c`,
    /// full and partial as in the original (a block's class does not depend on the
    /// direction it is walked). `rows` and `cols` swap; the width is the new column count.
    /// Expects lists that passed [`validate_block_lists`].
    pub fn transposed(&self) -> BlockLists {
        let mut lists = vec![(Vec::new(), Vec::new()); self.batches * self.heads * self.cols];
        for b in 0..self.batches {
            for h in 0..self.heads {
                for r in 0..self.rows {
                    let base = (b * self.heads + h) * self.cols;
                    for &c in self.full(b, h, r) {
                        lists[base + c as usize].0.push(r as i32);
                    }
                    for &c in self.partial(b, h, r) {
                        lists[base + c as usize].1.push(r as i32);
                    }
                }
            }
        }
        BlockLists::from_rows(self.batches, self.heads, self.cols, self.rows, &lists)
    }

    /// Assemble from per-row lists `lists[(b * heads + h) * rows + r] = (full, partial)`.
    pub fn from_rows(
        batches: usize,
        heads: usize,
        rows: usize,
        cols: usize,
        lists: &[(Vec<i32>, Vec<i32>)],
    ) -> Self {
        let width = cols.max(1);
        let n = batches * heads * rows;
        let mut l = BlockLists {
            batches,
            heads,
            rows,
            cols,
            width,
            full_num: vec![0; n],
            full_idx: vec![-1; n * width],
            partial_num: vec![0; n],
            partial_idx: vec![-1; n * width],
        };
        for (i, (f, p)) in lists.iter().enumerate().take(n) {
            l.full_num[i] = f.len().min(width) as i32;
            l.partial_num[i] = p.len().min(width) as i32;
            for (k, c) in f.iter().take(width).enumerate() {
                l.full_idx[i * width + k] = *c;
            }
            for (k, c) in p.iter().take(width).enumerate() {
                l.partial_idx[i * width + k] = *c;
            }
        }
        l
    }
}

/// Build block lists by evaluating `allowed(b, h, q_pos, kv_pos)` on every element:
/// a block is full when all `BQ x BK` elements are in range and allowed, partial when some
/// are allowed, absent otherwise. Query row `i` is at position `i + seq_k - seq_q`.
/// `batches`/`heads` are the extents to build (pass 1 to broadcast a mask that does not
/// depend on them).
pub fn build_block_lists(
    batches: usize,
    heads: usize,
    seq_q: usize,
    seq_k: usize,
    block: BlockSize,
    allowed: impl Fn(usize, usize, i64, i64) -> bool,
) -> BlockLists {
    let (bq, bk) = (block.q.max(1), block.k.max(1));
    let rows = seq_q.div_ceil(bq);
    let cols = seq_k.div_ceil(bk);
    let shift = seq_k as i64 - seq_q as i64;
    let mut lists = Vec::with_capacity(batches * heads * rows);
    for b in 0..batches {
        for h in 0..heads {
            for r in 0..rows {
                let (mut f, mut p) = (Vec::new(), Vec::new());
                for c in 0..cols {
                    let (i0, i1) = (r * bq, ((r + 1) * bq).min(seq_q));
                    let (j0, j1) = (c * bk, ((c + 1) * bk).min(seq_k));
                    let mut n = 0usize;
                    for i in i0..i1 {
                        for j in j0..j1 {
                            n += usize::from(allowed(b, h, i as i64 + shift, j as i64));
                        }
                    }
                    if n == bq * bk {
                        f.push(c as i32);
                    } else if n > 0 {
                        p.push(c as i32);
                    }
                }
                lists.push((f, p));
            }
        }
    }
    BlockLists::from_rows(batches, heads, rows, cols, &lists)
}

/// Check lists against a problem: extents (batches 1 or B, heads 1 or Hq, rows =
/// ceil(Sq/BQ)), array lengths, counts within the width, indices in `0..ceil(Sk/BK)`,
/// strictly ascending (no duplicates), and no block in both lists. Returns every error.
pub fn validate_block_lists(
    l: &BlockLists,
    batch: usize,
    heads_q: usize,
    seq_q: usize,
    seq_k: usize,
    block: BlockSize,
) -> Result<(), Vec<SpecError>> {
    let mut e = Errors::default();
    let (rows, cols) = (
        seq_q.div_ceil(block.q.max(1)),
        seq_k.div_ceil(block.k.max(1)),
    );
    if l.batches != 1 && l.batches != batch {
        e.push(
            "block_lists.batches",
            format!(
                "batch extent {} is neither 1 nor batch ({batch})",
                l.batches
            ),
            "build the lists per batch entry or once (extent 1) for all",
        );
    }
    if l.heads != 1 && l.heads != heads_q {
        e.push(
            "block_lists.heads",
            format!(
                "head extent {} is neither 1 nor heads_q ({heads_q})",
                l.heads
            ),
            "build the lists per query head or once (extent 1) for all",
        );
    }
    if l.rows != rows {
        e.push(
            "block_lists.rows",
            format!(
                "{} query blocks given, ceil(seq_q / {}) = {rows} needed",
                l.rows, block.q
            ),
            "build the lists for this seq_q and block size",
        );
    }
    let n = l.batches * l.heads * l.rows;
    for (f, v, want) in [
        ("full_num", &l.full_num, n),
        ("partial_num", &l.partial_num, n),
        ("full_idx", &l.full_idx, n * l.width),
        ("partial_idx", &l.partial_idx, n * l.width),
    ] {
        if v.len() != want {
            e.push(
                format!("block_lists.{f}"),
                format!("has {} entries, {want} expected", v.len()),
                "size counts [batches, heads, rows] and indices [batches, heads, rows, width]",
            );
        }
    }
    if !e.0.is_empty() {
        return e.finish();
    }
    for i in 0..n {
        let (b, h, r) = (i / (l.heads * l.rows), (i / l.rows) % l.heads, i % l.rows);
        let mut seen: Vec<(&str, i32)> = Vec::new();
        for (name, num, idx) in [
            ("full", &l.full_num, &l.full_idx),
            ("partial", &l.partial_num, &l.partial_idx),
        ] {
            let cnt = num[i];
            let path = format!("block_lists.{name}_idx[{b}][{h}][{r}]");
            if cnt < 0 || cnt as usize > l.width {
                e.push(
                    format!("block_lists.{name}_num[{b}][{h}][{r}]"),
                    format!("count {cnt} outside 0..={}", l.width),
                    "counts must not exceed the index row width",
                );
                continue;
            }
            let list = &idx[i * l.width..i * l.width + cnt as usize];
            for (k, &c) in list.iter().enumerate() {
                if c < 0 || c as usize >= cols {
                    e.push(
                        format!("{path}[{k}]"),
                        format!("key block {c} outside 0..{cols}"),
                        "use key block indices below ceil(seq_k / BK)",
                    );
                }
                if k > 0 && list[k - 1] >= c {
                    e.push(
                        format!("{path}[{k}]"),
                        format!("not strictly ascending: {} then {c}", list[k - 1]),
                        "sort each list ascending and remove duplicates",
                    );
                }
                if let Some((other, _)) = seen.iter().find(|(n, x)| *n != name && *x == c) {
                    e.push(
                        format!("{path}[{k}]"),
                        format!("key block {c} is in both the {other} and the {name} list"),
                        "list a block once: full when all elements are allowed, else partial",
                    );
                }
            }
            seen.extend(list.iter().map(|&c| (name, c)));
        }
    }
    e.finish()
}
