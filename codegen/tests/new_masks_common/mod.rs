//! Shared by `new_masks_host.rs` and `new_masks_sim.rs`: the section 11 masks written from
//! the text of variants.md (not from the code under test), the parameter sets at their range
//! edges, and brute-force tile classes and key ranges over a grid of positions.
#![allow(dead_code)]

use attnforge_codegen::blocks::TileKind;

/// Grid side: positions `base + [0, N)` on both axes, every interval of them as a tile side.
pub const N: usize = 64;

/// The largest `int` parameter (the kernels take `int`).
pub const INT_MAX: i64 = i32::MAX as i64;

/// One of the two masks with its parameters.
#[derive(Clone, Copy, Debug)]
pub enum Def {
    /// `chunked_causal(C)`.
    Chunked(i64),
    /// `dilated_causal(w, d)`.
    Dilated(i64, i64),
}

impl Def {
    /// variants.md section 11, literally: `j <= p` and `floor(j / C) == floor(p / C)`;
    /// `j <= p`, `(p - j) mod d == 0` and `(p - j) / d <= w`.
    pub fn allowed(self, p: i64, j: i64) -> bool {
        let (p, j) = (p as i128, j as i128);
        match self {
            Def::Chunked(c) => {
                let c = c as i128;
                j <= p && j.div_euclid(c) == p.div_euclid(c)
            }
            Def::Dilated(w, d) => {
                let d = d as i128;
                j <= p && (p - j) % d == 0 && (p - j) / d <= w as i128
            }
        }
    }

    /// The reference's mask (the oracle).
    pub fn reference(self) -> attnforge_reference::Mask {
        match self {
            Def::Chunked(c) => attnforge_reference::Mask::ChunkedCausal { chunk: c as usize },
            Def::Dilated(w, d) => attnforge_reference::Mask::DilatedCausal {
                window: w as usize,
                dilation: d as usize,
            },
        }
    }
}

/// Parameters at the range edges (`C = 1`, `w = 0`, `d = 1`, `INT_MAX`, `w d` past
/// `INT_MAX`), around the grid side (a chunk or window ending exactly on the last position,
/// one before, one past) and in between.
pub fn defs() -> Vec<Def> {
    let mut v: Vec<Def> = [
        1, 2, 3, 4, 5, 7, 8, 13, 16, 31, 32, 33, 63, 64, 65, 1000, INT_MAX,
    ]
    .into_iter()
    .map(Def::Chunked)
    .collect();
    v.extend(
        [
            (0, 1),
            (0, 2),
            (0, 64),
            (1, 1),
            (2, 1),
            (5, 1),
            (62, 1),
            (63, 1),
            (64, 1),
            (1, 2),
            (3, 2),
            (2, 3),
            (4, 5),
            (7, 4),
            (3, 7),
            (10, 3),
            (1, 62),
            (1, 63),
            (1, 64),
            (2, 21),
            (31, 2),
            (0, INT_MAX),
            (1, INT_MAX),
            (INT_MAX, 1),
            (INT_MAX, 2),
            (INT_MAX, INT_MAX),
            (65536, 65536),
        ]
        .into_iter()
        .map(|(w, d)| Def::Dilated(w, d)),
    );
    v
}

/// Parameters for the grid at the top of the `int` range.
pub fn high_defs() -> Vec<Def> {
    vec![
        Def::Chunked(1),
        Def::Chunked(7),
        Def::Chunked(32),
        Def::Chunked(INT_MAX),
        Def::Dilated(0, 1),
        Def::Dilated(3, 5),
        Def::Dilated(40, 1),
        Def::Dilated(1, INT_MAX),
        Def::Dilated(INT_MAX, 1),
        Def::Dilated(INT_MAX, 3),
        Def::Dilated(65536, 65536),
        Def::Dilated(INT_MAX, INT_MAX),
    ]
}

/// Every interval `[lo, hi]` of `[0, N)`.
pub fn intervals() -> Vec<(i64, i64)> {
    let n = N as i64;
    (0..n)
        .flat_map(|lo| (lo..n).map(move |hi| (lo, hi)))
        .collect()
}

/// The text's predicate over `base + [0, N)` squared, with 2D prefix counts.
pub struct Grid {
    /// First position.
    pub base: i64,
    /// `allowed[p * N + j]` at positions `base + p`, `base + j`.
    pub allowed: Vec<bool>,
    sums: Vec<u32>,
}

impl Grid {
    /// The grid of `def` at `base`.
    pub fn new(def: Def, base: i64) -> Grid {
        let allowed: Vec<bool> = (0..N * N)
            .map(|e| def.allowed(base + (e / N) as i64, base + (e % N) as i64))
            .collect();
        let mut sums = vec![0u32; (N + 1) * (N + 1)];
        for p in 0..N {
            for j in 0..N {
                sums[(p + 1) * (N + 1) + j + 1] = u32::from(allowed[p * N + j])
                    + sums[p * (N + 1) + j + 1]
                    + sums[(p + 1) * (N + 1) + j]
                    - sums[p * (N + 1) + j];
            }
        }
        Grid {
            base,
            allowed,
            sums,
        }
    }

    /// Tile class from the allowed count of grid rows `plo..=phi`, columns `c0..=c1`.
    pub fn tile(&self, plo: i64, phi: i64, c0: i64, c1: i64) -> TileKind {
        let w = N + 1;
        let (r0, r1, k0, k1) = (plo as usize, phi as usize + 1, c0 as usize, c1 as usize + 1);
        let count = self.sums[r1 * w + k1] + self.sums[r0 * w + k0]
            - self.sums[r0 * w + k1]
            - self.sums[r1 * w + k0];
        let area = ((r1 - r0) * (k1 - k0)) as u32;
        match count {
            0 => TileKind::Skip,
            c if c == area => TileKind::Full,
            _ => TileKind::Partial,
        }
    }

    /// With `base == 0` and `seq_k == N`: every row's first and last allowed key (None when
    /// the row is empty), to take the key range of a block from.
    pub fn row_extents(&self) -> Vec<Option<(i64, i64)>> {
        assert_eq!(
            self.base, 0,
            "key ranges are brute-forced on the grid at 0 only"
        );
        (0..N)
            .map(|p| {
                let row = &self.allowed[p * N..(p + 1) * N];
                let first = row.iter().position(|a| *a)?;
                let last = row.iter().rposition(|a| *a)?;
                Some((first as i64, last as i64))
            })
            .collect()
    }
}

/// The exact key range `[lo, hi)` of grid rows `plo..=phi`: the first key any row sees and
/// one past the last; None when no row sees a key.
pub fn key_range(extents: &[Option<(i64, i64)>], plo: i64, phi: i64) -> Option<(i64, i64)> {
    let rows = &extents[plo as usize..=phi as usize];
    let lo = rows.iter().flatten().map(|e| e.0).min()?;
    let hi = rows.iter().flatten().map(|e| e.1).max()? + 1;
    Some((lo, hi))
}
