//! The tuner with injected fake kernels (compile failure, wrong result, slow, spilling,
//! invalid), and the cache: hit on the second run, corrupted file and entry recovered,
//! stale codegen re-tuned, concurrent writers.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use attnforge_autotune::cache::{Cache, Lookup};
use attnforge_autotune::cli::{run_report, run_tune_with, ReportArgs, TuneArgs};
use attnforge_autotune::measure::{bench_custom, BenchConfig, Estimate};
use attnforge_autotune::model::Prediction;
use attnforge_autotune::occupancy::Occupancy;
use attnforge_autotune::tuner::{tune, Gate, Resources, Status, Tunable, TuneOptions};
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
}

impl Fake {
    fn new(name: &str, kinds: Vec<Kind>, measure: bool) -> Self {
        Fake {
            name: name.into(),
            kinds,
            measure,
            version: "v1".into(),
            builds: AtomicUsize::new(0),
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
    fn build(&self, tiles: &[TileConfig], _: Arch) -> Vec<Result<Resources, String>> {
        self.builds.fetch_add(tiles.len(), Ordering::SeqCst);
        tiles
            .iter()
            .map(|t| match self.kind(t) {
                Kind::CompileFails => Err("NVRTC: error: identifier \"oops\" is undefined".into()),
                k => Ok(Resources {
                    registers: 64,
                    smem_bytes: 16384,
                    stack_frame_bytes: 0,
                    spill_bytes: if k == Kind::Spills { 128 } else { 0 },
                    threads: 128,
                }),
            })
            .collect()
    }
    fn predict(&self, t: &TileConfig, _: &Occupancy, _: Arch) -> Prediction {
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
        }
    }
    fn gate(&self, t: &TileConfig) -> Result<Gate, Status> {
        match self.kind(t) {
            Kind::Wrong { .. } => Err(Status::WrongResult("max error 0.5 > tolerance".into())),
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
    let t = tune(&f, &opts(dir.path()), &mut |_| {});
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
    let t = tune(&f, &opts(dir.path()), &mut |_| {});
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
    let t = tune(&f, &opts(dir.path()), &mut |_| {});
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
    // whole file garbage
    std::fs::write(&path, "{ this is not json").unwrap();
    let s = run_tune_with(&a, &[&f]).unwrap();
    assert_eq!(s.cache_hits, 0);
    assert!(s.log.iter().any(|l| l.contains("corrupt")));
    assert!(path.with_extension("json.corrupt").exists());
    assert_eq!(
        run_tune_with(&a, &[&f]).unwrap().cache_hits,
        1,
        "rewritten cache is valid"
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
    );
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
