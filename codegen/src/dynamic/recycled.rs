//! Recycled Attention (variants.md section 16) as a family: its host-side parameters and
//! the two kernels its decode driver launches. Nothing here is a new kernel:
//!
//! - full steps: the dense forward kernel with statistics ([`RecycledConfig::full_step_spec`]:
//!   `Mask::Full`, GQA, `stats = { reduce = max, pool, top_k = K }`) on the query row and the
//!   key prefix `0..=p_t` (the lengths are runtime arguments), then the statistics follow-up
//!   kernel (`top_keys`);
//! - partial steps: the top-k gather kernel (`Stage::TopkAttn`, `af_topk.cuh`) with an empty
//!   static window (`s_start = s_end = 0`) over a host-built, -1-terminated key list.
//!
//! ```
//! use attnforge_codegen::dynamic::{DynamicSpec, RecycledConfig};
//! use attnforge_codegen::spec::{DType, HeadDim};
//! let spec = DynamicSpec::Recycled {
//!     dtype: DType::F16, head_dim: HeadDim::D64, recycle_size: None,
//!     stride: 10, threshold_milli: 850, pool: 7,
//! };
//! assert_eq!(spec.canonical_name(), "recycled_d64_f16");
//! let c = RecycledConfig::of(&spec).unwrap();
//! assert_eq!(c.threshold(), 0.85);
//! assert_eq!(c.recycle_size_at(4096 - 64), (4096 - 64 + 1) / 8);
//! let full = c.full_step_spec(504);
//! assert_eq!(full.stats.unwrap().top_k, Some(504));
//! assert_eq!(c.kernel_names(), ["flash_fwd_full_d64_f16_gqa_stats", "attnforge_stats_reduce", "topk_attn_d64_f16"]);
//! ```

use crate::spec::{DType, HeadDim, KernelSpec, Mask, ScoreMod, StatReduce, StatsSpec};

use super::DynamicSpec;

/// Largest `K` (recycled keys per kv head) a spec accepts.
pub const MAX_RECYCLE_SIZE: usize = 1 << 20;

/// The parameters of a [`DynamicSpec::Recycled`], in the driver's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecycledConfig {
    /// Element type.
    pub dtype: DType,
    /// Head dimension.
    pub head_dim: HeadDim,
    /// `K`; `None`: the default rule ([`RecycledConfig::recycle_size_at`]).
    pub recycle_size: Option<usize>,
    /// Check stride `S`.
    pub stride: usize,
    /// Threshold `s` in thousandths.
    pub threshold_milli: usize,
    /// Max-pool width.
    pub pool: usize,
}

impl RecycledConfig {
    /// The configuration of a recycled spec; `None` for another family.
    pub fn of(spec: &DynamicSpec) -> Option<RecycledConfig> {
        match *spec {
            DynamicSpec::Recycled {
                dtype,
                head_dim,
                recycle_size,
                stride,
                threshold_milli,
                pool,
            } => Some(RecycledConfig {
                dtype,
                head_dim,
                recycle_size,
                stride,
                threshold_milli,
                pool,
            }),
            _ => None,
        }
    }

    /// The similarity threshold `s = threshold_milli / 1000` (f64, as the reference).
    pub fn threshold(&self) -> f64 {
        self.threshold_milli as f64 / 1000.0
    }

    /// `K` for a run whose first step sits at position `p_0`: the spec's, else
    /// `max(1, (p_0 + 1) / 8)` (1/8 of the cache length at step 0).
    pub fn recycle_size_at(&self, p0: usize) -> usize {
        self.recycle_size.unwrap_or(((p0 + 1) / 8).max(1))
    }

    /// The kernels a run launches: the full steps' forward kernel (its name does not
    /// depend on `K`: `top_k` is an argument of the follow-up kernel), the statistics
    /// follow-up kernel and the partial steps' gather kernel.
    pub fn kernel_names(&self) -> [String; 3] {
        [
            crate::name::canonical_name(&self.full_step_spec(1)),
            crate::stats::STATS_REDUCE_KERNEL.to_string(),
            format!(
                "{}_d{}_{}",
                super::Stage::TopkAttn.stem(),
                self.head_dim.get(),
                self.dtype.short()
            ),
        ]
    }

    /// The full steps' kernel: dense forward, `Mask::Full` over the key prefix
    /// `0..=p_t` (one query row at the last position sees every key), GQA, with the
    /// statistics of section 16 (`reduce = max`, max-pool `pool`, `top_keys` of `k` keys).
    pub fn full_step_spec(&self, k: usize) -> KernelSpec {
        KernelSpec::new(self.dtype, self.head_dim, Mask::Full, ScoreMod::None)
            .with_gqa()
            .with_stats(StatsSpec {
                reduce: StatReduce::Max,
                pool: Some(self.pool),
                top_k: Some(k),
            })
    }
}
