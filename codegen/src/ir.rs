//! Lowering: `KernelSpec + TileConfig -> KernelIr`, a small tile IR of the one forward
//! skeleton with its hooks filled in. The emitter only prints it.
//!
//! The skeleton (per thread block: `block_m` query rows of one `(b, h)`), shared by both
//! mainloops ([`Mainloop::Fma`], [`Mainloop::TensorCore`]):
//! ```text
//! prologue hooks; load Q to shared
//! for each key tile in the schedule (analytic range + classifier, or block lists),
//! walked by one cursor (`next_tile`; the tensor-core path walks `stages - 1` tiles ahead
//! to prefetch K/V with cp.async, classifying each tile once for the visit that follows):
//!     count it; load K, V to shared
//!     S = Q K^T            (mainloop; two branches for LM-Infinite)
//!     S = score_mod(S)     (hook)
//!     mask partial tiles   (hook: element mask device function)
//!     online softmax; O += P V
//! epilogue: O / l, lse = ln(l) + m
//! ```
//!
//! ```
//! use attnforge_codegen::{ir::lower, spec::*, tile::{Arch, TileConfig}};
//! let spec = KernelSpec::new(DType::F16, HeadDim::D64, Mask::Causal, ScoreMod::None);
//! let ir = lower(&spec, &TileConfig::new(64, 64, 4, 1), Arch::Sm80).unwrap();
//! assert!(matches!(ir.schedule, attnforge_codegen::ir::TileSchedule::Analytic { .. }));
//! ```

use crate::args::{kernel_args, user_arg_name, KernelArg};
use crate::check::{validate_spec, SpecError};
use crate::masks::ScheduleKind;
use crate::spec::{DType, KernelSpec, Mask, ScoreMod, UserFunction, UserParamKind, UserSource};
use crate::tile::{Arch, SmemLayout, TileConfig};

/// The mainloop kinds (defined next to the tile config, which selects one).
pub use crate::tile::Mainloop;

/// Which key tiles a block visits and how each is classified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TileSchedule {
    /// Loop over key tiles in `[lo, hi)` (C expressions over `p_lo`, `p_hi`, `seq_k`),
    /// classifying each with `classifier` (a C expression over `p_lo, p_hi, c0, c1`;
    /// `None` means every in-range tile is full).
    Analytic {
        /// First key position that may be allowed.
        lo: String,
        /// One past the last key position that may be allowed.
        hi: String,
        /// Tile classifier call.
        classifier: Option<String>,
    },
    /// Runtime block lists (full then partial), `block_q x block_k` blocks split into
    /// kernel tiles.
    Lists {
        /// Query rows per list block.
        block_q: usize,
        /// Key columns per list block.
        block_k: usize,
    },
}

/// How a tile's raw scores are formed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scoring {
    /// `s = scale * dot(q, k)`.
    Dot,
    /// LM-Infinite: near branch with RoPE at true positions, far branch with the query
    /// rotated at `Deff` and the key un-rotated, merged per element.
    LmInfinite,
}

/// A user device function to paste before the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceFn {
    /// Full function text.
    pub text: String,
}

/// The lowered kernel.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelIr {
    /// CUDA symbol.
    pub symbol: String,
    /// The spec (for the header comment).
    pub spec: KernelSpec,
    /// The tile config.
    pub tile: TileConfig,
    /// Shared-memory layout.
    pub smem: SmemLayout,
    /// Element type.
    pub dtype: DType,
    /// Head dimension.
    pub head_dim: usize,
    /// Flat arguments.
    pub args: Vec<KernelArg>,
    /// Mainloop.
    pub mainloop: Mainloop,
    /// Tile schedule.
    pub schedule: TileSchedule,
    /// Score formation.
    pub scoring: Scoring,
    /// Per-block setup statements (e.g. the doc row of batch `b`).
    pub prologue: Vec<String>,
    /// Element mask: a C boolean expression over `b, h, q_pos, kv_pos` (partial tiles only).
    pub element_mask: Option<String>,
    /// Score modification: a C expression over `x` (the score) and `b, h, q_pos, kv_pos`.
    pub score_mod: Option<String>,
    /// User device functions.
    pub device_fns: Vec<DeviceFn>,
}

fn user_fn_text(f: &UserFunction, is_score: bool) -> String {
    match &f.source {
        UserSource::Function(t) => t.clone(),
        UserSource::Body(body) => {
            let mut sig = if is_score {
                format!("__device__ __forceinline__ float {}(float score, int b, int h, long long q_pos, long long kv_pos", f.name)
            } else {
                format!("__device__ __forceinline__ bool {}(int b, int h, long long q_pos, long long kv_pos", f.name)
            };
            for p in &f.params {
                sig.push_str(&format!(", {} {}", p.kind.device_type(), p.name));
            }
            format!("{sig}) {{\n{}\n}}", body.trim_end())
        }
    }
}

/// The C++ namespace user device functions are emitted in (called as `afu::<name>`), so that
/// no kernel argument or template local can shadow them.
pub const USER_NAMESPACE: &str = "afu";

fn user_call(f: &UserFunction, prefix: &str, lead: &str) -> String {
    user_call_as(&f.name, f, prefix, lead)
}

/// A call of device function `name` (in `afu`) with `f`'s signature: the derivatives of a
/// score function take its arguments.
pub(crate) fn user_call_as(name: &str, f: &UserFunction, prefix: &str, lead: &str) -> String {
    let mut s = format!("{USER_NAMESPACE}::{name}({lead}b, h, q_pos, kv_pos");
    for p in &f.params {
        let a = user_arg_name(prefix, &p.name);
        let e = match p.kind {
            UserParamKind::I32
            | UserParamKind::F32
            | UserParamKind::ArrayI32
            | UserParamKind::ArrayF32 => a,
            UserParamKind::U32 => format!("(unsigned){a}"),
            UserParamKind::Bool => format!("({a} != 0)"),
            UserParamKind::ArrayU32 => format!("(const unsigned*){a}"),
        };
        s.push_str(", ");
        s.push_str(&e);
    }
    s.push(')');
    s
}

/// Lower a spec and tile config (both validated first; every error is returned).
pub fn lower(spec: &KernelSpec, tile: &TileConfig, arch: Arch) -> Result<KernelIr, Vec<SpecError>> {
    lower_with_symbol(spec, tile, arch, crate::name::canonical_name(spec))
}

/// [`lower`] with an explicit CUDA symbol.
pub fn lower_with_symbol(
    spec: &KernelSpec,
    tile: &TileConfig,
    arch: Arch,
    symbol: String,
) -> Result<KernelIr, Vec<SpecError>> {
    let mut errs = validate_spec(spec).err().unwrap_or_default();
    if let Err(e) = tile.valid(spec, arch) {
        errs.extend(e);
    }
    if !spec.layout.is_dense() && Mainloop::select(spec, tile) == Mainloop::Wgmma {
        errs.push(SpecError::new(
            "tile.wgmma",
            format!(
                "layout `{}` runs on the mma.sync and FMA main loops; the warpgroup main loop reads dense tensors only",
                spec.layout.tag()
            ),
            "set wgmma = false in the tile (or use layout = \"dense\")",
        ));
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    let lists = TileSchedule::Lists {
        block_q: spec.sparse_block.q,
        block_k: spec.sparse_block.k,
    };
    let mut prologue = Vec::new();
    let mut device_fns = Vec::new();
    let (schedule, element_mask, scoring) = match &spec.mask {
        Mask::Builtin(m) => {
            let d = m.def();
            if d.reads_doc {
                prologue.push(if spec.layout.is_dense() {
                    "const int* doc_b = doc + (long long)b * doc_batch_stride;  // doc ids of batch b"
                } else {
                    // packed like the keys: sequence b's ids start at cu_seqlens_k[b]
                    "const int* doc_b = doc + cu_seqlens_k[b];  // doc ids of sequence b"
                }
                .to_string());
            }
            let params: Vec<&str> = d
                .params
                .iter()
                .filter(|p| p.in_predicate)
                .map(|p| p.name)
                .collect();
            let call = |f: &str, lead: &[&str]| {
                let args: Vec<&str> = lead.iter().copied().chain(params.iter().copied()).collect();
                format!("{f}({})", args.join(", "))
            };
            let schedule = match d.schedule {
                ScheduleKind::Analytic => TileSchedule::Analytic {
                    lo: d.key_range.0.to_string(),
                    hi: d.key_range.1.to_string(),
                    classifier: d.tile_fn.map(|f| call(f, &["p_lo", "p_hi", "c0", "c1"])),
                },
                ScheduleKind::BlockLists => lists,
            };
            let lead: &[&str] = if d.reads_doc {
                &["doc_b", "q_pos", "kv_pos"]
            } else {
                &["q_pos", "kv_pos"]
            };
            let scoring = if d.lm_infinite_scoring {
                Scoring::LmInfinite
            } else {
                Scoring::Dot
            };
            (schedule, d.element_fn.map(|f| call(f, lead)), scoring)
        }
        Mask::Predicate(f) | Mask::BlockSparse { mask: Some(f) } => {
            device_fns.push(DeviceFn {
                text: user_fn_text(f, false),
            });
            (lists, Some(user_call(f, "um", "")), Scoring::Dot)
        }
        Mask::BlockSparse { mask: None } => (lists, None, Scoring::Dot),
    };
    let score_mod = match &spec.score {
        ScoreMod::User(f) => {
            device_fns.push(DeviceFn {
                text: user_fn_text(f, true),
            });
            Some(user_call(f, "us", "x, "))
        }
        builtin => builtin
            .def()
            .and_then(|d| d.lowering(spec.dtype))
            .map(|(expr, pro)| {
                prologue.extend(pro.iter().map(|l| l.to_string()));
                expr.to_string()
            }),
    };
    Ok(KernelIr {
        symbol,
        spec: spec.clone(),
        tile: *tile,
        smem: SmemLayout::new(spec, tile),
        dtype: spec.dtype,
        head_dim: spec.head_dim.get(),
        args: kernel_args(spec),
        mainloop: Mainloop::select(spec, tile),
        schedule,
        scoring,
        prologue,
        element_mask,
        score_mod,
        device_fns,
    })
}
