//! Argument parsing (clap derive) and dispatch. Exit codes: 0 success, 1 a check failed or a
//! backend failed, 2 a usage or input error (bad file, field, shape, dtype).

mod check;
mod check_backward;
mod check_problems;
mod check_serving;
mod check_stats;
mod common;
mod dynamic;
mod emit;
mod emit_backward;
mod emit_stats;
mod list;
mod plan_cp;
mod recycled;
mod run;
mod run_backward;
mod run_serving;
mod run_stats;
mod tuned;
mod variant;

use clap::{Parser, Subcommand};

/// Exit code of a failed check or backend run.
pub const EXIT_FAILED: i32 = 1;
/// Exit code of a usage or input error.
pub const EXIT_INPUT: i32 = 2;

/// A CLI error: the message (already naming file, field and fix) and its exit code.
#[derive(Debug)]
pub struct CliError {
    pub code: i32,
    pub message: String,
}

impl CliError {
    pub fn input(m: impl std::fmt::Display) -> Self {
        CliError {
            code: EXIT_INPUT,
            message: m.to_string(),
        }
    }
    pub fn failed(m: impl std::fmt::Display) -> Self {
        CliError {
            code: EXIT_FAILED,
            message: m.to_string(),
        }
    }
}

const AFTER_HELP: &str = "\
Examples:
  attnforge list
  attnforge emit examples/specs/causal.toml --out-dir build/ --arch sm_90
  attnforge check examples/specs/*.toml
  attnforge check --all --backend sim
  attnforge check examples/specs/landmark_retrieval.toml examples/specs/hax.toml
  attnforge run examples/specs/causal.toml --q q.npy --k k.npy --v v.npy --out o.npy --lse lse.npy
  attnforge run examples/specs/causal.toml --backward --q q.npy --k k.npy --v v.npy --do do.npy --dq dq.npy --dk dk.npy --dv dv.npy
  attnforge check --backward --all --backend sim
  attnforge emit examples/specs/softcap.toml --backward --out-dir build/

A SPEC is a catalog canonical name (see `attnforge list`) or a path to a TOML spec file
(docs/spec-files.md).";

/// attnforge: generate, verify and run attention kernels.
#[derive(Debug, Parser)]
#[command(name = "attnforge", version, after_help = AFTER_HELP)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List the built-in catalog (static kernels and data-dependent pipelines) with canonical names.
    #[command(
        after_help = "Examples:\n  attnforge list\n  attnforge list --family landmark\n  attnforge list --json > catalog.json"
    )]
    List(list::ListArgs),
    /// Write the CUDA source, launch metadata (JSON) and the ptxas report of a kernel.
    #[command(after_help = emit::AFTER_HELP)]
    Emit(emit::EmitArgs),
    /// Run kernels on a backend and compare them with the f64 reference.
    #[command(after_help = check::AFTER_HELP)]
    Check(check::CheckArgs),
    /// Run one spec on q/k/v from .npy files and write out and lse as .npy (--backward: the
    /// gradients dq, dk, dv from dO).
    #[command(after_help = run::AFTER_HELP)]
    Run(Box<run::RunArgs>),
    /// Autotune kernels (search space, ptxas pruning, simulator gate, measurement or static
    /// model) and write the reports; a second run reuses the tuning cache.
    #[command(after_help = TUNE_HELP)]
    Tune(attnforge_autotune::cli::TuneArgs),
    /// Plan context parallelism for a spec: per-rank work, communication and predicted time
    /// of ring and Ulysses over contiguous, zigzag and mask-aware partitions.
    #[command(name = "plan-cp", after_help = plan_cp::AFTER_HELP)]
    PlanCp(plan_cp::PlanCpArgs),
    /// Rewrite the reports from the tuning cache alone (no tuning).
    #[command(after_help = "Examples:\n  attnforge report --out reports")]
    Report(attnforge_autotune::cli::ReportArgs),
}

const TUNE_HELP: &str = "\
Examples:
  attnforge tune --catalog --out reports
  attnforge tune --variant flash_fwd_causal_d128_bf16 --arch sm_80 --out reports
  attnforge tune --catalog --retune --out reports    # ignore the cache

Without a GPU, winners are ranked by the static model and labelled predicted.
Exit codes: 0 every kernel has a winner; 1 some kernel has no surviving candidate (reports
written, nothing cached for it); 2 bad input, an unwritable cache or report folder, or a
missing toolchain / C++ compiler (nothing cached). See docs/cli.md, \"Cache recovery\".";

/// `tune` / `report` errors keep the autotuner's exit code (1: a kernel without a winner,
/// 2: input, environment or I/O).
fn tune_error(e: attnforge_autotune::TuneError) -> CliError {
    CliError {
        code: i32::from(e.exit_code()),
        message: e.to_string(),
    }
}

/// Parse the arguments, run, print errors; returns the exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_INPUT } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    let r = match cli.command {
        Command::List(a) => list::run(a),
        Command::Emit(a) => emit::run(a),
        Command::Check(a) => check::run(a),
        Command::Run(a) => run::run(*a),
        Command::Tune(a) => attnforge_autotune::cli::run_tune(&a)
            .map(|s| {
                println!(
                    "{} kernels: {} from the cache, {} tuned, {} stale re-tuned, {} corrupt re-tuned; index: {}",
                    s.kernels,
                    s.cache_hits,
                    s.tuned_new,
                    s.retuned_stale,
                    s.retuned_corrupt,
                    s.index.display()
                )
            })
            .map_err(tune_error),
        Command::PlanCp(a) => plan_cp::run(a),
        Command::Report(a) => attnforge_autotune::cli::run_report(&a)
            .map(|p| println!("report: {}", p.display()))
            .map_err(tune_error),
    };
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {}", e.message);
            e.code
        }
    }
}
