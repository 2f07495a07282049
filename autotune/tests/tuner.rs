//! The tuner with injected fake kernels (compile failure, wrong result, slow, spilling,
//! invalid), and the cache: hit on the second run, corrupted file and entry recovered,
//! stale codegen re-tuned, concurrent writers.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use attnforge_autotune::cache::CacheError;
use attnforge_autotune::cache::{Cache, Lookup};
use attnforge_autotune::cli::{run_report, run_tune_with, ReportArgs, TuneArgs, TuneError};
use attnforge_autotune::measure::{bench_custom, BenchConfig, Estimate};
use attnforge_autotune::model::Prediction;
use attnforge_autotune::occupancy::Occupancy;
use attnforge_autotune::tuner::{
    tune, EnvironmentError, Gate, GateError, Resources, Status, Tunable, TuneOptions,
};
use attnforge_autotune::{Arch, Basis};
use attnforge_codegen::tile::TileConfig;

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Good { ns: u64 },
    CompileFails,
    Wrong { ns: u64 },
    Spills,
    Invalid,
}

struct Fake {
    name: String,
    kinds: Vec<Kind>,
    measure: bool,
    version: String,
    builds: AtomicUsize,
    /// The compiler cannot run (like a missing CUDA toolchain).
    compiler_missing: AtomicBool,
    /// The gate cannot run (like a missing g++).
    gate_tool_missing: AtomicBool,
}

impl Fake {
    fn new(name: &str, kinds: Vec<Kind>, measure: bool) -> Self {
        Fake {
            name: name.into(),
            kinds,
            measure,
            version: "v1".into(),
            builds: AtomicUsize::new(0),
            compiler_missing: AtomicBool::new(false),
            gate_tool_missing: AtomicBool::new(false),
        }
    }
    fn kind(&self, t: &TileConfig) -> Kind {
        self.kinds[t.block_m]
    }
}

impl Tunable for Fake {
    fn variant(&self) -> String {
        self.name.clone()
    }
    fn space(&self, _: Arch) -> Vec<TileConfig> {
        // block_m doubles as the index of the fake's behaviour.
        (0..self.kinds.len())
            .map(|i| TileConfig::new(i, 32, 4, 1))
            .collect()
    }
    fn valid(&self, t: &TileConfig, _: Arch) -> Result<(), String> {
        match self.kind(t) {
            Kind::Invalid => Err("tile.block_m: fake invalid".into()),
            _ => Ok(()),
        }
    }
    fn fingerprint(&self, t: &TileConfig, _: Arch) -> String {
        format!("{}-{}", self.version, t.block_m)
    }
    fn build(
        &self,
        tiles: &[TileConfig],
        _: Arch,
    ) -> Result<Vec<Result<Resources, String>>, EnvironmentError> {
        self.builds.fetch_add(tiles.len(), Ordering::SeqCst);
        if self.compiler_missing.load(Ordering::SeqCst) {
            return Err(EnvironmentError {
                stage: "compile",
                message: "CUDA toolchain not found at /nonexistent".into(),
            });
        }
        Ok(tiles
            .iter()
            .map(|t| match self.kind(t) {
                Kind::CompileFails => Err("NVRTC: error: identifier \"oops\" is undefined".into()),
                k => Ok(Resources {
                    registers: 64,
                    smem_bytes: 16384,
                    stack_frame_bytes: 0,
                    spill_bytes: if k == Kind::Spills { 128 } else { 0 },
                    threads: 128,
                    main_loop: None,
                }),
            })
            .collect())
    }
    fn predict(&self, t: &TileConfig, _: &Resources, _: &Occupancy, _: Arch) -> Prediction {
        // The model prefers the wrong candidate and ranks by index otherwise.
        let us = match self.kind(t) {
            Kind::Wrong { .. } => 1.0,
            _ => 10.0 + t.block_m as f64,
        };
        Prediction {
            time_us: us,
            compute_us: us,
            smem_us: 0.0,
            dram_us: 0.0,
            waves: 1,
            latency_hiding: 1.0,
            splits: None,
        }
    }
    fn gate(&self, t: &TileConfig) -> Result<Gate, GateError> {
        if self.gate_tool_missing.load(Ordering::SeqCst) {
            return Err(GateError::Environment(EnvironmentError {
                stage: "gate",
                message: "C++ compiler `/nonexistent` could not be run".into(),
            }));
        }
        match self.kind(t) {
            Kind::Wrong { .. } => {
                Err(Status::WrongResult("max error 0.5 > tolerance".into()).into())
            }
            _ => Ok(Gate {
                backend: "fake".into(),
                shape: "tiny".into(),
                max_err: 0.0,
            }),
        }
    }
    fn can_measure(&self) -> bool {
        self.measure
    }
    fn measure(&self, t: &TileConfig, cfg: &BenchConfig, dir: &Path) -> Result<Estimate, String> {
        let ns = match self.kind(t) {
            Kind::Good { ns } | Kind::Wrong { ns } => ns,
            _ => return Err("not measurable".into()),
        };
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        // wall time grows with the batch (criterion sizes batches by wall time); the value
        // reported to criterion is exact.
        bench_custom(cfg, dir, &format!("c{}", t.block_m), |n| {
            let d = Duration::from_nanos(ns.saturating_mul(n));
            std::thread::sleep(d);
            d
        })
        .map_err(|e| e.to_string())
    }
    fn device(&self) -> String {
        "fake".into()
    }
    fn shape(&self) -> (String, String) {
        ("tiny".into(), "bh1_sq64_sk64".into())
    }
}

fn opts(dir: &Path) -> TuneOptions {
    TuneOptions {
        arch: Arch::Sm90,
        gate_top: 1,
        gate_max_tries: 3,
        compile_top: 0,
        bench: BenchConfig::quick(),
        criterion_dir: dir.join("criterion"),
    }
}

fn mixed() -> Vec<Kind> {
    vec![
        Kind::Good { ns: 50_000 }, // slow
        Kind::CompileFails,
        Kind::Wrong { ns: 10 },   // wrong but fastest
        Kind::Good { ns: 2_000 }, // the real winner
        Kind::Spills,
        Kind::Invalid,
    ]
}

#[test]
fn measured_tuning_rejects_broken_wrong_and_slow() {
    let dir = tempfile::tempdir().unwrap();
    let f = Fake::new("fake_mixed", mixed(), true);
    let t = tune(&f, &opts(dir.path()), &mut |_| {}).unwrap();
    assert_eq!(t.basis, Basis::Measured);
    let st: Vec<&Status> = t.candidates.iter().map(|c| &c.status).collect();
    assert_eq!(
        st[0],
        &Status::Passed,
        "slow but correct: passed, not the winner"
    );
    assert!(matches!(st[1], Status::CompileFailed(r) if r.contains("undefined")));
    assert!(
        matches!(st[2], Status::WrongResult(_)),
        "wrong-but-fast is rejected"
    );
    assert_eq!(st[3], &Status::Winner);
    assert!(matches!(st[4], Status::Pruned(r) if r.contains("spill")));
    assert!(matches!(st[5], Status::Invalid(_)));
    assert_eq!(t.winner.unwrap().block_m, 3);
    let slow = t.candidates[0].measured.as_ref().unwrap().mean_ns;
    let win = t.candidates[3].measured.as_ref().unwrap().mean_ns;
    assert!(
        slow > 10.0 * win,
        "criterion estimates: slow {slow} vs winner {win}"
    );
    assert!(
        t.candidates[2].measured.is_none(),
        "wrong candidates are never timed"
    );
}

#[test]
fn predicted_tuning_gates_the_static_top_and_says_predicted() {
    let dir = tempfile::tempdir().unwrap();
    let f = Fake::new("fake_pred", mixed(), false);
    let t = tune(&f, &opts(dir.path()), &mut |_| {}).unwrap();
    assert_eq!(t.basis, Basis::Predicted);
    // the model's favourite is wrong -> rejected; the next (index 0) wins on prediction.
    assert!(matches!(t.candidates[2].status, Status::WrongResult(_)));
    assert_eq!(t.winner.unwrap().block_m, 0);
    assert_eq!(t.candidates[3].status, Status::NotGated);
    assert!(t.candidates.iter().all(|c| c.measured.is_none()));
    let md = attnforge_autotune::report::markdown(&t, false);
    assert!(md.contains("predicted by the static model"));
    let svg = attnforge_autotune::report::svg(&t);
    assert!(
        svg.contains("WINNER")
            && svg.contains("PREDICTED")
            && svg.contains("rejected: wrong result")
    );
}

#[test]
fn all_rejected_means_no_winner() {
    let dir = tempfile::tempdir().unwrap();
    let f = Fake::new(
        "fake_none",
        vec![Kind::CompileFails, Kind::Wrong { ns: 1 }],
        true,
    );
    let t = tune(&f, &opts(dir.path()), &mut |_| {}).unwrap();
    assert!(t.winner.is_none());
    assert!(t.candidates.iter().all(|c| c.status.rejected()));
}

fn args(dir: &Path) -> TuneArgs {
    TuneArgs {
        out: dir.join("reports"),
        cache: Some(dir.join("cache.json")),
        ..TuneArgs::default()
    }
}

#[test]
fn second_run_hits_the_cache_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let f = Fake::new("fake_cache", mixed(), false);
    let a = args(dir.path());
    let s1 = run_tune_with(&a, &[&f]).unwrap();
    assert_eq!((s1.tuned_new, s1.cache_hits), (1, 0));
    let builds = f.builds.load(Ordering::SeqCst);
    let s2 = run_tune_with(&a, &[&f]).unwrap();
    assert_eq!((s2.tuned_new, s2.cache_hits), (0, 1));
    assert_eq!(
        f.builds.load(Ordering::SeqCst),
        builds,
        "no re-tuning on a hit"
    );
    assert!(s2
        .log
        .iter()
        .any(|l| l.contains("cache hit") && l.contains("not re-tuned")));
    let index = std::fs::read_to_string(&s2.index).unwrap();
    assert!(index.contains("fake_cache") && index.contains("| cache |"));
    for ext in ["md", "json", "svg"] {
        assert!(dir
            .path()
            .join(format!("reports/fake_cache.{ext}"))
            .exists());
    }
    assert!(dir.path().join("reports/index.html").exists());
    // report from the cache alone
    let idx = run_report(&ReportArgs {
        out: dir.path().join("r2"),
        cache: a.cache.clone(),
    })
    .unwrap();
    assert!(std::fs::read_to_string(idx).unwrap().contains("fake_cache"));
}

#[test]
fn corrupted_file_and_entry_are_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let f = Fake::new("fake_corrupt", mixed(), false);
    let a = args(dir.path());
    run_tune_with(&a, &[&f]).unwrap();
    let path = a.cache.clone().unwrap();
    // whole file garbage: counted as corrupt re-tuned (not as newly tuned), kept aside
    std::fs::write(&path, "{ this is not json").unwrap();
    let s = run_tune_with(&a, &[&f]).unwrap();
    assert_eq!(
        (s.cache_hits, s.tuned_new, s.retuned_corrupt),
        (0, 0, 1),
        "{:?}",
        s.log
    );
    assert!(s.log.iter().any(|l| l.contains("corrupt")));
    assert!(s
        .log
        .last()
        .unwrap()
        .contains("0 tuned, 0 stale re-tuned, 1 corrupt re-tuned"));
    let backup = path.with_extension("json.corrupt");
    assert_eq!(
        std::fs::read_to_string(&backup).unwrap(),
        "{ this is not json"
    );
    assert_eq!(
        run_tune_with(&a, &[&f]).unwrap().cache_hits,
        1,
        "rewritten cache is valid"
    );
    // a second corruption does not overwrite the first backup
    std::fs::write(&path, "second garbage").unwrap();
    let s = run_tune_with(&a, &[&f]).unwrap();
    assert_eq!(s.retuned_corrupt, 1);
    assert_eq!(
        std::fs::read_to_string(&backup).unwrap(),
        "{ this is not json"
    );
    assert_eq!(
        std::fs::read_to_string(format!("{}.1", backup.display())).unwrap(),
        "second garbage"
    );
    // one entry tampered (winner changed without fixing the checksum)
    let text = std::fs::read_to_string(&path).unwrap();
    let tampered = text.replacen(
        "\\\"status\\\":\\\"winner\\\"",
        "\\\"status\\\":\\\"passed\\\"",
        1,
    );
    assert_ne!(text, tampered);
    std::fs::write(&path, tampered).unwrap();
    let s = run_tune_with(&a, &[&f]).unwrap();
    assert_eq!((s.retuned_corrupt, s.cache_hits), (1, 0));
}

#[test]
fn stale_codegen_is_retuned() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = Fake::new("fake_stale", mixed(), false);
    let a = args(dir.path());
    run_tune_with(&a, &[&f]).unwrap();
    f.version = "v2".into();
    let s = run_tune_with(&a, &[&f]).unwrap();
    assert_eq!((s.retuned_stale, s.cache_hits), (1, 0));
    assert_eq!(run_tune_with(&a, &[&f]).unwrap().cache_hits, 1);
}

#[test]
fn concurrent_writers_do_not_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.json");
    let base = tune(
        &Fake::new("fake_conc", mixed(), false),
        &opts(dir.path()),
        &mut |_| {},
    )
    .unwrap();
    std::thread::scope(|s| {
        for th in 0..8 {
            let path = path.clone();
            let base = base.clone();
            s.spawn(move || {
                let cache = Cache::new(path);
                for i in 0..10 {
                    let mut t = base.clone();
                    t.variant = format!("fake_conc_{th}_{i}");
                    cache.store(&[t]).unwrap();
                }
            });
        }
    });
    let cache = Cache::new(&path);
    let loaded = cache.load();
    assert!(loaded.corrupt.is_none());
    assert_eq!(
        Cache::entries(&loaded.file).len(),
        80,
        "no writer's entry lost"
    );
    let mut t = base.clone();
    t.variant = "fake_conc_3_7".into();
    let key = attnforge_autotune::cache::key_of(&t);
    assert!(matches!(
        Cache::lookup(&loaded.file, &key, &t.codegen_hash),
        Lookup::Hit(_)
    ));
    assert!(!path.with_extension("json.lock").exists());
}

fn entries_in(path: &Path) -> usize {
    Cache::entries(&Cache::new(path).load().file).len()
}

#[test]
fn environment_failures_are_errors_and_never_cached() {
    for gate in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let f = Fake::new("fake_env", mixed(), false);
        let missing = if gate {
            &f.gate_tool_missing
        } else {
            &f.compiler_missing
        };
        missing.store(true, Ordering::SeqCst);
        let a = args(dir.path());
        let err = run_tune_with(&a, &[&f]).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, TuneError::Environment { .. }),
            "gate {gate}: {msg}"
        );
        assert_eq!(err.exit_code(), 2);
        assert!(
            msg.contains("fake_env") && msg.contains("/nonexistent") && msg.contains("next run"),
            "{msg}"
        );
        assert_eq!(entries_in(a.cache.as_ref().unwrap()), 0, "nothing cached");
        assert!(!a.out.exists(), "no empty report folder left behind");
        // environment fixed: tuned afresh, not "winner none reused"
        missing.store(false, Ordering::SeqCst);
        let s = run_tune_with(&a, &[&f]).unwrap();
        assert_eq!((s.tuned_new, s.cache_hits), (1, 0), "{:?}", s.log);
        assert_eq!(entries_in(a.cache.as_ref().unwrap()), 1);
    }
}

#[test]
fn no_winner_is_an_error_listing_reasons_and_not_cached() {
    let dir = tempfile::tempdir().unwrap();
    let f = Fake::new(
        "fake_nowin",
        vec![Kind::CompileFails, Kind::Wrong { ns: 1 }],
        false,
    );
    let a = args(dir.path());
    for run in 0..2 {
        let err = run_tune_with(&a, &[&f]).unwrap_err();
        assert_eq!(err.exit_code(), 1);
        let msg = err.to_string();
        assert!(
            msg.contains("fake_nowin")
                && msg.contains("1 compile failed")
                && msg.contains("1 wrong result")
                && msg.contains("undefined"),
            "{msg}"
        );
        let TuneError::NoWinner { summary, .. } = err else {
            unreachable!()
        };
        assert_eq!((summary.tuned_new, summary.cache_hits), (1, 0), "run {run}");
        assert!(summary.log.iter().any(|l| l.contains("NO WINNER")));
        // the reports with every candidate's reason are written
        let md = std::fs::read_to_string(dir.path().join("reports/fake_nowin.md")).unwrap();
        assert!(md.contains("No candidate survived"));
        assert_eq!(entries_in(a.cache.as_ref().unwrap()), 0);
    }
}

#[test]
fn a_cached_tuning_without_winner_is_not_reused() {
    // what versions before this fix stored after a failed tune
    let dir = tempfile::tempdir().unwrap();
    let f = Fake::new("fake_legacy", mixed(), false);
    f.compiler_missing.store(false, Ordering::SeqCst);
    let mut failed = tune(&f, &opts(dir.path()), &mut |_| {}).unwrap();
    failed.winner = None;
    for c in &mut failed.candidates {
        c.status = Status::CompileFailed("NVRTC unavailable: toolchain not found".into());
    }
    let a = args(dir.path());
    Cache::new(a.cache.clone().unwrap())
        .store(&[failed])
        .unwrap();
    let s = run_tune_with(&a, &[&f]).unwrap();
    assert_eq!((s.cache_hits, s.retuned_stale), (0, 1), "{:?}", s.log);
    assert!(s.log.iter().any(|l| l.contains("without a winner")));
    assert_eq!(run_tune_with(&a, &[&f]).unwrap().cache_hits, 1);
}

fn dead_pid() -> u32 {
    let mut c = std::process::Command::new("true").spawn().unwrap();
    let pid = c.id();
    c.wait().unwrap();
    pid
}

#[test]
fn stale_locks_are_taken_over_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let f = Fake::new("fake_lock", mixed(), false);
    let a = args(dir.path());
    let cache = Cache::new(a.cache.clone().unwrap());
    let lock = cache.lock_path();
    // holder no longer running
    std::fs::write(&lock, format!("{}\n", dead_pid())).unwrap();
    let t0 = std::time::Instant::now();
    let s = run_tune_with(&a, &[&f]).unwrap();
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    assert!(
        s.log.iter().any(|l| l.contains("no longer running")
            && l.contains("taken over")
            && l.contains(lock.to_str().unwrap())),
        "{:?}",
        s.log
    );
    assert!(!lock.exists());
    // holder alive (this process) but the lock is far older than any write
    let old = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 3600;
    std::fs::write(&lock, format!("pid {}\nsince {old}\n", std::process::id())).unwrap();
    let s = run_tune_with(
        &TuneArgs {
            retune: true,
            ..a.clone()
        },
        &[&f],
    )
    .unwrap();
    assert!(
        s.log
            .iter()
            .any(|l| l.contains("3600 s old") && l.contains("taken over")),
        "{:?}",
        s.log
    );
}

#[test]
fn waiting_for_a_live_lock_says_what_and_how_to_clear_it() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::new(dir.path().join("cache.json"));
    let lock = cache.lock_path();
    std::fs::write(&lock, format!("pid {}\n", std::process::id())).unwrap();
    let base = tune(
        &Fake::new("fake_wait", mixed(), false),
        &opts(dir.path()),
        &mut |_| {},
    )
    .unwrap();
    let mut notes = Vec::new();
    std::thread::scope(|s| {
        let l = lock.clone();
        s.spawn(move || {
            std::thread::sleep(Duration::from_millis(1500));
            std::fs::remove_file(l).unwrap();
        });
        cache.store_with(&[base], &mut |m| notes.push(m)).unwrap();
    });
    assert_eq!(notes.len(), 1, "{notes:?}");
    let n = &notes[0];
    assert!(
        n.contains("waiting for the tuning cache lock")
            && n.contains(lock.to_str().unwrap())
            && n.contains(&format!("pid {}", std::process::id()))
            && n.contains("rm "),
        "{n}"
    );
    assert_eq!(entries_in(cache.path()), 1);
}

#[test]
fn unwritable_cache_or_reports_fail_before_any_tuning() {
    let dir = tempfile::tempdir().unwrap();
    let f = Fake::new("fake_ro", mixed(), false);
    let a = args(dir.path());
    run_tune_with(&a, &[&f]).unwrap();
    let built = f.builds.load(Ordering::SeqCst);
    let path = a.cache.clone().unwrap();
    let mut perm = std::fs::metadata(&path).unwrap().permissions();
    perm.set_readonly(true);
    std::fs::set_permissions(&path, perm.clone()).unwrap();
    let retune = TuneArgs {
        retune: true,
        ..a.clone()
    };
    let err = run_tune_with(&retune, &[&f]).unwrap_err();
    assert!(
        matches!(err, TuneError::Cache(CacheError::ReadOnly(_))),
        "{err}"
    );
    assert_eq!(err.exit_code(), 2);
    let msg = err.to_string();
    assert!(
        msg.contains(path.to_str().unwrap()) && msg.contains("chmod u+w"),
        "{msg}"
    );
    assert_eq!(
        f.builds.load(Ordering::SeqCst),
        built,
        "no tuning work done"
    );
    // a read-only cache is fine when nothing has to be stored
    assert_eq!(run_tune_with(&a, &[&f]).unwrap().cache_hits, 1);
    #[allow(clippy::permissions_set_readonly_false)]
    perm.set_readonly(false);
    std::fs::set_permissions(&path, perm).unwrap();

    // the cache's folder is a file (not writable even for root)
    let file = dir.path().join("plain-file");
    std::fs::write(&file, "x").unwrap();
    let in_file = TuneArgs {
        cache: Some(file.join("cache.json")),
        ..a.clone()
    };
    let err = run_tune_with(&in_file, &[&f]).unwrap_err();
    assert!(
        matches!(err, TuneError::Cache(CacheError::NotWritable { .. })),
        "{err}"
    );
    assert_eq!(err.exit_code(), 2);
    // the report folder is a file
    let out_file = TuneArgs {
        out: file.clone(),
        retune: true,
        ..a.clone()
    };
    let err = run_tune_with(&out_file, &[&f]).unwrap_err();
    assert!(matches!(err, TuneError::ReportsNotWritable { .. }), "{err}");
    assert!(err.to_string().contains("--out"), "{err}");
    assert_eq!(err.exit_code(), 2);
    assert_eq!(
        f.builds.load(Ordering::SeqCst),
        built,
        "no tuning work done"
    );
}
