//! `attnforge tune` and `attnforge report` through the real binary: a first run tunes and
//! writes the report, a second run reuses the cache and says so, `report` rewrites the
//! report from the cache alone, and bad input is an input error (exit 2) or a failure (1).

mod cli_common;

use cli_common::{run, text};

const KERNEL: &str = "flash_fwd_full_d64_f32";

#[test]
fn tune_then_cache_hit_then_report() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("cache.json");
    let out = dir.path().join("reports");
    let (cache_s, out_s) = (cache.to_str().unwrap(), out.to_str().unwrap());
    let args = [
        "tune",
        "--variant",
        KERNEL,
        "--arch",
        "sm_80",
        "--out",
        out_s,
        "--cache",
        cache_s,
        "--compile-top",
        "2",
        "--seq",
        "512",
        "--heads",
        "4",
        "--batch",
        "1",
    ];
    let first = run(&args);
    let t = text(&first);
    assert_eq!(first.status.code(), Some(0), "{t}");
    assert!(t.contains("1 kernels: 0 from the cache, 1 tuned"), "{t}");
    let index = std::fs::read_to_string(out.join("index.md")).expect("index.md written");
    assert!(index.contains(KERNEL), "{index}");
    for ext in ["md", "json", "svg"] {
        let p = out.join(format!("{KERNEL}.{ext}"));
        assert!(p.is_file(), "missing {}", p.display());
    }
    let report = std::fs::read_to_string(out.join(format!("{KERNEL}.md"))).unwrap();
    assert!(
        report.contains("predicted"),
        "no GPU: the winner must be labelled predicted"
    );

    let second = run(&args);
    let t2 = text(&second);
    assert_eq!(second.status.code(), Some(0), "{t2}");
    assert!(t2.contains("1 kernels: 1 from the cache, 0 tuned"), "{t2}");

    let out2 = dir.path().join("again");
    let rep = run(&[
        "report",
        "--out",
        out2.to_str().unwrap(),
        "--cache",
        cache_s,
    ]);
    assert_eq!(rep.status.code(), Some(0), "{}", text(&rep));
    assert!(out2.join("index.md").is_file());
}

#[test]
fn tune_bad_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("r");
    let unknown = run(&[
        "tune",
        "--variant",
        "no_such_kernel",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(unknown.status.code(), Some(1), "{}", text(&unknown));
    assert!(
        text(&unknown).contains("no_such_kernel"),
        "{}",
        text(&unknown)
    );
    let arch = run(&["tune", "--catalog", "--arch", "sm_75"]);
    assert_eq!(arch.status.code(), Some(2), "{}", text(&arch));
}
