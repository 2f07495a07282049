//! Exact work of a mask over position ranges: how many (query, key) pairs a mask allows
//! between a range of query rows and a range of keys, without enumerating the pairs for the
//! masks whose rows are intervals (closed forms per row) or per-token doc ids (binary search
//! in each id's sorted positions). User predicates and `All`/`Any` combinations are counted
//! pair by pair (exact, slower). Context parallelism (`attnforge-parallel`) plans and
//! balances ranks with it; it lives here because each closed form restates a mask's
//! definition.
//!
//! ```
//! use attnforge_reference::{Mask, MaskGeometry};
//! let g = MaskGeometry::new(&Mask::Causal, 1, 1, 8, 8).unwrap();
//! assert_eq!(g.pairs(0..8, 0..8), 36);
//! assert!(!g.any(0..4, 4..8)); // the upper-right causal block is empty: never sent
//! ```

use std::collections::HashMap;
use std::ops::Range;

use crate::error::RefError;
use crate::mask::Mask;

/// Sorted positions of each doc id, per batch (one entry when the ids are shared).
type DocIndex = Vec<HashMap<i32, Vec<i64>>>;

/// A validated mask with the problem's sizes, answering exact pair counts over row/key ranges.
#[derive(Debug)]
pub struct MaskGeometry<'a> {
    mask: &'a Mask,
    batch: usize,
    heads: usize,
    sq: usize,
    sk: usize,
    docs: Option<(DocIndex, Vec<Vec<i32>>)>,
}

fn doc_of(mask: &Mask) -> Option<&[i32]> {
    match mask {
        Mask::Document { doc }
        | Mask::CausalDocument { doc }
        | Mask::ShareQuestion { doc }
        | Mask::BlockCausalDocument { doc, .. } => Some(doc),
        _ => None,
    }
}

/// `|[a, b) ∩ [k0, k1)|`.
fn overlap(a: i128, b: i128, k0: i128, k1: i128) -> i128 {
    (b.min(k1) - a.max(k0)).max(0)
}

/// `|([a0, b0) ∪ [a1, b1)) ∩ [k0, k1)|`.
fn overlap2(a0: i128, b0: i128, a1: i128, b1: i128, k0: i128, k1: i128) -> i128 {
    overlap(a0, b0, k0, k1) + overlap(a1, b1, k0, k1)
        - overlap(a0.max(a1), b0.min(b1), k0, k1).max(0)
}

impl<'a> MaskGeometry<'a> {
    /// Validate `mask` for `(batch, heads, Sq, Sk)` and index its doc ids.
    pub fn new(
        mask: &'a Mask,
        batch: usize,
        heads: usize,
        sq: usize,
        sk: usize,
    ) -> Result<Self, RefError> {
        mask.validate(batch, sq, sk)?;
        let docs = doc_of(mask).map(|doc| {
            let per_batch: Vec<Vec<i32>> = if doc.len() == sk {
                vec![doc.to_vec()]
            } else {
                doc.chunks(sk).map(|c| c.to_vec()).collect()
            };
            let index = per_batch
                .iter()
                .map(|ids| {
                    let mut m: HashMap<i32, Vec<i64>> = HashMap::new();
                    for (j, &d) in ids.iter().enumerate() {
                        m.entry(d).or_default().push(j as i64);
                    }
                    m
                })
                .collect();
            (index, per_batch)
        });
        Ok(Self {
            mask,
            batch,
            heads,
            sq,
            sk,
            docs,
        })
    }

    /// The mask.
    pub fn mask(&self) -> &Mask {
        self.mask
    }

    /// Global key count `Sk`.
    pub fn sk(&self) -> usize {
        self.sk
    }

    /// Position of query row `i`: `i + Sk - Sq`.
    pub fn qpos(&self, row: usize) -> i64 {
        row as i64 + self.sk as i64 - self.sq as i64
    }

    fn brute_force(&self) -> bool {
        matches!(self.mask, Mask::Predicate(_) | Mask::All(_) | Mask::Any(_))
    }

    fn count_doc(&self, b: usize, id: i32, lo: i128, hi: i128) -> i128 {
        let Some((index, _)) = &self.docs else {
            return 0;
        };
        let m = &index[b.min(index.len() - 1)];
        let Some(pos) = m.get(&id) else { return 0 };
        if hi <= lo {
            return 0;
        }
        let a = pos.partition_point(|&p| (p as i128) < lo);
        let z = pos.partition_point(|&p| (p as i128) < hi);
        (z - a) as i128
    }

    fn doc_id(&self, b: usize, pos: i64) -> i32 {
        let (_, ids) = self.docs.as_ref().expect("doc mask has ids");
        ids[b.min(ids.len() - 1)][pos as usize]
    }

    /// Allowed keys in `[k0, k1)` for the query at position `i` of batch `b` (head-independent masks).
    fn row_count(&self, b: usize, i: i64, k0: i128, k1: i128) -> i128 {
        let ii = i as i128;
        let inf = i128::MAX / 4;
        match self.mask {
            Mask::Full => overlap(0, inf, k0, k1),
            Mask::Causal => overlap(0, ii + 1, k0, k1),
            Mask::Local { left, right } => {
                let lo = if *left < 0 { -inf } else { ii - *left as i128 };
                let hi = if *right < 0 {
                    inf
                } else {
                    ii + *right as i128 + 1
                };
                overlap(lo, hi, k0, k1)
            }
            Mask::PrefixLm { prefix } => overlap(0, (ii + 1).max(*prefix as i128), k0, k1),
            Mask::GlobalLocal { window, global } => {
                let (w, g) = (*window as i128, *global as i128);
                if ii < g {
                    overlap(0, inf, k0, k1)
                } else {
                    overlap2(0, g, ii - w, ii + w + 1, k0, k1)
                }
            }
            Mask::Lambda { global, local } => {
                let (g, l) = (*global as i128, *local as i128);
                overlap2(0, g.min(ii + 1), ii - l + 1, ii + 1, k0, k1)
            }
            Mask::ChunkedCausal { chunk } => {
                let c = *chunk as i128;
                overlap(ii.div_euclid(c) * c, ii + 1, k0, k1)
            }
            Mask::DilatedCausal { window, dilation } => {
                let d = *dilation as i128;
                if k1 <= k0 || ii < k0 {
                    return 0;
                }
                let m_hi = ((ii - k0).div_euclid(d)).min(*window as i128);
                let m_lo = ((ii - k1).div_euclid(d) + 1).max(0);
                (m_hi - m_lo + 1).max(0)
            }
            Mask::Document { .. } => self.count_doc(b, self.doc_id(b, i), k0, k1),
            Mask::CausalDocument { .. } => self.count_doc(b, self.doc_id(b, i), k0, k1.min(ii + 1)),
            Mask::ShareQuestion { .. } => {
                let di = self.doc_id(b, i);
                let own = self.count_doc(b, di, k0, k1.min(ii + 1));
                if di != 0 {
                    own + self.count_doc(b, 0, k0, k1)
                } else {
                    own
                }
            }
            Mask::BlockCausalDocument { block, .. } => {
                let bc = *block as i128;
                let end = (ii.div_euclid(bc) + 1) * bc;
                self.count_doc(b, self.doc_id(b, i), k0, k1.min(end))
            }
            Mask::Predicate(_) | Mask::All(_) | Mask::Any(_) => {
                unreachable!("brute-force masks are counted pair by pair")
            }
        }
    }

    /// Allowed pairs between query rows `rows` and keys `keys`, summed over batches and query heads.
    pub fn pairs(&self, rows: Range<usize>, keys: Range<usize>) -> u64 {
        let rows = rows.start.min(self.sq)..rows.end.min(self.sq);
        let keys = keys.start.min(self.sk)..keys.end.min(self.sk);
        if rows.is_empty() || keys.is_empty() {
            return 0;
        }
        if self.brute_force() {
            let mut n = 0u64;
            for b in 0..self.batch {
                for h in 0..self.heads {
                    for r in rows.clone() {
                        let i = self.qpos(r);
                        for j in keys.clone() {
                            n += self.mask.allowed(b, h, i, j as i64, self.sk) as u64;
                        }
                    }
                }
            }
            return n;
        }
        let (k0, k1) = (keys.start as i128, keys.end as i128);
        let per_batch = self.docs.as_ref().is_some_and(|(i, _)| i.len() > 1);
        let batches = if per_batch { self.batch } else { 1 };
        let mut n: i128 = 0;
        for b in 0..batches {
            for r in rows.clone() {
                n += self.row_count(b, self.qpos(r), k0, k1);
            }
        }
        let mult = if per_batch { 1 } else { self.batch } * self.heads;
        (n as u64) * mult as u64
    }

    /// Allowed pairs between the union of `rows` ranges and the union of `keys` ranges.
    pub fn pairs_sets(&self, rows: &[Range<usize>], keys: &[Range<usize>]) -> u64 {
        let mut n = 0;
        for r in rows {
            for k in keys {
                n += self.pairs(r.clone(), k.clone());
            }
        }
        n
    }

    /// Whether any pair between `rows` and `keys` is allowed.
    pub fn any(&self, rows: Range<usize>, keys: Range<usize>) -> bool {
        self.pairs(rows, keys) > 0
    }

    /// Whether any pair between the unions of ranges is allowed (a block a rank must compute).
    pub fn any_sets(&self, rows: &[Range<usize>], keys: &[Range<usize>]) -> bool {
        rows.iter()
            .any(|r| keys.iter().any(|k| self.any(r.clone(), k.clone())))
    }
}
