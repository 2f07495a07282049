//! Catalog and canonical names.

use std::collections::HashSet;

use attnforge_codegen::prelude::*;

#[test]
fn canonical_names_are_unique_and_well_formed() {
    let mut seen = HashSet::new();
    for s in catalog() {
        let n = canonical_name(&s);
        assert!(seen.insert(n.clone()), "duplicate canonical name {n}");
        assert!(n.starts_with("flash_fwd_"), "{n}");
        assert!(
            n.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "{n}"
        );
        let suffix = format!("_d{}_{}", s.head_dim.get(), s.dtype.short());
        assert!(
            n.ends_with(&suffix) || (s.gqa && n.ends_with(&format!("{suffix}_gqa"))),
            "{n}"
        );
    }
    for want in [
        "flash_fwd_causal_d128_bf16",
        "flash_fwd_local_softcap_d64_f16",
        "flash_fwd_lm_infinite_d128_bf16",
        "flash_fwd_causal_d128_bf16_gqa",
    ] {
        assert!(seen.contains(want), "{want} missing from the catalog");
    }
}

#[test]
fn catalog_covers_every_static_mask_and_score() {
    let cat = catalog();
    let tags: HashSet<&str> = cat.iter().map(|s| s.mask.tag()).collect();
    for t in [
        "full",
        "causal",
        "local",
        "prefix_lm",
        "document",
        "causal_document",
        "share_question",
        "global_local",
        "block_causal_document",
        "lambda_mask",
        "predicate",
        "block_sparse",
        "lm_infinite",
    ] {
        assert!(tags.contains(t), "no {t} kernel in the catalog");
    }
    assert!(cat.iter().any(|s| s.score == ScoreMod::Softcap));
    assert!(cat.iter().any(|s| s.score == ScoreMod::Alibi));
    assert!(cat.iter().any(|s| matches!(s.score, ScoreMod::User(_))));
    assert!(cat.iter().any(|s| s.gqa));
}

#[test]
fn tile_suffix_in_symbol() {
    let s = catalog().remove(0);
    let t = TileConfig::new(64, 32, 4, 1);
    assert_eq!(
        canonical_name_with_tile(&s, &t),
        format!("{}__m64n32w4s1", canonical_name(&s))
    );
    let k = emit_with(&s, &t, Arch::Sm90, SymbolStyle::WithTile).unwrap();
    assert!(k.source.contains(&format!(" {}(", k.name)));
    assert_eq!(k.metadata.kernel_name, k.name);
}

#[test]
fn metadata_and_geometry() {
    let s = attnforge_codegen::catalog::find("flash_fwd_causal_d128_bf16").unwrap();
    let t = TileConfig::new(64, 64, 4, 1);
    let g = LaunchGeometry::new(&s, &t, 3, 16, 1000);
    assert_eq!(g.grid, [16, 16, 3]);
    assert_eq!(g.block, [128, 1, 1]);
    // tensor-core mainloop (bf16, one 16-row slab per warp): Q (64x128) + K, V (64x128) bf16
    assert_eq!(
        g.dynamic_smem_bytes as usize,
        2 * (64 * 128 + 64 * 128 + 64 * 128)
    );
    let m = LaunchMetadata::new(&s, &t, Arch::Sm80, "x");
    // exactly 48 KiB: launchable without the opt-in attribute
    assert!(!m.needs_smem_opt_in);
    // two K/V stages: 2 * (64x128 + 2 * 2 * 64x128) bf16 = 80 KiB needs the opt-in
    let t2 = TileConfig::new(64, 64, 4, 2);
    let g2 = LaunchGeometry::new(&s, &t2, 3, 16, 1000);
    assert_eq!(
        g2.dynamic_smem_bytes as usize,
        2 * (64 * 128 + 4 * 64 * 128)
    );
    assert!(LaunchMetadata::new(&s, &t2, Arch::Sm80, "x").needs_smem_opt_in);
    let j = serde_json::to_value(&m).unwrap();
    assert_eq!(j["args"][0]["name"], "q");
    assert_eq!(j["args"][0]["kind"]["ptr"]["elem"], "bf16");
    assert_eq!(m.args, kernel_args(&s));
    let back: LaunchMetadata = serde_json::from_value(j).unwrap();
    assert_eq!(back, m);
}

#[test]
fn argument_list_layout() {
    let s = KernelSpec::new(DType::F16, HeadDim::D64, Mask::Document, ScoreMod::Alibi);
    let a = kernel_args(&s);
    let names: Vec<&str> = a.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(
        &names[..10],
        ["q", "k", "v", "o", "lse", "batch", "heads_q", "heads_kv", "seq_q", "seq_k"]
    );
    assert_eq!(a[3].kind.c_type(), "__half*");
    assert_eq!(a[4].kind.c_type(), "float*");
    assert_eq!(a[10].kind.c_type(), "long long");
    let tail: Vec<&str> = names[names.iter().position(|n| *n == "scale").unwrap()..].to_vec();
    assert_eq!(
        tail,
        [
            "scale",
            "doc",
            "doc_batch_stride",
            "blk_full_num",
            "blk_full_idx",
            "blk_partial_num",
            "blk_partial_idx",
            "blk_batches",
            "blk_heads",
            "blk_rows",
            "blk_width",
            "alibi_slopes"
        ]
    );
    let mut uniq = std::collections::HashSet::new();
    for s in catalog() {
        uniq.clear();
        for a in kernel_args(&s) {
            assert!(
                uniq.insert(a.name.clone()),
                "{}: duplicate argument {}",
                s.canonical_name(),
                a.name
            );
        }
    }
}
