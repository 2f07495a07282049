//! The dynamic pipelines' kernels: stages, flat argument lists, CUDA emission, geometry.
//!
//! Every kernel is a thin `extern "C" __global__` wrapper instantiating one device template
//! of `cuda/af_<family>.cuh` (helpers shared by all families in `cuda/af_dynamic.cuh`) with
//! the element type and `D`; the argument list below is the template's parameter list.

use std::fmt::Write as _;

use crate::args::{Elem, KernelArg, LaunchGeometry};
use crate::check::SpecError;
use crate::shape::Shape;
use crate::spec::DType;

use super::args::{buffer, scalar, DynArgRole, DynBuffer, DynScalar, DynTypedArg};
use super::{validate_dynamic, DynamicSpec};

const PRELUDE: &str = include_str!("../../cuda/af_prelude.cuh");
const DYNAMIC: &str = include_str!("../../cuda/af_dynamic.cuh");
const LANDMARK: &str = include_str!("../../cuda/af_landmark.cuh");
const HAX: &str = include_str!("../../cuda/af_hax.cuh");
const CCA: &str = include_str!("../../cuda/af_cca.cuh");
const TOPK: &str = include_str!("../../cuda/af_topk.cuh");
const LONGHEADS: &str = include_str!("../../cuda/af_longheads.cuh");

/// Query rows (one warp each) per thread block of the per-row kernels (`AFD_WARPS`).
pub const ROWS_PER_BLOCK: u32 = 4;

/// One kernel of a dynamic pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Landmark retrieval: top-k blocks per row by landmark score -> `sel [rows, top_k]`.
    LandmarkSelect,
    /// Landmark grouped-softmax attention (all earlier blocks, or the selected ones).
    LandmarkAttn,
    /// HAX: column centring/normalisation, sign-bit codes, bucket chains.
    HaxHash,
    /// HAX: cumulative top-k of the key-selection scores.
    HaxKeySelect,
    /// HAX: attention over the union of the two sets, gathered per query.
    HaxAttn,
    /// CCA: pooled core tokens per group.
    CcaPool,
    /// CCA: joint softmax over core tokens and local raw tokens.
    CcaAttn,
    /// Top-k: the `k` best keys outside the static window per row -> `sel [rows, k]`.
    TopkSelect,
    /// Top-k: attention over the static window plus the selected keys (output dtype).
    TopkAttn,
    /// Top-k: attention over the static window (`part = 1`) or the selected keys
    /// (`part = 2`) alone, f32 partial output for the merge.
    TopkAttnPart,
    /// Log-sum-exp merge of two f32 partial results.
    LseMerge,
    /// LongHeads: the summary `r_c` of every complete chunk (prefill only) -> `r`.
    LongheadsSummary,
    /// LongHeads: the selected chunks per row -> `sel [rows, sel_width]`, `sel_width = max(M, min(B / w, ceil(Sk / w)))`.
    LongheadsSelect,
    /// LongHeads: attention over the selected chunks, RoPE at the compressed positions.
    LongheadsAttn,
}

/// One emitted kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DynamicKernel {
    /// Which stage.
    pub stage: Stage,
    /// Canonical symbol `<family>_<stage>_d<D>_<dtype>`.
    pub name: String,
    /// Self-contained CUDA source (prelude and helpers pasted in).
    pub source: String,
    /// Flat argument list, in signature order (names and C kinds: launch metadata).
    pub args: Vec<KernelArg>,
    /// The role of each argument of [`DynamicKernel::args`] (same order): what the host
    /// passes.
    pub roles: Vec<DynArgRole>,
}

fn elem(d: DType) -> Elem {
    match d {
        DType::F16 => Elem::F16,
        DType::Bf16 => Elem::Bf16,
        DType::F32 => Elem::F32,
    }
}

impl Stage {
    /// Name stem (`landmark_select`, `topk_attn_part`, ...).
    pub fn stem(self) -> &'static str {
        match self {
            Stage::LandmarkSelect => "landmark_select",
            Stage::LandmarkAttn => "landmark_attn",
            Stage::HaxHash => "hax_hash",
            Stage::HaxKeySelect => "hax_keysel",
            Stage::HaxAttn => "hax_attn",
            Stage::CcaPool => "cca_pool",
            Stage::CcaAttn => "cca_attn",
            Stage::TopkSelect => "topk_select",
            Stage::TopkAttn => "topk_attn",
            Stage::TopkAttnPart => "topk_attn_part",
            Stage::LseMerge => "lse_merge",
            Stage::LongheadsSummary => "longheads_summary",
            Stage::LongheadsSelect => "longheads_select",
            Stage::LongheadsAttn => "longheads_attn",
        }
    }

    fn family_cuh(self) -> (&'static str, &'static str) {
        match self {
            Stage::LandmarkSelect | Stage::LandmarkAttn => ("af_landmark.cuh", LANDMARK),
            Stage::HaxHash | Stage::HaxKeySelect | Stage::HaxAttn => ("af_hax.cuh", HAX),
            Stage::CcaPool | Stage::CcaAttn => ("af_cca.cuh", CCA),
            Stage::TopkSelect | Stage::TopkAttn | Stage::TopkAttnPart | Stage::LseMerge => {
                ("af_topk.cuh", TOPK)
            }
            Stage::LongheadsSummary | Stage::LongheadsSelect | Stage::LongheadsAttn => {
                ("af_longheads.cuh", LONGHEADS)
            }
        }
    }

    /// The device template call `afd_<stem><T, D>` this kernel wraps (`_paged`: the
    /// template reading a paged cache).
    fn template(self, dtype: DType, d: usize, keys: DynKeys) -> String {
        let t = dtype.cuda();
        if keys == DynKeys::Paged {
            // the fused attention's output type is the input's
            let o = if self == Stage::TopkAttn {
                format!("{t}, ")
            } else {
                String::new()
            };
            return format!("afd_{}_paged<{t}, {o}{d}>", self.stem());
        }
        match self {
            Stage::TopkAttn => format!("afd_topk_attn<{t}, {t}, {d}>"),
            Stage::TopkAttnPart => format!("afd_topk_attn<{t}, float, {d}>"),
            Stage::HaxKeySelect => format!("afd_hax_keysel<{d}>"),
            s => format!("afd_{}<{t}, {d}>", s.stem()),
        }
    }

    /// The kernel's flat argument list (the device template's parameters, in order): the
    /// declarations of [`Stage::typed_args`].
    pub fn args(self, dtype: DType) -> Vec<KernelArg> {
        self.typed_args(dtype).into_iter().map(|a| a.arg).collect()
    }

    /// The kernel's arguments with their roles, in signature order.
    pub fn typed_args(self, dtype: DType) -> Vec<DynTypedArg> {
        use DynBuffer as B;
        use DynScalar as S;
        let t = elem(dtype);
        let input = |b| buffer(b, t, false);
        let (f32_in, f32_out) = (
            |b| buffer(b, Elem::F32, false),
            |b| buffer(b, Elem::F32, true),
        );
        let (i32_in, i32_out) = (
            |b| buffer(b, Elem::I32, false),
            |b| buffer(b, Elem::I32, true),
        );
        let sizes = |v: &mut Vec<DynTypedArg>, two_seqs: bool| {
            v.extend([scalar(S::Batch), scalar(S::HeadsQ), scalar(S::HeadsKv)]);
            if two_seqs {
                v.extend([scalar(S::SeqQ), scalar(S::SeqK)]);
            } else {
                v.push(scalar(S::Seq));
            }
        };
        let scalars = |v: &mut Vec<DynTypedArg>, s: &[DynScalar]| {
            v.extend(s.iter().map(|&s| scalar(s)));
        };
        let mut v = Vec::new();
        match self {
            Stage::LandmarkSelect | Stage::TopkSelect => {
                v.extend([input(B::Q), input(B::K), i32_out(B::Sel)]);
                sizes(&mut v, true);
                if self == Stage::LandmarkSelect {
                    scalars(&mut v, &[S::MemFreq, S::TopK, S::Scale]);
                } else {
                    scalars(&mut v, &[S::Sink, S::Recent, S::TopkK]);
                }
            }
            Stage::LandmarkAttn => {
                v.extend([input(B::Q), input(B::K), input(B::V), i32_in(B::Sel)]);
                v.extend([buffer(B::O, t, true), f32_out(B::Lse)]);
                sizes(&mut v, true);
                scalars(&mut v, &[S::MemFreq, S::SelWidth, S::Scale]);
            }
            Stage::TopkAttn | Stage::TopkAttnPart => {
                let o = if self == Stage::TopkAttn {
                    t
                } else {
                    Elem::F32
                };
                v.extend([input(B::Q), input(B::K), input(B::V), i32_in(B::Sel)]);
                v.extend([buffer(B::O, o, true), f32_out(B::Lse)]);
                sizes(&mut v, true);
                scalars(&mut v, &[S::Sink, S::Recent, S::TopkK, S::Scale, S::Part]);
            }
            Stage::LseMerge => {
                v.extend([
                    f32_in(B::OA),
                    f32_in(B::LseA),
                    f32_in(B::OB),
                    f32_in(B::LseB),
                ]);
                v.extend([buffer(B::O, t, true), f32_out(B::Lse), scalar(S::Rows)]);
            }
            Stage::CcaPool => {
                v.extend([input(B::Q), input(B::K), input(B::V)]);
                v.extend([f32_out(B::KBar), f32_out(B::VBar)]);
                sizes(&mut v, false);
                scalars(&mut v, &[S::Group, S::Pooled, S::PoolScale]);
            }
            Stage::CcaAttn => {
                v.extend([input(B::Q), input(B::K), input(B::V)]);
                v.extend([f32_in(B::KBar), f32_in(B::VBar)]);
                v.extend([buffer(B::O, t, true), f32_out(B::Lse)]);
                sizes(&mut v, false);
                scalars(&mut v, &[S::Group, S::Window, S::Pooled, S::Scale]);
            }
            Stage::HaxHash => {
                v.extend([input(B::Q2), input(B::K2), f32_in(B::Hyperplanes)]);
                for b in [B::CodeQ, B::CodeK, B::LshHead, B::LshPrev] {
                    v.push(i32_out(b));
                }
                sizes(&mut v, false);
                scalars(
                    &mut v,
                    &[S::HashBits, S::HyperplaneBatchStride, S::HyperplaneMode],
                );
            }
            Stage::HaxKeySelect => {
                v.push(f32_in(B::KeyScores));
                v.extend([i32_out(B::KeySelIdx), i32_out(B::KeySelThreshold)]);
                sizes(&mut v, false);
                scalars(&mut v, &[S::KKs, S::KeyScoreBatchStride, S::KeyScoreMode]);
            }
            Stage::LongheadsSummary | Stage::LongheadsSelect | Stage::LongheadsAttn => {
                v = longheads_args(self, t);
            }
            Stage::HaxAttn => {
                v.extend([input(B::Q2), input(B::K2), input(B::X)]);
                v.push(f32_in(B::KeyScores));
                for b in [B::KeySelIdx, B::KeySelThreshold, B::LshHead, B::LshPrev] {
                    v.push(i32_in(b));
                }
                v.extend([buffer(B::O, t, true), f32_out(B::Lse)]);
                sizes(&mut v, false);
                scalars(
                    &mut v,
                    &[
                        S::KLsh,
                        S::KKs,
                        S::KeyScoreBatchStride,
                        S::KeyScoreMode,
                        S::Scale,
                    ],
                );
            }
        }
        v
    }

    /// The kernel's arguments over a paged cache (variants.md section 13): q packed
    /// `[Tq, Hq, D]`, `k, v` the caches `[num_pages, page_size, Hkv, D]`, `o` packed like q,
    /// `lse` and `sel` rows `[Hq, Tq]`, the sizes replaced by the layout arrays, `max_pages`,
    /// `page_size`, the heads and `Tq`. The key-selecting decode families read a paged cache:
    /// the fused top-k and landmark attention.
    pub fn typed_args_paged(self, dtype: DType) -> Result<Vec<DynTypedArg>, SpecError> {
        use DynBuffer as B;
        use DynScalar as S;
        let params: &[DynScalar] = match self {
            Stage::TopkSelect => &[S::Sink, S::Recent, S::TopkK],
            Stage::TopkAttn => &[S::Sink, S::Recent, S::TopkK, S::Scale, S::Part],
            Stage::LandmarkSelect => &[S::MemFreq, S::TopK, S::Scale],
            Stage::LandmarkAttn => &[S::MemFreq, S::SelWidth, S::Scale],
            _ => return Err(SpecError::new(
                "layout",
                format!("the {} kernel reads dense keys only", self.stem()),
                "use layout = \"dense\", or the fused top-k or landmark attention on a paged cache",
            )),
        };
        let t = elem(dtype);
        let i32_in = |b| buffer(b, Elem::I32, false);
        let mut v = vec![buffer(B::Q, t, false), buffer(B::K, t, false)];
        if matches!(self, Stage::TopkSelect | Stage::LandmarkSelect) {
            v.push(buffer(B::Sel, Elem::I32, true));
        } else {
            v.extend([buffer(B::V, t, false), i32_in(B::Sel)]);
            v.extend([buffer(B::O, t, true), buffer(B::Lse, Elem::F32, true)]);
        }
        v.extend([
            i32_in(B::CuSeqlensQ),
            i32_in(B::BlockTable),
            i32_in(B::SeqlensK),
        ]);
        let sizes = [S::MaxPages, S::PageSize, S::HeadsQ, S::HeadsKv, S::TotalQ];
        v.extend(sizes.into_iter().chain(params.iter().copied()).map(scalar));
        Ok(v)
    }

    /// Grid, block and dynamic shared memory for `spec` on problem `p`. Per-row kernels:
    /// grid `(ceil(rows / 4), Hq, B)`, 128 threads (one warp per row); per-head kernels
    /// (HAX hash / key selection): grid `(Hq, B)`. Zero-sized grids mean "skip the launch".
    pub fn geometry(self, spec: &DynamicSpec, p: &Shape) -> LaunchGeometry {
        let rows = |n: usize| n.div_ceil(ROWS_PER_BLOCK as usize) as u32;
        let (hq, b) = (p.heads_q as u32, p.batch as u32);
        let per_row = |n: usize, smem: usize| LaunchGeometry {
            grid: [rows(n), hq, b],
            block: [32 * ROWS_PER_BLOCK, 1, 1],
            dynamic_smem_bytes: smem as u32,
        };
        let d = spec.head_dim().get();
        match (self, *spec) {
            (Stage::LandmarkSelect, DynamicSpec::Landmark { mode, .. }) => {
                let k = match mode {
                    super::LandmarkMode::Retrieval { top_k } => top_k,
                    super::LandmarkMode::Train => 0,
                };
                per_row(p.seq_q, ROWS_PER_BLOCK as usize * 8 * k)
            }
            (Stage::TopkSelect, DynamicSpec::Topk { k, .. }) => {
                per_row(p.seq_q, ROWS_PER_BLOCK as usize * 8 * k)
            }
            (Stage::CcaPool, DynamicSpec::Cca { group, window, .. }) => {
                per_row(p.seq_q.saturating_sub(window) / group.max(1), 0)
            }
            (Stage::HaxHash, DynamicSpec::Hax { hash_bits, .. }) => LaunchGeometry {
                grid: [hq, b, 1],
                block: [128, 1, 1],
                dynamic_smem_bytes: (4 * (4 * d + (1usize << hash_bits.min(31)))) as u32,
            },
            (Stage::HaxKeySelect, DynamicSpec::Hax { k_ks, .. }) => LaunchGeometry {
                grid: [if k_ks == 0 { 0 } else { hq }, b, 1],
                block: [32, 1, 1],
                dynamic_smem_bytes: (8 * k_ks) as u32,
            },
            (Stage::LongheadsSummary, DynamicSpec::Longheads { chunk, .. }) => {
                per_row(p.seq_k / chunk.max(1), 0)
            }
            (
                Stage::LongheadsSelect,
                DynamicSpec::Longheads {
                    chunks_per_query, ..
                },
            ) => per_row(
                p.seq_q,
                ROWS_PER_BLOCK as usize * 8 * chunks_per_query.saturating_sub(3).max(1),
            ),
            (Stage::LseMerge, _) => LaunchGeometry {
                grid: [rows(p.batch * p.heads_q * p.seq_q), 1, 1],
                block: [32 * ROWS_PER_BLOCK, 1, 1],
                dynamic_smem_bytes: 0,
            },
            _ => per_row(p.seq_q, 0),
        }
    }
}

/// The LongHeads stages' arguments (see [`Stage::typed_args`]).
fn longheads_args(stage: Stage, t: Elem) -> Vec<DynTypedArg> {
    use DynBuffer as B;
    use DynScalar as S;
    let input = |b| buffer(b, t, false);
    let sizes = [S::Batch, S::HeadsQ, S::HeadsKv, S::SeqQ, S::SeqK].map(scalar);
    match stage {
        Stage::LongheadsSummary => {
            let mut v = vec![input(B::Q), input(B::K), input(B::V)];
            v.push(buffer(B::Summaries, Elem::F32, true));
            v.extend([S::Batch, S::HeadsQ, S::HeadsKv, S::Seq].map(scalar));
            v.extend([S::Chunk, S::Theta].map(scalar));
            v
        }
        Stage::LongheadsSelect => {
            let mut v = vec![input(B::Q), buffer(B::Summaries, Elem::F32, false)];
            v.push(buffer(B::Sel, Elem::I32, true));
            v.extend(sizes);
            let params = [
                S::SummaryChunks,
                S::Chunk,
                S::ChunksPerQuery,
                S::Begin,
                S::SelWidth,
            ];
            v.extend(params.map(scalar));
            v
        }
        _ => {
            let mut v = vec![input(B::Q), input(B::K), input(B::V)];
            v.push(buffer(B::Sel, Elem::I32, false));
            v.extend([buffer(B::O, t, true), buffer(B::Lse, Elem::F32, true)]);
            v.extend(sizes);
            v.extend([S::Chunk, S::SelWidth, S::Theta, S::Scale].map(scalar));
            v
        }
    }
}

fn paste(o: &mut String, name: &str, text: &str) {
    let _ = writeln!(o, "// ---- begin {name} ----");
    o.push_str(text);
    if !text.ends_with('\n') {
        o.push('\n');
    }
    let _ = writeln!(o, "// ---- end {name} ----\n");
}

/// Where a dynamic kernel reads its keys and values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DynKeys {
    /// `k, v [B, Hkv, Sk, D]`, q and o `[B, Hq, Sq, D]`.
    Dense,
    /// A paged cache with packed queries (variants.md section 13; [`Stage::typed_args_paged`]).
    Paged,
}

/// Emit one stage of `spec` (validated first).
pub fn emit_stage(spec: &DynamicSpec, stage: Stage) -> Result<DynamicKernel, Vec<SpecError>> {
    emit_stage_in(spec, stage, DynKeys::Dense)
}

/// Emit one stage of `spec` reading keys from `keys` (`<stem>_paged_d<D>_<dtype>` for a
/// paged cache). A paged cache takes the fused top-k and landmark attention: other stages
/// (and the split top-k's partial and merge kernels) are errors at `layout` / `mode`.
pub fn emit_stage_in(
    spec: &DynamicSpec,
    stage: Stage,
    keys: DynKeys,
) -> Result<DynamicKernel, Vec<SpecError>> {
    validate_dynamic(spec)?;
    let (dtype, d) = (spec.dtype(), spec.head_dim().get());
    let typed = match keys {
        DynKeys::Dense => stage.typed_args(dtype),
        DynKeys::Paged => {
            if let DynamicSpec::Topk { split: true, .. } = spec {
                return Err(vec![SpecError::new(
                    "mode",
                    "the split top-k (two partial passes and a merge) reads dense keys only",
                    "use mode = \"fused\" on a paged cache",
                )]);
            }
            stage.typed_args_paged(dtype).map_err(|e| vec![e])?
        }
    };
    let layout = if keys == DynKeys::Paged { "_paged" } else { "" };
    let name = format!("{}{layout}_d{d}_{}", stage.stem(), dtype.short());
    let (args, roles): (Vec<KernelArg>, Vec<DynArgRole>) =
        typed.into_iter().map(|a| (a.arg, a.role)).unzip();
    let mut o = String::new();
    let _ = writeln!(o, "// attnforge generated kernel: {name}");
    let _ = writeln!(
        o,
        "// pipeline: {} (stage {:?})",
        spec.canonical_name(),
        stage
    );
    let _ = writeln!(
        o,
        "// spec: {}",
        serde_json::to_string(spec).unwrap_or_default()
    );
    let _ = writeln!(
        o,
        "// launch: see attnforge_codegen::dynamic::Stage::geometry\n"
    );
    paste(&mut o, "af_prelude.cuh", PRELUDE);
    paste(&mut o, "af_dynamic.cuh", DYNAMIC);
    if matches!(
        stage,
        Stage::LongheadsSummary | Stage::LongheadsSelect | Stage::LongheadsAttn
    ) {
        // af_rope_freq / af_rope_pair (af_longheads.cuh): the static kernels' RoPE.
        paste(&mut o, "af_attn.cuh", crate::emit::ATTN_CUH);
    }
    let (file, text) = stage.family_cuh();
    paste(&mut o, file, text);
    let block = match stage {
        Stage::HaxKeySelect => 32,
        _ => 32 * ROWS_PER_BLOCK,
    };
    let params: Vec<String> = args
        .iter()
        .map(|a| format!("{} {}", a.kind.c_type(), a.name))
        .collect();
    let call: Vec<&str> = args.iter().map(|a| a.name.as_str()).collect();
    let _ = writeln!(
        o,
        "extern \"C\" __global__ void __launch_bounds__({block}, 1) {name}({}) {{",
        params.join(", ")
    );
    let _ = writeln!(
        o,
        "    {}({});",
        stage.template(dtype, d, keys),
        call.join(", ")
    );
    o.push_str("}\n");
    Ok(DynamicKernel {
        stage,
        name,
        source: o,
        args,
        roles,
    })
}

/// Emit every kernel of the pipeline, in launch order.
pub fn emit_dynamic(spec: &DynamicSpec) -> Result<Vec<DynamicKernel>, Vec<SpecError>> {
    spec.stages()
        .into_iter()
        .map(|s| emit_stage(spec, s))
        .collect()
}
