//! The real [`Tunable`]: a generated kernel of `attnforge-codegen`, compiled with NVRTC +
//! ptxas (`attnforge_runtime::build_many_cached`, through the persistent kernel cache), gated
//! on the CPU simulator against the f64 reference (`attnforge_runtime::exec::check`),
//! predicted by [`crate::model`].

use std::path::Path;

use attnforge_codegen::emit::emit;
use attnforge_codegen::spec::{DType, KernelSpec};
use attnforge_codegen::tile::{default_search_space, wgmma_search_space, TileConfig};
use attnforge_runtime::exec::{check, prepare_cuda, Backend, ExecError};
use attnforge_runtime::sim::SimError;
use attnforge_runtime::{
    build_many_cached, BuildError, CompileError, CompileOptions, KernelSource,
};
use half::{bf16, f16};

use crate::measure::{bench_cuda, BenchConfig, Estimate};
use crate::model::{
    estimate_counts, predict, predict_main_loop, MainLoopConstants, MainLoopInput, ModelInput,
    Prediction,
};
use crate::occupancy::{ArchLimits, Occupancy};
use crate::sass_counts::loop_counts;
use crate::tuner::{EnvironmentError, Gate, GateError, Resources, Status, Tunable};
use crate::workload::{default_params, inputs, tile_profile, Shape};
use crate::Arch;

/// A generated kernel to tune at `shape`, gated at `gate_shape` on the simulator.
#[derive(Clone, Debug)]
pub struct KernelTunable {
    /// The spec.
    pub spec: KernelSpec,
    /// Tuning shape (model and GPU timing).
    pub shape: Shape,
    /// Small shape of the simulator gate.
    pub gate_shape: Shape,
    /// Whether the sm_90 search space adds the Hopper warpgroup-MMA tiles (`--arch sm_90a`).
    pub wgmma: bool,
}

impl KernelTunable {
    /// Tune `spec` at `B x H x seq`; gate at `1 x 2 x gate_seq` (GQA: 4 query heads, 1 kv).
    pub fn new(spec: KernelSpec, batch: usize, heads: usize, seq: usize, gate_seq: usize) -> Self {
        let shape = Shape::for_spec(&spec, batch, heads, seq);
        let gate_shape = Shape::for_spec(&spec, 1, if spec.gqa { 4 } else { 2 }, gate_seq);
        KernelTunable {
            spec,
            shape,
            gate_shape,
            wgmma: false,
        }
    }

    /// With `wgmma`, the sm_90 search space adds the warpgroup-MMA tiles
    /// ([`wgmma_search_space`]).
    pub fn with_wgmma(mut self, wgmma: bool) -> Self {
        self.wgmma = wgmma;
        self
    }
}

/// Whether a compile error is the toolchain's fault (missing, unloadable, an NVRTC call other
/// than the compile failing) rather than the candidate's source.
pub(crate) fn compile_environment_error(e: &CompileError) -> bool {
    matches!(
        e,
        CompileError::Toolchain(_)
            | CompileError::LoadLibrary { .. }
            | CompileError::Nvrtc { .. }
            | CompileError::Panicked { .. }
    )
}

/// Whether a gate error is the machine's fault: no usable C++ compiler, a file-system error
/// in the simulator's build cache, or a library the loader refuses.
pub(crate) fn gate_environment_error(e: &ExecError) -> bool {
    matches!(
        e,
        ExecError::Sim(SimError::Toolchain { .. } | SimError::Io { .. } | SimError::Load { .. })
    )
}

pub(crate) fn elem_bytes(d: DType) -> usize {
    match d {
        DType::F32 => 4,
        DType::F16 | DType::Bf16 => 2,
    }
}

impl Tunable for KernelTunable {
    fn variant(&self) -> String {
        self.spec.canonical_name()
    }

    fn space(&self, arch: Arch) -> Vec<TileConfig> {
        let mut v = default_search_space(&self.spec, arch);
        if self.wgmma && arch == Arch::Sm90 {
            v.extend(wgmma_search_space(&self.spec));
        }
        v
    }

    fn valid(&self, tile: &TileConfig, arch: Arch) -> Result<(), String> {
        tile_valid(&self.spec, tile, arch)
    }

    fn fingerprint(&self, tile: &TileConfig, arch: Arch) -> String {
        emitted_source(&self.spec, tile, arch)
    }

    fn estimate(&self, tile: &TileConfig, _arch: Arch) -> Option<Resources> {
        Some(estimate_resources(&self.spec, tile))
    }

    fn build(
        &self,
        tiles: &[TileConfig],
        arch: Arch,
    ) -> Result<Vec<Result<Resources, String>>, EnvironmentError> {
        build_spec(&self.spec, tiles, arch)
    }

    fn predict(
        &self,
        tile: &TileConfig,
        res: &Resources,
        occ: &Occupancy,
        arch: Arch,
    ) -> Prediction {
        let d = self.spec.head_dim.get();
        if self.spec.dtype != DType::F32 {
            let s = &self.shape;
            let tiles = tile_profile(
                &self.spec,
                tile.block_m,
                tile.block_n,
                s,
                &default_params(&self.spec, s),
            );
            let profile: Vec<u32> = tiles.iter().map(|t| t.visited).collect();
            let partial: Vec<u32> = tiles.iter().map(|t| t.partial).collect();
            let warps = tile.compute_warps();
            let m = MainLoopInput {
                warps,
                wgmma: tile.wgmma,
                counts: res
                    .main_loop
                    .unwrap_or_else(|| estimate_counts(tile.block_m, tile.block_n, warps, d)),
                profile: &profile,
                partial: &partial,
                heads_times_batch: s.batch * s.heads_q,
                elem_bytes: elem_bytes(self.spec.dtype),
                block_n: tile.block_n,
                head_dim: d,
            };
            return predict_main_loop(&ArchLimits::of(arch), &MainLoopConstants::of(arch), occ, &m);
        }
        let m = ModelInput {
            block_m: tile.block_m,
            block_n: tile.block_n,
            warps: tile.warps,
            head_dim: d,
            elem_bytes: elem_bytes(self.spec.dtype),
        };
        predict(&ArchLimits::of(arch), occ, &m, &self.shape)
    }

    fn gate(&self, tile: &TileConfig) -> Result<Gate, GateError> {
        let s = &self.gate_shape;
        let p = default_params(&self.spec, s);
        let b = Backend::sim();
        let r = match self.spec.dtype {
            DType::F32 => check(&self.spec, tile, &inputs::<f32>(&self.spec, s, 7), &p, &b),
            DType::F16 => check(&self.spec, tile, &inputs::<f16>(&self.spec, s, 7), &p, &b),
            DType::Bf16 => check(&self.spec, tile, &inputs::<bf16>(&self.spec, s, 7), &p, &b),
        };
        gate_verdict(r.map(|rep| rep.close.out.max_err), s.to_string())
    }

    fn can_measure(&self) -> bool {
        attnforge_runtime::gpu_available()
    }

    fn measure(
        &self,
        tile: &TileConfig,
        cfg: &BenchConfig,
        dir: &Path,
    ) -> Result<Estimate, String> {
        let s = &self.shape;
        let p = default_params(&self.spec, s);
        let prepared = match self.spec.dtype {
            DType::F32 => prepare_cuda(&self.spec, tile, &inputs::<f32>(&self.spec, s, 7), &p, 0),
            DType::F16 => prepare_cuda(&self.spec, tile, &inputs::<f16>(&self.spec, s, 7), &p, 0),
            DType::Bf16 => prepare_cuda(&self.spec, tile, &inputs::<bf16>(&self.spec, s, 7), &p, 0),
        }
        .map_err(|e| e.to_string())?;
        bench_cuda(cfg, dir, &tile.suffix(), prepared.gpu(), || {
            prepared.launch().map_err(|e| e.to_string())
        })
        .map_err(|e| e.to_string())
    }

    fn device(&self) -> String {
        device_label()
    }

    fn shape(&self) -> (String, String) {
        (self.shape.to_string(), self.shape.bucket())
    }
}

/// Resources of `tile` estimated without compiling (registers and shared memory from the
/// tile shape): the pre-ranking that decides which candidates are compiled.
pub(crate) fn estimate_resources(spec: &KernelSpec, tile: &TileConfig) -> Resources {
    Resources {
        registers: tile.estimated_registers(spec) as u32,
        smem_bytes: tile.smem_bytes(spec) as u64,
        stack_frame_bytes: 0,
        spill_bytes: 0,
        threads: tile.threads() as u32,
        main_loop: None,
    }
}

/// Compile `spec` at every tile for `arch` (NVRTC + ptxas through the kernel cache) and read
/// each candidate's resources and main-loop SASS counts (input order).
pub(crate) fn build_spec(
    spec: &KernelSpec,
    tiles: &[TileConfig],
    arch: Arch,
) -> Result<Vec<Result<Resources, String>>, EnvironmentError> {
    let emitted: Vec<Result<_, String>> = tiles
        .iter()
        .map(|t| emit(spec, t, arch).map_err(|e| format!("emit: {e:?}")))
        .collect();
    let ok: Vec<usize> = (0..tiles.len()).filter(|&i| emitted[i].is_ok()).collect();
    let sources: Vec<KernelSource<'_>> = ok
        .iter()
        .filter_map(|&i| emitted[i].as_ref().ok().map(|k| (k, &tiles[i])))
        .map(|(k, t)| KernelSource {
            source: &k.source,
            name: &k.name,
            options: CompileOptions::for_tile(arch, t),
        })
        .collect();
    let mut out: Vec<Result<Resources, String>> = emitted
        .iter()
        .map(|e| match e {
            Err(m) => Err(m.clone()),
            Ok(_) => Err("not built".to_owned()),
        })
        .collect();
    let env = |e: &dyn std::fmt::Display| EnvironmentError {
        stage: "compile (NVRTC)",
        message: e.to_string(),
    };
    let results = build_many_cached(&sources).map_err(|e| env(&e))?;
    for (&i, r) in ok.iter().zip(results) {
        out[i] = match r {
            Err(BuildError::Compile(e)) if compile_environment_error(&e) => return Err(env(&e)),
            Err(e) => Err(e.to_string()),
            Ok(b) => Ok(Resources {
                registers: b.resources.registers,
                smem_bytes: b.resources.shared_bytes + tiles[i].smem_bytes(spec) as u64,
                stack_frame_bytes: b.resources.stack_frame_bytes,
                spill_bytes: b.resources.spill_store_bytes + b.resources.spill_load_bytes,
                threads: tiles[i].threads() as u32,
                main_loop: match (spec.dtype, b.compiled.cubin.as_deref()) {
                    (DType::F32, _) | (_, None) => None,
                    (_, Some(cubin)) => loop_counts(spec, &tiles[i], cubin).ok(),
                },
            }),
        };
    }
    Ok(out)
}

/// `TileConfig::valid` of `spec` as the pipeline's one-line reason.
pub(crate) fn tile_valid(spec: &KernelSpec, tile: &TileConfig, arch: Arch) -> Result<(), String> {
    tile.valid(spec, arch).map_err(|errs| {
        errs.iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("; ")
    })
}

/// The emitted source of `spec` at `tile` (the candidate's fingerprint), or its emit error.
pub(crate) fn emitted_source(spec: &KernelSpec, tile: &TileConfig, arch: Arch) -> String {
    match emit(spec, tile, arch) {
        Ok(k) => k.source,
        Err(e) => format!("emit error: {e:?}"),
    }
}

/// `cuda:sm_XY` of GPU 0, or `sim+model` without one (reports and the cache key).
pub(crate) fn device_label() -> String {
    match attnforge_runtime::Gpu::new(0) {
        Ok(g) => {
            let (major, minor) = g.compute_capability();
            format!("cuda:sm_{major}{minor}")
        }
        Err(_) => "sim+model".to_owned(),
    }
}

/// The gate's verdict on a simulator check that returned its largest error: a mismatch is a
/// wrong result, a machine failure stops the kernel, anything else rejects the candidate.
pub(crate) fn gate_verdict(r: Result<f64, ExecError>, shape: String) -> Result<Gate, GateError> {
    match r {
        Ok(max_err) => Ok(Gate {
            backend: "sim".to_owned(),
            shape,
            max_err,
        }),
        Err(e @ ExecError::Mismatch { .. }) => Err(Status::WrongResult(e.to_string()).into()),
        Err(e) if gate_environment_error(&e) => Err(GateError::Environment(EnvironmentError {
            stage: "correctness gate (simulator)",
            message: e.to_string(),
        })),
        Err(e) => Err(Status::GateFailed(e.to_string()).into()),
    }
}

/// A GPU timing without a confidence interval: the mean of `runs` synchronized runs.
pub(crate) fn mean_estimate(seconds: f64, runs: usize, what: &str) -> Estimate {
    let ns = seconds * 1e9;
    Estimate {
        mean_ns: ns,
        mean_lo_ns: ns,
        mean_hi_ns: ns,
        median_ns: ns,
        std_dev_ns: 0.0,
        source: format!("wall time, mean of {runs} synchronized {what} (no confidence interval)"),
    }
}
