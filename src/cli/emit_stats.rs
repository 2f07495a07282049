//! `attnforge emit` of a spec with `stats`: the statistics follow-up kernel
//! (`attnforge_stats_reduce.cu` + `.json`) next to the forward kernel (docs/statistics.md).

use std::path::Path;

use attnforge::codegen::stats::{emit_stats_reduce, STATS_REDUCE_SMEM_BYTES, STATS_REDUCE_THREADS};
use attnforge::codegen::tile::Arch;
use attnforge::npy::write_bytes_atomic;

use super::CliError;

/// Writes the follow-up kernel's `.cu` and `.json` (arguments with their roles, grid, block,
/// shared memory, launch rule, ptxas report unless `no_ptxas`).
pub(super) fn emit_files(
    s: &str,
    qblocks: &str,
    arch: Arch,
    out_dir: &Path,
    no_ptxas: bool,
) -> Result<(), CliError> {
    let k = emit_stats_reduce();
    let ptxas = if no_ptxas {
        serde_json::Value::Null
    } else {
        let b = attnforge::kernels::build_kernel_cached(&k.source, &k.name, arch).map_err(|e| {
            CliError::failed(format!(
                "{s}: NVRTC/ptxas failed for `{}`: {e}\n  fix: run `cargo xtask setup` for the CUDA toolchain, or pass --no-ptxas",
                k.name
            ))
        })?;
        serde_json::to_value(&b.resources).map_err(CliError::failed)?
    };
    let meta = serde_json::json!({
        "kernel_name": k.name,
        "args": k.args,
        "signature": k.args.iter().map(|t| serde_json::json!({"name": t.arg.name, "c_type": t.arg.kind.c_type()})).collect::<Vec<_>>(),
        "grid": ["heads_kv", "batch", "1"],
        "block_threads": STATS_REDUCE_THREADS,
        "dynamic_smem_bytes": STATS_REDUCE_SMEM_BYTES,
        "launch": format!("after the forward kernel (decode: after the statistics sweep kernel), on its stats_partial [B, Hq, qblocks, Sk]; qblocks = {qblocks}"),
        "ptxas": ptxas,
        "arch_name": arch.sm_name(),
    });
    let cu = out_dir.join(format!("{}.cu", k.name));
    let js = out_dir.join(format!("{}.json", k.name));
    let text = serde_json::to_string_pretty(&meta).map_err(CliError::failed)?;
    write_bytes_atomic(&cu, k.source.as_bytes()).map_err(CliError::input)?;
    write_bytes_atomic(&js, text.as_bytes()).map_err(CliError::input)?;
    println!(
        "{}  -> {} (statistics follow-up kernel)",
        k.name,
        cu.display()
    );
    Ok(())
}
