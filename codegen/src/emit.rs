//! Emission: print a [`KernelIr`] as one self-contained CUDA C++ translation unit
//! (header comment with spec and tile, the device prelude and the main-loop template pasted
//! between `// ---- begin/end <file> ----` markers, user device functions in namespace `afu`,
//! the kernel). The kernel is a thin `extern "C"` wrapper: it builds the policies of
//! `cuda/af_fwd.cuh` from the IR's C expressions (schedule, per-block mask and score hooks,
//! scoring) and calls the main-loop template `af_fwd_tc` or `af_fwd_fma`.
//!
//! ```
//! use attnforge_codegen::{emit::emit, spec::*, tile::{Arch, TileConfig}};
//! let spec = KernelSpec::new(DType::Bf16, HeadDim::D128, Mask::Causal, ScoreMod::None);
//! let k = emit(&spec, &TileConfig::new(64, 64, 4, 1), Arch::Sm80).unwrap();
//! assert!(k.source.contains("extern \"C\" __global__"));
//! assert_eq!(k.name, "flash_fwd_causal_d128_bf16");
//! ```

use std::fmt::Write as _;

use crate::args::LaunchMetadata;
use crate::check::SpecError;
use crate::ir::{lower_with_symbol, KernelIr, Mainloop, Scoring, TileSchedule};
use crate::spec::KernelSpec;
use crate::tile::{Arch, TileConfig};

/// The platform prelude (`cuda/af_prelude.cuh`).
pub const PRELUDE_CUH: &str = include_str!("../cuda/af_prelude.cuh");
/// The attention helpers (`cuda/af_attn.cuh`).
pub const ATTN_CUH: &str = include_str!("../cuda/af_attn.cuh");

/// The forward policies shared by both main loops (`cuda/af_fwd.cuh`).
pub const FWD_CUH: &str = include_str!("../cuda/af_fwd.cuh");
/// The tensor-core main-loop template (`cuda/af_fwd_tc.cuh`).
pub const FWD_TC_CUH: &str = include_str!("../cuda/af_fwd_tc.cuh");
/// The FMA main-loop template (`cuda/af_fwd_fma.cuh`).
pub const FWD_FMA_CUH: &str = include_str!("../cuda/af_fwd_fma.cuh");
/// The Hopper device helpers (`cuda/af_hopper.cuh`: wgmma, mbarriers, TMA, setmaxnreg).
pub const HOPPER_CUH: &str = include_str!("../cuda/af_hopper.cuh");
/// The Hopper warpgroup-MMA main-loop template (`cuda/af_fwd_wg.cuh`).
pub const FWD_WG_CUH: &str = include_str!("../cuda/af_fwd_wg.cuh");

/// Device prelude files of a kernel with `mainloop`, in paste order: `(file name, text)`.
pub fn prelude_files(mainloop: Mainloop) -> Vec<(&'static str, &'static str)> {
    let mut files = vec![
        ("af_prelude.cuh", PRELUDE_CUH),
        ("af_attn.cuh", ATTN_CUH),
        ("af_fwd.cuh", FWD_CUH),
    ];
    match mainloop {
        Mainloop::TensorCore => files.push(("af_fwd_tc.cuh", FWD_TC_CUH)),
        Mainloop::Fma => files.push(("af_fwd_fma.cuh", FWD_FMA_CUH)),
        Mainloop::Wgmma => {
            files.push(("af_hopper.cuh", HOPPER_CUH));
            files.push(("af_fwd_wg.cuh", FWD_WG_CUH));
        }
    }
    files
}

/// Which CUDA symbol the kernel gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SymbolStyle {
    /// The canonical name (`flash_fwd_causal_d128_bf16`).
    #[default]
    Canonical,
    /// The canonical name with the tile suffix (`..._bf16__m64n64w4s1`).
    WithTile,
}

/// An emitted kernel.
#[derive(Clone, Debug, PartialEq)]
pub struct EmittedKernel {
    /// CUDA symbol (`extern "C"`).
    pub name: String,
    /// The complete `.cu` text.
    pub source: String,
    /// Launch metadata (serialize it next to the `.cu`).
    pub metadata: LaunchMetadata,
}

/// Emit the kernel for `spec` and `tile` with the canonical name as symbol.
pub fn emit(
    spec: &KernelSpec,
    tile: &TileConfig,
    arch: Arch,
) -> Result<EmittedKernel, Vec<SpecError>> {
    emit_with(spec, tile, arch, SymbolStyle::Canonical)
}

/// Emit with a chosen symbol style.
pub fn emit_with(
    spec: &KernelSpec,
    tile: &TileConfig,
    arch: Arch,
    style: SymbolStyle,
) -> Result<EmittedKernel, Vec<SpecError>> {
    let symbol = match style {
        SymbolStyle::Canonical => crate::name::canonical_name(spec),
        SymbolStyle::WithTile => crate::name::canonical_name_with_tile(spec, tile),
    };
    let ir = lower_with_symbol(spec, tile, arch, symbol.clone())?;
    Ok(EmittedKernel {
        source: emit_ir(&ir),
        metadata: LaunchMetadata::new(spec, tile, arch, &symbol),
        name: symbol,
    })
}

/// Print a lowered kernel.
pub fn emit_ir(ir: &KernelIr) -> String {
    let mut o = String::new();
    header(&mut o, ir);
    paste_files(&mut o, &prelude_files(ir.mainloop));
    device_fns(&mut o, ir);
    kernel(&mut o, ir);
    o
}

/// Paste device files between `// ---- begin/end <file> ----` markers.
pub(crate) fn paste_files(o: &mut String, files: &[(&str, &str)]) {
    for (name, text) in files {
        let _ = writeln!(o, "// ---- begin {name} ----");
        o.push_str(text);
        if !text.ends_with('\n') {
            o.push('\n');
        }
        let _ = writeln!(o, "// ---- end {name} ----\n");
    }
}

/// The user device functions, in namespace `afu`.
pub(crate) fn device_fns(o: &mut String, ir: &KernelIr) {
    if !ir.device_fns.is_empty() {
        // the namespace keeps user names apart from the kernel's arguments and the templates'
        // locals: `afu::acc` is never shadowed by a local `acc`
        let _ = writeln!(
            o,
            "// user device functions (called as afu::<name>)\nnamespace {} {{\n",
            crate::ir::USER_NAMESPACE
        );
        for f in &ir.device_fns {
            let _ = writeln!(o, "{}\n", f.text);
        }
        let _ = writeln!(o, "}}  // namespace {}\n", crate::ir::USER_NAMESPACE);
    }
}

fn header(o: &mut String, ir: &KernelIr) {
    let t = &ir.tile;
    let _ = writeln!(o, "// attnforge generated kernel: {}", ir.symbol);
    // the statistics' reduce, pool and top_k are arguments of the follow-up kernel: the
    // forward kernel's text (and its simulator / NVRTC cache key) does not depend on them
    let mut spec = ir.spec.clone();
    if spec.stats.is_some() {
        spec.stats = Some(Default::default());
    }
    let _ = writeln!(
        o,
        "// spec: {}",
        serde_json::to_string(&spec).unwrap_or_default()
    );
    let _ = writeln!(
        o,
        "// tile: block_m={} block_n={} warps={} stages={} | threads={} dynamic_smem={} bytes",
        t.block_m,
        t.block_n,
        t.warps,
        t.stages,
        t.threads(),
        ir.smem.bytes()
    );
    let sched = match &ir.schedule {
        TileSchedule::Analytic { .. } => "analytic tile classifier".to_string(),
        TileSchedule::Lists { block_q, block_k } => {
            format!("runtime block lists ({block_q}x{block_k} blocks)")
        }
    };
    let mainloop = match ir.mainloop {
        Mainloop::Fma => "fma (f32 accumulation)".to_string(),
        Mainloop::TensorCore => format!(
            "tensor cores (mma.sync m16n8k16, f32 accumulation; ldmatrix; cp.async, {} stage{})",
            t.stages,
            if t.stages == 1 { "" } else { "s" }
        ),
        Mainloop::Wgmma => format!(
            "warpgroup MMA (sm_90a wgmma m64n{}k16 / m64n{}k16, f32 accumulation; cp.async, {} stage{})",
            t.block_n,
            ir.head_dim,
            t.stages,
            if t.stages == 1 { "" } else { "s" }
        ),
    };
    let _ = writeln!(o, "// mainloop: {mainloop} | tiles: {sched}");
    if ir.spec.layout.is_decode() {
        let _ = writeln!(
            o,
            "// grid: (num_splits * ceil(heads_q / heads_kv * max_b Sq_b / {}), heads_kv, batch), block: ({}, 1, 1)",
            t.block_m,
            t.threads()
        );
    } else {
        let rows = if ir.spec.layout.is_dense() {
            "seq_q"
        } else {
            "max_b Sq_b"
        };
        let _ = writeln!(
            o,
            "// grid: (ceil({rows} / {}), heads_q, batch), block: ({}, 1, 1)",
            t.block_m,
            t.threads()
        );
    }
    let _ = writeln!(o, "// generated by attnforge-codegen; do not edit\n");
}

/// Number of leading kernel arguments every forward kernel has (tensors, shapes, strides,
/// scale), in the order of the fields of `af_fwd_args` (`cuda/af_fwd.cuh`).
const CORE_ARGS: usize = 23;

fn signature(o: &mut String, ir: &KernelIr) {
    let _ = writeln!(
        o,
        "extern \"C\" __global__ void __launch_bounds__({}, 1) {}(",
        ir.tile.threads(),
        ir.symbol
    );
    print_params(o, &ir.args.iter().collect::<Vec<_>>());
}

/// The parameter list of a kernel signature and the opening brace of its body.
pub(crate) fn print_params(o: &mut String, args: &[&crate::args::KernelArg]) {
    let n = args.len();
    for (i, a) in args.iter().enumerate() {
        let restrict = if matches!(a.kind, crate::args::ArgKind::Ptr { .. }) {
            " __restrict__"
        } else {
            ""
        };
        let _ = writeln!(
            o,
            "    {}{} {}{}",
            a.kind.c_type(),
            restrict,
            a.name,
            if i + 1 < n { "," } else { ")" }
        );
    }
    o.push_str("{\n");
}

/// `const af_fwd_args<T> args = {..};` from the kernel's leading arguments.
pub(crate) fn core_args(o: &mut String, ir: &KernelIr) {
    let core: Vec<&str> = ir.args[..CORE_ARGS]
        .iter()
        .map(|a| a.name.as_str())
        .collect();
    let lead = format!("    const af_fwd_args<{}> args = {{", ir.dtype.cuda());
    let _ = writeln!(o, "{lead}{}}};", wrap_list(&core, lead.len(), "        "));
}

/// The kernel: a wrapper that builds the policies from its arguments and calls the main-loop
/// template (`af_fwd_tc` or `af_fwd_fma`).
fn kernel(o: &mut String, ir: &KernelIr) {
    let (schedule, scoring, mut layout) = policies(o, ir, "num_splits, o_part, lse_part");
    let mainloop = match ir.mainloop {
        Mainloop::Fma => "af_fwd_fma",
        Mainloop::TensorCore => "af_fwd_tc",
        Mainloop::Wgmma => "af_fwd_wg",
    };
    let mut stats = "";
    // a decode kernel's statistics are a launch of their own (emit_stats_sweep): its rows' lse
    // is final only after the split merge
    if ir.spec.stats.is_some() && !ir.spec.layout.is_decode() {
        o.push_str(
            "    // statistics: after the epilogue, P = exp(s - lse) summed per key over the block's rows\n    \
             const af_key_mass_stats stats = {stats_partial};\n",
        );
        // the statistics policy follows the layout argument, which dense kernels otherwise omit
        if layout.is_empty() {
            layout = ", af_dense_layout{}";
        }
        stats = ", stats";
    }
    let _ = writeln!(
        o,
        "    {mainloop}<Tile>(args, {schedule}, block_hooks, {scoring}{layout}{stats});\n}}"
    );
}

/// The signature and the policies of a forward kernel's wrapper (tile, arguments, schedule,
/// block hooks, layout with the decode layout's `splits` expression): the schedule's name,
/// the scoring expression and the layout argument of the call.
fn policies(
    o: &mut String,
    ir: &KernelIr,
    splits: &str,
) -> (&'static str, &'static str, &'static str) {
    signature(o, ir);
    let t = &ir.tile;
    let _ = writeln!(
        o,
        "    using Tile = af_tile<{}, {}, {}, {}, {}>;  // block_m, block_n, warps, stages, head dim",
        t.block_m, t.block_n, t.warps, t.stages, ir.head_dim
    );
    core_args(o, ir);
    schedule(o, ir);
    block_hooks(o, ir);
    let layout = layout(o, ir, splits);
    let schedule = if ir.spec.layout.is_decode() {
        o.push_str("    // the block's key split of the schedule's tiles\n    const auto split_schedule = af_split(schedule);\n");
        "split_schedule"
    } else {
        "schedule"
    };
    (schedule, scoring(ir), layout)
}

/// The statistics sweep of a decode spec with `stats` (docs/statistics.md, "Decode"): a
/// kernel of its own, launched after the decode kernel and the split merge, on the merged
/// lse: `af_stats_sweep_only` over the decode layout without splits, the policies built as
/// the decode kernel builds them. Same arguments as the decode kernel (`num_splits`,
/// `o_part`, `lse_part`, `o` unused; `lse` read); symbol `<decode kernel>_sweep`; grid
/// `(ceil(heads_q / heads_kv * max_b Sq_b / block_m), heads_kv, batch)`, dynamic shared
/// memory [`TileConfig::stats_sweep_smem_bytes`]. An error names `stats` or `layout` for a
/// spec that is not a decode spec with statistics.
pub fn emit_stats_sweep(
    spec: &KernelSpec,
    tile: &TileConfig,
    arch: Arch,
    style: SymbolStyle,
) -> Result<EmittedKernel, Vec<SpecError>> {
    if spec.stats.is_none() || !spec.layout.is_decode() {
        return Err(vec![SpecError::new(
            "stats",
            format!(
                "a statistics sweep kernel exists for a decode spec with `stats` (layout `{}`, stats {})",
                spec.layout.tag(),
                if spec.stats.is_some() { "set" } else { "absent" }
            ),
            "emit the forward kernel instead (dense, varlen and paged kernels run the sweep after their epilogue)",
        )]);
    }
    let fwd = emit_with(spec, tile, arch, style)?;
    let symbol = format!("{}{SWEEP_SUFFIX}", fwd.name);
    let ir = lower_with_symbol(spec, tile, arch, symbol.clone())?;
    let smem = tile.stats_sweep_smem_bytes(spec);
    let mut o = String::new();
    let _ = writeln!(o, "// attnforge generated kernel: {symbol}");
    let _ = writeln!(
        o,
        "// statistics sweep of {} after its split merge (docs/statistics.md) | grid: (ceil(heads_q / heads_kv * max_b Sq_b / {}), heads_kv, batch), block: ({}, 1, 1), dynamic_smem={smem} bytes",
        fwd.name,
        tile.block_m,
        tile.threads()
    );
    let _ = writeln!(o, "// generated by attnforge-codegen; do not edit\n");
    paste_files(
        &mut o,
        &[
            ("af_prelude.cuh", PRELUDE_CUH),
            ("af_attn.cuh", ATTN_CUH),
            ("af_fwd.cuh", FWD_CUH),
        ],
    );
    device_fns(&mut o, &ir);
    let (schedule, scoring, layout) = policies(&mut o, &ir, "1, nullptr, nullptr");
    let _ = writeln!(
        o,
        "    // the merged lse of every row: no splits\n    const af_key_mass_stats stats = {{stats_partial}};\n    \
         af_stats_sweep_only<Tile>(args, {schedule}, block_hooks, {scoring}{layout}, stats);\n}}"
    );
    let mut metadata = fwd.metadata;
    metadata.kernel_name = symbol.clone();
    metadata.grid[0] = "ceil(heads_q / heads_kv * max_seqlen_q / block_m)".into();
    metadata.dynamic_smem_bytes = smem;
    metadata.needs_smem_opt_in = smem > arch.smem_without_opt_in();
    metadata.requirements.push(format!(
        "statistics sweep: launch after {} (and its merge kernel when num_splits > 1) with the same \
         arguments: lse holds the merged lse it reads; num_splits, o_part, lse_part and o are not \
         used; stats_partial [B, Hq, ceil(Hq / Hkv * max_b Sq_b / block_m), R] f32 zero-filled \
         (R = max_pages * page_size, or Tk over packed keys), then attnforge_stats_reduce with \
         qblocks = ceil(Hq / Hkv * max_b Sq_b / block_m) and seq_k = R",
        fwd.name
    ));
    Ok(EmittedKernel {
        name: symbol,
        source: o,
        metadata,
    })
}

/// Suffix of the statistics sweep kernel's symbol ([`emit_stats_sweep`]).
pub const SWEEP_SUFFIX: &str = "_sweep";

/// The scoring policy object of the kernel (C++ expression).
pub(crate) fn scoring(ir: &KernelIr) -> &'static str {
    match ir.scoring {
        Scoring::Dot => "af_dot_scoring{}",
        Scoring::LmInfinite => {
            "af_lminf_scoring(global_tokens, local_window, dist_limit, rope_theta, seq_k)"
        }
    }
}

/// The layout policy of a serving kernel (nothing for dense: the template's default), and
/// the extra argument of the main-loop call.
fn layout(o: &mut String, ir: &KernelIr, splits: &str) -> &'static str {
    use crate::spec::Layout;
    match ir.spec.layout {
        Layout::Dense => "",
        Layout::Varlen => {
            o.push_str(
                "    // packed sequences: rows cu_seqlens_q[b] .. cu_seqlens_q[b + 1] of q, cu_seqlens_k[b] .. of k, v\n    \
                 const af_varlen_layout layout = {cu_seqlens_q, cu_seqlens_k};\n",
            );
            ", layout"
        }
        Layout::Paged => {
            o.push_str(
                "    // paged KV cache: key j of sequence b is slot j % page_size of page block_table[b][j / page_size]\n    \
                 const af_paged_layout layout(cu_seqlens_q, block_table, seqlens_k, max_pages, page_size);\n",
            );
            ", layout"
        }
        Layout::Decode => {
            let _ = write!(
                o,
                "    // decode: the GQA group's query heads packed into the M tile, keys split num_splits ways\n    \
                 const af_decode_layout<af_paged_layout> layout = {{\n        \
                 af_paged_layout(cu_seqlens_q, block_table, seqlens_k, max_pages, page_size), {splits}}};\n",
            );
            ", layout"
        }
        Layout::DecodeVarlen => {
            let _ = write!(
                o,
                "    // decode over packed keys: the GQA group's query heads packed into the M tile, keys split num_splits ways\n    \
                 const af_decode_layout<af_varlen_layout> layout = {{{{cu_seqlens_q, cu_seqlens_k}}, {splits}}};\n",
            );
            ", layout"
        }
    }
}

/// `a, b, c` broken into lines of at most 100 columns (the first line starts at column
/// `start`), continuation lines indented by `indent`.
fn wrap_list(items: &[&str], start: usize, indent: &str) -> String {
    let mut out = String::new();
    let mut col = start;
    for (i, it) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
            col += 1;
            if col + 1 + it.len() + 2 > 100 {
                out.push('\n');
                out.push_str(indent);
                col = indent.len();
            } else {
                out.push(' ');
                col += 1;
            }
        }
        out.push_str(it);
        col += it.len();
    }
    out
}

/// The schedule policy: the analytic key range and tile classifier, or the block lists.
pub(crate) fn schedule(o: &mut String, ir: &KernelIr) {
    match &ir.schedule {
        TileSchedule::Analytic { lo, hi, classifier } if !ir.spec.layout.is_dense() => {
            let classify = match classifier {
                Some(c) => format!(
                    "[=](long long p_lo, long long p_hi, long long c0, long long c1) {{ return {c}; }}"
                ),
                None => "af_all_full{}".to_string(),
            };
            // seq_q, seq_k: the block's sequence lengths (parameters shadowing the packed totals)
            let _ = writeln!(
                o,
                "    // key tiles [lo, hi) of the query positions [p_lo, p_hi] of a sequence of seq_q queries and seq_k keys\n    \
                 const auto schedule = af_analytic_seq(\n        \
                 [=](long long p_lo, long long p_hi, int seq_q, int seq_k) -> long long {{ return {lo}; }},\n        \
                 [=](long long p_lo, long long p_hi, int seq_q, int seq_k) -> long long {{ return {hi}; }},\n        \
                 {classify});"
            );
        }
        TileSchedule::Analytic { lo, hi, classifier } => {
            let classify = match classifier {
                Some(c) => format!(
                    "[=](long long p_lo, long long p_hi, long long c0, long long c1) {{ return {c}; }}"
                ),
                None => "af_all_full{}".to_string(),
            };
            let _ = writeln!(
                o,
                "    // key tiles [lo, hi) of the query positions [p_lo, p_hi], each classified skip / full / partial\n    \
                 const auto schedule = af_analytic(\n        \
                 [=](long long p_lo, long long p_hi) -> long long {{ return {lo}; }},\n        \
                 [=](long long p_lo, long long p_hi) -> long long {{ return {hi}; }},\n        \
                 {classify});"
            );
        }
        TileSchedule::Lists { block_q, block_k } => {
            let _ = writeln!(
                o,
                "    // runtime block lists: full blocks, then partial blocks\n    \
                 const af_block_list_schedule<{block_q}, {block_k}> schedule = {{\n        {}}};",
                wrap_list(&crate::args::BLOCK_LIST_ARGS, 8, "        ")
            );
        }
    }
}

/// The per-query-block policies: the prologue statements, the element mask and the score
/// modification, as a lambda of `(b, h)`.
pub(crate) fn block_hooks(o: &mut String, ir: &KernelIr) {
    o.push_str(
        "    // per query block (batch b, query head h): element mask and score modification\n    \
         const auto block_hooks = [=](int b, int h) {\n",
    );
    for p in &ir.prologue {
        let _ = writeln!(o, "        {p}");
    }
    let mask = match &ir.element_mask {
        Some(m) => {
            format!("af_mask([=](long long q_pos, long long kv_pos) {{ return {m}; }})")
        }
        None => "af_no_mask{}".to_string(),
    };
    let score = match &ir.score_mod {
        Some(s) => format!("[=](float x, long long q_pos, long long kv_pos) {{ return {s}; }}"),
        None => "af_no_score_mod{}".to_string(),
    };
    let _ = writeln!(
        o,
        "        return af_hooks({mask},\n                        {score});\n    }};"
    );
}

/// k-steps (of 16) of the tensor-core Q K^T loop over the head dimension that one iteration
/// of its loop holds: all of them (16 = D / 16 at the largest head dimension, 256). The loop
/// is fully unrolled (`#pragma unroll` in `af_tc_qk`, `cuda/af_fwd_tc.cuh`; a unit test
/// keeps the two consistent), so every `ldmatrix` address of a key tile is a per-lane base
/// plus a constant: the 2-trip loop of `#pragma unroll 4` recomputed its addresses per trip
/// (d128 main loop 6.65 -> 6.27 instructions per MMA on sm_80, 2-core dev machine, no GPU).
pub const QK_K_UNROLL: usize = 16;

/// The merge kernel of a split decode ([`crate::spec::Layout::Decode`] with `num_splits > 1`):
/// `af_split_merge` of `cuda/af_fwd.cuh` for the element type and head dimension, named
/// `af_split_merge_d<D>_<dtype>`. Arguments: `o_part, lse_part, o, lse, num_splits, tokens
/// (Tq), heads (Hq)`; grid `ceil(Tq * Hq / 4)` blocks of 128 threads.
pub fn emit_split_merge(dtype: crate::spec::DType, head_dim: crate::spec::HeadDim) -> EmittedMerge {
    let d = head_dim.get();
    let name = format!("af_split_merge_d{d}_{}", dtype.short());
    let mut o = String::new();
    let _ = writeln!(
        o,
        "// attnforge generated kernel: {name} (log-sum-exp merge of a split decode's partials)\n"
    );
    paste_files(
        &mut o,
        &[
            ("af_prelude.cuh", PRELUDE_CUH),
            ("af_attn.cuh", ATTN_CUH),
            ("af_fwd.cuh", FWD_CUH),
        ],
    );
    let t = dtype.cuda();
    let _ = writeln!(
        o,
        "extern \"C\" __global__ void __launch_bounds__({MERGE_THREADS}) {name}(\n    \
         const float* __restrict__ o_part, const float* __restrict__ lse_part, {t}* __restrict__ o,\n    \
         float* __restrict__ lse, int num_splits, int tokens, int heads) {{\n    \
         af_split_merge<{d}>(o_part, lse_part, o, lse, num_splits, tokens, heads);\n}}"
    );
    EmittedMerge { name, source: o }
}

/// Threads per block of the split-KV merge kernel (4 warps, one row each).
pub const MERGE_THREADS: usize = 128;

/// An emitted split-KV merge kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmittedMerge {
    /// CUDA symbol.
    pub name: String,
    /// The `.cu` text.
    pub source: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qk_unroll_matches_the_template() {
        let qk = &FWD_TC_CUH[FWD_TC_CUH.find("void af_tc_qk(").unwrap()..];
        assert_eq!(
            QK_K_UNROLL,
            256 / 16,
            "full unroll covers the largest head dimension"
        );
        let pragma = "#pragma unroll\n    for (int kk = 0; kk < D / 16; ++kk)";
        assert!(
            qk.contains(pragma),
            "af_tc_qk must unroll its k-steps fully"
        );
    }

    #[test]
    fn decode_statistics_are_a_sweep_kernel_of_their_own() {
        use crate::spec::{DType, HeadDim, Layout, Mask, ScoreMod, StatsSpec};
        let spec =
            crate::spec::KernelSpec::new(DType::Bf16, HeadDim::D64, Mask::Causal, ScoreMod::None)
                .with_gqa()
                .with_layout(Layout::Decode)
                .with_stats(StatsSpec::default());
        let tile = TileConfig::new(64, 64, 4, 2);
        let fwd = emit(&spec, &tile, Arch::Sm80).expect("decode kernel");
        // the decode kernel itself has no statistics policy: out and lse as without stats
        assert!(!fwd.source.contains("af_key_mass_stats stats"));
        assert_eq!(
            fwd.metadata.args.last().map(|a| a.name.as_str()),
            Some("stats_partial")
        );
        let k = emit_stats_sweep(&spec, &tile, Arch::Sm80, SymbolStyle::Canonical).expect("sweep");
        assert_eq!(k.name, format!("{}{SWEEP_SUFFIX}", fwd.name));
        assert_eq!(
            k.metadata.args, fwd.metadata.args,
            "the decode kernel's arguments"
        );
        assert!(k
            .source
            .contains("af_stats_sweep_only<Tile>(args, split_schedule"));
        assert!(k.source.contains("page_size), 1, nullptr, nullptr};"));
        assert!(!k.source.contains("af_fwd_tc<Tile>("));
        assert_eq!(
            k.metadata.dynamic_smem_bytes,
            tile.stats_sweep_smem_bytes(&spec)
        );
        let varlen = spec.clone().with_layout(Layout::Varlen);
        let e = emit_stats_sweep(&varlen, &tile, Arch::Sm80, SymbolStyle::Canonical)
            .expect_err("a prefill layout runs the sweep in its forward kernel");
        assert_eq!(e[0].path, "stats");
        let mut plain = spec;
        plain.stats = None;
        assert!(emit_stats_sweep(&plain, &tile, Arch::Sm80, SymbolStyle::Canonical).is_err());
    }

    #[test]
    fn core_args_are_the_fields_of_af_fwd_args() {
        let spec = crate::spec::KernelSpec::new(
            crate::spec::DType::F16,
            crate::spec::HeadDim::D64,
            crate::spec::Mask::Local,
            crate::spec::ScoreMod::Softcap,
        );
        let args = crate::args::kernel_args(&spec);
        assert_eq!(args[CORE_ARGS - 1].name, "scale");
        assert_eq!(args[CORE_ARGS].name, "window_left");
        let fields = &FWD_CUH[FWD_CUH.find("struct af_fwd_args {").unwrap()..];
        let fields = &fields[..fields.find("};").unwrap()];
        let mut at = 0;
        for a in &args[..CORE_ARGS] {
            let pos = fields[at..]
                .find(&format!(" {}", a.name))
                .unwrap_or_else(|| {
                    panic!("af_fwd_args lacks `{}` (or it is out of order)", a.name)
                });
            at += pos + a.name.len() + 1;
        }
    }
}
