//! `attnforge plan-cp`: the planner's answer through the CLI, checked against counts written
//! from the masks' definitions (not from the planner), and its input errors (exit 2, the
//! field and the fix).

mod cli_common;

use cli_common::*;

fn plan_json(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["plan-cp"];
    all.extend_from_slice(args);
    all.push("--json");
    let o = run(&all);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {t}"))
}

fn candidate<'a>(p: &'a serde_json::Value, method: &str, part: &str) -> &'a serde_json::Value {
    p["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["method"] == method && c["partition"] == part)
        .unwrap_or_else(|| panic!("no {method} {part} in {p}"))
}

fn rank_pairs(c: &serde_json::Value) -> Vec<u64> {
    c["ranks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["pairs"].as_u64().unwrap())
        .collect()
}

/// Causal, S = 4096 (not split evenly by 3 ranks), B 2, Hq 6, Hkv 2: every candidate covers
/// the S (S + 1) / 2 allowed pairs per (batch, head) once; the contiguous ring's last rank
/// holds the bottom third of the triangle; zigzag is balanced.
#[test]
fn causal_plan_matches_the_triangle() {
    let (s, w, b, h) = (4096u64, 3u64, 2u64, 6u64);
    let p = plan_json(&[
        "flash_fwd_causal_d128_bf16",
        "--world",
        "3",
        "--seq",
        "4096",
        "--batch",
        "2",
        "--heads",
        "6",
        "--kv-heads",
        "2",
    ]);
    assert_eq!(p["predicted"], true);
    let total = s * (s + 1) / 2 * b * h;
    for c in p["candidates"].as_array().unwrap() {
        let pairs = rank_pairs(c);
        assert_eq!(pairs.len(), w as usize, "{c}");
        assert_eq!(pairs.iter().sum::<u64>(), total, "{c}");
    }
    // Contiguous: nearly equal pieces, the first S mod W one row longer (1366, 1365, 1365
    // rows); row i sees i + 1 keys.
    let contiguous = rank_pairs(candidate(&p, "Ring", "Contiguous"));
    let tri = |rows: std::ops::Range<u64>| rows.map(|i| i + 1).sum::<u64>() * b * h;
    assert_eq!(
        contiguous,
        vec![tri(0..1366), tri(1366..2731), tri(2731..4096)],
        "contiguous per-rank pairs"
    );
    let zigzag = candidate(&p, "Ring", "Zigzag");
    assert!(zigzag["imbalance"].as_f64().unwrap() < 1.01, "{zigzag}");
    let best = p["best"].as_u64().unwrap() as usize;
    let chosen = &p["candidates"][best];
    assert!(
        chosen["imbalance"].as_f64().unwrap() < 1.05,
        "a balanced candidate is predicted fastest: {chosen}"
    );
}

/// chunked_causal through a spec file (C = 48): with 4 ranks of 1000 / 4 rows, every
/// rank's pairs are the sum over its rows of (i mod C) + 1.
#[test]
fn chunked_causal_spec_file_plan() {
    let spec = root().join("examples/specs/chunked_causal.toml");
    let p = plan_json(&[
        spec.to_str().unwrap(),
        "--world",
        "4",
        "--seq",
        "1000",
        "--heads",
        "2",
    ]);
    assert_eq!(p["kernel"], "flash_fwd_chunked_causal_d128_bf16");
    let rows_per = 1000u64.div_ceil(4);
    let expect: Vec<u64> = (0..4)
        .map(|r| {
            (r * rows_per..(r + 1) * rows_per)
                .map(|i| i % 48 + 1)
                .sum::<u64>()
                * 2
        })
        .collect();
    assert_eq!(rank_pairs(candidate(&p, "Ring", "Contiguous")), expect);
}

#[test]
fn bad_input_is_exit_2_naming_the_field() {
    let doc = root().join("examples/specs/document.toml");
    let cases: [(&[&str], &str); 6] = [
        (&["flash_fwd_causal_d128_bf16", "--world", "0"], "--world"),
        (
            &["flash_fwd_causal_d128_bf16", "--world", "2", "--seq", "0"],
            "--seq",
        ),
        (
            &[
                "flash_fwd_causal_d128_bf16",
                "--world",
                "2",
                "--link",
                "pcie",
            ],
            "--link",
        ),
        (
            &[
                "flash_fwd_causal_d128_bf16",
                "--world",
                "2",
                "--heads",
                "6",
                "--kv-heads",
                "4",
            ],
            "--kv-heads",
        ),
        (
            &[
                "flash_fwd_mask_dilated_d64_f16",
                "--world",
                "2",
                "--seq",
                "64",
            ],
            "built-in mask",
        ),
        (
            &[doc.to_str().unwrap(), "--world", "2", "--seq", "1000"],
            "doc_segments",
        ),
    ];
    for (args, field) in cases {
        let mut all = vec!["plan-cp"];
        all.extend_from_slice(args);
        let o = run(&all);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {t}");
        assert!(t.contains(field), "{args:?}: {t}");
        assert!(t.contains("fix"), "{args:?}: {t}");
    }
}
