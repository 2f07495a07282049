//! Large-magnitude accuracy on the simulator: scores up to |s| ~ 1e3 (q, k ~ N(0, sigma^2)
//! give `s ~ N(0, sigma^4)` at the default scale), for every static catalog variant and
//! every dtype, at the documented tolerance of docs/correctness.md (the relative oracle of
//! variants.md section 0, never loosened).
//!
//! The gentle inputs of `catalog_props` (uniform in [-1, 1]) keep scores below ~1 and do
//! not see errors that grow with the score magnitude: a dot product summed one element at
//! a time, or rotated q/k rounded differently from the naive path. The exact repros of
//! issue 15 (Accuracy items 1 and 2) come first, then one deterministic case per (variant,
//! dtype) with shapes that are not tile multiples, `Sq < Sk` and GQA where the kernel has
//! it. Every variant here is ranking-free, so large scores need no tie handling.

use std::sync::Arc;

use attnforge_reference::{Element, Shape4};
use attnforge_runtime::codegen::blocks::BlockLists;
use attnforge_runtime::codegen::prelude::*;
use attnforge_runtime::codegen::tile::Mainloop;
use attnforge_runtime::exec::{self, Backend, CheckReport, Inputs, RunParams, UserValue};
use attnforge_runtime::sim::{Schedule, SimConfig, SimElem};
use half::{bf16, f16};

mod inputs;
use inputs::normal;

/// Problem shape of one case.
#[derive(Clone, Copy, Debug)]
struct Shape {
    batch: usize,
    hq: usize,
    hkv: usize,
    sq: usize,
    sk: usize,
}

/// Run `spec` (default tile) on the simulator with q, k ~ N(0, sigma^2) and v ~ N(0, 1),
/// and compare it with the reference by the documented oracle. The error names the case.
fn check_typed<T: Element + SimElem>(
    spec: &KernelSpec,
    s: Shape,
    sigma: f64,
    p: &RunParams,
    seed: u64,
) -> Result<CheckReport, String> {
    let tile = default_tile(spec, Arch::Sm80).expect("catalog specs have a default tile");
    let d = spec.head_dim.get();
    let x = Inputs::new(
        normal::<T>(Shape4::new(s.batch, s.hq, s.sq, d), sigma, seed),
        normal::<T>(Shape4::new(s.batch, s.hkv, s.sk, d), sigma, seed ^ 0xA5A5),
        normal::<T>(Shape4::new(s.batch, s.hkv, s.sk, d), 1.0, seed ^ 0x5A5A),
    );
    exec::check(spec, &tile, &x, p, &Backend::sim())
        .map_err(|e| format!("{} {s:?} sigma {sigma}: {e}", spec.canonical_name()))
}

fn check_case(
    spec: &KernelSpec,
    s: Shape,
    sigma: f64,
    p: &RunParams,
    seed: u64,
) -> Result<CheckReport, String> {
    match spec.dtype {
        DType::F32 => check_typed::<f32>(spec, s, sigma, p, seed),
        DType::F16 => check_typed::<f16>(spec, s, sigma, p, seed),
        DType::Bf16 => check_typed::<bf16>(spec, s, sigma, p, seed),
    }
}

/// Print the measured errors (visible with `--nocapture`) and fail with the oracle's detail.
fn expect_pass(r: Result<CheckReport, String>) {
    match r {
        Ok(rep) => eprintln!(
            "{}: out err {:.3e} (naive {:.3e}, bound {:.3e}), lse err {:.3e} (naive {:.3e}, bound {:.3e})",
            rep.kernel,
            rep.close.out.max_err,
            rep.close.out.naive_err,
            rep.close.out.bound,
            rep.close.lse.max_err,
            rep.close.lse.naive_err,
            rep.close.lse.bound
        ),
        Err(e) => panic!("{e}"),
    }
}

// ---- issue 15, Accuracy item 1: LM-Infinite rounds the rotated q and k to the input dtype ----

/// B 2, H 2, Sq = Sk = 257, d 64, G 0, L 5, Dlim 20, theta 500, f16, q/k ~ N(0, 1): the kernel feeds
/// the rotated q and k to the tensor cores in f16; the naive path must round them the same
/// way or its error does not bound the kernel's (before: lse error 1.15e-3 vs a bound of
/// 1.01e-3, the naive lse error 3.9e-6).
#[test]
fn lm_infinite_f16_rotated_qk_rounding_repro() {
    let spec = KernelSpec::new(DType::F16, HeadDim::D64, Mask::LmInfinite, ScoreMod::None);
    let p = RunParams {
        mask: Some(
            MaskParams::new()
                .with("global_tokens", 0)
                .with("local_window", 5)
                .with("dist_limit", 20)
                .with("rope_theta", 500.0),
        ),
        ..RunParams::default()
    };
    let s = Shape {
        batch: 2,
        hq: 2,
        hkv: 2,
        sq: 257,
        sk: 257,
    };
    expect_pass(check_case(&spec, s, 1.0, &p, 0));
}

/// Both mainloops follow the same contract for f16 LM-Infinite: the FMA mainloop (a tile with
/// `block_m != 16 * warps`) rounds the rotated q and k to f16 as the tensor-core mainloop
/// does, so their scores, hence lse, agree to f32 accumulation error. Without the rounding
/// the FMA scores differ by the f16 rounding of the rotated vectors (lse ~1e-4 apart).
#[test]
fn lm_infinite_f16_fma_and_tensor_core_mainloops_round_alike() {
    let spec = KernelSpec::new(DType::F16, HeadDim::D64, Mask::LmInfinite, ScoreMod::None);
    let p = RunParams {
        mask: Some(
            MaskParams::new()
                .with("global_tokens", 4)
                .with("local_window", 9)
                .with("dist_limit", 20)
                .with("rope_theta", 500.0),
        ),
        ..RunParams::default()
    };
    let (b, h, sq, sk, d) = (1, 2, 77, 130, 64);
    let x = Inputs::new(
        normal::<f16>(Shape4::new(b, h, sq, d), 1.0, 7),
        normal::<f16>(Shape4::new(b, h, sk, d), 1.0, 8),
        normal::<f16>(Shape4::new(b, h, sk, d), 1.0, 9),
    );
    let cfg = SimConfig::new(Schedule::Forward);
    let tc = TileConfig::new(64, 32, 4, 2);
    let fma = TileConfig::new(64, 32, 8, 1);
    assert_eq!(Mainloop::select(&spec, &tc), Mainloop::TensorCore);
    assert_eq!(Mainloop::select(&spec, &fma), Mainloop::Fma);
    let a = exec::simulate(&spec, &tc, &x, &p, &cfg).expect("tensor-core run");
    let f = exec::simulate(&spec, &fma, &x, &p, &cfg).expect("fma run");
    let mut worst = 0f64;
    for (u, w) in a.output.lse.iter().zip(&f.output.lse) {
        assert_eq!(
            u.is_finite(),
            w.is_finite(),
            "empty rows differ: {u} vs {w}"
        );
        if u.is_finite() {
            worst = worst.max((u - w).abs());
        }
    }
    eprintln!("lse |tensor core - fma| max {worst:.3e}");
    assert!(
        worst <= 2e-5,
        "lse of the two mainloops differ by {worst:.3e} (> 2e-5): the rotated q/k are not rounded alike"
    );
}

// ---- issue 15, Accuracy item 2: f32 with scores around 1e3 ----

fn f32_spec(d: HeadDim, mask: Mask) -> KernelSpec {
    KernelSpec::new(DType::F32, d, mask, ScoreMod::None).with_gqa()
}

/// causal B1 Hq2 Sq = Sk = 129 d64, q, k ~ N(0, 32^2) (issue: out error 4.5e-4 against a
/// naive f32 error of 5.0e-5). Before the fix, with this draw: out error 6.17e-5 against a
/// bound of 5.79e-5 (ratio 2.6); after, 2.39e-5 (naive 2.40e-5).
#[test]
fn f32_causal_d64_scores_1e3_repro() {
    let s = Shape {
        batch: 1,
        hq: 2,
        hkv: 2,
        sq: 129,
        sk: 129,
    };
    let spec = f32_spec(HeadDim::D64, Mask::Causal);
    expect_pass(check_case(&spec, s, 32.0, &RunParams::default(), 2));
}

/// full d256 Sq 37 Sk 100, q, k ~ N(0, 32^2) (issue: out error 2.3e-4). The scale 1/16 is
/// exact, so the old kernel lost bits only to `s * log2 e`: this draw passed before the fix
/// too (out 3.99e-4 vs naive 4.31e-4) and stays as a regression case.
#[test]
fn f32_full_d256_scores_1e3_repro() {
    let s = Shape {
        batch: 1,
        hq: 2,
        hkv: 2,
        sq: 37,
        sk: 100,
    };
    let spec = f32_spec(HeadDim::D256, Mask::Full);
    expect_pass(check_case(&spec, s, 32.0, &RunParams::default(), 3));
}

/// full Sq 1 Sk 257 d128, q, k ~ N(0, 32^2) (issue: lse error 1.2e-3 at |lse| ~ 3658). Before
/// the fix, with this draw: lse error 4.98e-4 against a bound of 2.86e-4 (ratio 3.6).
#[test]
fn f32_full_d128_single_query_scores_1e3_repro() {
    let s = Shape {
        batch: 1,
        hq: 2,
        hkv: 2,
        sq: 1,
        sk: 257,
    };
    let spec = f32_spec(HeadDim::D128, Mask::Full);
    expect_pass(check_case(&spec, s, 32.0, &RunParams::default(), 6));
}

// ---- issue 15, Accuracy item 4: every static variant x every dtype at large magnitude ----

/// Host twin of the catalog's `dilated` predicate, from its documented definition.
fn dilated(stride: i64) -> impl Fn(usize, usize, i64, i64) -> bool + Send + Sync + 'static {
    move |_, _, q, kv| kv <= q && (q - kv) % stride == 0
}

/// Host twin of the catalog's `headbias` score, from its documented definition.
fn headbias(bias: Vec<f32>, decay: f32) -> impl Fn(f64, usize, usize, i64, i64) -> f64 {
    move |s, _, h, q, kv| s + f64::from(bias[h]) - f64::from(decay) * (q - kv).abs() as f64
}

/// Runtime parameters of a catalog spec for shape `s` (fixed, chosen so that every mask
/// keeps a mix of full, partial and empty tiles).
fn params(spec: &KernelSpec, s: Shape) -> RunParams {
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
        Mask::LmInfinite => MaskParams::new()
            .with("global_tokens", 3)
            .with("local_window", 17)
            .with("dist_limit", 40)
            .with("rope_theta", 500.0),
        Mask::ChunkedCausal => MaskParams::new().with("chunk_size", 27),
        Mask::DilatedCausal => MaskParams::new().with("window", 40).with("dilation", 3),
        _ => MaskParams::None,
    };
    let mut p = RunParams {
        mask: Some(mask),
        ..RunParams::default()
    };
    match spec.mask {
        Mask::Document | Mask::CausalDocument | Mask::BlockCausalDocument => {
            // Documents of lengths 41, 7, 60, ... (not block multiples).
            p.doc = Some(
                (0..s.sk as i32)
                    .map(|j| j / 41 + i32::from(j % 41 > 33))
                    .collect(),
            );
        }
        Mask::ShareQuestion => {
            p.doc = Some(
                (0..s.sk as i32)
                    .map(|j| if j < 13 { 0 } else { 1 + (j - 13) / 37 })
                    .collect(),
            );
        }
        Mask::Predicate(_) => {
            p = p.with_user("stride", UserValue::Int(3));
            p.host_mask = Some(Arc::new(dilated(3)));
        }
        Mask::BlockSparse { .. } => {
            // Each query block: full, partial and absent key blocks in a fixed pattern.
            let bs = spec.sparse_block;
            let (rows, cols) = (s.sq.div_ceil(bs.q), s.sk.div_ceil(bs.k));
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
        ScoreMod::Softcap => p.softcap = Some(30.0),
        ScoreMod::Alibi => {
            p.alibi_slopes = Some((0..s.hq).map(|h| 0.5 / (h + 1) as f32).collect());
        }
        ScoreMod::User(_) => {
            let bias: Vec<f32> = (0..s.hq).map(|h| (h as f32 - 1.0) * 7.5).collect();
            let decay = 0.25;
            p = p
                .with_user("bias", UserValue::Floats(bias.clone()))
                .with_user("decay", UserValue::Float(decay));
            p.host_score = Some(Arc::new(headbias(bias, decay)));
        }
        ScoreMod::None => {}
    }
    p
}

/// One deterministic large-magnitude case per (catalog variant, dtype); all failures are
/// collected so that one run reports every miss.
#[test]
fn every_static_variant_and_dtype_at_scores_up_to_1e3() {
    let mut failures = Vec::new();
    for (index, base) in catalog().into_iter().enumerate() {
        for (t, dtype) in [DType::F32, DType::F16, DType::Bf16]
            .into_iter()
            .enumerate()
        {
            let mut spec = base.clone();
            spec.dtype = dtype;
            let lists = spec.mask.uses_block_lists();
            if lists {
                // 64 x 64 blocks (as catalog_props): several blocks at these lengths.
                spec.sparse_block = BlockSize { q: 64, k: 64 };
            }
            let (hq, hkv) = if spec.gqa { (6, 2) } else { (2, 2) };
            let s = Shape {
                batch: 1,
                hq,
                hkv,
                sq: if lists { 70 } else { 37 },
                sk: if lists { 150 } else { 100 },
            };
            // sigma 32: |s| up to ~3e3 at d64; alternate with sigma 16 (|s| up to ~1e3).
            let sigma = if (index + t) % 2 == 0 { 32.0 } else { 16.0 };
            let p = params(&spec, s);
            let seed = (index * 3 + t) as u64 + 100;
            match check_case(&spec, s, sigma, &p, seed) {
                Ok(rep) => eprintln!(
                    "{} sigma {sigma}: out {:.2e}/{:.2e} lse {:.2e}/{:.2e} (err/bound)",
                    rep.kernel,
                    rep.close.out.max_err,
                    rep.close.out.bound,
                    rep.close.lse.max_err,
                    rep.close.lse.bound
                ),
                Err(e) => failures.push(e),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
