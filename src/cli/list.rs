//! `attnforge list`: the catalog.

use attnforge::codegen::catalog;
use clap::Args;

use super::CliError;

/// Options of `attnforge list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print a JSON array of {name, dtype, head_dim, gqa, mask, score, spec}.
    #[arg(long)]
    json: bool,
}

pub fn run(a: ListArgs) -> Result<(), CliError> {
    let specs = catalog();
    if a.json {
        let v: Vec<serde_json::Value> = specs
            .iter()
            .map(|s| {
                serde_json::json!({
                    "name": s.canonical_name(),
                    "dtype": s.dtype.short(),
                    "head_dim": s.head_dim.get(),
                    "gqa": s.gqa,
                    "mask": s.mask.tag(),
                    "score": s.score.short().unwrap_or_else(|| "none".into()),
                    "spec": s,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&v).map_err(CliError::failed)?
        );
    } else {
        println!(
            "{:<44} {:<6} {:>4} {:<22} score",
            "name", "dtype", "D", "mask"
        );
        for s in &specs {
            println!(
                "{:<44} {:<6} {:>4} {:<22} {}",
                s.canonical_name(),
                s.dtype.short(),
                s.head_dim.get(),
                s.mask.tag(),
                s.score.short().unwrap_or_else(|| "none".into())
            );
        }
        println!("{} kernels", specs.len());
    }
    Ok(())
}
