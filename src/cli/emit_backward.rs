//! `attnforge emit --backward` (and spec files with `backward = true`): the three backward
//! kernels of a static spec (variants.md section 12), `<name>_bwd_{delta,dkdv,dq}.cu`, each
//! with a launch-metadata JSON: the argument order (the forward's arguments, `o` and `lse`
//! now read, then the gradient arguments with their roles), the grid, the block and the
//! dynamic shared memory of [`BackwardTile`].

use std::path::Path;

use attnforge::codegen::args::{kernel_args, KernelArg};
use attnforge::codegen::backward::{
    backward_supported, emit_backward, grad_args, BackwardTile, DELTA_WARPS,
};
use attnforge::codegen::emit::EmittedKernel;
use attnforge::codegen::spec::KernelSpec;
use attnforge::codegen::tile::Arch;
use attnforge::npy::write_bytes_atomic;
use serde_json::{json, Value};

use super::CliError;

/// The reason `spec` has no backward kernels, naming `what` (a flag or a spec-file key).
pub(super) fn unsupported(spec: &KernelSpec, label: &str, what: &str) -> Option<CliError> {
    let errs = backward_supported(spec).err()?;
    let why: Vec<String> = errs
        .iter()
        .map(|e| format!("{}: {}", e.path, e.message))
        .collect();
    let fix = errs.first().map_or(String::new(), |e| e.fix.clone());
    Some(CliError::input(format!(
        "{label}: {what}: `{}` has no backward kernels: {}\n  fix: drop {what}, or {fix}",
        spec.canonical_name(),
        why.join("; ")
    )))
}

/// Launch geometry of one backward kernel: grid (text over the problem sizes), threads,
/// dynamic shared memory.
fn geometry(part: &str, t: &BackwardTile, spec: &KernelSpec) -> ([&'static str; 3], usize, usize) {
    let (dkdv_smem, dq_smem) = t.smem_bytes(spec);
    match part {
        "delta" => (["ceil(seq_q / 4)", "heads_q", "batch"], DELTA_WARPS * 32, 0),
        "dkdv" => (
            ["ceil(seq_k / block_n)", "heads_kv", "batch"],
            t.threads(),
            dkdv_smem,
        ),
        _ => (
            ["ceil(seq_q / block_m)", "heads_q", "batch"],
            t.threads(),
            dq_smem,
        ),
    }
}

/// The metadata JSON of one backward kernel.
fn metadata(
    spec: &KernelSpec,
    k: &EmittedKernel,
    part: &str,
    t: &BackwardTile,
    arch: Arch,
) -> Value {
    let grads = grad_args(spec);
    let args: Vec<KernelArg> = kernel_args(spec)
        .into_iter()
        .chain(grads.iter().map(|(_, a)| a.clone()))
        .collect();
    let (grid, threads, smem) = geometry(part, t, spec);
    json!({
        "kernel_name": k.name,
        "part": part,
        "launch_order": ["delta", "dkdv", "dq"],
        "spec": spec,
        "backward_tile": t,
        "arch": arch,
        "arch_name": arch.sm_name(),
        "args": args,
        "signature": args.iter().map(|x| json!({"name": x.name, "c_type": x.kind.c_type()})).collect::<Vec<_>>(),
        "grad_args": grads.iter().map(|(g, a)| json!({"name": a.name, "role": g, "c_type": a.kind.c_type()})).collect::<Vec<_>>(),
        "grid": grid,
        "block_m": t.block_m,
        "block_n": t.block_n,
        "delta_rows_per_block": DELTA_WARPS,
        "block_threads": threads,
        "dynamic_smem_bytes": smem,
        "needs_smem_opt_in": smem > arch.smem_without_opt_in(),
        "block_lists": spec.mask.uses_block_lists().then_some([spec.sparse_block.q, spec.sparse_block.k]),
        "default_scale": spec.effective_scale(),
        "notes": [
            "o and lse are the forward kernel's outputs (read here); dout, dq, dk, dv are contiguous [B, H, S, D] of the input dtype",
            "delta is f32 scratch [B, Hq, Sq] written by the delta kernel and read by the other two; dlse may be null",
            "dparam: f32 [B, Hq, ceil(seq_q / block_m)] partial sums of the score parameter's gradient (null without one); sum them per head (ALiBi) or in total (softcap) on the host",
            "list-driven masks: the t* arguments are the transposed block lists (BlockLists::transposed)",
            "user score functions: theta_offsets (int, one per parameter and one past the last: f32 scalars take 1 element, f32 tables their length) and theta_len; the dq kernel needs 4 * block_threads * theta_len more bytes of dynamic shared memory, and dparam holds theta_len partials per block",
        ],
    })
}

/// Write the three backward kernels of `spec` for `arch` into `out_dir`; `ptxas` reports the
/// resources of one kernel (None: skipped).
pub(super) fn emit_files(
    spec: &KernelSpec,
    label: &str,
    arch: Arch,
    out_dir: &Path,
    ptxas: &dyn Fn(&EmittedKernel) -> Result<Value, CliError>,
) -> Result<(), CliError> {
    if let Some(e) = unsupported(spec, label, "--backward") {
        return Err(e);
    }
    let t = BackwardTile::for_spec(spec);
    let ks = emit_backward(spec, &t, arch).map_err(|errs| {
        CliError::input(format!(
            "{label}: backward: {}",
            errs.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        ))
    })?;
    for (part, k) in [("delta", &ks.delta), ("dkdv", &ks.dkdv), ("dq", &ks.dq)] {
        let mut meta = metadata(spec, k, part, &t, arch);
        let p = ptxas(k)?;
        let regs = p
            .get("registers")
            .map_or("-".to_string(), |r| r.to_string());
        if let Value::Object(m) = &mut meta {
            m.insert("ptxas".into(), p);
        }
        let cu = out_dir.join(format!("{}.cu", k.name));
        let js = out_dir.join(format!("{}.json", k.name));
        let text = serde_json::to_string_pretty(&meta).map_err(CliError::failed)?;
        write_bytes_atomic(&cu, k.source.as_bytes()).map_err(CliError::input)?;
        write_bytes_atomic(&js, text.as_bytes()).map_err(CliError::input)?;
        println!(
            "{}  -> {} ({} args, {} threads, {} B smem, {} registers)",
            k.name,
            cu.display(),
            meta["args"].as_array().map_or(0, Vec::len),
            meta["block_threads"],
            meta["dynamic_smem_bytes"],
            regs
        );
    }
    Ok(())
}
