//! The flat kernel argument list, launch geometry and launch metadata.
//!
//! One list ([`kernel_args`]) drives the CUDA signature, the CUDA launch, the simulator
//! launch and the metadata JSON. Layout (in this order):
//!
//! 1. tensors: `q`, `k`, `v` (`const T*`), `o` (`T*`), `lse` (`float*`, `[B, Hq, Sq]`
//!    contiguous, natural log; may be null to skip it)
//! 2. shapes (`int`): `batch`, `heads_q`, `heads_kv`, `seq_q`, `seq_k`
//! 3. strides in elements (`long long`): `q_stride_b`, `q_stride_h`, `q_stride_s`, then the
//!    same for `k`, `v`, `o` (the head dimension is contiguous)
//! 4. `scale` (`float`), then the serving layout's arguments ([`crate::spec::Layout`]):
//!    varlen `cu_seqlens_q`, `cu_seqlens_k` (`const int*`, `[B + 1]`); paged `cu_seqlens_q`,
//!    `block_table` (`const int*`, `[B, max_pages]`), `seqlens_k` (`const int*`, `[B]`),
//!    `max_pages`, `page_size` (`int`). Under both, `seq_q` / `seq_k` are the packed row
//!    counts `Tq` / `Tk` (paged: `num_pages * page_size`) and the batch strides are unused
//! 5. mask arguments: `doc` (`const int*`) and `doc_batch_stride` (`long long`) when the
//!    mask reads document ids, then the table's parameters ([`crate::masks::MaskDef::params`],
//!    `int` or `float`, same names); user parameters as `um_<name>`; block
//!    lists as `blk_full_num`, `blk_full_idx`, `blk_partial_num`, `blk_partial_idx`
//!    (`const int*`) and `blk_batches`, `blk_heads`, `blk_rows`, `blk_width` (`int`)
//! 6. score arguments: the score table's parameter ([`crate::scores::ScoreDef::param`]:
//!    `softcap` (`float`) or `alibi_slopes` (`const float*`)) or the user score parameters
//!    as `us_<name>`
//! 7. with statistics outputs ([`crate::spec::StatsSpec`]): `stats_partial` (`float*`,
//!    `[B, Hq, ceil(Sq / block_m), Sk]`), read by the follow-up kernel ([`stats_reduce_args`])
//!
//! ```
//! use attnforge_codegen::{args::kernel_args, spec::*};
//! let spec = KernelSpec::new(DType::F16, HeadDim::D64, Mask::Local, ScoreMod::Softcap);
//! let names: Vec<_> = kernel_args(&spec).into_iter().map(|a| a.name).collect();
//! assert_eq!(names[0], "q");
//! assert!(names.contains(&"window_left".to_string()) && names.last().unwrap() == "softcap");
//! ```

use serde::{Deserialize, Serialize};

use crate::masks::{BuiltinMask, ParamType};
use crate::scores::ScoreParamKind;
use crate::spec::{DType, KernelSpec, Layout, Mask, ScoreMod, UserFunction, UserParamKind};
use crate::tile::{Arch, TileConfig};

/// Element type behind a pointer argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Elem {
    /// `__half`.
    F16,
    /// `__nv_bfloat16`.
    Bf16,
    /// `float`.
    F32,
    /// `int`.
    I32,
    /// `long long`.
    I64,
}

impl Elem {
    fn c(self) -> &'static str {
        match self {
            Elem::F16 => "__half",
            Elem::Bf16 => "__nv_bfloat16",
            Elem::F32 => "float",
            Elem::I32 => "int",
            Elem::I64 => "long long",
        }
    }
    pub(crate) fn of(d: DType) -> Elem {
        match d {
            DType::F16 => Elem::F16,
            DType::Bf16 => Elem::Bf16,
            DType::F32 => Elem::F32,
        }
    }
    /// Size in bytes.
    pub fn bytes(self) -> usize {
        match self {
            Elem::F16 | Elem::Bf16 => 2,
            Elem::F32 | Elem::I32 => 4,
            Elem::I64 => 8,
        }
    }
}

/// Scalar argument type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scalar {
    /// `int`.
    I32,
    /// `long long`.
    I64,
    /// `float`.
    F32,
}

/// Kind of a kernel argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArgKind {
    /// A device pointer (`const` unless `mutable`).
    Ptr {
        /// Pointee type.
        elem: Elem,
        /// Written by the kernel.
        mutable: bool,
    },
    /// A scalar passed by value.
    Scalar(Scalar),
}

impl ArgKind {
    /// The C type in the signature (`const __half*`, `float*`, `int`, `long long`, ...).
    pub fn c_type(&self) -> String {
        match self {
            ArgKind::Ptr {
                elem,
                mutable: false,
            } => format!("const {}*", elem.c()),
            ArgKind::Ptr {
                elem,
                mutable: true,
            } => format!("{}*", elem.c()),
            ArgKind::Scalar(Scalar::I32) => "int".into(),
            ArgKind::Scalar(Scalar::I64) => "long long".into(),
            ArgKind::Scalar(Scalar::F32) => "float".into(),
        }
    }
    /// Bytes of the argument value (8 for pointers).
    pub fn value_bytes(&self) -> usize {
        match self {
            ArgKind::Ptr { .. } | ArgKind::Scalar(Scalar::I64) => 8,
            ArgKind::Scalar(_) => 4,
        }
    }
}

/// One kernel argument.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KernelArg {
    /// Parameter name in the CUDA signature.
    pub name: String,
    /// Its type.
    pub kind: ArgKind,
}

fn arg(name: impl Into<String>, kind: ArgKind) -> KernelArg {
    KernelArg {
        name: name.into(),
        kind,
    }
}
const INT: ArgKind = ArgKind::Scalar(Scalar::I32);
const I64: ArgKind = ArgKind::Scalar(Scalar::I64);
const FLOAT: ArgKind = ArgKind::Scalar(Scalar::F32);
const CINT_PTR: ArgKind = ArgKind::Ptr {
    elem: Elem::I32,
    mutable: false,
};
const CFLOAT_PTR: ArgKind = ArgKind::Ptr {
    elem: Elem::F32,
    mutable: false,
};
const FLOAT_PTR: ArgKind = ArgKind::Ptr {
    elem: Elem::F32,
    mutable: true,
};

/// Kernel-argument name of a user parameter: `um_<name>` (mask) or `us_<name>` (score).
pub fn user_arg_name(prefix: &str, param: &str) -> String {
    format!("{prefix}_{param}")
}

/// ABI kind of a user parameter (u32/bool travel as `int`, u32 arrays as `const int*`).
pub fn user_param_abi(kind: UserParamKind) -> ArgKind {
    match kind {
        UserParamKind::I32 | UserParamKind::U32 | UserParamKind::Bool => INT,
        UserParamKind::F32 => FLOAT,
        UserParamKind::ArrayI32 | UserParamKind::ArrayU32 => CINT_PTR,
        UserParamKind::ArrayF32 => CFLOAT_PTR,
    }
}

/// ABI kind of a built-in mask parameter.
fn param_abi(t: ParamType) -> ArgKind {
    match t {
        ParamType::Int => INT,
        ParamType::Float => FLOAT,
    }
}

/// Names of the block-list arguments, in order.
pub const BLOCK_LIST_ARGS: [&str; 8] = [
    "blk_full_num",
    "blk_full_idx",
    "blk_partial_num",
    "blk_partial_idx",
    "blk_batches",
    "blk_heads",
    "blk_rows",
    "blk_width",
];

/// A tensor argument (and the tensor a stride belongs to).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TensorArg {
    /// Queries.
    Q,
    /// Keys.
    K,
    /// Values.
    V,
    /// Output.
    O,
    /// Log-sum-exp output.
    Lse,
}

/// A problem size argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SizeArg {
    /// `B`.
    Batch,
    /// `Hq`.
    HeadsQ,
    /// `Hkv`.
    HeadsKv,
    /// `Sq`.
    SeqQ,
    /// `Sk`.
    SeqK,
}

/// The dimension of a stride argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StrideDim {
    /// Batch stride.
    Batch,
    /// Head stride.
    Head,
    /// Sequence (row) stride.
    Seq,
}

/// A part of the runtime block lists (in [`BLOCK_LIST_ARGS`] order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockListPart {
    /// Full-block counts.
    FullNum,
    /// Full-block indices.
    FullIdx,
    /// Partial-block counts.
    PartialNum,
    /// Partial-block indices.
    PartialIdx,
    /// Batch extent.
    Batches,
    /// Head extent.
    Heads,
    /// Query-block rows.
    Rows,
    /// Index row width.
    Width,
}

impl BlockListPart {
    /// Every part, in [`BLOCK_LIST_ARGS`] order.
    pub const ALL: [BlockListPart; 8] = [
        BlockListPart::FullNum,
        BlockListPart::FullIdx,
        BlockListPart::PartialNum,
        BlockListPart::PartialIdx,
        BlockListPart::Batches,
        BlockListPart::Heads,
        BlockListPart::Rows,
        BlockListPart::Width,
    ];
    /// An `int` extent (the others are `const int*` arrays).
    pub fn is_count(self) -> bool {
        matches!(
            self,
            BlockListPart::Batches
                | BlockListPart::Heads
                | BlockListPart::Rows
                | BlockListPart::Width
        )
    }
}

/// An argument of a serving layout (variants.md section 13).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServingArg {
    /// `cu_seqlens_q: [B + 1]` query offsets.
    CuSeqlensQ,
    /// `cu_seqlens_k: [B + 1]` key offsets (varlen).
    CuSeqlensK,
    /// `block_table: [B, max_pages]` page indices (paged).
    BlockTable,
    /// `seqlens_k: [B]` key lengths (paged).
    SeqlensK,
    /// Row width of `block_table` (paged).
    MaxPages,
    /// Keys per page, a power of two from 1 to 1024 (paged).
    PageSize,
    /// Key splits per sequence (decode), `>= 1`; 1 writes `o`, `lse` directly.
    NumSplits,
    /// `o_part: [num_splits, Tq, Hq, D]` f32 partial outputs (decode; unread when
    /// `num_splits = 1`, may be null then).
    OutPartial,
    /// `lse_part: [num_splits, Hq, Tq]` f32 partial lse (decode; null when `num_splits = 1`).
    LsePartial,
}

/// An argument of the statistics outputs (variants.md section 14): the forward kernel's
/// per-query-block key sums and the follow-up kernel's outputs and parameters
/// ([`stats_reduce_args`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatsArg {
    /// `stats_partial: [B, Hq, ceil(Sq / block_m), Sk]` f32: written by the forward kernel,
    /// read by the follow-up kernel.
    Partial,
    /// `key_mass: [B, Hq, Sk]` f32 output.
    KeyMass,
    /// `key_score: [B, Hkv, Sk]` f32 output.
    KeyScore,
    /// `key_score` before the max-pool, `[B, Hkv, Sk]` f32 scratch.
    ScoreRaw,
    /// `top_keys: [B, Hkv, top_k]` int32 output.
    TopKeys,
    /// Query blocks per (batch, head): `ceil(Sq / block_m)` of the forward kernel.
    QBlocks,
    /// 1: `key_score` is the max over the group, 0: the sum.
    ReduceMax,
    /// Odd max-pool width (1: none).
    Pool,
    /// Entries of `top_keys` per kv head (0: none).
    TopK,
}

/// Which user function a user parameter belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserFnSide {
    /// The mask predicate (`um_` arguments).
    Mask,
    /// The score function (`us_` arguments).
    Score,
}

/// What a kernel argument carries: the host side fills arguments by an exhaustive match on
/// it, never by their names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArgRole {
    /// A tensor pointer.
    Tensor(TensorArg),
    /// A problem size.
    Size(SizeArg),
    /// A stride (elements) of a tensor.
    Stride {
        /// The tensor.
        tensor: TensorArg,
        /// The dimension.
        dim: StrideDim,
    },
    /// The softmax scale.
    Scale,
    /// Per-token document ids.
    DocIds,
    /// Batch stride of the document ids (0: shared by every batch).
    DocBatchStride,
    /// Parameter `index` of a built-in mask's table entry.
    MaskParam {
        /// The mask.
        mask: BuiltinMask,
        /// Index into its [`crate::masks::MaskDef::params`].
        index: usize,
    },
    /// A part of the runtime block lists.
    BlockList(BlockListPart),
    /// The parameter of the built-in score modification ([`crate::scores::ScoreDef::param`]).
    ScoreParam,
    /// An argument of the serving layout.
    Serving(ServingArg),
    /// An argument of the statistics outputs.
    Stats(StatsArg),
    /// Parameter `index` of a user function.
    UserParam {
        /// Mask or score function.
        side: UserFnSide,
        /// Index into its [`UserFunction::params`].
        index: usize,
    },
}

/// A kernel argument with its role.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TypedArg {
    /// Name and C type.
    pub arg: KernelArg,
    /// What it carries.
    pub role: ArgRole,
}

/// The flat argument list of the kernel for `spec` (see the module docs for the layout).
pub fn kernel_args(spec: &KernelSpec) -> Vec<KernelArg> {
    typed_kernel_args(spec).into_iter().map(|t| t.arg).collect()
}

/// [`kernel_args`] with each argument's [`ArgRole`].
pub fn typed_kernel_args(spec: &KernelSpec) -> Vec<TypedArg> {
    let t = Elem::of(spec.dtype);
    let mut v = Vec::new();
    let mut push = |name: String, kind: ArgKind, role: ArgRole| {
        v.push(TypedArg {
            arg: arg(name, kind),
            role,
        })
    };
    core_args(t, &mut push);
    for &(name, a) in serving_args(spec.layout) {
        let kind = match a {
            ServingArg::MaxPages | ServingArg::PageSize | ServingArg::NumSplits => INT,
            ServingArg::OutPartial | ServingArg::LsePartial => FLOAT_PTR,
            ServingArg::CuSeqlensQ
            | ServingArg::CuSeqlensK
            | ServingArg::BlockTable
            | ServingArg::SeqlensK => CINT_PTR,
        };
        push(name.into(), kind, ArgRole::Serving(a));
    }
    let user = |push: &mut dyn FnMut(String, ArgKind, ArgRole), side, f: &UserFunction| {
        let prefix = match side {
            UserFnSide::Mask => "um",
            UserFnSide::Score => "us",
        };
        for (index, p) in f.params.iter().enumerate() {
            push(
                user_arg_name(prefix, &p.name),
                user_param_abi(p.kind),
                ArgRole::UserParam { side, index },
            );
        }
    };
    match &spec.mask {
        Mask::Builtin(m) => {
            let d = m.def();
            if d.reads_doc {
                push("doc".into(), CINT_PTR, ArgRole::DocIds);
                push("doc_batch_stride".into(), I64, ArgRole::DocBatchStride);
            }
            for (index, p) in d.params.iter().enumerate() {
                push(
                    p.name.into(),
                    param_abi(p.ty),
                    ArgRole::MaskParam { mask: *m, index },
                );
            }
        }
        Mask::Predicate(f) | Mask::BlockSparse { mask: Some(f) } => {
            user(&mut push, UserFnSide::Mask, f)
        }
        Mask::BlockSparse { mask: None } => {}
    }
    if spec.mask.uses_block_lists() {
        for (n, part) in BLOCK_LIST_ARGS.iter().zip(BlockListPart::ALL) {
            let kind = if part.is_count() { INT } else { CINT_PTR };
            push((*n).into(), kind, ArgRole::BlockList(part));
        }
    }
    match &spec.score {
        ScoreMod::User(f) => user(&mut push, UserFnSide::Score, f),
        builtin => {
            if let Some(p) = builtin.def().and_then(|d| d.param) {
                let kind = match p.kind {
                    ScoreParamKind::Scalar => FLOAT,
                    ScoreParamKind::PerHead => CFLOAT_PTR,
                };
                push(p.name.into(), kind, ArgRole::ScoreParam);
            }
        }
    }
    if spec.stats.is_some() {
        // last, so every other argument keeps its place with and without statistics
        push(
            "stats_partial".into(),
            F32_OUT,
            ArgRole::Stats(StatsArg::Partial),
        );
    }
    v
}

/// The arguments every static kernel starts with: q, k, v, o, lse, the sizes, the strides of
/// the four tensors and the softmax scale.
fn core_args(t: Elem, push: &mut dyn FnMut(String, ArgKind, ArgRole)) {
    let tensors = [
        ("q", TensorArg::Q),
        ("k", TensorArg::K),
        ("v", TensorArg::V),
        ("o", TensorArg::O),
    ];
    for (name, tensor) in tensors {
        let kind = ArgKind::Ptr {
            elem: t,
            mutable: tensor == TensorArg::O,
        };
        push(name.into(), kind, ArgRole::Tensor(tensor));
    }
    let lse = ArgKind::Ptr {
        elem: Elem::F32,
        mutable: true,
    };
    push("lse".into(), lse, ArgRole::Tensor(TensorArg::Lse));
    for (n, size) in [
        ("batch", SizeArg::Batch),
        ("heads_q", SizeArg::HeadsQ),
        ("heads_kv", SizeArg::HeadsKv),
        ("seq_q", SizeArg::SeqQ),
        ("seq_k", SizeArg::SeqK),
    ] {
        push(n.into(), INT, ArgRole::Size(size));
    }
    for (name, tensor) in tensors {
        for (s, dim) in [
            ("b", StrideDim::Batch),
            ("h", StrideDim::Head),
            ("s", StrideDim::Seq),
        ] {
            push(
                format!("{name}_stride_{s}"),
                I64,
                ArgRole::Stride { tensor, dim },
            );
        }
    }
    push("scale".into(), FLOAT, ArgRole::Scale);
}

const F32_OUT: ArgKind = ArgKind::Ptr {
    elem: Elem::F32,
    mutable: true,
};

/// The arguments of the statistics follow-up kernel (`cuda/af_stats.cuh`, the fields of
/// `af_stats_args` in order).
pub fn stats_reduce_args() -> Vec<TypedArg> {
    let f32_out = F32_OUT;
    let i32_out = ArgKind::Ptr {
        elem: Elem::I32,
        mutable: true,
    };
    let t = |name: &str, kind: ArgKind, role: ArgRole| TypedArg {
        arg: arg(name, kind),
        role,
    };
    use StatsArg as S;
    vec![
        t("partial", CFLOAT_PTR, ArgRole::Stats(S::Partial)),
        t("key_mass", f32_out, ArgRole::Stats(S::KeyMass)),
        t("key_score", f32_out, ArgRole::Stats(S::KeyScore)),
        t("raw", f32_out, ArgRole::Stats(S::ScoreRaw)),
        t("top_keys", i32_out, ArgRole::Stats(S::TopKeys)),
        t("batch", INT, ArgRole::Size(SizeArg::Batch)),
        t("heads_q", INT, ArgRole::Size(SizeArg::HeadsQ)),
        t("heads_kv", INT, ArgRole::Size(SizeArg::HeadsKv)),
        t("seq_k", INT, ArgRole::Size(SizeArg::SeqK)),
        t("qblocks", INT, ArgRole::Stats(S::QBlocks)),
        t("reduce_max", INT, ArgRole::Stats(S::ReduceMax)),
        t("pool", INT, ArgRole::Stats(S::Pool)),
        t("top_k", INT, ArgRole::Stats(S::TopK)),
    ]
}

/// The serving arguments of a layout, in kernel order, with their names.
pub fn serving_args(layout: Layout) -> &'static [(&'static str, ServingArg)] {
    match layout {
        Layout::Dense => &[],
        Layout::Varlen => &[
            ("cu_seqlens_q", ServingArg::CuSeqlensQ),
            ("cu_seqlens_k", ServingArg::CuSeqlensK),
        ],
        Layout::Paged => &[
            ("cu_seqlens_q", ServingArg::CuSeqlensQ),
            ("block_table", ServingArg::BlockTable),
            ("seqlens_k", ServingArg::SeqlensK),
            ("max_pages", ServingArg::MaxPages),
            ("page_size", ServingArg::PageSize),
        ],
        Layout::Decode => &[
            ("cu_seqlens_q", ServingArg::CuSeqlensQ),
            ("block_table", ServingArg::BlockTable),
            ("seqlens_k", ServingArg::SeqlensK),
            ("max_pages", ServingArg::MaxPages),
            ("page_size", ServingArg::PageSize),
            ("num_splits", ServingArg::NumSplits),
            ("o_part", ServingArg::OutPartial),
            ("lse_part", ServingArg::LsePartial),
        ],
        Layout::DecodeVarlen => &[
            ("cu_seqlens_q", ServingArg::CuSeqlensQ),
            ("cu_seqlens_k", ServingArg::CuSeqlensK),
            ("num_splits", ServingArg::NumSplits),
            ("o_part", ServingArg::OutPartial),
            ("lse_part", ServingArg::LsePartial),
        ],
    }
}

/// Grid, block and dynamic shared memory of one launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchGeometry {
    /// `[ceil(seq_q / block_m), heads_q, batch]`.
    pub grid: [u32; 3],
    /// `[warps * 32, 1, 1]`.
    pub block: [u32; 3],
    /// Dynamic shared memory bytes (set `MaxDynamicSharedMemorySize` when above 48 KiB).
    pub dynamic_smem_bytes: u32,
}

impl LaunchGeometry {
    /// Geometry for a problem of `batch x heads_q x seq_q` queries.
    pub fn new(
        spec: &KernelSpec,
        tile: &TileConfig,
        batch: usize,
        heads_q: usize,
        seq_q: usize,
    ) -> Self {
        LaunchGeometry {
            grid: [
                seq_q.div_ceil(tile.block_m.max(1)) as u32,
                heads_q as u32,
                batch as u32,
            ],
            block: [tile.threads() as u32, 1, 1],
            dynamic_smem_bytes: tile.smem_bytes(spec) as u32,
        }
    }

    /// Geometry of a decode launch ([`Layout::Decode`]): per sequence and kv head, the
    /// `heads_q / heads_kv * max_seq_q` packed rows in blocks of `block_m`, times the splits.
    pub fn decode(
        spec: &KernelSpec,
        tile: &TileConfig,
        batch: usize,
        (heads_q, heads_kv): (usize, usize),
        max_seq_q: usize,
        num_splits: usize,
    ) -> Self {
        let rows = heads_q / heads_kv.max(1) * max_seq_q;
        LaunchGeometry {
            grid: [
                (rows.div_ceil(tile.block_m.max(1)) * num_splits) as u32,
                heads_kv as u32,
                batch as u32,
            ],
            block: [tile.threads() as u32, 1, 1],
            dynamic_smem_bytes: tile.smem_bytes(spec) as u32,
        }
    }
}

/// Launch metadata written next to an emitted `.cu` (JSON), enough to launch the kernel
/// from PyTorch/CuPy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LaunchMetadata {
    /// CUDA symbol.
    pub kernel_name: String,
    /// The spec.
    pub spec: KernelSpec,
    /// The tile config.
    pub tile: TileConfig,
    /// Target architecture the config was validated for.
    pub arch: Arch,
    /// Arguments in order.
    pub args: Vec<KernelArg>,
    /// Grid formula, `[x, y, z]` as text over `batch`, `heads_q`, `seq_q`, `block_m`.
    pub grid: [String; 3],
    /// Query rows per block (`block_m`) used by the grid formula.
    pub block_m: usize,
    /// Threads per block (`warps * 32`).
    pub block_threads: usize,
    /// Dynamic shared memory bytes.
    pub dynamic_smem_bytes: usize,
    /// Whether the launcher must raise `MaxDynamicSharedMemorySize` (above 48 KiB).
    pub needs_smem_opt_in: bool,
    /// Block-list block size (query rows, key columns) when the mask uses lists.
    pub block_lists: Option<[usize; 2]>,
    /// Default scale to pass as `scale`.
    pub default_scale: f32,
    /// Layout preconditions of the pointer arguments, as sentences (what a raw launcher must
    /// guarantee; `attnforge_runtime::exec` always does).
    #[serde(default)]
    pub requirements: Vec<String>,
}

impl LaunchMetadata {
    /// Metadata for `spec` compiled with `tile` under `symbol`.
    pub fn new(spec: &KernelSpec, tile: &TileConfig, arch: Arch, symbol: &str) -> Self {
        let smem = tile.smem_bytes(spec);
        LaunchMetadata {
            kernel_name: symbol.to_string(),
            spec: spec.clone(),
            tile: *tile,
            arch,
            args: kernel_args(spec),
            grid: match spec.layout {
                Layout::Dense => [
                    "ceil(seq_q / block_m)".into(),
                    "heads_q".into(),
                    "batch".into(),
                ],
                Layout::Varlen | Layout::Paged => [
                    "ceil(max_seqlen_q / block_m)".into(),
                    "heads_q".into(),
                    "batch".into(),
                ],
                Layout::Decode | Layout::DecodeVarlen => [
                    "num_splits * ceil(heads_q / heads_kv * max_seqlen_q / block_m)".into(),
                    "heads_kv".into(),
                    "batch".into(),
                ],
            },
            block_m: tile.block_m,
            block_threads: tile.threads(),
            dynamic_smem_bytes: smem,
            needs_smem_opt_in: smem > arch.smem_without_opt_in(),
            block_lists: spec
                .mask
                .uses_block_lists()
                .then_some([spec.sparse_block.q, spec.sparse_block.k]),
            default_scale: spec.effective_scale(),
            requirements: requirements(spec, tile),
        }
    }
}

/// The layout preconditions of a kernel's pointer arguments.
fn requirements(spec: &KernelSpec, tile: &TileConfig) -> Vec<String> {
    let mut r = vec![
        "q, k, v, o: the head dimension is contiguous (element stride 1); the other strides are free".to_owned(),
    ];
    match spec.layout {
        Layout::Dense => {}
        Layout::Varlen => r.push(
            "varlen: q, o packed [Tq, Hq, D], k, v [Tk, Hkv, D]; pass seq_q = Tq, seq_k = Tk, \
             *_stride_b = 0, *_stride_h = D, *_stride_s = heads * D; lse is [Hq, Tq]; \
             cu_seqlens_q, cu_seqlens_k: [B + 1] int32, checked on the host first \
             (attnforge_codegen::serving::validate_serving); grid (ceil(max_b Sq_b / block_m), Hq, B)"
                .to_owned(),
        ),
        Layout::Paged => r.push(
            "paged: q, o packed [Tq, Hq, D] with cu_seqlens_q [B + 1]; k, v caches \
             [num_pages, page_size, Hkv, D]: pass seq_k = num_pages * page_size, *_stride_b = 0, \
             *_stride_h = D, *_stride_s = heads * D; block_table [B, max_pages] and seqlens_k [B] \
             int32, page_size a power of two in 1..=1024, checked on the host first \
             (attnforge_codegen::serving::validate_serving); lse is [Hq, Tq]; grid \
             (ceil(max_b Sq_b / block_m), Hq, B)"
                .to_owned(),
        ),
        Layout::Decode => r.push(
            "decode: the paged arrays as above (1..=16 query tokens per sequence); num_splits >= 1 \
             (attnforge_codegen::serving::decode_splits chooses it); num_splits > 1: o_part \
             [num_splits, Tq, Hq, D] and lse_part [num_splits, Hq, Tq] f32 scratch, then launch the \
             merge kernel (af_split_merge_*) on them to write o, lse; num_splits = 1 writes o, lse \
             directly (o_part, lse_part may be null); grid (num_splits * ceil(Hq / Hkv * max_b Sq_b \
             / block_m), Hkv, B)"
                .to_owned(),
        ),
        Layout::DecodeVarlen => r.push(
            "decode_varlen: the varlen arrays and packed k, v as above (1..=16 query tokens per \
             sequence), then num_splits, o_part, lse_part and the merge kernel as for decode; grid \
             (num_splits * ceil(Hq / Hkv * max_b Sq_b / block_m), Hkv, B)"
                .to_owned(),
        ),
    }
    if matches!(
        crate::tile::Mainloop::select(spec, tile),
        crate::tile::Mainloop::TensorCore | crate::tile::Mainloop::Wgmma
    ) {
        r.push(
            "o: rows 4-byte aligned (even o_stride_s, 4-byte aligned base): O is stored as packed \
             16-bit pairs; the kernel traps otherwise"
                .to_owned(),
        );
        r.push(
            "q, k, v: rows 16-byte aligned (row strides multiples of 8 elements, 16-byte aligned \
             bases) take the cp.async path; other layouts are correct but copied element by element"
                .to_owned(),
        );
    }
    r
}
