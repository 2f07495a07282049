//! `attnforge check --layout varlen|paged|decode`: a static variant compiled for a serving layout
//! (variants.md section 13) and run on the simulator over packed sequences of different
//! lengths (a zero-length one, lengths that are not tile multiples, `Sq_b > Sk_b` where the
//! variant defines it), against the reference's serving function
//! (`attnforge_runtime::exec_serving`). Paged runs use a permuted page table with a page
//! shared by every sequence, at page sizes 1, 16 and 128. Decode runs (1..16 query tokens per
//! sequence, split-KV) the same cache at page size 1 without splits (with `Sq_b > Sk_b` where
//! defined), then at page size 16 with 2 splits and with more splits than key tiles, and at
//! page size 128 (key tiles within one page) with 2 splits.

use attnforge::codegen::spec::{DType, Layout};
use attnforge::codegen::tile::TileConfig;
use attnforge::exec::{Backend, ExecError};
use attnforge::exec_serving::{self, ServingInputs, ServingKeys};
use attnforge::reference::{CloseReport, Element, Packed, PagedCache};
use attnforge::sim::SimElem;
use attnforge::specfile::{self, SpecFile};
use half::{bf16, f16};

use super::check::Verdict;
use super::check_stats::Worst;
use super::common::random_values;
use super::variant::Variant;
use super::CliError;

/// Why a variant cannot run in `layout`, or `None` when it can.
pub(super) fn unsupported(sf: &SpecFile, layout: Layout) -> Option<String> {
    let spec = sf.spec.clone().with_layout(layout);
    attnforge::codegen::check::validate_spec(&spec)
        .err()
        .map(|errs| {
            errs.iter()
                .map(|e| format!("{}: {}", e.path, e.message))
                .collect::<Vec<_>>()
                .join("; ")
        })
}

/// Per-sequence `(Sq_b, Sk_b)` of the check: the variant's own problem, an empty sequence, a
/// short one, lengths off the tile grid, and `Sq_b > Sk_b` (a sequence without keys
/// included) where the variant defines it.
fn lengths(sf: &SpecFile, layout: Layout, splits: usize) -> Vec<(usize, usize)> {
    let p = sf.problem;
    if layout.is_decode() {
        // 1..16 tokens: one, a few, the most (16, with 70 keys: off the tile grid)
        let mut v = vec![
            (1, p.seq_k),
            (0, 9),
            (1, 1),
            (3, 13 + p.seq_k / 3),
            (16, 70),
        ];
        if splits == 1 && sf.spec.allows_sq_gt_sk() {
            v.extend([(5, 2), (3, 0)]);
        }
        return v;
    }
    let mut v = vec![
        (p.seq_q.min(p.seq_k), p.seq_k),
        (0, 9),
        (1, 1),
        (13, 13 + p.seq_k / 3),
        (37, 70),
    ];
    if sf.spec.allows_sq_gt_sk() {
        v.extend([(5, 2), (3, 0)]);
    }
    v
}

/// Doc ids packed like the keys: per sequence a question prefix (id 0) of a fifth of its
/// keys, then documents of 23 keys.
fn doc_ids(lens: &[(usize, usize)]) -> Vec<i32> {
    lens.iter()
        .flat_map(|&(_, sk)| {
            (0..sk).map(move |j| {
                if j < sk / 5 {
                    0
                } else {
                    1 + (j / 23 % 3) as i32
                }
            })
        })
        .collect()
}

fn cu(lens: impl Iterator<Item = usize>) -> Vec<i32> {
    let mut c = vec![0i32];
    for l in lens {
        c.push(c.last().copied().unwrap_or(0) + l as i32);
    }
    c
}

fn inputs<T: Element>(
    sf: &SpecFile,
    layout: Layout,
    lens: &[(usize, usize)],
    page_size: usize,
    seed: u64,
) -> ServingInputs<T> {
    let (hq, hkv, d) = (
        sf.problem.heads_q,
        sf.problem.heads_kv,
        sf.spec.head_dim.get(),
    );
    let rand = |n: usize, stream| {
        random_values(n, seed, stream)
            .into_iter()
            .map(T::from_f32)
            .collect::<Vec<T>>()
    };
    let tq: usize = lens.iter().map(|l| l.0).sum();
    let packed = |t, h, stream| Packed::from_vec(t, h, d, rand(t * h * d, stream)).expect("sized");
    let cu_q = cu(lens.iter().map(|l| l.0));
    let keys = if layout.is_paged() {
        // sequence b's page i is page 1 + (7 (b + i) mod n) for a permutation; page 0 is
        // every sequence's first page (a shared prefix)
        let pages: Vec<usize> = lens.iter().map(|l| l.1.div_ceil(page_size)).collect();
        let max_pages = pages.iter().copied().max().unwrap_or(0).max(1);
        let n = pages.iter().sum::<usize>().max(1) * 2 + 1;
        let step = if n % 7 == 0 { 11 } else { 7 };
        let mut table = vec![-1i32; lens.len() * max_pages];
        let mut at = 0usize;
        for (b, &np) in pages.iter().enumerate() {
            for i in 0..np {
                at += 1;
                table[b * max_pages + i] = if i == 0 {
                    0
                } else {
                    (1 + (step * at) % (n - 1)) as i32
                };
            }
        }
        let cache = |stream| {
            PagedCache::from_vec(n, page_size, hkv, d, rand(n * page_size * hkv * d, stream))
                .expect("sized")
        };
        ServingKeys::Paged {
            k_cache: cache(2),
            v_cache: cache(3),
            block_table: table,
            max_pages,
            seqlens_k: lens.iter().map(|l| l.1 as i32).collect(),
        }
    } else {
        let tk: usize = lens.iter().map(|l| l.1).sum();
        ServingKeys::Varlen {
            k: packed(tk, hkv, 2),
            v: packed(tk, hkv, 3),
            cu_seqlens_k: cu(lens.iter().map(|l| l.1)),
        }
    };
    ServingInputs {
        q: packed(tq, hq, 1),
        cu_seqlens_q: cu_q,
        keys,
    }
}

/// The tile `sf` runs with in `layout`: its `[tune] tile`, else the default tile of the spec
/// in that layout (the decode layouts' 128-key tile where it fits, not the dense one).
fn layout_tile(sf: &SpecFile, layout: Layout) -> Result<TileConfig, CliError> {
    let mut in_layout = sf.clone();
    in_layout.spec = sf.spec.clone().with_layout(layout);
    in_layout.tile().map_err(CliError::input)
}

/// One checked run: the closeness report, the statistics' worst case, and the split choice
/// when the decode model made it.
type OneRun = (CloseReport, Option<Worst>, Option<String>);

fn check_one<T: Element + SimElem>(
    sf: &SpecFile,
    layout: Layout,
    (page_size, splits): (usize, Option<usize>),
    backend: &Backend,
    seed: u64,
) -> Result<Result<OneRun, String>, CliError> {
    let spec = sf.spec.clone().with_layout(layout);
    let tile = layout_tile(sf, layout)?;
    // the model's choice may split: no sequence with more queries than keys
    let lens = lengths(sf, layout, splits.unwrap_or(2));
    let max_sk = lens.iter().map(|l| l.1).max().unwrap_or(1);
    let doc = spec.mask.reads_doc().then(|| doc_ids(&lens));
    let mut rp = sf.run_params(max_sk, doc).map_err(CliError::input)?;
    rp.block_lists = None; // built per sequence by exec_serving
    specfile::catalog_twins(sf, &mut rp);
    let x = inputs::<T>(sf, layout, &lens, page_size, seed);
    let choice = specfile::decode_split_choice(&spec, &tile, &x, splits);
    rp.num_splits = choice.splits;
    let said = splits.is_none().then_some(choice.why);
    let checked = match backend {
        Backend::Cuda(ordinal) => {
            exec_serving::check_cuda(&spec, &tile, &x, &rp, *ordinal).map(|r| (r.close, None))
        }
        // statistics: the kernels on the simulator against the one-hot serving reference
        _ if spec.stats.is_some() => {
            exec_serving::check_stats(&spec, &tile, &x, &rp).map(|r| (r.close, Some(Worst::of(&r))))
        }
        _ => {
            let cfg = attnforge::sim::SimConfig::new(attnforge::sim::Schedule::Forward);
            exec_serving::check(&spec, &tile, &x, &rp, &cfg).map(|r| (r.close, None))
        }
    };
    match checked {
        Ok((c, w)) => Ok(Ok((c, w, said))),
        Err(ExecError::Mismatch { detail, .. }) => Ok(Err(detail)),
        Err(e @ (ExecError::Spec(_) | ExecError::Input { .. } | ExecError::Reference(_))) => {
            Err(CliError::input(format!("{}: {e}", sf.location())))
        }
        Err(e) => Ok(Err(e.to_string())),
    }
}

/// Check a static variant in a serving layout on the simulator (varlen: one batch of
/// sequences; paged: the same at page sizes 1, 16 and 128).
pub(super) fn check_serving(
    sf: &SpecFile,
    layout: Layout,
    backend: &Backend,
    seed: u64,
) -> Result<Verdict, CliError> {
    if matches!(backend, Backend::Reference) {
        return Err(CliError::input(
            "--layout varlen|paged|decode checks a kernel against the reference\n  fix: pass --backend sim or --backend cuda",
        ));
    }
    let tile = layout_tile(sf, layout)?;
    let name = attnforge::codegen::name::canonical_name_with_tile(
        &sf.spec.clone().with_layout(layout),
        &tile,
    );
    // (page size, key splits); decode: no split, 2, more splits than key tiles (64), and the
    // decode model's choice (None, what `run` and `SpecFile::run_serving` launch with)
    let runs: &[(usize, Option<usize>)] = match layout {
        // page size 128: key tiles within one page take the one-lookup copy path
        Layout::Paged => &[(1, Some(1)), (16, Some(1)), (128, Some(1))],
        Layout::Decode => &[
            (1, Some(1)),
            (16, Some(2)),
            (16, Some(64)),
            (128, Some(2)),
            (16, None),
        ],
        Layout::DecodeVarlen => &[(1, Some(1)), (1, Some(2)), (1, Some(64)), (1, None)],
        Layout::Dense | Layout::Varlen => &[(1, Some(1))],
    };
    let mut worst: Option<CloseReport> = None;
    let mut worst_stats: Option<Worst> = None;
    let mut failures = Vec::new();
    let mut split_said = None;
    for &(ps, splits) in runs {
        let r = match sf.spec.dtype {
            DType::F32 => check_one::<f32>(sf, layout, (ps, splits), backend, seed),
            DType::F16 => check_one::<f16>(sf, layout, (ps, splits), backend, seed),
            DType::Bf16 => check_one::<bf16>(sf, layout, (ps, splits), backend, seed),
        }?;
        let splits = splits.map_or("the model's".into(), |k| k.to_string());
        match r {
            Ok((c, st, said)) => {
                split_said = said.or(split_said);
                if let Some(st) = st {
                    worst_stats = Some(st.max(worst_stats));
                }
                worst = Some(match worst {
                    Some(w) if w.out.max_err >= c.out.max_err => w,
                    _ => c,
                })
            }
            Err(d) => failures.push(format!("[page size {ps}, splits {splits}] {d}")),
        }
    }
    let mut v = match (&worst, failures.is_empty()) {
        (Some(w), true) => match &worst_stats {
            Some(st) => {
                let mut v = Verdict::passed(name, w, st.json());
                v.detail = st.line();
                v
            }
            None => Verdict::passed(name, w, serde_json::Value::Null),
        },
        _ => Verdict::failed(name, failures.join("; ")),
    };
    if let Some(said) = split_said {
        let sep = if v.detail.is_empty() { "" } else { "; " };
        v.detail = format!("{}{sep}{said}", v.detail);
    }
    v.problems = runs.len();
    Ok(v)
}
