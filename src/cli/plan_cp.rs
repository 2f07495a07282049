//! `attnforge plan-cp`: the context-parallel plan of a spec (attnforge-parallel's planner):
//! every (method, partition) candidate with its per-rank work, communication and predicted
//! forward time, and the one chosen. Times are predictions of the planner's cost model
//! (docs/context-parallel.md), never measurements.

use std::sync::Arc;

use attnforge::codegen::masks::ParamType;
use attnforge::codegen::spec::{DType, Mask};
use attnforge::reference::Mask as RefMask;
use attnforge::specfile::{AnySpecFile, SpecFile};
use attnforge_parallel::{plan, CpProblem, Link, Plan, PlanRequest, GPU_H100_SXM, IB_NDR, NVLINK4};
use clap::Args;

use super::common::resolve_any;
use super::CliError;

pub const AFTER_HELP: &str = "\
Examples:
  attnforge plan-cp flash_fwd_causal_d128_bf16 --world 8 --seq 65536
  attnforge plan-cp examples/specs/document.toml --world 4 --seq 120 --link ib --json
  attnforge plan-cp examples/specs/local.toml --world 4 --seq 32768 --heads 32 --kv-heads 8

The mask's parameters come from the spec file (a catalog name uses the table's defaults at
--seq); document masks need ids of length --seq in the spec file. Times are predicted by
the planner's cost model (forward only), not measured.";

/// Options of `attnforge plan-cp`.
#[derive(Debug, Args)]
pub struct PlanCpArgs {
    /// A catalog name or a static spec file.
    spec: String,
    /// Number of ranks (GPUs).
    #[arg(long)]
    world: usize,
    /// Sequence length (Sq = Sk).
    #[arg(long, default_value_t = 65536)]
    seq: usize,
    /// Batch.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Query heads.
    #[arg(long, default_value_t = 32)]
    heads: usize,
    /// Key/value heads (default: --heads).
    #[arg(long)]
    kv_heads: Option<usize>,
    /// Link between ranks: nvlink (NVLink 4, 450 GB/s per direction) or ib (InfiniBand NDR,
    /// 50 GB/s per direction).
    #[arg(long, default_value = "nvlink")]
    link: String,
    /// Print the plan as one JSON object.
    #[arg(long)]
    json: bool,
}

/// The largest sequence planned (the exact work counts walk every query row per candidate).
const MAX_SEQ: usize = 1 << 22;
/// The most ranks planned.
const MAX_WORLD: usize = 4096;

pub fn run(a: PlanCpArgs) -> Result<(), CliError> {
    let link = parse_link(&a.link)?;
    check_sizes(&a)?;
    let sf = match resolve_any(&a.spec)? {
        AnySpecFile::Static(sf) => sf,
        AnySpecFile::Dynamic(_) => {
            return Err(CliError::input(format!(
                "`{}` is a data-dependent pipeline\n  fix: plan-cp plans static masks; give a static spec (`attnforge list --family flash_fwd`)",
                a.spec
            )))
        }
    };
    let mask = reference_mask(&sf, a.seq)?;
    let problem = CpProblem {
        mask: Arc::new(mask),
        batch: a.batch,
        heads_q: a.heads,
        heads_kv: a.kv_heads.unwrap_or(a.heads),
        sq: a.seq,
        sk: a.seq,
        dim: sf.spec.head_dim.get() as usize,
        dim_v: sf.spec.head_dim.get() as usize,
        scale: None,
    };
    let elem_bytes = match sf.spec.dtype {
        DType::F32 => 4,
        DType::F16 | DType::Bf16 => 2,
    };
    let p = plan(&PlanRequest {
        problem: &problem,
        world: a.world,
        link,
        gpu: GPU_H100_SXM,
        elem_bytes,
    })
    .map_err(|e| CliError::input(format!("cannot plan: {e}")))?;
    let name = sf.spec.canonical_name();
    if a.json {
        println!("{}", plan_json(&name, &a, link, &p));
    } else {
        print_plan(&name, &a, link, &p);
    }
    Ok(())
}

fn parse_link(s: &str) -> Result<Link, CliError> {
    match s {
        "nvlink" => Ok(NVLINK4),
        "ib" => Ok(IB_NDR),
        _ => Err(CliError::input(format!(
            "--link: unknown link `{s}`\n  fix: use nvlink or ib"
        ))),
    }
}

fn check_sizes(a: &PlanCpArgs) -> Result<(), CliError> {
    let bad = |field: &str, v: usize, fix: &str| {
        Err(CliError::input(format!("--{field} = {v}\n  fix: {fix}")))
    };
    if a.world == 0 || a.world > MAX_WORLD {
        return bad("world", a.world, &format!("pass 1..={MAX_WORLD} ranks"));
    }
    if a.seq == 0 || a.seq > MAX_SEQ {
        return bad("seq", a.seq, &format!("pass a length in 1..={MAX_SEQ}"));
    }
    if a.batch == 0 {
        return bad("batch", 0, "pass a batch of at least 1");
    }
    if a.heads == 0 {
        return bad("heads", 0, "pass at least one query head");
    }
    match a.kv_heads {
        Some(h) if h == 0 || !a.heads.is_multiple_of(h) => {
            bad("kv-heads", h, "pass a divisor of --heads (GQA groups)")
        }
        _ => Ok(()),
    }
}

/// The spec's mask as the reference defines it, with its parameters from the spec file or
/// the table's defaults at `seq`.
fn reference_mask(sf: &SpecFile, seq: usize) -> Result<RefMask, CliError> {
    let Mask::Builtin(m) = &sf.spec.mask else {
        return Err(CliError::input(format!(
            "mask `{}`: plan-cp plans built-in masks (their work has closed forms)\n  fix: use a built-in mask; user predicates and block-sparse lists are not planned yet",
            sf.spec.mask.tag()
        )));
    };
    let named: Vec<(&str, f64)> = m
        .def()
        .params
        .iter()
        .map(|p| {
            let v = sf
                .mask_params
                .get(p.name)
                .unwrap_or_else(|| p.default.at(seq));
            let v = match p.ty {
                ParamType::Int => v,
                ParamType::Float => f64::from(v as f32),
            };
            (p.name, v)
        })
        .collect();
    let doc = if m.def().reads_doc {
        let rp = sf.run_params(seq, None).map_err(CliError::input)?;
        let doc = rp.doc.unwrap_or_default();
        if doc.len() != seq {
            return Err(CliError::input(format!(
                "params.doc: mask `{}` has {} document ids but --seq is {seq}\n  fix: pass --seq {} or ids (doc_segments summing to --seq) in the spec file",
                m.tag(),
                doc.len(),
                doc.len()
            )));
        }
        doc
    } else {
        Vec::new()
    };
    RefMask::builtin(m.tag(), &named, &doc)
        .map_err(|e| CliError::input(format!("mask `{}`: {e}", m.tag())))
}

fn method_partition(p: &Plan, i: usize) -> String {
    let c = &p.candidates[i];
    format!("{:?} {:?}", c.method, c.partition)
}

fn print_plan(name: &str, a: &PlanCpArgs, link: Link, p: &Plan) {
    println!(
        "{name}: B {} Hq {} Hkv {} S {} on {} ranks, {}; GPU {}",
        a.batch,
        a.heads,
        a.kv_heads.unwrap_or(a.heads),
        a.seq,
        a.world,
        link.name,
        GPU_H100_SXM.name
    );
    println!(
        "{:<22} {:>9} {:>14} {:>14} {:>12} {:>16}",
        "candidate", "imbalance", "max pairs", "min pairs", "max sent MB", "predicted ms"
    );
    for (i, c) in p.candidates.iter().enumerate() {
        let max_pairs = c.ranks.iter().map(|r| r.pairs).max().unwrap_or(0);
        let min_pairs = c.ranks.iter().map(|r| r.pairs).min().unwrap_or(0);
        let sent = c.ranks.iter().map(|r| r.bytes_sent).max().unwrap_or(0);
        println!(
            "{:<22} {:>9.3} {:>14} {:>14} {:>12.1} {:>16.3}{}",
            method_partition(p, i),
            c.imbalance,
            max_pairs,
            min_pairs,
            sent as f64 / 1e6,
            c.predicted_s * 1e3,
            if i == p.best { "  <- chosen" } else { "" }
        );
    }
    if let Some(why) = &p.ulysses_infeasible {
        println!("Ulysses not considered: {why}");
    }
    println!(
        "chosen: {} (predicted {:.3} ms forward; a prediction of the cost model, not a measurement)",
        method_partition(p, p.best),
        p.candidates[p.best].predicted_s * 1e3
    );
}

fn plan_json(name: &str, a: &PlanCpArgs, link: Link, p: &Plan) -> serde_json::Value {
    let candidates: Vec<serde_json::Value> = p
        .candidates
        .iter()
        .map(|c| {
            serde_json::json!({
                "method": format!("{:?}", c.method),
                "partition": format!("{:?}", c.partition),
                "imbalance": c.imbalance,
                "predicted_ms": c.predicted_s * 1e3,
                "ranks": c.ranks.iter().map(|r| serde_json::json!({
                    "pairs": r.pairs,
                    "blocks": r.blocks,
                    "skipped": r.skipped,
                    "bytes_sent": r.bytes_sent,
                    "predicted_ms": r.predicted_s * 1e3,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::json!({
        "kernel": name,
        "world": a.world,
        "batch": a.batch,
        "heads_q": a.heads,
        "heads_kv": a.kv_heads.unwrap_or(a.heads),
        "seq": a.seq,
        "link": link.name,
        "gpu": GPU_H100_SXM.name,
        "predicted": true,
        "best": p.best,
        "ulysses_infeasible": p.ulysses_infeasible,
        "candidates": candidates,
    })
}
