//! Hostile-but-realistic use of the CLI (issue 15, B3-B6 and B9): outputs that are inputs,
//! partial writes, sizes past the limits, messages that name the field. Every case exits 2
//! with a message naming the field and a fix, never panics, and leaves the inputs and any
//! previous outputs as they were.

mod cli_common;

use std::path::{Path, PathBuf};
use std::process::Output;

use cli_common::*;

const CAUSAL_F32: &str = "dtype = \"f32\"\nhead_dim = 64\nmask = \"causal\"\n";

/// `q.npy`, `k.npy`, `v.npy` of `[1, 1, 8, 64]` f32 and `spec.toml` (causal f32) in `d`.
fn setup(d: &Path) {
    for (name, seed) in [("q", 1), ("k", 2), ("v", 3)] {
        write_npy(
            &d.join(format!("{name}.npy")),
            &[1, 1, 8, 64],
            &values(8 * 64, seed),
            npyz::Order::C,
        );
    }
    std::fs::write(d.join("spec.toml"), CAUSAL_F32).unwrap();
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// `attnforge run <spec> --q --k --v` (files in `d`) plus `extra`, on `backend`.
fn run_in(d: &Path, spec: &str, backend: &str, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = bin();
    c.args(["run", spec, "--backend", backend]);
    for (flag, f) in [("--q", "q.npy"), ("--k", "k.npy"), ("--v", "v.npy")] {
        c.args([flag, &s(&d.join(f))]);
    }
    c.args(extra);
    c.env_remove("ATTNFORGE_PROGRESS");
    c.env_remove("ATTNFORGE_MAX_ELEMENTS");
    c.env("RUST_BACKTRACE", "0");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("spawn attnforge")
}

fn assert_exit2(o: &Output, needles: &[&str]) -> String {
    let t = text(o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    for n in needles {
        assert!(t.contains(n), "missing `{n}` in: {t}");
    }
    assert!(t.contains("fix:"), "no fix in: {t}");
    assert!(!t.contains("panicked"), "panic: {t}");
    t
}

fn bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

#[test]
fn outputs_that_are_inputs_or_each_other_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    let spec = s(&d.join("spec.toml"));
    let before: Vec<(PathBuf, Vec<u8>)> = ["q.npy", "k.npy", "v.npy", "spec.toml"]
        .iter()
        .map(|f| (d.join(f), bytes(&d.join(f))))
        .collect();
    let o = |x: &str| s(&d.join(x));
    let cases: Vec<(Vec<String>, Vec<&str>)> = vec![
        (vec!["--out".into(), o("q.npy")], vec!["--out", "--q"]),
        (
            vec!["--out".into(), o("out.npy"), "--lse".into(), o("k.npy")],
            vec!["--lse", "--k"],
        ),
        (vec!["--out".into(), o("v.npy")], vec!["--out", "--v"]),
        (
            vec!["--out".into(), spec.clone()],
            vec!["--out", "spec file"],
        ),
        (
            vec!["--out".into(), o("x.npy"), "--lse".into(), o("x.npy")],
            vec!["--out", "--lse", "same file"],
        ),
        // The same file through another spelling of its folder.
        (
            vec!["--out".into(), s(&d.join(".").join("q.npy"))],
            vec!["--out", "--q"],
        ),
    ];
    for (extra, needles) in cases {
        let args: Vec<&str> = extra.iter().map(String::as_str).collect();
        assert_exit2(&run_in(d, &spec, "reference", &args, &[]), &needles);
    }
    // A hard link and a symbolic link to an input.
    std::fs::hard_link(d.join("q.npy"), d.join("q_hard.npy")).unwrap();
    assert_exit2(
        &run_in(d, &spec, "reference", &["--out", &o("q_hard.npy")], &[]),
        &["--out", "--q"],
    );
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(d.join("k.npy"), d.join("k_sym.npy")).unwrap();
        assert_exit2(
            &run_in(
                d,
                &spec,
                "reference",
                &["--out", &o("out.npy"), "--lse", &o("k_sym.npy")],
                &[],
            ),
            &["--lse", "--k"],
        );
    }
    // Document ids given with --doc.
    let ids = vec![0i32; 8];
    write_npy(&d.join("ids.npy"), &[8], &ids, npyz::Order::C);
    std::fs::write(
        d.join("doc.toml"),
        "dtype = \"f32\"\nhead_dim = 64\nmask = \"document\"\n[params]\ndoc_segments = [8]\n",
    )
    .unwrap();
    assert_exit2(
        &run_in(
            d,
            &o("doc.toml"),
            "reference",
            &["--doc", &o("ids.npy"), "--out", &o("ids.npy")],
            &[],
        ),
        &["--out", "--doc"],
    );
    for (p, b) in &before {
        assert_eq!(&bytes(p), b, "{} was changed", p.display());
    }
    assert!(!d.join("out.npy").exists() && !d.join("x.npy").exists());
    // Sanity: distinct outputs work.
    let ok = run_in(
        d,
        &spec,
        "reference",
        &["--out", &o("out.npy"), "--lse", &o("lse.npy")],
        &[],
    );
    assert!(ok.status.success(), "{}", text(&ok));
}

#[test]
fn a_failed_lse_write_keeps_the_previous_out() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    let spec = s(&d.join("spec.toml"));
    std::fs::write(d.join("out.npy"), b"previous result").unwrap();
    let o = run_in(
        d,
        &spec,
        "reference",
        &[
            "--out",
            &s(&d.join("out.npy")),
            "--lse",
            &s(&d.join("missing").join("lse.npy")),
        ],
        &[],
    );
    assert_exit2(&o, &["--lse", "missing", "does not exist"]);
    assert_eq!(bytes(&d.join("out.npy")), b"previous result");
    let names: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(names.is_empty(), "temporary files left: {names:?}");
}

#[test]
fn output_paths_are_checked_before_computing_and_progress_shows_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    let spec = s(&d.join("spec.toml"));
    let always = [("ATTNFORGE_PROGRESS", "always")];
    // A directory as --out, and a missing folder: refused before the kernel runs (the
    // progress line, forced on, never appears).
    let o = run_in(d, &spec, "reference", &["--out", &s(d)], &always);
    let t = assert_exit2(&o, &["--out", "is a directory"]);
    assert!(!t.contains("running"), "computed before failing: {t}");
    let o = run_in(
        d,
        &spec,
        "reference",
        &["--out", &s(&d.join("nope").join("o.npy"))],
        &always,
    );
    let t = assert_exit2(&o, &["--out", "nope", "does not exist"]);
    assert!(!t.contains("running"), "computed before failing: {t}");
    // A folder nobody can create files in (even root: /proc).
    #[cfg(target_os = "linux")]
    {
        let o = run_in(
            d,
            &spec,
            "reference",
            &["--out", "/proc/attnforge_out.npy"],
            &always,
        );
        let t = assert_exit2(&o, &["--out", "cannot create a file in /proc"]);
        assert!(!t.contains("running"), "computed before failing: {t}");
    }
    // Progress: on request it shows the elapsed time and the total on stderr ...
    let o = run_in(
        d,
        &spec,
        "reference",
        &["--out", &s(&d.join("o.npy"))],
        &always,
    );
    assert!(o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("running on the f64 reference") && err.contains("elapsed"),
        "{err}"
    );
    assert!(err.contains("done in"), "{err}");
    // ... and stderr stays clean when it is not a terminal.
    let o = run_in(d, &spec, "reference", &["--out", &s(&d.join("o.npy"))], &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `spec.toml` with the given `[problem]` lines, checked with `attnforge check`.
fn check_problem(d: &Path, base: &str, problem: &str, env: &[(&str, &str)]) -> Output {
    let p = d.join("big.toml");
    std::fs::write(&p, format!("{base}[problem]\n{problem}\n")).unwrap();
    let mut c = bin();
    c.args(["check", &s(&p)]);
    c.env_remove("ATTNFORGE_MAX_ELEMENTS");
    c.env("RUST_BACKTRACE", "0");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("spawn attnforge")
}

#[test]
fn problem_sizes_are_checked_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let start = std::time::Instant::now();
    let cases: &[(&str, &str)] = &[
        (
            "batch = 1000000\nheads_q = 1000000\nseq_q = 1000000\nseq_k = 1000000",
            "problem.batch",
        ),
        ("seq_q = 1000000\nseq_k = 1000000", "problem.seq_q"),
        ("seq_q = 3000000000", "problem.seq_q"),
        (
            "batch = 4\nheads_q = 64\nseq_q = 200000\nseq_k = 200000",
            "problem.seq_q",
        ),
        // Under the per-tensor limit, over the default element budget.
        (
            "heads_q = 32\nseq_q = 65536\nseq_k = 65536",
            "problem.seq_q",
        ),
    ];
    for (problem, field) in cases {
        let t = assert_exit2(&check_problem(d, CAUSAL_F32, problem, &[]), &[field]);
        assert!(
            ["2147483647", "65535", "ATTNFORGE_MAX_ELEMENTS"]
                .iter()
                .any(|l| t.contains(l)),
            "no limit named: {t}"
        );
    }
    // Top-k with seq_k = 2^31 - 1 (a dynamic spec).
    let topk = "family = \"topk\"\ndtype = \"f16\"\nhead_dim = 128\n[params]\nsink = 4\nrecent = 16\nk = 16\n";
    assert_exit2(
        &check_problem(
            d,
            topk,
            "heads_q = 4\nheads_kv = 1\nseq_q = 2\nseq_k = 2147483647",
            &[],
        ),
        &["problem.seq_k", "2147483647"],
    );
    // The budget is the environment variable's: a small one rejects a small problem.
    assert_exit2(
        &check_problem(
            d,
            CAUSAL_F32,
            "seq_q = 8\nseq_k = 8",
            &[("ATTNFORGE_MAX_ELEMENTS", "1000")],
        ),
        &["problem.seq_q", "budget of 1000", "ATTNFORGE_MAX_ELEMENTS"],
    );
    assert!(
        start.elapsed().as_secs() < 30,
        "size checks took {:?}",
        start.elapsed()
    );
}

/// An `.npy` file with a hand-written header and `data_bytes` zero bytes of data.
fn raw_npy(path: &Path, shape: &str, data_bytes: usize) {
    let mut h = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({shape}), }}");
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend((h.len() as u16).to_le_bytes());
    b.extend(h.as_bytes());
    b.extend(vec![0u8; data_bytes]);
    std::fs::write(path, b).unwrap();
}

#[test]
fn npy_headers_are_checked_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    let spec = s(&d.join("spec.toml"));
    let out = s(&d.join("o.npy"));
    // An element count that wraps u64, one past the per-tensor limit, a truncated file.
    raw_npy(&d.join("q.npy"), "4611686018427387904, 8, 1, 64", 64);
    assert_exit2(
        &run_in(d, &spec, "reference", &["--out", &out], &[]),
        &["q.npy", "2^64"],
    );
    raw_npy(&d.join("q.npy"), "1, 64, 3000000000, 64", 64);
    assert_exit2(
        &run_in(d, &spec, "reference", &["--out", &out], &[]),
        &["q.npy", "2147483647"],
    );
    raw_npy(&d.join("q.npy"), "1, 1, 8, 64", 100);
    assert_exit2(
        &run_in(d, &spec, "reference", &["--out", &out], &[]),
        &["q.npy", "truncated"],
    );
    // Under the hard limits but over the element budget: named with the fix.
    setup(d);
    assert_exit2(
        &run_in(
            d,
            &spec,
            "reference",
            &["--out", &out],
            &[("ATTNFORGE_MAX_ELEMENTS", "1000")],
        ),
        &["--q", "ATTNFORGE_MAX_ELEMENTS"],
    );
    assert!(!d.join("o.npy").exists());
}

/// A spec file's error through `attnforge check` (exit 2, nothing run).
fn check_text(d: &Path, text: &str) -> String {
    let p = d.join("t.toml");
    std::fs::write(&p, text).unwrap();
    let o = bin()
        .args(["check", &s(&p)])
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    assert_exit2(&o, &[])
}

#[test]
fn spec_file_messages_name_the_field_and_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A TOML type error names its field.
    let t = check_text(d, "dtype = \"f32\"\nhead_dim = \"64\"\nmask = \"causal\"\n");
    assert!(t.contains("field `head_dim`"), "{t}");
    let t = check_text(d, &format!("{CAUSAL_F32}[problem]\nseq_q = \"8\"\n"));
    assert!(t.contains("field `problem.seq_q`"), "{t}");
    // `mask = "predicate"` says the function is missing, not that the mask is unknown.
    let t = check_text(d, "dtype = \"f32\"\nhead_dim = 64\nmask = \"predicate\"\n");
    assert!(!t.contains("unknown mask"), "{t}");
    assert!(
        t.contains("needs its function") && t.contains("[mask.function]"),
        "{t}"
    );
    // block_sparse without lists points to the spec file's table.
    let t = check_text(
        d,
        "dtype = \"f16\"\nhead_dim = 64\n[mask]\nkind = \"block_sparse\"\n",
    );
    assert!(
        t.contains("params.block_lists") && t.contains("[params.block_lists]"),
        "{t}"
    );
    assert!(!t.contains("RunParams"), "{t}");
    // An empty declared-parameter list says so.
    let t = check_text(d, &format!("{CAUSAL_F32}[params.user]\nfoo = 1\n"));
    assert!(
        t.contains("params.user.foo") && t.contains("none are declared"),
        "{t}"
    );
    assert!(!t.contains("declared parameters: \n"), "{t}");
    // sparse_block with a mask that uses no block lists.
    let t = check_text(
        d,
        &format!("{CAUSAL_F32}sparse_block = {{ q = 7, k = 3 }}\n"),
    );
    assert!(t.contains("field `sparse_block`"), "{t}");
}

#[test]
fn input_messages_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    let spec = s(&d.join("spec.toml"));
    let out = s(&d.join("o.npy"));
    // A directory as input.
    let mut c = bin();
    let o = c
        .args(["run", &spec, "--backend", "reference", "--q", &s(d)])
        .args(["--k", &s(&d.join("k.npy")), "--v", &s(&d.join("v.npy"))])
        .args(["--out", &out])
        .output()
        .unwrap();
    let t = assert_exit2(&o, &["is a directory"]);
    assert!(!t.contains("numpy.save"), "{t}");
    // A batch mismatch is a sentence naming both sizes.
    write_npy(
        &d.join("k.npy"),
        &[2, 1, 8, 64],
        &values(2 * 8 * 64, 2),
        npyz::Order::C,
    );
    let t = assert_exit2(
        &run_in(d, &spec, "reference", &["--out", &out], &[]),
        &["k has batch size 2 but q has batch size 1"],
    );
    assert!(!t.contains(" / "), "{t}");
    setup(d);
    // A finite f32 that overflows bf16.
    std::fs::write(
        d.join("bf16.toml"),
        "dtype = \"bf16\"\nhead_dim = 64\nmask = \"causal\"\n",
    )
    .unwrap();
    let mut q = values(8 * 64, 1);
    q[5] = 3.4e38;
    write_npy(&d.join("q.npy"), &[1, 1, 8, 64], &q, npyz::Order::C);
    let t = assert_exit2(
        &run_in(
            d,
            &s(&d.join("bf16.toml")),
            "reference",
            &["--out", &out],
            &[],
        ),
        &["q.npy", "element 5", "bf16 range"],
    );
    assert!(!t.contains("NaN"), "{t}");
    assert!(!d.join("o.npy").exists());
}

#[test]
fn scores_that_overflow_f32_are_rejected_on_every_backend() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    let spec = s(&d.join("spec.toml"));
    let out = s(&d.join("o.npy"));
    write_npy(
        &d.join("q.npy"),
        &[1, 1, 8, 64],
        &vec![3e38f32; 8 * 64],
        npyz::Order::C,
    );
    for backend in ["reference", "sim"] {
        assert_exit2(
            &run_in(d, &spec, backend, &["--out", &out], &[]),
            &["q.npy", "scores can reach", "1e36"],
        );
    }
    // Values of 1e38 (finite f32): the f32 accumulator of 8 keys reaches 8e38 (the simulator
    // wrote Inf/NaN, the reference finite values).
    setup(d);
    write_npy(
        &d.join("v.npy"),
        &[1, 1, 8, 64],
        &vec![1e38f32; 8 * 64],
        npyz::Order::C,
    );
    for backend in ["reference", "sim"] {
        assert_exit2(
            &run_in(d, &spec, backend, &["--out", &out], &[]),
            &["v.npy", "max|v| * Sk"],
        );
    }
    assert!(!d.join("o.npy").exists());
}

#[test]
fn non_finite_outputs_fail_with_their_location() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    // The score divides by q - kv: 0 on the diagonal, so every row holds an infinite score.
    std::fs::write(
        d.join("divz.toml"),
        format!("{CAUSAL_F32}[score.function]\nsource = '''\nfn divz(score: f32, q: i64, kv: i64) -> f32 {{\n    score / ((q - kv) as f32)\n}}\n'''\n"),
    )
    .unwrap();
    let out = d.join("o.npy");
    for backend in ["reference", "sim"] {
        let o = run_in(
            d,
            &s(&d.join("divz.toml")),
            backend,
            &["--out", &s(&out)],
            &[],
        );
        assert_exit2(&o, &["NaN or Inf", "of 8 output rows", "batch 0, head 0"]);
        assert!(!out.exists(), "{backend}: output written");
    }
}

#[test]
fn a_failed_emit_leaves_no_empty_out_dir() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out_dir = d.join("new").join("sub");
    let o = bin()
        .args([
            "emit",
            &s(&d.join("missing.toml")),
            "--no-ptxas",
            "--out-dir",
        ])
        .arg(&out_dir)
        .output()
        .unwrap();
    assert_exit2(&o, &["missing.toml"]);
    assert!(!d.join("new").exists(), "empty --out-dir left behind");
    // An existing folder stays.
    std::fs::create_dir(d.join("kept")).unwrap();
    let o = bin()
        .args([
            "emit",
            &s(&d.join("missing.toml")),
            "--no-ptxas",
            "--out-dir",
        ])
        .arg(d.join("kept"))
        .output()
        .unwrap();
    assert_exit2(&o, &["missing.toml"]);
    assert!(d.join("kept").is_dir());
}
