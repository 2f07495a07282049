//! What the static model reads from a candidate's machine code: the main loop (one key tile
//! per iteration) of its SASS, along its interior-tile and its partial-tile path, counted per
//! warp by the analyzer of `attnforge-runtime`
//! ([`attnforge_runtime::main_loops`], the same one as docs/anchors.md and the CI ratchet).

use serde::{Deserialize, Serialize};

use attnforge_codegen::spec::KernelSpec;
use attnforge_codegen::tile::TileConfig;
use attnforge_runtime::{main_loops, sass, InstrClass, MainLoopHints};

/// Per-warp counts of one main-loop iteration (one key tile), nested loops weighted.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoopCounts {
    /// Instructions issued.
    pub instructions: f64,
    /// m16n8k16-equivalent MMAs.
    pub mma: f64,
    /// MUFU instructions (`exp2`, reciprocal).
    pub mufu: f64,
    /// Bytes moved from shared memory by `ldmatrix`.
    pub ldmatrix_bytes: f64,
    /// The partial-tile path's counts (the counts above are the interior-tile path's), none
    /// in a cache written before they were counted: partial tiles then cost as interior ones.
    #[serde(default)]
    pub partial: Option<PartialCounts>,
}

/// Per-warp counts of one main-loop iteration along the partial-tile path (a partial or edge
/// key tile: the per-element mask, scale and select), which has the interior path's MMA and
/// `ldmatrix` work.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartialCounts {
    /// Instructions issued.
    pub instructions: f64,
    /// MUFU instructions.
    pub mufu: f64,
}

impl LoopCounts {
    /// Instructions per MMA.
    pub fn instr_per_mma(&self) -> f64 {
        self.instructions / self.mma.max(1e-9)
    }
}

/// The main-loop counts of a compiled candidate (`cubin`), or why there are none (no
/// disassembler, no tensor-core loop: the FMA kernels of f32).
pub fn loop_counts(
    spec: &KernelSpec,
    tile: &TileConfig,
    cubin: &[u8],
) -> Result<LoopCounts, String> {
    let text = sass(cubin).map_err(|e| format!("SASS: {e}"))?;
    let reports = main_loops(&text, &MainLoopHints::for_kernel(spec, tile))
        .map_err(|e| format!("main loop: {e}"))?;
    let m = reports
        .first()
        .ok_or_else(|| "no main loop in the SASS".to_owned())?;
    if m.mma <= 0.0 {
        return Err("the main loop has no MMA (FMA kernel)".to_owned());
    }
    Ok(LoopCounts {
        instructions: m.instructions,
        mma: m.mma,
        mufu: m.by_class.get(&InstrClass::Mufu).copied().unwrap_or(0.0),
        ldmatrix_bytes: m.ldmatrix_bytes,
        partial: Some(PartialCounts {
            instructions: m.partial.instructions,
            mufu: m
                .partial
                .by_class
                .get(&InstrClass::Mufu)
                .copied()
                .unwrap_or(0.0),
        }),
    })
}
