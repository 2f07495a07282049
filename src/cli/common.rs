//! Shared helpers: resolving a SPEC argument, random test inputs, element-type dispatch.

use std::path::Path;

use attnforge::codegen::catalog;
use attnforge::codegen::dynamic::dynamic_catalog;
use attnforge::codegen::tile::Arch;
use attnforge::specfile::{self, AnySpecFile};

use super::CliError;

/// A catalog canonical name (static or dynamic) or a spec-file path of either kind.
pub fn resolve_any(arg: &str) -> Result<AnySpecFile, CliError> {
    let p = Path::new(arg);
    if arg.ends_with(".toml") || p.exists() {
        return AnySpecFile::load(p).map_err(CliError::input);
    }
    if let Some(s) = catalog::find(arg) {
        return Ok(AnySpecFile::Static(Box::new(specfile::from_catalog(s))));
    }
    if let Some(s) = dynamic_catalog()
        .into_iter()
        .find(|s| s.canonical_name() == arg)
    {
        return Ok(AnySpecFile::Dynamic(specfile::dyn_from_catalog(s)));
    }
    let names: Vec<String> = catalog()
        .iter()
        .chain(&catalog::serving_catalog())
        .map(|s| s.canonical_name())
        .chain(dynamic_catalog().iter().map(|s| s.canonical_name()))
        .collect();
    let close: Vec<&String> = names
        .iter()
        .filter(|n| {
            arg.split('_')
                .filter(|w| w.len() > 2)
                .any(|w| n.contains(w))
        })
        .take(5)
        .collect();
    Err(CliError::input(format!(
        "`{arg}` is neither a spec file nor a catalog name{}\n  fix: give a path to a .toml spec file or a name from `attnforge list`",
        if close.is_empty() {
            String::new()
        } else {
            format!(" (similar: {})", close.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "))
        }
    )))
}

/// Parse `sm_80` / `sm_90`.
pub fn parse_arch(s: &str) -> Result<Arch, String> {
    match s {
        "sm_80" => Ok(Arch::Sm80),
        "sm_90" => Ok(Arch::Sm90),
        _ => Err(format!("unknown architecture `{s}`: use sm_80 or sm_90")),
    }
}

/// Deterministic uniform values in [-1, 1) (splitmix64), one stream per tensor.
pub fn random_values(n: usize, seed: u64, stream: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(stream.wrapping_mul(0xBF58_476D_1CE4_E5B9));
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}
