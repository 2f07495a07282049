//! `attnforge-tune`: tune the catalog (or chosen variants) and write the reports; with
//! `report`, rewrite the reports from the cache. The `attnforge` CLI exposes the same
//! entry points as `attnforge tune` / `attnforge report`.

use std::process::ExitCode;

use attnforge_autotune::cli::{run_report, run_tune, ReportArgs, TuneArgs};
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "attnforge-tune",
    about = "Autotune attnforge kernels and write reports"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    tune: TuneArgs,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Rewrite the reports from the tuning cache (no tuning).
    Report(ReportArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // exit codes: 0 ok, 1 a kernel without a winner, 2 input / environment / I/O error
    let r = match &cli.cmd {
        Some(Cmd::Report(a)) => run_report(a).map(|p| println!("report: {}", p.display())),
        None => run_tune(&cli.tune).map(|_| ()),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("attnforge-tune: error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
