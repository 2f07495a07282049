//! Tuning the backward kernels (variants.md section 12; docs/backward.md): the
//! [`BackwardTile`] of the dK/dV and dQ kernels, through the same pipeline as the forward
//! (compile, static pruning, model ranking, simulator gate, GPU timing when there is one).
//!
//! A candidate is a [`BackwardTile`] carried as the pipeline's [`TileConfig`] with one stage
//! (`m64n64w4s1` is the backward tile 64 x 64 with 4 warps; the backward kernels have no
//! pipeline stages). Its resources are the worst of its three kernels (registers, shared
//! memory, stack; spills summed). The model adds the two main kernels' makespans, each from
//! its own main-loop SASS counts (tensor-core kernels; FMA kernels: counts estimated from
//! the tile's multiply-adds) over the mask's tile schedule: dQ walks the forward schedule
//! ([`tile_profile`]) per query head, dK/dV the transposed one ([`key_tile_profile`]) per kv
//! head, over every query head of its GQA group; plus the Delta pre-pass's DRAM time. The
//! gate compares the gradients of the simulator's run with the f64 reference
//! (`exec_backward::check_backward`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use attnforge_codegen::backward::{emit_backward, mainloop, BackwardTile};
use attnforge_codegen::spec::{DType, KernelSpec};
use attnforge_codegen::tile::{default_tile, Mainloop, TileConfig};
use attnforge_reference::{Element, Shape4, Tensor4};
use attnforge_runtime::exec::Backend;
use attnforge_runtime::exec_backward::{check_backward, run_backward_cuda, Upstream};
use attnforge_runtime::sim::SimElem;
use attnforge_runtime::{
    build_many_cached, main_loops, sass, BuildError, CompileOptions, InstrClass, KernelSource,
    MainLoopHints,
};
use half::{bf16, f16};

use crate::kernel::{device_label, elem_bytes, gate_verdict, mean_estimate};
use crate::measure::{BenchConfig, Estimate};
use crate::model::{predict_main_loop, MainLoopConstants, MainLoopInput, Prediction};
use crate::occupancy::{ArchLimits, Occupancy};
use crate::sass_counts::LoopCounts;
use crate::tuner::{EnvironmentError, Gate, GateError, Resources, Status, Tunable};
use crate::workload::{default_params, inputs, key_tile_profile, tile_profile, Shape};
use crate::Arch;

/// Launch overhead of the Delta pre-pass, microseconds.
const DELTA_LAUNCH_US: f64 = 3.0;

/// The backward tile a pipeline candidate stands for.
pub fn backward_tile(t: &TileConfig) -> BackwardTile {
    BackwardTile {
        atomic_dq: t.atomic_dq,
        ..BackwardTile::new(t.block_m, t.block_n, t.warps)
    }
}

/// The pipeline candidate of a backward tile (one stage; `m64n64w4s1a` with the atomic dQ).
pub fn candidate(b: &BackwardTile) -> TileConfig {
    TileConfig {
        atomic_dq: b.atomic_dq,
        ..TileConfig::new(b.block_m, b.block_n, b.warps, 1)
    }
}

/// The backward search space: the tensor-core tiles (16 rows and keys per warp: 32 x 32 with
/// 2 warps, 64 x 64 with 4, 128 x 128 with 8) and FMA tiles of 32 to 64 rows and keys with 2
/// to 8 warps; `valid` removes what the spec's template or the architecture refuses.
pub fn backward_space() -> Vec<BackwardTile> {
    let t = BackwardTile::new;
    vec![
        t(32, 32, 2),
        t(64, 64, 4),
        t(128, 128, 8),
        t(32, 32, 4),
        t(32, 64, 4),
        t(64, 32, 4),
        t(64, 64, 8),
    ]
}

/// [`backward_space`] and, with `atomic_dq`, its tensor-core tiles again with
/// FlashAttention-2's atomic dQ (`attnforge tune --backward --atomic-dq`; never the default, which is deterministic).
pub fn backward_space_with(atomic_dq: bool) -> Vec<BackwardTile> {
    let base = backward_space();
    // the atomic dQ lives in the tensor-core dK/dV loop: 16 rows and keys per warp
    let atomic = base
        .iter()
        .filter(|t| atomic_dq && t.block_m == 16 * t.warps && t.block_n == t.block_m)
        .map(|t| t.atomic());
    atomic.chain(base.iter().copied()).collect()
}

/// *Assumed* throughput of f32 reductions (`RED.E.ADD.F32`) resolved in L2, in the DRAM
/// bandwidth's units: no measurement exists (no GPU run of the backward). FlashAttention-2's
/// atomic dQ runs near its compute bound on A100 / H100, so reductions are taken to overlap the
/// loop and to cost at least this much; 4 bytes per reduction at the DRAM bandwidth.
fn atomic_us(reductions: f64, l: &ArchLimits) -> f64 {
    reductions * 4.0 / (l.dram_gbps * 1e9) * 1e6
}

/// The atomic variant's dQ kernel: `bytes` of DRAM (read the f32 sums, write dQ) and a launch.
fn convert_prediction(bytes: f64, l: &ArchLimits) -> Prediction {
    let dram_us = bytes / (l.dram_gbps * 1e9) * 1e6;
    Prediction {
        time_us: dram_us + DELTA_LAUNCH_US,
        compute_us: 0.0,
        smem_us: 0.0,
        dram_us,
        waves: 1,
        latency_hiding: 1.0,
        splits: None,
    }
}

/// Main-loop counts of the dK/dV and dQ kernels of one candidate.
type KernelCounts = (Option<LoopCounts>, Option<LoopCounts>);

/// The backward kernels of a spec to tune at `shape`, gated on the simulator at `gate_shape`.
#[derive(Debug)]
pub struct BackwardTunable {
    /// The spec (dense layout).
    pub spec: KernelSpec,
    /// Tuning shape.
    pub shape: Shape,
    /// Small shape of the simulator gate.
    pub gate_shape: Shape,
    /// The SASS counts of each compiled candidate's two main loops (filled by `build`).
    counts: Mutex<HashMap<BackwardTile, KernelCounts>>,
    /// Whether the atomic-dQ tiles are candidates too ([`backward_space_with`]).
    pub atomic_dq: bool,
}

impl BackwardTunable {
    /// Tune the backward of `spec` at `B x H x seq`; gate at `1 x 2 x gate_seq` (GQA: 4
    /// query heads, 1 kv), as the forward tuner.
    pub fn new(spec: KernelSpec, batch: usize, heads: usize, seq: usize, gate_seq: usize) -> Self {
        let shape = Shape::for_spec(&spec, batch, heads, seq);
        let gate_shape = Shape::for_spec(&spec, 1, if spec.gqa { 4 } else { 2 }, gate_seq);
        BackwardTunable {
            spec,
            shape,
            gate_shape,
            counts: Mutex::new(HashMap::new()),
            atomic_dq: false,
        }
    }

    /// Also tune the atomic-dQ tiles (cached under their own variant, `<name>_bwd_atomic_dq`).
    pub fn with_atomic_dq(self, atomic_dq: bool) -> Self {
        BackwardTunable { atomic_dq, ..self }
    }

    fn gate_as<T: Element + SimElem>(&self, tile: &TileConfig) -> Result<Gate, GateError> {
        let s = &self.gate_shape;
        let p = default_params(&self.spec, s);
        let x = inputs::<T>(&self.spec, s, 7);
        let dout = upstream::<T>(s, self.spec.head_dim.get());
        let up = Upstream {
            dout: &dout,
            dlse: None,
        };
        let fwd = default_tile(&self.spec, Arch::Sm80).ok_or_else(|| {
            Status::GateFailed("no forward tile for the spec's forward pass".into())
        })?;
        let b = Backend::sim();
        let r = check_backward(&self.spec, &fwd, &backward_tile(tile), &x, up, &p, &b);
        gate_verdict(
            r.map(|(_, checks)| checks.iter().map(|c| c.max_err).fold(0.0, f64::max)),
            s.to_string(),
        )
    }

    fn measure_as<T: Element>(&self, tile: &TileConfig, runs: usize) -> Result<Estimate, String> {
        let s = &self.shape;
        let p = default_params(&self.spec, s);
        let x = inputs::<T>(&self.spec, s, 7);
        let dout = upstream::<T>(s, self.spec.head_dim.get());
        let up = Upstream {
            dout: &dout,
            dlse: None,
        };
        let fwd = default_tile(&self.spec, Arch::Sm80).ok_or("no forward tile")?;
        let bt = backward_tile(tile);
        let (_, (_, bwd_s)) = run_backward_cuda(&self.spec, &fwd, &bt, &x, up, &p, runs, 0)
            .map_err(|e| e.to_string())?;
        Ok(mean_estimate(bwd_s, runs, "backward runs"))
    }
}

/// `dO` of the gate and the timing: values in [-1, 1).
fn upstream<T: Element>(s: &Shape, d: usize) -> Tensor4<T> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    Tensor4::from_fn(Shape4::new(s.batch, s.heads_q, s.seq_q, d), |_, _, _, _| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        T::from_f64((state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0)
    })
}

/// m16n8k16 MMAs per warp and cp.async copies per warp of one main-loop iteration of a
/// tensor-core backward kernel (as `runtime/tests/backward_sass.rs` derives them): `products`
/// tile products of `rows` x 16 per warp x `d`, two `[rows][d]` 16-bit tiles copied.
fn hints(products: f64, rows: usize, d: usize, warps: usize) -> MainLoopHints {
    MainLoopHints {
        mma_per_iteration: Some(products * (16 * rows * d) as f64 / 2048.0),
        cp_async_per_iteration: Some((2 * rows * d * 2) as f64 / (512.0 * warps as f64)),
    }
}

/// The counts of a main loop in `cubin`, `None` when it has no MMA or cannot be analysed.
fn counts_of(cubin: Option<&[u8]>, hints: &MainLoopHints) -> Option<LoopCounts> {
    let text = sass(cubin?).ok()?;
    let m = main_loops(&text, hints).ok()?.into_iter().next()?;
    (m.mma > 0.0).then(|| LoopCounts {
        instructions: m.instructions,
        mma: m.mma,
        mufu: m.by_class.get(&InstrClass::Mufu).copied().unwrap_or(0.0),
        ldmatrix_bytes: m.ldmatrix_bytes,
        partial: None,
    })
}

/// Counts of an FMA main loop estimated from its multiply-adds: `products` tile products of
/// `block_m x block_n x d`, spread over the warps' lanes, and a third more instructions for
/// the shared-memory loads and the softmax terms.
fn fma_counts(products: f64, t: &BackwardTile, d: usize) -> LoopCounts {
    let fma = products * (t.block_m * t.block_n * d) as f64 / (32 * t.warps) as f64;
    LoopCounts {
        instructions: fma * 4.0 / 3.0,
        mma: 0.0,
        mufu: (t.block_m * t.block_n) as f64 / (32 * t.warps) as f64,
        ldmatrix_bytes: 0.0,
        partial: None,
    }
}

impl Tunable for BackwardTunable {
    fn variant(&self) -> String {
        let atomic = if self.atomic_dq { "_atomic_dq" } else { "" };
        format!("{}_bwd{atomic}", self.spec.canonical_name())
    }

    fn space(&self, _arch: Arch) -> Vec<TileConfig> {
        backward_space_with(self.atomic_dq)
            .iter()
            .map(candidate)
            .collect()
    }

    fn valid(&self, tile: &TileConfig, arch: Arch) -> Result<(), String> {
        if tile.stages != 1 || tile.wgmma {
            return Err("a backward tile has one stage and no warpgroup MMA".into());
        }
        backward_tile(tile).valid(&self.spec, arch).map_err(|errs| {
            errs.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        })
    }

    fn fingerprint(&self, tile: &TileConfig, arch: Arch) -> String {
        match emit_backward(&self.spec, &backward_tile(tile), arch) {
            Ok(k) => [k.delta.source, k.dkdv.source, k.dq.source].concat(),
            Err(e) => format!("emit error: {e:?}"),
        }
    }

    fn build(
        &self,
        tiles: &[TileConfig],
        arch: Arch,
    ) -> Result<Vec<Result<Resources, String>>, EnvironmentError> {
        let env = |e: &dyn std::fmt::Display| EnvironmentError {
            stage: "compile (NVRTC)",
            message: e.to_string(),
        };
        let d = self.spec.head_dim.get();
        let mut out = Vec::new();
        for tile in tiles {
            let bt = backward_tile(tile);
            let k = match emit_backward(&self.spec, &bt, arch) {
                Ok(k) => k,
                Err(e) => {
                    out.push(Err(format!("emit: {e:?}")));
                    continue;
                }
            };
            let kernels = [&k.delta, &k.dkdv, &k.dq];
            let sources: Vec<KernelSource<'_>> = kernels
                .iter()
                .map(|k| KernelSource {
                    source: &k.source,
                    name: &k.name,
                    options: CompileOptions::new(arch),
                })
                .collect();
            let builds = build_many_cached(&sources).map_err(|e| env(&e))?;
            let mut ok = Vec::new();
            let mut failed = None;
            for r in builds {
                match r {
                    Ok(b) => ok.push(b),
                    Err(BuildError::Compile(e)) if crate::kernel::compile_environment_error(&e) => {
                        return Err(env(&e))
                    }
                    Err(e) => failed = Some(e.to_string()),
                }
            }
            if let Some(f) = failed {
                out.push(Err(f));
                continue;
            }
            let (dkdv_smem, dq_smem) = bt.smem_bytes(&self.spec);
            let tc = mainloop(&self.spec, &bt) == Mainloop::TensorCore;
            // dK/dV walks query tiles of 32 rows at d 128 (its 64-row tile spills), as the
            // template does, with a fifth product (dS K) in the atomic variant; dQ walks key
            // tiles of block_n (the atomic variant's dQ kernel has no main loop)
            let qm = bt.dkdv_query_step(d);
            let counts = if tc {
                (
                    counts_of(
                        ok[1].compiled.cubin.as_deref(),
                        &hints(bt.dkdv_products(), qm, d, bt.warps),
                    ),
                    counts_of(
                        ok[2].compiled.cubin.as_deref(),
                        &hints(3.0, bt.block_n, d, bt.warps),
                    ),
                )
            } else {
                (None, None)
            };
            self.counts
                .lock()
                .map_err(|_| env(&"the counts table was poisoned by a panic"))?
                .insert(bt, counts);
            out.push(Ok(Resources {
                registers: ok.iter().map(|b| b.resources.registers).max().unwrap_or(0),
                smem_bytes: ok[1]
                    .resources
                    .shared_bytes
                    .max(ok[2].resources.shared_bytes)
                    + dkdv_smem.max(dq_smem) as u64,
                stack_frame_bytes: ok
                    .iter()
                    .map(|b| b.resources.stack_frame_bytes)
                    .max()
                    .unwrap_or(0),
                spill_bytes: ok
                    .iter()
                    .map(|b| b.resources.spill_store_bytes + b.resources.spill_load_bytes)
                    .sum(),
                threads: bt.threads() as u32,
                main_loop: counts.0,
            }));
        }
        Ok(out)
    }

    fn predict(
        &self,
        tile: &TileConfig,
        _res: &Resources,
        occ: &Occupancy,
        arch: Arch,
    ) -> Prediction {
        let bt = backward_tile(tile);
        let s = &self.shape;
        let d = self.spec.head_dim.get();
        let p = default_params(&self.spec, s);
        let (dkdv_counts, dq_counts) = self
            .counts
            .lock()
            .ok()
            .and_then(|m| m.get(&bt).copied())
            .unwrap_or((None, None));
        let group = s.heads_q / s.heads_kv.max(1);
        let dkdv_profile: Vec<u32> = key_tile_profile(&self.spec, bt.block_m, bt.block_n, s, &p)
            .into_iter()
            .map(|t| t * group as u32)
            .collect();
        let dq_profile: Vec<u32> = tile_profile(&self.spec, bt.block_m, bt.block_n, s, &p)
            .iter()
            .map(|t| t.visited)
            .collect();
        let l = ArchLimits::of(arch);
        let k = MainLoopConstants::of(arch);
        let run = |profile: &[u32], counts: LoopCounts, heads: usize, width: usize| {
            let m = MainLoopInput {
                warps: bt.warps,
                wgmma: false,
                counts,
                profile,
                partial: &[],
                heads_times_batch: s.batch * heads,
                elem_bytes: elem_bytes(self.spec.dtype),
                block_n: width,
                head_dim: d,
            };
            predict_main_loop(&l, &k, occ, &m)
        };
        // dK/dV: a step reads one query tile (q, dO); dQ: one key tile (k, v)
        let mut dkdv = run(
            &dkdv_profile,
            dkdv_counts.unwrap_or_else(|| fma_counts(4.0, &bt, d)),
            s.heads_kv,
            bt.block_m,
        );
        let rows = (s.batch * s.heads_q * s.seq_q) as f64;
        let dq = if bt.atomic_dq {
            // its SASS counts carry the fifth product and the RED instructions' issue slots;
            // the reductions themselves resolve in L2, overlapped with the loop
            let visited: f64 = dkdv_profile.iter().map(|&t| f64::from(t)).sum();
            let red_us = atomic_us(visited * (bt.block_m * d) as f64, &l);
            dkdv.time_us = dkdv.time_us.max(red_us);
            dkdv.dram_us += red_us;
            convert_prediction(rows * (d * (4 + elem_bytes(self.spec.dtype))) as f64, &l)
        } else {
            run(
                &dq_profile,
                dq_counts.unwrap_or_else(|| fma_counts(3.0, &bt, d)),
                s.heads_q,
                bt.block_n,
            )
        };
        // Delta: reads dO and O, writes one f32 per row (and zeroes the atomic dq_accum)
        let zeroed = if bt.atomic_dq { 4 * d } else { 0 };
        let delta_bytes = rows * (2 * d * elem_bytes(self.spec.dtype) + 4 + zeroed) as f64;
        let delta_us = delta_bytes / (l.dram_gbps * 1e9) * 1e6 + DELTA_LAUNCH_US;
        Prediction {
            time_us: dkdv.time_us + dq.time_us + delta_us,
            compute_us: dkdv.compute_us + dq.compute_us,
            smem_us: dkdv.smem_us + dq.smem_us,
            dram_us: dkdv.dram_us + dq.dram_us + delta_us - DELTA_LAUNCH_US,
            waves: dkdv.waves.max(dq.waves),
            latency_hiding: dkdv.latency_hiding.min(dq.latency_hiding),
            splits: None,
        }
    }

    fn gate(&self, tile: &TileConfig) -> Result<Gate, GateError> {
        match self.spec.dtype {
            DType::F32 => self.gate_as::<f32>(tile),
            DType::F16 => self.gate_as::<f16>(tile),
            DType::Bf16 => self.gate_as::<bf16>(tile),
        }
    }

    fn can_measure(&self) -> bool {
        attnforge_runtime::gpu_available()
    }

    fn measure(
        &self,
        tile: &TileConfig,
        cfg: &BenchConfig,
        _dir: &Path,
    ) -> Result<Estimate, String> {
        let runs = cfg.samples.max(3);
        match self.spec.dtype {
            DType::F32 => self.measure_as::<f32>(tile, runs),
            DType::F16 => self.measure_as::<f16>(tile, runs),
            DType::Bf16 => self.measure_as::<bf16>(tile, runs),
        }
    }

    fn device(&self) -> String {
        device_label()
    }

    fn shape(&self) -> (String, String) {
        let s = &self.shape;
        (format!("backward {s}"), format!("bwd_{}", s.bucket()))
    }
}
