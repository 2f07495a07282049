//! Running a serving-layout kernel (variants.md section 13): packed variable-length
//! sequences ([`Layout::Varlen`]), a paged KV cache ([`Layout::Paged`]) or decoding on a paged
//! cache ([`Layout::Decode`]: GQA groups packed into the M tile, the keys split
//! `RunParams::num_splits` ways, default [`decode_splits`]; with more than one split the
//! simulator also runs the split-KV merge kernel on the f32 partials).
//!
//! [`validate`] checks the layout on the host before any launch
//! ([`attnforge_codegen::serving::validate_serving`]: every error names the array and the
//! index, e.g. `cu_seqlens_k[2]` or `block_table[1][0]`); [`simulate`] turns the inputs into
//! the kernel's arguments (an exhaustive match on each argument's role) and runs the exact
//! generated CUDA on the simulator; [`reference()`] is the reference's serving function
//! ([`attnforge_reference::serving_attention`]: each sequence gathered and run through the
//! dense reference); [`check`] compares the two with the oracle of the dense check
//! ([`crate::pipeline::compare`]).
//!
//! The lengths (`cu_seqlens_*`, `seqlens_k`, the page table, the page size) are kernel
//! arguments: one compiled kernel serves every batch (the simulator's kernel cache is keyed
//! by the source, which does not depend on them).
//!
//! ```no_run
//! use attnforge_runtime::exec::RunParams;
//! use attnforge_runtime::exec_serving::{check, ServingInputs, ServingKeys};
//! use attnforge_codegen::prelude::*;
//! use attnforge_codegen::spec::Layout;
//! use attnforge_reference::Packed;
//! let spec = KernelSpec::new(DType::F32, HeadDim::D64, Mask::Causal, ScoreMod::None)
//!     .with_layout(Layout::Varlen);
//! let tile = default_tile(&spec, Arch::Sm80).unwrap();
//! let f = |t: usize, h: usize, d: usize| ((t * 3 + h + d) % 7) as f32 / 7.0;
//! let x = ServingInputs {
//!     q: Packed::from_fn(5, 2, 64, f),
//!     cu_seqlens_q: vec![0, 2, 5],
//!     keys: ServingKeys::Varlen {
//!         k: Packed::from_fn(9, 2, 64, f),
//!         v: Packed::from_fn(9, 2, 64, f),
//!         cu_seqlens_k: vec![0, 4, 9],
//!     },
//! };
//! let cfg = attnforge_sim::SimConfig::new(attnforge_sim::Schedule::Forward);
//! let r = check(&spec, &tile, &x, &RunParams::default(), &cfg).unwrap();
//! println!("max error {:e}", r.close.out.max_err);
//! ```

use attnforge_codegen::args::{
    typed_kernel_args, ArgRole, LaunchGeometry, ServingArg, SizeArg, StatsArg, StrideDim,
    TensorArg, TypedArg,
};
use attnforge_codegen::blocks::{build_block_lists, BlockLists};
use attnforge_codegen::check::{validate_problem, validate_spec, MaskParams, Problem};
use attnforge_codegen::masks::{DocRule, ParamType};
use attnforge_codegen::scores::ScoreParamKind;
use attnforge_codegen::serving::{
    decode_splits, validate_decode, validate_serving, DocIds, KeyLayout, ServingGeometry,
    DEFAULT_SMS,
};
use attnforge_codegen::spec::{KernelSpec, Layout, Mask, ScoreMod};
use attnforge_codegen::tile::TileConfig;
use attnforge_reference as reference;
use attnforge_reference::{
    AttnOptions, Element, KvLayout, Packed, PagedCache, PagedKv, Precision, Shape4, Tensor4,
    VarlenKv, VarlenOutput,
};
use attnforge_sim::{SimArg, SimConfig, SimCounters, SimElem};

use crate::exec::{self, input_err, ExecError, HostArg, RunParams};
use crate::pipeline::{compare, Execution, Report};

mod cuda;
pub use cuda::{check_cuda, run_cuda};
mod stats;
pub use stats::{check_stats, reference_stats, simulate_stats, stats_row_keys};

/// Where the keys of a serving run live.
#[derive(Clone, Debug)]
pub enum ServingKeys<T> {
    /// Packed keys and values `[Tk, Hkv, D]`; sequence `b` owns rows
    /// `cu_seqlens_k[b] .. cu_seqlens_k[b + 1]`.
    Varlen {
        /// Keys.
        k: Packed<T>,
        /// Values.
        v: Packed<T>,
        /// `[B + 1]` offsets.
        cu_seqlens_k: Vec<i32>,
    },
    /// A paged cache `[num_pages, page_size, Hkv, D]`: key `j` of sequence `b` is slot
    /// `j % page_size` of page `block_table[b * max_pages + j / page_size]`.
    Paged {
        /// Key cache.
        k_cache: PagedCache<T>,
        /// Value cache (same pages and page size).
        v_cache: PagedCache<T>,
        /// `[B, max_pages]` row-major page indices (entries past a sequence's pages: any).
        block_table: Vec<i32>,
        /// Row width of `block_table`.
        max_pages: usize,
        /// `[B]` key lengths.
        seqlens_k: Vec<i32>,
    },
}

/// The inputs of a serving run: packed queries `[Tq, Hq, D]` with `cu_seqlens_q`, and the keys.
#[derive(Clone, Debug)]
pub struct ServingInputs<T> {
    /// Packed queries.
    pub q: Packed<T>,
    /// `[B + 1]` query offsets.
    pub cu_seqlens_q: Vec<i32>,
    /// The keys and values.
    pub keys: ServingKeys<T>,
}

impl<T> ServingInputs<T> {
    /// Paged inputs whose cache lays pages out the way a serving engine's pool ends up:
    /// page 0 is every sequence's first page (a shared prefix) and the others are taken from
    /// the end of the pool backwards, so logical and physical order differ. `value` fills
    /// the key cache, then the value cache (`[num_pages, page_size, Hkv, D]` order each).
    pub fn shared_prefix_paged(
        q: Packed<T>,
        cu_seqlens_q: Vec<i32>,
        seqlens_k: &[usize],
        (page_size, heads_kv): (usize, usize),
        mut value: impl FnMut() -> T,
    ) -> Self
    where
        T: Element,
    {
        let pages: Vec<usize> = seqlens_k.iter().map(|k| k.div_ceil(page_size)).collect();
        let max_pages = pages.iter().copied().max().unwrap_or(0).max(1);
        let num_pages = pages.iter().sum::<usize>() + 1;
        let mut block_table = vec![-1i32; seqlens_k.len() * max_pages];
        let mut next = num_pages;
        for (b, &n) in pages.iter().enumerate() {
            for i in 0..n {
                block_table[b * max_pages + i] = if i == 0 {
                    0
                } else {
                    next -= 1;
                    next as i32
                };
            }
        }
        let d = q.dim;
        let mut cache =
            || PagedCache::from_fn(num_pages, page_size, heads_kv, d, |_, _, _, _| value());
        let (k_cache, v_cache) = (cache(), cache());
        ServingInputs {
            q,
            cu_seqlens_q,
            keys: ServingKeys::Paged {
                k_cache,
                v_cache,
                block_table,
                max_pages,
                seqlens_k: seqlens_k.iter().map(|&k| k as i32).collect(),
            },
        }
    }

    /// The layout these inputs are in.
    pub fn layout(&self) -> Layout {
        match self.keys {
            ServingKeys::Varlen { .. } => Layout::Varlen,
            ServingKeys::Paged { .. } => Layout::Paged,
        }
    }

    fn kv_heads_dims(&self) -> [(&'static str, usize, usize); 2] {
        match &self.keys {
            ServingKeys::Varlen { k, v, .. } => [("k", k.heads, k.dim), ("v", v.heads, v.dim)],
            ServingKeys::Paged {
                k_cache, v_cache, ..
            } => [
                ("k_cache", k_cache.heads, k_cache.dim),
                ("v_cache", v_cache.heads, v_cache.dim),
            ],
        }
    }

    fn kv_data(&self) -> (&[T], &[T]) {
        match &self.keys {
            ServingKeys::Varlen { k, v, .. } => (&k.data, &v.data),
            ServingKeys::Paged {
                k_cache, v_cache, ..
            } => (&k_cache.data, &v_cache.data),
        }
    }

    /// Key rows addressed by the kernel (`Tk`, or `num_pages * page_size`).
    fn key_rows(&self) -> usize {
        match &self.keys {
            ServingKeys::Varlen { k, .. } => k.tokens,
            ServingKeys::Paged { k_cache, .. } => k_cache.num_pages * k_cache.page_size,
        }
    }
}

/// The resolved runtime values of one serving run.
#[derive(Clone, Debug)]
struct Resolved {
    geo: ServingGeometry,
    heads_q: usize,
    heads_kv: usize,
    scale: f32,
    /// Every mask parameter's value (defaults filled in at the longest sequence).
    mask: Vec<(&'static str, f64)>,
    doc: Vec<i32>,
    alibi: Vec<f32>,
    /// Per-sequence block lists of a block-list mask, padded to the longest sequence.
    lists: Option<BlockLists>,
    /// Key splits of a decode kernel (1 for the other layouts).
    splits: usize,
}

/// Validate the spec, the tensors and the layout arrays (before any launch): the layout
/// errors name the array and the index (`cu_seqlens_q[3]`, `block_table[1][0]`).
pub fn validate<T: Element>(
    spec: &KernelSpec,
    x: &ServingInputs<T>,
    p: &RunParams,
) -> Result<ServingGeometry, ExecError> {
    resolve(spec, None, x, p).map(|r| r.geo)
}

fn check_tensors<T: Element>(spec: &KernelSpec, x: &ServingInputs<T>) -> Result<(), ExecError> {
    let keys_fit = match spec.layout {
        Layout::Decode => x.layout() == Layout::Paged,
        Layout::DecodeVarlen => x.layout() == Layout::Varlen,
        l => l == x.layout(),
    };
    if !keys_fit {
        return Err(input_err(
            "layout",
            format!(
                "the kernel has layout `{}` but the inputs are `{}`",
                spec.layout.tag(),
                x.layout().tag()
            ),
            "pass inputs of the kernel's layout or compile the spec with the inputs' layout",
        ));
    }
    if T::DTYPE != exec::reference_dtype(spec.dtype) {
        return Err(input_err(
            "q",
            format!(
                "element type {} does not match the spec's dtype {}",
                T::DTYPE.name(),
                spec.dtype.short()
            ),
            "pass tensors of the spec's dtype",
        ));
    }
    check_kv_tensors(x, spec.head_dim.get())
}

/// The tensors' head dimensions (`d`), kv heads, finite values and cache pages agree.
pub(crate) fn check_kv_tensors<T: Element>(
    x: &ServingInputs<T>,
    d: usize,
) -> Result<(), ExecError> {
    let [k, v] = x.kv_heads_dims();
    for (name, dim) in [("q", x.q.dim), (k.0, k.2), (v.0, v.2)] {
        if dim != d {
            return Err(input_err(
                name,
                format!("head dimension {dim} but the kernel is compiled for {d}"),
                "pass tensors with the spec's head_dim or choose another spec",
            ));
        }
    }
    if k.1 != v.1 {
        return Err(input_err(
            v.0,
            format!("{} kv heads but {} has {}", v.1, k.0, k.1),
            "pass keys and values with the same heads",
        ));
    }
    let (kd, vd) = x.kv_data();
    for (name, data) in [("q", &x.q.data[..]), (k.0, kd), (v.0, vd)] {
        if data.iter().any(|e| !e.to_f64().is_finite()) {
            return Err(input_err(
                name,
                "contains NaN or Inf",
                "clean the input; attention of non-finite values is undefined",
            ));
        }
    }
    if let ServingKeys::Paged {
        k_cache, v_cache, ..
    } = &x.keys
    {
        if (k_cache.num_pages, k_cache.page_size) != (v_cache.num_pages, v_cache.page_size) {
            return Err(input_err(
                "v_cache",
                format!(
                    "{} pages of {} but k_cache has {} pages of {}",
                    v_cache.num_pages, v_cache.page_size, k_cache.num_pages, k_cache.page_size
                ),
                "pass caches of the same pages and page size",
            ));
        }
    }
    Ok(())
}

/// The layout arrays through the host checks of `codegen::serving`.
fn check_layout<T: Element>(
    spec: &KernelSpec,
    x: &ServingInputs<T>,
    doc: Option<&[i32]>,
) -> Result<ServingGeometry, ExecError> {
    let rule = spec.mask.def().map_or(DocRule::Any, |d| d.doc_rule);
    let doc = doc.map(|ids| DocIds { ids, rule });
    check_layout_arrays(x, spec.allows_sq_gt_sk(), doc)
}

/// The layout arrays of `x` through `validate_serving` (errors name the array, the index
/// and the fix); `sq_gt_sk_allowed`: whether `Sq_b > Sk_b` is defined.
pub(crate) fn check_layout_arrays<T: Element>(
    x: &ServingInputs<T>,
    sq_gt_sk_allowed: bool,
    doc: Option<DocIds<'_>>,
) -> Result<ServingGeometry, ExecError> {
    let [k, _] = x.kv_heads_dims();
    let keys = match &x.keys {
        ServingKeys::Varlen {
            k, cu_seqlens_k, ..
        } => KeyLayout::Varlen {
            total_k: k.tokens,
            cu_seqlens_k,
        },
        ServingKeys::Paged {
            k_cache,
            block_table,
            max_pages,
            seqlens_k,
            ..
        } => KeyLayout::Paged {
            num_pages: k_cache.num_pages,
            page_size: k_cache.page_size,
            block_table,
            max_pages: *max_pages,
            seqlens_k,
        },
    };
    let problem = attnforge_codegen::serving::ServingProblem {
        heads_q: x.q.heads,
        heads_kv: k.1,
        head_dim: x.q.dim,
        value_dim: x.q.dim,
        total_q: x.q.tokens,
        cu_seqlens_q: &x.cu_seqlens_q,
        keys,
        sq_gt_sk_allowed,
        doc,
    };
    validate_serving(&problem).map_err(ExecError::Spec)
}

fn resolve<T: Element>(
    spec: &KernelSpec,
    tile: Option<&TileConfig>,
    x: &ServingInputs<T>,
    p: &RunParams,
) -> Result<Resolved, ExecError> {
    validate_spec(spec).map_err(ExecError::Spec)?;
    check_tensors(spec, x)?;
    let doc = match (&p.doc, spec.mask.reads_doc()) {
        (None, true) => {
            return Err(input_err(
                "doc",
                format!(
                    "the `{}` mask needs per-token document ids",
                    spec.mask.tag()
                ),
                "pass RunParams::with_doc(ids): one id per packed key row ([Tk])",
            ))
        }
        (Some(d), true) => d.clone(),
        (_, false) => Vec::new(),
    };
    let geo = check_layout(spec, x, spec.mask.reads_doc().then_some(&doc[..]))?;
    let heads_kv = x.kv_heads_dims()[0].1;
    // the per-launch rules (heads, GQA, mask parameters, softcap) at the longest sequences
    let problem = Problem {
        batch: geo.batch.max(1),
        heads_q: x.q.heads,
        heads_kv,
        seq_q: 1,
        seq_k: geo.max_seqlen_k.max(1),
        mask: p.mask.clone().unwrap_or(MaskParams::None),
        softcap: spec.score.param_of(ScoreParamKind::Scalar).and(p.softcap),
    };
    validate_problem(spec, &problem).map_err(ExecError::Spec)?;
    let scale = p.scale.unwrap_or_else(|| spec.effective_scale());
    if !(scale.is_finite() && scale > 0.0) {
        return Err(input_err(
            "scale",
            format!("scale = {scale}"),
            "pass a finite positive scale",
        ));
    }
    let mask = mask_values(spec, p, geo.max_seqlen_k.max(1));
    let alibi = match (
        spec.score.param_of(ScoreParamKind::PerHead),
        &p.alibi_slopes,
    ) {
        (Some(_), Some(s)) if s.len() == x.q.heads => s.clone(),
        (Some(sp), Some(s)) => {
            return Err(input_err(
                sp.name,
                format!("{} slopes for {} query heads", s.len(), x.q.heads),
                sp.fix,
            ))
        }
        (Some(_), None) => reference::alibi_slopes(x.q.heads)
            .into_iter()
            .map(|s| s as f32)
            .collect(),
        (None, _) => Vec::new(),
    };
    let splits = decode_split_count(spec, tile, x, p, &geo, heads_kv)?;
    let mut r = Resolved {
        geo,
        heads_q: x.q.heads,
        heads_kv,
        scale,
        mask,
        doc,
        alibi,
        lists: None,
        splits,
    };
    if spec.mask.uses_block_lists() {
        let lists = sequence_lists(spec, x, p, &r)?;
        r.lists = Some(if spec.layout.is_decode() && lists.heads > 1 {
            group_lists(&lists, r.heads_q / r.heads_kv)
        } else {
            lists
        });
    }
    Ok(r)
}

/// The key splits of a decode run (the decode rules checked first: `num_splits`, `Sq_b`);
/// 1 for the other layouts.
fn decode_split_count<T>(
    spec: &KernelSpec,
    tile: Option<&TileConfig>,
    x: &ServingInputs<T>,
    p: &RunParams,
    geo: &ServingGeometry,
    heads_kv: usize,
) -> Result<usize, ExecError> {
    if !spec.layout.is_decode() {
        return Ok(1);
    }
    let seqlens_k: Vec<i32> = key_lens(x).into_iter().map(|(sk, _)| sk as i32).collect();
    // the tile's key width bounds the useful splits (the default tile when none is given)
    let (bm, bn) = tile
        .map(|t| (t.block_m, t.block_n))
        .or_else(|| {
            attnforge_codegen::tile::default_tile(spec, attnforge_codegen::prelude::Arch::Sm90)
                .map(|t| (t.block_m, t.block_n))
        })
        .unwrap_or((64, 64));
    // Sq_b > Sk_b (full/causal) is defined without splits only
    let sq_gt_sk = x
        .cu_seqlens_q
        .windows(2)
        .zip(&seqlens_k)
        .any(|(w, &sk)| w[1] - w[0] > sk);
    let splits = p.num_splits.unwrap_or_else(|| {
        if sq_gt_sk {
            1
        } else {
            decode_splits(
                geo.batch,
                (x.q.heads, heads_kv),
                (geo.max_seqlen_q, geo.max_seqlen_k),
                (bm, bn),
                DEFAULT_SMS,
            )
        }
    });
    validate_decode(&x.cu_seqlens_q, &seqlens_k, splits).map_err(ExecError::Spec)?;
    Ok(splits)
}

/// The key lengths `Sk_b` and the doc-id offset of each sequence.
fn key_lens<T>(x: &ServingInputs<T>) -> Vec<(usize, usize)> {
    match &x.keys {
        ServingKeys::Varlen { cu_seqlens_k, .. } => cu_seqlens_k
            .windows(2)
            .map(|w| ((w[1] - w[0]) as usize, w[0] as usize))
            .collect(),
        ServingKeys::Paged { seqlens_k, .. } => {
            seqlens_k.iter().map(|&k| (k as usize, 0)).collect()
        }
    }
}

/// Block lists of a block-list mask built per sequence (query blocks and key blocks counted
/// from the sequence's first row and key) from the mask table's host predicate (or the user
/// predicate's Rust twin, called with `b` = the sequence), then padded into one
/// `[B, heads, max rows, max width]` set: the kernel's list row of (sequence b, head h,
/// query block r) is where the dense kernel's (batch b, h, r) would be.
fn sequence_lists<T>(
    spec: &KernelSpec,
    x: &ServingInputs<T>,
    p: &RunParams,
    r: &Resolved,
) -> Result<BlockLists, ExecError> {
    let host = p.host_mask.clone();
    let values: Vec<f64> = r.mask.iter().map(|&(_, v)| v).collect();
    let def = spec.mask.def();
    let heads = if matches!(spec.mask, Mask::Predicate(_)) {
        r.heads_q
    } else {
        1
    };
    if def.is_none() && host.is_none() {
        return Err(input_err(
            "host_mask",
            "the spec has a user mask predicate but no Rust twin was given",
            "pass RunParams::with_host_mask (the #[attnforge::mask] function's `eval`)",
        ));
    }
    let sq: Vec<usize> = x
        .cu_seqlens_q
        .windows(2)
        .map(|w| (w[1] - w[0]) as usize)
        .collect();
    let per: Vec<BlockLists> = key_lens(x)
        .into_iter()
        .zip(&sq)
        .enumerate()
        .map(|(b, ((sk, doc0), &sq))| {
            let doc = r.doc.get(doc0..doc0 + sk).unwrap_or(&[]);
            build_block_lists(1, heads, sq, sk, spec.sparse_block, |_, h, i, j| {
                match (def, &host) {
                    (Some(d), _) => (d.host_allowed)(&values, doc, i, j),
                    (None, Some(f)) => f(b, h, i, j),
                    (None, None) => false,
                }
            })
        })
        .collect();
    let rows = per.iter().map(|l| l.rows).max().unwrap_or(0).max(1);
    let width = per.iter().map(|l| l.width).max().unwrap_or(0).max(1);
    let n = per.len() * heads * rows;
    let mut out = BlockLists {
        batches: per.len(),
        heads,
        rows,
        cols: per.iter().map(|l| l.cols).max().unwrap_or(0),
        width,
        full_num: vec![0; n],
        full_idx: vec![0; n * width],
        partial_num: vec![0; n],
        partial_idx: vec![0; n * width],
    };
    for (b, l) in per.iter().enumerate() {
        for h in 0..heads {
            for q in 0..l.rows {
                let (src, dst) = ((h * l.rows) + q, (b * heads + h) * rows + q);
                out.full_num[dst] = l.full_num[src];
                out.partial_num[dst] = l.partial_num[src];
                let (s, d) = (src * l.width, dst * width);
                out.full_idx[d..d + l.width].copy_from_slice(&l.full_idx[s..s + l.width]);
                out.partial_idx[d..d + l.width].copy_from_slice(&l.partial_idx[s..s + l.width]);
            }
        }
    }
    Ok(out)
}

/// The block lists of a decode kernel, whose block serves every query head of a GQA group
/// (packed rows): the lists of head `h0 = g * group` become the group's union, a key block
/// full when it is full for every head of the group and partial when any head lists it
/// otherwise (its element mask then runs per packed row, with the row's own head); the
/// other heads' rows are left empty (never read). Query rows are unchanged: a decode block's
/// rows all sit in the sequence's first query block (`Sq_b <= 16 <= block_q`).
fn group_lists(l: &BlockLists, group: usize) -> BlockLists {
    let at = |b: usize, h: usize, q: usize| (b * l.heads + h) * l.rows + q;
    let mut rows: Vec<(Vec<i32>, Vec<i32>)> = Vec::new();
    for b in 0..l.batches {
        for h0 in (0..l.heads).step_by(group.max(1)) {
            for q in 0..l.rows {
                let list = |h: usize, full: bool| {
                    let i = at(b, h, q);
                    let (num, idx) = if full {
                        (&l.full_num, &l.full_idx)
                    } else {
                        (&l.partial_num, &l.partial_idx)
                    };
                    idx[i * l.width..i * l.width + num[i] as usize].to_vec()
                };
                let heads = h0..(h0 + group).min(l.heads);
                let full: Vec<i32> = list(h0, true)
                    .into_iter()
                    .filter(|k| heads.clone().all(|h| list(h, true).contains(k)))
                    .collect();
                let mut partial: Vec<i32> = heads
                    .flat_map(|h| list(h, true).into_iter().chain(list(h, false)))
                    .filter(|k| !full.contains(k))
                    .collect();
                partial.sort_unstable();
                partial.dedup();
                rows.push((full, partial));
            }
        }
    }
    let width = rows
        .iter()
        .map(|(f, p)| f.len().max(p.len()))
        .max()
        .unwrap_or(0)
        .max(1);
    let n = l.batches * l.heads * l.rows;
    let mut out = BlockLists {
        width,
        full_num: vec![0; n],
        full_idx: vec![-1; n * width],
        partial_num: vec![0; n],
        partial_idx: vec![-1; n * width],
        ..l.clone()
    };
    let mut it = rows.into_iter();
    for b in 0..l.batches {
        for h0 in (0..l.heads).step_by(group.max(1)) {
            for q in 0..l.rows {
                let (full, partial) = it.next().unwrap_or_default();
                let i = at(b, h0, q);
                out.full_num[i] = full.len() as i32;
                out.partial_num[i] = partial.len() as i32;
                out.full_idx[i * width..i * width + full.len()].copy_from_slice(&full);
                out.partial_idx[i * width..i * width + partial.len()].copy_from_slice(&partial);
            }
        }
    }
    out
}

/// Every mask parameter as the kernel receives it (a missing one takes its default at the
/// longest key length; float parameters rounded to f32): kernel and reference read these.
fn mask_values(spec: &KernelSpec, p: &RunParams, max_sk: usize) -> Vec<(&'static str, f64)> {
    let given = p.mask.clone().unwrap_or(MaskParams::None);
    spec.mask.def().map_or_else(Vec::new, |d| {
        d.params
            .iter()
            .map(|q| {
                let v = given.get(q.name).unwrap_or_else(|| q.default.at(max_sk));
                let v = match q.ty {
                    ParamType::Int => v,
                    ParamType::Float => f64::from(v as f32),
                };
                (q.name, v)
            })
            .collect()
    })
}

/// The kernel's arguments in declaration order: an exhaustive match on each argument's
/// [`ArgRole`] (never on its name).
fn host_args<T: Element>(
    spec: &KernelSpec,
    x: &ServingInputs<T>,
    p: &RunParams,
    r: &Resolved,
) -> Result<Vec<LayoutArg>, ExecError> {
    let d = spec.head_dim.get();
    let mut out = Vec::new();
    for TypedArg { arg: a, role } in typed_kernel_args(spec) {
        let v = match role {
            ArgRole::Tensor(t) => match t {
                TensorArg::Q => HostArg::Q,
                TensorArg::K => HostArg::K,
                TensorArg::V => HostArg::V,
                TensorArg::O => HostArg::O,
                TensorArg::Lse => HostArg::Lse,
            },
            ArgRole::Size(s) => HostArg::I32(match s {
                SizeArg::Batch => r.geo.batch,
                SizeArg::HeadsQ => r.heads_q,
                SizeArg::HeadsKv => r.heads_kv,
                SizeArg::SeqQ => x.q.tokens,
                SizeArg::SeqK => x.key_rows(),
            } as i32),
            // packed rows [T, H, D] (a paged cache's row is a page slot): the batch stride
            // is unused, a head is D elements, a row all heads
            ArgRole::Stride { tensor, dim } => {
                let heads = match tensor {
                    TensorArg::K | TensorArg::V => r.heads_kv,
                    TensorArg::Q | TensorArg::O | TensorArg::Lse => r.heads_q,
                };
                HostArg::I64(match dim {
                    StrideDim::Batch => 0,
                    StrideDim::Head => d as i64,
                    StrideDim::Seq => (heads * d) as i64,
                })
            }
            ArgRole::Scale => HostArg::F32(r.scale),
            ArgRole::DocIds => HostArg::Ints(r.doc.clone()),
            ArgRole::DocBatchStride => HostArg::I64(0),
            ArgRole::MaskParam { mask, index } => {
                let def = &mask.def().params[index];
                let v = r.mask[index].1;
                match def.ty {
                    ParamType::Int => HostArg::I32(v as i32),
                    ParamType::Float => HostArg::F32(v as f32),
                }
            }
            ArgRole::BlockList(part) => exec::block_list_arg(part, r.lists.as_ref()),
            ArgRole::ScoreParam => match spec.score.def().and_then(|d| d.param).map(|q| q.kind) {
                Some(ScoreParamKind::Scalar) => HostArg::F32(p.softcap.unwrap_or(0.0)),
                Some(ScoreParamKind::PerHead) => HostArg::Floats(r.alibi.clone()),
                None => {
                    return Err(input_err(
                        &a.name,
                        "a score argument without a score parameter",
                        "report this: the argument table and the score table disagree",
                    ))
                }
            },
            ArgRole::UserParam { side, index } => {
                exec::user_param_arg(spec, p, side, index, &a.name)?
            }
            ArgRole::Serving(s) => match serving_arg(s, x, r) {
                LayoutArg::Host(v) => v,
                partial => {
                    out.push(partial);
                    continue;
                }
            },
            ArgRole::Stats(StatsArg::Partial) => HostArg::StatsPartial,
            ArgRole::Stats(_) => {
                return Err(exec::input_err(
                    &a.name,
                    "an argument of the statistics follow-up kernel in a forward kernel's list",
                    "report this: the argument table and the kernel disagree",
                ));
            }
        };
        out.push(LayoutArg::Host(v));
    }
    Ok(out)
}

/// A serving kernel's argument: a host value, or a decode kernel's f32 partial buffers
/// (allocated by [`simulate`] for the run's splits).
enum LayoutArg {
    Host(HostArg),
    OutPartial,
    LsePartial,
}

/// The value of one layout argument.
fn serving_arg<T>(s: ServingArg, x: &ServingInputs<T>, r: &Resolved) -> LayoutArg {
    let host = match s {
        ServingArg::NumSplits => HostArg::I32(r.splits as i32),
        ServingArg::OutPartial => return LayoutArg::OutPartial,
        ServingArg::LsePartial => return LayoutArg::LsePartial,
        _ => keys_arg(s, x),
    };
    LayoutArg::Host(host)
}

/// The value of one argument of the keys' layout arrays.
fn keys_arg<T>(s: ServingArg, x: &ServingInputs<T>) -> HostArg {
    let none = Vec::new;
    match (s, &x.keys) {
        (ServingArg::CuSeqlensQ, _) => HostArg::Ints(x.cu_seqlens_q.clone()),
        (ServingArg::CuSeqlensK, ServingKeys::Varlen { cu_seqlens_k, .. }) => {
            HostArg::Ints(cu_seqlens_k.clone())
        }
        (ServingArg::BlockTable, ServingKeys::Paged { block_table, .. }) => {
            HostArg::Ints(block_table.clone())
        }
        (ServingArg::SeqlensK, ServingKeys::Paged { seqlens_k, .. }) => {
            HostArg::Ints(seqlens_k.clone())
        }
        (ServingArg::MaxPages, ServingKeys::Paged { max_pages, .. }) => {
            HostArg::I32(*max_pages as i32)
        }
        (ServingArg::PageSize, ServingKeys::Paged { k_cache, .. }) => {
            HostArg::I32(k_cache.page_size as i32)
        }
        (ServingArg::MaxPages | ServingArg::PageSize, ServingKeys::Varlen { .. }) => {
            HostArg::I32(0)
        }
        (ServingArg::CuSeqlensK, _)
        | (ServingArg::BlockTable | ServingArg::SeqlensK, ServingKeys::Varlen { .. }) => {
            HostArg::Ints(none())
        }
        // the decode arguments are not arrays of the keys (serving_arg fills them)
        (ServingArg::NumSplits, _) => HostArg::I32(1),
        (ServingArg::OutPartial | ServingArg::LsePartial, _) => HostArg::Floats(Vec::new()),
    }
}

/// What a serving kernel wrote, in the packed layout, and the simulator's work counters.
#[derive(Clone, Debug)]
pub struct ServingRun {
    /// `out: [Tq, Hq, D]`, `lse: [Hq, Tq]` as written by the kernel.
    pub output: VarlenOutput,
    /// Work counters (zero when no block had rows).
    pub counters: SimCounters,
    /// Blocks launched (`ceil(max Sq_b / block_m) * Hq * B`; 0 when no sequence has rows).
    pub blocks: u64,
}

/// Run the spec's serving kernel on the simulator. The layout is checked on the host first;
/// nothing runs on bad input. A decode kernel with more than one split writes f32 partials
/// that the split-KV merge kernel (a second launch) turns into `out`, `lse`.
pub fn simulate<T: Element + SimElem>(
    spec: &KernelSpec,
    tile: &TileConfig,
    x: &ServingInputs<T>,
    p: &RunParams,
    cfg: &SimConfig,
) -> Result<ServingRun, ExecError> {
    let r = resolve(spec, Some(tile), x, p)?;
    simulate_resolved(spec, tile, x, p, cfg, &r, true, &mut []).map(|(run, _)| run)
}

/// The launch of a serving kernel: the decode grid (GQA groups x splits) or the packed one.
fn launch_geometry(spec: &KernelSpec, tile: &TileConfig, r: &Resolved) -> LaunchGeometry {
    if spec.layout.is_decode() {
        let heads = (r.heads_q, r.heads_kv);
        LaunchGeometry::decode(spec, tile, r.geo.batch, heads, r.geo.max_seqlen_q, r.splits)
    } else {
        LaunchGeometry::new(spec, tile, r.geo.batch, r.heads_q, r.geo.max_seqlen_q)
    }
}

/// How many f32 partial results a run writes for the merge (a split decode), else 0.
fn split_partials(spec: &KernelSpec, r: &Resolved) -> usize {
    if spec.layout.is_decode() && r.splits > 1 {
        r.splits
    } else {
        0
    }
}

/// The f32 partials of a split decode run: `o_part [splits, Tq, Hq, D]`, `lse_part [splits,
/// Hq, Tq]` (empty without splits).
type Partials = (Vec<f32>, Vec<f32>);

/// [`simulate`] of resolved inputs; without `merge` a split decode's partials are returned
/// unmerged (out and lse then stay NaN). `stats_partial`: the statistics sweep's per-query-block
/// key sums of a spec with `stats` (empty otherwise).
#[allow(clippy::too_many_arguments)] // the run's inputs, resolved values and output buffers
fn simulate_resolved<T: Element + SimElem>(
    spec: &KernelSpec,
    tile: &TileConfig,
    x: &ServingInputs<T>,
    p: &RunParams,
    cfg: &SimConfig,
    r: &Resolved,
    merge: bool,
    stats_partial: &mut [f32],
) -> Result<(ServingRun, Partials), ExecError> {
    let kernel = exec::sim_kernel(spec, tile)?;
    let args = host_args(spec, x, p, r)?;
    let (hq, d, tq) = (r.heads_q, spec.head_dim.get(), x.q.tokens);
    // NaN until written: a row the kernel misses fails the oracle
    let mut o = vec![T::from_f64(f64::NAN); tq * hq * d];
    let mut lse = vec![f32::NAN; hq * tq];
    let geo = launch_geometry(spec, tile, r);
    let blocks = u64::from(geo.grid[0]) * u64::from(geo.grid[1]) * u64::from(geo.grid[2]);
    // the partials of a split decode (NaN until written, as o)
    let parts = split_partials(spec, r);
    let mut o_part = vec![f32::NAN; parts * tq * hq * d];
    let mut lse_part = vec![f32::NAN; parts * hq * tq];
    let mut counters = SimCounters::default();
    if blocks > 0 {
        let outs = Outs {
            o: Some(SimArg::output(&mut o)),
            lse: Some(SimArg::output(&mut lse)),
            o_part: Some(out_or_null(&mut o_part)),
            lse_part: Some(out_or_null(&mut lse_part)),
            stats: Some(out_or_null(stats_partial)),
        };
        let mut sim_args = bind_args(&args, x, outs);
        counters = kernel.launch(
            (geo.grid[0], geo.grid[1], geo.grid[2]),
            geo.block[0],
            geo.dynamic_smem_bytes as usize,
            &mut sim_args,
            cfg,
        )?;
        drop(sim_args);
        if parts > 0 && merge {
            merge_partials(
                spec,
                &o_part,
                &lse_part,
                &mut o,
                &mut lse,
                (r.splits, tq, hq),
                cfg,
            )?;
        }
    }
    let output = VarlenOutput {
        out: o.iter().map(|e| e.to_f64()).collect(),
        lse: lse.iter().map(|&e| f64::from(e)).collect(),
        tokens: tq,
        heads: hq,
        dim: d,
    };
    let run = ServingRun {
        output,
        counters,
        blocks,
    };
    Ok((run, (o_part, lse_part)))
}

/// The output buffers of a serving launch, each bound to its one argument.
struct Outs<'a> {
    o: Option<SimArg<'a>>,
    lse: Option<SimArg<'a>>,
    o_part: Option<SimArg<'a>>,
    lse_part: Option<SimArg<'a>>,
    stats: Option<SimArg<'a>>,
}

/// The simulator arguments of a serving launch: the host values of [`host_args`], the inputs'
/// tensors and the output buffers.
fn bind_args<'a, T: SimElem>(
    args: &'a [LayoutArg],
    x: &'a ServingInputs<T>,
    mut outs: Outs<'a>,
) -> Vec<SimArg<'a>> {
    let (kd, vd) = x.kv_data();
    // typed_kernel_args gives each output role once
    let take = |a: &mut Option<SimArg<'a>>, name: &str| {
        a.take()
            .unwrap_or_else(|| panic!("a second {name} argument"))
    };
    args.iter()
        .map(|a| match a {
            LayoutArg::OutPartial => take(&mut outs.o_part, "o_part"),
            LayoutArg::LsePartial => take(&mut outs.lse_part, "lse_part"),
            LayoutArg::Host(HostArg::Q) => buf(&x.q.data),
            LayoutArg::Host(HostArg::K) => buf(kd),
            LayoutArg::Host(HostArg::V) => buf(vd),
            LayoutArg::Host(HostArg::O) => take(&mut outs.o, "o"),
            LayoutArg::Host(HostArg::Lse) => take(&mut outs.lse, "lse"),
            LayoutArg::Host(HostArg::Ints(v)) => buf(v),
            LayoutArg::Host(HostArg::Floats(v)) => buf(v),
            LayoutArg::Host(HostArg::I32(v)) => SimArg::I32(*v),
            LayoutArg::Host(HostArg::I64(v)) => SimArg::I64(*v),
            LayoutArg::Host(HostArg::F32(v)) => SimArg::F32(*v),
            LayoutArg::Host(HostArg::StatsPartial) => take(&mut outs.stats, "stats_partial"),
        })
        .collect()
}

/// A split decode's partials, kernel against the split-KV reference
/// ([`attnforge_reference::split_kv_partials`] with the run's splits, aligned to the tile's
/// `block_n` as the kernel splits): each split's f32 partial `out`, `lse` (before the merge)
/// by the oracle of [`check`] (f64 partial as the reference, the naive partial as the error
/// scale). One report per split. Needs `num_splits > 1` and a mask of the dense reference
/// (not LM-Infinite, whose reference has no split form).
pub fn check_split_partials<T: Element + SimElem>(
    spec: &KernelSpec,
    tile: &TileConfig,
    x: &ServingInputs<T>,
    p: &RunParams,
    cfg: &SimConfig,
) -> Result<Vec<ServingReport>, ExecError> {
    let r = resolve(spec, Some(tile), x, p)?;
    if !spec.layout.is_decode() || r.splits < 2 {
        return Err(input_err(
            "num_splits",
            format!(
                "{} split(s) of a `{}` kernel: no partials",
                r.splits,
                spec.layout.tag()
            ),
            "pass a decode spec and RunParams::with_num_splits(2 or more)",
        ));
    }
    if spec.mask.lm_infinite_scoring() {
        return Err(input_err(
            "mask",
            "LM-Infinite's reference has no split form",
            "check the merged result with `check` instead",
        ));
    }
    let (mask, score) = reference_mask_score(spec, p, &r)?;
    let split = reference::SplitKv {
        num_splits: r.splits,
        align: tile.block_n,
    };
    let parts = |precision| {
        let opts = AttnOptions {
            scale: Some(f64::from(r.scale)),
            precision,
        };
        let kv = kv_layout(x);
        reference::split_kv_partials(&x.q, &x.cu_seqlens_q, &kv, split, &mask, &score, &opts)
            .map_err(serving_err)
    };
    let (want, naive) = (parts(Precision::F64)?, parts(Precision::Naive)?);
    let (_, (o_part, lse_part)) = simulate_resolved(spec, tile, x, p, cfg, &r, false, &mut [])?;
    let (hq, d, tq) = (r.heads_q, spec.head_dim.get(), x.q.tokens);
    let name = attnforge_codegen::name::canonical_name_with_tile(spec, tile);
    let mut reports = Vec::with_capacity(r.splits);
    for (s, (w, n)) in want.iter().zip(&naive).enumerate() {
        let (o, l) = (s * tq * hq * d, s * hq * tq);
        let output = VarlenOutput {
            out: o_part[o..o + tq * hq * d]
                .iter()
                .map(|&e| f64::from(e))
                .collect(),
            lse: lse_part[l..l + hq * tq]
                .iter()
                .map(|&e| f64::from(e))
                .collect(),
            tokens: tq,
            heads: hq,
            dim: d,
        };
        let exec = Execution {
            output: output.to_attn_output(),
            counters: None,
            dense_tiles: None,
            stages: Vec::new(),
            indices: Default::default(),
        };
        let label = format!("{name} split {s}");
        let (w, n) = (w.to_attn_output(), n.to_attn_output());
        reports.push(compare(&label, spec.dtype, exec, &w, &n)?);
    }
    Ok(reports)
}

fn buf<T: SimElem>(v: &[T]) -> SimArg<'_> {
    if v.is_empty() {
        SimArg::Null
    } else {
        SimArg::input(v)
    }
}

fn out_or_null<T: SimElem>(v: &mut [T]) -> SimArg<'_> {
    if v.is_empty() {
        SimArg::Null
    } else {
        SimArg::output(v)
    }
}

/// The split-KV merge kernel ([`attnforge_codegen::emit::emit_split_merge`]) on the
/// simulator: the partials `[splits, Tq, Hq, D]`, `[splits, Hq, Tq]` into `o`, `lse`.
fn merge_partials<T: SimElem>(
    spec: &KernelSpec,
    o_part: &[f32],
    lse_part: &[f32],
    o: &mut [T],
    lse: &mut [f32],
    (splits, tq, hq): (usize, usize, usize),
    cfg: &SimConfig,
) -> Result<(), ExecError> {
    use attnforge_codegen::emit::{emit_split_merge, MERGE_THREADS};
    let m = emit_split_merge(spec.dtype, spec.head_dim);
    let kernel = exec::cached_sim_kernel(&m.name, &m.source)?;
    let rows = tq * hq;
    let blocks = rows.div_ceil(MERGE_THREADS / 32);
    if blocks == 0 {
        return Ok(());
    }
    let mut args = vec![
        SimArg::input(o_part),
        SimArg::input(lse_part),
        SimArg::output(o),
        SimArg::output(lse),
        SimArg::I32(splits as i32),
        SimArg::I32(tq as i32),
        SimArg::I32(hq as i32),
    ];
    kernel.launch(
        (blocks as u32, 1, 1),
        MERGE_THREADS as u32,
        0,
        &mut args,
        cfg,
    )?;
    Ok(())
}

/// The reference of a serving run: [`attnforge_reference::serving_attention`] (each
/// sequence gathered and run through the dense reference), or per sequence through the
/// LM-Infinite reference for a mask with its own scoring.
pub fn reference<T: Element>(
    spec: &KernelSpec,
    x: &ServingInputs<T>,
    p: &RunParams,
    precision: Precision,
) -> Result<VarlenOutput, ExecError> {
    let r = resolve(spec, None, x, p)?;
    reference_resolved(spec, x, p, &r, precision)
}

/// The keys of `x` as the reference's layout view (borrowed).
pub(crate) fn kv_layout<T>(x: &ServingInputs<T>) -> KvLayout<'_, T> {
    match &x.keys {
        ServingKeys::Varlen { k, v, cu_seqlens_k } => {
            KvLayout::Varlen(VarlenKv { k, v, cu_seqlens_k })
        }
        ServingKeys::Paged {
            k_cache,
            v_cache,
            block_table,
            max_pages,
            seqlens_k,
        } => KvLayout::Paged(PagedKv {
            k_cache,
            v_cache,
            block_table,
            max_pages: *max_pages,
            seqlens_k,
        }),
    }
}

impl From<reference::ServingError> for ExecError {
    fn from(e: reference::ServingError) -> Self {
        serving_err(e)
    }
}

fn serving_err(e: reference::ServingError) -> ExecError {
    match &e {
        reference::ServingError::Input { path, message, fix } => input_err(path, message, fix),
        reference::ServingError::Sequence { .. } => {
            input_err("sequence", e.to_string(), "see the sequence's error")
        }
    }
}

fn reference_resolved<T: Element>(
    spec: &KernelSpec,
    x: &ServingInputs<T>,
    p: &RunParams,
    r: &Resolved,
    precision: Precision,
) -> Result<VarlenOutput, ExecError> {
    let opts = AttnOptions {
        scale: Some(f64::from(r.scale)),
        precision,
    };
    if spec.mask.lm_infinite_scoring() {
        return lm_infinite_reference(x, r, &opts);
    }
    let (mask, score) = reference_mask_score(spec, p, r)?;
    reference::serving_attention(&x.q, &x.cu_seqlens_q, &kv_layout(x), &mask, &score, &opts)
        .map_err(serving_err)
}

/// The reference's mask and score modification of a serving run (not LM-Infinite, whose
/// scoring has its own reference).
fn reference_mask_score(
    spec: &KernelSpec,
    p: &RunParams,
    r: &Resolved,
) -> Result<(reference::Mask, reference::ScoreMod), ExecError> {
    let mask = match &spec.mask {
        Mask::Builtin(m) => reference::Mask::builtin(m.tag(), &r.mask, &r.doc)?,
        Mask::Predicate(_) => {
            let f = p.host_mask.clone().ok_or_else(|| {
                input_err(
                    "host_mask",
                    "the spec has a user mask predicate but no Rust twin was given",
                    "pass RunParams::with_host_mask (the #[attnforge::mask] function's `eval`)",
                )
            })?;
            reference::Mask::Predicate(std::sync::Arc::new(move |b, h, i, j| f(b, h, i, j)))
        }
        // validate_spec refuses explicit block-sparse lists with a serving layout
        Mask::BlockSparse { .. } => {
            return Err(input_err(
                "mask",
                "explicit block-sparse lists in a serving kernel",
                "report this: validate_spec refuses them",
            ))
        }
    };
    let score = match &spec.score {
        ScoreMod::None => reference::ScoreMod::None,
        ScoreMod::Softcap => reference::ScoreMod::Softcap(f64::from(p.softcap.unwrap_or(0.0))),
        ScoreMod::Alibi => {
            reference::ScoreMod::Alibi(r.alibi.iter().map(|&s| f64::from(s)).collect())
        }
        ScoreMod::User(_) => {
            let f = p.host_score.clone().ok_or_else(|| {
                input_err(
                    "host_score",
                    "the spec has a user score function but no Rust twin was given",
                    "pass RunParams::with_host_score (the #[attnforge::score] function's `eval`)",
                )
            })?;
            reference::ScoreMod::function(move |s, b, h, i, j| f(s, b, h, i, j))
        }
    };
    Ok((mask, score))
}

/// LM-Infinite (its own scoring): each sequence's keys gathered into a one-batch dense
/// problem and run through [`attnforge_reference::lm_infinite_attention`].
fn lm_infinite_reference<T: Element>(
    x: &ServingInputs<T>,
    r: &Resolved,
    opts: &AttnOptions,
) -> Result<VarlenOutput, ExecError> {
    let gathered;
    let (k, v, cu_k) = match &x.keys {
        ServingKeys::Varlen { k, v, cu_seqlens_k } => (k, v, cu_seqlens_k),
        ServingKeys::Paged { .. } => {
            let KvLayout::Paged(kv) = kv_layout(x) else {
                unreachable!("paged inputs give a paged layout")
            };
            gathered = reference::gather_paged_kv(&kv).map_err(serving_err)?;
            (&gathered.k, &gathered.v, &gathered.cu_seqlens_k)
        }
    };
    let params = reference::LmInfiniteParams::from_values(&r.mask);
    // the output rows have v's width (one-hot values of the statistics reference: Dv != D)
    let (hq, d) = (x.q.heads, v.dim);
    let mut res = VarlenOutput::empty(x.q.tokens, hq, d);
    for b in 0..r.geo.batch {
        let (q0, q1) = (x.cu_seqlens_q[b] as usize, x.cu_seqlens_q[b + 1] as usize);
        let (k0, k1) = (cu_k[b] as usize, cu_k[b + 1] as usize);
        if q1 == q0 {
            continue;
        }
        let slice = |t: &Packed<T>, r0: usize, n: usize| {
            Tensor4::from_fn(Shape4::new(1, t.heads, n, t.dim), |_, h, s, e| {
                t.data[((r0 + s) * t.heads + h) * t.dim + e]
            })
        };
        let out = reference::lm_infinite_attention(
            &slice(&x.q, q0, q1 - q0),
            &slice(k, k0, k1 - k0),
            &slice(v, k0, k1 - k0),
            &params,
            opts,
        )?;
        let sq = q1 - q0;
        for h in 0..hq {
            for i in 0..sq {
                for e in 0..d {
                    res.out[((q0 + i) * hq + h) * d + e] = out.out[(h * sq + i) * d + e];
                }
                res.lse[h * x.q.tokens + q0 + i] = out.lse_at(0, h, i);
            }
        }
    }
    Ok(res)
}

/// Verdict of [`check`] (the oracle's report plus the run).
pub type ServingReport = Report;

/// Run the serving kernel on the simulator and compare it with [`reference()`] by the oracle
/// of the dense check (variants.md section 0: relative to the naive same-precision error,
/// the dtype's tolerance). Reference first: bad input is an error before any launch.
pub fn check<T: Element + SimElem>(
    spec: &KernelSpec,
    tile: &TileConfig,
    x: &ServingInputs<T>,
    p: &RunParams,
    cfg: &SimConfig,
) -> Result<ServingReport, ExecError> {
    let r = resolve(spec, Some(tile), x, p)?;
    let want = reference_resolved(spec, x, p, &r, Precision::F64)?.to_attn_output();
    let naive = reference_resolved(spec, x, p, &r, Precision::Naive)?.to_attn_output();
    let run = simulate(spec, tile, x, p, cfg)?;
    let name = attnforge_codegen::name::canonical_name_with_tile(spec, tile);
    let exec = Execution {
        output: run.output.to_attn_output(),
        counters: Some(run.counters),
        dense_tiles: None,
        stages: Vec::new(),
        indices: Default::default(),
    };
    compare(&name, spec.dtype, exec, &want, &naive)
}
