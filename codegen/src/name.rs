//! Canonical kernel names (`docs/conventions.md`): one function, used as CUDA symbol,
//! cache key, test name, bench id and report row.
//!
//! ```
//! use attnforge_codegen::{catalog, name::canonical_name};
//! assert!(catalog().iter().any(|s| canonical_name(s) == "flash_fwd_causal_d128_bf16"));
//! ```

use crate::spec::KernelSpec;
use crate::tile::TileConfig;

/// Kernel family prefix of every forward kernel of this crate.
pub const FAMILY_FWD: &str = "flash_fwd";

/// `<family>_<mask>[_<score>]_d<D>_<dtype>[_gqa][_varlen|_paged][_stats]`, lower-case ASCII.
pub fn canonical_name(spec: &KernelSpec) -> String {
    let mut s = format!("{FAMILY_FWD}_{}", spec.mask.short());
    if let Some(score) = spec.score.short() {
        s.push('_');
        s.push_str(&score);
    }
    s.push_str(&format!("_d{}_{}", spec.head_dim.get(), spec.dtype.short()));
    if spec.gqa {
        s.push_str("_gqa");
    }
    if !spec.layout.is_dense() {
        s.push('_');
        s.push_str(spec.layout.tag());
    }
    // the statistics sweep is compiled in; reduce, pool and top_k are arguments of the
    // follow-up kernel, so they do not name a kernel
    if spec.stats.is_some() {
        s.push_str("_stats");
    }
    s
}

/// The canonical name with the tile config appended (`__m<bm>n<bn>w<warps>s<stages>`):
/// the CUDA symbol when one symbol per config is needed.
pub fn canonical_name_with_tile(spec: &KernelSpec, tile: &TileConfig) -> String {
    format!("{}__{}", canonical_name(spec), tile.suffix())
}
