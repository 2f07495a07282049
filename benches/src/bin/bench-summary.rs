//! Writes criterion's results as Markdown tables into `docs/benchmarks.md` (between the
//! `bench-summary` markers), headed by the date and the machine.
//!
//! ```text
//! cargo run -p attnforge-benches --bin bench-summary -- [--dir DIR] [--out FILE] [--note TEXT] [--stdout]
//! ```
//!
//! `--dir`: criterion's output (default: `attnforge_benches::criterion_dir()`); `--out`: the
//! page (default `docs/benchmarks.md`); `--note`: a line under the machine description
//! (e.g. that the machine was shared); `--stdout`: print the block instead of writing.

use std::path::PathBuf;
use std::process::ExitCode;

use attnforge_benches::summary::{collect, default_doc, render, splice, Machine};

fn main() -> ExitCode {
    let mut dir = attnforge_benches::criterion_dir();
    let mut out = default_doc();
    let mut note = None;
    let mut to_stdout = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--dir" => dir = args.next().map(PathBuf::from).unwrap_or(dir),
            "--out" => out = args.next().map(PathBuf::from).unwrap_or(out),
            "--note" => note = args.next(),
            "--stdout" => to_stdout = true,
            "-h" | "--help" => {
                println!(
                    "usage: bench-summary [--dir CRITERION_DIR] [--out FILE] [--note TEXT] [--stdout]"
                );
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("bench-summary: unknown argument `{other}`; see --help");
                return ExitCode::from(2);
            }
        }
    }
    let rows = match collect(&dir) {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "bench-summary: cannot read `{}`: {e}; run `cargo bench -p attnforge-benches` first",
                dir.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let mut m = Machine::probe();
    m.note = note;
    m.nvrtc = attnforge_runtime::Compiler::global()
        .ok()
        .map(|c| format!("{}.{}", c.version().0, c.version().1));
    let block = render(&rows, &m);
    if to_stdout {
        print!("{block}");
        return ExitCode::SUCCESS;
    }
    let doc = std::fs::read_to_string(&out).unwrap_or_default();
    if let Err(e) = std::fs::write(&out, splice(&doc, &block)) {
        eprintln!("bench-summary: cannot write `{}`: {e}", out.display());
        return ExitCode::FAILURE;
    }
    println!(
        "bench-summary: {} results from `{}` written to `{}`",
        rows.len(),
        dir.display(),
        out.display()
    );
    ExitCode::SUCCESS
}
