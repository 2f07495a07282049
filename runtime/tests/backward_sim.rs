//! The backward kernels (variants.md section 12) on the simulator against the reference's
//! analytic backward, gradient by gradient, with the tolerance rule of section 0.

use std::sync::Arc;

use attnforge_reference::{DiffScoreFn, Element, Shape4, Tensor4};
use attnforge_runtime::codegen::backward::BackwardTile;
use attnforge_runtime::codegen::blocks::BlockLists;
use attnforge_runtime::codegen::prelude::*;
use attnforge_runtime::exec::{Backend, Inputs, RunParams, UserValue};
use attnforge_runtime::exec_backward::{check_backward, simulate_backward, Upstream};
use attnforge_runtime::sim::{Schedule, SimConfig, SimElem};

mod inputs;
use inputs::normal;

#[derive(Clone, Copy, Debug)]
struct Case {
    batch: usize,
    hq: usize,
    hkv: usize,
    sq: usize,
    sk: usize,
    sigma: f64,
    dlse: bool,
}

fn run<T: Element + SimElem>(
    spec: &KernelSpec,
    c: Case,
    p: &RunParams,
    seed: u64,
) -> Result<(), String> {
    let tile = default_tile(spec, Arch::Sm80).expect("default tile");
    let d = spec.head_dim.get();
    let x = Inputs::new(
        normal::<T>(Shape4::new(c.batch, c.hq, c.sq, d), c.sigma, seed),
        normal::<T>(Shape4::new(c.batch, c.hkv, c.sk, d), c.sigma, seed ^ 0xA5A5),
        normal::<T>(Shape4::new(c.batch, c.hkv, c.sk, d), 1.0, seed ^ 0x5A5A),
    );
    let dout = normal::<T>(Shape4::new(c.batch, c.hq, c.sq, d), 1.0, seed ^ 0x3C3C);
    let dlse: Vec<f32> = (0..c.batch * c.hq * c.sq)
        .map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.1)
        .collect();
    let up = Upstream {
        dout: &dout,
        dlse: c.dlse.then_some(dlse.as_slice()),
    };
    let backend = Backend::Sim(SimConfig::new(Schedule::Forward));
    check_backward(
        spec,
        &tile,
        &BackwardTile::for_spec(spec),
        &x,
        up,
        p,
        &backend,
    )
    .map(|(_, checks)| eprintln!("{} {c:?}: {checks:?}", spec.canonical_name()))
    .map_err(|e| format!("{} {c:?}: {e}", spec.canonical_name()))
}

/// `check(job)` for every job on one worker per core (the jobs are independent simulator
/// runs; one worker would leave a core idle once this test's neighbours are done): the
/// failures, in job order.
fn on_every_core<J: Sync>(
    jobs: &[J],
    check: impl Fn(&J) -> Result<(), String> + Sync,
) -> Vec<String> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut found: Vec<(usize, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(job) = jobs.get(i) else { break mine };
                        if let Err(e) = check(job) {
                            mine.push((i, e));
                        }
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a worker panicked"))
            .collect()
    });
    found.sort_by_key(|(i, _)| *i);
    found.into_iter().map(|(_, e)| e).collect()
}

#[test]
fn causal_f32_smoke() {
    let spec = KernelSpec::new(DType::F32, HeadDim::D64, Mask::Causal, ScoreMod::None).with_gqa();
    let c = Case {
        batch: 1,
        hq: 2,
        hkv: 1,
        sq: 45,
        sk: 70,
        sigma: 1.0,
        dlse: true,
    };
    run::<f32>(&spec, c, &RunParams::default(), 1).unwrap();
}

/// The tensor-core form (f16/bf16, d 64/128): causal GQA, shapes that are not tile multiples,
/// d 128 bf16 and d 64 f16 with dlse.
#[test]
fn causal_tensor_core_smoke() {
    use attnforge_runtime::codegen::backward::mainloop;
    use attnforge_runtime::codegen::tile::Mainloop;
    let c = Case {
        batch: 1,
        hq: 2,
        hkv: 1,
        sq: 77,
        sk: 100,
        sigma: 1.0,
        dlse: true,
    };
    let bf = KernelSpec::new(DType::Bf16, HeadDim::D128, Mask::Causal, ScoreMod::None).with_gqa();
    let f = KernelSpec::new(DType::F16, HeadDim::D64, Mask::Causal, ScoreMod::None).with_gqa();
    for spec in [&bf, &f] {
        let t = BackwardTile::for_spec(spec);
        assert_eq!(mainloop(spec, &t), Mainloop::TensorCore, "{t:?}");
    }
    run::<half::bf16>(&bf, c, &RunParams::default(), 2).unwrap();
    run::<half::f16>(&f, c, &RunParams::default(), 3).unwrap();
    // 32 x 32 list blocks: the 32 x 32 tensor-core tile with 2 warps (dK/dV's 32-query tiles
    // at d 64 too)
    let mut bs = catalog()
        .into_iter()
        .find(|s| s.mask.uses_block_lists() && matches!(s.mask, Mask::BlockSparse { .. }))
        .expect("a block-sparse catalog variant");
    (bs.dtype, bs.head_dim, bs.sparse_block) =
        (DType::F16, HeadDim::D64, BlockSize { q: 32, k: 32 });
    let t = BackwardTile::for_spec(&bs);
    assert_eq!((t.block_m, t.block_n, t.warps), (32, 32, 2));
    assert_eq!(mainloop(&bs, &t), Mainloop::TensorCore);
    let c = Case {
        hkv: 2,
        sq: 70,
        sk: 100,
        ..c
    };
    run::<half::f16>(&bs, c, &params(&bs, c.hq, c.sq, c.sk), 4).unwrap();
}

/// Runtime parameters of a catalog spec for `sk` keys and `hq` query heads (every mask keeps
/// a mix of full, partial and empty tiles).
fn params(spec: &KernelSpec, hq: usize, sq: usize, sk: usize) -> RunParams {
    let mask = match spec.mask {
        Mask::Local => MaskParams::new()
            .with("window_left", 21)
            .with("window_right", 3),
        Mask::PrefixLm => MaskParams::new().with("prefix_len", 29),
        Mask::GlobalLocal => MaskParams::new().with("window", 9).with("global_tokens", 4),
        Mask::BlockCausalDocument => MaskParams::new().with("doc_block", 23),
        Mask::LambdaMask => MaskParams::new()
            .with("global_tokens", 3)
            .with("local_window", 17),
        Mask::ChunkedCausal => MaskParams::new().with("chunk_size", 27),
        Mask::DilatedCausal => MaskParams::new().with("window", 40).with("dilation", 3),
        Mask::LmInfinite => MaskParams::new()
            .with("global_tokens", 3)
            .with("local_window", 17)
            .with("dist_limit", 40)
            .with("rope_theta", 500.0),
        _ => MaskParams::None,
    };
    let mut p = RunParams {
        mask: Some(mask),
        ..RunParams::default()
    };
    match spec.mask {
        Mask::Document | Mask::CausalDocument | Mask::BlockCausalDocument => {
            // documents of lengths 41, 7, 60, ... (not tile multiples)
            p.doc = Some(
                (0..sk as i32)
                    .map(|j| j / 41 + i32::from(j % 41 > 33))
                    .collect(),
            );
        }
        Mask::ShareQuestion => {
            p.doc = Some(
                (0..sk as i32)
                    .map(|j| if j < 13 { 0 } else { 1 + (j - 13) / 37 })
                    .collect(),
            );
        }
        Mask::Predicate(_) => {
            // the catalog's `dilated` predicate and its host twin from the documented definition
            p = p.with_user("stride", UserValue::Int(3));
            p.host_mask = Some(Arc::new(|_, _, q: i64, kv: i64| {
                kv <= q && (q - kv) % 3 == 0
            }));
        }
        Mask::BlockSparse { .. } => {
            // each query block: full, partial and absent key blocks in a fixed pattern
            let bs = spec.sparse_block;
            let (rows, cols) = (sq.div_ceil(bs.q), sk.div_ceil(bs.k));
            let table: Vec<(Vec<i32>, Vec<i32>)> = (0..rows)
                .map(|r| {
                    let (mut full, mut partial) = (Vec::new(), Vec::new());
                    for c in 0..cols {
                        match (r + 2 * c) % 3 {
                            0 => full.push(c as i32),
                            1 => partial.push(c as i32),
                            _ => {}
                        }
                    }
                    (full, partial)
                })
                .collect();
            p.block_lists = Some(BlockLists::from_rows(1, 1, rows, cols, &table));
        }
        _ => {}
    }
    match &spec.score {
        ScoreMod::User(_) => {
            // the catalog's `headbias`: score + bias[h] - decay |q - kv|, its host twin with the
            // derivatives from the documented definition; theta = bias[0..hq], decay
            let bias: Vec<f32> = (0..hq).map(|h| (h as f32 - 1.0) * 0.75).collect();
            let decay = 0.125f32;
            p = p
                .with_user("bias", UserValue::Floats(bias.clone()))
                .with_user("decay", UserValue::Float(decay));
            let mut theta: Vec<f64> = bias.iter().map(|&b| f64::from(b)).collect();
            theta.push(f64::from(decay));
            p.host_score_diff = Some(DiffScoreFn {
                value: Arc::new(move |s, _, h, q, kv, t| s + t[h] - t[hq] * (q - kv).abs() as f64),
                d_score: Arc::new(|_, _, _, _, _, _| 1.0),
                d_params: Some(Arc::new(move |_, _, h, q, kv, _, out| {
                    out.push((h, 1.0));
                    out.push((hq, -((q - kv).abs() as f64)));
                })),
                params: theta,
            });
        }
        ScoreMod::Softcap => p.softcap = Some(7.5),
        ScoreMod::Alibi => p.alibi_slopes = Some((0..hq).map(|h| 0.5 / (h + 1) as f32).collect()),
        _ => {}
    }
    p
}

fn run_any(spec: &KernelSpec, c: Case, p: &RunParams, seed: u64) -> Result<(), String> {
    match spec.dtype {
        DType::F32 => run::<f32>(spec, c, p, seed),
        DType::F16 => run::<half::f16>(spec, c, p, seed),
        DType::Bf16 => run::<half::bf16>(spec, c, p, seed),
    }
}

/// Every catalog variant the backward covers, each with one dtype (rotating through f32,
/// f16, bf16), GQA where the spec has it, Sq != Sk, lengths that are not tile multiples,
/// `dlse` on every other variant and scores up to |s| ~ 1e2 on every third. The variants it
/// does not cover are exactly the listed ones (a new variant cannot slip out silently).
#[test]
fn every_catalog_variant_backward() {
    let mut unsupported = Vec::new();
    let mut jobs = Vec::new();
    for (i, base) in catalog().into_iter().enumerate() {
        let mut spec = base.clone();
        spec.dtype = [DType::F32, DType::F16, DType::Bf16][i % 3];
        if spec.mask.uses_block_lists() {
            // 64 x 64 blocks: several blocks at these lengths
            spec.sparse_block = BlockSize { q: 64, k: 64 };
        }
        if attnforge_runtime::codegen::backward::backward_supported(&spec).is_err() {
            unsupported.push(base.canonical_name());
            continue;
        }
        jobs.push((i, spec));
    }
    let failures = on_every_core(&jobs, |(i, spec)| {
        let i = *i;
        let (hq, hkv) = if spec.gqa { (4, 2) } else { (2, 2) };
        let c = Case {
            batch: 1 + i % 2,
            hq,
            hkv,
            sq: if spec.mask.uses_block_lists() {
                70
            } else {
                37 + i % 5
            },
            sk: if spec.mask.uses_block_lists() {
                150
            } else {
                100 - i % 7
            },
            sigma: if i % 3 == 2 { 3.0 } else { 1.0 },
            dlse: i % 2 == 0,
        };
        run_any(spec, c, &params(spec, hq, c.sq, c.sk), i as u64 + 7)
    });
    assert!(
        unsupported.is_empty(),
        "catalog variants without backward kernels: {unsupported:?} (update docs/backward.md)"
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The catalog variants `every_catalog_variant_backward` runs in f32 (every third), here in
/// bf16: with it every catalog variant that has the tensor-core form (f16/bf16, d 64/128, not
/// LM-Infinite) is checked on it once. Smaller shapes (the other test covers the rest).
#[test]
fn every_catalog_variant_tensor_core() {
    use attnforge_runtime::codegen::backward::mainloop;
    use attnforge_runtime::codegen::tile::Mainloop;
    let mut jobs = Vec::new();
    for (i, base) in catalog()
        .into_iter()
        .enumerate()
        .filter(|(i, _)| i % 3 == 0)
    {
        let mut spec = base.clone();
        spec.dtype = DType::Bf16;
        if spec.mask.uses_block_lists() {
            spec.sparse_block = BlockSize { q: 64, k: 64 };
        }
        let t = BackwardTile::for_spec(&spec);
        if attnforge_runtime::codegen::backward::backward_supported(&spec).is_ok()
            && mainloop(&spec, &t) == Mainloop::TensorCore
        {
            jobs.push((i, spec));
        }
    }
    let checked = jobs.len();
    let failures = on_every_core(&jobs, |(i, spec)| {
        let i = *i;
        let (hq, hkv) = if spec.gqa { (4, 2) } else { (2, 2) };
        let c = Case {
            batch: 1,
            hq,
            hkv,
            sq: if spec.mask.uses_block_lists() { 70 } else { 41 },
            sk: if spec.mask.uses_block_lists() {
                130
            } else {
                75
            },
            sigma: 1.0,
            dlse: i % 2 == 1,
        };
        run_any(spec, c, &params(spec, hq, c.sq, c.sk), i as u64 + 101)
    });
    assert!(checked >= 8, "{checked} variants");
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn inputs<T: Element>(c: Case, d: usize, seed: u64) -> (Inputs<T>, Tensor4<T>) {
    (
        Inputs::new(
            normal::<T>(Shape4::new(c.batch, c.hq, c.sq, d), c.sigma, seed),
            normal::<T>(Shape4::new(c.batch, c.hkv, c.sk, d), c.sigma, seed ^ 0xA5A5),
            normal::<T>(Shape4::new(c.batch, c.hkv, c.sk, d), 1.0, seed ^ 0x5A5A),
        ),
        normal::<T>(Shape4::new(c.batch, c.hq, c.sq, d), 1.0, seed ^ 0x3C3C),
    )
}

/// Two runs give bit-identical gradients (GQA sums and parameter partials in a fixed order),
/// under two different simulator thread schedules.
#[test]
fn two_runs_are_bit_identical() {
    let spec = KernelSpec::new(DType::Bf16, HeadDim::D64, Mask::Causal, ScoreMod::Alibi).with_gqa();
    let c = Case {
        batch: 2,
        hq: 4,
        hkv: 1,
        sq: 50,
        sk: 83,
        sigma: 1.0,
        dlse: false,
    };
    let (x, dout) = inputs::<half::bf16>(c, 64, 5);
    let p = params(&spec, c.hq, c.sq, c.sk);
    let tile = default_tile(&spec, Arch::Sm80).unwrap();
    let up = Upstream {
        dout: &dout,
        dlse: None,
    };
    let [a, b, _] = Schedule::standard(11);
    let run = |s| {
        simulate_backward(
            &spec,
            &tile,
            &BackwardTile::for_spec(&spec),
            &x,
            up,
            &p,
            &SimConfig::new(s),
        )
        .unwrap()
    };
    let (g1, g2) = (run(a), run(b));
    let bits = |t: &Tensor4<f64>| t.data.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&g1.dq), bits(&g2.dq));
    assert_eq!(bits(&g1.dk), bits(&g2.dk));
    assert_eq!(bits(&g1.dv), bits(&g2.dv));
    assert_eq!(g1.score_params, g2.score_params);
    assert!(
        g1.dk.data.iter().any(|&v| v != 0.0),
        "a non-trivial gradient"
    );
}

/// Learnable parameters: the softcap's dc and ALiBi's per-head slopes against the reference,
/// with scores large enough that the cap bends them (|s| up to ~30 against c = 5).
#[test]
fn score_parameter_gradients() {
    for (score, dtype, sigma) in [
        (ScoreMod::Softcap, DType::F32, 2.5),
        (ScoreMod::Softcap, DType::F16, 2.5),
        (ScoreMod::Alibi, DType::Bf16, 1.0),
        (ScoreMod::Alibi, DType::F32, 1.0),
    ] {
        let spec = KernelSpec::new(dtype, HeadDim::D64, Mask::Local, score.clone()).with_gqa();
        let c = Case {
            batch: 2,
            hq: 6,
            hkv: 2,
            sq: 61,
            sk: 77,
            sigma,
            dlse: true,
        };
        let mut p = params(&spec, c.hq, c.sq, c.sk);
        if score == ScoreMod::Softcap {
            p.softcap = Some(5.0);
        }
        run_any(&spec, c, &p, 23).unwrap();
    }
}

/// Sq > Sk under causal (rows before the first key are empty: dq = 0, no NaN), one query, and
/// head dimension 256.
#[test]
fn empty_rows_single_query_and_d256() {
    let causal = KernelSpec::new(DType::F16, HeadDim::D128, Mask::Causal, ScoreMod::None);
    let c = Case {
        batch: 1,
        hq: 2,
        hkv: 2,
        sq: 90,
        sk: 40,
        sigma: 1.0,
        dlse: true,
    };
    run_any(&causal, c, &RunParams::default(), 3).unwrap();
    let full = KernelSpec::new(DType::F32, HeadDim::D128, Mask::Full, ScoreMod::Softcap);
    let c = Case {
        batch: 1,
        hq: 2,
        hkv: 2,
        sq: 1,
        sk: 257,
        sigma: 1.0,
        dlse: false,
    };
    run_any(&full, c, &params(&full, 2, 1, 257), 4).unwrap();
    let d256 = KernelSpec::new(DType::Bf16, HeadDim::D256, Mask::Local, ScoreMod::None);
    let c = Case {
        batch: 1,
        hq: 2,
        hkv: 2,
        sq: 33,
        sk: 70,
        sigma: 1.0,
        dlse: false,
    };
    let mut p = params(&d256, 2, 33, 70);
    p.mask = Some(
        MaskParams::new()
            .with("window_left", 19)
            .with("window_right", 0),
    );
    run_any(&d256, c, &p, 5).unwrap();
}

/// Bad upstream gradients: an error naming the field, before any kernel runs.
#[test]
fn bad_upstream_gradients_name_the_field() {
    let spec = KernelSpec::new(DType::F32, HeadDim::D64, Mask::Causal, ScoreMod::None);
    let c = Case {
        batch: 1,
        hq: 2,
        hkv: 2,
        sq: 20,
        sk: 20,
        sigma: 1.0,
        dlse: false,
    };
    let (x, dout) = inputs::<f32>(c, 64, 9);
    let tile = default_tile(&spec, Arch::Sm80).unwrap();
    let cfg = SimConfig::new(Schedule::Forward);
    let bt = BackwardTile::default();
    let run = |dout: &Tensor4<f32>, dlse: Option<&[f32]>| {
        let up = Upstream { dout, dlse };
        simulate_backward(&spec, &tile, &bt, &x, up, &RunParams::default(), &cfg)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    let short = normal::<f32>(Shape4::new(1, 2, 19, 64), 1.0, 1);
    assert!(
        run(&short, None).starts_with("input `dout`: shape"),
        "{}",
        run(&short, None)
    );
    let mut nan = dout.clone();
    nan.data[77] = f32::NAN;
    let e = run(&nan, None);
    assert!(
        e.starts_with("input `dout`: NaN at (b=0, h=0, row=1, col=13)"),
        "{e}"
    );
    let e = run(&dout, Some(&[0.0; 3]));
    assert!(
        e.starts_with("input `dlse`: 3 values for 40 query rows"),
        "{e}"
    );
    let mut inf = vec![0.0f32; 40];
    inf[5] = f32::INFINITY;
    let e = run(&dout, Some(&inf));
    assert!(e.starts_with("input `dlse`: inf at flat index 5"), "{e}");
    let mut user = catalog()
        .into_iter()
        .find(|s| matches!(s.score, ScoreMod::User(_)))
        .unwrap();
    if let ScoreMod::User(f) = &mut user.score {
        f.grad = None; // a score function without derivatives
    }
    let e = attnforge_runtime::codegen::backward::backward_supported(&user).unwrap_err();
    assert_eq!(e[0].path, "score.grad");
}

/// LM-Infinite: gradients through both branches' rotations (near: q and k at their positions;
/// far: q at Deff, k un-rotated), every dtype, d 64 and 128, with tiles that take one branch,
/// the other, and both (global tokens 3, window 17, Deff 40 < Sk - 1).
#[test]
fn lm_infinite_both_branches() {
    for (dtype, d, sigma) in [
        (DType::F32, HeadDim::D64, 1.0),
        (DType::F16, HeadDim::D128, 1.0),
        (DType::Bf16, HeadDim::D64, 2.0),
    ] {
        let spec = KernelSpec::new(dtype, d, Mask::LmInfinite, ScoreMod::None).with_gqa();
        let c = Case {
            batch: 1,
            hq: 4,
            hkv: 2,
            sq: 70,
            sk: 133,
            sigma,
            dlse: true,
        };
        run_any(&spec, c, &params(&spec, c.hq, c.sq, c.sk), 31).unwrap();
    }
}

/// A user score function with a learnable per-head table and a learnable scalar (the
/// catalog's `headbias`), under GQA, every dtype: dq, dk, dv and the gradient of every
/// element of the learnable vector against the reference. Seed 1: with five elements, the
/// max-error ratio of two equally accurate f32 sums (kernel, naive) is a small sample; over
/// seeds 1-6 and 41 the f16 kernel/naive ratio of `ddecay` was 0.4-1.5, and 2.05 at seed 41
/// (docs/backward.md, "Tolerance of the parameter gradients").
#[test]
fn user_score_function_table_gradients() {
    let base = catalog()
        .into_iter()
        .find(|s| matches!(s.score, ScoreMod::User(_)))
        .unwrap();
    for (dtype, mask) in [
        (DType::F32, Mask::Causal),
        (DType::F16, Mask::Local),
        (DType::Bf16, Mask::Full),
    ] {
        let mut spec = base.clone();
        spec.dtype = dtype;
        spec.mask = mask;
        spec.gqa = true;
        let c = Case {
            batch: 2,
            hq: 4,
            hkv: 2,
            sq: 45,
            sk: 71,
            sigma: 1.0,
            dlse: true,
        };
        run_any(&spec, c, &params(&spec, c.hq, c.sq, c.sk), 1).unwrap();
    }
}
