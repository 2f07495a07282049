//! The decode tuner (`attnforge tune --layout decode`): tiles and key splits of the split-KV
//! decode kernel on a decode workload. The per-split tile counts are checked against a
//! brute-force walk of the keys, the model's split choice against the problem's parallelism,
//! and one catalog kernel runs the whole pipeline (NVRTC + ptxas, model, simulator gate over
//! a paged cache with the merge kernel). Needs the toolchain and g++, as real_kernel.rs.

use attnforge_autotune::cli::{run_tune, TuneArgs, TuneError};
use attnforge_autotune::decode::{split_candidates, DecodeTunable};
use attnforge_autotune::measure::BenchConfig;
use attnforge_autotune::occupancy::{occupancy, ArchLimits};
use attnforge_autotune::tuner::{tune, Resources, Status, Tunable, TuneOptions};
use attnforge_autotune::workload::{default_params, split_profile, Shape};
use attnforge_autotune::{Arch, Basis};
use attnforge_codegen::catalog::find;
use attnforge_codegen::check::MaskParams;
use attnforge_codegen::serving::decode_splits;
use attnforge_codegen::spec::Layout;
use attnforge_codegen::tile::TileConfig;

fn shape(batch: usize, hq: usize, hkv: usize, sq: usize, sk: usize) -> Shape {
    Shape {
        batch,
        heads_q: hq,
        heads_kv: hkv,
        seq_q: sq,
        seq_k: sk,
    }
}

/// The key tiles `[n0, n0 + bn)` of each split that hold a key some query row may see,
/// by walking every (row, key) pair; `allowed(row_position, key)`.
fn brute_force(
    sq: usize,
    sk: usize,
    bn: usize,
    splits: usize,
    allowed: impl Fn(usize, usize) -> bool,
) -> Vec<u32> {
    let chunk = sk.div_ceil(splits).div_ceil(bn) * bn;
    (0..splits)
        .map(|s| {
            let (lo, hi) = ((s * chunk).min(sk), ((s + 1) * chunk).min(sk));
            (lo..hi)
                .step_by(bn)
                .filter(|&n0| {
                    (n0..(n0 + bn).min(hi)).any(|j| (0..sq).any(|i| allowed(i + sk - sq, j)))
                })
                .count() as u32
        })
        .collect()
}

#[test]
fn split_profiles_match_a_walk_of_the_keys() {
    let causal = find("flash_fwd_causal_d128_bf16_gqa").unwrap();
    let window = find("flash_fwd_local_d128_bf16").unwrap();
    for &(sq, sk, bn, splits) in &[
        (1, 1000, 64, 1),
        (1, 1000, 64, 3),
        (1, 1000, 64, 7),
        (3, 1025, 32, 5),
        (16, 70, 64, 4),
        (1, 1, 64, 2),
        (1, 4096, 128, 32),
    ] {
        let s = shape(1, 4, 1, sq, sk);
        let p = default_params(&causal, &s);
        let got: Vec<u32> = split_profile(&causal, bn, &s, &p, splits)
            .iter()
            .map(|t| t.visited)
            .collect();
        assert_eq!(
            got,
            brute_force(sq, sk, bn, splits, |q, j| j <= q),
            "causal {sq} {sk} {bn} {splits}"
        );
        // a sliding window: only the splits near the end have tiles
        let mut p = default_params(&window, &s);
        let left = 150;
        p.mask = Some(
            MaskParams::defaults_for(&window.mask, sk)
                .with("window_left", left as f64)
                .with("window_right", 0.0),
        );
        let got: Vec<u32> = split_profile(&window, bn, &s, &p, splits)
            .iter()
            .map(|t| t.visited)
            .collect();
        let want = brute_force(sq, sk, bn, splits, |q, j| j <= q && q - j <= left);
        assert_eq!(got, want, "window {sq} {sk} {bn} {splits}");
    }
}

#[test]
fn split_candidates_cover_powers_of_two_and_the_heuristic() {
    let s = shape(2, 32, 8, 1, 5000);
    let t = TileConfig::new(16, 64, 1, 2);
    let c = split_candidates(&s, &t, 132);
    let h = decode_splits(2, (32, 8), (1, 5000), (16, 64), 132);
    assert!(c.contains(&1) && c.contains(&h) && c.contains(&64), "{c:?}");
    // never more splits than key tiles (5000 / 64 -> 79)
    assert!(c.iter().all(|&k| (1..=79).contains(&k)), "{c:?}");
    assert!(c.windows(2).all(|w| w[0] < w[1]));
    let tiny = shape(1, 1, 1, 1, 10);
    assert_eq!(split_candidates(&tiny, &t, 132), vec![1]);
}

/// The model's split choice follows the parallelism: one long sequence on one kv head needs
/// many splits to reach the SMs; a batch that already fills them gains nothing from splitting
/// (the partials' round trip and the merge launch cost more).
#[test]
fn the_model_splits_a_lone_sequence_and_not_a_full_batch() {
    let spec = find("flash_fwd_causal_d128_bf16_gqa").unwrap();
    let tile = TileConfig::new(16, 64, 1, 2);
    let res = Resources {
        registers: 168,
        smem_bytes: 40_000,
        stack_frame_bytes: 0,
        spill_bytes: 0,
        threads: 32,
        main_loop: None,
    };
    let l = ArchLimits::of(Arch::Sm90);
    let occ = occupancy(&l, 32, 168, 40_000);
    let lone = DecodeTunable::new(&spec, 1, 4, (1, 65536), 40).unwrap();
    let p = lone.predict(&tile, &res, &occ, Arch::Sm90);
    assert!(p.splits.unwrap() >= 64, "{p:?}");
    let one = lone.predict_splits(&tile, &res, &occ, Arch::Sm90, 1);
    assert!(p.time_us * 10.0 < one.time_us, "{p:?} vs {one:?}");
    let full = DecodeTunable::new(&spec, 128, 32, (1, 512), 40).unwrap();
    let p = full.predict(&tile, &res, &occ, Arch::Sm90);
    assert_eq!(p.splits, Some(1), "{p:?}");
}

#[test]
fn causal_decode_tunes_end_to_end_on_the_simulator() {
    let mut spec = find("flash_fwd_causal_d64_f16").expect("catalog entry");
    spec.gqa = true; // 4 query heads per kv head, packed into the M tile
    let k = DecodeTunable::new(&spec, 2, 16, (1, 8192), 45).unwrap();
    assert_eq!(k.spec.layout, Layout::Decode);
    let dir = tempfile::tempdir().unwrap();
    let o = TuneOptions {
        arch: Arch::Sm80,
        gate_top: 1,
        gate_max_tries: 2,
        compile_top: 3,
        bench: BenchConfig::quick(),
        criterion_dir: dir.path().to_path_buf(),
    };
    let t = tune(&k, &o, &mut |_| {}).expect("toolchain and g++ available");
    assert_eq!(t.basis, Basis::Predicted);
    assert!(t.variant.ends_with("_decode"), "{}", t.variant);
    assert!(t.bucket.starts_with("decode_"), "{}", t.bucket);
    assert_eq!(t.candidates.len(), k.space(Arch::Sm80).len());
    assert!(
        t.candidates.iter().any(|c| c.tile.block_m == 16),
        "small-M tiles are in the space"
    );
    let w = t.winner_result().expect("a winner");
    let gate = w.gate.as_ref().unwrap();
    assert!(gate.shape.contains("3 splits"), "{}", gate.shape);
    let splits = w
        .predicted
        .unwrap()
        .splits
        .expect("the tuned number of splits");
    assert!(
        splits > 1,
        "2 x 4 kv heads over 8192 keys need splits: {splits}"
    );
    // every compiled candidate carries the best split count of its own prediction
    for c in t.candidates.iter().filter(|c| c.predicted.is_some()) {
        assert!(c.predicted.unwrap().splits.is_some(), "{}", c.name);
    }
    // no GPU here: nothing is timed
    assert!(t.candidates.iter().all(|c| c.measured.is_none()));
    assert!(t
        .candidates
        .iter()
        .all(|c| !c.status.rejected() || c.status != Status::NotCompiled));
}

/// `tune --layout decode_varlen`: the decode kernel over packed keys, gated on packed keys
/// (three splits, the merge kernel), its cache entry named and bucketed by the layout.
#[test]
fn decode_varlen_tunes_end_to_end_on_the_simulator() {
    let spec = find("flash_fwd_causal_d64_f16")
        .expect("catalog entry")
        .with_gqa();
    let k = DecodeTunable::new_in(&spec, Layout::DecodeVarlen, (2, 16), (2, 8192), 45).unwrap();
    assert_eq!(k.spec.layout, Layout::DecodeVarlen);
    let wide = attnforge_codegen::tile::DECODE_WIDE_TILE;
    assert_eq!(
        attnforge_codegen::tile::default_tile(&k.spec, Arch::Sm80),
        Some(wide)
    );
    assert!(
        k.space(Arch::Sm80).contains(&wide),
        "the 128-key decode tile is a candidate"
    );
    let dir = tempfile::tempdir().unwrap();
    let o = TuneOptions {
        arch: Arch::Sm80,
        gate_top: 1,
        gate_max_tries: 2,
        compile_top: 2,
        bench: BenchConfig::quick(),
        criterion_dir: dir.path().to_path_buf(),
    };
    let t = tune(&k, &o, &mut |_| {}).expect("toolchain and g++ available");
    assert_eq!(t.basis, Basis::Predicted);
    assert!(t.variant.ends_with("_decode_varlen"), "{}", t.variant);
    assert!(t.bucket.starts_with("decode_varlen_"), "{}", t.bucket);
    let w = t.winner_result().expect("a winner");
    let gate = w.gate.as_ref().unwrap();
    assert!(
        gate.shape.contains("packed keys, 3 splits"),
        "{}",
        gate.shape
    );
    let splits = w.predicted.unwrap().splits.expect("the tuned splits");
    assert!(
        splits > 1,
        "2 x 4 kv heads over 8192 keys need splits: {splits}"
    );
    // the layout is a decode layout: a prefill layout is refused with the reason
    let e = DecodeTunable::new_in(&spec, Layout::Paged, (2, 16), (1, 64), 45).unwrap_err();
    assert!(e.contains("decode_varlen"), "{e}");
}

/// `tune --layout decode_varlen` is accepted by the CLI and refuses a variant the layout cannot
/// serve; `--layout paged` is refused with the layouts the tuner takes.
#[test]
fn the_cli_takes_decode_varlen() {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        tune: TuneArgs,
    }
    use clap::Parser;
    let parse = |l: &str| Cli::try_parse_from(["tune", "--layout", l]).map(|c| c.tune.layout);
    assert_eq!(parse("decode_varlen").unwrap(), Layout::DecodeVarlen);
    let e = parse("paged").unwrap_err().to_string();
    assert!(e.contains("decode_varlen"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let args = TuneArgs {
        variants: vec!["flash_fwd_causal_d128_bf16".to_owned()],
        out: dir.path().join("reports"),
        cache: Some(dir.path().join("cache.json")),
        layout: Layout::DecodeVarlen,
        decode_tokens: 17,
        ..TuneArgs::default()
    };
    let e = run_tune(&args).unwrap_err();
    assert!(e.to_string().contains("--decode-tokens"), "{e}");
}

#[test]
fn a_variant_without_a_decode_kernel_is_an_input_error() {
    let dir = tempfile::tempdir().unwrap();
    let args = |variant: &str, tokens| TuneArgs {
        variants: vec![variant.to_owned()],
        out: dir.path().join("reports"),
        cache: Some(dir.path().join("cache.json")),
        layout: Layout::Decode,
        decode_tokens: tokens,
        ..TuneArgs::default()
    };
    // a document mask reads per-token ids, which a paged cache does not carry
    let e = run_tune(&args("flash_fwd_document_d128_bf16", 1)).unwrap_err();
    assert!(matches!(e, TuneError::NoDecodeKernel { .. }), "{e}");
    assert_eq!(e.exit_code(), 2);
    assert!(e.to_string().contains("layout"), "{e}");
    let e = run_tune(&args("flash_fwd_causal_d128_bf16", 17)).unwrap_err();
    assert!(e.to_string().contains("--decode-tokens"), "{e}");
    assert_eq!(e.exit_code(), 2);
    assert!(
        !dir.path().join("cache.json").exists(),
        "nothing cached on bad input"
    );
}
