//! attnforge-codegen: kernel specs, validation, tile configs, tile IR and CUDA emission.
//!
//! Pipeline (one module each): [`spec`] (what) -> [`check`] (validation with field paths)
//! -> [`tile`] (how: tile configs and budgets) -> [`ir`] (lowering to the one skeleton with
//! hooks) -> [`emit`] (CUDA text). [`args`] holds the flat kernel argument list and launch
//! metadata, [`name`] the canonical names, [`masks`] the mask table (one entry per built-in
//! mask; everything mask-specific derives from it), [`scores`] the score-modification
//! table, [`blocks`] the host-side block lists,
//! [`catalog`](mod@catalog) the built-in variants. No cudarc, no syn.
//!
//! ```
//! use attnforge_codegen::prelude::*;
//! let spec = KernelSpec::new(DType::Bf16, HeadDim::D128, Mask::Causal, ScoreMod::None);
//! let tile = default_tile(&spec, Arch::Sm80).unwrap();
//! let k = emit(&spec, &tile, Arch::Sm80).unwrap();
//! assert!(k.source.starts_with("// attnforge generated kernel: flash_fwd_causal_d128_bf16"));
//! ```

pub mod args;
pub mod backward;
pub mod blocks;
pub mod catalog;
pub mod check;
pub mod dynamic;
pub mod emit;
pub mod ir;
pub mod masks;
pub mod name;
pub mod scores;
pub mod serving;
pub mod shape;
pub mod spec;
pub mod stats;
pub mod tile;

pub use catalog::catalog;

/// Everything a caller usually needs.
pub mod prelude {
    pub use crate::args::{
        kernel_args, ArgKind, Elem, KernelArg, LaunchGeometry, LaunchMetadata, Scalar,
    };
    pub use crate::blocks::{
        build_block_lists, classify_tile, validate_block_lists, BlockLists, HostMask, TileKind,
    };
    pub use crate::catalog::catalog;
    pub use crate::check::{
        validate_doc_ids, validate_problem, validate_spec, MaskParams, Problem, SpecError,
    };
    pub use crate::emit::{emit, emit_with, EmittedKernel, SymbolStyle};
    pub use crate::masks::{BuiltinMask, MaskDef, MASKS};
    pub use crate::name::{canonical_name, canonical_name_with_tile};
    pub use crate::spec::{
        BlockSize, DType, HeadDim, KernelSpec, Mask, ScoreMod, UserFunction, UserParam,
        UserParamKind, UserSource,
    };
    pub use crate::tile::{
        default_search_space, default_tile, exhaustive_search_space, Arch, TileConfig,
    };
}
