//! One generated catalog kernel through the whole pipeline: NVRTC + ptxas for every
//! candidate of the default space, static pruning, model ranking, simulator gate against
//! the f64 reference. Needs the toolchain (`cargo xtask setup`) and g++; fails without.

use attnforge_autotune::kernel::KernelTunable;
use attnforge_autotune::measure::BenchConfig;
use attnforge_autotune::tuner::{tune, Status, Tunable, TuneOptions};
use attnforge_autotune::{Arch, Basis};
use attnforge_codegen::catalog::find;

#[test]
fn causal_f16_d64_tunes_end_to_end_on_the_simulator() {
    let spec = find("flash_fwd_causal_d64_f16").expect("catalog entry");
    let k = KernelTunable::new(spec, 2, 16, 4096, 40);
    let dir = tempfile::tempdir().unwrap();
    let o = TuneOptions {
        arch: Arch::Sm90,
        gate_top: 2,
        gate_max_tries: 3,
        compile_top: 6,
        bench: BenchConfig::quick(),
        criterion_dir: dir.path().to_path_buf(),
    };
    let t = tune(&k, &o, &mut |_| {}).expect("toolchain and g++ available");
    assert_eq!(
        t.basis,
        Basis::Predicted,
        "no GPU timing of generated kernels here"
    );
    assert_eq!(t.candidates.len(), k.space(Arch::Sm90).len());
    let compiled = t
        .candidates
        .iter()
        .filter(|c| c.resources.is_some())
        .count();
    let not_compiled = t
        .candidates
        .iter()
        .filter(|c| c.status == Status::NotCompiled)
        .count();
    assert_eq!(compiled + not_compiled, t.candidates.len());
    assert_eq!(
        compiled,
        6.min(t.candidates.len()),
        "the compiled candidates build: {:#?}",
        t.candidates
            .iter()
            .filter(|c| c.resources.is_none())
            .map(|c| &c.status)
            .collect::<Vec<_>>()
    );
    for c in t.candidates.iter().filter(|c| c.resources.is_some()) {
        let r = c.resources.as_ref().unwrap();
        assert!(r.registers > 0 && r.threads == c.tile.threads() as u32);
        assert!(c.occupancy.unwrap().blocks_per_sm >= 1 || c.status.rejected());
    }
    let w = t.winner_result().expect("a winner");
    assert!(w.gate.as_ref().unwrap().max_err < 1e-2);
    let passed = t
        .candidates
        .iter()
        .filter(|c| matches!(c.status, Status::Winner | Status::Passed))
        .count();
    assert_eq!(passed, 2);
    // the winner has the best prediction among the gated candidates
    let best = t
        .candidates
        .iter()
        .filter(|c| c.gate.is_some())
        .map(|c| c.predicted.unwrap().time_us)
        .fold(f64::INFINITY, f64::min);
    assert_eq!(w.predicted.unwrap().time_us, best);
}
