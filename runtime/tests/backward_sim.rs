//! The backward kernels (variants.md section 12) on the simulator against the reference's
//! analytic backward, gradient by gradient, with the tolerance rule of section 0.

use std::sync::Arc;

use attnforge_reference::{Element, Shape4, Tensor4};
use attnforge_runtime::codegen::backward::BackwardTile;
use attnforge_runtime::codegen::blocks::BlockLists;
use attnforge_runtime::codegen::prelude::*;
use attnforge_runtime::exec::{Inputs, RunParams, UserValue};
use attnforge_runtime::exec_backward::{check_backward, Upstream};
use attnforge_runtime::sim::{Schedule, SimConfig, SimElem};

/// Deterministic N(0, sigma^2) samples (xorshift64 + Box-Muller), rounded to `T`.
fn normal<T: Element>(shape: Shape4, sigma: f64, seed: u64) -> Tensor4<T> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut uniform = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    Tensor4::from_fn(shape, |_, _, _, _| {
        let (u1, u2) = (uniform(), uniform());
        T::from_f64(sigma * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos())
    })
}

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
    let cfg = SimConfig::new(Schedule::Forward);
    check_backward(spec, &tile, &BackwardTile::default(), &x, up, p, &cfg)
        .map(|(_, checks)| eprintln!("{} {c:?}: {checks:?}", spec.canonical_name()))
        .map_err(|e| format!("{} {c:?}: {e}", spec.canonical_name()))
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
    let mut failures = Vec::new();
    let mut unsupported = Vec::new();
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
        if let Err(e) = run_any(&spec, c, &params(&spec, hq, c.sq, c.sk), i as u64 + 7) {
            failures.push(e);
        }
    }
    assert_eq!(
        unsupported,
        [
            "flash_fwd_causal_score_headbias_d64_f32",
            "flash_fwd_lm_infinite_d128_bf16"
        ],
        "the backward's coverage changed: update this list and docs/backward.md"
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
