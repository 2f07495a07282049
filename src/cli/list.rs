//! `attnforge list`: the catalog (static kernels, their serving-layout entries, then the
//! data-dependent pipelines).

use attnforge::codegen::catalog;
use attnforge::codegen::dynamic::dynamic_catalog;
use clap::Args;

use super::dynamic::{family_tag, mode_tag, params_of, params_text};
use super::CliError;

/// Family column of the static kernels.
const STATIC_FAMILY: &str = "flash_fwd";

/// Options of `attnforge list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print a JSON array: static entries {name, kind: "static", family, dtype, head_dim, gqa,
    /// mask, score, spec}, dynamic entries {name, kind: "dynamic", family, mode, dtype,
    /// head_dim, params, kernels, spec}.
    #[arg(long)]
    json: bool,
    /// Only this family: flash_fwd (the static kernels) or a data-dependent family (landmark,
    /// hax, cca, topk, recycled, lse_merge, longheads: the dynamic family table).
    #[arg(long)]
    family: Option<String>,
}

pub fn run(a: ListArgs) -> Result<(), CliError> {
    if let Some(f) = &a.family {
        if f != STATIC_FAMILY && attnforge::codegen::dynamic::family(f).is_none() {
            return Err(CliError::input(format!(
                "unknown family `{f}`\n  fix: use one of {STATIC_FAMILY}, {}",
                attnforge::codegen::dynamic::family_tags()
            )));
        }
    }
    let keep = |fam: &str| a.family.as_deref().is_none_or(|f| f == fam);
    let specs: Vec<_> = if keep(STATIC_FAMILY) {
        // the dense catalog, then its entries in the serving layouts (docs/serving.md)
        catalog::catalog()
            .into_iter()
            .chain(catalog::serving_catalog())
            .collect()
    } else {
        Vec::new()
    };
    let dynamic: Vec<_> = dynamic_catalog()
        .into_iter()
        .filter(|s| keep(family_tag(s)))
        .collect();
    if a.json {
        let mut v: Vec<serde_json::Value> = specs
            .iter()
            .map(|s| {
                serde_json::json!({
                    "name": s.canonical_name(),
                    "kind": "static",
                    "family": STATIC_FAMILY,
                    "dtype": s.dtype.short(),
                    "head_dim": s.head_dim.get(),
                    "gqa": s.gqa,
                    "mask": s.mask.tag(),
                    "score": s.score.short().unwrap_or_else(|| "none".into()),
                    "layout": s.layout.tag(),
                    "spec": s,
                })
            })
            .collect();
        for s in &dynamic {
            let params: serde_json::Map<String, serde_json::Value> = params_of(s)
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.into()))
                .collect();
            let kernels: Vec<String> = s
                .stages()
                .iter()
                .map(|st| {
                    format!(
                        "{}_d{}_{}",
                        st.stem(),
                        s.head_dim().get(),
                        s.dtype().short()
                    )
                })
                .collect();
            v.push(serde_json::json!({
                "name": s.canonical_name(),
                "kind": "dynamic",
                "family": family_tag(s),
                "mode": mode_tag(s),
                "dtype": s.dtype().short(),
                "head_dim": s.head_dim().get(),
                "params": params,
                "kernels": kernels,
                "spec": s,
            }));
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&v).map_err(CliError::failed)?
        );
    } else {
        println!(
            "{:<44} {:<10} {:<6} {:>4} {:<22} score / params",
            "name", "family", "dtype", "D", "mask / mode"
        );
        for s in &specs {
            let mask = if s.layout.is_dense() {
                s.mask.tag().to_string()
            } else {
                format!("{} ({})", s.mask.tag(), s.layout.tag())
            };
            println!(
                "{:<44} {:<10} {:<6} {:>4} {:<22} {}",
                s.canonical_name(),
                STATIC_FAMILY,
                s.dtype.short(),
                s.head_dim.get(),
                mask,
                s.score.short().unwrap_or_else(|| "none".into())
            );
        }
        for s in &dynamic {
            println!(
                "{:<44} {:<10} {:<6} {:>4} {:<22} {} ({} kernel{})",
                s.canonical_name(),
                family_tag(s),
                s.dtype().short(),
                s.head_dim().get(),
                mode_tag(s),
                params_text(s),
                s.stages().len(),
                if s.stages().len() == 1 { "" } else { "s" }
            );
        }
        println!(
            "{} kernels, {} dynamic pipelines",
            specs.len(),
            dynamic.len()
        );
    }
    Ok(())
}
