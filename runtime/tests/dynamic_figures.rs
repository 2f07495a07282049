//! Visited work vs dense from the simulator counters (the figures of
//! `docs/families/*.md`). By default a small configuration (a few seconds) checks that
//! every family visits fewer keys than dense attention; with `ATTNFORGE_DYNAMIC_FIGURES=1`
//! the documented 16k-token configuration runs and a Markdown table is printed, with the
//! wall time of each row:
//! `ATTNFORGE_DYNAMIC_FIGURES=1 cargo test -p attnforge-runtime --test dynamic_figures -- --nocapture`
//!
//! Knobs (for estimates and partial reruns):
//! - `ATTNFORGE_DYNAMIC_FIGURES_S=<n>`: the long sequence length (default 16384);
//! - `ATTNFORGE_DYNAMIC_FIGURES_ONLY=topk,landmark_retrieval,...`: run only these rows
//!   (`topk`, `landmark_retrieval`, `landmark_train`, `cca`, `hax`);
//! - `ATTNFORGE_DYNAMIC_FIGURES_TRAIN_ROWS=<n>`: landmark training over the last `n` query
//!   rows (default [`TRAIN_ROWS`]; `16384` for every row).
//!
//! Every run is one simulator pass (forward schedule, every core as a worker) of the whole
//! pipeline; `exec_dynamic::run` also evaluates the naive reference once for its input
//! checks, which is part of the wall time printed.

mod dynamic_common;

use std::time::Instant;

use attnforge_reference::{Shape4, Sharing, SplitMix64, Tensor4};
use attnforge_runtime::codegen::dynamic::{DynamicSpec, LandmarkMode};
use attnforge_runtime::codegen::spec::{DType, HeadDim};
use attnforge_runtime::exec::Backend;
use attnforge_runtime::exec_dynamic::{run, DynInputs, DynRun, HaxExtra};
use dynamic_common::{fracs, ints};

type H = half::f16;

/// Landmark training covers the last 64 query rows of the context: it
/// visits every key, so every row of 16k tokens is 134 M keys. The simulator gathers about
/// 27 000 (CCA at S = 16384: 23.7 M keys in 888 s) to 48 000 (training at S = 4096: 8.4 M
/// keys in 174 s) keys per second on the shared 2-core machine: 47 to 84 minutes for the
/// full run. Set `ATTNFORGE_DYNAMIC_FIGURES_TRAIN_ROWS=16384` to run it anyway.
const TRAIN_ROWS: usize = 64;

fn causal_dense(sq: usize, sk: usize) -> u64 {
    (0..sq).map(|i| (i + sk - sq + 1) as u64).sum()
}

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

struct Row {
    name: String,
    problem: String,
    keys: u64,
    select: u64,
    dense: u64,
    secs: f64,
}

fn timed(f: impl FnOnce() -> DynRun) -> (DynRun, f64) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed().as_secs_f64())
}

#[test]
fn visited_work_vs_dense() {
    let long = std::env::var("ATTNFORGE_DYNAMIC_FIGURES").is_ok_and(|v| v == "1");
    let only: Option<Vec<String>> = std::env::var("ATTNFORGE_DYNAMIC_FIGURES_ONLY")
        .ok()
        .map(|v| v.split(',').map(|s| s.trim().to_string()).collect());
    let want = |n: &str| only.as_ref().is_none_or(|o| o.iter().any(|x| x == n));
    let s_long = env_usize("ATTNFORGE_DYNAMIC_FIGURES_S").unwrap_or(16384);
    // (top-k / landmark length, CCA length, CCA window, HAX length)
    let (sk, s_cca, w_cca, s_hax) = if long {
        (s_long, s_long, 1024.min(s_long / 16), s_long)
    } else {
        (1024, 512, 32, 512)
    };
    let d = 64;
    let (f16, d64) = (DType::F16, HeadDim::D64);
    let sim = Backend::sim();
    let total = Instant::now();
    let mut rows: Vec<Row> = Vec::new();
    let mut push = |spec: &DynamicSpec, problem: String, r: &DynRun, dense: u64, secs: f64| {
        let row = Row {
            name: spec.canonical_name(),
            problem,
            keys: r.counters.keys_gathered,
            select: r.counters.select_work,
            dense,
            secs,
        };
        eprintln!(
            "[dynamic_figures] {} ({}): {} keys, {} select, {:.1} s",
            row.name, row.problem, row.keys, row.select, row.secs
        );
        rows.push(row);
    };
    // Top-k decode: 1 query over sk keys.
    if want("topk") {
        let q = ints::<H>(Shape4::new(1, 1, 1, d), 1, 1);
        let k = ints::<H>(Shape4::new(1, 1, sk, d), 2, 1);
        let v = fracs::<H>(Shape4::new(1, 1, sk, d), 3);
        let spec = DynamicSpec::Topk {
            dtype: f16,
            head_dim: d64,
            sink: 4,
            recent: 64,
            k: 64,
            split: false,
        };
        let (r, secs) = timed(|| run(&spec, &DynInputs::new(q, k, v), &sim).unwrap());
        push(
            &spec,
            format!("Sq=1, Sk={sk}, sink 4, recent 64, k 64"),
            &r,
            sk as u64,
            secs,
        );
    }
    // Landmark: retrieval over every row of an sk-token context; training over the last
    // TRAIN_ROWS rows.
    let k = ints::<H>(Shape4::new(1, 1, sk, d), 5, 1);
    let v = fracs::<H>(Shape4::new(1, 1, sk, d), 6);
    let q_all = ints::<H>(Shape4::new(1, 1, sk, d), 4, 1);
    for (tag, mode) in [
        ("landmark_retrieval", LandmarkMode::Retrieval { top_k: 4 }),
        ("landmark_train", LandmarkMode::Train),
    ] {
        if !want(tag) {
            continue;
        }
        let sq = match mode {
            LandmarkMode::Train => env_usize("ATTNFORGE_DYNAMIC_FIGURES_TRAIN_ROWS")
                .unwrap_or(TRAIN_ROWS)
                .min(sk),
            LandmarkMode::Retrieval { .. } => sk,
        };
        let q = if sq == sk {
            q_all.clone()
        } else {
            Tensor4::from_fn(Shape4::new(1, 1, sq, d), |b, h, i, c| {
                H::from_f64(q_all.get(b, h, i + sk - sq, c))
            })
        };
        let spec = DynamicSpec::Landmark {
            dtype: f16,
            head_dim: d64,
            mem_freq: 63,
            mode,
        };
        let (r, secs) = timed(|| {
            run(
                &spec,
                &DynInputs::new(q.clone(), k.clone(), v.clone()),
                &sim,
            )
            .unwrap()
        });
        let problem = if sq == sk {
            format!("S={sk} (every row), mem_freq 63")
        } else {
            format!("Sq={sq} (last rows), Sk={sk}, mem_freq 63")
        };
        let problem = match mode {
            LandmarkMode::Retrieval { top_k } => format!("{problem}, top_k {top_k}"),
            LandmarkMode::Train => problem,
        };
        push(&spec, problem, &r, causal_dense(sq, sk), secs);
    }
    // CCA: every row of an s_cca-token sequence, g = 16, w = 1024 (scaled down for short
    // sequences).
    if want("cca") {
        let s = s_cca;
        let spec = DynamicSpec::Cca {
            dtype: f16,
            head_dim: d64,
            group: 16,
            window: w_cca,
        };
        let x = DynInputs::new(
            fracs::<H>(Shape4::new(1, 1, s, d), 7),
            fracs(Shape4::new(1, 1, s, d), 8),
            fracs(Shape4::new(1, 1, s, d), 9),
        );
        let (r, secs) = timed(|| run(&spec, &x, &sim).unwrap());
        push(
            &spec,
            format!("S={s}, g 16, w {w_cca}"),
            &r,
            causal_dense(s, s),
            secs,
        );
    }
    // HAX: every row of an s_hax-token sequence, defaults 32 + 32, 8 bits.
    if want("hax") {
        let s = s_hax;
        let mut g = SplitMix64(10);
        let hp = Tensor4::from_fn(Shape4::new(1, 1, d, 8), |_, _, _, _| {
            (g.below(2001) as f32 - 1000.0) / 1000.0
        });
        let mut x = DynInputs::new(
            fracs::<H>(Shape4::new(1, 1, s, d), 11),
            fracs(Shape4::new(1, 1, s, d), 12),
            fracs(Shape4::new(1, 1, s, d), 13),
        );
        x.hax = Some(HaxExtra {
            hyperplanes: hp,
            ks: fracs(Shape4::new(1, 1, s, 1), 14),
            hyperplane_sharing: Sharing::Shared,
            ks_sharing: Sharing::Shared,
        });
        let spec = DynamicSpec::Hax {
            dtype: f16,
            head_dim: d64,
            k_lsh: 32,
            k_ks: 32,
            hash_bits: 8,
        };
        let (r, secs) = timed(|| run(&spec, &x, &sim).unwrap());
        push(
            &spec,
            format!("S={s}, k_lsh 32, k_ks 32, 8 bits"),
            &r,
            causal_dense(s, s),
            secs,
        );
    }
    println!("| pipeline | problem (B=1, H=1, D=64, f16) | keys gathered | select work | dense causal keys | visited / dense | wall time |");
    println!("|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| `{}` | {} | {} | {} | {} | {:.4} | {:.0} s |",
            r.name,
            r.problem,
            r.keys,
            r.select,
            r.dense,
            r.keys as f64 / r.dense as f64,
            r.secs
        );
        if !r.name.starts_with("landmark_train") {
            assert!(
                r.keys < r.dense,
                "{}: {} keys gathered, dense {}",
                r.name,
                r.keys,
                r.dense
            );
        }
    }
    println!(
        "total wall time {:.0} s ({} simulator workers)",
        total.elapsed().as_secs_f64(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
}
