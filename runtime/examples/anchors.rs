//! The side-by-side of `cargo xtask anchors`: attnforge's forward, backward and decode kernels
//! next to FlashAttention-2's (forward, backward dQ/dK/dV, split-KV decode and combine) and
//! Triton's forward, all analysed by one analyzer ([`main_loops`]), written to a Markdown
//! file (docs/anchors.md).
//!
//! ```text
//! cargo run -p attnforge-runtime --example anchors -- ARTIFACTS OUT.md
//! ```
//!
//! `ARTIFACTS` is the folder `cargo xtask anchors` fills: `{fa2,fa2_bwd,fa2_splitkv}_sm{80,90}.cubin`
//! with the nvcc/ptxas `-v` logs `..._sm{80,90}.log`, `triton_d{64,128}_sm{80,90}.{cubin,json}`,
//! and `versions.txt` (`key: value` lines printed under "Tools and flags"). Missing anchor files
//! are reported as missing rows, not errors. attnforge's kernels are emitted and compiled
//! here through the public API (catalog spec, default tile and 128x64 with 8 warps; the
//! backward's default tile; the decode layout at the default tile; NVRTC), so the rows follow
//! whatever the generator emits today. Needs `ATTNFORGE_CUDA_HOME` (the toolchain of
//! `cargo xtask setup`) for NVRTC and cuobjdump. Everything below the kept marker of `OUT.md`
//! is kept.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use attnforge_runtime::codegen::backward::{emit_backward, BackwardTile};
use attnforge_runtime::codegen::emit::{emit_split_merge, emit_with, SymbolStyle};
use attnforge_runtime::codegen::prelude::{DType, HeadDim, KernelSpec, Mask, ScoreMod};
use attnforge_runtime::codegen::spec::Layout;
use attnforge_runtime::codegen::tile::{default_tile, Arch, TileConfig};
use attnforge_runtime::{
    build_kernel, build_with, main_loops, parse_ptxas_log, sass, CompileOptions, Compiler,
    InstrClass, KernelSource, MainLoopHints, MainLoopReport, Toolchain, TripSource,
};

/// One kernel on one architecture.
struct Measured {
    report: Option<MainLoopReport>,
    registers: Option<u32>,
    /// Spill stores + loads, bytes (ptxas), or `None` when no ptxas report exists.
    spill_bytes: Option<u64>,
    /// Local-memory instructions in the whole kernel (SASS `LDL`/`STL`).
    local_instructions: usize,
    /// Shared memory per block (static + dynamic), bytes.
    smem: Option<u64>,
    note: String,
}

/// One row of the table: a kernel on sm_80 and sm_90.
struct Row {
    kernel: String,
    rows_per_warp: usize,
    /// Instructions of a main-loop iteration per warp times this = instructions of the block
    /// per unit of work: per query-key pair (backward), per key (decode); 0 for the forward.
    per_unit: f64,
    sm80: Measured,
    sm90: Measured,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, out] = args.as_slice() else {
        eprintln!("usage: anchors ARTIFACT_DIR OUT.md");
        return ExitCode::from(2);
    };
    match run(Path::new(dir), Path::new(out)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("anchors: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Everything from this line on in docs/anchors.md is kept by a regeneration.
const KEPT_MARKER: &str = "<!-- kept by cargo xtask anchors: figures of other kernels -->";

fn run(dir: &Path, out: &Path) -> Result<(), String> {
    let tc = Toolchain::locate().map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    rows.extend(fa2_rows(dir, &tc));
    rows.extend(triton_rows(dir, &tc));
    rows.extend(our_rows()?);
    let mut backward = fa2_backward_rows(dir, &tc);
    backward.extend(our_backward_rows());
    let mut decode = fa2_decode_rows(dir, &tc);
    decode.extend(our_decode_rows()?);
    let mut merges = fa2_combine_rows(dir, &tc);
    merges.extend(our_merge_rows());
    let versions = std::fs::read_to_string(dir.join("versions.txt")).unwrap_or_default();
    let mut md = markdown(&rows, &versions);
    backward_markdown(&mut md, &backward);
    decode_markdown(&mut md, &decode, &merges);
    // the figures of kernels this tool does not compile (statistics, backward, decode) are
    // written by their own tests below the marker and kept across regenerations
    if let Some(tail) = std::fs::read_to_string(out)
        .ok()
        .and_then(|old| old.find(KEPT_MARKER).map(|i| old[i..].to_owned()))
    {
        md.push('\n');
        md.push_str(&tail);
    }
    std::fs::write(out, md).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    println!("anchors: wrote {}", out.display());
    Ok(())
}

/// m16n8k16 MMAs per warp per key tile of an attention forward (Q K^T and P V).
fn mma_per_tile(block_m: usize, block_n: usize, d: usize, warps: usize) -> f64 {
    (2 * block_m * block_n * d) as f64 / (warps as f64 * 2048.0)
}

fn missing(why: impl Into<String>) -> Measured {
    Measured {
        report: None,
        registers: None,
        spill_bytes: None,
        local_instructions: 0,
        smem: None,
        note: why.into(),
    }
}

/// Resource usage lines of `cuobjdump -res-usage`: function -> (REG, STACK, SHARED).
fn res_usage(tc: &Toolchain, cubin: &Path) -> BTreeMap<String, (u32, u64, u64)> {
    let mut out = BTreeMap::new();
    let Some(tool) = &tc.cuobjdump else {
        return out;
    };
    let Ok(o) = Command::new(tool).arg("-res-usage").arg(cubin).output() else {
        return out;
    };
    let text = String::from_utf8_lossy(&o.stdout);
    let mut current = None;
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("Function ") {
            current = Some(name.trim_end_matches(':').to_owned());
        } else if let (Some(name), true) = (&current, line.starts_with("REG:")) {
            let field = |k: &str| {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(k))
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            out.insert(
                name.clone(),
                (field("REG:") as u32, field("STACK:"), field("SHARED:")),
            );
        }
    }
    out
}

fn local_count(report: &str) -> usize {
    attnforge_runtime::sass_opcode_count(report, "LDL")
        + attnforge_runtime::sass_opcode_count(report, "STL")
}

/// The SASS of one function of a cuobjdump listing (from its `Function :` header to the next).
fn function_text<'a>(text: &'a str, name: &str) -> &'a str {
    let header = format!("Function : {name}");
    let Some(start) = text.find(&header) else {
        return "";
    };
    let rest = &text[start..];
    let end = rest[header.len()..]
        .find("Function : ")
        .map_or(rest.len(), |e| e + header.len());
    &rest[..end]
}

/// One of FA2's units compiled for one arch by `cargo xtask anchors`
/// (`<stem>_sm<cc>.cubin` and its nvcc/ptxas log).
struct Fa2Unit {
    text: String,
    cubin: PathBuf,
    log: String,
}

/// FA2's unit `stem` for sm_80 and sm_90 (`None` where it was not compiled).
fn fa2_units(dir: &Path, stem: &str) -> [Option<Fa2Unit>; 2] {
    ["sm80", "sm90"].map(|a| {
        let cubin = dir.join(format!("{stem}_{a}.cubin"));
        let bytes = std::fs::read(&cubin).ok()?;
        let text = sass(&bytes).ok()?;
        let log = std::fs::read_to_string(dir.join(format!("{stem}_{a}.log"))).unwrap_or_default();
        Some(Fa2Unit { text, cubin, log })
    })
}

/// The first function of `text` whose mangled name contains every one of `parts`.
fn find_function(text: &str, parts: &[&str]) -> Option<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Function : "))
        .map(str::trim)
        .find(|name| parts.iter().all(|p| name.contains(p)))
        .map(str::to_owned)
}

/// Resources of FA2's function `function` in `unit`: ptxas registers and spills, static
/// shared memory (`cuobjdump -res-usage`) plus `dynamic_smem` (the traits' `kSmemSize`,
/// which the launch passes), the local-memory instructions of its SASS.
fn fa2_resources(
    tc: &Toolchain,
    unit: &Fa2Unit,
    function: &str,
    dynamic_smem: u64,
    report: Option<MainLoopReport>,
) -> Measured {
    let ptxas = parse_ptxas_log(&unit.log).ok();
    let usage = ptxas
        .as_ref()
        .and_then(|p| p.kernels.iter().find(|u| u.kernel == function));
    let static_smem = res_usage(tc, &unit.cubin).get(function).map_or(0, |x| x.2);
    Measured {
        registers: usage.map(|u| u.registers),
        spill_bytes: usage.map(|u| u.spill_store_bytes + u.spill_load_bytes),
        local_instructions: local_count(function_text(&unit.text, function)),
        smem: Some(static_smem + dynamic_smem),
        report,
        note: String::new(),
    }
}

/// The main loop of FA2's function of `unit` whose name contains every one of `parts`.
fn fa2_measure(
    tc: &Toolchain,
    unit: Option<&Fa2Unit>,
    hints: &MainLoopHints,
    parts: &[&str],
    dynamic_smem: u64,
) -> Measured {
    let Some(unit) = unit else {
        return missing("FA2 not compiled (see cargo xtask anchors)");
    };
    let Ok(all) = main_loops(&unit.text, hints) else {
        return missing("SASS not readable");
    };
    let Some(r) = all
        .into_iter()
        .find(|r| parts.iter().all(|p| r.function.contains(p)))
    else {
        return missing(format!("no main loop found for {}", parts.join(" ")));
    };
    let function = r.function.clone();
    fa2_resources(tc, unit, &function, dynamic_smem, Some(r))
}

/// The mangled template flags after FA2's kernel traits: the first two bools (forward:
/// Is_dropout, Is_causal; backward: Is_dropout, Is_causal) of a kernel without dropout.
fn fa2_flags(causal: bool) -> &'static str {
    if causal {
        "EELb0ELb1E"
    } else {
        "EELb0ELb0E"
    }
}

fn fa2_rows(dir: &Path, tc: &Toolchain) -> Vec<Row> {
    // (label, head dim, block_m, block_n, causal)
    let kernels = [
        ("FA2 d128 full (128x64, 4 warps)", 128, 128, 64, false),
        ("FA2 d128 causal (128x64, 4 warps)", 128, 128, 64, true),
        ("FA2 d64 full (128x128, 4 warps)", 64, 128, 128, false),
        ("FA2 d64 causal (128x128, 4 warps)", 64, 128, 128, true),
    ];
    let units = fa2_units(dir, "fa2");
    kernels
        .iter()
        .map(|&(label, d, bm, bn, causal)| {
            let traits = format!("ILi{d}ELi{bm}ELi{bn}ELi4E");
            let hints = MainLoopHints {
                mma_per_iteration: Some(mma_per_tile(bm, bn, d, 4)),
                cp_async_per_iteration: None,
            };
            // Flash_fwd_kernel_traits::kSmemSize: Q tile + K and V tiles, bf16
            let smem = ((bm + 2 * bn) * d * 2) as u64;
            let parts = ["flash_fwd_kernel", traits.as_str(), fa2_flags(causal)];
            let measure = |k: usize| fa2_measure(tc, units[k].as_ref(), &hints, &parts, smem);
            Row {
                kernel: label.to_owned(),
                rows_per_warp: bm / 4,
                per_unit: 0.0,
                sm80: measure(0),
                sm90: measure(1),
            }
        })
        .collect()
}

/// FA2's backward dQ/dK/dV kernel (`fa2_bwd_sm*.cubin`): one block per key tile walks the
/// query tiles; an iteration is S, dP, dV, dK and dQ of one query tile (5 products), dQ added
/// to an f32 buffer with atomicAdd.
fn fa2_backward_rows(dir: &Path, tc: &Toolchain) -> Vec<Grouped> {
    let units = fa2_units(dir, "fa2_bwd");
    let mut rows = Vec::new();
    // (head dim, block_m, block_n, the traits' mangled prefix) as run_mha_bwd_hdim{64,128}
    // pick them with >= 144 KB of shared memory (A100, H100), 8 warps
    for (d, bm, bn, traits) in [
        (
            64usize,
            128usize,
            128usize,
            "ILi64ELi128ELi128ELi8ELi4ELi4ELi4E",
        ),
        (128, 64, 128, "ILi128ELi64ELi128ELi8ELi2ELi4ELi2E"),
    ] {
        for causal in [false, true] {
            let hints = MainLoopHints {
                mma_per_iteration: Some((5 * bm * bn * d) as f64 / (8.0 * 2048.0)),
                cp_async_per_iteration: None,
            };
            // Flash_bwd_kernel_traits::kSmemSize1colblock: Q and dO (double-buffered Q), K, V,
            // dS and P, bf16
            let smem = ((3 * bm * d + 2 * bn * d + 2 * bm * bn) * 2) as u64;
            let parts = [
                "flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel",
                traits,
                fa2_flags(causal),
            ];
            let measure = |k: usize| fa2_measure(tc, units[k].as_ref(), &hints, &parts, smem);
            let mask = if causal { "causal" } else { "full" };
            rows.push(Grouped {
                group: format!("FA2 d{d} {mask} (one kernel, dQ by atomicAdd)"),
                head_dim: d,
                row: Row {
                    kernel: format!(
                        "FA2 d{d} {mask} dQ+dK+dV ({bm}x{bn}, 8 warps, dQ by atomicAdd)"
                    ),
                    rows_per_warp: 0,
                    per_unit: 8.0 / (bm * bn) as f64,
                    sm80: measure(0),
                    sm90: measure(1),
                },
            });
        }
    }
    rows
}

/// FA2's split-KV decode kernel (`fa2_splitkv_sm*.cubin`), as `flash_attn_with_kvcache`
/// launches it for one token with a block table: a 64-row tile (the GQA group's heads),
/// `block_n` keys per iteration, 4 warps.
fn fa2_decode_rows(dir: &Path, tc: &Toolchain) -> Vec<Row> {
    let units = fa2_units(dir, "fa2_splitkv");
    [(64usize, 256usize), (128, 128)]
        .iter()
        .map(|&(d, bn)| {
            let hints = MainLoopHints {
                mma_per_iteration: Some(mma_per_tile(64, bn, d, 4)),
                cp_async_per_iteration: None,
            };
            let traits = format!("ILi{d}ELi64ELi{bn}ELi4E");
            let parts = ["flash_fwd_splitkv_kernel", traits.as_str()];
            let smem = ((64 + 2 * bn) * d * 2) as u64;
            let measure = |k: usize| fa2_measure(tc, units[k].as_ref(), &hints, &parts, smem);
            Row {
                kernel: format!("FA2 d{d} flash_fwd_splitkv_kernel (64x{bn}, 4 warps, paged)"),
                rows_per_warp: 16,
                per_unit: 4.0 / bn as f64,
                sm80: measure(0),
                sm90: measure(1),
            }
        })
        .collect()
}

/// A backward kernel's row and the backward pass it belongs to (FA2: its one kernel; ours:
/// the dK/dV and dQ kernels of one spec).
struct Grouped {
    group: String,
    head_dim: usize,
    row: Row,
}

/// A kernel without a main loop (the split merges): registers, shared memory, instructions.
struct Plain {
    kernel: String,
    /// (registers, shared memory bytes, SASS instructions) on sm_80 and sm_90.
    figures: [Option<(u32, u64, usize)>; 2],
}

/// SASS instructions of one function's listing.
fn instruction_count(function_sass: &str) -> usize {
    function_sass
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("/*")?.split_once("*/"))
        .filter(|(_, rest)| rest.contains(';'))
        .count()
}

fn fa2_combine_rows(dir: &Path, tc: &Toolchain) -> Vec<Plain> {
    let units = fa2_units(dir, "fa2_splitkv");
    [(64usize, 256usize, 8usize), (128, 128, 4)]
        .iter()
        .map(|&(d, bn, bm)| {
            let traits = format!("ILi{d}ELi64ELi{bn}ELi4E");
            let parts = ["flash_fwd_splitkv_combine_kernel", traits.as_str()];
            let figures = [0, 1].map(|k| {
                let unit = units[k].as_ref()?;
                let f = find_function(&unit.text, &parts)?;
                let m = fa2_resources(tc, unit, &f, 0, None);
                Some((
                    m.registers?,
                    m.smem.unwrap_or(0),
                    instruction_count(function_text(&unit.text, &f)),
                ))
            });
            Plain {
                kernel: format!(
                    "FA2 d{d} flash_fwd_splitkv_combine_kernel ({bm} rows per block, up to 32 splits, 4 warps)"
                ),
                figures,
            }
        })
        .collect()
}

fn triton_rows(dir: &Path, tc: &Toolchain) -> Vec<Row> {
    [64usize, 128]
        .iter()
        .map(|&d| {
            let mut label = format!("Triton d{d} full");
            let mut rows_per_warp = 0;
            let mut measure = |cc: u32| -> Measured {
                let stem = dir.join(format!("triton_d{d}_sm{cc}"));
                let Ok(bytes) = std::fs::read(stem.with_extension("cubin")) else {
                    return missing("Triton not compiled (see cargo xtask anchors)");
                };
                let meta = std::fs::read_to_string(stem.with_extension("json")).unwrap_or_default();
                let meta: serde_json::Value = serde_json::from_str(&meta).unwrap_or_default();
                let num = |k: &str| meta.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
                let (bm, bn, warps) = (num("block_m"), num("block_n"), num("num_warps"));
                label = format!(
                    "Triton d{d} full ({bm}x{bn}, {warps} warps, {} stages)",
                    num("num_stages")
                );
                rows_per_warp = (bm / warps.max(1)) as usize;
                let Ok(text) = sass(&bytes) else {
                    return missing("SASS not readable");
                };
                let hints = MainLoopHints {
                    mma_per_iteration: Some(mma_per_tile(
                        bm as usize,
                        bn as usize,
                        d,
                        warps as usize,
                    )),
                    cp_async_per_iteration: None,
                };
                let Some(r) = main_loops(&text, &hints)
                    .ok()
                    .and_then(|v| v.into_iter().next())
                else {
                    return missing("no main loop found");
                };
                let res = res_usage(tc, &stem.with_extension("cubin"));
                let u = res.get(&r.function).copied();
                Measured {
                    registers: u.map(|x| x.0),
                    spill_bytes: None,
                    local_instructions: local_count(&text),
                    smem: Some(u.map_or(0, |x| x.2).max(num("shared"))),
                    report: Some(r),
                    note: String::new(),
                }
            };
            let sm80 = measure(80);
            let sm90 = measure(90);
            Row {
                kernel: label,
                rows_per_warp,
                per_unit: 0.0,
                sm80,
                sm90,
            }
        })
        .collect()
}

fn our_rows() -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    for (head_dim, mask) in [
        (HeadDim::D128, Mask::Full),
        (HeadDim::D128, Mask::Causal),
        (HeadDim::D64, Mask::Full),
        (HeadDim::D64, Mask::Causal),
    ] {
        // the catalog's dense bf16 kernels (d64 is instantiated as the compile tests do)
        let spec = KernelSpec::new(DType::Bf16, head_dim, mask, ScoreMod::None);
        let name = spec.canonical_name();
        let default = default_tile(&spec, Arch::Sm80)
            .ok_or_else(|| format!("`{name}` has no default tile"))?;
        let big = TileConfig::new(128, 64, 8, default.stages);
        // 32 query rows per warp: each K/V fragment feeds two MMAs (FA2's shape for d128)
        let two_slabs = TileConfig::new(128, 64, 4, default.stages);
        // Hopper warpgroup MMA (sm_90a; sm_80 rows are n/a): one warpgroup per 64 rows
        let wg_square = TileConfig::wgmma(128, 128, 2);
        // with a producer warpgroup (the fastest measured on the H200)
        let wg_producer = TileConfig::wgmma_specialized(128, 128, 3);
        for (tile, what) in [
            (default, "default"),
            (big, ""),
            (two_slabs, ""),
            (wg_square, "wgmma, sm_90a"),
            (wg_producer, "wgmma + producer warpgroup, sm_90a"),
        ] {
            if what.is_empty() && tile == default {
                continue;
            }
            let label = format!(
                "attnforge {} ({}x{}, {} warps, {} stages{})",
                name,
                tile.block_m,
                tile.block_n,
                tile.warps,
                tile.stages,
                if what.is_empty() {
                    String::new()
                } else {
                    format!(", {what}")
                }
            );
            let measure = |arch: Arch| measure_ours(&spec, &tile, arch);
            rows.push(Row {
                kernel: label,
                rows_per_warp: tile.block_m / tile.compute_warps(),
                per_unit: 0.0,
                sm80: measure(Arch::Sm80),
                sm90: measure(Arch::Sm90),
            });
        }
    }
    Ok(rows)
}

/// Our tensor-core backward kernels (`af_bwd_tc.cuh`) at the default backward tile, measured
/// as `runtime/tests/backward_sass.rs` does: dK/dV (an iteration = one query tile of the
/// transposed schedule: S^T, dP^T, dV, dK) and dQ (an iteration = one key tile: S, dP, dQ).
fn our_backward_rows() -> Vec<Grouped> {
    let mut rows = Vec::new();
    for head_dim in [HeadDim::D64, HeadDim::D128] {
        for mask in [Mask::Full, Mask::Causal] {
            let spec = KernelSpec::new(DType::Bf16, head_dim, mask, ScoreMod::None);
            let t = BackwardTile::for_spec(&spec);
            let d = head_dim.get();
            // dK/dV steps 32 query rows at d 128 (64 spill), 64 at d 64 (docs/backward.md)
            let qm = if d > 64 { 32 } else { 64 };
            let warps = t.warps as f64;
            let (dkdv_smem, dq_smem) = t.smem_bytes(&spec);
            // (kernel, products, rows x keys of an iteration, tile rows copied, smem)
            let kernels = [
                ("dK/dV", 4.0, (qm, t.block_n), qm, dkdv_smem),
                ("dQ", 3.0, (t.block_m, t.block_n), t.block_n, dq_smem),
            ];
            for (which, products, (m, n), copied, smem) in kernels {
                let hints = MainLoopHints {
                    mma_per_iteration: Some(products * (m * n * d) as f64 / (2048.0 * warps)),
                    cp_async_per_iteration: Some((2 * copied * d * 2) as f64 / (512.0 * warps)),
                };
                let measure = |arch: Arch| -> Measured {
                    let k = match emit_backward(&spec, &t, arch) {
                        Ok(k) => k,
                        Err(e) => return missing(format!("emit failed: {e:?}")),
                    };
                    let kernel = if which == "dQ" { &k.dq } else { &k.dkdv };
                    let b = match build_kernel(&kernel.source, &kernel.name, arch) {
                        Ok(b) => b,
                        Err(e) => return missing(format!("compile failed: {e}")),
                    };
                    let Ok(text) = sass(b.compiled.cubin.as_deref().unwrap_or_default()) else {
                        return missing("SASS not readable");
                    };
                    let r = main_loops(&text, &hints)
                        .ok()
                        .and_then(|v| v.into_iter().next());
                    let u = &b.resources;
                    Measured {
                        note: if r.is_none() {
                            "no main loop found".into()
                        } else {
                            String::new()
                        },
                        report: r,
                        registers: Some(u.registers),
                        spill_bytes: Some(u.spill_store_bytes + u.spill_load_bytes),
                        local_instructions: local_count(&text),
                        smem: Some(u.shared_bytes + smem as u64),
                    }
                };
                rows.push(Grouped {
                    group: format!(
                        "attnforge {}_bwd (dK/dV + dQ, deterministic)",
                        spec.canonical_name()
                    ),
                    head_dim: d,
                    row: Row {
                        kernel: format!(
                            "attnforge {}_bwd {which} ({}x{}, {} warps; {m} {} per iteration)",
                            spec.canonical_name(),
                            t.block_m,
                            t.block_n,
                            t.warps,
                            if which == "dQ" { "keys" } else { "queries" }
                        ),
                        rows_per_warp: 0,
                        per_unit: warps / (m * n) as f64,
                        sm80: measure(Arch::Sm80),
                        sm90: measure(Arch::Sm90),
                    },
                });
            }
        }
    }
    rows
}

/// Our decode kernel (`layout = "decode"`: paged cache, GQA heads packed into the M tile,
/// split-KV) at the variant's default tile, d 64 / 128 bf16, full and causal.
fn our_decode_rows() -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    for head_dim in [HeadDim::D64, HeadDim::D128] {
        for mask in [Mask::Full, Mask::Causal] {
            let spec = KernelSpec::new(DType::Bf16, head_dim, mask, ScoreMod::None)
                .with_gqa()
                .with_layout(Layout::Decode);
            let tile = default_tile(&spec, Arch::Sm80)
                .ok_or_else(|| format!("`{}` has no default tile", spec.canonical_name()))?;
            rows.push(Row {
                kernel: format!(
                    "attnforge {} ({}x{}, {} warps, {} stages, paged)",
                    spec.canonical_name(),
                    tile.block_m,
                    tile.block_n,
                    tile.warps,
                    tile.stages
                ),
                rows_per_warp: tile.block_m / tile.compute_warps(),
                per_unit: tile.warps as f64 / tile.block_n as f64,
                sm80: measure_ours(&spec, &tile, Arch::Sm80),
                sm90: measure_ours(&spec, &tile, Arch::Sm90),
            });
        }
    }
    Ok(rows)
}

/// Our split merge kernels (`af_split_merge_d{64,128}_bf16`).
fn our_merge_rows() -> Vec<Plain> {
    [HeadDim::D64, HeadDim::D128]
        .iter()
        .map(|&d| {
            let m = emit_split_merge(DType::Bf16, d);
            let figures = [Arch::Sm80, Arch::Sm90].map(|arch| {
                let b = build_kernel(&m.source, &m.name, arch).ok()?;
                let text = sass(b.compiled.cubin.as_deref().unwrap_or_default()).ok()?;
                Some((
                    b.resources.registers,
                    b.resources.shared_bytes,
                    instruction_count(&text),
                ))
            });
            Plain {
                kernel: format!(
                    "attnforge {} (one warp per token and head, 4 warps)",
                    m.name
                ),
                figures,
            }
        })
        .collect()
}

/// One of our forward kernels (`spec` at `tile`) emitted, compiled with NVRTC for `arch` and its
/// main loop measured with [`MainLoopHints::for_kernel`].
fn measure_ours(spec: &KernelSpec, tile: &TileConfig, arch: Arch) -> Measured {
    if let Err(e) = tile.valid(spec, arch) {
        return missing(format!("tile not valid: {e:?}"));
    }
    let k = match emit_with(spec, tile, arch, SymbolStyle::WithTile) {
        Ok(k) => k,
        Err(e) => return missing(format!("emit failed: {e:?}")),
    };
    let source = KernelSource {
        source: &k.source,
        name: &k.name,
        options: CompileOptions::for_tile(arch, tile),
    };
    let b = match Compiler::global()
        .map_err(|e| e.to_string())
        .and_then(|c| build_with(c, &source).map_err(|e| e.to_string()))
    {
        Ok(b) => b,
        Err(e) => return missing(format!("compile failed: {e}")),
    };
    let Ok(text) = sass(b.compiled.cubin.as_deref().unwrap_or_default()) else {
        return missing("SASS not readable");
    };
    if let Some(dump) = std::env::var_os("ANCHORS_DUMP_SASS") {
        // inspection aid: the SASS of each of our kernels next to the report
        let path = Path::new(&dump).join(format!("{}_{}.sass", k.name, arch.sm_name()));
        let _ = std::fs::write(path, &text);
    }
    let hints = MainLoopHints::for_kernel(spec, tile);
    let r = main_loops(&text, &hints)
        .ok()
        .and_then(|v| v.into_iter().next());
    let u = &b.resources;
    Measured {
        note: if r.is_none() {
            "no main loop found".into()
        } else {
            String::new()
        },
        report: r,
        registers: Some(u.registers),
        spill_bytes: Some(u.spill_store_bytes + u.spill_load_bytes),
        local_instructions: local_count(&text),
        smem: Some(u.shared_bytes + tile.smem_bytes(spec) as u64),
    }
}

fn f2(x: Option<f64>) -> String {
    match x {
        Some(v) if v.is_finite() => format!("{v:.2}"),
        _ => "-".to_owned(),
    }
}

fn f0(x: Option<f64>) -> String {
    match x {
        Some(v) if v.is_finite() => format!("{v:.0}"),
        _ => "-".to_owned(),
    }
}

fn pair(
    a: &Measured,
    b: &Measured,
    f: impl Fn(&MainLoopReport) -> f64,
    fmt: fn(Option<f64>) -> String,
) -> String {
    let x = fmt(a.report.as_ref().map(&f));
    let y = fmt(b.report.as_ref().map(&f));
    if x == y {
        x
    } else {
        format!("{x} / {y}")
    }
}

fn resources(m: &Measured) -> (String, String, String) {
    let regs = m.registers.map_or("-".into(), |r| r.to_string());
    let spills = match m.spill_bytes {
        Some(b) => format!("{b} B ({} LDL/STL)", m.local_instructions),
        None => format!("{} LDL/STL", m.local_instructions),
    };
    let smem = m
        .smem
        .map_or("-".into(), |s| format!("{} KiB", s as f64 / 1024.0));
    (regs, spills, smem)
}

fn markdown(rows: &[Row], versions: &str) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# Main loops side by side: attnforge, FlashAttention-2, Triton (machine code)\n\n\
         Generated by `cargo xtask anchors` (runtime/examples/anchors.rs); do not edit by hand. \
         The default-tile attnforge rows are held by a CI ratchet: \
         `runtime/tests/main_loop_ratchet.rs` fails when one of them gets more than 2% worse \
         than the figures committed in `docs/main_loop_figures.csv` (same analysis, same \
         hints).\n\n\
         Each kernel is compiled for sm_80 and sm_90 without a GPU and disassembled with \
         `cuobjdump -sass`; one analyzer (`attnforge_runtime::main_loops`) builds the \
         control-flow graph, finds the natural loops by dominators, and takes as main loop the \
         loop with the most MMA work (ties: the one with fewer instructions, i.e. the \
         unmasked steady-state loop). One iteration is counted along its steady-state path: \
         from the header to a back edge, the path with the most MMA work, then the most bytes \
         loaded from global memory (the next tile's prefetch is taken), then the fewest \
         instructions (edge-tile masking and misaligned-copy fallbacks are not): an interior \
         key tile. The partial-tile path is the same count with the other choice among the \
         paths of equal MMA work and bytes loaded: the fewest copy instructions (the fast \
         copy), then the most instructions (the per-element mask, scale and select of a \
         partial or edge key tile); the static model of `attnforge-autotune` charges each \
         visited tile with one or the other (docs/tuning.md). Nested loops \
         count their trips: constant-bound counters are read from the code; otherwise the \
         trips are solved from the expected work per key tile (MMA: 2·block_m·block_n·d / \
         (warps·2048) per warp; for our kernels also LDGSTS: 2·block_n·d·2 B / (512 B·warps) \
         per warp); anything else is 1 trip and listed under \"Loop structure\". Counts are \
         per warp per m16n8k16-equivalent MMA (HMMA.16816 = 1, HMMA.1688 = 0.5, \
         HGMMA.64xNx16 = N/8 per warp); ldmatrix bytes: LDSM .x4 = 512 B per warp. Registers \
         and spills from ptxas (`-v`) where a log exists (FA2, ours), else \
         `cuobjdump -res-usage` and the LDL/STL count of the SASS (Triton); shared memory per \
         block, static plus dynamic.\n"
    );
    let _ = writeln!(o, "## Tools and flags\n");
    for line in versions.lines().filter(|l| !l.trim().is_empty()) {
        let _ = writeln!(o, "- {line}");
    }
    let _ = writeln!(
        o,
        "\n## Per main-loop iteration (one key tile), per warp, per m16n8k16-equivalent MMA\n\n\
         | kernel | rows/warp | instr/MMA sm_80 / sm_90 | partial-tile instr/MMA sm_80 / sm_90 | ldmatrix bytes/MMA | int+address instr/MMA | FP instr/MMA | MUFU/MMA | registers | spills | shared memory |\n\
         |---|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in rows {
        let (ra, sa, ma) = resources(&r.sm80);
        let (rb, sb, mb) = resources(&r.sm90);
        let join = |a: String, b: String| if a == b { a } else { format!("{a} / {b}") };
        let instr = format!(
            "{} / {}",
            f2(r.sm80.report.as_ref().map(MainLoopReport::instr_per_mma)),
            f2(r.sm90.report.as_ref().map(MainLoopReport::instr_per_mma))
        );
        let partial = format!(
            "{} / {}",
            f2(r.sm80.report.as_ref().map(|m| m.partial.instr_per_mma())),
            f2(r.sm90.report.as_ref().map(|m| m.partial.instr_per_mma()))
        );
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.kernel,
            r.rows_per_warp,
            instr,
            partial,
            pair(&r.sm80, &r.sm90, MainLoopReport::ldmatrix_bytes_per_mma, f0),
            pair(&r.sm80, &r.sm90, |m| m.per_mma(InstrClass::IntAddress), f2),
            pair(&r.sm80, &r.sm90, |m| m.per_mma(InstrClass::Fp), f2),
            pair(&r.sm80, &r.sm90, |m| m.per_mma(InstrClass::Mufu), f2),
            join(ra, rb),
            join(sa, sb),
            join(ma, mb),
        );
    }
    let notes: Vec<String> = rows
        .iter()
        .flat_map(|r| {
            [("sm_80", &r.sm80), ("sm_90", &r.sm90)]
                .into_iter()
                .filter(|(_, m)| !m.note.is_empty())
                .map(|(a, m)| format!("- {} {a}: {}", r.kernel, m.note))
                .collect::<Vec<_>>()
        })
        .collect();
    if !notes.is_empty() {
        let _ = writeln!(o, "\nMissing rows:\n\n{}", notes.join("\n"));
    }
    let _ = writeln!(
        o,
        "\n## Where the instructions go (sm_80; sm_90 below), per warp per key tile\n\n\
         Weighted instructions of one main-loop iteration by class, and per MMA in parentheses.\n"
    );
    for (arch, pick) in [("sm_80", 0usize), ("sm_90", 1)] {
        let _ = writeln!(o, "### {arch}\n");
        let mut header = String::from("| kernel | MMA | instructions |");
        let mut sep = String::from("|---|---|---|");
        for c in InstrClass::ALL.iter().filter(|c| **c != InstrClass::Mma) {
            let _ = write!(header, " {c} |");
            sep.push_str("---|");
        }
        let _ = writeln!(o, "{header}\n{sep}");
        for r in rows {
            let m = if pick == 0 { &r.sm80 } else { &r.sm90 };
            let Some(rep) = &m.report else { continue };
            let mut line = format!(
                "| {} | {:.0} | {:.0} |",
                r.kernel, rep.mma, rep.instructions
            );
            for c in InstrClass::ALL.iter().filter(|c| **c != InstrClass::Mma) {
                let n = rep.by_class.get(c).copied().unwrap_or(0.0);
                let _ = write!(line, " {n:.0} ({:.2}) |", rep.per_mma(*c));
            }
            let _ = writeln!(o, "{line}");
        }
        let _ = writeln!(o);
    }
    let _ = writeln!(o, "## Loop structure and trip counts\n");
    for r in rows {
        for (arch, m) in [("sm_80", &r.sm80), ("sm_90", &r.sm90)] {
            let Some(rep) = &m.report else { continue };
            let off_path = rep.inner_loops.iter().filter(|l| !l.on_path).count();
            let inner = if rep.inner_loops.is_empty() {
                "no nested loop".to_owned()
            } else {
                rep.inner_loops
                    .iter()
                    .filter(|l| l.on_path)
                    .map(|l| {
                        let src = match &l.source {
                            TripSource::Static { init, step, bound } => {
                                format!("static: from {init} step {step} to {bound}")
                            }
                            TripSource::FromExpected(s) => format!("solved: {s}"),
                            TripSource::Assumed(s) => format!("ASSUMED 1: {s}"),
                        };
                        format!(
                            "nested loop at {:#x} ({:.0} instructions per trip on the path) x{:.2} ({src})",
                            l.header, l.path_instructions, l.trips
                        )
                    })
                    .chain((off_path > 0).then(|| {
                        format!("{off_path} nested loops off the steady-state path")
                    }))
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            let _ = writeln!(
                o,
                "- {} {arch}: main loop at {:#x} ({} instructions in its body, {:.0} on the steady-state path per iteration; {} natural loops in the function); {inner}",
                r.kernel, rep.header, rep.static_instructions, rep.instructions, rep.loops_in_function
            );
        }
    }
    o
}

/// The columns shared by the backward and decode tables: instr/MMA, partial-tile instr/MMA,
/// ldmatrix bytes/MMA, int+address/MMA, FP/MMA, MUFU/MMA, registers, spills, shared memory.
fn loop_columns(r: &Row) -> String {
    let (ra, sa, ma) = resources(&r.sm80);
    let (rb, sb, mb) = resources(&r.sm90);
    let join = |a: String, b: String| if a == b { a } else { format!("{a} / {b}") };
    let both = |f: &dyn Fn(&MainLoopReport) -> f64| {
        format!(
            "{} / {}",
            f2(r.sm80.report.as_ref().map(f)),
            f2(r.sm90.report.as_ref().map(f))
        )
    };
    format!(
        "{} | {} | {} | {} | {} | {} | {} | {} | {}",
        both(&MainLoopReport::instr_per_mma),
        both(&|m| m.partial.instr_per_mma()),
        pair(&r.sm80, &r.sm90, MainLoopReport::ldmatrix_bytes_per_mma, f0),
        pair(&r.sm80, &r.sm90, |m| m.per_mma(InstrClass::IntAddress), f2),
        pair(&r.sm80, &r.sm90, |m| m.per_mma(InstrClass::Fp), f2),
        pair(&r.sm80, &r.sm90, |m| m.per_mma(InstrClass::Mufu), f2),
        join(ra, rb),
        join(sa, sb),
        join(ma, mb),
    )
}

/// "Missing rows" lines of `rows`.
fn missing_notes<'a>(rows: impl Iterator<Item = &'a Row>) -> String {
    rows.flat_map(|r| {
        [("sm_80", &r.sm80), ("sm_90", &r.sm90)]
            .into_iter()
            .filter(|(_, m)| !m.note.is_empty())
            .map(|(a, m)| format!("- {} {a}: {}\n", r.kernel, m.note))
            .collect::<Vec<_>>()
    })
    .collect()
}

const LOOP_HEADER: &str = "instr/MMA sm_80 / sm_90 | partial-tile instr/MMA sm_80 / sm_90 | ldmatrix bytes/MMA | int+address instr/MMA | FP instr/MMA | MUFU/MMA | registers | spills | shared memory |";

fn backward_markdown(o: &mut String, rows: &[Grouped]) {
    let _ = writeln!(
        o,
        "\n## Backward (issue 18): FA2's dQ/dK/dV kernel next to our dK/dV and dQ kernels\n\n\
         FlashAttention-2 runs one backward kernel, `flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel`, \
         one block per (key tile, head, batch); its main loop walks the query tiles and does \
         five products per iteration (S = Q K^T, dP = dO V^T, dV += P^T dO, dK += dS^T Q, \
         dQ = dS K), the last one added to an f32 dQ buffer in global memory with `atomicAdd` \
         (`RED.E.ADD.F32`, in its instruction count): \
         the order of the f32 adds is the order the blocks arrive, so dQ is not bit-reproducible \
         (`deterministic=True` gives each block column its own buffer, summed afterwards). \
         attnforge runs two kernels without atomics, bit-deterministic (docs/backward.md): dK/dV \
         per key tile over the query tiles of the transposed schedule (4 products per \
         iteration) and dQ per query tile over the key tiles (3 products: S and dP are \
         computed a second time). The pre-pass (FA2's dot(dO, O), our Delta) and FA2's dQ \
         conversion kernel are not counted. Same analysis and units as the forward table; \
         an iteration is one query tile (FA2, our dK/dV) or one key tile (our dQ).\n\n\
         | kernel | MMA per iteration per warp | global atomics (RED/ATOM) per iteration per warp | {LOOP_HEADER}\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for g in rows {
        let r = &g.row;
        let mma = pair(&r.sm80, &r.sm90, |m| m.mma, f0);
        let atomics = pair(
            &r.sm80,
            &r.sm90,
            |m| opcode_count(m, &["RED", "REDG", "ATOM", "ATOMG"]),
            f0,
        );
        let _ = writeln!(
            o,
            "| {} | {mma} | {atomics} | {} |",
            r.kernel,
            loop_columns(r)
        );
    }
    let _ = writeln!(
        o,
        "\n**Whole backward per useful MMA.** The main-loop instructions of all warps of a \
         block per query-key pair, summed over the kernels of one backward pass, divided by \
         the MMAs of the five products a pair needs (5 d / 2048 m16n8k16 per pair): FA2's is \
         its instr/MMA; ours charges the dQ kernel's second S and dP as overhead.\n\n\
         | backward pass | instructions per useful MMA sm_80 / sm_90 |\n|---|---|"
    );
    let mut groups: Vec<&str> = Vec::new();
    for g in rows {
        if !groups.contains(&g.group.as_str()) {
            groups.push(&g.group);
        }
    }
    for name in groups {
        let members: Vec<&Grouped> = rows.iter().filter(|g| g.group == name).collect();
        let d = members[0].head_dim as f64;
        let total = |pick: fn(&Row) -> &Measured| -> Option<f64> {
            members
                .iter()
                .map(|g| {
                    pick(&g.row)
                        .report
                        .as_ref()
                        .map(|m| m.instructions * g.row.per_unit)
                })
                .sum::<Option<f64>>()
                .map(|i| i / (5.0 * d / 2048.0))
        };
        let _ = writeln!(
            o,
            "| {name} | {} / {} |",
            f2(total(|r| &r.sm80)),
            f2(total(|r| &r.sm90))
        );
    }
    let notes = missing_notes(rows.iter().map(|g| &g.row));
    if !notes.is_empty() {
        let _ = writeln!(o, "\nMissing rows:\n\n{notes}");
    }
}

/// Instructions per iteration per warp on the steady-state path whose opcode (before the
/// first `.`) is one of `ops`.
fn opcode_count(m: &MainLoopReport, ops: &[&str]) -> f64 {
    m.by_opcode
        .iter()
        .filter(|(op, _)| ops.contains(&op.split('.').next().unwrap_or("")))
        // a fold from +0 (an empty `sum` of f64 is -0, printed "-0")
        .fold(0.0, |a, (_, n)| a + n)
}

/// Global loads (LDG, not the LDGSTS copies) per iteration per warp on the steady-state path.
fn global_loads(m: &MainLoopReport) -> f64 {
    opcode_count(m, &["LDG"])
}

fn decode_markdown(o: &mut String, rows: &[Row], merges: &[Plain]) {
    let _ = writeln!(
        o,
        "\n## Decode (issue 19): FA2's split-KV kernel next to our decode kernel\n\n\
         FlashAttention-2: `flash_fwd_splitkv_kernel` as `flash_attn_with_kvcache` launches it \
         for one decoded token with a block table (paged cache; it always takes the split-KV \
         kernel then): seqlen_q = 1 clears is_causal, and with GQA the group's query heads are \
         swapped into the seqlen_q dimension, so its 64-row tile holds the group's heads, as \
         our decode kernel packs them (`af_decode_layout`, docs/serving.md). Paged or not is a \
         runtime branch of the same FA2 kernel (`params.block_table`); the steady-state path \
         (the most global bytes) is the paged one, which reads two block-table entries for each K and each V \
         tile (4 LDG: the LDG column). Ours: `layout = \"decode\"` (paged), GQA, the variant's default \
         tile. Both waste the tile rows past the group's heads (60 of 64 rows for one token of \
         a group of 4), so the per-MMA figures count MMAs nobody needs; the fair decode figure \
         is per key: the main-loop instructions of all warps of a block per key (instructions \
         per iteration per warp x warps / block_n). Decode is bound by reading K and V (docs/serving.md, \
         predicted), so these instruction figures say whether the loop keeps up with the \
         memory, not how fast it is.\n\n\
         | kernel | rows/warp | instructions per key (all warps) sm_80 / sm_90 | LDG per iteration per warp | {LOOP_HEADER}\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in rows {
        let per_key = format!(
            "{} / {}",
            f2(r.sm80.report.as_ref().map(|m| m.instructions * r.per_unit)),
            f2(r.sm90.report.as_ref().map(|m| m.instructions * r.per_unit))
        );
        let _ = writeln!(
            o,
            "| {} | {} | {per_key} | {} | {} |",
            r.kernel,
            r.rows_per_warp,
            pair(&r.sm80, &r.sm90, global_loads, f0),
            loop_columns(r)
        );
    }
    let _ = writeln!(
        o,
        "\nThe merges of the splits' partials (no main loop; FA2's combine kernel instantiated \
         for up to 32 splits, what FA2's heuristic picks for B = 1, Hq 32, Hkv 8, Sk 8192 on 132 \
         SMs; ours takes any count):\n\n\
         | kernel | registers sm_80 / sm_90 | shared memory | SASS instructions sm_80 / sm_90 |\n\
         |---|---|---|---|"
    );
    for m in merges {
        let col = |f: fn(&(u32, u64, usize)) -> String| {
            let [a, b] = &m.figures;
            let x = a.as_ref().map_or("-".into(), f);
            let y = b.as_ref().map_or("-".into(), f);
            if x == y {
                x
            } else {
                format!("{x} / {y}")
            }
        };
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} |",
            m.kernel,
            col(|f| f.0.to_string()),
            col(|f| format!("{} B", f.1)),
            col(|f| f.2.to_string())
        );
    }
    let notes = missing_notes(rows.iter());
    if !notes.is_empty() {
        let _ = writeln!(o, "\nMissing rows:\n\n{notes}");
    }
}
