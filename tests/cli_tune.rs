//! `attnforge tune` and `attnforge report` through the real binary: a first run tunes and
//! writes the report, a second run reuses the cache and says so, `report` rewrites the
//! report from the cache alone, and bad input is an input error (exit 2) or a failure (1).
//! A missing toolchain or compiler is exit 2 with the reason and caches nothing; an
//! unparsable cache is counted as corrupt and kept aside; a read-only cache fails first.

mod cli_common;

use std::process::Output;

use cli_common::{bin, run, text};

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
    assert_eq!(unknown.status.code(), Some(2), "{}", text(&unknown));
    assert!(
        text(&unknown).contains("no_such_kernel"),
        "{}",
        text(&unknown)
    );
    let arch = run(&["tune", "--catalog", "--arch", "sm_75"]);
    assert_eq!(arch.status.code(), Some(2), "{}", text(&arch));
}

fn small_tune_args<'a>(cache: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "tune",
        "--variant",
        KERNEL,
        "--arch",
        "sm_80",
        "--out",
        out,
        "--cache",
        cache,
        "--compile-top",
        "1",
        "--seq",
        "512",
        "--heads",
        "4",
        "--batch",
        "1",
    ]
}

fn run_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = bin();
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("spawn attnforge")
}

#[test]
fn missing_toolchain_or_compiler_is_exit_2_and_never_cached() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("c.json");
    let out = dir.path().join("r");
    let args = small_tune_args(cache.to_str().unwrap(), out.to_str().unwrap());
    // (the compiler is part of the simulator cache key, so a missing one is really needed)
    for (env, says) in [
        (("ATTNFORGE_CUDA_HOME", "/nonexistent"), "/nonexistent"),
        (("ATTNFORGE_SIM_CXX", "/nonexistent"), "ATTNFORGE_SIM_CXX"),
    ] {
        let o = run_env(&args, &[env]);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(2), "{env:?}: {t}");
        assert!(
            t.contains(says) && t.contains("cannot tune") && t.contains("nothing was cached"),
            "{env:?}: {t}"
        );
        let cached = std::fs::read_to_string(&cache).unwrap_or_default();
        assert!(!cached.contains(KERNEL), "{env:?} cached: {cached}");
    }
    // fixed: tuned, not "cache hit ... winner none reused"
    let o = run(&args);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    assert!(t.contains("1 kernels: 0 from the cache, 1 tuned"), "{t}");
    assert!(!t.contains("winner none"), "{t}");

    // an unparsable cache: counted as corrupt re-tuned, kept aside
    std::fs::write(&cache, "{ not json").unwrap();
    let o = run(&args);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    assert!(
        t.contains("0 from the cache, 0 tuned, 0 stale re-tuned, 1 corrupt re-tuned"),
        "{t}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("c.json.corrupt")).unwrap(),
        "{ not json"
    );
}

#[test]
fn read_only_cache_fails_before_tuning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("c.json");
    std::fs::write(&cache, "{}").unwrap();
    let mut perm = std::fs::metadata(&cache).unwrap().permissions();
    perm.set_readonly(true);
    std::fs::set_permissions(&cache, perm).unwrap();
    let out = dir.path().join("r");
    let mut args = small_tune_args(cache.to_str().unwrap(), out.to_str().unwrap());
    args.push("--retune");
    let started = std::time::Instant::now();
    let o = run(&args);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(
        t.contains("read-only") && t.contains(cache.to_str().unwrap()) && t.contains("fix:"),
        "{t}"
    );
    assert!(!t.contains("compiling"), "{t}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "failed only after {:?}",
        started.elapsed()
    );
}
