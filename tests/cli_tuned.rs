//! `run --tuned` / `check --tuned [--backward]` through the real binary, with a report folder
//! the tuner writes (`attnforge tune`, no GPU: its model) in a temp dir: the tuned tile is the
//! one the tuner's `<variant>.json` names (chosen here where it differs from the default tile),
//! a kernel the folder does not hold keeps its default tile with a notice, and a folder that is
//! not a tuner report folder is an input error naming `--tuned`.

mod cli_common;

use std::path::Path;

use cli_common::{read_f32, run, text, values, write_npy};
use half::f16;

/// Forward: the tuner picks `m64n128w4s3` at this shape (the default tile is `m64n64w4s2`).
const FWD: &str = "flash_fwd_causal_d64_f16";
/// Backward: the tuner picks an FMA tile other than the default `m32n32w4`.
const BWD: &str = "flash_fwd_full_d64_f32";

fn tune(dir: &Path, variant: &str, backward: bool, seq: &str) {
    let (out, cache) = (dir.join("r"), dir.join("cache.json"));
    let mut args = vec!["tune", "--variant", variant, "--arch", "sm_80"];
    if backward {
        args.push("--backward");
    }
    let (out_s, cache_s) = (out.to_str().unwrap(), cache.to_str().unwrap());
    args.extend([
        "--out", out_s, "--cache", cache_s, "--seq", seq, "--heads", "2", "--batch", "1",
    ]);
    let o = run(&args);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

/// The winner's suffix as the tuner's JSON report names it (read here, not by attnforge).
fn winner(dir: &Path, variant: &str, backward: bool) -> String {
    let path = dir.join("r").join(format!("{variant}.json"));
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let w = &j["winner"];
    let n = |k: &str| w[k].as_u64().unwrap_or_else(|| panic!("{k} in {w}"));
    let base = format!("m{}n{}w{}", n("block_m"), n("block_n"), n("warps"));
    if backward {
        base
    } else {
        format!("{base}s{}", n("stages"))
    }
}

#[test]
fn check_and_run_use_the_tuned_forward_tile() {
    let dir = tempfile::tempdir().unwrap();
    tune(dir.path(), FWD, false, "512");
    let tuned = format!("--tuned={}", dir.path().join("r").display());

    let fwd = winner(dir.path(), FWD, false);
    assert_ne!(
        fwd, "m64n64w4s2",
        "pick a shape where the tuned tile is not the default"
    );
    let o = run(&["check", &tuned, FWD]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    assert!(
        t.contains(&format!("tuned: {FWD} uses tile {fwd} from")),
        "{t}"
    );
    // the verdict names the tile the kernel ran with
    assert!(t.contains(&format!("PASS {FWD}__{fwd}")), "{t}");

    // not in the folder: the default tile, with one line saying so
    let o = run(&["check", &tuned, "--backward", FWD]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    assert!(
        t.contains(&format!("tuned: {FWD}_bwd is not in"))
            && t.contains("default backward tile m64n64w4"),
        "{t}"
    );
    run_with_tuned(dir.path(), &tuned, &fwd);
}

/// The backward on its own (a test of its own: the two tunings then run side by side).
#[test]
fn check_uses_the_tuned_backward_tile() {
    let dir = tempfile::tempdir().unwrap();
    tune(dir.path(), BWD, true, "128");
    let tuned = format!("--tuned={}", dir.path().join("r").display());
    let bwd = winner(dir.path(), &format!("{BWD}_bwd"), true);
    assert_ne!(
        bwd, "m32n32w4",
        "pick a shape where the tuned tile is not the default"
    );
    let o = run(&["check", "--backward", &tuned, BWD]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    assert!(
        t.contains(&format!("tuned: {BWD}_bwd uses tile {bwd} from")),
        "{t}"
    );
    assert!(t.contains(&format!("PASS {BWD}_bwd")), "{t}");
}

/// `run --tuned` says which tile it used and its output agrees with the reference backend's.
fn run_with_tuned(dir: &Path, tuned: &str, fwd: &str) {
    let (b, h, s, d) = (1u64, 2u64, 77u64, 64u64);
    let n = (b * h * s * d) as usize;
    for (name, seed) in [("q", 1), ("k", 2), ("v", 3)] {
        let x: Vec<f16> = values(n, seed).into_iter().map(f16::from_f32).collect();
        write_npy(
            &dir.join(format!("{name}.npy")),
            &[b, h, s, d],
            &x,
            npyz::Order::C,
        );
    }
    let p = |f: &str| dir.join(f).display().to_string();
    let (q, k, v) = (p("q.npy"), p("k.npy"), p("v.npy"));
    let go = |extra: &[&str], out: &str| {
        let mut a = vec!["run", FWD, "--q", &q, "--k", &k, "--v", &v, "--out", out];
        a.extend(extra);
        run(&a)
    };
    let (o_t, o_r) = (p("o_tuned.npy"), p("o_ref.npy"));
    let o = go(&[tuned], &o_t);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    assert!(
        t.contains(&format!("tuned: {FWD} uses tile {fwd} from")),
        "{t}"
    );
    let o = go(&["--backend", "reference"], &o_r);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let (a, r) = (read_f32(Path::new(&o_t)).1, read_f32(Path::new(&o_r)).1);
    // f16 output rounding (2^-11 relative) of values below 1 in magnitude, with margin
    let err = a
        .iter()
        .zip(&r)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(err < 4e-3, "tuned run vs reference: {err}");
}

/// `tune --atomic-dq` is a backward option: without `--backward` a usage error (exit 2).
#[test]
fn atomic_dq_needs_backward() {
    let o = run(&["tune", "--atomic-dq", "--variant", FWD]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(t.contains("--backward"), "{t}");
}

#[test]
fn tuned_folder_that_is_not_a_report_is_an_input_error() {
    let dir = tempfile::tempdir().unwrap();
    let flag = format!("--tuned={}", dir.path().display());
    for args in [
        vec!["check", &flag, FWD],
        vec!["check", "--backward", &flag, FWD],
    ] {
        let o = run(&args);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(2), "{t}");
        assert!(
            t.contains("--tuned") && t.contains("index.md") && t.contains("fix:"),
            "{t}"
        );
    }
}
