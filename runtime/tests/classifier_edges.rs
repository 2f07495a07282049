//! The closed-form tile classifiers of every analytic mask, on shapes generated to put tile
//! boundaries exactly on every mask edge.
//!
//! For a `BM x BN` tile, a mask edge (the diagonal, a window edge `p - j = left` or
//! `j - p = right`, the prefix end, the first non-global key or query, the Lambda window end)
//! falls on a tile boundary when the query positions `p = i + Sk - Sq` and the key columns
//! line up with it. The problems here enumerate every alignment instead of drawing them:
//! for each mask and parameter set, `Sk - Sq` runs over every residue modulo `BN` (for a
//! 37-row problem with three query tiles, the last one partial, and for one decoding query
//! with three to four key tiles; `BM` divides `BN`, so every row alignment occurs as well).
//! Each problem runs on the simulator and is checked twice:
//!
//! - the kernel's visited-tile counters (full, partial, mask evaluations) must equal a
//!   brute-force classification of every tile, element by element, from the mask
//!   definitions of variants.md written out below (not from the kernel's classifiers);
//! - the outputs must pass the oracle against the f64 reference (`exec::check`).
//!
//! Each test also asserts that its problems did hit every edge it names at equality and one
//! past it (`c0 == p_hi + right`, `c0 == p_hi + right + 1`, ...), so a change of the
//! generation that stops reaching an edge fails loudly.

use std::collections::BTreeMap;

use attnforge_reference::{Shape4, Tensor4};
use attnforge_runtime::codegen::prelude::*;
use attnforge_runtime::exec::{check, Backend, Inputs, RunParams};
use half::f16;

const BM: usize = 16;
const BN: usize = 32;

/// A mask with its parameters, as defined in variants.md sections 1, 2, 5 and 11.
#[derive(Clone, Copy, Debug)]
enum Def {
    Causal,
    Local {
        left: i64,
        right: i64,
    },
    Prefix {
        prefix: i64,
    },
    GlobalLocal {
        window: i64,
        global: i64,
    },
    Lambda {
        global: i64,
        local: i64,
    },
    /// LM-Infinite; the distance limit is `Sk + dist_over_sk` (negative: below `Sk`).
    LmInfinite {
        global: i64,
        local: i64,
        dist_over_sk: i64,
    },
    /// Section 11 `chunked_causal(C)`.
    Chunked {
        chunk: i64,
    },
    /// Section 11 `dilated_causal(w, d)`.
    Dilated {
        window: i64,
        dilation: i64,
    },
}

impl Def {
    /// 0: `(p, j)` not allowed; otherwise its class. Every mask has one class but
    /// LM-Infinite: 1 near branch (`p - j < L`), 2 far branch (a global key further away);
    /// a tile mixing them evaluates per element, so it is partial.
    fn class(&self, p: i64, j: i64) -> u8 {
        match *self {
            Def::Causal => u8::from(j <= p),
            Def::Local { left, right } => {
                u8::from((left < 0 || j >= p - left) && (right < 0 || j <= p + right))
            }
            Def::Prefix { prefix } => u8::from(j <= p || j < prefix),
            Def::GlobalLocal { window, global } => {
                u8::from((p - j).abs() <= window || p < global || j < global)
            }
            Def::Lambda { global, local } => u8::from(j <= p && (j < global || p - j < local)),
            Def::Chunked { chunk } => {
                u8::from(j <= p && j.div_euclid(chunk) == p.div_euclid(chunk))
            }
            Def::Dilated { window, dilation } => {
                let dist = p - j;
                u8::from(dist >= 0 && dist % dilation == 0 && dist / dilation <= window)
            }
            Def::LmInfinite { global, local, .. } => {
                if j > p {
                    0
                } else if p - j < local {
                    1
                } else if j < global {
                    2
                } else {
                    0
                }
            }
        }
    }

    fn mask(&self) -> Mask {
        match self {
            Def::Causal => Mask::Causal,
            Def::Local { .. } => Mask::Local,
            Def::Prefix { .. } => Mask::PrefixLm,
            Def::GlobalLocal { .. } => Mask::GlobalLocal,
            Def::Lambda { .. } => Mask::LambdaMask,
            Def::LmInfinite { .. } => Mask::LmInfinite,
            Def::Chunked { .. } => Mask::ChunkedCausal,
            Def::Dilated { .. } => Mask::DilatedCausal,
        }
    }

    fn params(&self, sk: usize) -> MaskParams {
        match *self {
            Def::Causal => MaskParams::None,
            Def::Local { left, right } => MaskParams::new()
                .with("window_left", left)
                .with("window_right", right),
            Def::Prefix { prefix } => MaskParams::new().with("prefix_len", prefix),
            Def::GlobalLocal { window, global } => MaskParams::new()
                .with("window", window)
                .with("global_tokens", global),
            Def::Lambda { global, local } => MaskParams::new()
                .with("global_tokens", global)
                .with("local_window", local),
            Def::LmInfinite {
                global,
                local,
                dist_over_sk,
            } => MaskParams::new()
                .with("global_tokens", global)
                .with("local_window", local)
                .with("dist_limit", (sk as i64 + dist_over_sk).max(0))
                .with("rope_theta", 10000.0),
            Def::Chunked { chunk } => MaskParams::new().with("chunk_size", chunk),
            Def::Dilated { window, dilation } => MaskParams::new()
                .with("window", window)
                .with("dilation", dilation),
        }
    }

    /// The edges this mask has, as conditions on an in-range tile `[p_lo, p_hi] x [c0, c1]`:
    /// a boundary of the tile exactly on the edge, and one past it.
    fn edges(&self) -> Vec<(String, OnEdge)> {
        let mut v: Vec<(String, OnEdge)> = Vec::new();
        let mut edge = |name: String, f: OnEdge| v.push((name, f));
        let diagonal = |edge: &mut dyn FnMut(String, OnEdge), min_c0: i64| {
            for d in [0, 1] {
                edge(
                    format!("first key = last query + {d}"),
                    Box::new(move |t: &TileRect| t.c0 == t.p_hi + d && t.c0 >= min_c0),
                );
                edge(
                    format!("last key = first query + {d}"),
                    Box::new(move |t: &TileRect| t.c1 == t.p_lo + d),
                );
            }
        };
        match *self {
            Def::Causal => diagonal(&mut edge, 0),
            Def::Local { left, right } => {
                for d in [0, 1] {
                    if right >= 0 {
                        edge(
                            format!("first key = last query + right + {d}"),
                            Box::new(move |t| t.c0 == t.p_hi + right + d),
                        );
                        edge(
                            format!("last key = first query + right + {d}"),
                            Box::new(move |t| t.c1 == t.p_lo + right + d),
                        );
                    }
                    if left >= 0 {
                        edge(
                            format!("last key = first query - left - {d}"),
                            Box::new(move |t| t.c1 == t.p_lo - left - d),
                        );
                        edge(
                            format!("first key = last query - left - {d}"),
                            Box::new(move |t| t.c0 == t.p_hi - left - d),
                        );
                    }
                }
            }
            Def::Prefix { prefix } => {
                diagonal(&mut edge, 0);
                for d in [0, 1] {
                    edge(
                        format!("first key = prefix - {d}, past the diagonal"),
                        Box::new(move |t| t.c0 == prefix - d && t.c0 > t.p_hi),
                    );
                    edge(
                        format!("last key = prefix - 1 + {d}, past the diagonal"),
                        Box::new(move |t| t.c1 == prefix - 1 + d && t.c1 > t.p_lo),
                    );
                }
            }
            Def::GlobalLocal { window, global } => {
                for d in [0, 1] {
                    edge(
                        format!("first key = last query + window + {d}, no global"),
                        Box::new(move |t| {
                            t.c0 == t.p_hi + window + d && t.p_lo >= global && t.c0 >= global
                        }),
                    );
                    edge(
                        format!("last key = first query - window - {d}, no global query"),
                        Box::new(move |t| t.c1 == t.p_lo - window - d && t.p_lo >= global),
                    );
                    edge(
                        format!("first key = global - 1 + {d}"),
                        Box::new(move |t| t.c0 == global - 1 + d),
                    );
                    edge(
                        format!("first query = global - 1 + {d}"),
                        Box::new(move |t| t.p_lo == global - 1 + d),
                    );
                }
            }
            Def::Lambda { global, local } | Def::LmInfinite { global, local, .. } => {
                diagonal(&mut edge, global);
                for d in [0, 1] {
                    edge(
                        format!("first query - last key = local - 1 + {d}, no global key"),
                        Box::new(move |t| t.p_lo - t.c1 == local - 1 + d && t.c0 >= global),
                    );
                    edge(
                        format!("last query - first key = local - 1 + {d}"),
                        Box::new(move |t| t.p_hi - t.c0 == local - 1 + d && t.c1 <= t.p_lo),
                    );
                    edge(
                        format!("first key = global - 1 + {d}, before the diagonal"),
                        Box::new(move |t| t.c0 == global - 1 + d && t.c0 <= t.p_hi),
                    );
                }
            }
            Def::Chunked { chunk } => {
                diagonal(&mut edge, 0);
                for d in [0, 1] {
                    // full iff the last query's chunk starts at or before the first key
                    edge(
                        format!("last query's chunk start = first key + {d}"),
                        Box::new(move |t| {
                            t.p_hi.div_euclid(chunk) * chunk == t.c0 + d && t.c1 <= t.p_lo
                        }),
                    );
                    // skipped iff the first row at or right of c0 starts its chunk past c1
                    edge(
                        format!("first reaching row's chunk start = last key + {d}"),
                        Box::new(move |t| {
                            let row = t.c0.max(t.p_lo);
                            row <= t.p_hi && row.div_euclid(chunk) * chunk == t.c1 + d
                        }),
                    );
                }
            }
            Def::Dilated { window, dilation } => {
                let reach = window * dilation;
                for d in [0, 1] {
                    edge(
                        format!("last query - first key = reach + {d}"),
                        Box::new(move |t| t.p_hi - t.c0 == reach + d),
                    );
                    // skipped iff the largest allowed distance below the far end is nearer
                    // than the near end
                    edge(
                        format!("largest multiple of d in reach = nearest distance - {d}"),
                        Box::new(move |t| {
                            let far = (t.p_hi - t.c0).min(reach);
                            let near = (t.p_lo - t.c1).max(0);
                            far >= 0 && far / dilation * dilation == near - d
                        }),
                    );
                }
            }
        }
        v
    }
}

/// Whether a tile has a boundary on a given edge.
type OnEdge = Box<dyn Fn(&TileRect) -> bool>;

/// The in-range part of a tile: query positions `[p_lo, p_hi]`, keys `[c0, c1]`.
struct TileRect {
    p_lo: i64,
    p_hi: i64,
    c0: i64,
    c1: i64,
}

/// The problems of one parameter set: `(Sq, Sk)` with `Sk - Sq` over every residue mod
/// `BN`, for 37 queries (three query tiles, the last partial) and for one query (decoding,
/// positions 2 BN .. 3 BN - 1, the smallest of which is the local classifier's smallest
/// failing case Sq = 1, Sk = 65 when BN = 32).
fn shapes() -> Vec<(usize, usize)> {
    let mut v = Vec::new();
    for s in 0..BN {
        v.push((2 * BM + 5, 2 * BM + 5 + s));
        v.push((1, 1 + 2 * BN + s));
    }
    v
}

/// Expected (full, partial, mask evaluations), classifying every element of every tile,
/// and the in-range tiles.
fn census(def: &Def, sq: usize, sk: usize) -> ((u64, u64, u64), Vec<TileRect>) {
    let shift = sk as i64 - sq as i64;
    let (mut full, mut partial, mut evals) = (0, 0, 0);
    let mut tiles = Vec::new();
    for m0 in (0..sq).step_by(BM) {
        let rows = BM.min(sq - m0);
        for n0 in (0..sk).step_by(BN) {
            let cols = BN.min(sk - n0);
            let mut classes = [0usize; 3];
            for i in m0..m0 + rows {
                for j in n0..n0 + cols {
                    classes[def.class(i as i64 + shift, j as i64) as usize] += 1;
                }
            }
            let allowed = classes[1] + classes[2];
            if allowed == rows * cols && (classes[1] == 0 || classes[2] == 0) {
                full += 1;
            } else if allowed > 0 {
                partial += 1;
                evals += (rows * cols) as u64;
            }
            tiles.push(TileRect {
                p_lo: m0 as i64 + shift,
                p_hi: (m0 + rows - 1) as i64 + shift,
                c0: n0 as i64,
                c1: (n0 + cols - 1) as i64,
            });
        }
    }
    ((full, partial, evals), tiles)
}

fn tensor(shape: Shape4, seed: u64) -> Tensor4<f16> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    Tensor4::from_fn(shape, |_, _, _, _| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        f16::from_f64((x >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0)
    })
}

/// Run every problem of every parameter set of one mask; fail with every counter or
/// output mismatch, and with every named edge that no problem reached.
fn check_mask(defs: &[Def]) {
    let spec = KernelSpec::new(DType::F16, HeadDim::D64, defs[0].mask(), ScoreMod::None);
    let tile = TileConfig::new(BM, BN, 1, 1);
    let d = spec.head_dim.get();
    let mut failures = Vec::new();
    let mut hits: BTreeMap<String, usize> = BTreeMap::new();
    for def in defs {
        let edges = def.edges();
        for (name, _) in &edges {
            hits.entry(name.clone()).or_default();
        }
        for (n, (sq, sk)) in shapes().into_iter().enumerate() {
            let (want, tiles) = census(def, sq, sk);
            for (name, hit) in &edges {
                *hits.get_mut(name).expect("named") += tiles.iter().filter(|t| hit(t)).count();
            }
            let seed = n as u64 + 1;
            let x = Inputs::new(
                tensor(Shape4::new(1, 1, sq, d), seed),
                tensor(Shape4::new(1, 1, sk, d), seed ^ 0xA5A5),
                tensor(Shape4::new(1, 1, sk, d), seed ^ 0x5A5A),
            );
            let p = RunParams::default().with_mask(def.params(sk));
            match check(&spec, &tile, &x, &p, &Backend::sim()) {
                Ok(r) => {
                    let c = r.counters.expect("the simulator counts tiles");
                    let got = (c.tiles_full, c.tiles_partial, c.mask_evals);
                    if got != want {
                        failures.push(format!(
                            "{def:?} Sq {sq} Sk {sk}: (full, partial, mask evals) visited {got:?}, brute force {want:?}"
                        ));
                    }
                }
                Err(e) => failures.push(format!("{def:?} Sq {sq} Sk {sk}: {e}")),
            }
        }
    }
    let missed: Vec<&String> = hits
        .iter()
        .filter(|(_, &n)| n == 0)
        .map(|(k, _)| k)
        .collect();
    assert!(
        missed.is_empty(),
        "no problem put a tile boundary on these edges: {missed:?}"
    );
    assert!(
        failures.is_empty(),
        "{} of {} problems failed (the first 20):\n{}",
        failures.len(),
        defs.len() * shapes().len(),
        failures[..failures.len().min(20)].join("\n")
    );
}

#[test]
fn causal_edges() {
    check_mask(&[Def::Causal]);
}

#[test]
fn local_window_edges() {
    check_mask(&[
        // Causal sliding window (FlashAttention's window_size = (w, 0)).
        Def::Local { left: 16, right: 0 },
        Def::Local { left: 5, right: 9 },
        Def::Local {
            left: 40,
            right: 17,
        },
        // One side unbounded.
        Def::Local { left: -1, right: 3 },
        Def::Local { left: 7, right: -1 },
        // Only the diagonal.
        Def::Local { left: 0, right: 0 },
    ]);
}

#[test]
fn prefix_lm_edges() {
    // The prefix end before, on and after key tile boundaries.
    check_mask(&[
        Def::Prefix { prefix: 0 },
        Def::Prefix {
            prefix: BN as i64 - 1,
        },
        Def::Prefix { prefix: BN as i64 },
        Def::Prefix {
            prefix: BN as i64 + 1,
        },
        Def::Prefix {
            prefix: 2 * BN as i64,
        },
    ]);
}

#[test]
fn global_local_edges() {
    check_mask(&[
        Def::GlobalLocal {
            window: 5,
            global: 0,
        },
        Def::GlobalLocal {
            window: 9,
            global: 3,
        },
        Def::GlobalLocal {
            window: 0,
            global: BN as i64,
        },
        Def::GlobalLocal {
            window: BN as i64 + 1,
            global: BM as i64 + 1,
        },
        Def::GlobalLocal {
            window: 2,
            global: BN as i64 + 1,
        },
    ]);
}

#[test]
fn lambda_mask_edges() {
    check_mask(&[
        Def::Lambda {
            global: 0,
            local: 1,
        },
        Def::Lambda {
            global: 4,
            local: 22,
        },
        Def::Lambda {
            global: BN as i64,
            local: 5,
        },
        Def::Lambda {
            global: BN as i64 + 1,
            local: BN as i64,
        },
        Def::Lambda {
            global: 1,
            local: 2 * BN as i64,
        },
    ]);
}

#[test]
fn lm_infinite_edges() {
    // Distance limit at Sk (the clamp min(Dlim, Sk - 1) decides) and below it.
    check_mask(&[
        Def::LmInfinite {
            global: 4,
            local: 22,
            dist_over_sk: 0,
        },
        Def::LmInfinite {
            global: BN as i64,
            local: 5,
            dist_over_sk: -40,
        },
        Def::LmInfinite {
            global: BN as i64 + 1,
            local: BN as i64,
            dist_over_sk: 0,
        },
    ]);
}

#[test]
fn chunked_causal_edges() {
    // Chunks shorter than, equal to, one past and longer than a key tile, and of one key.
    check_mask(&[
        Def::Chunked { chunk: 1 },
        Def::Chunked { chunk: 7 },
        Def::Chunked { chunk: BN as i64 },
        Def::Chunked {
            chunk: BN as i64 + 1,
        },
        Def::Chunked {
            chunk: 2 * BN as i64 + 5,
        },
    ]);
}

#[test]
fn dilated_causal_edges() {
    // d = 1 (the causal sliding window: full tiles), small d, d past a key tile (tiles
    // between two allowed distances are skipped) and w = 0 (the diagonal only).
    check_mask(&[
        Def::Dilated {
            window: 9,
            dilation: 1,
        },
        Def::Dilated {
            window: 5,
            dilation: 3,
        },
        Def::Dilated {
            window: 2,
            dilation: BN as i64 + 3,
        },
        Def::Dilated {
            window: 0,
            dilation: 4,
        },
    ]);
}

// ---- list-driven document masks: the host builds the block lists, the kernel walks them ----

/// Query and key block of the document masks' block lists (`BM` divides `BQ`, `BN` `BK`).
const BQ: usize = 32;
const BK: usize = 64;

/// A document mask of variants.md section 2 over per-token ids.
#[derive(Clone, Copy, Debug)]
enum DocDef {
    Document,
    CausalDocument,
    ShareQuestion,
    BlockCausal { block: i64 },
}

impl DocDef {
    fn allowed(&self, doc: &[i32], p: i64, j: i64) -> bool {
        let (dp, dj) = (doc[p as usize], doc[j as usize]);
        match *self {
            DocDef::Document => dp == dj,
            DocDef::CausalDocument => dp == dj && j <= p,
            DocDef::ShareQuestion => (dp != 0 && dj == 0) || (dp == dj && j <= p),
            DocDef::BlockCausal { block } => dp == dj && j / block <= p / block,
        }
    }
}

/// Ids with document boundaries at `cuts` (ids 0, 1, ...; share-question: the first
/// segment, id 0, is the question).
fn doc_ids(sk: usize, cuts: &[usize]) -> Vec<i32> {
    (0..sk)
        .map(|j| cuts.iter().filter(|&&c| j >= c).count() as i32)
        .collect()
}

/// Expected counters: each `BQ x BK` block classified element by element (full, partial or
/// absent; variants.md section 4), then every `BM`-row query tile of a block row visits the `BN`-wide sub-tiles of
/// its listed blocks that start before `Sk`.
fn doc_census(def: &DocDef, doc: &[i32], sq: usize, sk: usize) -> (u64, u64, u64) {
    let shift = sk as i64 - sq as i64;
    let (mut full, mut partial, mut evals) = (0, 0, 0);
    for r0 in (0..sq).step_by(BQ) {
        for c0 in (0..sk).step_by(BK) {
            let (mut n, mut total) = (0, 0);
            for i in r0..(r0 + BQ).min(sq) {
                for j in c0..(c0 + BK).min(sk) {
                    n += usize::from(def.allowed(doc, i as i64 + shift, j as i64));
                    total += 1;
                }
            }
            if n == 0 {
                continue;
            }
            for m0 in (r0..(r0 + BQ).min(sq)).step_by(BM) {
                let rows = BM.min(sq - m0);
                for n0 in (c0..c0 + BK).step_by(BN).filter(|&n0| n0 < sk) {
                    // variants.md section 4: full only when all BQ x BK elements are in
                    // range and allowed (an edge block is partial)
                    if n == total && total == BQ * BK {
                        full += 1;
                    } else {
                        partial += 1;
                        evals += (rows * BN.min(sk - n0)) as u64;
                    }
                }
            }
        }
    }
    (full, partial, evals)
}

fn check_doc_mask(def: DocDef, mask: Mask) {
    let mut spec = KernelSpec::new(DType::F16, HeadDim::D64, mask, ScoreMod::None);
    spec.sparse_block = BlockSize { q: BQ, k: BK };
    let tile = TileConfig::new(BM, BN, 1, 1);
    let d = spec.head_dim.get();
    // Boundaries one before, on and one after key-block and key-tile edges; the question
    // (share-question) ends on a tile edge or one before it.
    let layouts: [&[usize]; 3] = [&[BN - 1, BK, BK + 1], &[BN, BK - 1, 2 * BK], &[1, BN + 1]];
    let mut failures = Vec::new();
    let mut problems = 0;
    for cuts in layouts {
        for s in 0..BK {
            let (sq, sk) = (2 * BQ + 5, 2 * BQ + 5 + s);
            problems += 1;
            let doc = doc_ids(sk, cuts);
            let want = doc_census(&def, &doc, sq, sk);
            let seed = s as u64 + 1;
            let x = Inputs::new(
                tensor(Shape4::new(1, 1, sq, d), seed),
                tensor(Shape4::new(1, 1, sk, d), seed ^ 0xA5A5),
                tensor(Shape4::new(1, 1, sk, d), seed ^ 0x5A5A),
            );
            let mp = match def {
                DocDef::BlockCausal { block } => MaskParams::new().with("doc_block", block),
                _ => MaskParams::None,
            };
            let p = RunParams::default().with_mask(mp).with_doc(doc);
            match check(&spec, &tile, &x, &p, &Backend::sim()) {
                Ok(r) => {
                    let c = r.counters.expect("the simulator counts tiles");
                    let got = (c.tiles_full, c.tiles_partial, c.mask_evals);
                    if got != want {
                        failures.push(format!(
                            "{def:?} cuts {cuts:?} Sq {sq} Sk {sk}: visited {got:?}, brute force {want:?}"
                        ));
                    }
                }
                Err(e) => failures.push(format!("{def:?} cuts {cuts:?} Sq {sq} Sk {sk}: {e}")),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {problems} problems failed (the first 20):\n{}",
        failures.len(),
        failures[..failures.len().min(20)].join("\n")
    );
}

#[test]
fn document_mask_edges() {
    check_doc_mask(DocDef::Document, Mask::Document);
    check_doc_mask(DocDef::CausalDocument, Mask::CausalDocument);
    check_doc_mask(DocDef::ShareQuestion, Mask::ShareQuestion);
    // Chunk boundaries on, before and after key-tile edges.
    for block in [BN as i64 - 1, BN as i64, BN as i64 + 1] {
        check_doc_mask(DocDef::BlockCausal { block }, Mask::BlockCausalDocument);
    }
}
