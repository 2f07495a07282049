//! The backward tuner (`attnforge tune --backward`): the transposed tile schedule the model
//! charges the dK/dV kernel with, checked against a brute-force walk of every (query, key)
//! pair, and one catalog kernel through the whole pipeline (NVRTC + ptxas of the three
//! kernels per candidate, SASS counts, model, simulator gate of the gradients). Needs the
//! toolchain and g++, as real_kernel.rs.

use attnforge_autotune::backward::{
    backward_space, backward_space_with, backward_tile, candidate, BackwardTunable,
};
use attnforge_autotune::measure::BenchConfig;
use attnforge_autotune::tuner::{tune, Status, Tunable, TuneOptions};
use attnforge_autotune::workload::{default_params, key_tile_profile, Shape};
use attnforge_autotune::{Arch, Basis};
use attnforge_codegen::backward::{mainloop, BackwardTile};
use attnforge_codegen::catalog::find;
use attnforge_codegen::check::MaskParams;
use attnforge_codegen::tile::{Mainloop, TileConfig};

/// Query tiles with an allowed pair, per key tile; row `i` sits at position `i + sk - sq`
/// (negative when `Sq > Sk`).
fn brute_force(
    sq: usize,
    sk: usize,
    (bm, bn): (usize, usize),
    allowed: impl Fn(i64, i64) -> bool,
) -> Vec<u32> {
    (0..sk)
        .step_by(bn)
        .map(|k0| {
            (0..sq)
                .step_by(bm)
                .filter(|&m0| {
                    (m0..(m0 + bm).min(sq)).any(|i| {
                        (k0..(k0 + bn).min(sk))
                            .any(|j| allowed((i + sk) as i64 - sq as i64, j as i64))
                    })
                })
                .count() as u32
        })
        .collect()
}

#[test]
fn the_transposed_schedule_matches_a_walk_of_the_pairs() {
    let causal = find("flash_fwd_causal_d128_bf16").unwrap();
    let local = find("flash_fwd_local_d128_bf16").unwrap();
    for &(sq, sk, bm, bn) in &[
        (100, 100, 32, 32),
        (45, 285, 64, 32),
        (300, 130, 32, 64),
        (1, 97, 64, 64),
        (257, 257, 128, 128),
    ] {
        let s = Shape {
            batch: 1,
            heads_q: 2,
            heads_kv: 2,
            seq_q: sq,
            seq_k: sk,
        };
        let p = default_params(&causal, &s);
        assert_eq!(
            key_tile_profile(&causal, bm, bn, &s, &p),
            brute_force(sq, sk, (bm, bn), |q, j| j <= q),
            "causal {sq} {sk} {bm} {bn}"
        );
        if sq > sk {
            continue; // a local window has no rows without keys to define there
        }
        let mut p = default_params(&local, &s);
        p.mask = Some(
            MaskParams::defaults_for(&local.mask, sk)
                .with("window_left", 40.0)
                .with("window_right", 7.0),
        );
        assert_eq!(
            key_tile_profile(&local, bm, bn, &s, &p),
            brute_force(sq, sk, (bm, bn), |q, j| j + 40 >= q && j <= q + 7),
            "local {sq} {sk} {bm} {bn}"
        );
    }
}

#[test]
fn candidates_are_backward_tiles_with_one_stage() {
    assert!(
        backward_space().iter().all(|b| !b.atomic_dq),
        "never the default"
    );
    for b in backward_space_with(true) {
        let t = candidate(&b);
        assert_eq!((t.stages, t.wgmma), (1, false));
        assert_eq!(backward_tile(&t), b);
    }
    let spec = find("flash_fwd_causal_d64_f16").unwrap();
    let k = BackwardTunable::new(spec.clone(), 1, 2, 64, 40);
    let tc = backward_space()
        .into_iter()
        .filter(|b| mainloop(&spec, b) == Mainloop::TensorCore)
        .count();
    assert!(tc >= 2, "the space has tensor-core tiles");
    let mut staged = candidate(&BackwardTile::default());
    staged.stages = 2;
    assert!(k.valid(&staged, Arch::Sm80).is_err());
}

#[test]
fn causal_backward_tunes_end_to_end_on_the_simulator() {
    let mut spec = find("flash_fwd_causal_d64_f16").expect("catalog entry");
    spec.gqa = true;
    let k = BackwardTunable::new(spec.clone(), 2, 16, 2048, 45).with_atomic_dq(true);
    let dir = tempfile::tempdir().unwrap();
    let o = TuneOptions {
        arch: Arch::Sm80,
        gate_top: 1,
        gate_max_tries: 2,
        compile_top: 0,
        bench: BenchConfig::quick(),
        criterion_dir: dir.path().to_path_buf(),
    };
    let t = tune(&k, &o, &mut |_| {}).expect("toolchain and g++ available");
    assert_eq!(t.basis, Basis::Predicted);
    assert!(t.variant.ends_with("_bwd_atomic_dq") && t.bucket.starts_with("bwd_"));
    let w = t.winner_result().expect("a winner");
    assert!(w.gate.as_ref().unwrap().max_err.is_finite());
    // the tensor-core tiles carry their dK/dV main loop's SASS counts and are predicted
    // faster than every FMA tile (f16 d64: 4 products of m16n8k16 against f32 lanes)
    let predicted = |want: Mainloop| {
        t.candidates
            .iter()
            .filter(|c| mainloop(&spec, &backward_tile(&c.tile)) == want)
            .filter_map(|c| Some((c.predicted?.time_us, c)))
            .collect::<Vec<_>>()
    };
    let tc = predicted(Mainloop::TensorCore);
    let fma = predicted(Mainloop::Fma);
    assert!(!tc.is_empty() && !fma.is_empty());
    for (_, c) in &tc {
        let counts = c
            .resources
            .as_ref()
            .unwrap()
            .main_loop
            .expect("SASS counts");
        assert!(
            counts.mma > 0.0 && counts.instructions > counts.mma,
            "{}",
            c.name
        );
    }
    let slowest_tc = tc.iter().map(|p| p.0).fold(0.0, f64::max);
    let fastest_fma = fma.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
    assert!(slowest_tc < fastest_fma, "{slowest_tc} vs {fastest_fma}");
    assert_eq!(
        mainloop(&spec, &backward_tile(&w.tile)),
        Mainloop::TensorCore
    );
    assert!(t.candidates.iter().all(|c| c.status != Status::NotCompiled));
    // the atomic-dQ twins: dK/dV's loop has the fifth product (5/4 of the deterministic
    // twin's MMAs per iteration, from their own SASS) and no second S / dP pass, so the model
    // predicts them faster than their deterministic twins (a model property, no GPU)
    let mut twins = 0;
    for c in t.candidates.iter().filter(|c| c.tile.atomic_dq) {
        let det = t
            .candidates
            .iter()
            .find(|d| {
                d.tile
                    == TileConfig {
                        atomic_dq: false,
                        ..c.tile
                    }
            })
            .expect("a deterministic twin");
        let (Some(a), Some(b), Some(_), Some(_)) =
            (&c.resources, &det.resources, c.predicted, det.predicted)
        else {
            eprintln!("{} not predicted: {:?} {:?}", c.name, c.status, c.resources);
            continue;
        };
        let (a, b) = (a.main_loop.expect("SASS"), b.main_loop.expect("SASS"));
        assert!(
            (a.mma / b.mma - 1.25).abs() < 1e-9,
            "{}: {} vs {}",
            c.name,
            a.mma,
            b.mma
        );
        let (pa, pb) = (c.predicted.unwrap().time_us, det.predicted.unwrap().time_us);
        assert!(pa < pb, "{}: {pa} vs {pb}", c.name);
        eprintln!(
            "{} predicted {pa:.0} us ({:.2} instr/MMA of dK/dV), {} {pb:.0} us ({:.2})",
            c.name,
            a.instructions / a.mma,
            det.name,
            b.instructions / b.mma
        );
        twins += 1;
    }
    assert!(twins >= 2, "atomic candidates compiled");
}
