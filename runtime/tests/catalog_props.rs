//! Property tests of every catalog kernel against the f64 reference (variants.md section 0
//! oracle), on the CPU simulator running the exact generated CUDA, and — with the same test
//! list — on a GPU when one is present.
//!
//! Each catalog entry gets one proptest: random dtype, shapes that are not tile multiples,
//! `Sq != Sk` (and `Sq > Sk` where defined), GQA ratios, random runtime parameters of its
//! mask and score modification, run under all three schedules (forward, reverse, seeded
//! random). On the simulator every case also checks the visited-tile counters against a
//! brute-force classification of the mask: fully masked tiles are never visited and full
//! tiles never evaluate the mask.
//!
//! `ATTNFORGE_PROPTEST_CASES` sets the cases per kernel (default 10). Failing cases are
//! shrunk by proptest and persisted next to this file (`*.proptest-regressions`).

use std::sync::Arc;

use attnforge_reference::{Element, Shape4, Tensor4};
use attnforge_runtime::codegen::blocks::{build_block_lists, BlockLists};
use attnforge_runtime::codegen::prelude::*;
use attnforge_runtime::exec::{
    self, Backend, CheckReport, ExecError, Inputs, RunParams, UserValue,
};
use attnforge_runtime::sim::{Schedule, SimConfig, SimElem};
use half::{bf16, f16};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// Host twin of the catalog's example user predicate `dilated` (causal, keys at a distance
/// that is a multiple of `stride`). Written from its documented definition, not its CUDA.
fn dilated(stride: i32) -> impl Fn(usize, usize, i64, i64) -> bool + Send + Sync + 'static {
    move |_, _, q, kv| kv <= q && (q - kv) % i64::from(stride) == 0
}

/// Host twin of the catalog's example user score `headbias`:
/// `score + bias[h] - decay * |q - kv|`.
fn headbias(
    bias: Vec<f32>,
    decay: f32,
) -> impl Fn(f64, usize, usize, i64, i64) -> f64 + Send + Sync {
    move |s, _, h, q, kv| s + f64::from(bias[h]) - f64::from(decay) * (q - kv).abs() as f64
}

/// One random case: everything but the spec.
#[derive(Clone, Debug)]
struct Case {
    dtype: DType,
    batch: usize,
    hkv: usize,
    group: usize,
    sq: usize,
    sk: usize,
    schedule: Schedule,
    seed: u64,
    /// Small integers the parameter generator turns into mask/score parameters.
    knobs: [i64; 6],
}

fn case_strategy(spec: &KernelSpec) -> impl Strategy<Value = Case> {
    let gqa = spec.gqa;
    let sq_gt_sk = spec.allows_sq_gt_sk();
    let lists = spec.mask.uses_block_lists();
    // Longer sequences for list-driven masks so that there are several blocks.
    let max_len = if lists { 200usize } else { 90 };
    (
        prop_oneof![Just(DType::F32), Just(DType::F16), Just(DType::Bf16)],
        1usize..=2,
        1usize..=2,
        if gqa { 1usize..=3 } else { 1usize..=1 },
        1usize..=max_len,
        1usize..=max_len,
        0u8..3,
        any::<u64>(),
        prop::array::uniform6(0i64..64),
    )
        .prop_map(move |(dtype, batch, hkv, group, a, b, sch, seed, knobs)| {
            let (sq, sk) = if sq_gt_sk {
                (a, b)
            } else {
                (a.min(b), a.max(b))
            };
            let schedule = match sch {
                0 => Schedule::Forward,
                1 => Schedule::Reverse,
                _ => Schedule::Random(seed),
            };
            Case {
                dtype,
                batch,
                hkv,
                group,
                sq,
                sk,
                schedule,
                seed,
                knobs,
            }
        })
}

/// Scalar mask parameters of `spec` drawn from the knobs.
fn mask_params(spec: &KernelSpec, k: [i64; 6], sk: i64) -> MaskParams {
    match spec.mask {
        Mask::Local => MaskParams::new()
            .with("window_left", k[0] % 24 - 2)
            .with("window_right", k[1] % 24 - 2),
        Mask::PrefixLm => MaskParams::new().with("prefix_len", k[0] % (sk + 1)),
        Mask::GlobalLocal => MaskParams::new()
            .with("window", k[0] % 12)
            .with("global_tokens", k[1] % 6),
        Mask::BlockCausalDocument => MaskParams::new().with("doc_block", 1 + k[2] % 40),
        Mask::LambdaMask => MaskParams::new()
            .with("global_tokens", k[0] % 6)
            .with("local_window", 1 + k[1] % 30),
        Mask::LmInfinite => MaskParams::new()
            .with("global_tokens", k[0] % 6)
            .with("local_window", 1 + k[1] % 30)
            .with("dist_limit", 1 + k[2] % (sk + 4))
            .with("rope_theta", [10000.0, 500.0, 100.0][(k[3] % 3) as usize]),
        Mask::ChunkedCausal => MaskParams::new().with("chunk_size", 1 + k[0] % 70),
        Mask::DilatedCausal => MaskParams::new()
            .with("window", k[0] % 12)
            .with("dilation", 1 + k[1] % 5),
        _ => MaskParams::None,
    }
}

/// Runtime parameters of `spec` for case `c` (drawn from the case's knobs).
fn params(spec: &KernelSpec, c: &Case) -> RunParams {
    let k = c.knobs;
    let hq = c.hkv * c.group;
    let sk = c.sk as i64;
    let mut p = RunParams {
        mask: Some(mask_params(spec, k, sk)),
        ..RunParams::default()
    };
    let mut rng = c.seed | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    match spec.mask {
        Mask::Document | Mask::CausalDocument | Mask::BlockCausalDocument => {
            // Per-batch ids when k[4] is odd; documents are runs of random length.
            let rows = if k[4] % 2 == 1 { c.batch } else { 1 };
            let mut doc = Vec::new();
            for _ in 0..rows {
                let mut id = 0;
                for _ in 0..c.sk {
                    if next() % 9 == 0 {
                        id += 1;
                    }
                    doc.push(id);
                }
            }
            p.doc = Some(doc);
        }
        Mask::ShareQuestion => {
            let question = (k[0] as usize) % (c.sk + 1);
            let mut doc = vec![0; question];
            let mut id = 1;
            for _ in question..c.sk {
                if next() % 7 == 0 {
                    id += 1;
                }
                doc.push(id);
            }
            p.doc = Some(doc);
        }
        Mask::Predicate(_) => {
            let stride = 1 + (k[0] % 4) as i32;
            p = p.with_user("stride", UserValue::Int(stride));
            p.host_mask = Some(Arc::new(dilated(stride)));
        }
        Mask::BlockSparse { .. } => {
            // Random lists: each block of each (b?, h?, r) full, partial or absent.
            let bs = spec.sparse_block;
            let (lb, lh) = (
                if k[4] % 2 == 1 { c.batch } else { 1 },
                if k[5] % 2 == 1 { hq } else { 1 },
            );
            let rows = c.sq.div_ceil(bs.q);
            let cols = c.sk.div_ceil(bs.k);
            let mut table = Vec::new();
            for _ in 0..lb * lh * rows {
                let (mut f, mut pt) = (Vec::new(), Vec::new());
                for col in 0..cols as i32 {
                    match next() % 3 {
                        0 => f.push(col),
                        1 => pt.push(col),
                        _ => {}
                    }
                }
                table.push((f, pt));
            }
            p.block_lists = Some(BlockLists::from_rows(lb, lh, rows, cols, &table));
        }
        _ => {}
    }
    match &spec.score {
        ScoreMod::Softcap => p.softcap = Some([5.0, 30.0, 0.5][(k[3] % 3) as usize]),
        ScoreMod::Alibi => {
            if k[5] % 2 == 1 {
                p.alibi_slopes = Some((0..hq).map(|h| 0.05 * (h + 1) as f32).collect());
            }
        }
        ScoreMod::User(_) => {
            let bias: Vec<f32> = (0..hq).map(|h| (h as f32 - 1.0) * 0.25).collect();
            let decay = (k[3] % 5) as f32 * 0.02;
            p = p
                .with_user("bias", UserValue::Floats(bias.clone()))
                .with_user("decay", UserValue::Float(decay));
            p.host_score = Some(Arc::new(headbias(bias, decay)));
        }
        ScoreMod::None => {}
    }
    p
}

fn tensor<T: Element>(shape: Shape4, seed: u64) -> Tensor4<T> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    Tensor4::from_fn(shape, |_, _, _, _| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        T::from_f64((x >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0)
    })
}

/// Expected (full, partial, mask evaluations) counters, by brute force: analytic masks
/// from the mask's element definition (`allowed` on every in-range element of every
/// `block_m x block_n` tile), list-driven masks from the lists the kernel was given.
fn expected_counters(
    spec: &KernelSpec,
    tile: &TileConfig,
    c: &Case,
    lists: Option<&BlockLists>,
    allowed: &dyn Fn(usize, usize, i64, i64) -> bool,
) -> (u64, u64, u64) {
    let (bm, bn) = (tile.block_m, tile.block_n);
    let hq = c.hkv * c.group;
    let shift = c.sk as i64 - c.sq as i64;
    let has_mask = !matches!(spec.mask, Mask::BlockSparse { mask: None });
    let (mut full, mut part, mut evals) = (0u64, 0u64, 0u64);
    for b in 0..c.batch {
        for h in 0..hq {
            for m0 in (0..c.sq).step_by(bm) {
                let rows = bm.min(c.sq - m0);
                let tiles: Vec<(usize, Option<bool>)> = match lists {
                    Some(l) => {
                        let bs = spec.sparse_block;
                        let r = m0 / bs.q;
                        let mut t = Vec::new();
                        for (is_full, list) in
                            [(true, l.full(b, h, r)), (false, l.partial(b, h, r))]
                        {
                            for &blk in list {
                                for n0 in
                                    (blk as usize * bs.k..(blk as usize + 1) * bs.k).step_by(bn)
                                {
                                    if n0 < c.sk {
                                        t.push((n0, Some(is_full)));
                                    }
                                }
                            }
                        }
                        t
                    }
                    None => (0..c.sk).step_by(bn).map(|n0| (n0, None)).collect(),
                };
                for (n0, listed) in tiles {
                    let cols = bn.min(c.sk - n0);
                    let kind = match listed {
                        Some(f) => Some(f),
                        None => {
                            let mut n = 0;
                            for i in m0..m0 + rows {
                                for j in n0..n0 + cols {
                                    n += usize::from(allowed(b, h, i as i64 + shift, j as i64));
                                }
                            }
                            if n == 0 {
                                None
                            } else {
                                Some(n == rows * cols)
                            }
                        }
                    };
                    match kind {
                        Some(true) => full += 1,
                        Some(false) => {
                            part += 1;
                            if has_mask {
                                evals += (rows * cols) as u64;
                            }
                        }
                        None => {}
                    }
                }
            }
        }
    }
    (full, part, evals)
}

/// The element mask of the case as a closure (built-in masks by their reference definition).
fn element_mask(
    spec: &KernelSpec,
    c: &Case,
    p: &RunParams,
) -> Box<dyn Fn(usize, usize, i64, i64) -> bool> {
    use attnforge_reference::Mask as R;
    let sk = c.sk;
    let get = |n: &str| p.mask.as_ref().and_then(|m| m.get(n)).unwrap_or(0.0) as i64;
    let m = match spec.mask {
        Mask::Full | Mask::BlockSparse { .. } => R::Full,
        Mask::Causal => R::Causal,
        Mask::Local => R::Local {
            left: get("window_left"),
            right: get("window_right"),
        },
        Mask::PrefixLm => R::PrefixLm {
            prefix: get("prefix_len") as usize,
        },
        Mask::GlobalLocal => R::GlobalLocal {
            window: get("window") as usize,
            global: get("global_tokens") as usize,
        },
        Mask::LambdaMask | Mask::LmInfinite => R::Lambda {
            global: get("global_tokens") as usize,
            local: get("local_window") as usize,
        },
        Mask::ChunkedCausal => R::ChunkedCausal {
            chunk: get("chunk_size") as usize,
        },
        Mask::DilatedCausal => R::DilatedCausal {
            window: get("window") as usize,
            dilation: get("dilation") as usize,
        },
        Mask::Predicate(_) => {
            let f = p.host_mask.clone().expect("predicate twin");
            return Box::new(move |b, h, i, j| f(b, h, i, j));
        }
        // List-driven document masks: counters come from the lists.
        _ => R::Full,
    };
    Box::new(move |b, h, i, j| m.allowed(b, h, i, j, sk))
}

fn run_typed<T: Element + SimElem>(
    spec: &KernelSpec,
    c: &Case,
    backend: &Backend,
) -> Result<CheckReport, TestCaseError> {
    let tile = default_tile(spec, Arch::Sm80)
        .ok_or_else(|| TestCaseError::fail(format!("{}: no valid tile", spec.canonical_name())))?;
    let d = spec.head_dim.get();
    let hq = c.hkv * c.group;
    let x = Inputs::new(
        tensor::<T>(Shape4::new(c.batch, hq, c.sq, d), c.seed),
        tensor::<T>(Shape4::new(c.batch, c.hkv, c.sk, d), c.seed ^ 0xA5A5),
        tensor::<T>(Shape4::new(c.batch, c.hkv, c.sk, d), c.seed ^ 0x5A5A),
    );
    let mut p = params(spec, c);
    let backend = match backend {
        Backend::Sim(_) => Backend::Sim(SimConfig::new(c.schedule)),
        b => *b,
    };
    // Document-style masks: build the lists here so that the counters can be predicted.
    if spec.mask.uses_block_lists() && p.block_lists.is_none() {
        let m = doc_mask(spec, &p, c);
        p.block_lists = Some(build_block_lists(
            c.batch,
            if matches!(spec.mask, Mask::Predicate(_)) {
                hq
            } else {
                1
            },
            c.sq,
            c.sk,
            spec.sparse_block,
            m,
        ));
    }
    let report = exec::check(spec, &tile, &x, &p, &backend).map_err(|e| match e {
        ExecError::Mismatch { .. } => TestCaseError::fail(format!("{e}")),
        other => TestCaseError::fail(format!("{}: {other}", spec.canonical_name())),
    })?;
    if let Some(counters) = &report.counters {
        let allowed = element_mask(spec, c, &p);
        let want = expected_counters(spec, &tile, c, p.block_lists.as_ref(), &*allowed);
        let got = (
            counters.tiles_full,
            counters.tiles_partial,
            counters.mask_evals,
        );
        prop_assert_eq!(
            got,
            want,
            "{}: (full, partial, mask evals) visited vs expected",
            report.kernel
        );
    }
    Ok(report)
}

/// Element mask of the list-driven built-in masks (doc ids), by the reference definitions.
fn doc_mask(
    spec: &KernelSpec,
    p: &RunParams,
    c: &Case,
) -> Box<dyn Fn(usize, usize, i64, i64) -> bool> {
    use attnforge_reference::Mask as R;
    let doc = p.doc.clone().unwrap_or_default();
    let m = match spec.mask {
        Mask::Document => R::Document { doc },
        Mask::CausalDocument => R::CausalDocument { doc },
        Mask::ShareQuestion => R::ShareQuestion { doc },
        Mask::BlockCausalDocument => R::BlockCausalDocument {
            doc,
            block: p
                .mask
                .as_ref()
                .and_then(|m| m.get("doc_block"))
                .map_or(1, |v| v as usize),
        },
        _ => return element_mask(spec, c, p),
    };
    let sk = c.sk;
    Box::new(move |b, h, i, j| m.allowed(b, h, i, j, sk))
}

fn run_case(spec: &KernelSpec, c: &Case, backend: &Backend) -> Result<(), TestCaseError> {
    let mut spec = spec.clone();
    spec.dtype = c.dtype;
    if spec.mask.uses_block_lists() {
        // Blocks of 64 x 64 so that short sequences still have several blocks.
        spec.sparse_block = BlockSize { q: 64, k: 64 };
    }
    // On the simulator every case runs under all three schedules (the drawn one first, so a
    // shrunk failure names the schedule that broke); a GPU has its own schedule.
    let schedules: Vec<Schedule> = match backend {
        Backend::Sim(_) => std::iter::once(c.schedule)
            .chain(Schedule::standard(c.seed))
            .fold(Vec::new(), |mut v, s| {
                if !v.contains(&s) {
                    v.push(s);
                }
                v
            }),
        _ => vec![c.schedule],
    };
    for schedule in schedules {
        let c = Case {
            schedule,
            ..c.clone()
        };
        match c.dtype {
            DType::F32 => run_typed::<f32>(&spec, &c, backend),
            DType::F16 => run_typed::<f16>(&spec, &c, backend),
            DType::Bf16 => run_typed::<bf16>(&spec, &c, backend),
        }?;
    }
    Ok(())
}

fn cases() -> u32 {
    std::env::var("ATTNFORGE_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
}

fn run_catalog_entry(index: usize, backend: Backend) {
    let spec = catalog()[index].clone();
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        source_file: Some(file!()),
        ..Config::default()
    });
    let result = runner.run(&case_strategy(&spec), |c| run_case(&spec, &c, &backend));
    if let Err(e) = result {
        panic!("{}: {e}", spec.canonical_name());
    }
}

/// The test list, instantiated once per backend.
macro_rules! catalog_tests {
    ($backend:expr, $available:expr; $($name:ident = $index:expr),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                if let Err(why) = $available {
                    eprintln!("backend unavailable, not run: {why}");
                    return;
                }
                super::run_catalog_entry($index, $backend);
            }
        )*
        /// Every catalog entry has a test in this list.
        #[test]
        fn list_covers_catalog() {
            let listed = [$($index),*];
            assert_eq!(listed.len(), attnforge_runtime::codegen::catalog().len());
        }
    };
}

macro_rules! backend_suite {
    ($backend:expr, $available:expr) => {
        catalog_tests! { $backend, $available;
            full_d128_bf16 = 0, full_d256_f16 = 1, full_d64_f32 = 2, causal_d128_bf16 = 3,
            causal_d64_f16 = 4, causal_gqa = 5, local = 6, local_softcap = 7, prefix_lm = 8,
            document = 9, causal_document = 10, share_question = 11, global_local = 12,
            block_causal_document = 13, lambda_mask = 14, block_sparse = 15, softcap = 16,
            alibi = 17, user_mask = 18, user_score = 19, lm_infinite = 20, chunked_causal = 21,
            dilated_causal = 22,
        }
    };
}

mod sim {
    use super::*;
    backend_suite!(
        Backend::Sim(SimConfig::new(Schedule::Forward)),
        Ok::<(), String>(())
    );
}

mod gpu {
    use super::*;
    fn available() -> Result<(), String> {
        if attnforge_runtime::gpu_available() {
            Ok(())
        } else {
            Err("no CUDA GPU on this machine".into())
        }
    }
    backend_suite!(Backend::Cuda(0), available());
}
