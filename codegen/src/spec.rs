//! Kernel specification: *what* a kernel computes (serde, no tuning choices).
//!
//! A [`KernelSpec`] fixes everything that is compiled into the kernel (dtype, head dim,
//! mask kind, score modification). Every numeric parameter of a mask or score function
//! (window sizes, prefix length, `G`/`L`/`Dlim`, doc-id arrays, ALiBi slopes, block lists,
//! user parameters, the softmax scale) is a *kernel argument*: changing it never recompiles.
//!
//! ```
//! use attnforge_codegen::spec::{DType, HeadDim, KernelSpec, Mask, ScoreMod};
//! let spec = KernelSpec::new(DType::Bf16, HeadDim::D128, Mask::Causal, ScoreMod::None);
//! assert_eq!(spec.canonical_name(), "flash_fwd_causal_d128_bf16");
//! ```

use serde::{Deserialize, Serialize};

pub use crate::masks::BuiltinMask;
use crate::masks::{MaskDef, ScheduleKind};

/// Element type of q, k, v and o. Accumulation is always f32; lse is always f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DType {
    /// IEEE half (`__half`).
    F16,
    /// bfloat16 (`__nv_bfloat16`).
    Bf16,
    /// single precision (`float`).
    F32,
}

impl DType {
    /// Short lower-case name used in canonical names (`f16`, `bf16`, `f32`).
    pub fn short(self) -> &'static str {
        match self {
            DType::F16 => "f16",
            DType::Bf16 => "bf16",
            DType::F32 => "f32",
        }
    }
    /// CUDA element type.
    pub fn cuda(self) -> &'static str {
        match self {
            DType::F16 => "__half",
            DType::Bf16 => "__nv_bfloat16",
            DType::F32 => "float",
        }
    }
    /// Bytes per element.
    pub fn bytes(self) -> usize {
        match self {
            DType::F16 | DType::Bf16 => 2,
            DType::F32 => 4,
        }
    }
}

/// Head dimension `D` (the value head dimension `Dv` equals `D`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HeadDim {
    /// D = 64.
    #[serde(rename = "64")]
    D64,
    /// D = 128.
    #[serde(rename = "128")]
    D128,
    /// D = 256.
    #[serde(rename = "256")]
    D256,
}

impl HeadDim {
    /// The dimension as a number.
    pub fn get(self) -> usize {
        match self {
            HeadDim::D64 => 64,
            HeadDim::D128 => 128,
            HeadDim::D256 => 256,
        }
    }
}

/// Kind of a user-function parameter. Scalars travel as `int`/`float` kernel arguments
/// (u32 and bool reinterpreted from `int`), arrays as `const int*` / `const float*`
/// (u32 arrays reinterpreted); the device function sees the natural C type
/// (`int`, `unsigned`, `float`, `bool`, `const int*`, `const unsigned*`, `const float*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserParamKind {
    /// `int`.
    I32,
    /// `unsigned`.
    U32,
    /// `float`.
    F32,
    /// `bool`.
    Bool,
    /// `const int*` (read-only device array).
    ArrayI32,
    /// `const unsigned*` (read-only device array).
    ArrayU32,
    /// `const float*` (read-only device array).
    ArrayF32,
}

impl UserParamKind {
    /// The C type the user device function receives.
    pub fn device_type(self) -> &'static str {
        match self {
            UserParamKind::I32 => "int",
            UserParamKind::U32 => "unsigned",
            UserParamKind::F32 => "float",
            UserParamKind::Bool => "bool",
            UserParamKind::ArrayI32 => "const int*",
            UserParamKind::ArrayU32 => "const unsigned*",
            UserParamKind::ArrayF32 => "const float*",
        }
    }
}

/// One parameter of a user mask or score function.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserParam {
    /// C identifier (lower-case ASCII, digits, `_`).
    pub name: String,
    /// Its type.
    pub kind: UserParamKind,
}

/// Source of a user device function.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserSource {
    /// Only the body (statements between the braces); codegen writes the signature.
    Body(String),
    /// The complete `__device__` function text; it must define a function called `name`
    /// with the documented signature.
    Function(String),
}

/// A user mask predicate or score function given as CUDA device code.
///
/// Signatures (the device function is called with these arguments, in this order):
/// - mask:  `__device__ bool NAME(int b, int h, long long q_pos, long long kv_pos, PARAMS...)`
/// - score: `__device__ float NAME(float score, int b, int h, long long q_pos, long long kv_pos, PARAMS...)`
///
/// `q_pos`/`kv_pos` are absolute positions (query row `i` sits at `i + Sk - Sq`), `h` is
/// the query head, `score` is `scale * dot(q, k)`. Parameters follow in the declared order
/// with the C types of [`UserParamKind::device_type`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserFunction {
    /// Function name: a lower-case C identifier; it also appears in the canonical name.
    pub name: String,
    /// The CUDA code.
    pub source: UserSource,
    /// Runtime parameters (kernel arguments).
    #[serde(default)]
    pub params: Vec<UserParam>,
    /// A score function's derivatives for the backward kernels (`None`: no backward).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad: Option<UserScoreGrad>,
}

/// The derivatives of a user score function as CUDA device functions, each with the score
/// function's own signature (what `#[attnforge::score(backward)]` emits as `BACKWARD_CUDA`,
/// or written by hand): `ds'/ds` and, per reference to a learnable float parameter,
/// `ds'/dparam` (scalars) or `ds'/dparam[i]` with the index `i` it reads (tables).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserScoreGrad {
    /// The device functions' text (pasted next to the score function).
    pub cuda: String,
    /// Name of `ds'/ds`.
    pub d_score: String,
    /// One entry per reference to a learnable parameter.
    #[serde(default)]
    pub params: Vec<UserParamGrad>,
}

/// The derivative of a score function in one reference to a learnable parameter.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserParamGrad {
    /// Index into [`UserFunction::params`] (an `f32` or `&[f32]` parameter).
    pub param: usize,
    /// Name of the device function `ds'/dparam` (or `ds'/dparam[i]`).
    pub partial: String,
    /// For a table: name of the `long long` device function giving the index `i` read.
    #[serde(default)]
    pub index: Option<String>,
}

/// Block size of runtime block lists (FlexAttention `BLOCK_SIZE`): query rows x key columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockSize {
    /// Query rows per block (`BQ`).
    pub q: usize,
    /// Key columns per block (`BK`).
    pub k: usize,
}

impl Default for BlockSize {
    fn default() -> Self {
        BlockSize { q: 128, k: 128 }
    }
}

/// The element mask (variants.md sections 1, 2, 4, 5): a built-in mask of the mask table
/// ([`crate::masks`]; Rust code names them `Mask::Causal`, ...), a user
/// predicate, or explicit block lists. Runtime parameters are kernel arguments.
///
/// Serde: a built-in mask is its tag (`"causal"`), the others are tables
/// (`{ predicate = {..} }`, `{ block_sparse = { mask = .. } }`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Mask {
    /// A built-in mask of the table.
    Builtin(BuiltinMask),
    /// A user predicate (block lists; partial blocks evaluate it).
    Predicate(UserFunction),
    /// Explicit runtime block lists; partial blocks evaluate `mask` when given, otherwise
    /// every in-range element of a partial block is allowed.
    BlockSparse {
        /// Optional predicate for partial blocks (FlexAttention `mask_mod`).
        mask: Option<UserFunction>,
    },
}

impl Mask {
    /// The built-in mask with this tag.
    pub fn builtin(tag: &str) -> Option<Mask> {
        BuiltinMask::from_tag(tag).map(Mask::Builtin)
    }

    /// The table entry of a built-in mask.
    pub fn def(&self) -> Option<&'static MaskDef> {
        match self {
            Mask::Builtin(m) => Some(m.def()),
            _ => None,
        }
    }

    /// Short name used in canonical names: the tag, `mask_<fn>`, `block_sparse[_<fn>]`.
    pub fn short(&self) -> String {
        match self {
            Mask::Builtin(m) => m.tag().into(),
            Mask::Predicate(f) => format!("mask_{}", f.name),
            Mask::BlockSparse { mask: None } => "block_sparse".into(),
            Mask::BlockSparse { mask: Some(f) } => format!("block_sparse_{}", f.name),
        }
    }

    /// Whether tiles are classified from runtime block lists (otherwise analytically).
    pub fn uses_block_lists(&self) -> bool {
        self.def()
            .is_none_or(|d| d.schedule == ScheduleKind::BlockLists)
    }

    /// Whether the mask defines `Sq > Sk` (only `full` and `causal`, variants.md section 0);
    /// a score modification rules it out too: see [`KernelSpec::allows_sq_gt_sk`].
    pub fn allows_sq_gt_sk(&self) -> bool {
        self.def().is_some_and(|d| d.allows_sq_gt_sk)
    }

    /// Whether the kernel reads per-token document ids.
    pub fn reads_doc(&self) -> bool {
        self.def().is_some_and(|d| d.reads_doc)
    }

    /// Whether the mask brings LM-Infinite scoring (and takes no score modification).
    pub fn lm_infinite_scoring(&self) -> bool {
        self.def().is_some_and(|d| d.lm_infinite_scoring)
    }

    /// Score tiles per key tile (`BRANCHES` of the kernel's scoring policy): LM-Infinite
    /// forms a near and a far branch, every other mask one.
    pub fn scoring_branches(&self) -> usize {
        if self.lm_infinite_scoring() {
            2
        } else {
            1
        }
    }

    /// Serde tag path segment used in error paths (`mask.local`, ...).
    pub fn tag(&self) -> &'static str {
        match self {
            Mask::Builtin(m) => m.tag(),
            Mask::Predicate(_) => "predicate",
            Mask::BlockSparse { .. } => "block_sparse",
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum MaskTable {
    Predicate(UserFunction),
    BlockSparse {
        #[serde(default)]
        mask: Option<UserFunction>,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum MaskRepr {
    Tag(String),
    Table(MaskTable),
}

impl Serialize for Mask {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Mask::Builtin(m) => s.serialize_str(m.tag()),
            Mask::Predicate(f) => MaskTable::Predicate(f.clone()).serialize(s),
            Mask::BlockSparse { mask } => {
                MaskTable::BlockSparse { mask: mask.clone() }.serialize(s)
            }
        }
    }
}

impl<'de> Deserialize<'de> for Mask {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match MaskRepr::deserialize(d)? {
            MaskRepr::Tag(t) if t == "block_sparse" => Ok(Mask::BlockSparse { mask: None }),
            MaskRepr::Tag(t) => Mask::builtin(&t).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "unknown mask `{t}`, expected one of: {}, block_sparse, or a predicate / block_sparse table",
                    BuiltinMask::tag_list()
                ))
            }),
            MaskRepr::Table(MaskTable::Predicate(f)) => Ok(Mask::Predicate(f)),
            MaskRepr::Table(MaskTable::BlockSparse { mask }) => Ok(Mask::BlockSparse { mask }),
        }
    }
}

/// Score modification applied before the mask (variants.md section 3).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScoreMod {
    /// No modification.
    #[default]
    None,
    /// `c * tanh(s / c)` (arg `softcap`).
    Softcap,
    /// `s - slope[h] * |p - j|` (arg `alibi_slopes`, `[Hq]` floats).
    Alibi,
    /// A user score function.
    User(UserFunction),
}

impl ScoreMod {
    /// Short name for canonical names: the table tag, `score_<fn>` (`None` has none).
    pub fn short(&self) -> Option<String> {
        match self {
            ScoreMod::None => None,
            ScoreMod::User(f) => Some(format!("score_{}", f.name)),
            builtin => builtin.def().map(|d| d.tag.to_string()),
        }
    }
}

/// Where a kernel's rows live (variants.md section 13). The lengths are runtime kernel
/// arguments in every layout: one compiled kernel serves every batch, length and page table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// `q: [B, Hq, Sq, D]`, `k, v: [B, Hkv, Sk, D]` (strides free), `lse: [B, Hq, Sq]`.
    #[default]
    Dense,
    /// Packed sequences (FlashAttention's varlen): `q: [Tq, Hq, D]`, `k, v: [Tk, Hkv, D]`,
    /// `out: [Tq, Hq, D]`, `lse: [Hq, Tq]`, with `cu_seqlens_q`, `cu_seqlens_k: [B + 1]`.
    Varlen,
    /// A paged KV cache `k, v: [num_pages, page_size, Hkv, D]` with `block_table:
    /// [B, max_pages]` and `seqlens_k: [B]`; q, out and lse packed as in [`Layout::Varlen`].
    Paged,
    /// Decoding on a paged cache (1..=16 query tokens per sequence): the paged layout's
    /// arrays, each GQA group's query heads packed into the M tile, the keys split across
    /// `num_splits` blocks per sequence (a runtime argument) and merged by log-sum-exp.
    Decode,
    /// [`Layout::Decode`] over packed keys (the varlen layout's `k, v: [Tk, Hkv, D]` with
    /// `cu_seqlens_k`): doc masks read their ids packed like the keys.
    DecodeVarlen,
}

impl Layout {
    /// Whether this is the dense layout (the default; spec files and JSON omit it).
    pub fn is_dense(&self) -> bool {
        *self == Layout::Dense
    }
    /// The spelling in spec files, the CLI and canonical names.
    pub fn tag(self) -> &'static str {
        match self {
            Layout::Dense => "dense",
            Layout::Varlen => "varlen",
            Layout::Paged => "paged",
            Layout::Decode => "decode",
            Layout::DecodeVarlen => "decode_varlen",
        }
    }
    /// Every layout.
    pub const ALL: [Layout; 5] = [
        Layout::Dense,
        Layout::Varlen,
        Layout::Paged,
        Layout::Decode,
        Layout::DecodeVarlen,
    ];
    /// Whether this is a decode layout (GQA packing, split-KV, a merge kernel).
    pub fn is_decode(self) -> bool {
        matches!(self, Layout::Decode | Layout::DecodeVarlen)
    }
    /// Whether keys come from a paged cache (`block_table`, `seqlens_k`).
    pub fn is_paged(self) -> bool {
        matches!(self, Layout::Paged | Layout::Decode)
    }
}

/// How `key_score` combines the `key_mass` of the query heads of one GQA group
/// (variants.md section 14).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatReduce {
    /// Sum over the group (H2O / LazyLLM style).
    #[default]
    Sum,
    /// Maximum over the group (SnapKV / Recycled Attention style).
    Max,
}

/// Attention statistics outputs of a forward kernel (variants.md section 14,
/// docs/statistics.md): `key_mass` per query head, `key_score` per kv head and `top_keys`.
/// The kernel computes them by a second sweep over its key tiles once lse is known, then a
/// small follow-up kernel reduces the query blocks, the group, pools and selects. `pool` and
/// `top_k` are the defaults the launch helpers pass (the follow-up kernel takes them as
/// arguments, like the scale).
///
/// Spec files: `stats = { reduce = "max", pool = 7, top_k = 64 }` (every field optional).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsSpec {
    /// Sum or max of `key_mass` over the GQA group.
    #[serde(default)]
    pub reduce: StatReduce,
    /// Odd max-pool width along the keys (`None`: no pooling, the same as 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<usize>,
    /// Entries of `top_keys` per kv head (`None`: no `top_keys`; 0 is an error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<usize>,
}

/// A complete forward-attention kernel specification.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelSpec {
    /// Input/output element type.
    pub dtype: DType,
    /// Head dimension (D = Dv).
    pub head_dim: HeadDim,
    /// Grouped-query attention (`Hkv` divides `Hq`; MQA is `Hkv = 1`). Without it the
    /// launch requires `Hq == Hkv`. The group ratio itself is a runtime argument.
    #[serde(default)]
    pub gqa: bool,
    /// Element mask.
    pub mask: Mask,
    /// Score modification.
    #[serde(default)]
    pub score: ScoreMod,
    /// Default softmax scale used by launch helpers (`1/sqrt(D)` when absent). The kernel
    /// itself takes the scale as the `scale` argument.
    #[serde(default)]
    pub scale: Option<f32>,
    /// Block size of runtime block lists (only used by list-driven masks).
    #[serde(default)]
    pub sparse_block: BlockSize,
    /// Where the rows live: dense (default), packed varlen or a paged KV cache.
    #[serde(default, skip_serializing_if = "Layout::is_dense")]
    pub layout: Layout,
    /// Attention statistics outputs (`None`: none; the kernel is then exactly the one
    /// without the field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<StatsSpec>,
}

impl KernelSpec {
    /// A spec with defaults (no GQA, default scale, 128x128 sparse blocks).
    pub fn new(dtype: DType, head_dim: HeadDim, mask: Mask, score: ScoreMod) -> Self {
        KernelSpec {
            dtype,
            head_dim,
            gqa: false,
            mask,
            score,
            scale: None,
            sparse_block: BlockSize::default(),
            layout: Layout::Dense,
            stats: None,
        }
    }

    /// Builder: attention statistics outputs (variants.md section 14).
    pub fn with_stats(mut self, stats: StatsSpec) -> Self {
        self.stats = Some(stats);
        self
    }

    /// Builder: the layout of the rows (variants.md section 13).
    pub fn with_layout(mut self, layout: Layout) -> Self {
        self.layout = layout;
        self
    }

    /// Builder: enable GQA/MQA.
    pub fn with_gqa(mut self) -> Self {
        self.gqa = true;
        self
    }

    /// Whether `Sq > Sk` is defined for this kernel: only `full` and `causal` without a
    /// score modification (variants.md section 0).
    pub fn allows_sq_gt_sk(&self) -> bool {
        self.mask.allows_sq_gt_sk() && self.score == ScoreMod::None
    }

    /// The scale to pass as the `scale` argument.
    pub fn effective_scale(&self) -> f32 {
        self.scale
            .unwrap_or(1.0 / (self.head_dim.get() as f32).sqrt())
    }

    /// Canonical name (see [`crate::name::canonical_name`]).
    pub fn canonical_name(&self) -> String {
        crate::name::canonical_name(self)
    }

    /// Every user function of the spec, with the field path that holds it.
    pub fn user_functions(&self) -> Vec<(&'static str, &UserFunction)> {
        let mut v = Vec::new();
        match &self.mask {
            Mask::Predicate(f) => v.push(("mask.predicate", f)),
            Mask::BlockSparse { mask: Some(f) } => v.push(("mask.block_sparse.mask", f)),
            _ => {}
        }
        if let ScoreMod::User(f) = &self.score {
            v.push(("score.user", f));
        }
        v
    }
}
