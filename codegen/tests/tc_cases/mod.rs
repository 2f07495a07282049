//! The one list of tensor-core cases (every static variant of variants.md sections 1-5, in
//! f16 and bf16), shared by the simulator test (`tests/sim.rs`) and the GPU test
//! (`tests/gpu.rs`): the same suite for every backend.
//!
//! Shapes are small, with `Sq != Sk` and lengths that are not tile multiples; the stage
//! count cycles through 1..=3 over the list so every pipeline depth runs.

#![allow(dead_code)]

use attnforge_codegen::catalog::{example_mask_fn, example_score_fn};
use attnforge_codegen::prelude::*;
use attnforge_reference::{Element, Shape4, Tensor4};
use attnforge_runtime::exec::{
    check, Backend, CheckReport, ExecError, Inputs, RunParams, UserValue,
};
use half::{bf16, f16};

/// One case: spec, tile, sizes `(b, hq, hkv, sq, sk)`, runtime parameters.
#[derive(Clone, Debug)]
pub struct TcCase {
    /// Readable id (canonical name + tile suffix).
    pub name: String,
    /// The spec.
    pub spec: KernelSpec,
    /// The tile (always a tensor-core tile).
    pub tile: TileConfig,
    /// `(batch, heads_q, heads_kv, seq_q, seq_k)`.
    pub dims: (usize, usize, usize, usize, usize),
    /// Runtime parameters.
    pub params: RunParams,
}

fn docs(sk: usize, cuts: &[usize]) -> Vec<i32> {
    (0..sk)
        .map(|j| cuts.iter().filter(|&&c| j >= c).count() as i32)
        .collect()
}

/// Every static variant (mask x score) with its runtime parameters, for `dtype` and `d`.
pub fn variants(dtype: DType, d: HeadDim) -> Vec<TcCase> {
    let (sq, sk) = (50, 77);
    variant_specs(dtype, d, sk, BlockSize { q: 32, k: 32 })
        .into_iter()
        .enumerate()
        .map(|(i, (spec, params, (hq, hkv)))| {
            // head dim 64: one or two 16-row slabs per warp (block_m = 16 or 32 x warps),
            // alternating over the variants and between the f16 and bf16 suites, so every
            // variant runs both (two slabs at d128 are over the register estimate)
            let two_slabs = d == HeadDim::D64 && (i + usize::from(dtype == DType::Bf16)) % 2 == 1;
            let tile = TileConfig::new(32, 32, if two_slabs { 1 } else { 2 }, 1 + i % 3);
            TcCase {
                name: canonical_name_with_tile(&spec, &tile),
                spec,
                tile,
                dims: (1, hq, hkv, sq, sk),
                params,
            }
        })
        .collect()
}

/// Every variant of [`variants`] the Hopper warpgroup-MMA mainloop runs (all but LM-Infinite)
/// on wgmma tiles, cycling over six: block_m 64 / 128 (one or two consumer warpgroups) x
/// block_n 64 / 128, stages 1..=3 (3: the software-pipelined loop), with and without a
/// producer warpgroup (warp specialization); lengths that are not tile multiples (`Sq = 150`,
/// `Sk = 333`: two query blocks at 128 rows, three to six key tiles), block lists of 128 x 128
/// blocks; plus causal with `Sq > Sk` (empty rows).
pub fn wgmma_variants(dtype: DType, d: HeadDim) -> Vec<TcCase> {
    let (sq, sk) = (150, 333);
    let tiles = [
        TileConfig::wgmma(64, 64, 1),
        TileConfig::wgmma_specialized(128, 128, 2),
        TileConfig::wgmma(64, 128, 3),
        TileConfig::wgmma_specialized(64, 128, 3),
        TileConfig::wgmma(128, 64, 2),
        TileConfig::wgmma_specialized(128, 64, 3),
    ];
    let mut list = variant_specs(dtype, d, sk, BlockSize { q: 128, k: 128 });
    list.retain(|(s, _, _)| !s.mask.lm_infinite_scoring());
    let mut cases: Vec<TcCase> = list
        .into_iter()
        .enumerate()
        .map(|(i, (spec, params, (hq, hkv)))| {
            // shifted by the dtype, so the f16 and bf16 suites pair variants with other tiles;
            // the next one where the register estimate rejects a tile for a spec (a user
            // score at block_n 128)
            let first = i + 3 * usize::from(dtype == DType::Bf16);
            let tile = (first..first + tiles.len())
                .map(|j| tiles[j % tiles.len()])
                .find(|t| t.valid(&spec, Arch::Sm90).is_ok())
                .expect("a wgmma tile for every non-LM-Infinite variant");
            TcCase {
                name: canonical_name_with_tile(&spec, &tile),
                spec,
                tile,
                dims: (1, hq, hkv, sq, sk),
                params,
            }
        })
        .collect();
    let causal = KernelSpec::new(dtype, d, Mask::Causal, ScoreMod::None).with_gqa();
    let tile = TileConfig::wgmma_specialized(128, 64, 2);
    cases.push(TcCase {
        name: canonical_name_with_tile(&causal, &tile),
        spec: causal,
        tile,
        dims: (2, 4, 2, 200, 90),
        params: RunParams::default(),
    });
    cases
}

/// The variants' specs, runtime parameters (for `sk` keys; block lists of `bs` blocks, 2 x 3
/// of them) and heads `(hq, hkv)`.
fn variant_specs(
    dtype: DType,
    d: HeadDim,
    sk: usize,
    bs: BlockSize,
) -> Vec<(KernelSpec, RunParams, (usize, usize))> {
    let none = ScoreMod::None;
    // documents of 20, 1, 39 keys, then (past 77 keys) 90 and 110 keys and the rest
    let doc = docs(sk, &[20, 21, 60, 150, 260]);
    let qdoc: Vec<i32> = docs(sk, &[15, 50]).into_iter().map(|x| x.min(2)).collect();
    let mut list: Vec<(KernelSpec, RunParams, (usize, usize))> = vec![
        (
            KernelSpec::new(dtype, d, Mask::Full, none.clone()),
            RunParams::default(),
            (2, 2),
        ),
        (
            KernelSpec::new(dtype, d, Mask::Causal, none.clone()),
            RunParams::default(),
            (2, 2),
        ),
        (
            KernelSpec::new(dtype, d, Mask::Causal, none.clone()).with_gqa(),
            RunParams::default(),
            (4, 2),
        ),
        (
            KernelSpec::new(dtype, d, Mask::Local, none.clone()),
            RunParams::default().with_mask(
                MaskParams::new()
                    .with("window_left", 20)
                    .with("window_right", 5),
            ),
            (1, 1),
        ),
        (
            KernelSpec::new(dtype, d, Mask::PrefixLm, none.clone()),
            RunParams::default().with_mask(MaskParams::new().with("prefix_len", 23)),
            (1, 1),
        ),
        (
            KernelSpec::new(dtype, d, Mask::GlobalLocal, none.clone()),
            RunParams::default()
                .with_mask(MaskParams::new().with("window", 9).with("global_tokens", 5)),
            (1, 1),
        ),
        (
            KernelSpec::new(dtype, d, Mask::LambdaMask, none.clone()),
            RunParams::default().with_mask(
                MaskParams::new()
                    .with("global_tokens", 3)
                    .with("local_window", 11),
            ),
            (1, 1),
        ),
        (
            KernelSpec::new(dtype, d, Mask::LmInfinite, none.clone()),
            RunParams::default().with_mask(
                MaskParams::new()
                    .with("global_tokens", 3)
                    .with("local_window", 20)
                    .with("dist_limit", 24)
                    .with("rope_theta", 10000.0),
            ),
            (1, 1),
        ),
        (
            KernelSpec::new(dtype, d, Mask::Document, none.clone()),
            RunParams::default().with_doc(doc.clone()),
            (1, 1),
        ),
        (
            KernelSpec::new(dtype, d, Mask::CausalDocument, none.clone()),
            RunParams::default().with_doc(doc.clone()),
            (1, 1),
        ),
        (
            KernelSpec::new(dtype, d, Mask::ShareQuestion, none.clone()),
            RunParams::default().with_doc(qdoc),
            (1, 1),
        ),
        (
            KernelSpec::new(dtype, d, Mask::BlockCausalDocument, none.clone()),
            RunParams::default()
                .with_doc(doc)
                .with_mask(MaskParams::new().with("doc_block", 16)),
            (1, 1),
        ),
        (
            KernelSpec::new(dtype, d, Mask::Predicate(example_mask_fn()), none.clone()),
            RunParams::default()
                .with_user("stride", UserValue::Int(3))
                .with_host_mask(|_, _, p, j| j <= p && (p - j) % 3 == 0),
            (1, 1),
        ),
        (
            KernelSpec::new(dtype, d, Mask::BlockSparse { mask: None }, none.clone()),
            RunParams {
                // per head: full and partial blocks (no mask: partial = in range)
                block_lists: Some(BlockLists::from_rows(
                    1,
                    2,
                    2,
                    3,
                    &[
                        (vec![0], vec![2]),
                        (vec![1, 2], vec![]),
                        (vec![], vec![0, 1]),
                        (vec![2], vec![0]),
                    ],
                )),
                ..RunParams::default()
            },
            (2, 2),
        ),
        (
            KernelSpec::new(dtype, d, Mask::Local, ScoreMod::Softcap),
            RunParams::default()
                .with_mask(
                    MaskParams::new()
                        .with("window_left", 30)
                        .with("window_right", -1),
                )
                .with_softcap(2.0),
            (1, 1),
        ),
        (
            KernelSpec::new(dtype, d, Mask::Causal, ScoreMod::Alibi),
            RunParams::default(),
            (2, 2),
        ),
        (
            KernelSpec::new(dtype, d, Mask::Causal, ScoreMod::User(example_score_fn())),
            RunParams::default()
                .with_user("bias", UserValue::Floats(vec![0.5, -1.0]))
                .with_user("decay", UserValue::Float(0.03))
                .with_host_score(|s, _, h, p, j| {
                    s + [0.5f32, -1.0][h] as f64 - 0.03f32 as f64 * (p - j).abs() as f64
                }),
            (2, 2),
        ),
    ];
    for (s, _, _) in &mut list {
        if s.mask.uses_block_lists() {
            s.sparse_block = bs;
        }
    }
    list
}

/// The d = 256 case (dense, one pipelined config) and the `Sq > Sk` causal case.
pub fn extra(dtype: DType) -> Vec<TcCase> {
    let full = KernelSpec::new(dtype, HeadDim::D256, Mask::Full, ScoreMod::None);
    let causal = KernelSpec::new(dtype, HeadDim::D64, Mask::Causal, ScoreMod::None);
    let (t1, t2) = (TileConfig::new(32, 32, 2, 2), TileConfig::new(64, 64, 4, 3));
    vec![
        TcCase {
            name: canonical_name_with_tile(&full, &t1),
            spec: full,
            tile: t1,
            dims: (1, 1, 1, 40, 70),
            params: RunParams::default(),
        },
        TcCase {
            name: canonical_name_with_tile(&causal, &t2),
            spec: causal,
            tile: t2,
            dims: (1, 1, 1, 90, 40),
            params: RunParams::default(),
        },
    ]
}

/// Deterministic inputs in [-1, 1) (a xorshift stream per tensor).
fn tensor<T: Element>(s: Shape4, seed: u64) -> Tensor4<T> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    Tensor4::from_fn(s, |_, _, _, _| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        T::from_f64((x >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0)
    })
}

/// Run one case on `backend` and compare with the f64 reference (variants.md section 0
/// oracle, `Tolerance::for_dtype`).
pub fn run_case(c: &TcCase, backend: &Backend) -> Result<CheckReport, ExecError> {
    let (b, hq, hkv, sq, sk) = c.dims;
    let d = c.spec.head_dim.get();
    match c.spec.dtype {
        DType::F16 => {
            let x = Inputs::new(
                tensor::<f16>(Shape4::new(b, hq, sq, d), 1),
                tensor::<f16>(Shape4::new(b, hkv, sk, d), 2),
                tensor::<f16>(Shape4::new(b, hkv, sk, d), 3),
            );
            check(&c.spec, &c.tile, &x, &c.params, backend)
        }
        DType::Bf16 => {
            let x = Inputs::new(
                tensor::<bf16>(Shape4::new(b, hq, sq, d), 1),
                tensor::<bf16>(Shape4::new(b, hkv, sk, d), 2),
                tensor::<bf16>(Shape4::new(b, hkv, sk, d), 3),
            );
            check(&c.spec, &c.tile, &x, &c.params, backend)
        }
        DType::F32 => {
            let x = Inputs::new(
                tensor::<f32>(Shape4::new(b, hq, sq, d), 1),
                tensor::<f32>(Shape4::new(b, hkv, sk, d), 2),
                tensor::<f32>(Shape4::new(b, hkv, sk, d), 3),
            );
            check(&c.spec, &c.tile, &x, &c.params, backend)
        }
    }
}
