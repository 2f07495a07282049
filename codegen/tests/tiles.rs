//! Tile configs: `valid()` errors and search-space properties.

use attnforge_codegen::prelude::*;
use attnforge_codegen::tile::{Mainloop, SmemLayout};
use proptest::prelude::*;

fn any_spec() -> impl Strategy<Value = KernelSpec> {
    let cat = catalog();
    (0..cat.len()).prop_map(move |i| cat[i].clone())
}

fn any_arch() -> impl Strategy<Value = Arch> {
    prop_oneof![Just(Arch::Sm80), Just(Arch::Sm90)]
}

proptest! {
    #[test]
    fn search_space_is_valid_and_within_budgets(spec in any_spec(), arch in any_arch()) {
        let space = default_search_space(&spec, arch);
        prop_assert!(!space.is_empty(), "{} has no valid config", spec.canonical_name());
        for t in &space {
            prop_assert!(t.valid(&spec, arch).is_ok());
            prop_assert!(t.smem_bytes(&spec) <= arch.max_dynamic_smem());
            prop_assert!(t.estimated_registers(&spec) <= t.register_limit(arch));
            prop_assert_eq!(t.block_m % t.warps, 0);
            prop_assert_eq!(t.block_n % 32, 0);
            if spec.mask.uses_block_lists() {
                prop_assert_eq!(spec.sparse_block.q % t.block_m, 0);
                prop_assert_eq!(spec.sparse_block.k % t.block_n, 0);
            }
        }
        prop_assert!(default_tile(&spec, arch).is_some_and(|t| space.contains(&t)));
    }

    #[test]
    fn valid_agrees_with_its_estimates(spec in any_spec(), arch in any_arch(),
                                       bm in 0usize..300, bn in 0usize..300, w in 0usize..12, st in 0usize..5) {
        let t = TileConfig::new(bm, bn, w, st);
        let ok = t.valid(&spec, arch).is_ok();
        let tc = spec.dtype != DType::F32 && (bm == 16 * w || bm == 32 * w);
        let stages_ok = if tc { (1..=3).contains(&st) } else { st == 1 };
        // two 16-row slabs per warp: the thread's 64-bit element-bit word limits block_n
        let slabs_ok = !(tc && bm == 32 * w && bn > 64);
        let shape_ok = [16, 32, 64, 128].contains(&bm) && [32, 64, 128].contains(&bn)
            && [1, 2, 4, 8].contains(&w) && bm % w == 0 && stages_ok && slabs_ok
            && (!spec.mask.uses_block_lists() || (spec.sparse_block.q % bm == 0 && spec.sparse_block.k % bn == 0));
        if ok {
            prop_assert!(shape_ok);
            prop_assert!(t.smem_bytes(&spec) <= arch.max_dynamic_smem());
        }
        if shape_ok && t.smem_bytes(&spec) <= arch.max_dynamic_smem()
            && t.estimated_registers(&spec) * 100 <= t.register_limit(arch) * 80 {
            prop_assert!(ok, "{:?}", t.valid(&spec, arch));
        }
    }

    #[test]
    fn smem_layout_matches_formula(spec in any_spec(), bm in prop::sample::select(vec![16usize, 32, 64, 128]),
                                   bn in prop::sample::select(vec![32usize, 64, 128])) {
        let d = spec.head_dim.get();
        let two = usize::from(matches!(spec.mask, Mask::LmInfinite)) + 1;
        // FMA (f32 staging, padded K, P in shared memory)
        // (a warp count with block_m / warps not 16 or 32, so 16-bit dtypes stay on the FMA path)
        let w = [8, 4, 2, 1].into_iter().find(|w| bm % w == 0 && bm / w != 16 && bm / w != 32).unwrap();
        let t = TileConfig::new(bm, bn, w, 1);
        let l = SmemLayout::new(&spec, &t);
        prop_assert_eq!(l.mainloop, Mainloop::Fma);
        prop_assert_eq!(l.bytes(), 4 * (two * bm * d + two * bn * (d + 1) + bn * d + bm * bn));
        // tensor cores for 16-bit inputs (16-bit staging, swizzled, `stages` K/V buffers, P in registers)
        for st in 1..=3 {
            let t = TileConfig::new(bm, bn, bm / 16, st);
            let l = SmemLayout::new(&spec, &t);
            if spec.dtype == DType::F32 {
                prop_assert_eq!(l.mainloop, Mainloop::Fma);
            } else {
                prop_assert_eq!(l.mainloop, Mainloop::TensorCore);
                prop_assert_eq!(l.bytes(), 2 * (two * bm * d + two * st * bn * d + st * bn * d));
            }
        }
    }

    #[test]
    fn half_precision_space_is_tensor_core_only(spec in any_spec(), arch in any_arch()) {
        let space = default_search_space(&spec, arch);
        if spec.dtype != DType::F32 {
            prop_assert!(space.iter().all(|t| Mainloop::select(&spec, t) == Mainloop::TensorCore));
            prop_assert!(space.iter().any(|t| t.stages > 1), "no pipelined config for {}", spec.canonical_name());
            prop_assert!(default_tile(&spec, arch).is_some_and(|t| Mainloop::select(&spec, &t) == Mainloop::TensorCore));
        } else {
            prop_assert!(space.iter().all(|t| t.stages == 1));
        }
    }
}

#[test]
fn tile_errors_have_paths_and_all_are_reported() {
    let spec = KernelSpec::new(DType::Bf16, HeadDim::D128, Mask::Document, ScoreMod::None);
    let e = TileConfig::new(40, 48, 3, 2)
        .valid(&spec, Arch::Sm80)
        .unwrap_err();
    let paths: Vec<&str> = e.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "tile.block_m",
            "tile.block_n",
            "tile.warps",
            "tile.stages",
            "tile.block_m",
            "tile.block_n"
        ]
    );
    assert!(e[0].message.contains("40") && !e[0].fix.is_empty());
    let e = TileConfig::new(64, 64, 8, 1).valid(&spec, Arch::Sm80);
    assert!(e.is_ok());
    let e = TileConfig::new(16, 32, 32, 1)
        .valid(&spec, Arch::Sm80)
        .unwrap_err();
    assert_eq!(e[0].path, "tile.warps");
}

#[test]
fn budgets_reject_big_tiles() {
    // D = 256 with 128 x 128 tiles, 3 stages: 2 * (128*256 + 3*128*256 + 3*128*256) bytes > 163 KiB
    let spec = KernelSpec::new(DType::F16, HeadDim::D256, Mask::Full, ScoreMod::None);
    let t = TileConfig::new(128, 128, 8, 3);
    assert!(t.smem_bytes(&spec) > Arch::Sm80.max_dynamic_smem());
    let e = t.valid(&spec, Arch::Sm80).unwrap_err();
    assert!(e
        .iter()
        .any(|e| e.path == "tile" && e.message.contains("shared memory")));
    // 128 rows on one warp: 128 score elements per lane, over the 64-bit allowed-element word
    let t = TileConfig::new(128, 32, 1, 1);
    let e = t.valid(&spec, Arch::Sm90).unwrap_err();
    assert!(
        e.iter()
            .any(|e| e.path == "tile.warps" && e.message.contains("= 128 score elements")),
        "{e:?}"
    );
    // f32 d256, 32 rows per warp: 32 * 8 accumulators per lane, over the register budget
    let f32_256 = KernelSpec::new(DType::F32, HeadDim::D256, Mask::Full, ScoreMod::None);
    let t = TileConfig::new(128, 64, 4, 1);
    let e = t.valid(&f32_256, Arch::Sm90).unwrap_err();
    assert!(e.iter().any(|e| e.message.contains("registers")), "{e:?}");
    // sm_90 has more shared memory than sm_80: some configs are valid only there
    let lminf = KernelSpec::new(DType::Bf16, HeadDim::D128, Mask::LmInfinite, ScoreMod::None);
    let t = TileConfig::new(128, 64, 8, 3);
    let bytes = t.smem_bytes(&lminf);
    assert!(bytes > Arch::Sm80.max_dynamic_smem() && bytes <= Arch::Sm90.max_dynamic_smem());
    assert!(t.valid(&lminf, Arch::Sm80).is_err());
    assert!(t.valid(&lminf, Arch::Sm90).is_ok());
}
