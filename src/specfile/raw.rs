//! The serde shape of a static spec file (the TOML as written, before validation) and the
//! field path of a TOML error.

use std::collections::BTreeMap;

use attnforge_runtime::codegen::blocks::BlockLists;
use attnforge_runtime::codegen::spec::{BlockSize, DType, Layout, StatsSpec};
use attnforge_runtime::codegen::tile::TileConfig;
use serde::Deserialize;

use super::Problem;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Raw {
    pub(crate) description: Option<String>,
    pub(crate) dtype: DType,
    pub(crate) head_dim: u32,
    #[serde(default)]
    pub(crate) gqa: bool,
    #[serde(default)]
    pub(crate) layout: Layout,
    pub(crate) scale: Option<f32>,
    pub(crate) sparse_block: Option<BlockSize>,
    pub(crate) mask: MaskRaw,
    pub(crate) score: Option<ScoreRaw>,
    #[serde(default)]
    pub(crate) params: toml::Table,
    pub(crate) problem: Option<Problem>,
    pub(crate) tune: Option<TuneRaw>,
    #[serde(default)]
    pub(crate) backward: bool,
    pub(crate) stats: Option<StatsSpec>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum MaskRaw {
    Name(String),
    Table(FnTable),
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum ScoreRaw {
    Name(String),
    Table(FnTable),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FnTable {
    pub(crate) kind: Option<String>,
    pub(crate) function: Option<FnSource>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FnSource {
    pub(crate) source: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct ParamsRaw {
    pub(crate) softcap: Option<f32>,
    pub(crate) alibi_slopes: Option<Vec<f32>>,
    pub(crate) doc: Option<Vec<i32>>,
    pub(crate) doc_segments: Option<Vec<usize>>,
    pub(crate) doc_file: Option<String>,
    pub(crate) block_lists: Option<BlockLists>,
    #[serde(default)]
    pub(crate) user: BTreeMap<String, toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TuneRaw {
    pub(crate) arch: Option<String>,
    pub(crate) tile: Option<TileConfig>,
    #[serde(default)]
    pub(crate) space: Vec<TileConfig>,
}

/// The field path of a toml deserialization error: the key named in the message, else the
/// dotted key at the error's position (`head_dim`, `problem.seq_q`), else `toml`.
pub(crate) fn toml_field(e: &toml::de::Error, text: &str) -> String {
    let m = e.message();
    for pat in ["unknown field `", "missing field `"] {
        if let Some(i) = m.find(pat) {
            let rest = &m[i + pat.len()..];
            if let Some(j) = rest.find('`') {
                return rest[..j].to_string();
            }
        }
    }
    // A value of the wrong type or out of its set names its key; a syntax error stays `toml`.
    let data_error = [
        "invalid type",
        "invalid value",
        "unknown variant",
        "invalid length",
    ]
    .iter()
    .any(|p| m.starts_with(p));
    e.span()
        .filter(|_| data_error)
        .and_then(|sp| key_at(text, sp.start))
        .unwrap_or_else(|| "toml".into())
}

/// The dotted key whose value starts at byte `at`: the `key =` of its line, prefixed with
/// the nearest `[table]` header above it.
fn key_at(text: &str, at: usize) -> Option<String> {
    let before = text.get(..at)?;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text.get(line_start..)?.lines().next()?;
    let eq = line.find('=')?;
    if line_start + eq >= at {
        return None;
    }
    let key = line[..eq].trim().trim_matches('"');
    if key.is_empty() || key.starts_with('[') {
        return None;
    }
    let table = before[..line_start].lines().rev().find_map(|l| {
        let l = l.trim();
        (l.starts_with('[') && !l.starts_with("[[") && l.ends_with(']'))
            .then(|| l.trim_matches(|c| c == '[' || c == ']').trim().to_string())
    });
    Some(match table {
        Some(t) if !t.is_empty() => format!("{t}.{key}"),
        _ => key.to_string(),
    })
}
