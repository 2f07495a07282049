//! The side-by-side of `cargo xtask anchors`: attnforge's forward kernels next to
//! FlashAttention-2's and Triton's, all analysed by one analyzer ([`main_loops`]), written to
//! a Markdown file (docs/anchors.md).
//!
//! ```text
//! cargo run -p attnforge-runtime --example anchors -- ARTIFACTS OUT.md
//! ```
//!
//! `ARTIFACTS` is the folder `cargo xtask anchors` fills: `fa2_sm{80,90}.cubin` with the
//! nvcc/ptxas `-v` logs `fa2_sm{80,90}.log`, `triton_d{64,128}_sm{80,90}.{cubin,json}`, and
//! `versions.txt` (`key: value` lines printed under "Tools and flags"). Missing anchor files
//! are reported as missing rows, not errors. attnforge's kernels are emitted and compiled
//! here through the public API (catalog spec, default tile and 128x64 with 8 warps, NVRTC), so
//! the rows follow whatever the generator emits today. Needs `ATTNFORGE_CUDA_HOME` (the
//! toolchain of `cargo xtask setup`) for NVRTC and cuobjdump.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use attnforge_runtime::codegen::emit::{emit_with, SymbolStyle};
use attnforge_runtime::codegen::tile::{default_tile, Arch, TileConfig};
use attnforge_runtime::{
    build_with, main_loops, parse_ptxas_log, sass, CompileOptions, Compiler, InstrClass,
    KernelSource, MainLoopHints, MainLoopReport, Toolchain, TripSource,
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
    let versions = std::fs::read_to_string(dir.join("versions.txt")).unwrap_or_default();
    let mut md = markdown(&rows, &versions);
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

fn fa2_rows(dir: &Path, tc: &Toolchain) -> Vec<Row> {
    // (label, head dim, block_m, block_n, mangled traits, causal)
    let kernels = [
        ("FA2 d128 full (128x64, 4 warps)", 128, 128, 64, false),
        ("FA2 d128 causal (128x64, 4 warps)", 128, 128, 64, true),
        ("FA2 d64 full (128x128, 4 warps)", 64, 128, 128, false),
        ("FA2 d64 causal (128x128, 4 warps)", 64, 128, 128, true),
    ];
    let per_arch: Vec<Option<(String, PathBuf, String)>> = ["sm80", "sm90"]
        .iter()
        .map(|a| {
            let cubin = dir.join(format!("fa2_{a}.cubin"));
            let bytes = std::fs::read(&cubin).ok()?;
            let text = sass(&bytes).ok()?;
            let log = std::fs::read_to_string(dir.join(format!("fa2_{a}.log"))).unwrap_or_default();
            Some((text, cubin, log))
        })
        .collect();
    kernels
        .iter()
        .map(|&(label, d, bm, bn, causal)| {
            let traits = format!("ILi{d}ELi{bm}ELi{bn}ELi4E");
            // template flags after the traits: Is_dropout = 0, then Is_causal
            let flags = if causal { "EELb0ELb1E" } else { "EELb0ELb0E" };
            let measure = |k: usize| -> Measured {
                let Some((text, cubin, log)) = &per_arch[k] else {
                    return missing("FA2 not compiled (see cargo xtask anchors)");
                };
                let hints = MainLoopHints {
                    mma_per_iteration: Some(mma_per_tile(bm, bn, d, 4)),
                    cp_async_per_iteration: None,
                };
                let Ok(all) = main_loops(text, &hints) else {
                    return missing("SASS not readable");
                };
                let Some(r) = all
                    .into_iter()
                    .find(|r| r.function.contains(&traits) && r.function.contains(flags))
                else {
                    return missing(format!("no main loop found for {traits} {flags}"));
                };
                let ptxas = parse_ptxas_log(log).ok();
                let usage = ptxas
                    .as_ref()
                    .and_then(|p| p.kernels.iter().find(|u| u.kernel == r.function));
                let res = res_usage(tc, cubin);
                let static_smem = res.get(&r.function).map_or(0, |x| x.2);
                Measured {
                    registers: usage.map(|u| u.registers),
                    spill_bytes: usage.map(|u| u.spill_store_bytes + u.spill_load_bytes),
                    local_instructions: local_count(function_text(text, &r.function)),
                    // Flash_fwd_kernel_traits::kSmemSize: Q tile + K and V tiles, bf16
                    smem: Some(static_smem + ((bm + 2 * bn) * d * 2) as u64),
                    report: Some(r),
                    note: String::new(),
                }
            };
            Row {
                kernel: label.to_owned(),
                rows_per_warp: bm / 4,
                sm80: measure(0),
                sm90: measure(1),
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
                sm80,
                sm90,
            }
        })
        .collect()
}

fn our_rows() -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    use attnforge_runtime::codegen::prelude::{DType, HeadDim, KernelSpec, Mask, ScoreMod};
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
            let measure = |arch: Arch| -> Measured {
                if let Err(e) = tile.valid(&spec, arch) {
                    return missing(format!("tile not valid: {e:?}"));
                }
                let k = match emit_with(&spec, &tile, arch, SymbolStyle::WithTile) {
                    Ok(k) => k,
                    Err(e) => return missing(format!("emit failed: {e:?}")),
                };
                let source = KernelSource {
                    source: &k.source,
                    name: &k.name,
                    options: CompileOptions::for_tile(arch, &tile),
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
                let hints = MainLoopHints::for_kernel(&spec, &tile);
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
                    smem: Some(u.shared_bytes + tile.smem_bytes(&spec) as u64),
                }
            };
            rows.push(Row {
                kernel: label,
                rows_per_warp: tile.block_m / tile.compute_warps(),
                sm80: measure(Arch::Sm80),
                sm90: measure(Arch::Sm90),
            });
        }
    }
    Ok(rows)
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
