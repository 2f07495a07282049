//! The backward kernels of a static variant (variants.md section 12): three `extern "C"`
//! kernels per spec, each a thin wrapper around a template of `cuda/af_bwd.cuh` built from
//! the forward's lowering (the same schedule, element mask and score hooks, so the backward
//! can never disagree with the forward about which entries exist):
//!
//! - `<name>_bwd_delta`: `Delta = rowsum(dO * O) - dlse`;
//! - `<name>_bwd_dkdv`: dK, dV per key tile, walking the query tiles of the *transposed*
//!   schedule (the mask table's closed-form query range of a key tile, each query tile
//!   classified by the forward's classifier); the query heads of a GQA group are summed in
//!   order inside one block, so no atomics are needed;
//! - `<name>_bwd_dq`: dQ per query tile over the forward schedule, plus one partial sum per
//!   block of the score parameter's gradient (reduced by the host in a fixed order).
//!
//! Every kernel takes the forward's argument list ([`crate::args::kernel_args`]; `o` and `lse`
//! are the forward's outputs, read here) followed by [`grad_args`]. The result is
//! bit-deterministic.
//!
//! ```
//! use attnforge_codegen::{backward::*, spec::*, tile::Arch};
//! let spec = KernelSpec::new(DType::Bf16, HeadDim::D128, Mask::Causal, ScoreMod::Softcap);
//! let k = emit_backward(&spec, &BackwardTile::default(), Arch::Sm80).unwrap();
//! assert_eq!(k.dkdv.name, "flash_fwd_causal_softcap_d128_bf16_bwd_dkdv");
//! assert!(k.dq.source.contains("af_bwd_dq<Tile>(args, grads, schedule, block_hooks, grad_hooks, af_dot_scoring{})"));
//! ```

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::args::{ArgKind, BlockListPart, Elem, KernelArg, Scalar, BLOCK_LIST_ARGS};
use crate::check::SpecError;
use crate::emit::{self, EmittedKernel};
use crate::ir::{KernelIr, TileSchedule};
use crate::scores::ScoreParamKind;
use crate::spec::{DType, KernelSpec, Mask, ScoreMod, UserParamKind};
use crate::tile::{Arch, Mainloop, TileConfig};

/// The backward template (`cuda/af_bwd.cuh`).
pub const BWD_CUH: &str = include_str!("../cuda/af_bwd.cuh");
/// The tensor-core main loops of the dK/dV and dQ kernels (`cuda/af_bwd_tc.cuh`).
pub const BWD_TC_CUH: &str = include_str!("../cuda/af_bwd_tc.cuh");

/// The role of an argument that only the backward kernels have (after the forward's list).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GradArg {
    /// `dO`: `[B, Hq, Sq, D]` contiguous, input dtype.
    DOut,
    /// `dlse`: `[B, Hq, Sq]` f32, or null.
    DLse,
    /// `Delta`: `[B, Hq, Sq]` f32 scratch (written by the delta kernel).
    Delta,
    /// `dQ`: `[B, Hq, Sq, D]` contiguous, input dtype.
    DQ,
    /// `dK`: `[B, Hkv, Sk, D]` contiguous, input dtype.
    DK,
    /// `dV`: `[B, Hkv, Sk, D]` contiguous, input dtype.
    DV,
    /// Partial gradients of the score parameter, one per dQ block `[B, Hq, ceil(Sq / block_m)]`
    /// f32, or null when the score modification has no learnable parameter.
    DParam,
    /// Offsets of a user score function's parameters in the learnable vector theta
    /// (`const int*`, one per parameter in declaration order and one past the last; only
    /// `f32` scalars (1) and `&[f32]` tables (their length) occupy elements).
    ThetaOffsets,
    /// Elements of theta (`int`).
    ThetaLen,
    /// `dq_accum`: `[B, Hq, Sq, D]` f32, the atomic-dQ variant's sums ([`BackwardTile::atomic_dq`];
    /// zeroed by the delta kernel), or null.
    DQAccum,
    /// A part of the transposed block lists ([`BlockLists::transposed`](crate::blocks::BlockLists::transposed);
    /// list-driven masks only), named `t` + the forward's name (`tblk_full_num`, ...).
    Transposed(BlockListPart),
}

/// The [`GradArg`]s every backward kernel has, in kernel-argument order (the fields of
/// `af_bwd_args`); list-driven masks append the eight [`GradArg::Transposed`] parts.
pub const GRAD_ARGS: [GradArg; 8] = [
    GradArg::DOut,
    GradArg::DLse,
    GradArg::Delta,
    GradArg::DQ,
    GradArg::DK,
    GradArg::DV,
    GradArg::DParam,
    GradArg::DQAccum,
];

impl GradArg {
    /// The parameter name in the CUDA signature.
    pub fn name(self) -> String {
        match self {
            GradArg::DOut => "dout".into(),
            GradArg::DLse => "dlse".into(),
            GradArg::Delta => "delta".into(),
            GradArg::DQ => "dq".into(),
            GradArg::DK => "dk".into(),
            GradArg::DV => "dv".into(),
            GradArg::DParam => "dparam".into(),
            GradArg::DQAccum => "dq_accum".into(),
            GradArg::ThetaOffsets => "theta_offsets".into(),
            GradArg::ThetaLen => "theta_len".into(),
            GradArg::Transposed(part) => format!("t{}", BLOCK_LIST_ARGS[part as usize]),
        }
    }
    /// Its type for element type `dtype`.
    pub fn kind(self, dtype: DType) -> ArgKind {
        let t = Elem::of(dtype);
        let (elem, mutable) = match self {
            GradArg::DOut => (t, false),
            GradArg::DLse => (Elem::F32, false),
            GradArg::Delta | GradArg::DParam | GradArg::DQAccum => (Elem::F32, true),
            GradArg::DQ | GradArg::DK | GradArg::DV => (t, true),
            GradArg::ThetaOffsets => (Elem::I32, false),
            GradArg::Transposed(part) if part.is_count() => return ArgKind::Scalar(Scalar::I32),
            GradArg::ThetaLen => return ArgKind::Scalar(Scalar::I32),
            GradArg::Transposed(_) => (Elem::I32, false),
        };
        ArgKind::Ptr { elem, mutable }
    }
}

/// The derivatives of the spec's user score function, if it has one with them.
pub fn user_grad(spec: &KernelSpec) -> Option<&crate::spec::UserScoreGrad> {
    match &spec.score {
        ScoreMod::User(f) => f.grad.as_ref(),
        _ => None,
    }
}

/// The backward-only arguments of `spec`'s kernels, in order.
pub fn grad_args(spec: &KernelSpec) -> Vec<(GradArg, KernelArg)> {
    let lists = spec
        .mask
        .uses_block_lists()
        .then_some(BlockListPart::ALL.map(GradArg::Transposed));
    let theta = user_grad(spec).map(|_| [GradArg::ThetaOffsets, GradArg::ThetaLen]);
    GRAD_ARGS
        .into_iter()
        .chain(theta.into_iter().flatten())
        .chain(lists.into_iter().flatten())
        .map(|g| {
            (
                g,
                KernelArg {
                    name: g.name(),
                    kind: g.kind(spec.dtype),
                },
            )
        })
        .collect()
}

/// The tile of the dK/dV and dQ kernels: `block_m` query rows and `block_n` keys per step,
/// `warps` warps. dQ: a block owns `block_m` rows (`block_m / warps` per warp), walking key
/// tiles of `block_n`; dK/dV: a block owns `block_n` keys (`block_n / warps` per warp), walking
/// query tiles of `block_m`. Lanes own 32-wide columns, so both are multiples of 32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BackwardTile {
    /// Query rows per tile.
    pub block_m: usize,
    /// Keys per tile.
    pub block_n: usize,
    /// Warps per block.
    pub warps: usize,
    /// FlashAttention-2's atomic dQ (a tuner option, never the default): the dK/dV kernel also
    /// adds each query tile's `dS K` into an f32 buffer with `atomicAdd` and the dQ kernel only
    /// scales and rounds it, so S and dP are computed once instead of twice; dQ is then not
    /// bit-reproducible. Tensor-core form only, without learnable score parameters
    /// ([`BackwardTile::valid`]). Absent from serialized tiles when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub atomic_dq: bool,
}

impl Default for BackwardTile {
    /// 32 x 32 with 4 warps: every head dimension fits sm_80's shared memory.
    fn default() -> Self {
        BackwardTile::new(32, 32, 4)
    }
}

/// Which main loop the dK/dV and dQ kernels of `spec` take with `tile` (like the forward's
/// [`Mainloop::select`]): tensor cores (`cuda/af_bwd_tc.cuh`, mma.sync m16n8k16 with f32
/// accumulation) for f16/bf16 at head dim 64 or 128 with one scoring branch when each warp
/// owns one 16-row slab of both tiles (`block_m == block_n == 16 * warps`); FMA otherwise
/// (f32; d 256, whose dK and dV accumulators alone, D f32 registers per thread with 16 keys
/// per warp, exceed the 255-register limit; LM-Infinite, whose two scoring branches need a
/// second set of tiles and accumulators; other tiles).
pub fn mainloop(spec: &KernelSpec, tile: &BackwardTile) -> Mainloop {
    let d = spec.head_dim.get();
    if spec.dtype != DType::F32
        && branches(spec) == 1
        && (d == 64 || d == 128)
        && tile.block_m == 16 * tile.warps
        && tile.block_n == 16 * tile.warps
    {
        Mainloop::TensorCore
    } else {
        Mainloop::Fma
    }
}

/// Warps of the delta kernel (one query row each).
pub const DELTA_WARPS: usize = 4;

impl BackwardTile {
    /// The deterministic tile `block_m x block_n` with `warps` warps.
    pub const fn new(block_m: usize, block_n: usize, warps: usize) -> Self {
        BackwardTile {
            block_m,
            block_n,
            warps,
            atomic_dq: false,
        }
    }
    /// This tile with the atomic-dQ variant.
    pub const fn atomic(self) -> Self {
        BackwardTile {
            atomic_dq: true,
            ..self
        }
    }
    /// Query rows per step of the tensor-core dK/dV kernel's transposed schedule: `block_m`,
    /// or 32 at head dim > 64 (its S^T and dP^T of 64 queries next to the dK and dV
    /// accumulators spill; `QM` of `af_bwd_dkdv_tc`).
    pub fn dkdv_query_step(&self, head_dim: usize) -> usize {
        if head_dim > 64 && self.block_m > 32 {
            32
        } else {
            self.block_m
        }
    }
    /// m16n8k16 products of one tensor-core dK/dV iteration, in units of one `16 x QM x D`
    /// product per warp: 4 (S^T, dP^T, dV, dK), 5 with the atomic dQ's dS K (a warp's share
    /// of the query tile's `QM x D` partial is one such product).
    pub fn dkdv_products(&self) -> f64 {
        if self.atomic_dq {
            5.0
        } else {
            4.0
        }
    }
    /// Threads per block.
    pub fn threads(&self) -> usize {
        self.warps * 32
    }
    /// Dynamic shared memory of the dK/dV kernel (f32 tiles of `cuda/af_bwd.cuh`) with
    /// `branches` scoring branches (2 for LM-Infinite: its q and k tiles and dS twice).
    pub fn dkdv_smem_bytes(&self, head_dim: usize, branches: usize) -> usize {
        let (m, n, d, nb) = (self.block_m, self.block_n, head_dim, branches);
        4 * ((nb + 1) * n * d + (nb + 1) * m * (d + 1) + (nb + 1) * n * m + 2 * m)
    }
    /// Dynamic shared memory of the dQ kernel.
    pub fn dq_smem_bytes(&self, head_dim: usize, branches: usize) -> usize {
        let (m, n, d, nb) = (self.block_m, self.block_n, head_dim, branches);
        4 * ((nb + 1) * m * d + (nb + 1) * n * (d + 1) + nb * m * n + self.warps)
    }
    /// Dynamic shared memory of the tensor-core dK/dV kernel (`cuda/af_bwd_tc.cuh`): K, V, Q,
    /// dO tiles of 16-bit elements, lse and Delta of the query tile in f32.
    /// The atomic-dQ variant adds the query step's dS, `[QM][block_n + 8]` 16-bit elements.
    pub fn dkdv_smem_bytes_tc(&self, head_dim: usize) -> usize {
        let ds = if self.atomic_dq {
            2 * self.dkdv_query_step(head_dim) * (self.block_n + 8)
        } else {
            0
        };
        2 * (2 * self.block_n + 2 * self.block_m) * head_dim + 8 * self.block_m + ds
    }
    /// Dynamic shared memory of the tensor-core dQ kernel: Q, dO, K, V tiles of 16-bit
    /// elements, the warps' block sum in f32 (the atomic variant's conversion kernel: none).
    pub fn dq_smem_bytes_tc(&self, head_dim: usize) -> usize {
        if self.atomic_dq {
            return 0;
        }
        2 * (2 * self.block_m + 2 * self.block_n) * head_dim + 4 * self.warps
    }
    /// Dynamic shared memory of `spec`'s dK/dV and dQ kernels with this tile (the main loop
    /// [`mainloop`] selects), without the dQ kernel's learnable-parameter rows.
    pub fn smem_bytes(&self, spec: &KernelSpec) -> (usize, usize) {
        let d = spec.head_dim.get();
        match mainloop(spec, self) {
            Mainloop::TensorCore => (self.dkdv_smem_bytes_tc(d), self.dq_smem_bytes_tc(d)),
            _ => {
                let nb = branches(spec);
                (self.dkdv_smem_bytes(d, nb), self.dq_smem_bytes(d, nb))
            }
        }
    }
    /// The backward tile `spec`'s kernels get by default: 64 x 64 with 4 warps on tensor cores
    /// where [`mainloop`] allows them (and the tile divides the block lists of a list-driven
    /// mask; 32 x 32 with 2 warps otherwise), the FMA tile [`BackwardTile::default`] elsewhere.
    pub fn for_spec(spec: &KernelSpec) -> BackwardTile {
        let b = spec.sparse_block;
        let divides = |t: &BackwardTile| {
            !spec.mask.uses_block_lists() || (b.q % t.block_m == 0 && b.k % t.block_n == 0)
        };
        let tc = [BackwardTile::new(64, 64, 4), BackwardTile::new(32, 32, 2)];
        tc.into_iter()
            .find(|t| mainloop(spec, t) == Mainloop::TensorCore && divides(t))
            .unwrap_or_default()
    }
    /// `m<bm>n<bn>w<warps>`, with `a` appended for the atomic-dQ variant.
    pub fn suffix(&self) -> String {
        let a = if self.atomic_dq { "a" } else { "" };
        format!("m{}n{}w{}{a}", self.block_m, self.block_n, self.warps)
    }
    /// Checks against the template's assumptions and `arch`'s shared memory (of the main
    /// loop [`mainloop`] selects for `spec`).
    pub fn valid(&self, spec: &KernelSpec, arch: Arch) -> Result<(), Vec<SpecError>> {
        let head_dim = spec.head_dim.get();
        let mut errs = Vec::new();
        let fix = "use block_m, block_n multiples of 32 and of warps, e.g. 32 x 32 with 4 warps";
        for (field, v) in [("block_m", self.block_m), ("block_n", self.block_n)] {
            if v == 0 || v % 32 != 0 || v > 128 {
                errs.push(SpecError::new(
                    format!("backward_tile.{field}"),
                    format!("{v} is not a multiple of 32 in 32..=128 (lanes own 32-wide columns)"),
                    fix,
                ));
            }
        }
        if ![1, 2, 4, 8].contains(&self.warps)
            || self.block_m % self.warps != 0
            || self.block_n % self.warps != 0
        {
            errs.push(SpecError::new(
                "backward_tile.warps",
                format!(
                    "{} warps do not divide block_m {} and block_n {} (1, 2, 4 or 8)",
                    self.warps, self.block_m, self.block_n
                ),
                fix,
            ));
        }
        errs.extend(self.atomic_dq_errors(spec));
        let (dkdv, dq) = self.smem_bytes(spec);
        let smem = dkdv.max(dq);
        if errs.is_empty() && smem > arch.max_dynamic_smem() {
            errs.push(SpecError::new(
                "backward_tile",
                format!(
                    "{smem} bytes of shared memory at head dim {head_dim}, over {arch:?}'s {}",
                    arch.max_dynamic_smem()
                ),
                "use a smaller block_m / block_n",
            ));
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }
}

impl BackwardTile {
    /// Why the atomic-dQ variant does not apply to `spec` with this tile (empty when it does
    /// or is not asked for): it lives in the tensor-core dK/dV loop, and the score parameters'
    /// gradient is summed by the deterministic dQ kernel, which it replaces.
    fn atomic_dq_errors(&self, spec: &KernelSpec) -> Vec<SpecError> {
        let mut errs = Vec::new();
        if !self.atomic_dq {
            return errs;
        }
        let fix = "use the deterministic dQ kernel (atomic_dq = false)";
        if mainloop(spec, self) != Mainloop::TensorCore {
            errs.push(SpecError::new(
                "backward_tile.atomic_dq",
                "the atomic dQ exists in the tensor-core form only (f16/bf16, head dim 64/128, \
                 one scoring branch, block_m == block_n == 16 * warps)",
                fix,
            ));
        }
        if param_layout(spec).is_some() {
            errs.push(SpecError::new(
                "backward_tile.atomic_dq",
                "the score modification has learnable parameters, whose gradient only the \
                 deterministic dQ kernel sums",
                fix,
            ));
        }
        errs
    }
}

/// How the score parameters' gradient is laid out, when the spec has one to learn.
pub fn param_layout(spec: &KernelSpec) -> Option<ParamGradLayout> {
    match &spec.score {
        ScoreMod::User(f) => f
            .params
            .iter()
            .any(|p| matches!(p.kind, UserParamKind::F32 | UserParamKind::ArrayF32))
            .then_some(ParamGradLayout::Learnable),
        s => s
            .def()
            .filter(|d| d.grad.is_some())
            .and_then(|d| d.param)
            .map(|p| match p.kind {
                ScoreParamKind::Scalar => ParamGradLayout::Scalar,
                ScoreParamKind::PerHead => ParamGradLayout::PerHead,
            }),
    }
}

/// Scoring branches of the spec's kernels (LM-Infinite: 2).
pub fn branches(spec: &KernelSpec) -> usize {
    if spec.mask.lm_infinite_scoring() {
        2
    } else {
        1
    }
}

/// The three backward kernels of a spec.
#[derive(Clone, Debug, PartialEq)]
pub struct BackwardKernels {
    /// `Delta = rowsum(dO * O) - dlse`; grid `(ceil(seq_q / DELTA_WARPS), heads_q, batch)`.
    pub delta: EmittedKernel,
    /// dK, dV; grid `(ceil(seq_k / block_n), heads_kv, batch)`.
    pub dkdv: EmittedKernel,
    /// dQ and the parameter partials; grid `(ceil(seq_q / block_m), heads_q, batch)`.
    pub dq: EmittedKernel,
    /// The tile all three were emitted for.
    pub tile: BackwardTile,
    /// How the score parameters' gradient is laid out, when there is one to learn.
    pub param: Option<ParamGradLayout>,
    /// Head dimension and scoring branches (shared-memory sizes).
    pub head_dim: usize,
    /// Scoring branches ([`branches`]).
    pub branches: usize,
    /// The main loop of the dK/dV and dQ kernels ([`mainloop`]).
    pub mainloop: Mainloop,
}

/// One launch of a backward kernel.
#[derive(Clone, Copy, Debug)]
pub struct BackwardLaunch<'a> {
    /// The kernel.
    pub kernel: &'a EmittedKernel,
    /// Grid `[x, y, z]` (a zero extent: nothing to launch).
    pub grid: [usize; 3],
    /// Threads per block.
    pub threads: usize,
    /// Dynamic shared memory bytes.
    pub smem_bytes: usize,
}

impl BackwardKernels {
    /// The three launches, in order (delta, dK/dV, dQ), for problem `d`; `theta_len`: the
    /// elements of a user score function's learnable vector (0 otherwise), whose per-thread
    /// rows the dQ kernel holds in shared memory.
    pub fn launches(&self, d: &crate::shape::Shape, theta_len: usize) -> [BackwardLaunch<'_>; 3] {
        let t = &self.tile;
        let (dim, nb) = (self.head_dim, self.branches);
        let (dkdv_smem, dq_smem) = match self.mainloop {
            Mainloop::TensorCore => (t.dkdv_smem_bytes_tc(dim), t.dq_smem_bytes_tc(dim)),
            _ => (t.dkdv_smem_bytes(dim, nb), t.dq_smem_bytes(dim, nb)),
        };
        [
            BackwardLaunch {
                kernel: &self.delta,
                grid: [d.seq_q.div_ceil(DELTA_WARPS), d.heads_q, d.batch],
                threads: DELTA_WARPS * 32,
                smem_bytes: 0,
            },
            BackwardLaunch {
                kernel: &self.dkdv,
                grid: [d.seq_k.div_ceil(t.block_n), d.heads_kv, d.batch],
                threads: t.threads(),
                smem_bytes: dkdv_smem,
            },
            BackwardLaunch {
                kernel: &self.dq,
                grid: [d.seq_q.div_ceil(t.block_m), d.heads_q, d.batch],
                threads: t.threads(),
                smem_bytes: dq_smem + 4 * t.threads() * theta_len,
            },
        ]
    }
}

/// What the dQ kernel writes per block into `dparam`, and what the host sums.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamGradLayout {
    /// One value per block (softcap's cap).
    Scalar,
    /// One value per block, the block's query head's parameter (ALiBi slopes).
    PerHead,
    /// `theta_len` values per block: the learnable vector of a user score function (its `f32`
    /// parameters and `&[f32]` table elements, in declaration order).
    Learnable,
}

/// What the backward kernels cover: every static variant in the dense layout; a user score
/// function needs its derivatives ([`crate::spec::UserFunction::grad`]).
pub fn backward_supported(spec: &KernelSpec) -> Result<(), Vec<SpecError>> {
    let mut errs = crate::check::validate_spec(spec).err().unwrap_or_default();
    if !spec.layout.is_dense() {
        // The backward walks dense [B, H, S, D] tensors; a packed or paged one would be read
        // with the wrong strides, so it is refused rather than emitted.
        errs.push(SpecError::new(
            "layout",
            format!(
                "the backward kernels are built for the dense layout only, not `{}`",
                spec.layout.tag()
            ),
            "use layout = \"dense\" (pad the batch) for training",
        ));
    }
    if let ScoreMod::User(f) = &spec.score {
        if f.grad.is_none() {
            errs.push(SpecError::new(
                "score.grad",
                format!("the score function `{}` has no derivatives", f.name),
                "declare it with #[attnforge::score(backward)] (the DSL derives them) or give `grad`",
            ));
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs)
    }
}

/// Emit the three backward kernels of `spec` with `tile` for `arch`.
pub fn emit_backward(
    spec: &KernelSpec,
    tile: &BackwardTile,
    arch: Arch,
) -> Result<BackwardKernels, Vec<SpecError>> {
    backward_supported(spec)?;
    tile.valid(spec, arch)?;
    let b = spec.sparse_block;
    if spec.mask.uses_block_lists() && (b.q % tile.block_m != 0 || b.k % tile.block_n != 0) {
        return Err(vec![SpecError::new(
            "backward_tile",
            format!(
                "{} x {} tiles do not divide the {} x {} list blocks",
                tile.block_m, tile.block_n, b.q, b.k
            ),
            "use a backward tile that divides sparse_block (e.g. 32 x 32)",
        )]);
    }
    // the forward's lowering gives the schedule and hooks; its tile only has to be valid
    let fwd_tile = TileConfig::new(16, 32, 1, 1);
    let symbol = crate::name::canonical_name(spec);
    let ir = crate::ir::lower_with_symbol(spec, &fwd_tile, arch, symbol.clone())?;
    let kernel = |part: Part| {
        let name = format!("{symbol}_bwd_{}", part.tag());
        EmittedKernel {
            source: source(&ir, tile, mainloop(spec, tile), part, &name),
            metadata: crate::args::LaunchMetadata::new(spec, &fwd_tile, arch, &name),
            name,
        }
    };
    let param = param_layout(spec);
    Ok(BackwardKernels {
        delta: kernel(Part::Delta),
        dkdv: kernel(Part::DkDv),
        dq: kernel(Part::Dq),
        tile: *tile,
        param,
        head_dim: spec.head_dim.get(),
        branches: branches(spec),
        mainloop: mainloop(spec, tile),
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    Delta,
    DkDv,
    Dq,
}

impl Part {
    fn tag(self) -> &'static str {
        match self {
            Part::Delta => "delta",
            Part::DkDv => "dkdv",
            Part::Dq => "dq",
        }
    }
}

fn source(ir: &KernelIr, tile: &BackwardTile, ml: Mainloop, part: Part, name: &str) -> String {
    let tc = ml == Mainloop::TensorCore;
    let mut o = String::new();
    let _ = writeln!(o, "// attnforge generated backward kernel: {name}");
    let _ = writeln!(
        o,
        "// spec: {}",
        serde_json::to_string(&ir.spec).unwrap_or_default()
    );
    let _ = writeln!(
        o,
        "// backward tile: block_m={} block_n={} warps={}{} | {}\n// generated by attnforge-codegen; do not edit\n",
        tile.block_m,
        tile.block_n,
        tile.warps,
        if tile.atomic_dq { " atomic_dq" } else { "" },
        if tc {
            "mma.sync m16n8k16 (f32 accumulation)"
        } else {
            "f32 FMA arithmetic"
        }
    );
    // the tensor-core form uses the forward's fragment helpers (af_fwd_tc.cuh), not its kernel
    let mut files = emit::prelude_files(ml);
    files.retain(|(f, _)| *f != "af_fwd_fma.cuh");
    files.push(("af_bwd.cuh", BWD_CUH));
    if tc {
        files.push(("af_bwd_tc.cuh", BWD_TC_CUH));
    }
    let sfx = if tc { "_tc" } else { "" };
    emit::paste_files(&mut o, &files);
    let mut ir_fns = ir.clone();
    if let Some(g) = user_grad(&ir.spec) {
        ir_fns.device_fns.push(crate::ir::DeviceFn {
            text: g.cuda.clone(),
        });
    }
    emit::device_fns(&mut o, &ir_fns);
    let threads = match part {
        Part::Delta => DELTA_WARPS * 32,
        _ => tile.threads(),
    };
    let _ = writeln!(
        o,
        "extern \"C\" __global__ void __launch_bounds__({threads}, 1) {name}("
    );
    let grads = grad_args(&ir.spec);
    let all: Vec<&KernelArg> = ir.args.iter().chain(grads.iter().map(|(_, a)| a)).collect();
    emit::print_params(&mut o, &all);
    let _ = writeln!(
        o,
        "    using Tile = af_tile<{}, {}, {}, 1, {}>;  // block_m, block_n, warps, stages, head dim",
        tile.block_m, tile.block_n, tile.warps, ir.head_dim
    );
    emit::core_args(&mut o, ir);
    let names: Vec<&str> = grads[..GRAD_ARGS.len()]
        .iter()
        .map(|(_, a)| a.name.as_str())
        .collect();
    let _ = writeln!(
        o,
        "    const af_bwd_args<{}> grads = {{{}}};",
        ir.dtype.cuda(),
        names.join(", ")
    );
    match part {
        Part::Delta => {
            let _ = writeln!(
                o,
                "    af_bwd_delta<{DELTA_WARPS}, {}>(args, grads);\n}}",
                ir.head_dim
            );
        }
        Part::DkDv => {
            query_schedule(&mut o, ir);
            emit::block_hooks(&mut o, ir);
            grad_hooks(&mut o, ir);
            let dq = if tile.atomic_dq {
                ", af_bwd_dq_atomic{}"
            } else {
                ""
            };
            o.push_str(&format!(
                "    af_bwd_dkdv{sfx}<Tile>(args, grads, queries, block_hooks, grad_hooks, {}{dq});\n}}\n",
                emit::scoring(ir)
            ));
        }
        Part::Dq if tile.atomic_dq => {
            o.push_str("    af_bwd_dq_convert<Tile>(args, grads);\n}\n");
        }
        Part::Dq => {
            emit::schedule(&mut o, ir);
            emit::block_hooks(&mut o, ir);
            grad_hooks(&mut o, ir);
            let _ = writeln!(
                o,
                "    af_bwd_dq{sfx}<Tile>(args, grads, schedule, block_hooks, grad_hooks, {});\n}}",
                emit::scoring(ir)
            );
        }
    }
    o
}

/// The transposed schedule: the mask table's closed-form query range of a key tile, each
/// query tile classified by the forward's classifier.
fn query_schedule(o: &mut String, ir: &KernelIr) {
    let (lo, hi) = match (&ir.spec.mask, &ir.schedule) {
        (_, TileSchedule::Lists { block_q, block_k }) => {
            let names: Vec<String> = BlockListPart::ALL
                .iter()
                .map(|&p| GradArg::Transposed(p).name())
                .collect();
            let _ = writeln!(
                o,
                "    // transposed block lists: per key block, the full, then the partial query blocks\n    \
                 const af_block_list_queries<{block_q}, {block_k}> queries = {{\n        {}}};",
                names.join(", ")
            );
            return;
        }
        (Mask::Builtin(m), _) => m.def().query_range,
        _ => unreachable!("user masks are list-driven"),
    };
    let classify = match &ir.schedule {
        TileSchedule::Analytic {
            classifier: Some(c),
            ..
        } => format!(
            "[=](long long p_lo, long long p_hi, long long c0, long long c1) {{ return {c}; }}"
        ),
        _ => "af_all_full{}".to_string(),
    };
    let _ = writeln!(
        o,
        "    // query tiles [lo, hi) that may see a key of [c0, c1], each classified skip / full / partial\n    \
         const auto queries = af_queries(\n        \
         [=](long long c0, long long c1) -> long long {{ return {lo}; }},\n        \
         [=](long long c0, long long c1) -> long long {{ return {hi}; }},\n        \
         {classify});"
    );
}

/// The score modification's derivatives: `ds'/ds` and `ds'/dtheta` (table entries).
fn grad_hooks(o: &mut String, ir: &KernelIr) {
    if let ScoreMod::User(f) = &ir.spec.score {
        if let Some(g) = &f.grad {
            user_grad_hooks(o, f, g);
            return;
        }
    }
    let grad = ir.spec.score.def().and_then(|d| d.grad);
    let body = match grad {
        Some(g) => format!(
            "af_score_grad([=](float x, long long q_pos, long long kv_pos) {{ return {}; }},\n                             \
             [=](float x, long long q_pos, long long kv_pos) {{ return {}; }})",
            g.d_score, g.d_param
        ),
        None => "af_no_score_grad{}".to_string(),
    };
    let _ = writeln!(
        o,
        "    // per query head: ds'/ds and ds'/dtheta of the score modification\n    \
         const auto grad_hooks = [=](int b, int h) {{ return {body}; }};"
    );
}

/// A user score function's derivatives: `ds'/ds`, and every reference to a learnable
/// parameter adding `dS' ds'/dtheta` to the thread's theta row.
fn user_grad_hooks(o: &mut String, f: &crate::spec::UserFunction, g: &crate::spec::UserScoreGrad) {
    use crate::ir::user_call_as;
    let mut adds = String::new();
    for p in &g.params {
        let index = match &p.index {
            Some(i) => user_call_as(i, f, "us", "x, "),
            None => "0".to_string(),
        };
        let _ = write!(
            adds,
            "\n            af_theta_add(row, theta_offsets, {}, {index}, dsp * {});",
            p.param,
            user_call_as(&p.partial, f, "us", "x, ")
        );
    }
    let _ = writeln!(
        o,
        "    // per query head: ds'/ds and dS' ds'/dtheta into the thread's row of the learnable vector\n    \
         const auto grad_hooks = [=](int b, int h) {{\n        \
         return af_user_score_grad(\n            \
         [=](float x, long long q_pos, long long kv_pos) {{ return {}; }},\n            \
         [=](float* row, float dsp, float x, long long q_pos, long long kv_pos) {{{adds}\n            }},\n            \
         theta_len);\n    }};",
        user_call_as(&g.d_score, f, "us", "x, ")
    );
}
