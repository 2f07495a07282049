//! Block-sparse attention with FlexAttention BlockMask semantics (variants.md section 4),
//! and the list builders: from a mask, the random benchmark layout, BigBird.
//!
//! ```
//! use attnforge_reference::{block_lists_from_mask, BlockGeometry, Mask};
//! let g = BlockGeometry { batch: 1, q_heads: 1, q_len: 8, k_len: 8, block_q: 4, block_k: 4 };
//! let lists = block_lists_from_mask(&Mask::Causal, &g)?;
//! assert_eq!(lists.full_at(0, 0, 1), &[0]);
//! assert_eq!(lists.partial_at(0, 0, 1), &[1]);
//! # Ok::<(), attnforge_reference::RefError>(())
//! ```

use crate::core::{check_qkv, dispatch, dot, masked_attention, Dims};
use crate::element::{Acc, Element};
use crate::error::RefError;
use crate::mask::{Mask, ScoreMod};
use crate::tensor::{AttnOptions, AttnOutput, Tensor4};

/// Per `(b, h, query block r)` lists of **full** and **partial** key blocks, each strictly
/// ascending. `batch` is 1 or B and `heads` is 1 or Hq (extent 1 broadcasts).
/// Lists are indexed `[(b * heads + h) * q_blocks + r]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockLists {
    /// Batch extent (1 or B).
    pub batch: usize,
    /// Head extent (1 or Hq).
    pub heads: usize,
    /// Number of query blocks, `ceil(Sq / block_q)`.
    pub q_blocks: usize,
    /// Query rows per block (BQ).
    pub block_q: usize,
    /// Key columns per block (BK).
    pub block_k: usize,
    /// Full key blocks (used without evaluating the mask).
    pub full: Vec<Vec<usize>>,
    /// Partial key blocks (the mask is evaluated per element).
    pub partial: Vec<Vec<usize>>,
}

/// Geometry shared by the list builders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockGeometry {
    /// Batch size B.
    pub batch: usize,
    /// Query heads Hq.
    pub q_heads: usize,
    /// Query length Sq.
    pub q_len: usize,
    /// Key length Sk.
    pub k_len: usize,
    /// Query block size BQ.
    pub block_q: usize,
    /// Key block size BK.
    pub block_k: usize,
}

impl BlockGeometry {
    /// `ceil(Sq / BQ)`.
    pub fn q_blocks(&self) -> usize {
        self.q_len.div_ceil(self.block_q.max(1))
    }

    /// `ceil(Sk / BK)`.
    pub fn k_blocks(&self) -> usize {
        self.k_len.div_ceil(self.block_k.max(1))
    }

    fn check(&self) -> Result<(), RefError> {
        for (v, field) in [
            (self.block_q, "BlockGeometry::block_q"),
            (self.block_k, "BlockGeometry::block_k"),
            (self.batch, "BlockGeometry::batch"),
            (self.q_heads, "BlockGeometry::q_heads"),
            (self.k_len, "BlockGeometry::k_len"),
        ] {
            if v == 0 {
                return Err(RefError::ZeroSize {
                    field,
                    fix: "block sizes, B, Hq and Sk must be >= 1",
                });
            }
        }
        if self.q_len > self.k_len {
            return Err(RefError::QueryLongerThanKeys {
                variant: "block_sparse",
                sq: self.q_len,
                sk: self.k_len,
            });
        }
        Ok(())
    }
}

fn index(lists: &BlockLists, b: usize, h: usize, r: usize) -> usize {
    let b = if lists.batch == 1 { 0 } else { b };
    let h = if lists.heads == 1 { 0 } else { h };
    (b * lists.heads + h) * lists.q_blocks + r
}

impl BlockLists {
    /// Full key blocks of `(b, h, r)`, broadcasting extent-1 batch/head.
    pub fn full_at(&self, b: usize, h: usize, r: usize) -> &[usize] {
        &self.full[index(self, b, h, r)]
    }

    /// Partial key blocks of `(b, h, r)`, broadcasting extent-1 batch/head.
    pub fn partial_at(&self, b: usize, h: usize, r: usize) -> &[usize] {
        &self.partial[index(self, b, h, r)]
    }

    /// Check the lists against a problem `[B, Hq, Sq]` x `Sk`: extents, lengths, every list
    /// strictly ascending and in range, no block in both lists.
    pub fn validate(&self, batch: usize, hq: usize, sq: usize, sk: usize) -> Result<(), RefError> {
        if self.block_q == 0 || self.block_k == 0 {
            return Err(RefError::ZeroSize {
                field: if self.block_q == 0 {
                    "BlockLists::block_q"
                } else {
                    "BlockLists::block_k"
                },
                fix: "block sizes must be >= 1",
            });
        }
        if self.batch != 1 && self.batch != batch {
            return Err(RefError::ShapeMismatch {
                field: "BlockLists::batch",
                expected: format!("1 or B = {batch}"),
                got: self.batch,
                fix: "use batch extent 1 (broadcast) or B",
            });
        }
        if self.heads != 1 && self.heads != hq {
            return Err(RefError::ShapeMismatch {
                field: "BlockLists::heads",
                expected: format!("1 or Hq = {hq}"),
                got: self.heads,
                fix: "use head extent 1 (broadcast) or Hq",
            });
        }
        let nq = sq.div_ceil(self.block_q);
        if self.q_blocks != nq {
            return Err(RefError::ShapeMismatch {
                field: "BlockLists::q_blocks",
                expected: format!("ceil(Sq / block_q) = {nq}"),
                got: self.q_blocks,
                fix: "build one list per query block",
            });
        }
        let rows = self.batch * self.heads * self.q_blocks;
        for (list, field) in [
            (&self.full, "BlockLists::full"),
            (&self.partial, "BlockLists::partial"),
        ] {
            if list.len() != rows {
                return Err(RefError::ShapeMismatch {
                    field,
                    expected: format!("batch * heads * q_blocks = {rows}"),
                    got: list.len(),
                    fix: "pass one list per (batch, head, query block)",
                });
            }
        }
        let nk = sk.div_ceil(self.block_k);
        for idx in 0..rows {
            let (b, h, r) = (
                idx / (self.heads * self.q_blocks),
                (idx / self.q_blocks) % self.heads,
                idx % self.q_blocks,
            );
            for (l, name) in [(&self.full[idx], "full"), (&self.partial[idx], "partial")] {
                for w in l.windows(2) {
                    if w[1] <= w[0] {
                        return Err(RefError::BlockListUnsorted {
                            list: name,
                            b,
                            h,
                            r,
                            prev: w[0],
                            next: w[1],
                        });
                    }
                }
                if let Some(&c) = l.iter().find(|&&c| c >= nk) {
                    return Err(RefError::BlockOutOfRange {
                        list: name,
                        b,
                        h,
                        r,
                        index: c,
                        n_blocks: nk,
                    });
                }
            }
            if let Some(&c) = self.full[idx]
                .iter()
                .find(|c| self.partial[idx].binary_search(c).is_ok())
            {
                return Err(RefError::BlockInBothLists { b, h, r, c });
            }
        }
        Ok(())
    }

    /// Build from FlexAttention-style arrays: `num: [batch, heads, q_blocks]` counts and
    /// `indices: [batch, heads, q_blocks, stride]` (the first `num` entries of each row
    /// are used), for the partial (`kv_num_blocks`/`kv_indices`) and the full
    /// (`full_kv_num_blocks`/`full_kv_indices`) lists. Negative entries are errors.
    pub fn from_flex_arrays(
        extents: (usize, usize, usize),
        block: (usize, usize),
        partial: (&[i32], &[i32]),
        full: (&[i32], &[i32]),
    ) -> Result<Self, RefError> {
        let (batch, heads, q_blocks) = extents;
        let rows = batch * heads * q_blocks;
        let conv = |num: &[i32], idx: &[i32], fnum: &'static str, fidx: &'static str| {
            if num.len() != rows {
                return Err(RefError::ShapeMismatch {
                    field: fnum,
                    expected: format!("batch * heads * q_blocks = {rows}"),
                    got: num.len(),
                    fix: "pass one count per (batch, head, query block)",
                });
            }
            let stride = idx.len().checked_div(rows).unwrap_or(0);
            if stride * rows != idx.len() {
                return Err(RefError::ShapeMismatch {
                    field: fidx,
                    expected: format!("a multiple of {rows}"),
                    got: idx.len(),
                    fix: "indices must be [batch, heads, q_blocks, stride]",
                });
            }
            let mut out = Vec::with_capacity(rows);
            for (r, &n) in num.iter().enumerate() {
                if n < 0 || n as usize > stride {
                    return Err(RefError::InvalidParam {
                        field: fnum,
                        value: n.to_string(),
                        fix: "each count must be in 0..=stride of the index array",
                    });
                }
                let row = &idx[r * stride..r * stride + n as usize];
                if let Some(&bad) = row.iter().find(|&&c| c < 0) {
                    return Err(RefError::InvalidParam {
                        field: fidx,
                        value: bad.to_string(),
                        fix: "block indices must be >= 0",
                    });
                }
                out.push(row.iter().map(|&c| c as usize).collect());
            }
            Ok(out)
        };
        Ok(Self {
            batch,
            heads,
            q_blocks,
            block_q: block.0,
            block_k: block.1,
            partial: conv(partial.0, partial.1, "kv_num_blocks", "kv_indices")?,
            full: conv(full.0, full.1, "full_kv_num_blocks", "full_kv_indices")?,
        })
    }

    /// Section 4's `allowed` for query row `row` (at position `pos`) and key `j` of batch
    /// `b`, query head `h`: `c in full(r) or (c in partial(r) and mask(b, h, pos, j))`.
    /// Shared by the forward and the backward reference. Call [`BlockLists::validate`] first.
    #[allow(clippy::too_many_arguments)] // the element coordinates plus the mask
    pub(crate) fn allows(
        &self,
        mask: &Mask,
        b: usize,
        h: usize,
        row: usize,
        pos: i64,
        j: usize,
        sk: usize,
    ) -> bool {
        let (r, c) = (row / self.block_q, j / self.block_k);
        self.full_at(b, h, r).binary_search(&c).is_ok()
            || (self.partial_at(b, h, r).binary_search(&c).is_ok()
                && mask.allowed(b, h, pos, j as i64, sk))
    }

    /// `(full tiles, partial tiles)` visited over all `B x Hq` heads (extent-1 lists counted
    /// once per broadcast copy): what a kernel's `AF_CTR_TILE_FULL/PARTIAL` counters sum to.
    pub fn tile_counts(&self, batch: usize, hq: usize) -> (usize, usize) {
        let (mut f, mut p) = (0, 0);
        for b in 0..batch {
            for h in 0..hq {
                for r in 0..self.q_blocks {
                    f += self.full_at(b, h, r).len();
                    p += self.partial_at(b, h, r).len();
                }
            }
        }
        (f, p)
    }
}

/// Build lists from a mask (section 4): a tile is **full** when all `BQ x BK` of its
/// elements are in range and allowed, **partial** when some are allowed, absent otherwise.
/// Lists have extent `B x Hq`.
pub fn block_lists_from_mask(mask: &Mask, geom: &BlockGeometry) -> Result<BlockLists, RefError> {
    geom.check()?;
    let (sq, sk) = (geom.q_len, geom.k_len);
    mask.validate(geom.batch, sq, sk)?;
    let (nq, nk, bq, bk) = (geom.q_blocks(), geom.k_blocks(), geom.block_q, geom.block_k);
    let off = sk as i64 - sq as i64;
    let mut full = Vec::new();
    let mut partial = Vec::new();
    for b in 0..geom.batch {
        for h in 0..geom.q_heads {
            for r in 0..nq {
                let (mut fl, mut pl) = (Vec::new(), Vec::new());
                for c in 0..nk {
                    let in_range = (r + 1) * bq <= sq && (c + 1) * bk <= sk;
                    let mut any = false;
                    let mut all = true;
                    for i in r * bq..((r + 1) * bq).min(sq) {
                        for j in c * bk..((c + 1) * bk).min(sk) {
                            if mask.allowed(b, h, i as i64 + off, j as i64, sk) {
                                any = true;
                            } else {
                                all = false;
                            }
                        }
                    }
                    if any && all && in_range {
                        fl.push(c);
                    } else if any {
                        pl.push(c);
                    }
                }
                full.push(fl);
                partial.push(pl);
            }
        }
    }
    Ok(BlockLists {
        batch: geom.batch,
        heads: geom.q_heads,
        q_blocks: nq,
        block_q: bq,
        block_k: bk,
        full,
        partial,
    })
}

/// SplitMix64, the generator behind [`random_block_lists`].
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform integer in `0..n` (`n >= 1`), by the multiply-shift method.
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

/// Random block-sparse layout (LongCA-bench, section 4): one draw per (batch, kv head),
/// shared by the query heads of its group; every query block keeps exactly
/// `max(1, floor(rho * nKV))` key blocks chosen uniformly (partial Fisher-Yates with
/// [`SplitMix64`] seeded by `seed`, draws in (batch, kv head, query block) order), all
/// listed as full, no causality. Lists have extent `B x Hq`.
pub fn random_block_lists(
    geom: &BlockGeometry,
    kv_heads: usize,
    rho: f64,
    seed: u64,
) -> Result<BlockLists, RefError> {
    geom.check()?;
    if kv_heads == 0 || geom.q_heads / kv_heads * kv_heads != geom.q_heads {
        return Err(RefError::HeadsNotDivisible {
            hq: geom.q_heads,
            hkv: kv_heads,
        });
    }
    if !(0.0..=1.0).contains(&rho) {
        return Err(RefError::InvalidParam {
            field: "rho",
            value: rho.to_string(),
            fix: "the kept fraction of key blocks must be in [0, 1]",
        });
    }
    let (nq, nk) = (geom.q_blocks(), geom.k_blocks());
    let keep = ((rho * nk as f64).floor() as usize).clamp(1, nk);
    let mut rng = SplitMix64(seed);
    let mut draws = Vec::with_capacity(geom.batch * kv_heads * nq);
    for _ in 0..geom.batch * kv_heads * nq {
        let mut pool: Vec<usize> = (0..nk).collect();
        for t in 0..keep {
            let pick = t + rng.below(nk - t);
            pool.swap(t, pick);
        }
        let mut chosen = pool[..keep].to_vec();
        chosen.sort_unstable();
        draws.push(chosen);
    }
    let group = geom.q_heads / kv_heads;
    let mut full = Vec::with_capacity(geom.batch * geom.q_heads * nq);
    for b in 0..geom.batch {
        for h in 0..geom.q_heads {
            for r in 0..nq {
                full.push(draws[(b * kv_heads + h / group) * nq + r].clone());
            }
        }
    }
    Ok(BlockLists {
        batch: geom.batch,
        heads: geom.q_heads,
        q_blocks: nq,
        block_q: geom.block_q,
        block_k: geom.block_k,
        partial: vec![Vec::new(); full.len()],
        full,
    })
}

/// BigBird block layout (section 4): query blocks 0 and `nQ - 1` see every key block;
/// every query block sees key blocks 0 and `nK - 1`, neighbours `|r - c| <= 1`, and its
/// random blocks `random[r * per_row ..][..per_row]` (`[nQ, R]`, negative = padding).
/// All listed as full; lists have extent 1 x 1 (broadcast).
pub fn bigbird_block_lists(
    geom: &BlockGeometry,
    random: &[i64],
    per_row: usize,
) -> Result<BlockLists, RefError> {
    geom.check()?;
    let (nq, nk) = (geom.q_blocks(), geom.k_blocks());
    if random.len() != nq * per_row {
        return Err(RefError::ShapeMismatch {
            field: "bigbird random",
            expected: format!("nQ * R = {}", nq * per_row),
            got: random.len(),
            fix: "pass an integer array [nQ, R] (negative entries are padding)",
        });
    }
    let mut full = Vec::with_capacity(nq);
    for r in 0..nq {
        let mut row = vec![false; nk];
        for (c, slot) in row.iter_mut().enumerate() {
            *slot = r == 0 || r + 1 == nq || c == 0 || c + 1 == nk || r.abs_diff(c) <= 1;
        }
        for &c in &random[r * per_row..(r + 1) * per_row] {
            if c >= nk as i64 {
                return Err(RefError::BlockOutOfRange {
                    list: "bigbird random",
                    b: 0,
                    h: 0,
                    r,
                    index: c as usize,
                    n_blocks: nk,
                });
            }
            if c >= 0 {
                row[c as usize] = true;
            }
        }
        full.push((0..nk).filter(|&c| row[c]).collect());
    }
    Ok(BlockLists {
        batch: 1,
        heads: 1,
        q_blocks: nq,
        block_q: geom.block_q,
        block_k: geom.block_k,
        partial: vec![Vec::new(); nq],
        full,
    })
}

#[allow(clippy::too_many_arguments)] // mirrors the public signature plus the checked dims
fn block_sparse_impl<T: Element, A: Acc>(
    q: &Tensor4<T>,
    k: &Tensor4<T>,
    v: &Tensor4<T>,
    dims: &Dims,
    lists: &BlockLists,
    mask: &Mask,
    score_mod: &ScoreMod,
    scale: f64,
) -> AttnOutput {
    let (qa, ka, va) = (q.to_acc::<A>(), k.to_acc::<A>(), v.to_acc::<A>());
    let scale = A::of(scale);
    let off = dims.sk as i64 - dims.sq as i64;
    masked_attention::<A, T>(dims, &qa, &ka, &va, |b, h, p, j, qr, kr| {
        let jp = j as i64;
        lists
            .allows(mask, b, h, (p - off) as usize, p, j, dims.sk)
            .then(|| score_mod.apply(scale * dot(qr, kr), b, h, p, jp))
    })
}

/// Block-sparse attention (section 4): `allowed(i, j) = j < Sk and (c in full(r) or
/// (c in partial(r) and mask(b, h, p(i), j)))` with `r = i / BQ` (query row), `c = j / BK`.
/// The lists are authoritative; `score_mod` applies to every allowed entry. Needs `Sq <= Sk`.
pub fn block_sparse_attention<T: Element>(
    q: &Tensor4<T>,
    k: &Tensor4<T>,
    v: &Tensor4<T>,
    lists: &BlockLists,
    mask: &Mask,
    score_mod: &ScoreMod,
    opts: &AttnOptions,
) -> Result<AttnOutput, RefError> {
    let dims = check_qkv(q, k, v)?;
    dims.require_sq_le_sk("block_sparse")?;
    lists.validate(dims.b, dims.hq, dims.sq, dims.sk)?;
    mask.validate(dims.b, dims.sq, dims.sk)?;
    score_mod.validate(dims.hq)?;
    let scale = opts.scale_or(dims.default_scale())?;
    Ok(dispatch!(
        opts,
        block_sparse_impl::<T>(q, k, v, &dims, lists, mask, score_mod, scale)
    ))
}
