//! Tuning the decode kernels ([`Layout::Decode`], variants.md section 13; docs/serving.md):
//! the tile and the number of key splits, on a decode workload (`B` sequences of `Sq`
//! tokens, 1 by default, over a cache of `Sk` keys).
//!
//! The candidates are tiles (the kernel's compile-time shape). The number of splits is a
//! run-time argument, so it is not a separate candidate: each tile's prediction is the best
//! over [`split_candidates`], and [`Prediction::splits`] records the count it assumes; the
//! winner's is the tuned `num_splits`. Per split count the model list-schedules
//! `B x Hkv x row_blocks x splits` blocks, each walking the key tiles of its split that the
//! mask visits ([`split_profile`]), with the main-loop SASS counts of the dense model
//! ([`predict_main_loop`]); more than one split adds the f32 partials' round trip and the
//! merge launch. The gate runs the candidate on the simulator over a paged cache with three
//! splits (the merge included) against the per-sequence reference. On a GPU each candidate
//! is timed with its predicted split count (`exec_serving::run_cuda`, not yet run on
//! hardware); without one the winner is *predicted*.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use attnforge_codegen::serving::{decode_splits, DECODE_MAX_SPLITS};
use attnforge_codegen::spec::{DType, KernelSpec, Layout};
use attnforge_codegen::tile::{default_search_space, TileConfig};
use attnforge_reference::{Element, Packed};
use attnforge_runtime::exec_serving::{self, ServingInputs, ServingKeys};
use attnforge_runtime::sim::{Schedule, SimConfig, SimElem};
use half::{bf16, f16};

use crate::kernel::{
    build_spec, device_label, elem_bytes, emitted_source, estimate_resources, gate_verdict,
    mean_estimate, tile_valid,
};
use crate::measure::{BenchConfig, Estimate};
use crate::model::{
    estimate_counts, predict_main_loop, MainLoopConstants, MainLoopInput, Prediction,
};
use crate::occupancy::{occupancy, ArchLimits, Occupancy};
use crate::tuner::{EnvironmentError, Gate, GateError, Resources, Tunable};
use crate::workload::{default_params, split_profile, Shape};
use crate::Arch;

/// Launch overhead of the merge kernel, microseconds (the main loop's model charges the
/// same per launch).
const MERGE_LAUNCH_US: f64 = 3.0;

/// Splits the gate runs with: more than one (the merge kernel runs), and not a power of two
/// (the last split is shorter than the others at the gate's lengths).
const GATE_SPLITS: usize = 3;

/// A decode kernel to tune at `shape` (`seq_q` tokens per sequence, `seq_k` cached keys),
/// gated on the simulator at `gate_shape`.
#[derive(Debug)]
pub struct DecodeTunable {
    /// The spec, in [`Layout::Decode`].
    pub spec: KernelSpec,
    /// Tuning workload.
    pub shape: Shape,
    /// Small workload of the simulator gate.
    pub gate_shape: Shape,
    /// Streaming multiprocessors of the target; `None`: the reference part of the
    /// architecture ([`ArchLimits::sms`]: 108 for sm_80, 132 for sm_90, which is also
    /// `decode_splits`' [`attnforge_codegen::serving::DEFAULT_SMS`]).
    pub sms: Option<usize>,
    /// The split count of each predicted candidate (what a GPU measurement launches with).
    splits: Mutex<HashMap<TileConfig, usize>>,
}

impl DecodeTunable {
    /// Tune `spec` in the decode layout for `batch` sequences of `tokens` query tokens over
    /// `seq_k` cached keys with `heads` query heads (GQA specs: a quarter as kv heads, as the
    /// dense tuner); gate at 2 sequences over `gate_seq` keys. `Err` names why the variant
    /// has no decode kernel (the layout's rules, `validate_spec`).
    pub fn new(
        spec: &KernelSpec,
        batch: usize,
        heads: usize,
        (tokens, seq_k): (usize, usize),
        gate_seq: usize,
    ) -> Result<Self, String> {
        Self::new_in(
            spec,
            Layout::Decode,
            (batch, heads),
            (tokens, seq_k),
            gate_seq,
        )
    }

    /// [`DecodeTunable::new`] in `layout`: [`Layout::Decode`] (a paged cache) or
    /// [`Layout::DecodeVarlen`] (packed keys); `Err` for another layout.
    pub fn new_in(
        spec: &KernelSpec,
        layout: Layout,
        (batch, heads): (usize, usize),
        (tokens, seq_k): (usize, usize),
        gate_seq: usize,
    ) -> Result<Self, String> {
        if !layout.is_decode() {
            return Err(format!(
                "layout `{}` has no decode kernel (use decode or decode_varlen)",
                layout.tag()
            ));
        }
        let spec = spec.clone().with_layout(layout);
        attnforge_codegen::check::validate_spec(&spec).map_err(|errs| {
            errs.iter()
                .map(|e| format!("{}: {}", e.path, e.message))
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        let mut shape = Shape::for_spec(&spec, batch, heads, seq_k);
        shape.seq_q = tokens;
        let mut gate_shape = Shape::for_spec(&spec, 2, if spec.gqa { 4 } else { 2 }, gate_seq);
        gate_shape.seq_q = tokens.min(gate_seq);
        Ok(DecodeTunable {
            spec,
            shape,
            gate_shape,
            sms: None,
            splits: Mutex::new(HashMap::new()),
        })
    }

    /// The prediction of `tile` with `splits` key splits per sequence.
    pub fn predict_splits(
        &self,
        tile: &TileConfig,
        res: &Resources,
        occ: &Occupancy,
        arch: Arch,
        splits: usize,
    ) -> Prediction {
        let s = &self.shape;
        let d = self.spec.head_dim.get();
        let params = default_params(&self.spec, s);
        let tiles = split_profile(&self.spec, tile.block_n, s, &params, splits);
        let group = s.heads_q / s.heads_kv.max(1);
        let row_blocks = (group * s.seq_q).div_ceil(tile.block_m).max(1);
        let profile: Vec<u32> = (0..row_blocks)
            .flat_map(|_| tiles.iter().map(|t| t.visited))
            .collect();
        let partial: Vec<u32> = (0..row_blocks)
            .flat_map(|_| tiles.iter().map(|t| t.partial))
            .collect();
        let warps = tile.compute_warps();
        let m = MainLoopInput {
            warps,
            wgmma: tile.wgmma,
            counts: res
                .main_loop
                .unwrap_or_else(|| estimate_counts(tile.block_m, tile.block_n, warps, d)),
            profile: &profile,
            partial: &partial,
            heads_times_batch: s.batch * s.heads_kv,
            elem_bytes: elem_bytes(self.spec.dtype),
            block_n: tile.block_n,
            head_dim: d,
        };
        let mut l = ArchLimits::of(arch);
        l.sms = self.sms.unwrap_or(l.sms);
        let mut p = predict_main_loop(&l, &MainLoopConstants::of(arch), occ, &m);
        if splits > 1 {
            // every query row's partials: written by the splits, read back by the merge
            let rows = (s.batch * s.heads_q * s.seq_q) as f64;
            let partials = rows * splits as f64 * ((d + 1) * 4) as f64;
            let merged = rows * (d * elem_bytes(self.spec.dtype) + 4) as f64;
            let extra_us = (2.0 * partials + merged) / (l.dram_gbps * 1e9) * 1e6;
            p.time_us += extra_us + MERGE_LAUNCH_US;
            p.dram_us += extra_us;
        }
        p.splits = Some(splits);
        p
    }
}

impl DecodeTunable {
    /// The prediction of `tile` at the split count the model predicts fastest among
    /// [`split_candidates`] ([`Prediction::splits`]): the tuner's prediction of the tile
    /// and, through [`model_splits`], the split count `attnforge run` launches with.
    pub fn best_split(
        &self,
        tile: &TileConfig,
        res: &Resources,
        occ: &Occupancy,
        arch: Arch,
    ) -> Prediction {
        let sms = self.sms.unwrap_or(ArchLimits::of(arch).sms);
        split_candidates(&self.shape, tile, sms)
            .into_iter()
            .map(|k| self.predict_splits(tile, res, occ, arch, k))
            .min_by(|a, b| a.time_us.total_cmp(&b.time_us))
            .unwrap_or_else(|| self.predict_splits(tile, res, occ, arch, 1))
    }
}

/// A decode launch the run-time split choice is made for: `batch` sequences of at most
/// `max_seq_q` tokens over at most `max_seq_k` keys (the model assumes every sequence at the
/// maximum, as `decode_splits` does), `heads_q` query and `heads_kv` kv heads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeLaunch {
    /// Sequences `B`.
    pub batch: usize,
    /// Query heads `Hq`.
    pub heads_q: usize,
    /// Key/value heads `Hkv`.
    pub heads_kv: usize,
    /// `max_b Sq_b`.
    pub max_seq_q: usize,
    /// `max_b Sk_b`.
    pub max_seq_k: usize,
}

/// The number of key splits of a decode launch from the tuner's model: `tile` compiled by
/// NVRTC (kernel cache) for its registers, shared memory and main-loop SASS counts, then
/// [`DecodeTunable::best_split`] at the launch's shape on `arch`'s reference part (sm_90:
/// 132 SMs, an H100 SXM / H200). The same function gives the tuner's `Prediction::splits`,
/// so `attnforge run` launches with the split count `tune --layout decode` predicts for the
/// tile. `Err` says why there is no prediction (no toolchain, a spec without a decode
/// kernel); the caller falls back to `decode_splits`.
pub fn model_splits(
    spec: &KernelSpec,
    tile: &TileConfig,
    launch: DecodeLaunch,
    arch: Arch,
) -> Result<Prediction, String> {
    let l = launch;
    let mut t = DecodeTunable::new_in(
        spec,
        spec.layout,
        (l.batch, l.heads_q),
        (l.max_seq_q.max(1), l.max_seq_k.max(1)),
        l.max_seq_k.max(1),
    )?;
    t.shape.heads_kv = l.heads_kv.max(1);
    let res = t
        .build(&[*tile], arch)
        .map_err(|e| e.to_string())?
        .pop()
        .ok_or("no build result")??;
    let limits = ArchLimits::of(arch);
    let occ = occupancy(
        &limits,
        res.threads as usize,
        res.registers as usize,
        res.smem_bytes as usize,
    );
    Ok(t.best_split(tile, &res, &occ, arch))
}

/// The split counts a tile's prediction tries: 1, the powers of two, and `decode_splits`'
/// choice for the tile (what a serving engine gets without tuning), up to the key tiles of
/// the sequence and [`DECODE_MAX_SPLITS`].
pub fn split_candidates(shape: &Shape, tile: &TileConfig, sms: usize) -> Vec<usize> {
    let tiles = shape
        .seq_k
        .div_ceil(tile.block_n)
        .clamp(1, DECODE_MAX_SPLITS);
    let mut v: Vec<usize> = std::iter::successors(Some(1usize), |x| Some(x * 2))
        .take_while(|&x| x <= tiles)
        .collect();
    v.push(decode_splits(
        shape.batch,
        (shape.heads_q, shape.heads_kv),
        (shape.seq_q, shape.seq_k),
        (tile.block_m, tile.block_n),
        sms,
    ));
    v.sort_unstable();
    v.dedup();
    v
}

/// Values in [-1, 1) from a fixed xorshift stream (the same inputs on every run).
fn unit_values<T: Element>() -> impl FnMut() -> T {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        T::from_f64((state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0)
    }
}

/// A decode problem in `layout`: sequences of `seq_q` tokens over `lens` keys, on a paged
/// cache ([`paged_inputs`]) or packed keys (`decode_varlen`: `k, v: [sum lens, Hkv, D]`).
fn decode_inputs<T: Element>(
    layout: Layout,
    shape: &Shape,
    d: usize,
    lens: &[usize],
) -> ServingInputs<T> {
    if layout != Layout::DecodeVarlen {
        return paged_inputs(shape, d, lens);
    }
    let mut unit = unit_values::<T>();
    let tk: usize = lens.iter().sum();
    let k = Packed::from_fn(tk, shape.heads_kv, d, |_, _, _| unit());
    let v = Packed::from_fn(tk, shape.heads_kv, d, |_, _, _| unit());
    let q = Packed::from_fn(shape.seq_q * lens.len(), shape.heads_q, d, |_, _, _| unit());
    let cu_k = std::iter::once(0)
        .chain(lens.iter().scan(0i32, |acc, &l| {
            *acc += l as i32;
            Some(*acc)
        }))
        .collect();
    ServingInputs {
        q,
        cu_seqlens_q: (0..=lens.len()).map(|b| (b * shape.seq_q) as i32).collect(),
        keys: ServingKeys::Varlen {
            k,
            v,
            cu_seqlens_k: cu_k,
        },
    }
}

/// A decode problem: sequences of `seq_q` tokens over `lens` keys, a paged cache of 16-key
/// pages in permuted order (page 0 shared by every sequence), values in [-1, 1).
fn paged_inputs<T: Element>(shape: &Shape, d: usize, lens: &[usize]) -> ServingInputs<T> {
    let mut unit = unit_values::<T>();
    let q = Packed::from_fn(shape.seq_q * lens.len(), shape.heads_q, d, |_, _, _| unit());
    let cu_seqlens_q = (0..=lens.len()).map(|b| (b * shape.seq_q) as i32).collect();
    ServingInputs::shared_prefix_paged(q, cu_seqlens_q, lens, (16, shape.heads_kv), unit)
}

impl DecodeTunable {
    fn measure_as<T: Element>(&self, tile: &TileConfig, runs: usize) -> Result<Estimate, String> {
        let s = &self.shape;
        let mut p = default_params(&self.spec, s);
        p.block_lists = None;
        p.num_splits = self.splits.lock().ok().and_then(|m| m.get(tile).copied());
        let lens = vec![s.seq_k; s.batch];
        let x = decode_inputs::<T>(self.spec.layout, s, self.spec.head_dim.get(), &lens);
        let (_, secs) =
            exec_serving::run_cuda(&self.spec, tile, &x, &p, runs, 0).map_err(|e| e.to_string())?;
        Ok(mean_estimate(secs, runs, "decode steps"))
    }

    fn gate_as<T: Element + SimElem>(&self, tile: &TileConfig) -> Result<Gate, GateError> {
        let s = &self.gate_shape;
        let mut p = default_params(&self.spec, s);
        p.block_lists = None; // built per sequence by exec_serving
        p.num_splits = Some(GATE_SPLITS);
        // two sequences over Sk and Sk / 3 + 5 keys
        let lens = [s.seq_k, s.seq_k / 3 + 5];
        let x = decode_inputs::<T>(self.spec.layout, s, self.spec.head_dim.get(), &lens);
        let cfg = SimConfig::new(Schedule::Forward);
        let r = exec_serving::check(&self.spec, tile, &x, &p, &cfg);
        let keys = match self.spec.layout {
            Layout::DecodeVarlen => "packed keys",
            _ => "pages of 16",
        };
        gate_verdict(
            r.map(|rep| rep.close.out.max_err),
            format!("{s}, {keys}, {GATE_SPLITS} splits"),
        )
    }
}

impl Tunable for DecodeTunable {
    fn variant(&self) -> String {
        self.spec.canonical_name()
    }

    /// The dense space (the serving layouts refuse warpgroup-MMA tiles) plus the small-M
    /// tensor-core tiles a decode step wants: a GQA group of one token fills 16 or 32 rows.
    fn space(&self, arch: Arch) -> Vec<TileConfig> {
        let mut v = Vec::new();
        if self.spec.dtype != DType::F32 {
            for bm in [16, 32] {
                for bn in [32, 64, 128] {
                    for st in 1..=3 {
                        v.push(TileConfig::new(bm, bn, bm / 16, st));
                    }
                }
            }
        }
        v.extend(default_search_space(&self.spec, arch));
        v.retain(|t| !t.wgmma);
        v.dedup();
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

    /// The best of [`split_candidates`] by the model ([`DecodeTunable::best_split`]).
    fn predict(
        &self,
        tile: &TileConfig,
        res: &Resources,
        occ: &Occupancy,
        arch: Arch,
    ) -> Prediction {
        let best = self.best_split(tile, res, occ, arch);
        if let (Ok(mut m), Some(k)) = (self.splits.lock(), best.splits) {
            m.insert(*tile, k);
        }
        best
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

    /// The wall time of synchronized steps (decode kernel and merge) at the
    /// tuning workload, with the split count of the candidate's prediction.
    fn measure(&self, tile: &TileConfig, cfg: &BenchConfig, _: &Path) -> Result<Estimate, String> {
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
        let tag = self.spec.layout.tag();
        (format!("{tag} {s}"), format!("{tag}_{}", s.bucket()))
    }
}
