//! The problems `attnforge check` runs for a built-in catalog entry, and the brute-force
//! tile census its visited-tile counters are compared with.
//!
//! A spec file is checked on its own `[problem]`. A catalog entry is checked on a suite of
//! problems chosen to reach every code path a user's run can take (docs/correctness.md,
//! "What `check --all` runs"): the catalog problem itself; a rectangular problem (`Sq < Sk`,
//! lengths that are not tile multiples, batch 2, three query heads or GQA with `Hq = 6,
//! Hkv = 2`, non-default runtime parameters) on one tile per pipeline stage count of the
//! default tuning space; `Sq > Sk` for full and causal attention; problems whose shapes put
//! mask edges exactly on tile boundaries; large-magnitude inputs (|scores| of a few
//! hundred); and "siblings", the same variant where the entry's own flags cannot reach a
//! code path: a GQA twin for head-indexed score modifications (ALiBi slopes, user tables)
//! and an f32 twin for softcap (f32 kernels use `tanhf`, f16/bf16 a fast form).

use std::collections::BTreeSet;
use std::sync::Arc;

use attnforge::codegen::dynamic::DynamicSpec;
use attnforge::codegen::masks::{DocRule, EdgeCase};
use attnforge::codegen::prelude::*;
use attnforge::codegen::shape::Shape;
use attnforge::exec::{RunParams, UserValue};
use attnforge::reference::LmInfiniteParams;
use attnforge::reference::Mask as RefMask;
use attnforge::specfile::{DocSource, DynSpecFile, SpecFile};

/// Inputs of the large-magnitude problem are uniform in `[-LARGE, LARGE)`: scores
/// `scale * q.k` then have a standard deviation of `LARGE^2 / 3` (about 85) and reach a few
/// hundred, while q and k stay far inside the range of f16 and bf16.
pub const LARGE: f32 = 16.0;

/// The extra problem of a dynamic catalog entry, when its own problem cannot reach a code
/// path: CCA's catalog window (1024) leaves 3 pooled groups among about 1000 raw keys, whose
/// share of the softmax is too small for the oracle to see the pooling; a 64-key window
/// with 8 pooled groups and GQA (`Hq = 4, Hkv = 2`, batch 2) makes the core tokens weigh.
pub fn dynamic_extra(df: &DynSpecFile) -> Option<(String, DynSpecFile)> {
    if let DynamicSpec::Longheads { .. } = df.spec {
        return longheads_extra(df);
    }
    let DynamicSpec::Cca { group, .. } = df.spec else {
        return None;
    };
    if df.path.is_some() {
        return None;
    }
    let window = 64;
    let seq = window + 8 * group + 5;
    let mut f = df.clone();
    if let DynamicSpec::Cca { window: w, .. } = &mut f.spec {
        *w = window;
    }
    f.problem.batch = 2;
    f.problem.heads_q = 4;
    f.problem.heads_kv = 2;
    f.problem.seq_q = seq;
    f.problem.seq_k = seq;
    let label = format!("window {window}, B2 Hq4 Hkv2 S{seq}");
    Some((label, f))
}

/// LongHeads: the catalog's own problem is decoding rows at the default sizes (w = 256,
/// B = 4096), too long for the summary kernel on the simulator; the extra problem is a
/// prefill (all three kernels) with w = 16, M = 4, B = 32, 117 tokens (rows below and above
/// B, 5 candidate chunks), GQA (`Hq = 4, Hkv = 2`).
fn longheads_extra(df: &DynSpecFile) -> Option<(String, DynSpecFile)> {
    if df.path.is_some() {
        return None;
    }
    let mut f = df.clone();
    if let DynamicSpec::Longheads {
        chunk,
        chunks_per_query,
        begin,
        ..
    } = &mut f.spec
    {
        (*chunk, *chunks_per_query, *begin) = (16, 4, 32);
    }
    f.problem.batch = 1;
    f.problem.heads_q = 4;
    f.problem.heads_kv = 2;
    f.problem.seq_q = 117;
    f.problem.seq_k = 117;
    Some(("prefill w16 M4 B32, Hq4 Hkv2 S117".into(), f))
}

/// One problem of the suite: a full spec file (spec, runtime parameters, `[problem]` sizes
/// and `[tune] tile`) plus the magnitude of its random inputs.
pub struct CheckCase {
    /// What the problem exercises, with its sizes, parameters and tile.
    pub label: String,
    /// The spec file the problem runs (its `tune.tile` is set).
    pub file: SpecFile,
    /// Inputs are uniform in `[-magnitude, magnitude)`.
    pub magnitude: f32,
}

/// The suite of a catalog entry (the entry's own problem first).
pub fn catalog_cases(base: &SpecFile) -> Vec<CheckCase> {
    let spec = &base.spec;
    let arch = base.tune.arch;
    let Some(tile) = base.tune.tile.or_else(|| default_tile(spec, arch)) else {
        // No tile fits: the plain check reports that as an input error.
        return vec![CheckCase {
            label: "catalog problem".into(),
            file: base.clone(),
            magnitude: 1.0,
        }];
    };
    let (bm, bn) = (tile.block_m, tile.block_n);
    let own = Shape {
        batch: base.problem.batch,
        heads_q: base.problem.heads_q,
        heads_kv: base.problem.heads_kv,
        seq_q: base.problem.seq_q,
        seq_k: base.problem.seq_k,
    };
    let mut v = vec![case("catalog problem", base.clone(), tile, 1.0)];
    // Rectangular: one query tile with rows past seq_q, five key tiles, the last partial.
    let rect = Shape {
        batch: 2,
        heads_q: if spec.gqa { 6 } else { 3 },
        heads_kv: if spec.gqa { 2 } else { 3 },
        seq_q: bm - 19,
        seq_k: 4 * bn + 29,
    };
    for t in stage_tiles(spec, arch, tile) {
        v.push(case("rectangular", rectangular(base, rect), t, 1.0));
    }
    if spec.mask.allows_sq_gt_sk() && spec.score == ScoreMod::None {
        // Queries before the first key: rows with p(i) < 0 are empty (causal) inside tiles
        // that also hold non-empty rows.
        let s = Shape {
            batch: 1,
            seq_q: 2 * bm + 7,
            seq_k: bn + 13,
            ..own
        };
        v.push(case("sq > sk", resized(base, s), tile, 1.0));
    }
    for (what, s, mp) in edge_problems(&spec.mask, own, bm, bn) {
        let mut f = resized(base, s);
        f.mask_params = mp;
        v.push(case(what, f, tile, 1.0));
    }
    v.push(case("large magnitude", base.clone(), tile, LARGE));
    // Siblings.
    if matches!(spec.score, ScoreMod::Alibi | ScoreMod::User(_)) && !spec.gqa {
        let mut f = rectangular(
            base,
            Shape {
                heads_q: 6,
                heads_kv: 2,
                ..rect
            },
        );
        f.spec = f.spec.with_gqa();
        v.push(case("gqa twin, rectangular", f, tile, 1.0));
    }
    if spec.score == ScoreMod::Softcap && spec.dtype != DType::F32 {
        let mut twin = base.clone();
        twin.spec.dtype = DType::F32;
        if let Some(t) = default_tile(&twin.spec, arch) {
            v.push(case("f32 twin, catalog problem", twin.clone(), t, 1.0));
            v.push(case(
                "f32 twin, rectangular",
                rectangular(&twin, rect),
                t,
                1.0,
            ));
            v.push(case("f32 twin, large magnitude", twin, t, LARGE));
        }
    }
    v
}

/// The default tile, then for every other pipeline stage count of the default search
/// space one tile with that count (the same block shape when the space has it).
fn stage_tiles(spec: &KernelSpec, arch: Arch, tile: TileConfig) -> Vec<TileConfig> {
    let space = default_search_space(spec, arch);
    let stages: BTreeSet<usize> = space.iter().map(|t| t.stages).collect();
    let mut v = vec![tile];
    for st in stages.into_iter().filter(|&s| s != tile.stages) {
        let same_shape = space
            .iter()
            .find(|t| t.stages == st && t.block_m == tile.block_m && t.block_n == tile.block_n);
        if let Some(t) = same_shape.or_else(|| space.iter().find(|t| t.stages == st)) {
            v.push(*t);
        }
    }
    v
}

fn case(what: &str, mut file: SpecFile, tile: TileConfig, magnitude: f32) -> CheckCase {
    file.tune.tile = Some(tile);
    let p = file.problem;
    let mut label = format!(
        "{what}: {} B{} Hq{} Hkv{} Sq{} Sk{}",
        file.spec.canonical_name(),
        p.batch,
        p.heads_q,
        p.heads_kv,
        p.seq_q,
        p.seq_k
    );
    if file.mask_params != MaskParams::None {
        label.push_str(&format!(" {:?}", file.mask_params));
    }
    if let Some(c) = file.softcap {
        label.push_str(&format!(" softcap {c}"));
    }
    if let Some(s) = &file.alibi_slopes {
        label.push_str(&format!(" slopes {s:?}"));
    }
    label.push_str(&format!(" tile {}", tile.suffix()));
    if magnitude != 1.0 {
        label.push_str(&format!(" inputs x{magnitude}"));
    }
    CheckCase {
        label,
        file,
        magnitude,
    }
}

/// `base` with new sizes; the runtime parameters whose size depends on the shape (document
/// ids, block lists, per-head tables) are regenerated for it.
pub(super) fn resized(base: &SpecFile, s: Shape) -> SpecFile {
    let mut f = base.clone();
    f.problem.batch = s.batch;
    f.problem.heads_q = s.heads_q;
    f.problem.heads_kv = s.heads_kv;
    f.problem.seq_q = s.seq_q;
    f.problem.seq_k = s.seq_k;
    if f.doc.is_some() {
        f.doc = Some(DocSource::Ids(doc_ids(&f.spec.mask, s.batch, s.seq_k)));
    }
    if let Mask::BlockSparse { .. } = f.spec.mask {
        f.block_lists = Some(mixed_lists(&f.spec, s));
    }
    if let Some(UserValue::Floats(_)) = f.user.get("bias") {
        let bias = (0..s.heads_q).map(|h| 0.4 * h as f32 - 0.5).collect();
        f.user.insert("bias".into(), UserValue::Floats(bias));
    }
    if f.alibi_slopes.is_some() {
        f.alibi_slopes = Some(slopes(s.heads_q));
    }
    f
}

/// Per-head ALiBi slopes that differ from every standard slope and from each other.
fn slopes(heads_q: usize) -> Vec<f32> {
    (0..heads_q).map(|h| 0.3 / (h + 1) as f32).collect()
}

/// The rectangular problem: `base` resized to `s` with non-default runtime parameters
/// (the mask table's stress values: windows and prefixes that cut through tiles, a
/// distance limit past `Sk`; softcap 0.5,
/// per-head slopes, another dilation stride).
fn rectangular(base: &SpecFile, s: Shape) -> SpecFile {
    let mut f = resized(base, s);
    if let Mask::Builtin(m) = f.spec.mask {
        f.mask_params = MaskParams::stress(m, s.seq_k);
    }
    if f.softcap.is_some() {
        f.softcap = Some(0.5);
    }
    if f.spec.score == ScoreMod::Alibi {
        f.alibi_slopes = Some(slopes(s.heads_q));
    }
    if f.user.contains_key("stride") {
        f.user.insert("stride".into(), UserValue::Int(2));
    }
    if f.user.contains_key("decay") {
        f.user.insert("decay".into(), UserValue::Float(0.1));
    }
    f
}

/// Problems whose tile boundaries fall exactly on the mask's edges for a `bm x bn` tile
/// (the mask table's [`EdgeCase`]s), with the shape's batch and heads.
fn edge_problems(
    mask: &Mask,
    own: Shape,
    bm: usize,
    bn: usize,
) -> Vec<(&'static str, Shape, MaskParams)> {
    let Mask::Builtin(m) = *mask else {
        return Vec::new();
    };
    (m.def().tile_edges)(bm, bn)
        .into_iter()
        .map(|e: EdgeCase| {
            let shape = Shape {
                batch: 1,
                seq_q: e.seq_q,
                seq_k: e.seq_k,
                ..own
            };
            (e.label, shape, MaskParams::from_ordered(m, &e.values))
        })
        .collect()
}

/// Document ids for `batch x sk` keys (batch-major), with boundaries inside tiles and on
/// the 128-key block boundary of the default block lists; for share-question a question
/// prefix (id 0) of a different length per batch.
fn doc_ids(mask: &Mask, batch: usize, sk: usize) -> Vec<i32> {
    let mut v = Vec::with_capacity(batch * sk);
    for b in 0..batch {
        let cuts = [37 + 11 * b, 128, sk.saturating_sub(20 + b)];
        let question_prefix = mask
            .def()
            .is_some_and(|d| d.doc_rule == DocRule::QuestionPrefix);
        let question = if question_prefix {
            (30 + 17 * b).min(sk)
        } else {
            0
        };
        for j in 0..sk {
            let id = cuts.iter().filter(|&&c| j >= c).count() as i32;
            v.push(match (question_prefix, j < question) {
                (true, true) => 0,
                (true, false) => id + 1,
                (false, _) => id,
            });
        }
    }
    v
}

/// Explicit block lists per batch and query head mixing full, partial and absent blocks.
fn mixed_lists(spec: &KernelSpec, s: Shape) -> BlockLists {
    let bs = spec.sparse_block;
    let rows = s.seq_q.div_ceil(bs.q);
    let cols = s.seq_k.div_ceil(bs.k);
    let mut table = Vec::new();
    for b in 0..s.batch {
        for h in 0..s.heads_q {
            for r in 0..rows {
                let (mut full, mut partial) = (Vec::new(), Vec::new());
                for c in 0..cols {
                    match (b + 2 * h + r + c) % 3 {
                        0 => full.push(c as i32),
                        1 => partial.push(c as i32),
                        _ => {}
                    }
                }
                table.push((full, partial));
            }
        }
    }
    BlockLists::from_rows(s.batch, s.heads_q, rows, cols, &table)
}

/// What element `(p, j)` is for the tile census: 0 masked, else a class; a tile is full when
/// every in-range element has the same non-zero class.
type ElementClass = Box<dyn Fn(usize, usize, i64, i64) -> u8>;

/// The element classes of the spec's mask, from the reference's mask definitions (not the
/// kernel's classifiers). LM-Infinite: 1 near branch, 2 far branch (a tile mixing them
/// must evaluate per element, so it is partial).
fn element_class(spec: &KernelSpec, rp: &RunParams, sk: usize) -> Option<ElementClass> {
    let mp = rp.mask.clone().unwrap_or(MaskParams::None);
    let named: Vec<(&str, f64)> = mp.iter().collect();
    let m = match &spec.mask {
        Mask::Builtin(b) => {
            let m = RefMask::builtin(b.tag(), &named, &rp.doc.clone().unwrap_or_default()).ok()?;
            if spec.mask.lm_infinite_scoring() {
                let local = LmInfiniteParams::from_values(&named).local as i64;
                return Some(Box::new(move |b, h, p, j| {
                    if !m.allowed(b, h, p, j, sk) {
                        0
                    } else if p - j < local {
                        1
                    } else {
                        2
                    }
                }));
            }
            m
        }
        Mask::BlockSparse { mask: None } => RefMask::Full,
        Mask::Predicate(_) | Mask::BlockSparse { mask: Some(_) } => {
            let f = rp.host_mask.clone()?;
            RefMask::Predicate(Arc::new(move |b, h, i, j| f(b, h, i, j)))
        }
    };
    Some(Box::new(move |b, h, p, j| {
        u8::from(m.allowed(b, h, p, j, sk))
    }))
}

/// Block lists for a list-driven mask built on the host from the reference's mask (what
/// `exec` builds when none are given), so that the census knows the kernel's lists.
pub fn host_lists(spec: &KernelSpec, rp: &RunParams, d: Shape) -> Option<BlockLists> {
    if !spec.mask.uses_block_lists() || rp.block_lists.is_some() {
        return None;
    }
    let class = element_class(spec, rp, d.seq_k)?;
    let heads = if matches!(spec.mask, Mask::Predicate(_)) {
        d.heads_q
    } else {
        1
    };
    Some(build_block_lists(
        d.batch,
        heads,
        d.seq_q,
        d.seq_k,
        spec.sparse_block,
        |b, h, p, j| class(b, h, p, j) != 0,
    ))
}

/// The (full, partial, mask evaluations) counters a correct kernel reports, by brute force:
/// analytic masks classify every element of every `block_m x block_n` tile; list-driven
/// masks visit exactly the listed blocks' tiles that start before `Sk`. `None` when the
/// census does not know the mask (a user predicate without a Rust twin).
pub fn tile_census(
    spec: &KernelSpec,
    tile: &TileConfig,
    rp: &RunParams,
    d: Shape,
) -> Option<(u64, u64, u64)> {
    let (bm, bn) = (tile.block_m, tile.block_n);
    let shift = d.seq_k as i64 - d.seq_q as i64;
    let has_element_mask = match &spec.mask {
        Mask::Builtin(m) => m.def().element_fn.is_some(),
        Mask::BlockSparse { mask: None } => false,
        Mask::Predicate(_) | Mask::BlockSparse { mask: Some(_) } => true,
    };
    let lists = rp.block_lists.as_ref();
    let class = if lists.is_some() {
        None
    } else {
        Some(element_class(spec, rp, d.seq_k)?)
    };
    let (mut full, mut partial, mut evals) = (0u64, 0u64, 0u64);
    for b in 0..d.batch {
        for h in 0..d.heads_q {
            for m0 in (0..d.seq_q).step_by(bm) {
                let rows = bm.min(d.seq_q - m0);
                let tiles: Vec<(usize, Option<bool>)> = match lists {
                    Some(l) => {
                        let bs = spec.sparse_block;
                        let r = m0 / bs.q;
                        let mut t = Vec::new();
                        for (is_full, blocks) in
                            [(true, l.full(b, h, r)), (false, l.partial(b, h, r))]
                        {
                            for &blk in blocks {
                                let start = blk as usize * bs.k;
                                for n0 in (start..start + bs.k).step_by(bn) {
                                    if n0 < d.seq_k {
                                        t.push((n0, Some(is_full)));
                                    }
                                }
                            }
                        }
                        t
                    }
                    None => (0..d.seq_k).step_by(bn).map(|n0| (n0, None)).collect(),
                };
                for (n0, listed) in tiles {
                    let cols = bn.min(d.seq_k - n0);
                    let is_full = match (listed, &class) {
                        (Some(f), _) => Some(f),
                        (None, Some(class)) => {
                            let (mut classes, mut masked) = (BTreeSet::new(), 0usize);
                            for i in m0..m0 + rows {
                                for j in n0..n0 + cols {
                                    match class(b, h, i as i64 + shift, j as i64) {
                                        0 => masked += 1,
                                        c => {
                                            classes.insert(c);
                                        }
                                    }
                                }
                            }
                            if classes.is_empty() {
                                None
                            } else {
                                Some(masked == 0 && classes.len() == 1)
                            }
                        }
                        (None, None) => unreachable!("analytic masks have a class"),
                    };
                    match is_full {
                        Some(true) => full += 1,
                        Some(false) => {
                            partial += 1;
                            if has_element_mask {
                                evals += (rows * cols) as u64;
                            }
                        }
                        None => {}
                    }
                }
            }
        }
    }
    Some((full, partial, evals))
}
