//! The tuning pipeline for one kernel:
//! `space.filter(valid) -> compile (ptxas report) -> static prune -> predict -> correctness
//! gate (simulator, top of the static ranking) -> measure (criterion, GPU) -> winner`.
//!
//! Candidates come from a [`Tunable`], so tests inject deliberately broken kernels (compile
//! failure, wrong result, slow) next to the real generated ones ([`crate::kernel::KernelTunable`]).

use std::path::Path;
use std::time::Instant;

use attnforge_codegen::tile::TileConfig;
use serde::{Deserialize, Serialize};

use crate::measure::{BenchConfig, Estimate};
use crate::model::Prediction;
use crate::occupancy::{occupancy, ArchLimits, Occupancy};
use crate::Arch;

/// Resources of a compiled candidate (from the ptxas report).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    /// Registers per thread.
    pub registers: u32,
    /// Static + dynamic shared memory per block, bytes.
    pub smem_bytes: u64,
    /// Stack frame bytes.
    pub stack_frame_bytes: u64,
    /// Spill store + load bytes.
    pub spill_bytes: u64,
    /// Threads per block.
    pub threads: u32,
    /// The main loop's SASS counts (tensor-core kernels compiled to a CUBIN with a
    /// disassembler at hand); `None`: the model estimates them.
    #[serde(default)]
    pub main_loop: Option<crate::sass_counts::LoopCounts>,
}

/// Result of the correctness gate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Gate {
    /// Where it ran (e.g. `sim`).
    pub backend: String,
    /// Problem shape of the gate.
    pub shape: String,
    /// Largest error of `out` against the f64 reference.
    pub max_err: f64,
}

/// What happened to a candidate. Every rejection carries its reason.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", content = "reason", rename_all = "snake_case")]
pub enum Status {
    /// The chosen config.
    Winner,
    /// Passed every stage; ranked below the winner.
    Passed,
    /// Rejected by `TileConfig::valid`.
    Invalid(String),
    /// NVRTC or ptxas failed.
    CompileFailed(String),
    /// Pruned statically (spills, stack frame, shared memory, zero occupancy).
    Pruned(String),
    /// Ran but disagreed with the reference (a wrong-but-fast candidate ends here).
    WrongResult(String),
    /// The gate could not run it (simulator or launch error).
    GateFailed(String),
    /// Measurement failed.
    MeasureFailed(String),
    /// Not gated: below the top of the static ranking (its prediction is kept).
    NotGated,
    /// Not compiled: below the compile cut of the pre-ranking on estimated resources.
    NotCompiled,
}

impl Status {
    /// Short label for tables.
    pub fn label(&self) -> &'static str {
        match self {
            Status::Winner => "winner",
            Status::Passed => "passed",
            Status::Invalid(_) => "invalid",
            Status::CompileFailed(_) => "compile failed",
            Status::Pruned(_) => "pruned",
            Status::WrongResult(_) => "wrong result",
            Status::GateFailed(_) => "gate failed",
            Status::MeasureFailed(_) => "measure failed",
            Status::NotGated => "not gated",
            Status::NotCompiled => "not compiled",
        }
    }
    /// The reason, when rejected.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Status::Invalid(r)
            | Status::CompileFailed(r)
            | Status::Pruned(r)
            | Status::WrongResult(r)
            | Status::GateFailed(r)
            | Status::MeasureFailed(r) => Some(r),
            _ => None,
        }
    }
    /// Whether the candidate was rejected.
    pub fn rejected(&self) -> bool {
        self.reason().is_some()
    }
}

/// A failure of the machine rather than of a candidate: the CUDA toolchain or the simulator's
/// C++ compiler missing, a file-system error. It says nothing about the kernel, so
/// [`tune`] abandons the kernel and the caller must not cache anything for it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{stage} could not run: {message}")]
pub struct EnvironmentError {
    /// Pipeline stage that hit it (`compile`, `gate`, `measure`).
    pub stage: &'static str,
    /// The underlying message (names the missing tool or path and the fix).
    pub message: String,
}

/// Why the correctness gate did not pass a candidate.
#[derive(Clone, Debug, PartialEq)]
pub enum GateError {
    /// The candidate is rejected ([`Status::WrongResult`] or [`Status::GateFailed`]).
    Rejected(Status),
    /// The gate could not run at all (see [`EnvironmentError`]).
    Environment(EnvironmentError),
}

impl From<Status> for GateError {
    fn from(s: Status) -> Self {
        GateError::Rejected(s)
    }
}

/// Everything known about one candidate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CandidateResult {
    /// `<variant>__<tile suffix>`.
    pub name: String,
    /// The tile config.
    pub tile: TileConfig,
    /// Outcome.
    #[serde(flatten)]
    pub status: Status,
    /// ptxas resources.
    pub resources: Option<Resources>,
    /// Occupancy on the tuned architecture.
    pub occupancy: Option<Occupancy>,
    /// Static-model prediction (never a measurement).
    pub predicted: Option<Prediction>,
    /// Correctness gate.
    pub gate: Option<Gate>,
    /// Criterion's estimates (only when measured).
    pub measured: Option<Estimate>,
}

/// How the winner was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Basis {
    /// Measured time (criterion on a GPU).
    Measured,
    /// The static model's prediction (no GPU): a prediction, not a measurement.
    Predicted,
}

/// The tuning of one kernel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KernelTuning {
    /// Canonical variant name.
    pub variant: String,
    /// Architecture tuned for.
    pub arch: Arch,
    /// Device (`sim+model` without a GPU, else the GPU's name).
    pub device: String,
    /// Tuning shape.
    pub shape: String,
    /// Shape bucket (cache key part).
    pub bucket: String,
    /// Hash of the emitted sources of the candidate set.
    pub codegen_hash: String,
    /// How the winner was chosen.
    pub basis: Basis,
    /// The winner's tile, if any candidate survived.
    pub winner: Option<TileConfig>,
    /// Every candidate with its outcome, in search-space order.
    pub candidates: Vec<CandidateResult>,
    /// Wall time of the tuning, seconds.
    pub tune_seconds: f64,
    /// Wall time per stage (`build`, `gate`, `measure`), seconds.
    #[serde(default)]
    pub stage_seconds: Vec<(String, f64)>,
}

impl KernelTuning {
    /// The winner's result.
    pub fn winner_result(&self) -> Option<&CandidateResult> {
        self.candidates.iter().find(|c| c.status == Status::Winner)
    }

    /// The rejections in one line: count per kind, then the first reason (shortened), e.g.
    /// `2 compile failed, 1 wrong result; first: NVRTC: ...`.
    pub fn rejections(&self) -> String {
        let mut counts: Vec<(&str, usize)> = Vec::new();
        for c in self.candidates.iter().filter(|c| c.status.rejected()) {
            match counts.iter_mut().find(|(l, _)| *l == c.status.label()) {
                Some((_, n)) => *n += 1,
                None => counts.push((c.status.label(), 1)),
            }
        }
        if counts.is_empty() {
            return "no candidate was rejected".to_owned();
        }
        let list: Vec<String> = counts.iter().map(|(l, n)| format!("{n} {l}")).collect();
        let first = self
            .candidates
            .iter()
            .find_map(|c| c.status.reason())
            .unwrap_or("");
        let line = first.lines().next().unwrap_or("");
        let short: String = line.chars().take(160).collect();
        let more = if short.len() < first.len() {
            " ..."
        } else {
            ""
        };
        format!("{}; first: {short}{more}", list.join(", "))
    }
}

/// A kernel to tune: its candidates and how to build, predict, check and time them.
pub trait Tunable: Sync {
    /// Canonical variant name.
    fn variant(&self) -> String;
    /// The candidate tiles (the search space).
    fn space(&self, arch: Arch) -> Vec<TileConfig>;
    /// `TileConfig::valid` (or the fake's equivalent): `Err(reason)` rejects.
    fn valid(&self, tile: &TileConfig, arch: Arch) -> Result<(), String>;
    /// Text identifying the generated code of `tile` (hashed into the cache key).
    fn fingerprint(&self, tile: &TileConfig, arch: Arch) -> String;
    /// Resources estimated without compiling (for the pre-ranking that decides which
    /// candidates are compiled); `None` compiles every candidate.
    fn estimate(&self, _tile: &TileConfig, _arch: Arch) -> Option<Resources> {
        None
    }
    /// Compile every tile for `arch` and report resources (input order): `Err(reason)` for a
    /// candidate that does not compile, the outer `Err` when the compiler cannot run at all.
    fn build(
        &self,
        tiles: &[TileConfig],
        arch: Arch,
    ) -> Result<Vec<Result<Resources, String>>, EnvironmentError>;
    /// Static-model prediction from the candidate's (compiled or estimated) resources.
    fn predict(
        &self,
        tile: &TileConfig,
        res: &Resources,
        occ: &Occupancy,
        arch: Arch,
    ) -> Prediction;
    /// Correctness gate: `Ok(gate)` when it matches the reference, [`GateError::Rejected`]
    /// with [`Status::WrongResult`] or [`Status::GateFailed`] when the candidate fails, and
    /// [`GateError::Environment`] when the gate cannot run (no C++ compiler, I/O error).
    fn gate(&self, tile: &TileConfig) -> Result<Gate, GateError>;
    /// Whether [`Tunable::measure`] can time candidates here (a GPU, or a fake).
    fn can_measure(&self) -> bool;
    /// Time one candidate with criterion; results under `dir`.
    fn measure(&self, tile: &TileConfig, cfg: &BenchConfig, dir: &Path)
        -> Result<Estimate, String>;
    /// Device label for reports and the cache key.
    fn device(&self) -> String;
    /// Tuning shape (display) and bucket.
    fn shape(&self) -> (String, String);
}

/// Knobs of the pipeline.
#[derive(Clone, Debug)]
pub struct TuneOptions {
    /// Architecture.
    pub arch: Arch,
    /// Candidates that must pass the gate (taken from the top of the static ranking).
    pub gate_top: usize,
    /// Most candidates the gate may try (rejections count).
    pub gate_max_tries: usize,
    /// Compile only this many candidates, the best of a pre-ranking by the model on
    /// estimated resources (0: compile all).
    pub compile_top: usize,
    /// Criterion configuration.
    pub bench: BenchConfig,
    /// Criterion output directory.
    pub criterion_dir: std::path::PathBuf,
}

/// SHA-256 over the fingerprints of the candidate set (hex).
pub fn codegen_hash(t: &dyn Tunable, arch: Arch) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    h.update(crate::MODEL_VERSION.as_bytes());
    for tile in t.space(arch) {
        h.update(tile.suffix().as_bytes());
        h.update(t.fingerprint(&tile, arch).as_bytes());
        h.update([0u8]);
    }
    hex(&h.finalize())
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Run the pipeline on one kernel. `on_step` is called after each stage with a message
/// (progress bars). An [`EnvironmentError`] (compiler or toolchain missing, I/O) stops the
/// kernel at once: no candidate is judged on a machine that cannot build it.
pub fn tune(
    t: &dyn Tunable,
    o: &TuneOptions,
    on_step: &mut dyn FnMut(&str),
) -> Result<KernelTuning, EnvironmentError> {
    let started = Instant::now();
    let arch = o.arch;
    let limits = ArchLimits::of(arch);
    let variant = t.variant();
    let mut cands: Vec<CandidateResult> = t
        .space(arch)
        .into_iter()
        .map(|tile| CandidateResult {
            name: format!("{variant}__{}", tile.suffix()),
            tile,
            status: Status::NotGated,
            resources: None,
            occupancy: None,
            predicted: None,
            gate: None,
            measured: None,
        })
        .collect();
    for c in &mut cands {
        if let Err(r) = t.valid(&c.tile, arch) {
            c.status = Status::Invalid(r);
        }
    }
    // pre-ranking on estimated resources decides what is compiled
    let mut idx: Vec<usize> = (0..cands.len())
        .filter(|&i| !cands[i].status.rejected())
        .collect();
    if o.compile_top > 0 && idx.len() > o.compile_top {
        let est: Vec<Option<f64>> = idx
            .iter()
            .map(|&i| {
                t.estimate(&cands[i].tile, arch).map(|r| {
                    let occ = occupancy(
                        &limits,
                        r.threads as usize,
                        r.registers as usize,
                        r.smem_bytes as usize,
                    );
                    t.predict(&cands[i].tile, &r, &occ, arch).time_us
                })
            })
            .collect();
        if est.iter().all(Option::is_some) {
            let mut order: Vec<(usize, f64)> = idx
                .iter()
                .zip(&est)
                .map(|(&i, e)| (i, e.unwrap_or(f64::INFINITY)))
                .collect();
            order.sort_by(|a, b| a.1.total_cmp(&b.1));
            for &(i, _) in &order[o.compile_top..] {
                cands[i].status = Status::NotCompiled;
            }
            idx = order[..o.compile_top].iter().map(|&(i, _)| i).collect();
            idx.sort_unstable();
        }
    }
    // compile + ptxas
    let tiles: Vec<TileConfig> = idx.iter().map(|&i| cands[i].tile).collect();
    on_step(&format!("{variant}: compiling {} candidates", tiles.len()));
    let mut stages = Vec::new();
    let mut stage_start = Instant::now();
    for (&i, r) in idx.iter().zip(t.build(&tiles, arch)?) {
        match r {
            Err(e) => cands[i].status = Status::CompileFailed(e),
            Ok(res) => {
                let occ = occupancy(
                    &limits,
                    res.threads as usize,
                    res.registers as usize,
                    res.smem_bytes as usize,
                );
                if res.spill_bytes > 0 || res.stack_frame_bytes > 0 {
                    cands[i].status = Status::Pruned(format!(
                        "ptxas: {} spill bytes, {} byte stack frame (a register array went to local memory)",
                        res.spill_bytes, res.stack_frame_bytes
                    ));
                } else if res.smem_bytes as usize > arch.max_dynamic_smem() {
                    cands[i].status = Status::Pruned(format!(
                        "{} bytes of shared memory, over the {} limit of {}",
                        res.smem_bytes,
                        arch.sm_name(),
                        arch.max_dynamic_smem()
                    ));
                } else if occ.blocks_per_sm == 0 {
                    cands[i].status = Status::Pruned(format!(
                        "zero occupancy on {} ({} registers x {} threads, {} bytes smem)",
                        arch.sm_name(),
                        res.registers,
                        res.threads,
                        res.smem_bytes
                    ));
                } else {
                    cands[i].predicted = Some(t.predict(&cands[i].tile, &res, &occ, arch));
                }
                cands[i].occupancy = Some(occ);
                cands[i].resources = Some(res);
            }
        }
    }
    stages.push(("build".to_owned(), stage_start.elapsed().as_secs_f64()));
    stage_start = Instant::now();
    // static ranking
    let mut ranked: Vec<usize> = (0..cands.len())
        .filter(|&i| {
            !cands[i].status.rejected()
                && cands[i].status != Status::NotCompiled
                && cands[i].predicted.is_some()
        })
        .collect();
    let pt = |i: usize| cands[i].predicted.map_or(f64::INFINITY, |p| p.time_us);
    ranked.sort_by(|&a, &b| pt(a).total_cmp(&pt(b)));
    // correctness gate on the top of the ranking (all of them when measuring)
    let want = if t.can_measure() {
        ranked.len()
    } else {
        o.gate_top.max(1)
    };
    let max_tries = if t.can_measure() {
        ranked.len()
    } else {
        o.gate_max_tries.max(want)
    };
    let (mut passed, mut tries) = (Vec::new(), 0usize);
    for &i in &ranked {
        if passed.len() >= want || tries >= max_tries {
            break;
        }
        tries += 1;
        on_step(&format!("{variant}: gating {}", cands[i].tile.suffix()));
        match t.gate(&cands[i].tile) {
            Ok(g) => {
                cands[i].gate = Some(g);
                cands[i].status = Status::Passed;
                passed.push(i);
            }
            Err(GateError::Rejected(s)) => cands[i].status = s,
            Err(GateError::Environment(e)) => return Err(e),
        }
    }
    stages.push(("gate".to_owned(), stage_start.elapsed().as_secs_f64()));
    stage_start = Instant::now();
    // measurement
    let basis = if t.can_measure() {
        Basis::Measured
    } else {
        Basis::Predicted
    };
    let winner = if basis == Basis::Measured {
        let dir = o.criterion_dir.join(&variant);
        let mut best: Option<(usize, f64)> = None;
        for &i in &passed {
            on_step(&format!("{variant}: measuring {}", cands[i].tile.suffix()));
            match t.measure(&cands[i].tile, &o.bench, &dir) {
                Ok(e) => {
                    if best.is_none_or(|(_, m)| e.mean_ns < m) {
                        best = Some((i, e.mean_ns));
                    }
                    cands[i].measured = Some(e);
                }
                Err(e) => cands[i].status = Status::MeasureFailed(e),
            }
        }
        best.map(|(i, _)| i)
    } else {
        passed.first().copied()
    };
    if let Some(w) = winner {
        cands[w].status = Status::Winner;
    }
    if basis == Basis::Measured {
        stages.push(("measure".to_owned(), stage_start.elapsed().as_secs_f64()));
    }
    let (shape, bucket) = t.shape();
    Ok(KernelTuning {
        variant,
        arch,
        device: t.device(),
        shape,
        bucket,
        codegen_hash: codegen_hash(t, arch),
        basis,
        winner: winner.map(|w| cands[w].tile),
        candidates: cands,
        tune_seconds: started.elapsed().as_secs_f64(),
        stage_seconds: stages,
    })
}
