//! `attnforge check --stats`: the statistics outputs (variants.md section 14) of a catalog
//! variant pass on the simulator; LM-Infinite is SKIP with the reason; the GPU backend is an
//! input error naming the flag (docs/statistics.md).

mod cli_common;

use cli_common::*;

#[test]
fn check_stats_passes_skips_and_refuses_cuda() {
    let o = run(&[
        "check",
        "--stats",
        "flash_fwd_causal_d64_f16",
        "flash_fwd_lm_infinite_d128_bf16",
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("PASS flash_fwd_causal_d64_f16_stats") && t.contains("key_mass err"),
        "{t}"
    );
    assert!(
        t.contains("SKIP flash_fwd_lm_infinite_d128_bf16") && t.contains("stats"),
        "{t}"
    );
    assert!(t.contains("no statistics outputs for them"), "{t}");
    let o = run(&[
        "check",
        "--stats",
        "flash_fwd_causal_d64_f16",
        "--backend",
        "cuda",
    ]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(t.contains("--stats") && t.contains("--backend sim"), "{t}");
}

/// A spec file with `stats = { .. }` is checked with its statistics without the flag.
#[test]
fn spec_file_with_stats_is_checked_with_them() {
    let dir = std::env::temp_dir().join(format!("attnforge_cli_stats_{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("causal_stats.toml");
    std::fs::write(
        &path,
        "dtype = \"f32\"\nhead_dim = 64\ngqa = true\nmask = \"causal\"\nstats = { reduce = \"max\", pool = 3, top_k = 5 }\n[problem]\nheads_q = 4\nheads_kv = 2\nseq_q = 50\nseq_k = 70\n",
    )
    .expect("write");
    let o = run(&["check", path.to_str().expect("utf-8")]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("PASS flash_fwd_causal_d64_f32_gqa_stats") && t.contains("key_mass err"),
        "{t}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
