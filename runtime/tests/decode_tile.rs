//! The decode kernels' 128-key tile (`tile::DECODE_WIDE_TILE`, docs/serving.md "128-key
//! decode tile"): where `default_tile` gives it, the simulator's run against the
//! per-sequence dense reference at page sizes 1, 16 and 128 (tiles across pages, tiles
//! within one page, partial final pages), GQA groups, 1..16 decode tokens, every dtype, and
//! its split partials against the split-KV reference at the 128-key alignment; ptxas: no
//! spill, no stack frame on sm_80 and sm_90 (every decode-capable catalog variant with
//! `ATTNFORGE_HEAVY=1`).

use attnforge_reference::Element;
use attnforge_runtime::build_kernel;
use attnforge_runtime::codegen::catalog::{catalog, serving_catalog};
use attnforge_runtime::codegen::check::validate_spec;
use attnforge_runtime::codegen::emit::{emit_with, SymbolStyle};
use attnforge_runtime::codegen::prelude::*;
use attnforge_runtime::codegen::spec::Layout;
use attnforge_runtime::codegen::tile::DECODE_WIDE_TILE;
use attnforge_runtime::exec::RunParams;
use attnforge_runtime::exec_serving::{self, ServingInputs};
use attnforge_runtime::sim::SimElem;
use half::{bf16, f16};

mod inputs;
use inputs::{paged, sim_cfg as cfg};

fn decode(dtype: DType, d: HeadDim, mask: Mask, score: ScoreMod) -> KernelSpec {
    KernelSpec::new(dtype, d, mask, score)
        .with_gqa()
        .with_layout(Layout::Decode)
}

/// The simulator's decode run at `tile` and `splits` against the per-sequence reference.
fn check<T: Element + SimElem>(
    spec: &KernelSpec,
    tile: &TileConfig,
    x: &ServingInputs<T>,
    p: &RunParams,
    splits: usize,
) {
    let p = p.clone().with_num_splits(splits);
    if let Err(e) = exec_serving::check(spec, tile, x, &p, &cfg(splits as u64)) {
        panic!(
            "{} {} splits {splits} ({:?}): {e}",
            spec.canonical_name(),
            tile.suffix(),
            x.cu_seqlens_q
        );
    }
}

/// The decode layouts get 64 x 128 (4 warps, 2 stages) for f16/bf16 with one score tile up
/// to d 128 (paged) or d 64 (packed keys); every other spec keeps the tile it had.
#[test]
fn decode_default_tile_takes_128_keys_where_it_fits() {
    for arch in [Arch::Sm80, Arch::Sm90] {
        let tile = |s: &KernelSpec| default_tile(s, arch).expect("a tile");
        let wide = [
            decode(DType::Bf16, HeadDim::D128, Mask::Causal, ScoreMod::None),
            decode(DType::F16, HeadDim::D64, Mask::Local, ScoreMod::Softcap),
            decode(DType::Bf16, HeadDim::D64, Mask::Causal, ScoreMod::Alibi),
            decode(DType::Bf16, HeadDim::D64, Mask::Full, ScoreMod::None)
                .with_layout(Layout::DecodeVarlen),
        ];
        for s in &wide {
            assert_eq!(tile(s), DECODE_WIDE_TILE, "{}", s.canonical_name());
            assert_eq!(tile(s).block_n, 128);
        }
        let f32 = decode(DType::F32, HeadDim::D64, Mask::Causal, ScoreMod::None);
        assert_eq!(tile(&f32).block_n, 64, "f32 keeps the FMA tile");
        let lmi = decode(DType::Bf16, HeadDim::D128, Mask::LmInfinite, ScoreMod::None);
        assert_eq!(tile(&lmi).block_n, 32, "LM-Infinite keeps 32 keys");
        let d256 = decode(DType::F16, HeadDim::D256, Mask::Full, ScoreMod::None);
        assert_eq!(
            tile(&d256).block_n,
            32,
            "d 256 keeps its one spill-free tile"
        );
        for l in [
            Layout::Dense,
            Layout::Paged,
            Layout::Varlen,
            Layout::DecodeVarlen,
        ] {
            let s = decode(DType::Bf16, HeadDim::D128, Mask::Causal, ScoreMod::None).with_layout(l);
            // decode_varlen at d 128: the wide tile spills with ALiBi and a sliding window
            assert_eq!(
                tile(&s),
                TileConfig::new(64, 64, 4, 2),
                "{l:?} d 128 unchanged"
            );
        }
    }
}

/// bf16 d 128, GQA 4 on 2 kv heads, 1, 5 and 16 tokens (64 packed rows: a full M tile) over
/// 300, 129 and 16 keys (300 = 2 x 128 + 44: a partial last key tile; with 128-key pages a
/// partial final page), page sizes 1, 16 and 64 (tiles across pages: 64 is half a tile) and
/// 128 (tiles within one page), splits 1 and 3; the split partials at 3 against the split-KV
/// reference.
#[test]
fn wide_tile_equals_the_reference_on_every_page_size() {
    let spec = decode(DType::Bf16, HeadDim::D128, Mask::Causal, ScoreMod::None);
    let tile = default_tile(&spec, Arch::Sm80).expect("a tile");
    assert_eq!(tile.block_n, 128);
    let lens = [(1, 300), (5, 129), (16, 16)];
    for (i, page) in [1, 16, 64, 128].into_iter().enumerate() {
        let x = paged::<bf16>(40 + i as u64, &lens, (8, 2), 128, page);
        for splits in [1, 3] {
            check(&spec, &tile, &x, &RunParams::default(), splits);
        }
        let p = RunParams::default().with_num_splits(3);
        match exec_serving::check_split_partials(&spec, &tile, &x, &p, &cfg(i as u64)) {
            Ok(parts) => assert_eq!(parts.len(), 3),
            Err(e) => panic!("page {page}: split partials: {e}"),
        }
    }
}

/// f16 with a sliding window and a softcap (partial tiles, a score modification), GQA 8 on one
/// kv head; bf16 ALiBi (each packed row its own head's slope), GQA 2; both d 64 over 128-key
/// pages with partial final pages; and the f32 FMA loop at 64 x 128 (8 warps; not its
/// default tile, which keeps 64 keys) on 16-key pages.
#[test]
fn wide_tile_every_dtype_mask_and_group() {
    let local = decode(DType::F16, HeadDim::D64, Mask::Local, ScoreMod::Softcap);
    let tile = default_tile(&local, Arch::Sm80).expect("a tile");
    assert_eq!(tile, DECODE_WIDE_TILE);
    let p = RunParams::default()
        .with_mask(
            MaskParams::new()
                .with("window_left", 150)
                .with("window_right", 0),
        )
        .with_softcap(20.0);
    let x = paged::<f16>(51, &[(3, 333), (1, 1), (8, 200)], (8, 1), 64, 128);
    for splits in [1, 2] {
        check(&local, &tile, &x, &p, splits);
    }
    let alibi = decode(DType::Bf16, HeadDim::D64, Mask::Causal, ScoreMod::Alibi);
    let x = paged::<bf16>(52, &[(2, 257), (16, 140)], (4, 2), 64, 128);
    check(&alibi, &tile, &x, &RunParams::default(), 3);
    let f32 = decode(DType::F32, HeadDim::D64, Mask::Causal, ScoreMod::None);
    let fma = TileConfig::new(64, 128, 8, 1);
    fma.valid(&f32, Arch::Sm80)
        .expect("the FMA loop takes 64 x 128");
    let x = paged::<f32>(53, &[(1, 190), (4, 64)], (4, 1), 64, 16);
    check(&f32, &fma, &x, &RunParams::default(), 2);
}

/// Decode specs compiled at their default tile for sm_80 and sm_90 by NVRTC + ptxas: no spill
/// and no stack frame (registers printed with `-- --nocapture`).
fn assert_spill_free(specs: &[KernelSpec]) {
    let mut failures = Vec::new();
    for arch in [Arch::Sm80, Arch::Sm90] {
        for s in specs {
            let tile = default_tile(s, arch).expect("a tile");
            let k = emit_with(s, &tile, arch, SymbolStyle::WithTile).expect("emits");
            let b = build_kernel(&k.source, &k.name, arch)
                .unwrap_or_else(|e| panic!("{} (run `cargo xtask setup`): {e}", k.name));
            let r = &b.resources;
            println!("{} {}: {} registers", k.name, arch.sm_name(), r.registers);
            if r.spill_store_bytes + r.spill_load_bytes + r.stack_frame_bytes > 0 {
                failures.push(format!(
                    "{} {}: spills {} / {}, stack {}",
                    k.name,
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

/// The serving catalog's decode entries (causal GQA, sliding window, softcap) and ALiBi at the
/// 128-key tile; with `ATTNFORGE_HEAVY=1` every catalog variant that has a decode kernel, in
/// both decode layouts.
#[test]
fn wide_tile_compiles_without_spills() {
    let mut specs: Vec<KernelSpec> = serving_catalog()
        .into_iter()
        .filter(|s| s.layout == Layout::Decode)
        .collect();
    specs.push(decode(
        DType::Bf16,
        HeadDim::D64,
        Mask::Causal,
        ScoreMod::Alibi,
    ));
    if std::env::var_os("ATTNFORGE_HEAVY").is_some() {
        for l in [Layout::Decode, Layout::DecodeVarlen] {
            let all = catalog().into_iter().map(|s| s.with_layout(l));
            specs.extend(all.filter(|s| validate_spec(s).is_ok()));
        }
    }
    specs.retain(|s| default_tile(s, Arch::Sm80) == Some(DECODE_WIDE_TILE));
    assert!(specs.len() >= 4, "the wide tile is the decode default");
    assert_spill_free(&specs);
}
