//! The static model against the only GPU measurements this project has: the tuning of the
//! default search space of three kernels on an NVIDIA H200 (2026-12-04,
//! `docs/gpu-results/2026-12-04-tuning.csv`, measured by `attnforge tune --compile-top 0`).
//! Every candidate is compiled here for sm_90 through the tuner's own pipeline
//! ([`Tunable::build`]: NVRTC, ptxas, the SASS main-loop counts) and predicted by
//! [`Tunable::predict`]. The expected values are those measurements, not model output.
//!
//! The sm_90 constants were fitted to these 30 points, so this is the fit's error, not a
//! validation on held-out data; it fails when a change of the model or of the kernels' code
//! makes the ranking worse than stated in docs/tuning.md. Since the main-loop change of
//! session 8 the compiled kernels are not the measured ones: the level of the predictions
//! (mean log ratio, about -0.13 then) is bounded loosely, its spread keeps the 0.10 bound. The document kernel (6 more
//! points) is reported but not fitted: it runs about 1.6x slower than the model says, which
//! charges its partial tiles with the partial-tile path of its SASS (docs/tuning.md).

use attnforge_autotune::kernel::KernelTunable;
use attnforge_autotune::occupancy::{occupancy, ArchLimits};
use attnforge_autotune::{Arch, Tunable};
use attnforge_codegen::catalog::catalog;
use attnforge_codegen::tile::TileConfig;

struct Point {
    kernel: String,
    tile: TileConfig,
    measured_us: f64,
}

fn tile_of(s: &str) -> TileConfig {
    TileConfig::parse_suffix(s).unwrap_or_else(|| panic!("bad tile {s}"))
}

fn measurements() -> Vec<Point> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/gpu-results/2026-12-04-tuning.csv"
    );
    let text = std::fs::read_to_string(path).expect("the measured CSV");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("kernel,") && !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            Point {
                kernel: f[0].to_owned(),
                tile: tile_of(f[1]),
                measured_us: f[5].parse().expect("measured us"),
            }
        })
        .collect()
}

/// Spearman rank correlation (no ties in these data).
fn spearman(a: &[f64], b: &[f64]) -> f64 {
    let rank = |x: &[f64]| -> Vec<f64> {
        let mut idx: Vec<usize> = (0..x.len()).collect();
        idx.sort_by(|&i, &j| x[i].total_cmp(&x[j]));
        let mut r = vec![0.0; x.len()];
        for (k, &i) in idx.iter().enumerate() {
            r[i] = k as f64;
        }
        r
    };
    let (ra, rb) = (rank(a), rank(b));
    let n = a.len() as f64;
    let d2: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - y).powi(2)).sum();
    1.0 - 6.0 * d2 / (n * (n * n - 1.0))
}

/// `(tile, predicted us)` for `kernel`'s tiles, through the tuner's build and predict, at
/// the tuning CSV's shape.
fn predictions(kernel: &str, tiles: &[TileConfig]) -> Vec<f64> {
    predictions_at(kernel, tiles, 2)
}

/// [`predictions`] with `batch` x 16 heads x 4096.
fn predictions_at(kernel: &str, tiles: &[TileConfig], batch: usize) -> Vec<f64> {
    let spec = catalog()
        .into_iter()
        .find(|s| s.canonical_name() == kernel)
        .unwrap_or_else(|| panic!("{kernel} in the catalog"));
    let t = KernelTunable::new(spec, batch, 16, 4096, 40).with_wgmma(true);
    let limits = ArchLimits::of(Arch::Sm90);
    let built = t
        .build(tiles, Arch::Sm90)
        .unwrap_or_else(|e| panic!("the toolchain of `cargo xtask setup`: {e:?}"));
    tiles
        .iter()
        .zip(built)
        .map(|(tile, r)| {
            let res = r.unwrap_or_else(|e| panic!("{kernel} {}: {e}", tile.suffix()));
            assert!(
                res.main_loop.is_some(),
                "{kernel} {}: no SASS main-loop counts (cuobjdump or nvdisasm missing?)",
                tile.suffix()
            );
            let occ = occupancy(
                &limits,
                res.threads as usize,
                res.registers as usize,
                res.smem_bytes as usize,
            );
            t.predict(tile, &res, &occ, Arch::Sm90).time_us
        })
        .collect()
}

#[test]
fn the_model_ranks_the_h200_measurements() {
    let pts = measurements();
    let mut kernels: Vec<String> = pts.iter().map(|p| p.kernel.clone()).collect();
    kernels.dedup();
    assert!(kernels.len() >= 4, "{kernels:?}");
    let mut log_ratio = Vec::new();
    for k in &kernels {
        let mine: Vec<&Point> = pts.iter().filter(|p| &p.kernel == k).collect();
        let tiles: Vec<TileConfig> = mine.iter().map(|p| p.tile).collect();
        let pred = predictions(k, &tiles);
        let meas: Vec<f64> = mine.iter().map(|p| p.measured_us).collect();
        let rho = spearman(&pred, &meas);
        let pick = (0..pred.len())
            .min_by(|&a, &b| pred[a].total_cmp(&pred[b]))
            .expect("candidates");
        let best = meas.iter().copied().fold(f64::INFINITY, f64::min);
        let loss = meas[pick] / best - 1.0;
        eprintln!("{k}: spearman {rho:.2}, model's pick {} measured {:.0} us, best {best:.0} us (+{:.1}%)", tiles[pick].suffix(), meas[pick], 100.0 * loss);
        for ((t, p), m) in tiles.iter().zip(&pred).zip(&meas) {
            eprintln!(
                "  {:14} predicted {p:8.1} us  measured {m:8.1} us  ratio {:.2}",
                t.suffix(),
                p / m
            );
        }
        if k.contains("document") {
            continue;
        }
        log_ratio.extend(pred.iter().zip(&meas).map(|(p, m)| (p / m).ln()));
        assert!(rho >= 0.6, "{k}: rank correlation {rho:.2} < 0.6");
        assert!(
            loss <= 0.12,
            "{k}: the model's pick is {:.1}% slower than the best",
            100.0 * loss
        );
        let mut distinct = pred.clone();
        distinct.sort_by(f64::total_cmp);
        distinct.dedup_by(|a, b| (*a - *b).abs() < 1e-6 * b.abs());
        assert!(
            distinct.len() * 2 > pred.len(),
            "{k}: the model is flat: {pred:?}"
        );
    }
    let n = log_ratio.len() as f64;
    let rms = (log_ratio.iter().map(|r| r * r).sum::<f64>() / n).sqrt();
    let mean = log_ratio.iter().sum::<f64>() / n;
    let spread = (log_ratio.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n).sqrt();
    eprintln!(
        "over {} fitted points: rms log error {rms:.3}, mean log(predicted / measured) {mean:.3}, spread about it {spread:.3}",
        log_ratio.len()
    );
    // The measurements are of the kernels as of their date; the main-loop change of session 8
    // (docs/anchors.md: about 22% fewer instructions per MMA) made the compiled kernels the
    // model sees faster than the measured ones, so the absolute offset is bounded loosely
    // until a GPU re-measures them, and the spread about it (what orders candidates) keeps
    // the fit's bound.
    assert!(
        spread <= 0.10,
        "spread of log(predicted / measured) {spread:.3} over the fitted points > 0.10"
    );
    assert!(
        mean.abs() <= 0.25,
        "mean log(predicted / measured) {mean:.3}: the model's level drifted by over 25%"
    );
}

/// Causal does about half of full's work, and the model says so (diagonal tiles, charged
/// with the partial-tile path, and the tail of the last wave make it a little more than
/// half). A document mask (thirds of 4096 keys, 128 x 128 lists) visits 37.5% of full's
/// tiles, each at least as costly as an interior full tile: the model predicts between that
/// fraction and full (its partial tiles cost the partial-tile path of its SASS).
#[test]
fn causal_predicts_about_half_of_full() {
    let tiles = [
        TileConfig::new(64, 64, 4, 2),
        TileConfig::new(128, 128, 8, 2),
    ];
    let full = predictions("flash_fwd_full_d128_bf16", &tiles);
    let causal = predictions("flash_fwd_causal_d128_bf16", &tiles);
    let doc = predictions("flash_fwd_document_d128_bf16", &tiles);
    for i in 0..tiles.len() {
        let r = causal[i] / full[i];
        assert!(
            (0.5..0.65).contains(&r),
            "{}: causal / full = {r:.3}",
            tiles[i].suffix()
        );
        let r = doc[i] / full[i];
        assert!(
            (0.375..0.9).contains(&r),
            "{}: document / full = {r:.3}",
            tiles[i].suffix()
        );
    }
}

/// `--arch sm_90a`: the model ranks the Hopper warpgroup-MMA candidates together with the
/// mma.sync ones. Measured on the H200 (docs/gpu-results/2026-12-04-wgmma.csv, full and causal
/// d128 bf16, B=4, H=16, S=4096): the model's pick is within 5% of the measured best, and its
/// ranking correlates with the measurement. `MainLoopConstants::wgmma_cycles` was fitted to one of
/// these points (in sample).
#[test]
fn the_model_ranks_wgmma_and_mma_sync_candidates_together() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/gpu-results/2026-12-04-wgmma.csv"
    );
    let text = std::fs::read_to_string(path).expect("the measured CSV");
    let rows: Vec<(String, TileConfig, f64)> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("kernel,") && !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (
                f[0].to_owned(),
                tile_of(f[1]),
                f[2].parse().expect("TFLOP/s"),
            )
        })
        .collect();
    for kernel in ["flash_fwd_full_d128_bf16", "flash_fwd_causal_d128_bf16"] {
        let mine: Vec<&(String, TileConfig, f64)> = rows.iter().filter(|r| r.0 == kernel).collect();
        assert!(mine.len() >= 6, "{kernel}: {} points", mine.len());
        assert!(mine.iter().any(|r| !r.1.wgmma) && mine.iter().any(|r| r.1.warp_specialized()));
        let tiles: Vec<TileConfig> = mine.iter().map(|r| r.1).collect();
        let pred = predictions_at(kernel, &tiles, 4);
        // time = FLOPs / rate, FLOPs = 4 B H S^2 d (halved for causal)
        let flops = 4.0 * 4.0 * 16.0 * 4096f64.powi(2) * 128.0
            / if kernel.contains("causal") { 2.0 } else { 1.0 };
        let meas: Vec<f64> = mine.iter().map(|r| flops / (r.2 * 1e6)).collect();
        let rho = spearman(&pred, &meas);
        let pick = (0..pred.len())
            .min_by(|&a, &b| pred[a].total_cmp(&pred[b]))
            .expect("candidates");
        let best = (0..meas.len())
            .min_by(|&a, &b| meas[a].total_cmp(&meas[b]))
            .expect("points");
        eprintln!(
            "{kernel}: spearman {rho:.2}, pick {}, measured best {}",
            tiles[pick].suffix(),
            tiles[best].suffix()
        );
        for ((t, p), m) in tiles.iter().zip(&pred).zip(&meas) {
            eprintln!(
                "  {:16} predicted {p:8.1} us  measured {m:8.1} us  ratio {:.2}",
                t.suffix(),
                p / m
            );
        }
        // (the two producer tiles measured within 1% of each other: run-to-run variation)
        let loss = meas[pick] / meas[best] - 1.0;
        assert!(
            loss <= 0.05,
            "{kernel}: the model picks {} ({:.1}% slower than the measured best {})",
            tiles[pick].suffix(),
            100.0 * loss,
            tiles[best].suffix()
        );
        assert!(rho >= 0.6, "{kernel}: rank correlation {rho:.2} < 0.6");
    }
}
