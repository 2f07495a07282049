//! Data-dependent sparsity (variants.md sections 6-9): landmark attention, HAX, CCA,
//! top-k retrieval and the log-sum-exp merge, as spec families emitted as pipelines of
//! selection + gather-attention kernels.
//!
//! A [`DynamicSpec`] names the family, its dtype and head dimension and its parameters.
//! The parameters are validated here ([`validate_dynamic`], errors with field paths) but
//! travel as kernel *arguments*: the CUDA text, and so the canonical name, depends only on
//! family, mode, `D` and dtype. [`emit_dynamic`] gives the pipeline's kernels in launch order
//! ([`DynamicKernel`], one self-contained `.cu` each); [`Stage::geometry`] their launch.
//!
//! ```
//! use attnforge_codegen::dynamic::*;
//! use attnforge_codegen::spec::{DType, HeadDim};
//! let spec = DynamicSpec::Landmark {
//!     dtype: DType::F16, head_dim: HeadDim::D64, mem_freq: 63,
//!     mode: LandmarkMode::Retrieval { top_k: 4 },
//! };
//! assert_eq!(spec.canonical_name(), "landmark_retrieval_d64_f16");
//! let kernels = emit_dynamic(&spec).unwrap();
//! let names: Vec<_> = kernels.iter().map(|k| k.name.as_str()).collect();
//! assert_eq!(names, ["landmark_select_d64_f16", "landmark_attn_d64_f16"]);
//! assert!(kernels[0].source.contains("extern \"C\" __global__"));
//! ```

mod args;
mod kernels;
mod params;
mod recycled;

pub use args::{DynArgRole, DynBuffer, DynScalar, DynTypedArg};
pub use kernels::{emit_dynamic, emit_stage, emit_stage_in, DynKeys, DynamicKernel, Stage};
pub use params::{family, family_tags, Family, FamilyMode, FamilyParam, FAMILIES};
pub use recycled::{RecycledConfig, MAX_RECYCLE_SIZE};

use serde::{Deserialize, Serialize};

use crate::check::SpecError;
use crate::spec::{DType, HeadDim};

/// Landmark attention mode (variants.md section 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LandmarkMode {
    /// Grouped softmax over every earlier block (one kernel).
    Train,
    /// Only the `top_k` earlier blocks with the largest landmark scores per query token
    /// and head (selection kernel + attention kernel).
    Retrieval {
        /// Blocks retrieved per query token and head (1..=1024).
        top_k: usize,
    },
}

/// A data-dependent sparse attention variant: family, dtype, head dimension, parameters.
/// `Dv == D`; GQA/MQA (`Hq % Hkv == 0`) is handled at run time by every kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "family", rename_all = "snake_case", deny_unknown_fields)]
pub enum DynamicSpec {
    /// Landmark attention, causal; block size `mem_freq + 1`.
    Landmark {
        /// Element type of q, k, v, o.
        dtype: DType,
        /// Head dimension.
        head_dim: HeadDim,
        /// Tokens per block before its landmark (>= 1).
        mem_freq: usize,
        /// Training or retrieval.
        mode: LandmarkMode,
    },
    /// HAX: hash preprocessing, LSH set, key-selection set, attention over their union.
    Hax {
        /// Element type of q2, k2, x, o (hyperplanes and ks travel as f32).
        dtype: DType,
        /// Feature dimension N of q2/k2 (and Dv).
        head_dim: HeadDim,
        /// LSH budget: most recent same-bucket keys (official default 32).
        k_lsh: usize,
        /// Key-selection budget (official default 32).
        k_ks: usize,
        /// Hyperplanes `nb` (1..=12; official default 8: 256 buckets).
        hash_bits: usize,
    },
    /// Core Context Aware attention (pooling kernel + joint-softmax kernel).
    Cca {
        /// Element type.
        dtype: DType,
        /// Head dimension.
        head_dim: HeadDim,
        /// Group size g (>= 1, default 16).
        group: usize,
        /// Local window w (default 1024).
        window: usize,
    },
    /// Top-k retrieval attention for decoding: static sink + recent window plus the `k`
    /// best keys by q.k (selection kernel + attention kernel).
    Topk {
        /// Element type.
        dtype: DType,
        /// Head dimension.
        head_dim: HeadDim,
        /// `S_start`: leading keys always attended.
        sink: usize,
        /// `S_end`: keys ending at the query position always attended.
        recent: usize,
        /// Retrieved keys per query head and row (1..=1024).
        k: usize,
        /// Compute W and R as separate partial results (f32) and combine them with the
        /// log-sum-exp merge kernel instead of one fused pass.
        split: bool,
    },
    /// Recycled Attention for decoding (variants.md section 16): a host-side decode driver
    /// alternating full steps (the dense forward kernel with statistics, then `top_keys`)
    /// and partial steps (the top-k gather kernel over the recycled set plus the new keys).
    /// See [`RecycledConfig`] and `attnforge_runtime::exec_recycled`.
    Recycled {
        /// Element type.
        dtype: DType,
        /// Head dimension.
        head_dim: HeadDim,
        /// `K`, recycled keys per kv head; `None`: `max(1, (p_0 + 1) / 8)`, 1/8 of the
        /// cache at step 0.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        recycle_size: Option<usize>,
        /// `S`: every `S`-th step (`t > 0`) runs the similarity test (default 10).
        stride: usize,
        /// `s` in thousandths: a checked step stays partial when the cosine is strictly
        /// above `threshold_milli / 1000` (default 850: `s = 0.85`).
        threshold_milli: usize,
        /// Max-pool width of the full steps' statistics (odd, default 7).
        pool: usize,
    },
    /// Log-sum-exp merge of two partial results `(o_a, lse_a)`, `(o_b, lse_b)` (f32) into
    /// one output of `dtype`.
    LseMerge {
        /// Output element type.
        dtype: DType,
        /// Row length.
        head_dim: HeadDim,
    },
    /// LongHeads (variants.md section 15): chunk summaries with in-chunk RoPE, per-query
    /// chunk selection (forced `0, c-1, c`) and gather attention with RoPE at the compressed
    /// positions (summary kernel + selection kernel + attention kernel; prefill computes the
    /// summaries, decoding takes them as an input).
    Longheads {
        /// Element type of q, k, v, o (the summaries `r` are f32).
        dtype: DType,
        /// Head dimension (`Dv == D`).
        head_dim: HeadDim,
        /// Chunk size `w` (default 256).
        chunk: usize,
        /// Chunks per query `M` (>= 3, default 16), the forced chunks included.
        chunks_per_query: usize,
        /// Begin length `B` (a positive multiple of `chunk`, default 4096).
        begin: usize,
        /// RoPE base theta (an integer here; default 10000).
        theta: usize,
    },
}

/// Largest `top_k` / `k` of the selection kernels (their list lives in shared memory).
pub const MAX_SELECT_K: usize = 1024;
/// Largest HAX key-selection budget (its list lives in shared memory).
pub const MAX_K_KS: usize = 4096;
/// Largest number of HAX hash bits (a table of `2^bits` buckets lives in shared memory).
pub const MAX_HASH_BITS: usize = 12;

impl DynamicSpec {
    /// Element type.
    pub fn dtype(&self) -> DType {
        match *self {
            DynamicSpec::Landmark { dtype, .. }
            | DynamicSpec::Hax { dtype, .. }
            | DynamicSpec::Cca { dtype, .. }
            | DynamicSpec::Topk { dtype, .. }
            | DynamicSpec::Recycled { dtype, .. }
            | DynamicSpec::LseMerge { dtype, .. }
            | DynamicSpec::Longheads { dtype, .. } => dtype,
        }
    }

    /// Head dimension.
    pub fn head_dim(&self) -> HeadDim {
        match *self {
            DynamicSpec::Landmark { head_dim, .. }
            | DynamicSpec::Hax { head_dim, .. }
            | DynamicSpec::Cca { head_dim, .. }
            | DynamicSpec::Topk { head_dim, .. }
            | DynamicSpec::Recycled { head_dim, .. }
            | DynamicSpec::LseMerge { head_dim, .. }
            | DynamicSpec::Longheads { head_dim, .. } => head_dim,
        }
    }

    /// Family and mode part of the name (`landmark_train`, `topk_split`, ...).
    pub fn family(&self) -> &'static str {
        match self {
            DynamicSpec::Landmark {
                mode: LandmarkMode::Train,
                ..
            } => "landmark_train",
            DynamicSpec::Landmark { .. } => "landmark_retrieval",
            DynamicSpec::Hax { .. } => "hax",
            DynamicSpec::Cca { .. } => "cca",
            DynamicSpec::Topk { split: false, .. } => "topk",
            DynamicSpec::Topk { split: true, .. } => "topk_split",
            DynamicSpec::Recycled { .. } => "recycled",
            DynamicSpec::LseMerge { .. } => "lse_merge",
            DynamicSpec::Longheads { .. } => "longheads",
        }
    }

    /// `<family>[_<mode>]_d<D>_<dtype>` (docs/conventions.md), e.g. `landmark_train_d64_f16`.
    /// Parameters are kernel arguments and not part of the name.
    pub fn canonical_name(&self) -> String {
        format!(
            "{}_d{}_{}",
            self.family(),
            self.head_dim().get(),
            self.dtype().short()
        )
    }

    /// The pipeline's stages in launch order.
    pub fn stages(&self) -> Vec<Stage> {
        match self {
            DynamicSpec::Landmark {
                mode: LandmarkMode::Train,
                ..
            } => vec![Stage::LandmarkAttn],
            DynamicSpec::Landmark { .. } => vec![Stage::LandmarkSelect, Stage::LandmarkAttn],
            DynamicSpec::Hax { .. } => vec![Stage::HaxHash, Stage::HaxKeySelect, Stage::HaxAttn],
            DynamicSpec::Cca { .. } => vec![Stage::CcaPool, Stage::CcaAttn],
            DynamicSpec::Topk { split: false, .. } => vec![Stage::TopkSelect, Stage::TopkAttn],
            DynamicSpec::Topk { split: true, .. } => {
                vec![Stage::TopkSelect, Stage::TopkAttnPart, Stage::LseMerge]
            }
            // Partial steps: the top-k gather kernel with an empty static window over a
            // host-built key list. Full steps run the dense forward kernel with statistics
            // (`RecycledConfig::full_step_spec`), not a dynamic stage.
            DynamicSpec::Recycled { .. } => vec![Stage::TopkAttn],
            DynamicSpec::LseMerge { .. } => vec![Stage::LseMerge],
            DynamicSpec::Longheads { .. } => vec![
                Stage::LongheadsSummary,
                Stage::LongheadsSelect,
                Stage::LongheadsAttn,
            ],
        }
    }
}

/// Check a spec's parameters against its family's table ([`FAMILIES`]) and the
/// cross-parameter rules; every error, each with its field path (`<family>.<param>`,
/// `<family>.mode.<mode>.<param>` for a mode's) and fix, in table order.
pub fn validate_dynamic(spec: &DynamicSpec) -> Result<(), Vec<SpecError>> {
    let table = spec.family_table();
    let values = spec.param_values();
    let mut e: Vec<(usize, SpecError)> = Vec::new();
    for (i, (p, v)) in values.iter().enumerate() {
        let absent_k = matches!(
            spec,
            DynamicSpec::Recycled {
                recycle_size: None,
                ..
            }
        ) && p.name == "recycle_size";
        if !absent_k && (*v < p.min || *v > p.max) {
            let path = if table.params.iter().any(|q| q.name == p.name) {
                format!("{}.{}", table.tag, p.name)
            } else {
                format!(
                    "{}.mode.{}.{}",
                    table.tag,
                    spec.mode_tag().unwrap_or_default(),
                    p.name
                )
            };
            let message = format!("{v} is outside {}..={}", p.min, p.max);
            e.push((i, SpecError::new(&path, message, p.range_fix)));
        }
    }
    if let DynamicSpec::Hax {
        k_lsh: 0, k_ks: 0, ..
    } = spec
    {
        e.push((
            0,
            SpecError::new(
                "hax.k_lsh",
                "k_lsh + k_ks is 0",
                "at least one budget must be >= 1 (official default 32 + 32)",
            ),
        ));
    }
    if let DynamicSpec::Recycled { pool, .. } = spec {
        if pool % 2 == 0 {
            e.push((
                3,
                SpecError::new(
                    "recycled.pool",
                    format!("{pool} is even"),
                    "the max-pool width must be odd (default 7)",
                ),
            ));
        }
    }
    if let DynamicSpec::Longheads { chunk, begin, .. } = *spec {
        if chunk >= 1 && begin >= 1 && begin % chunk != 0 {
            e.push((
                2,
                SpecError::new(
                    "longheads.begin",
                    format!("begin = {begin} is not a multiple of chunk = {chunk}"),
                    "the begin length B must be a positive multiple of the chunk size w (default 4096 = 16 x 256)",
                ),
            ));
        }
    }
    // Stable: a cross-parameter error follows the range errors of the parameter it names.
    e.sort_by_key(|(i, _)| *i);
    if e.is_empty() {
        Ok(())
    } else {
        Err(e.into_iter().map(|(_, x)| x).collect())
    }
}

/// The built-in dynamic variants: every family and mode ([`FAMILIES`] order), f16 and
/// bf16, `D = 64` and `128`, with the papers' default parameters.
pub fn dynamic_catalog() -> Vec<DynamicSpec> {
    let mut v = Vec::new();
    for dtype in [DType::F16, DType::Bf16] {
        for head_dim in [HeadDim::D64, HeadDim::D128] {
            for f in &FAMILIES {
                let modes: Vec<Option<&str>> = if f.modes.is_empty() {
                    vec![None]
                } else {
                    f.modes.iter().map(|m| Some(m.name)).collect()
                };
                for m in modes {
                    v.extend(DynamicSpec::with_defaults(f, m, dtype, head_dim));
                }
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_canonical() {
        let names: std::collections::BTreeSet<_> = dynamic_catalog()
            .iter()
            .map(|s| s.canonical_name())
            .collect();
        assert_eq!(names.len(), dynamic_catalog().len());
        assert!(names.contains("landmark_train_d64_f16"));
        assert!(names.contains("topk_split_d128_bf16"));
        assert!(names.contains("longheads_d128_bf16"));
        for n in &names {
            assert!(n
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
        }
    }

    #[test]
    fn validation_names_fields() {
        let bad = DynamicSpec::Hax {
            dtype: DType::F16,
            head_dim: HeadDim::D64,
            k_lsh: 0,
            k_ks: 0,
            hash_bits: 13,
        };
        let errs = validate_dynamic(&bad).unwrap_err();
        let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["hax.k_lsh", "hax.hash_bits"]);
        let bad = DynamicSpec::Landmark {
            dtype: DType::F16,
            head_dim: HeadDim::D64,
            mem_freq: 0,
            mode: LandmarkMode::Retrieval { top_k: 0 },
        };
        let errs = validate_dynamic(&bad).unwrap_err();
        assert_eq!(errs[0].path, "landmark.mem_freq");
        assert_eq!(errs[1].path, "landmark.mode.retrieval.top_k");
        assert!(errs[1].to_string().contains("fix:"));
        let bad = DynamicSpec::Topk {
            dtype: DType::F16,
            head_dim: HeadDim::D64,
            sink: 0,
            recent: 0,
            k: 0,
            split: false,
        };
        assert_eq!(validate_dynamic(&bad).unwrap_err()[0].path, "topk.k");
        let lh = |chunk, chunks_per_query, begin| DynamicSpec::Longheads {
            dtype: DType::F16,
            head_dim: HeadDim::D64,
            chunk,
            chunks_per_query,
            begin,
            theta: 10000,
        };
        let paths = |s| {
            validate_dynamic(&s)
                .unwrap_err()
                .into_iter()
                .map(|e| e.path)
                .collect::<Vec<_>>()
        };
        assert_eq!(paths(lh(16, 2, 32)), ["longheads.chunks_per_query"]);
        assert_eq!(paths(lh(16, 3, 40)), ["longheads.begin"]);
        assert_eq!(paths(lh(0, 3, 0)), ["longheads.chunk", "longheads.begin"]);
        validate_dynamic(&lh(16, 3, 16)).unwrap();
        for s in dynamic_catalog() {
            validate_dynamic(&s).unwrap();
        }
    }

    #[test]
    fn serde_round_trip() {
        for s in dynamic_catalog() {
            let j = serde_json::to_string(&s).unwrap();
            assert_eq!(serde_json::from_str::<DynamicSpec>(&j).unwrap(), s, "{j}");
        }
        let j = r#"{"family":"landmark","dtype":"bf16","head_dim":"128","mem_freq":31,"mode":{"retrieval":{"top_k":2}}}"#;
        let s: DynamicSpec = serde_json::from_str(j).unwrap();
        assert_eq!(s.canonical_name(), "landmark_retrieval_d128_bf16");
        let unknown =
            r#"{"family":"cca","dtype":"f16","head_dim":"64","group":4,"window":8,"extra":1}"#;
        assert!(serde_json::from_str::<DynamicSpec>(unknown).is_err());
    }
}
