//! Sequence partitions: which positions each rank owns.
//!
//! ```
//! use attnforge_parallel::Partition;
//! let z = Partition::zigzag(8, 2).unwrap();
//! assert_eq!(z.ranges(0), &[0..2, 6..8]);
//! assert_eq!(z.ranges(1), &[2..4, 4..6]);
//! ```

use std::ops::Range;

use crate::error::{invalid, CpError};

/// A partition of `0..len` (query rows or keys) among ranks: each rank owns a list of
/// disjoint ranges, stored in that order in its shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    len: usize,
    ranks: Vec<Vec<Range<usize>>>,
}

/// `n` nearly equal consecutive pieces of `0..len` (the first `len % n` one longer).
pub fn equal_chunks(len: usize, n: usize) -> Vec<Range<usize>> {
    let (q, r) = (len / n, len % n);
    let mut start = 0;
    (0..n)
        .map(|i| {
            let l = q + usize::from(i < r);
            let c = start..start + l;
            start += l;
            c
        })
        .collect()
}

impl Partition {
    /// A partition from explicit ranges per rank; they must cover `0..len` exactly once.
    pub fn from_ranges(len: usize, ranks: Vec<Vec<Range<usize>>>) -> Result<Self, CpError> {
        if ranks.is_empty() {
            return Err(invalid("world", 0, "pass at least one rank"));
        }
        let mut all: Vec<Range<usize>> = ranks.iter().flatten().cloned().collect();
        all.retain(|r| !r.is_empty());
        all.sort_by_key(|r| r.start);
        let mut next = 0;
        for r in &all {
            if r.start != next {
                return Err(invalid(
                    "partition ranges",
                    format!("{r:?} (expected a range starting at {next})"),
                    "the ranks' ranges must cover 0..len exactly once",
                ));
            }
            next = r.end;
        }
        if next != len {
            return Err(invalid(
                "partition ranges",
                format!("cover 0..{next}"),
                "the ranks' ranges must cover 0..len exactly once",
            ));
        }
        let ranks = ranks
            .into_iter()
            .map(|rs| rs.into_iter().filter(|r| !r.is_empty()).collect())
            .collect();
        Ok(Self { len, ranks })
    }

    fn check_world(world: usize) -> Result<(), CpError> {
        if world == 0 {
            return Err(invalid("world", 0, "pass at least one rank"));
        }
        Ok(())
    }

    /// Rank `r` owns the `r`-th of `world` nearly equal consecutive pieces.
    pub fn contiguous(len: usize, world: usize) -> Result<Self, CpError> {
        Self::check_world(world)?;
        let ranks = equal_chunks(len, world)
            .into_iter()
            .map(|c| vec![c])
            .collect();
        Self::from_ranges(len, ranks)
    }

    /// Zigzag (load-balanced causal ring attention): `2 world` pieces, rank `r` owns pieces
    /// `r` and `2 world - 1 - r`, pairing a cheap early piece with an expensive late one.
    pub fn zigzag(len: usize, world: usize) -> Result<Self, CpError> {
        Self::check_world(world)?;
        let c = equal_chunks(len, 2 * world);
        let ranks = (0..world)
            .map(|r| vec![c[r].clone(), c[2 * world - 1 - r].clone()])
            .collect();
        Self::from_ranges(len, ranks)
    }

    /// Partitioned length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for an empty sequence.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of ranks.
    pub fn world(&self) -> usize {
        self.ranks.len()
    }

    /// The ranges of rank `r`, in shard order.
    pub fn ranges(&self, r: usize) -> &[Range<usize>] {
        &self.ranks[r]
    }

    /// Number of positions rank `r` owns.
    pub fn count(&self, r: usize) -> usize {
        self.ranks[r].iter().map(|x| x.len()).sum()
    }

    /// The largest shard.
    pub fn max_count(&self) -> usize {
        (0..self.world()).map(|r| self.count(r)).max().unwrap_or(0)
    }

    /// The indices rank `r` owns, in shard order.
    pub fn indices(&self, r: usize) -> Vec<usize> {
        self.ranks[r].iter().cloned().flatten().collect()
    }
}
