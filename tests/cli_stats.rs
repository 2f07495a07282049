//! `attnforge check --stats`: the statistics outputs (variants.md section 14) of a catalog
//! variant (LM-Infinite's two rotated scoring branches included) pass on the simulator; a
//! data-dependent pipeline is SKIP with the reason; the GPU backend is an input error naming
//! the flag (docs/statistics.md).

mod cli_common;

use cli_common::*;

#[test]
fn check_stats_passes_skips_and_refuses_cuda() {
    let o = run(&[
        "check",
        "--stats",
        "flash_fwd_causal_d64_f16",
        "flash_fwd_lm_infinite_d128_bf16",
        "hax_d64_f16",
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("PASS flash_fwd_causal_d64_f16_stats") && t.contains("key_mass err"),
        "{t}"
    );
    assert!(
        t.contains("PASS flash_fwd_lm_infinite_d128_bf16_stats"),
        "{t}"
    );
    assert!(
        t.contains("SKIP hax_d64_f16") && t.contains("data-dependent"),
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

fn read_i32(path: &std::path::Path) -> (Vec<u64>, Vec<i32>) {
    let f = std::fs::File::open(path).expect("open output");
    let npy = npyz::NpyFile::new(std::io::BufReader::new(f)).expect("npy");
    let shape = npy.shape().to_vec();
    (shape, npy.into_vec::<i32>().expect("i32 data"))
}

/// `run --key-mass/--key-score/--top-keys` writes the statistics next to out and lse: the
/// simulator's equal the reference's, and key_mass sums to the query rows of each head
/// (every row's weights sum to 1); flags without statistics in the spec, `--top-keys` without
/// `top_k` and the GPU backend are input errors that write nothing.
#[test]
fn run_writes_statistics_outputs() {
    let dir = std::env::temp_dir().join(format!("attnforge_run_stats_{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let spec = dir.join("stats.toml");
    std::fs::write(
        &spec,
        "dtype = \"f32\"\nhead_dim = 64\ngqa = true\nmask = \"causal\"\nstats = { reduce = \"max\", pool = 3, top_k = 5 }\n",
    )
    .expect("write");
    let (b, hq, hkv, sq, sk, d) = (1u64, 4u64, 2u64, 50u64, 70u64, 64u64);
    let big =
        |n: u64, seed| -> Vec<f32> { values(n as usize, seed).iter().map(|v| v * 3.0).collect() };
    let q = dir.join("q.npy");
    let k = dir.join("k.npy");
    let v = dir.join("v.npy");
    write_npy(
        &q,
        &[b, hq, sq, d],
        &big(b * hq * sq * d, 1),
        npyz::Order::C,
    );
    write_npy(
        &k,
        &[b, hkv, sk, d],
        &big(b * hkv * sk * d, 2),
        npyz::Order::C,
    );
    write_npy(
        &v,
        &[b, hkv, sk, d],
        &big(b * hkv * sk * d, 3),
        npyz::Order::C,
    );
    let p = |n: &str| dir.join(n).to_str().expect("utf-8").to_owned();
    let go = |backend: &str, tag: &str, spec: &std::path::Path| {
        run(&[
            "run",
            spec.to_str().expect("utf-8"),
            "--q",
            &p("q.npy"),
            "--k",
            &p("k.npy"),
            "--v",
            &p("v.npy"),
            "--out",
            &p(&format!("o_{tag}.npy")),
            "--key-mass",
            &p(&format!("mass_{tag}.npy")),
            "--key-score",
            &p(&format!("score_{tag}.npy")),
            "--top-keys",
            &p(&format!("top_{tag}.npy")),
            "--backend",
            backend,
        ])
    };
    for (backend, tag) in [("sim", "sim"), ("reference", "ref")] {
        let o = go(backend, tag, &spec);
        assert!(o.status.success(), "{}", text(&o));
    }
    let (shape, mass) = read_f32(&dir.join("mass_sim.npy"));
    assert_eq!(shape, [b, hq, sk]);
    let (_, mass_ref) = read_f32(&dir.join("mass_ref.npy"));
    for h in 0..hq as usize {
        let total: f64 = mass[h * sk as usize..(h + 1) * sk as usize]
            .iter()
            .map(|&x| f64::from(x))
            .sum();
        assert!(
            (total - sq as f64).abs() < 1e-3,
            "head {h}: key_mass sums to {total}, not {sq}"
        );
    }
    for (a, r) in mass.iter().zip(&mass_ref) {
        assert!((a - r).abs() <= 1e-4 * r.abs().max(1.0), "{a} vs {r}");
    }
    let (shape, score) = read_f32(&dir.join("score_sim.npy"));
    assert_eq!(shape, [b, hkv, sk]);
    let (_, score_ref) = read_f32(&dir.join("score_ref.npy"));
    for (a, r) in score.iter().zip(&score_ref) {
        assert!((a - r).abs() <= 1e-4 * r.abs().max(1.0), "{a} vs {r}");
    }
    let (shape, top) = read_i32(&dir.join("top_sim.npy"));
    assert_eq!(shape, [b, hkv, 5]);
    assert_eq!(top, read_i32(&dir.join("top_ref.npy")).1);
    assert!(top.iter().all(|&i| (0..sk as i32).contains(&i)));
    // errors: nothing written
    let plain = dir.join("plain.toml");
    std::fs::write(
        &plain,
        "dtype = \"f32\"\nhead_dim = 64\nmask = \"causal\"\n",
    )
    .expect("write");
    let no_top = dir.join("no_top.toml");
    std::fs::write(&no_top, "dtype = \"f32\"\nhead_dim = 64\ngqa = true\nmask = \"causal\"\nstats = { reduce = \"sum\" }\n").expect("write");
    for (spec, backend, want) in [
        (&plain, "sim", "asks for no statistics"),
        (&no_top, "sim", "top_k"),
        (&spec, "cuda", "--backend sim"),
    ] {
        let o = go(backend, "bad", spec);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(2), "{t}");
        assert!(t.contains(want), "{t}");
        assert!(!dir.join("o_bad.npy").exists() && !dir.join("mass_bad.npy").exists());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Serving layouts: `check --stats --layout varlen` and `--layout decode` pass with the
/// statistics figures; `run` of a paged and of a decode spec with `stats` (GQA, page size 4, a
/// final page not full, a shuffled table) writes key_mass `[B, Hq, R]` with `R = max_pages *
/// page_size` (keys past `Sk_b` hold 0), the simulator's equal to the reference's.
#[test]
fn serving_layouts_check_and_run_statistics() {
    let o = run(&[
        "check",
        "--stats",
        "--layout",
        "varlen",
        "flash_fwd_causal_d64_f16",
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("PASS flash_fwd_causal_d64_f16_varlen_stats") && t.contains("key_mass err"),
        "{t}"
    );
    let o = run(&[
        "check",
        "--stats",
        "--layout",
        "decode",
        "flash_fwd_causal_d64_f16",
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("PASS flash_fwd_causal_d64_f16_decode_stats") && t.contains("key_mass err"),
        "{t}"
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let p = |n: &str| dir.path().join(n).to_string_lossy().to_string();
    let c = npyz::Order::C;
    let (hq, hkv, d) = (4u64, 2u64, 64u64);
    write_npy(
        dir.path().join("q.npy").as_path(),
        &[5, hq, d],
        &values((5 * hq * d) as usize, 1),
        c,
    );
    let cache = (4 * 4 * hkv * d) as usize;
    write_npy(
        dir.path().join("kc.npy").as_path(),
        &[4, 4, hkv, d],
        &values(cache, 2),
        c,
    );
    write_npy(
        dir.path().join("vc.npy").as_path(),
        &[4, 4, hkv, d],
        &values(cache, 3),
        c,
    );
    write_npy(dir.path().join("cq.npy").as_path(), &[3], &[0i32, 2, 5], c);
    write_npy(
        dir.path().join("bt.npy").as_path(),
        &[2, 3],
        &[3i32, -1, -1, 1, 0, 2],
        c,
    );
    write_npy(dir.path().join("sk.npy").as_path(), &[2], &[3i32, 9], c);
    let mut got = Vec::new();
    // the same cache as a paged prefill and as a decode step (2 and 3 tokens)
    for (layout, backend) in [("paged", "sim"), ("paged", "reference"), ("decode", "sim")] {
        let spec = p(&format!("{layout}.toml"));
        std::fs::write(
            &spec,
            format!("dtype = \"f32\"\nhead_dim = 64\ngqa = true\nlayout = \"{layout}\"\nmask = \"causal\"\nstats = {{ reduce = \"sum\", pool = 3, top_k = 4 }}\n"),
        )
        .expect("write");
        let f = |n: &str| p(&format!("{n}_{layout}_{backend}.npy"));
        let o = run(&[
            "run",
            &spec,
            "--q",
            &p("q.npy"),
            "--k",
            &p("kc.npy"),
            "--v",
            &p("vc.npy"),
            "--cu-seqlens-q",
            &p("cq.npy"),
            "--block-table",
            &p("bt.npy"),
            "--seqlens-k",
            &p("sk.npy"),
            "--out",
            &f("o"),
            "--key-mass",
            &f("mass"),
            "--key-score",
            &f("score"),
            "--top-keys",
            &f("top"),
            "--backend",
            backend,
        ]);
        assert!(o.status.success(), "{layout} {backend}: {}", text(&o));
        let (shape, mass) = read_f32(std::path::Path::new(&f("mass")));
        assert_eq!(shape, [2, hq, 12], "{backend}");
        let (shape, _) = read_f32(std::path::Path::new(&f("score")));
        assert_eq!(shape, [2, hkv, 12], "{backend}");
        let (shape, top) = read_i32(std::path::Path::new(&f("top")));
        assert_eq!(shape, [2, hkv, 4], "{backend}");
        // sequence 0: 2 rows over 3 keys, sequence 1: 3 rows over 9 keys (causal, no empty row)
        for (b, (rows, sk)) in [(2.0f32, 3usize), (3.0, 9)].into_iter().enumerate() {
            for h in 0..hq as usize {
                let m = &mass[(b * hq as usize + h) * 12..(b * hq as usize + h + 1) * 12];
                let total: f32 = m.iter().sum();
                assert!(
                    (total - rows).abs() < 1e-4,
                    "{backend} b {b} h {h}: {total}"
                );
                assert!(
                    m[sk..].iter().all(|&v| v == 0.0),
                    "{backend}: mass past Sk_b"
                );
            }
        }
        got.push((mass, top));
    }
    for sim in [&got[0], &got[2]] {
        for (a, r) in sim.0.iter().zip(&got[1].0) {
            assert!((a - r).abs() <= 1e-5, "{a} vs {r}");
        }
        assert_eq!(sim.1, got[1].1, "top_keys: simulator vs reference");
    }
}
