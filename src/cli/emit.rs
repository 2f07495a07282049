//! `attnforge emit`: `.cu` + launch metadata JSON + ptxas report.

use std::path::{Path, PathBuf};

use attnforge::codegen::emit::{emit, emit_stats_sweep, EmittedKernel, SymbolStyle};
use attnforge::codegen::spec::KernelSpec;
use attnforge::codegen::tile::Arch;
use attnforge::npy::write_bytes_atomic;
use clap::Args;

use attnforge::specfile::{DynSpecFile, SpecFile};

use super::common::{parse_arch, resolve_any};
use super::dynamic;
use super::variant::variant;
use super::CliError;

pub const AFTER_HELP: &str = "\
Writes <kernel>.cu (self-contained CUDA, `extern \"C\" __global__`) and <kernel>.json (kernel
name, argument order with C types, grid formula, block threads, dynamic shared memory, the
ptxas resource report for --arch). Load them from Python with examples/python/run_cupy.py.
A data-dependent pipeline (landmark, hax, cca, topk, recycled, lse_merge) writes one .cu + .json per
kernel (its stages, each with args, signature, grid rule and ptxas report) and
<pipeline>.pipeline.json (launch order, parameters).

Examples:
  attnforge emit flash_fwd_causal_d128_bf16 --out-dir build/
  attnforge emit examples/specs/softcap.toml --arch sm_90 --out-dir build/
  attnforge emit examples/specs/landmark_retrieval.toml --out-dir build/
  attnforge emit examples/specs/causal.toml --no-ptxas   # without the CUDA toolchain
  attnforge emit flash_fwd_local_softcap_d64_f16 --backward --out-dir build/

--backward (or `backward = true` in a spec file) also writes the three backward kernels of a
static spec (variants.md section 12): <kernel>_bwd_delta, _bwd_dkdv and _bwd_dq, each a .cu and
a .json with the argument order (the forward's arguments, then the gradient arguments with
their roles: `grad_args`), grid, block threads, dynamic shared memory of the backward tile
(32 x 32, 4 warps) and ptxas report. Launch order: delta, dkdv, dq. Variants the backward
kernels do not cover (LM-Infinite, user score functions, the data-dependent families) are an
error naming --backward (or the spec file's `backward` key); nothing is written for them.

A spec with `stats = { .. }` (docs/statistics.md) also writes the statistics follow-up kernel
attnforge_stats_reduce.cu + .json (arguments with roles, grid (heads_kv, batch), 256 threads,
launch rule); the forward kernel's last argument is then stats_partial. A decode spec with
`stats` also writes its statistics sweep kernel (<decode kernel>_sweep.cu + .json), launched
after the decode kernel and its split merge with the same arguments.";

/// Options of `attnforge emit`.
#[derive(Debug, Args)]
pub struct EmitArgs {
    /// Catalog names or spec files.
    #[arg(required = true)]
    specs: Vec<String>,
    /// Target architecture (sm_80 or sm_90); default: the spec file's [tune] arch, else sm_80.
    #[arg(long, value_parser = parse_arch)]
    arch: Option<Arch>,
    /// Output folder (created if missing).
    #[arg(long, default_value = ".")]
    out_dir: PathBuf,
    /// Skip NVRTC/ptxas (no CUDA toolchain needed; the JSON then has `"ptxas": null`).
    #[arg(long)]
    no_ptxas: bool,
    /// Also write the three backward kernels (<kernel>_bwd_{delta,dkdv,dq}.cu + .json) of
    /// each static spec (spec files: also `backward = true`).
    #[arg(long)]
    backward: bool,
}

pub fn run(a: EmitArgs) -> Result<(), CliError> {
    // The folders this run creates, innermost first: removed again (when still empty) if the
    // run fails, so that a failed emit leaves no empty --out-dir behind.
    let created: Vec<PathBuf> = a
        .out_dir
        .ancestors()
        .filter(|p| !p.as_os_str().is_empty())
        .take_while(|p| !p.exists())
        .map(Path::to_path_buf)
        .collect();
    std::fs::create_dir_all(&a.out_dir).map_err(|e| {
        CliError::input(format!(
            "{}: cannot create the output folder: {e}\n  fix: pass a writable --out-dir",
            a.out_dir.display()
        ))
    })?;
    let r = emit_all(&a);
    if r.is_err() {
        for d in &created {
            if std::fs::remove_dir(d).is_err() {
                break;
            }
        }
    }
    r
}

/// `emit` of every spec: one path, the kind-specific part behind `Variant::emit`.
fn emit_all(a: &EmitArgs) -> Result<(), CliError> {
    for s in &a.specs {
        let f = resolve_any(s)?;
        variant(&f).emit(s, a)?;
    }
    Ok(())
}

/// A pipeline's kernels, `<pipeline>.pipeline.json` and reports.
pub(super) fn emit_dynamic(df: &DynSpecFile, s: &str, a: &EmitArgs) -> Result<(), CliError> {
    if a.backward {
        return Err(CliError::input(format!(
            "{s}: --backward: `{}` is a data-dependent pipeline; the backward (variants.md section 12) covers the static variants only\n  fix: drop --backward for this spec",
            df.spec.canonical_name()
        )));
    }
    let arch = a.arch.unwrap_or(df.arch);
    dynamic::emit(df, s, arch, &a.out_dir, a.no_ptxas)
}

/// A static kernel's `.cu`, launch metadata JSON and ptxas report.
pub(super) fn emit_static(sf: &SpecFile, s: &str, a: &EmitArgs) -> Result<(), CliError> {
    let mut sf = sf.clone();
    if let Some(arch) = a.arch {
        sf.tune.arch = arch;
    }
    let tile = sf.tile().map_err(CliError::input)?;
    let backward = a.backward || sf.backward;
    if let Some(e) = backward
        .then(|| super::emit_backward::unsupported(&sf.spec, s, "--backward"))
        .flatten()
    {
        return Err(e);
    }
    let k = emit(&sf.spec, &tile, sf.tune.arch).map_err(|errs| {
        CliError::input(format!(
            "{s}: {}",
            errs.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        ))
    })?;
    let arch = sf.tune.arch;
    let ptxas = |k: &EmittedKernel| -> Result<serde_json::Value, CliError> {
        if a.no_ptxas {
            return Ok(serde_json::Value::Null);
        }
        let b = attnforge::kernels::build_kernel_cached(&k.source, &k.name, arch).map_err(|e| {
            CliError::failed(format!(
                "{s}: NVRTC/ptxas failed for `{}`: {e}\n  fix: run `cargo xtask setup` for the CUDA toolchain, or pass --no-ptxas",
                k.name
            ))
        })?;
        serde_json::to_value(&b.resources).map_err(CliError::failed)
    };
    let write = |k: &EmittedKernel, what: &str| -> Result<(), CliError> {
        let ptxas_k = ptxas(k)?;
        let mut meta = serde_json::to_value(&k.metadata).map_err(CliError::failed)?;
        let signature: Vec<serde_json::Value> = k
            .metadata
            .args
            .iter()
            .map(|x| serde_json::json!({"name": x.name, "c_type": x.kind.c_type()}))
            .collect();
        if let serde_json::Value::Object(m) = &mut meta {
            m.insert("signature".into(), signature.into());
            m.insert("ptxas".into(), ptxas_k);
            m.insert("arch_name".into(), arch.sm_name().into());
        }
        let cu = a.out_dir.join(format!("{}.cu", k.name));
        let js = a.out_dir.join(format!("{}.json", k.name));
        let text = serde_json::to_string_pretty(&meta).map_err(CliError::failed)?;
        write_bytes_atomic(&cu, k.source.as_bytes()).map_err(CliError::input)?;
        write_bytes_atomic(&js, text.as_bytes()).map_err(CliError::input)?;
        let regs = meta
            .get("ptxas")
            .and_then(|p| p.get("registers"))
            .map_or("-".to_string(), |r| r.to_string());
        println!(
            "{}  -> {} ({} args, {} threads, {} B smem, {} registers{what})",
            k.name,
            cu.display(),
            k.metadata.args.len(),
            k.metadata.block_threads,
            k.metadata.dynamic_smem_bytes,
            regs
        );
        Ok(())
    };
    write(&k, "")?;
    if sf.spec.layout.is_decode() && sf.spec.stats.is_some() {
        // the statistics of a decode step: a third launch, after the split merge
        let sweep = emit_stats_sweep(&sf.spec, &tile, arch, SymbolStyle::Canonical)
            .map_err(|errs| CliError::input(format!("{s}: {}", errs[0])))?;
        write(&sweep, "; statistics sweep after the merge")?;
    }
    if sf.spec.layout.is_decode() {
        emit_merge(&sf.spec, &a.out_dir)?;
    }
    if backward {
        super::emit_backward::emit_files(&sf.spec, s, arch, &a.out_dir, &ptxas)?;
    }
    if sf.spec.stats.is_some() {
        let qblocks = if sf.spec.layout.is_decode() {
            format!("ceil(heads_q / heads_kv * max_seqlen_q / {})", tile.block_m)
        } else {
            format!("ceil(seq_q / {})", tile.block_m)
        };
        super::emit_stats::emit_files(s, &qblocks, arch, &a.out_dir, a.no_ptxas)?;
    }
    Ok(())
}

/// A decode kernel's split-KV merge kernel: `.cu` and its launch metadata (arguments, grid),
/// launched after the decode kernel when `num_splits > 1`.
fn emit_merge(spec: &KernelSpec, out_dir: &Path) -> Result<(), CliError> {
    use attnforge::codegen::emit::{emit_split_merge, MERGE_THREADS};
    let m = emit_split_merge(spec.dtype, spec.head_dim);
    let meta = serde_json::json!({
        "kernel_name": m.name,
        "signature": [
            {"name": "o_part", "c_type": "const float*"},
            {"name": "lse_part", "c_type": "const float*"},
            {"name": "o", "c_type": format!("{}*", spec.dtype.cuda())},
            {"name": "lse", "c_type": "float*"},
            {"name": "num_splits", "c_type": "int"},
            {"name": "tokens", "c_type": "int"},
            {"name": "heads", "c_type": "int"},
        ],
        "grid": [format!("ceil(tokens * heads / {})", MERGE_THREADS / 32), "1", "1"],
        "block_threads": MERGE_THREADS,
        "dynamic_smem_bytes": 0,
        "requirements": [
            "after the decode kernel, when num_splits > 1: o_part [num_splits, Tq, Hq, D] and lse_part \
             [num_splits, Hq, Tq] (f32) as it wrote them; o [Tq, Hq, D] and lse [Hq, Tq] contiguous; \
             tokens = Tq, heads = Hq"
        ],
    });
    let cu = out_dir.join(format!("{}.cu", m.name));
    let js = out_dir.join(format!("{}.json", m.name));
    let text = serde_json::to_string_pretty(&meta).map_err(CliError::failed)?;
    write_bytes_atomic(&cu, m.source.as_bytes()).map_err(CliError::input)?;
    write_bytes_atomic(&js, text.as_bytes()).map_err(CliError::input)?;
    println!("{}  -> {} (split-KV merge)", m.name, cu.display());
    Ok(())
}
