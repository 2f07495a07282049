//! The decode kernel (`Layout::Decode`, variants.md section 13): GQA groups packed into the
//! M tile, the keys split across blocks and merged by log-sum-exp, on a paged cache; on the
//! simulator against the per-sequence dense reference (the oracle of the dense check), and
//! its split partials' merge against the split-KV reference.
//!
//! Few cases (every one runs the exact generated CUDA on the CPU): small shapes whose packed
//! rows and keys still cross tile boundaries. `ATTNFORGE_PROPTEST_CASES` sets the random cases.

use attnforge_reference::{Element, Packed};
use attnforge_runtime::codegen::check::MaskParams;
use attnforge_runtime::codegen::emit::{emit_split_merge, emit_with, SymbolStyle};
use attnforge_runtime::codegen::prelude::*;
use attnforge_runtime::codegen::spec::Layout;
use attnforge_runtime::exec::RunParams;
use attnforge_runtime::exec::{self, ExecError};
use attnforge_runtime::exec_serving::{self, ServingInputs, ServingKeys};
use attnforge_runtime::sim::SimElem;
use attnforge_runtime::{build_kernel, build_with_cache, Compiler, KernelCache, KernelSource};
use half::{bf16, f16};
use std::sync::Arc;

fn cases() -> u64 {
    std::env::var("ATTNFORGE_PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2)
}

mod inputs;
use inputs::{cu, paged, sim_cfg as cfg, Rng};

fn decode(dtype: DType, d: HeadDim, mask: Mask, score: ScoreMod) -> KernelSpec {
    let mut s = KernelSpec::new(dtype, d, mask, score).with_layout(Layout::Decode);
    s.gqa = true;
    s
}

/// Kernel vs the per-sequence dense reference (the dense check's oracle) at `splits`.
fn check<T: Element + SimElem>(
    spec: &KernelSpec,
    x: &ServingInputs<T>,
    p: &RunParams,
    splits: usize,
    seed: u64,
) {
    let tile = default_tile(spec, Arch::Sm80).expect("a tile");
    let p = p.clone().with_num_splits(splits);
    if let Err(e) = exec_serving::check(spec, &tile, x, &p, &cfg(seed)) {
        panic!(
            "{} splits {splits} ({:?}): {e}",
            spec.canonical_name(),
            x.cu_seqlens_q
        );
    }
}

/// Runtime parameters of a case: a random window for the sliding window, a softcap, the
/// mask table's defaults otherwise.
fn params(spec: &KernelSpec, seed: u64, max_sk: usize) -> RunParams {
    let mut p = RunParams::default();
    if let Some(def) = spec.mask.def() {
        let mut m = MaskParams::new();
        for q in def.params {
            m.set(q.name, q.default.at(max_sk.max(1)));
        }
        p = p.with_mask(m);
    }
    if spec.mask == Mask::Local {
        let mut rng = Rng(seed | 1);
        let left = rng.below(80) as i32 - 1;
        p = p.with_mask(
            MaskParams::new()
                .with("window_left", left)
                .with("window_right", rng.below(3) as i32),
        );
    }
    if spec.score == ScoreMod::Softcap {
        p = p.with_softcap(20.0);
    }
    p
}

/// Random decode cases of `spec`: 1 to 4 sequences of 0..=16 tokens (zero-length ones
/// included) and Sq_b..Sq_b + 150 keys, GQA groups of 1, 2, 4 or 8 on 1 or 2 kv heads, page
/// sizes 1, 16 and 1024 (partially filled last pages), splits 1, 2, 3 and more than key tiles.
fn property<T: Element + SimElem>(spec: &KernelSpec, salt: u64) {
    for c in 0..cases() {
        let seed = salt * 1000 + c;
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let b = 1 + rng.below(4);
        let lens: Vec<(usize, usize)> = (0..b)
            .map(|_| {
                let sq = if rng.below(5) == 0 {
                    0
                } else {
                    1 + rng.below(16)
                };
                (sq, sq + rng.below(151))
            })
            .collect();
        let hkv = 1 + rng.below(2);
        let group = [1, 2, 4, 8][rng.below(4)];
        let page = [1, 16, 1024][rng.below(3)];
        let max_sk = lens.iter().map(|l| l.1).max().unwrap_or(0);
        let tiles = max_sk.div_ceil(32).max(1);
        let splits = [1, 2, 3, tiles + 5][rng.below(4)];
        let x = paged::<T>(seed, &lens, (hkv * group, hkv), spec.head_dim.get(), page);
        let p = params(spec, seed, max_sk);
        eprintln!(
            "{} lens {lens:?} hkv {hkv} group {group} page {page} splits {splits}",
            spec.canonical_name()
        );
        check(spec, &x, &p, splits, seed);
    }
}

/// GQA 4 (two kv heads), causal f16 d64, page size 16: an empty sequence, 1, 3 and 16 query
/// tokens (64 packed rows: one full M tile), key lengths off the tile grid; splits 1 (no
/// merge), 2, 3 and 40 (more splits than key tiles: empty splits).
#[test]
fn causal_gqa_splits() {
    let spec = decode(DType::F16, HeadDim::D64, Mask::Causal, ScoreMod::None);
    let lens = [(1, 70), (0, 5), (3, 130), (16, 200)];
    let x = paged::<f16>(7, &lens, (8, 2), 64, 16);
    for (i, splits) in [1, 2, 3, 40].into_iter().enumerate() {
        check(&spec, &x, &RunParams::default(), splits, i as u64);
    }
    // the default count (decode_splits: 4 sequences x 2 kv heads x 1 row block = 8 blocks;
    // 2 x 132 SMs want 33 splits, capped by the 2 key tiles of 200 keys at the 128-key decode tile)
    let tile = default_tile(&spec, Arch::Sm80).expect("a tile");
    let run = exec_serving::check(&spec, &tile, &x, &RunParams::default(), &cfg(5));
    run.unwrap_or_else(|e| panic!("default splits: {e}"));
    let blocks = exec_serving::simulate(&spec, &tile, &x, &RunParams::default(), &cfg(5))
        .unwrap()
        .blocks;
    assert_eq!(blocks, 2 * 2 * 4, "2 splits x 2 kv heads x 4 sequences");
}

/// Tensor cores (f16, bf16) and the f32 FMA loop, with masks whose tiles are partial, a
/// score modification per head (ALiBi: each packed row needs its own head's slope), a
/// softcap and LM-Infinite (two scoring branches, the query rotated at its own position).
#[test]
fn random_layouts_masks_and_scores() {
    property::<f16>(
        &decode(DType::F16, HeadDim::D64, Mask::Local, ScoreMod::Softcap),
        1,
    );
    property::<bf16>(
        &decode(DType::Bf16, HeadDim::D64, Mask::Causal, ScoreMod::Alibi),
        2,
    );
    property::<f32>(
        &decode(DType::F32, HeadDim::D64, Mask::Causal, ScoreMod::Alibi),
        3,
    );
    property::<bf16>(
        &decode(DType::Bf16, HeadDim::D64, Mask::LmInfinite, ScoreMod::None),
        4,
    );
}

/// `Sq_b > Sk_b` (full and causal, no split): rows before the first key are empty.
#[test]
fn more_queries_than_keys_without_splits() {
    let spec = decode(DType::F16, HeadDim::D64, Mask::Causal, ScoreMod::None);
    let x = paged::<f16>(3, &[(5, 2), (3, 0), (2, 40)], (4, 2), 64, 1);
    check(&spec, &x, &RunParams::default(), 1, 0);
}

/// Bad decode inputs are refused before any launch, naming the field.
#[test]
fn bad_decode_inputs_are_refused_with_the_field() {
    let spec = decode(DType::F32, HeadDim::D64, Mask::Causal, ScoreMod::None);
    let tile = default_tile(&spec, Arch::Sm80).unwrap();
    let paths = |x: &ServingInputs<f32>, splits: usize| -> Vec<String> {
        let p = RunParams::default().with_num_splits(splits);
        match exec_serving::simulate(&spec, &tile, x, &p, &cfg(0)) {
            Err(ExecError::Spec(errs)) => errs.into_iter().map(|e| e.path).collect(),
            Err(ExecError::Input { field, .. }) => vec![field],
            other => panic!("expected a refusal, got {:?}", other.map(|r| r.blocks)),
        }
    };
    let ok = paged::<f32>(1, &[(1, 20), (2, 9)], (4, 2), 64, 4);
    assert_eq!(paths(&ok, 0), ["num_splits"]);
    assert_eq!(paths(&ok, 100_000), ["num_splits"]);
    let long = paged::<f32>(1, &[(1, 20), (17, 30)], (4, 2), 64, 4);
    assert_eq!(paths(&long, 1), ["cu_seqlens_q[2]"]);
    let short = paged::<f32>(1, &[(3, 2), (1, 9)], (4, 2), 64, 4);
    assert_eq!(paths(&short, 2), ["cu_seqlens_q[1]"]);
    let mut bad_table = ok.clone();
    if let ServingKeys::Paged { block_table, .. } = &mut bad_table.keys {
        block_table[0] = 999;
    }
    assert_eq!(paths(&bad_table, 2), ["block_table[0][0]"]);
}

/// One decode kernel (and one merge kernel) for every batch: different batch sizes, lengths,
/// page tables, page sizes and split counts hit one NVRTC cache entry and one simulator
/// kernel, each run equal to the reference.
#[test]
fn one_kernel_serves_every_batch_and_split_count() {
    let spec = decode(DType::Bf16, HeadDim::D64, Mask::Causal, ScoreMod::None);
    let tile = default_tile(&spec, Arch::Sm80).unwrap();
    let runs = [
        (paged::<bf16>(11, &[(1, 40), (1, 3)], (4, 1), 64, 16), 1),
        (paged::<bf16>(12, &[(2, 130)], (4, 1), 64, 1), 3),
        (
            paged::<bf16>(13, &[(1, 7), (0, 4), (4, 90), (1, 64)], (4, 1), 64, 32),
            9,
        ),
    ];
    let tmp = tempfile::tempdir().unwrap();
    let cache = KernelCache::at(tmp.path());
    let compiler = Compiler::global().expect("NVRTC (run `cargo xtask setup`)");
    let first = exec::sim_kernel(&spec, &tile).unwrap();
    for (i, (x, splits)) in runs.iter().enumerate() {
        let k = emit_with(&spec, &tile, Arch::Sm80, SymbolStyle::WithTile).unwrap();
        let src = KernelSource {
            source: &k.source,
            name: &k.name,
            options: attnforge_runtime::CompileOptions::new(Arch::Sm80),
        };
        build_with_cache(compiler, &cache, &src).unwrap();
        let entries = std::fs::read_dir(tmp.path()).unwrap().count();
        assert_eq!(entries, 1, "run {i}: one cache entry for every batch");
        check(&spec, x, &RunParams::default(), *splits, i as u64);
        assert!(
            Arc::ptr_eq(&first, &exec::sim_kernel(&spec, &tile).unwrap()),
            "run {i}: the simulator kernel was rebuilt"
        );
    }
}

/// The decode and merge kernels compile with NVRTC for sm_80 and sm_90 without spills or a
/// stack frame (registers printed with `-- --nocapture`).
#[test]
fn decode_kernels_compile_without_spills() {
    let specs = [
        decode(DType::Bf16, HeadDim::D128, Mask::Causal, ScoreMod::None),
        decode(DType::F16, HeadDim::D64, Mask::Local, ScoreMod::Softcap),
        decode(DType::Bf16, HeadDim::D128, Mask::LmInfinite, ScoreMod::None),
        decode(DType::F32, HeadDim::D64, Mask::Causal, ScoreMod::Alibi),
        decode(DType::F16, HeadDim::D256, Mask::Full, ScoreMod::None),
    ];
    let mut failures = Vec::new();
    for arch in [Arch::Sm80, Arch::Sm90] {
        let mut sources: Vec<(String, String)> = specs
            .iter()
            .map(|s| {
                let tile = default_tile(s, Arch::Sm80).expect("a tile");
                let k = emit_with(s, &tile, arch, SymbolStyle::WithTile).expect("emits");
                (k.name, k.source)
            })
            .collect();
        let m = emit_split_merge(DType::Bf16, HeadDim::D128);
        sources.push((m.name, m.source));
        for (name, source) in sources {
            let b = build_kernel(&source, &name, arch)
                .unwrap_or_else(|e| panic!("{name} (run `cargo xtask setup`): {e}"));
            let r = &b.resources;
            println!("{name} {}: {} registers", arch.sm_name(), r.registers);
            if r.spill_store_bytes + r.spill_load_bytes + r.stack_frame_bytes > 0 {
                failures.push(format!(
                    "{name} {}: spills {} / {}, stack {}",
                    arch.sm_name(),
                    r.spill_store_bytes,
                    r.spill_load_bytes,
                    r.stack_frame_bytes
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The kernel's split partials against the split-KV reference's (one report per split).
fn check_parts<T: Element + SimElem>(spec: &KernelSpec, x: &ServingInputs<T>, splits: usize) {
    let tile = default_tile(spec, Arch::Sm80).expect("a tile");
    let p = RunParams::default().with_num_splits(splits);
    match exec_serving::check_split_partials(spec, &tile, x, &p, &cfg(splits as u64)) {
        Ok(reports) => assert_eq!(reports.len(), splits),
        Err(e) => panic!("{} splits {splits}: {e}", spec.canonical_name()),
    }
}

/// Each split's f32 partial (before the merge) equals the split-KV reference's partial over
/// the same key range (`split_kv_partials`, aligned to the key tile): splits 3 and 40 (empty
/// splits: out 0, lse -inf) on tensor cores, 2 on the f32 FMA loop with ALiBi.
#[test]
fn split_partials_equal_the_split_reference() {
    let spec = decode(DType::F16, HeadDim::D64, Mask::Causal, ScoreMod::None);
    let x = paged::<f16>(7, &[(1, 70), (0, 5), (3, 130), (16, 200)], (8, 2), 64, 16);
    check_parts(&spec, &x, 3);
    check_parts(&spec, &x, 40);
    let spec = decode(DType::F32, HeadDim::D64, Mask::Causal, ScoreMod::Alibi);
    let x32 = paged::<f32>(8, &[(2, 90), (1, 33)], (4, 1), 64, 1);
    check_parts(&spec, &x32, 2);
}

/// Decode over packed keys (`Layout::DecodeVarlen`): causal GQA 4 with splits 1, 3 and more
/// than key tiles, and a doc mask (ids packed like the keys, read per sequence) with 2 splits.
#[test]
fn decode_over_varlen_keys() {
    let lens = [(1, 70), (0, 5), (3, 130), (16, 100)];
    let (sq, sk): (Vec<usize>, Vec<usize>) = lens.iter().copied().unzip();
    let mut rng = Rng(21);
    let mut val = || f16::from_f64(f64::from(rng.unit()));
    let (tq, tk) = (sq.iter().sum(), sk.iter().sum());
    let x = ServingInputs {
        q: Packed::from_fn(tq, 8, 64, |_, _, _| val()),
        cu_seqlens_q: cu(&sq),
        keys: ServingKeys::Varlen {
            k: Packed::from_fn(tk, 2, 64, |_, _, _| val()),
            v: Packed::from_fn(tk, 2, 64, |_, _, _| val()),
            cu_seqlens_k: cu(&sk),
        },
    };
    let mut spec = KernelSpec::new(DType::F16, HeadDim::D64, Mask::Causal, ScoreMod::None)
        .with_layout(Layout::DecodeVarlen);
    spec.gqa = true;
    for splits in [1, 3, 9] {
        check(&spec, &x, &RunParams::default(), splits, splits as u64);
    }
    // documents of 23 keys after a question of a fifth of each sequence's keys
    let doc: Vec<i32> = sk
        .iter()
        .flat_map(|&n| {
            (0..n).map(move |j| {
                if j < n / 5 {
                    0
                } else {
                    1 + (j / 23 % 3) as i32
                }
            })
        })
        .collect();
    spec.mask = Mask::CausalDocument;
    check(&spec, &x, &RunParams::default().with_doc(doc), 2, 7);
}
