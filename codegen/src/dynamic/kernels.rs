//! The dynamic pipelines' kernels: stages, flat argument lists, CUDA emission, geometry.
//!
//! Every kernel is a thin `extern "C" __global__` wrapper instantiating one device template
//! of `cuda/af_<family>.cuh` (helpers shared by all families in `cuda/af_dynamic.cuh`) with
//! the element type and `D`; the argument list below is the template's parameter list.

use std::fmt::Write as _;

use crate::args::{ArgKind, Elem, KernelArg, LaunchGeometry, Scalar};
use crate::check::SpecError;
use crate::shape::Shape;
use crate::spec::DType;

use super::{validate_dynamic, DynamicSpec};

const PRELUDE: &str = include_str!("../../cuda/af_prelude.cuh");
const DYNAMIC: &str = include_str!("../../cuda/af_dynamic.cuh");
const LANDMARK: &str = include_str!("../../cuda/af_landmark.cuh");
const HAX: &str = include_str!("../../cuda/af_hax.cuh");
const CCA: &str = include_str!("../../cuda/af_cca.cuh");
const TOPK: &str = include_str!("../../cuda/af_topk.cuh");

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
    /// Flat argument list, in signature order.
    pub args: Vec<KernelArg>,
}

fn ptr(name: &str, elem: Elem, mutable: bool) -> KernelArg {
    KernelArg {
        name: name.into(),
        kind: ArgKind::Ptr { elem, mutable },
    }
}
fn int(name: &str) -> KernelArg {
    KernelArg {
        name: name.into(),
        kind: ArgKind::Scalar(Scalar::I32),
    }
}
fn i64_(name: &str) -> KernelArg {
    KernelArg {
        name: name.into(),
        kind: ArgKind::Scalar(Scalar::I64),
    }
}
fn f32_(name: &str) -> KernelArg {
    KernelArg {
        name: name.into(),
        kind: ArgKind::Scalar(Scalar::F32),
    }
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
        }
    }

    /// The device template call `afd_<stem><T, D>` this kernel wraps.
    fn template(self, dtype: DType, d: usize) -> String {
        let t = dtype.cuda();
        match self {
            Stage::TopkAttn => format!("afd_topk_attn<{t}, {t}, {d}>"),
            Stage::TopkAttnPart => format!("afd_topk_attn<{t}, float, {d}>"),
            Stage::HaxKeySelect => format!("afd_hax_keysel<{d}>"),
            s => format!("afd_{}<{t}, {d}>", s.stem()),
        }
    }

    /// The kernel's flat argument list (the device template's parameters, in order).
    pub fn args(self, dtype: DType) -> Vec<KernelArg> {
        let t = elem(dtype);
        let dims = |v: &mut Vec<KernelArg>, two_seqs: bool| {
            v.extend([int("batch"), int("heads_q"), int("heads_kv")]);
            if two_seqs {
                v.extend([int("seq_q"), int("seq_k")]);
            } else {
                v.push(int("seq"));
            }
        };
        let mut v = Vec::new();
        match self {
            Stage::LandmarkSelect | Stage::TopkSelect => {
                v.extend([
                    ptr("q", t, false),
                    ptr("k", t, false),
                    ptr("sel", Elem::I32, true),
                ]);
                dims(&mut v, true);
                if self == Stage::LandmarkSelect {
                    v.extend([int("mem_freq"), int("top_k"), f32_("scale")]);
                } else {
                    v.extend([int("s_start"), int("s_end"), int("topk")]);
                }
            }
            Stage::LandmarkAttn => {
                v.extend([ptr("q", t, false), ptr("k", t, false), ptr("v", t, false)]);
                v.extend([ptr("sel", Elem::I32, false), ptr("o", t, true)]);
                v.push(ptr("lse", Elem::F32, true));
                dims(&mut v, true);
                v.extend([int("mem_freq"), int("sel_width"), f32_("scale")]);
            }
            Stage::TopkAttn | Stage::TopkAttnPart => {
                let o = if self == Stage::TopkAttn {
                    t
                } else {
                    Elem::F32
                };
                v.extend([ptr("q", t, false), ptr("k", t, false), ptr("v", t, false)]);
                v.extend([ptr("sel", Elem::I32, false), ptr("o", o, true)]);
                v.push(ptr("lse", Elem::F32, true));
                dims(&mut v, true);
                v.extend([
                    int("s_start"),
                    int("s_end"),
                    int("topk"),
                    f32_("scale"),
                    int("part"),
                ]);
            }
            Stage::LseMerge => {
                v.extend([ptr("o_a", Elem::F32, false), ptr("lse_a", Elem::F32, false)]);
                v.extend([ptr("o_b", Elem::F32, false), ptr("lse_b", Elem::F32, false)]);
                v.extend([ptr("o", t, true), ptr("lse", Elem::F32, true), int("rows")]);
            }
            Stage::CcaPool => {
                v.extend([ptr("q", t, false), ptr("k", t, false), ptr("v", t, false)]);
                v.extend([ptr("kbar", Elem::F32, true), ptr("vbar", Elem::F32, true)]);
                dims(&mut v, false);
                v.extend([int("group"), int("pooled"), f32_("pool_scale")]);
            }
            Stage::CcaAttn => {
                v.extend([ptr("q", t, false), ptr("k", t, false), ptr("v", t, false)]);
                v.extend([ptr("kbar", Elem::F32, false), ptr("vbar", Elem::F32, false)]);
                v.extend([ptr("o", t, true), ptr("lse", Elem::F32, true)]);
                dims(&mut v, false);
                v.extend([int("group"), int("window"), int("pooled"), f32_("scale")]);
            }
            Stage::HaxHash => {
                v.extend([
                    ptr("q2", t, false),
                    ptr("k2", t, false),
                    ptr("hp", Elem::F32, false),
                ]);
                for n in ["code_q", "code_k", "lsh_head", "lsh_prev"] {
                    v.push(ptr(n, Elem::I32, true));
                }
                dims(&mut v, false);
                v.extend([int("nb"), i64_("hp_bstride"), int("hp_mode")]);
            }
            Stage::HaxKeySelect => {
                v.push(ptr("ks", Elem::F32, false));
                v.extend([
                    ptr("ks_idx", Elem::I32, true),
                    ptr("ks_thr", Elem::I32, true),
                ]);
                dims(&mut v, false);
                v.extend([int("k_ks"), i64_("ks_bstride"), int("ks_mode")]);
            }
            Stage::HaxAttn => {
                v.extend([ptr("q2", t, false), ptr("k2", t, false), ptr("x", t, false)]);
                v.push(ptr("ks", Elem::F32, false));
                for n in ["ks_idx", "ks_thr", "lsh_head", "lsh_prev"] {
                    v.push(ptr(n, Elem::I32, false));
                }
                v.extend([ptr("o", t, true), ptr("lse", Elem::F32, true)]);
                dims(&mut v, false);
                v.extend([
                    int("k_lsh"),
                    int("k_ks"),
                    i64_("ks_bstride"),
                    int("ks_mode"),
                ]);
                v.push(f32_("scale"));
            }
        }
        v
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
            (Stage::LseMerge, _) => LaunchGeometry {
                grid: [rows(p.batch * p.heads_q * p.seq_q), 1, 1],
                block: [32 * ROWS_PER_BLOCK, 1, 1],
                dynamic_smem_bytes: 0,
            },
            _ => per_row(p.seq_q, 0),
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

/// Emit one stage of `spec` (validated first).
pub fn emit_stage(spec: &DynamicSpec, stage: Stage) -> Result<DynamicKernel, Vec<SpecError>> {
    validate_dynamic(spec)?;
    let (dtype, d) = (spec.dtype(), spec.head_dim().get());
    let name = format!("{}_d{d}_{}", stage.stem(), dtype.short());
    let args = stage.args(dtype);
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
    let _ = writeln!(o, "    {}({});", stage.template(dtype, d), call.join(", "));
    o.push_str("}\n");
    Ok(DynamicKernel {
        stage,
        name,
        source: o,
        args,
    })
}

/// Emit every kernel of the pipeline, in launch order.
pub fn emit_dynamic(spec: &DynamicSpec) -> Result<Vec<DynamicKernel>, Vec<SpecError>> {
    spec.stages()
        .into_iter()
        .map(|s| emit_stage(spec, s))
        .collect()
}
