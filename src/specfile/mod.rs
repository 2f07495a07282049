//! Spec files: a kernel variant, its runtime parameters, a test problem and a tile in TOML.
//!
//! The file carries the same information as the Rust macro spec and goes through the same
//! library code: the `KernelSpec` part is deserialized with serde and checked with
//! [`attnforge_codegen::check::validate_spec`]; mask and score functions are Rust-subset
//! source text translated by `attnforge-dsl` (the same translator the `#[mask]`/`#[score]`
//! macros use) and evaluated on the host by [`attnforge_dsl::eval`] for the reference.
//! The format is documented in `docs/spec-files.md`.
//!
//! ```
//! let f = attnforge::specfile::SpecFile::parse(
//!     "dtype = \"f16\"\nhead_dim = 64\nmask = \"local\"\n[params]\nwindow_left = 16\nwindow_right = 0\n",
//!     None,
//! )
//! .unwrap();
//! assert_eq!(f.spec.canonical_name(), "flash_fwd_local_d64_f16");
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use attnforge_dsl::eval::{EvalFn, Value};
use attnforge_dsl::{FnKind, ParamKind};
use attnforge_reference::Sharing;
use attnforge_runtime::codegen::blocks::BlockLists;
use attnforge_runtime::codegen::check::{validate_spec, MaskParams};
use attnforge_runtime::codegen::dynamic::{validate_dynamic, DynamicSpec, LandmarkMode};
use attnforge_runtime::codegen::masks::{self, BuiltinMask, ParamType, MASKS};
use attnforge_runtime::codegen::scores::{self, ScoreParamKind};
use attnforge_runtime::codegen::shape::Shape;
use attnforge_runtime::codegen::spec::{
    BlockSize, DType, HeadDim, KernelSpec, Mask, ScoreMod, UserFunction, UserParam, UserParamKind,
    UserSource,
};
use attnforge_runtime::codegen::tile::{default_tile, Arch, TileConfig};
use attnforge_runtime::exec::{RunParams, UserValue};
use serde::Deserialize;

/// An error in a spec file: which file, which field, what is wrong and how to fix it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecFileError {
    /// The file (or `<catalog>` / `<input>`).
    pub file: String,
    /// Dotted field path (`params.window_left`, `mask.function.source`), or `toml` for
    /// syntax errors.
    pub field: String,
    /// What is wrong (with line/column where known).
    pub message: String,
    /// How to fix it.
    pub fix: String,
}

impl fmt::Display for SpecFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: field `{}`: {}\n  fix: {}",
            self.file, self.field, self.message, self.fix
        )
    }
}

impl std::error::Error for SpecFileError {}

/// Test problem used by `attnforge check` (random inputs of these sizes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Problem {
    /// Batch `B`.
    #[serde(default = "one")]
    pub batch: usize,
    /// Query heads `Hq`.
    #[serde(default)]
    pub heads_q: usize,
    /// Key/value heads `Hkv`.
    #[serde(default)]
    pub heads_kv: usize,
    /// Query length `Sq`.
    #[serde(default = "default_seq")]
    pub seq_q: usize,
    /// Key length `Sk`.
    #[serde(default = "default_seq")]
    pub seq_k: usize,
    /// Seed of the random inputs.
    #[serde(default = "one_u64")]
    pub seed: u64,
}

impl Problem {
    /// The problem's shape (the seed aside).
    pub fn shape(&self) -> Shape {
        Shape {
            batch: self.batch,
            heads_q: self.heads_q,
            heads_kv: self.heads_kv,
            seq_q: self.seq_q,
            seq_k: self.seq_k,
        }
    }
}

fn one() -> usize {
    1
}
fn one_u64() -> u64 {
    1
}
fn default_seq() -> usize {
    80
}

/// The `[tune]` table: the architecture, the tile used by `emit`/`check`/`run`, and the
/// candidate tiles of a tuning run.
#[derive(Clone, Debug, PartialEq)]
pub struct Tune {
    /// Target architecture.
    pub arch: Arch,
    /// Tile for emit/check/run (default: `default_tile(spec, arch)`).
    pub tile: Option<TileConfig>,
    /// Candidate tiles for tuning (empty: the default search space).
    pub space: Vec<TileConfig>,
}

/// Where the document ids of the document masks come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DocSource {
    /// Explicit ids.
    Ids(Vec<i32>),
    /// Segment lengths: ids 0, 1, 2, ... repeated by length (must sum to `Sk`).
    Segments(Vec<usize>),
    /// An `.npy` file of i32 (relative paths are relative to the spec file).
    File(PathBuf),
}

/// A user function parsed from source text: the CUDA for the kernel and the host evaluator.
#[derive(Clone, Debug)]
pub struct HostFn {
    /// Function name.
    pub name: String,
    /// Parameter names and DSL kinds, in order.
    pub params: Vec<(String, ParamKind)>,
    /// Host evaluator of the same text.
    pub eval: EvalFn,
    /// The first evaluation error of the closures built by [`SpecFile::run_params`] (a
    /// division by zero, an index out of bounds), with the arguments it happened at. The
    /// closures cannot return it (the reference and the block-list builder take plain
    /// predicates), so they record it here and give a neutral value; callers ask
    /// [`SpecFile::user_fn_failure`] before trusting a result.
    pub fault: Arc<OnceLock<String>>,
}

/// A parsed, validated spec file.
#[derive(Clone, Debug)]
pub struct SpecFile {
    /// Where it came from (`None` for catalog entries and text).
    pub path: Option<PathBuf>,
    /// Free text.
    pub description: Option<String>,
    /// The kernel spec (validated).
    pub spec: KernelSpec,
    /// Scalar mask parameters.
    pub mask_params: MaskParams,
    /// Softcap value.
    pub softcap: Option<f32>,
    /// ALiBi slopes (default: the standard slopes).
    pub alibi_slopes: Option<Vec<f32>>,
    /// Document ids.
    pub doc: Option<DocSource>,
    /// Explicit block lists.
    pub block_lists: Option<BlockLists>,
    /// User parameter values.
    pub user: BTreeMap<String, UserValue>,
    /// Host twin of a user mask given as source.
    pub host_mask: Option<HostFn>,
    /// Host twin of a user score given as source.
    pub host_score: Option<HostFn>,
    /// The `[problem]` table.
    pub problem: Problem,
    /// The `[tune]` table.
    pub tune: Tune,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    description: Option<String>,
    dtype: DType,
    head_dim: u32,
    #[serde(default)]
    gqa: bool,
    scale: Option<f32>,
    sparse_block: Option<BlockSize>,
    mask: MaskRaw,
    score: Option<ScoreRaw>,
    #[serde(default)]
    params: toml::Table,
    problem: Option<Problem>,
    tune: Option<TuneRaw>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum MaskRaw {
    Name(String),
    Table(FnTable),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ScoreRaw {
    Name(String),
    Table(FnTable),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FnTable {
    kind: Option<String>,
    function: Option<FnSource>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FnSource {
    source: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ParamsRaw {
    softcap: Option<f32>,
    alibi_slopes: Option<Vec<f32>>,
    doc: Option<Vec<i32>>,
    doc_segments: Option<Vec<usize>>,
    doc_file: Option<String>,
    block_lists: Option<BlockLists>,
    #[serde(default)]
    user: BTreeMap<String, toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TuneRaw {
    arch: Option<String>,
    tile: Option<TileConfig>,
    #[serde(default)]
    space: Vec<TileConfig>,
}

/// Every mask kind a spec file accepts (the mask table's tags, then the function kinds).
fn mask_kinds() -> String {
    format!("{}, predicate, block_sparse", BuiltinMask::tag_list())
}

impl SpecFile {
    /// Read and parse a spec file.
    pub fn load(path: &Path) -> Result<SpecFile, SpecFileError> {
        let text = std::fs::read_to_string(path).map_err(|e| SpecFileError {
            file: path.display().to_string(),
            field: "-".into(),
            message: format!("cannot read the spec file: {e}"),
            fix: "give the path of an existing TOML spec file or a catalog name (`attnforge list`)"
                .into(),
        })?;
        Self::parse(&text, Some(path))
    }

    /// Parse spec-file text (`path` is used in errors and to resolve relative file names).
    pub fn parse(text: &str, path: Option<&Path>) -> Result<SpecFile, SpecFileError> {
        let file = path.map_or("<input>".to_string(), |p| p.display().to_string());
        let err = |field: &str, message: String, fix: &str| SpecFileError {
            file: file.clone(),
            field: field.into(),
            message,
            fix: fix.into(),
        };
        if is_dynamic_text(text) {
            return Err(err(
                "family",
                "`family` declares a data-dependent pipeline (landmark, hax, cca, topk, lse_merge), not a static kernel".into(),
                "load it with attnforge::specfile::AnySpecFile::load or DynSpecFile::load (the CLI accepts both kinds)",
            ));
        }
        let raw: Raw = toml::from_str(text).map_err(|e| {
            let field = toml_field(&e, text);
            let msg = e.to_string().replace('\n', " ").trim().to_string();
            err(
                &field,
                msg,
                "see docs/spec-files.md for the fields and their types",
            )
        })?;
        let head_dim = match raw.head_dim {
            64 => HeadDim::D64,
            128 => HeadDim::D128,
            256 => HeadDim::D256,
            d => {
                return Err(err(
                    "head_dim",
                    format!("unsupported head dimension {d}"),
                    "use 64, 128 or 256",
                ))
            }
        };
        let (mask, host_mask) = match raw.mask {
            MaskRaw::Name(n) if n == "predicate" => {
                return Err(err(
                    "mask",
                    "mask `predicate` needs its function, and a plain `mask = \"predicate\"` string has none".into(),
                    "replace the line with a [mask] table: `[mask]` `kind = \"predicate\"` and `[mask.function]` `source = '''fn name(q: i64, kv: i64) -> bool { .. }'''` (docs/spec-files.md)",
                ))
            }
            MaskRaw::Name(n) => (simple_mask(&n).ok_or_else(|| {
                err(
                    "mask",
                    format!("unknown mask `{n}`"),
                    &format!("use one of: {} (predicate and block_sparse with a [mask.function] table)", mask_kinds()),
                )
            })?, None),
            MaskRaw::Table(t) => {
                let kind = t.kind.as_deref().unwrap_or(if t.function.is_some() {
                    "predicate"
                } else {
                    ""
                });
                let func = match &t.function {
                    Some(f) => Some(user_fn(&f.source, FnKind::Mask, "mask.function.source")
                        .map_err(|(field, m, fix)| err(&field, m, &fix))?),
                    None => None,
                };
                match (kind, func) {
                    ("predicate", Some((uf, h))) => (Mask::Predicate(uf), Some(h)),
                    ("predicate", None) => {
                        return Err(err(
                            "mask.function",
                            "a predicate mask needs its function".into(),
                            "add [mask.function] with `source = '''fn name(q: i64, kv: i64) -> bool { .. }'''`",
                        ))
                    }
                    ("block_sparse", f) => {
                        let (m, h) = match f {
                            Some((uf, h)) => (Some(uf), Some(h)),
                            None => (None, None),
                        };
                        (Mask::BlockSparse { mask: m }, h)
                    }
                    (k, None) if simple_mask(k).is_some() => (simple_mask(k).expect("checked"), None),
                    (k, _) => {
                        return Err(err(
                            "mask.kind",
                            format!("mask kind `{k}` does not take a function (or is unknown)"),
                            &format!("use `predicate` or `block_sparse` with [mask.function]; kinds: {}", mask_kinds()),
                        ))
                    }
                }
            }
        };
        let (score, host_score) = match raw.score {
            None => (ScoreMod::None, None),
            Some(ScoreRaw::Name(n)) => (
                ScoreMod::builtin(&n).ok_or_else(|| {
                    err(
                        "score",
                        format!("unknown score modification `{n}`"),
                        &format!("use {}, or a [score.function] table", scores::tag_list()),
                    )
                })?,
                None,
            ),
            Some(ScoreRaw::Table(t)) => {
                if let Some(k) = t.kind.as_deref().filter(|k| *k != "user") {
                    return Err(err(
                        "score.kind",
                        format!("score kind `{k}` does not take a function"),
                        "use kind = \"user\" (or omit kind) with [score.function]",
                    ));
                }
                let f = t.function.ok_or_else(|| {
                    err(
                        "score.function",
                        "a user score needs its function".into(),
                        "add [score.function] with `source = '''fn name(score: f32, q: i64, kv: i64) -> f32 { .. }'''`",
                    )
                })?;
                let (uf, h) = user_fn(&f.source, FnKind::Score, "score.function.source")
                    .map_err(|(field, m, fix)| err(&field, m, &fix))?;
                (ScoreMod::User(uf), Some(h))
            }
        };
        if let Some(b) = raw.sparse_block {
            if !mask.uses_block_lists() {
                return Err(err(
                    "sparse_block",
                    format!(
                        "sparse_block = {{ q = {}, k = {} }} is given but mask `{}` uses no block lists",
                        b.q,
                        b.k,
                        mask.tag()
                    ),
                    "remove `sparse_block` (it is the block size of the document, predicate and block_sparse masks)",
                ));
            }
        }
        let spec = KernelSpec {
            dtype: raw.dtype,
            head_dim,
            gqa: raw.gqa,
            mask,
            score,
            scale: raw.scale,
            sparse_block: raw.sparse_block.unwrap_or_default(),
        };
        validate_spec(&spec).map_err(|errs| {
            let first = &errs[0];
            err(
                &first.path.to_string(),
                errs.iter()
                    .map(|e| e.message.clone())
                    .collect::<Vec<_>>()
                    .join("; "),
                &first.fix,
            )
        })?;
        let (p, values) = split_params(raw.params).map_err(|(f, m, fix)| err(&f, m, &fix))?;
        let mask_params =
            mask_params(&spec.mask, &values).map_err(|(f, m, fix)| err(&f, m, &fix))?;
        let scalar = spec.score.param_of(ScoreParamKind::Scalar);
        match (scalar, p.softcap) {
            (None, Some(_)) => {
                return Err(err(
                    "params.softcap",
                    "softcap is given but the score is not `softcap`".into(),
                    "remove it or set score = \"softcap\"",
                ))
            }
            (Some(sp), None) => {
                return Err(err(
                    &format!("params.{}", sp.name),
                    format!("the {} score needs its value ({})", sp.name, sp.doc),
                    &format!("add `{} = {:.1}` to [params]", sp.name, sp.default),
                ))
            }
            _ => {}
        }
        if spec.score.param_of(ScoreParamKind::PerHead).is_none() && p.alibi_slopes.is_some() {
            return Err(err(
                "params.alibi_slopes",
                "slopes given but the score is not `alibi`".into(),
                "remove them or set score = \"alibi\"",
            ));
        }
        let needs_doc = spec.mask.reads_doc();
        let docs: Vec<DocSource> = [
            p.doc.map(DocSource::Ids),
            p.doc_segments.map(DocSource::Segments),
            p.doc_file.map(|f| {
                let fp = PathBuf::from(&f);
                DocSource::File(match path.and_then(Path::parent) {
                    Some(dir) if fp.is_relative() => dir.join(fp),
                    _ => fp,
                })
            }),
        ]
        .into_iter()
        .flatten()
        .collect();
        if docs.len() > 1 {
            return Err(err(
                "params.doc",
                "more than one of doc, doc_segments, doc_file".into(),
                "give the document ids one way",
            ));
        }
        if !needs_doc && !docs.is_empty() {
            return Err(err(
                "params.doc",
                format!(
                    "document ids given but mask `{}` does not use them",
                    spec.mask.tag()
                ),
                "remove them",
            ));
        }
        if p.block_lists.is_some() && !spec.mask.uses_block_lists() {
            return Err(err(
                "params.block_lists",
                format!(
                    "block lists given but mask `{}` does not use them",
                    spec.mask.tag()
                ),
                "remove [params.block_lists]",
            ));
        }
        let user = user_values(&spec, &p.user).map_err(|(f, m, fix)| err(&f, m, &fix))?;
        let mut problem = raw.problem.unwrap_or(Problem {
            batch: 1,
            heads_q: 0,
            heads_kv: 0,
            seq_q: default_seq(),
            seq_k: default_seq(),
            seed: 1,
        });
        if problem.heads_q == 0 {
            problem.heads_q = if spec.gqa { 4 } else { 2 };
        }
        if problem.heads_kv == 0 {
            problem.heads_kv = if spec.gqa { 1 } else { problem.heads_q };
        }
        problem_limits(&problem, head_dim.get()).map_err(|(f, m, fix)| err(&f, m, &fix))?;
        let tune = match raw.tune {
            None => Tune {
                arch: Arch::Sm80,
                tile: None,
                space: Vec::new(),
            },
            Some(t) => Tune {
                arch: match t.arch.as_deref() {
                    None | Some("sm_80") => Arch::Sm80,
                    Some("sm_90") => Arch::Sm90,
                    Some(a) => {
                        return Err(err(
                            "tune.arch",
                            format!("unknown architecture `{a}`"),
                            "use \"sm_80\" or \"sm_90\"",
                        ))
                    }
                },
                tile: t.tile,
                space: t.space,
            },
        };
        if let Some(t) = &tune.tile {
            t.valid(&spec, tune.arch).map_err(|e| {
                err(
                    "tune.tile",
                    e.iter().map(|x| x.to_string()).collect::<Vec<_>>().join("; "),
                    "pick a valid tile (block_m/block_n multiples of 16, see `attnforge emit --help`)",
                )
            })?;
        }
        Ok(SpecFile {
            path: path.map(Path::to_path_buf),
            description: raw.description,
            spec,
            mask_params,
            softcap: p.softcap,
            alibi_slopes: p.alibi_slopes,
            doc: docs.into_iter().next(),
            block_lists: p.block_lists,
            user,
            host_mask,
            host_score,
            problem,
            tune,
        })
    }

    /// The tile for emit/check/run: `[tune] tile`, else the default tile of the arch.
    pub fn tile(&self) -> Result<TileConfig, SpecFileError> {
        match self.tune.tile {
            Some(t) => Ok(t),
            None => default_tile(&self.spec, self.tune.arch).ok_or_else(|| {
                self.error(
                    "tune.tile",
                    "no default tile fits this spec".into(),
                    "give [tune] tile = { block_m = 64, block_n = 64, warps = 4, stages = 1 }",
                )
            }),
        }
    }

    /// An error about this file.
    pub fn error(&self, field: &str, message: String, fix: &str) -> SpecFileError {
        SpecFileError {
            file: self
                .path
                .as_ref()
                .map_or("<catalog>".into(), |p| p.display().to_string()),
            field: field.into(),
            message,
            fix: fix.into(),
        }
    }

    /// Runtime parameters for a problem with `batch` and `seq_k` (document ids are checked
    /// against `seq_k`; `doc_override` replaces the file's ids, e.g. `attnforge run --doc`).
    pub fn run_params(
        &self,
        seq_k: usize,
        doc_override: Option<Vec<i32>>,
    ) -> Result<RunParams, SpecFileError> {
        let mut rp = RunParams {
            mask: Some(self.mask_params.clone()),
            softcap: self.softcap,
            alibi_slopes: self.alibi_slopes.clone(),
            block_lists: self.block_lists.clone(),
            user: self.user.clone(),
            ..RunParams::default()
        };
        let doc = match (doc_override, &self.doc) {
            (Some(d), _) => Some(d),
            (None, Some(DocSource::Ids(d))) => Some(d.clone()),
            (None, Some(DocSource::Segments(s))) => {
                let total = s.iter().try_fold(0usize, |t, &n| t.checked_add(n));
                if total != Some(seq_k) {
                    let total = total.map_or("more than 2^64".into(), |t| t.to_string());
                    return Err(self.error(
                        "params.doc_segments",
                        format!("segments sum to {total} but the key length is {seq_k}"),
                        "make the segment lengths sum to seq_k",
                    ));
                }
                Some(
                    s.iter()
                        .enumerate()
                        .flat_map(|(i, n)| std::iter::repeat_n(i as i32, *n))
                        .collect(),
                )
            }
            (None, Some(DocSource::File(f))) => Some(crate::npy::read_i32(f).map_err(|e| {
                self.error(
                    "params.doc_file",
                    e.to_string(),
                    "give an .npy file of int32 ids",
                )
            })?),
            (None, None) => None,
        };
        if self.spec.mask.reads_doc() && doc.is_none() {
            return Err(self.error(
                "params.doc",
                format!("mask `{}` needs per-token document ids", self.spec.mask.tag()),
                "add `doc_segments = [..]`, `doc = [..]` or `doc_file = \"ids.npy\"` to [params] (or pass --doc)",
            ));
        }
        if matches!(self.spec.mask, Mask::BlockSparse { .. }) && self.block_lists.is_none() {
            return Err(self.error(
                "params.block_lists",
                "mask `block_sparse` needs explicit block lists and the spec file has none".into(),
                "add a [params.block_lists] table (batches, heads, rows, cols, width, full_num, full_idx, partial_num, partial_idx; see examples/specs/block_sparse.toml and docs/spec-files.md)",
            ));
        }
        rp.doc = doc;
        let user = self.user.clone();
        if let Some(h) = &self.host_mask {
            let vals = host_values(h, &user).map_err(|m| {
                self.error(
                    "params.user",
                    m,
                    "give every parameter of the mask function in [params.user]",
                )
            })?;
            let (f, name, fault) = (h.eval.clone(), h.name.clone(), h.fault.clone());
            rp.host_mask = Some(Arc::new(move |b, hh, q, kv| {
                if fault.get().is_some() {
                    return false;
                }
                f.mask(b, hh, q, kv, &vals).unwrap_or_else(|e| {
                    let _ = fault.set(format!(
                        "user mask function `{name}` failed at b = {b}, h = {hh}, q = {q}, kv = {kv}: {e}"
                    ));
                    false
                })
            }));
        }
        if let Some(h) = &self.host_score {
            let vals = host_values(h, &user).map_err(|m| {
                self.error(
                    "params.user",
                    m,
                    "give every parameter of the score function in [params.user]",
                )
            })?;
            let (f, name, fault) = (h.eval.clone(), h.name.clone(), h.fault.clone());
            rp.host_score = Some(Arc::new(move |s, b, hh, q, kv| {
                if fault.get().is_some() {
                    return f64::NAN;
                }
                f.score(s, b, hh, q, kv, &vals).map_or_else(
                    |e| {
                        let _ = fault.set(format!(
                            "user score function `{name}` failed at score = {s}, b = {b}, h = {hh}, q = {q}, kv = {kv}: {e}"
                        ));
                        f64::NAN
                    },
                    f64::from,
                )
            }));
        }
        Ok(rp)
    }

    /// The first evaluation error of a user function (given as source) in the closures of
    /// [`SpecFile::run_params`]: any result computed after it is meaningless.
    pub fn user_fn_failure(&self) -> Option<SpecFileError> {
        [
            (&self.host_mask, "mask.function.source"),
            (&self.host_score, "score.function.source"),
        ]
        .into_iter()
        .find_map(|(h, field)| {
            let msg = h.as_ref()?.fault.get()?;
            Some(self.error(
                field,
                msg.clone(),
                "guard the operation in the function (`if d == 0 { .. }`; keep indices \
                     below the array's length) or change the values in [params.user] \
                     (docs/dsl.md, \"User-function semantics\")",
            ))
        })
    }
}

fn host_values(h: &HostFn, user: &BTreeMap<String, UserValue>) -> Result<Vec<Value>, String> {
    h.params
        .iter()
        .map(|(n, _)| {
            Ok(match user.get(n) {
                Some(UserValue::Int(i)) => Value::Int(i64::from(*i)),
                Some(UserValue::Float(f)) => Value::Float(*f),
                Some(UserValue::Ints(a)) => Value::Ints(a.clone()),
                Some(UserValue::Floats(a)) => Value::Floats(a.clone()),
                None => return Err(format!("missing value of user parameter `{n}`")),
            })
        })
        .collect()
}

/// The field path of a toml deserialization error: the key named in the message, else the
/// dotted key at the error's position (`head_dim`, `problem.seq_q`), else `toml`.
fn toml_field(e: &toml::de::Error, text: &str) -> String {
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

/// The hard size limits (crate::limits) of a `[problem]` table, checked before `check`
/// allocates its random inputs.
fn problem_limits(p: &Problem, head_dim: usize) -> Result<(), FieldErr> {
    let sizes = crate::limits::ProblemSizes {
        fields: [
            ("problem.batch", p.batch as u64),
            ("problem.heads_q", p.heads_q as u64),
            ("problem.heads_kv", p.heads_kv as u64),
            ("problem.seq_q", p.seq_q as u64),
            ("problem.seq_k", p.seq_k as u64),
        ],
        dim: head_dim as u64,
    };
    crate::limits::check_hard(&sizes).map_err(|e| (e.field, e.message, e.fix))
}

fn simple_mask(n: &str) -> Option<Mask> {
    match n {
        "block_sparse" => Some(Mask::BlockSparse { mask: None }),
        _ => Mask::builtin(n),
    }
}

type FieldErr = (String, String, String);

fn user_fn(src: &str, kind: FnKind, field: &str) -> Result<(UserFunction, HostFn), FieldErr> {
    let (def, eval) = attnforge_dsl::eval::translate_and_compile(src, kind).map_err(|errs| {
        (
            field.to_string(),
            errs.iter()
                .map(|e| format!("line {}, column {}: {}", e.line, e.column, e.message))
                .collect::<Vec<_>>()
                .join("; "),
            "write the function in the supported Rust subset (docs/spec-files.md)".to_string(),
        )
    })?;
    let mut params = Vec::new();
    for p in &def.params {
        if ["b", "h", "q_pos", "kv_pos", "score"].contains(&p.name.as_str()) {
            return Err((
                field.into(),
                format!(
                    "user parameter `{}` collides with an argument of the device function",
                    p.name
                ),
                "rename it (b, h, q_pos, kv_pos and score are taken)".into(),
            ));
        }
        let k = match p.kind {
            ParamKind::U32 => UserParamKind::U32,
            ParamKind::I32 => UserParamKind::I32,
            ParamKind::F32 => UserParamKind::F32,
            ParamKind::Bool => UserParamKind::Bool,
            ParamKind::SliceU32 => UserParamKind::ArrayU32,
            ParamKind::SliceI32 => UserParamKind::ArrayI32,
            ParamKind::SliceF32 => UserParamKind::ArrayF32,
            ParamKind::I64 | ParamKind::U64 => {
                return Err((
                    field.into(),
                    format!(
                        "user parameter `{}` has type {}: kernels take 32-bit scalars only",
                        p.name,
                        p.kind.rust_type()
                    ),
                    "declare it as i32 or u32 (positions may stay i64)".into(),
                ))
            }
        };
        params.push(UserParam {
            name: p.name.clone(),
            kind: k,
        });
    }
    let host = HostFn {
        name: def.name.clone(),
        params: def
            .params
            .iter()
            .map(|p| (p.name.clone(), p.kind))
            .collect(),
        eval,
        fault: Arc::default(),
    };
    Ok((
        UserFunction {
            name: def.name,
            source: UserSource::Function(def.cuda),
            params,
        },
        host,
    ))
}

/// Splits `[params]` into the mask parameters (any parameter name of the mask table, a
/// number) and the other keys (checked by serde, unknown keys rejected).
fn split_params(table: toml::Table) -> Result<(ParamsRaw, BTreeMap<String, f64>), FieldErr> {
    let names = masks::all_param_names();
    let mut values = BTreeMap::new();
    let mut rest = toml::Table::new();
    for (k, v) in table {
        if !names.contains(&k.as_str()) {
            rest.insert(k, v);
            continue;
        }
        let float_ok = MASKS
            .iter()
            .flat_map(|d| d.params)
            .any(|p| p.name == k && p.ty == ParamType::Float);
        let n = match &v {
            toml::Value::Integer(i) => *i as f64,
            toml::Value::Float(f) if float_ok => *f,
            _ => {
                return Err((
                    format!("params.{k}"),
                    format!(
                        "`{k}` must be {}: got {v}",
                        if float_ok { "a number" } else { "an integer" }
                    ),
                    format!(
                        "give `{k} = <{}>`",
                        if float_ok { "number" } else { "integer" }
                    ),
                ))
            }
        };
        values.insert(k, n);
    }
    let one = |t: toml::Table| toml::Value::Table(t).try_into::<ParamsRaw>();
    let p = one(rest.clone()).map_err(|e| {
        let msg = e.message().to_string();
        // The key at fault: named by serde (unknown field), else the first that fails alone.
        let field = msg
            .find("unknown field `")
            .and_then(|i| msg[i + 15..].split('`').next().map(str::to_string))
            .or_else(|| {
                rest.iter()
                    .find(|(k, v)| {
                        let mut t = toml::Table::new();
                        t.insert((*k).clone(), (*v).clone());
                        one(t).is_err()
                    })
                    .map(|(k, _)| format!("params.{k}"))
            })
            .unwrap_or_else(|| "params".into());
        (
            field,
            msg.replace('\n', " ").trim().to_string(),
            "see docs/spec-files.md for the fields and their types".to_string(),
        )
    })?;
    Ok((p, values))
}

/// The mask parameters of `[params]` against the mask table: each given one must be a
/// parameter of the spec's mask, each required one given (optional ones take their
/// default).
fn mask_params(mask: &Mask, given: &BTreeMap<String, f64>) -> Result<MaskParams, FieldErr> {
    let tag = mask.tag();
    let params = mask.def().map_or(&[][..], |d| d.params);
    let list = mask.def().map(|d| d.param_list()).unwrap_or_default();
    if let Some(n) = given.keys().find(|n| !params.iter().any(|p| &p.name == n)) {
        return Err((
            format!("params.{n}"),
            format!("`{n}` is not a parameter of mask `{tag}`"),
            if params.is_empty() {
                "remove it".to_string()
            } else {
                format!("remove it; mask `{tag}` takes {list}")
            },
        ));
    }
    let mut out = MaskParams::new();
    for p in params {
        match given.get(p.name) {
            Some(v) => out.set(p.name, *v),
            None if p.optional => out.set(p.name, p.default.at(default_seq())),
            None => {
                return Err((
                    format!("params.{}", p.name),
                    format!("mask `{tag}` needs `{}` ({})", p.name, p.doc),
                    format!(
                        "add `{} = {}` to [params]",
                        p.name,
                        p.default.at(default_seq())
                    ),
                ))
            }
        }
    }
    Ok(out)
}

fn user_values(
    spec: &KernelSpec,
    raw: &BTreeMap<String, toml::Value>,
) -> Result<BTreeMap<String, UserValue>, FieldErr> {
    let declared: Vec<&UserParam> = spec
        .user_functions()
        .iter()
        .flat_map(|(_, f)| f.params.iter())
        .collect();
    let mut out = BTreeMap::new();
    for (name, v) in raw {
        let field = format!("params.user.{name}");
        let Some(p) = declared.iter().find(|p| &p.name == name) else {
            return Err((
                field,
                format!("`{name}` is not a parameter of the spec's user functions"),
                if declared.is_empty() {
                    "remove it (and [params.user] with it): the spec has no user function with parameters, so none are declared".to_string()
                } else {
                    format!(
                        "remove it; declared parameters: {}",
                        declared
                            .iter()
                            .map(|p| p.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                },
            ));
        };
        let bad = || {
            (
                field.clone(),
                format!("value {v} does not fit the declared type {:?}", p.kind),
                "give an integer, float, bool or array matching the declared type".to_string(),
            )
        };
        let int = |x: &toml::Value| -> Option<i32> {
            match x {
                toml::Value::Integer(i) => i32::try_from(*i).ok(),
                toml::Value::Boolean(b) => Some(i32::from(*b)),
                _ => None,
            }
        };
        let flt = |x: &toml::Value| -> Option<f32> {
            match x {
                toml::Value::Integer(i) => Some(*i as f32),
                toml::Value::Float(f) => Some(*f as f32),
                _ => None,
            }
        };
        let uv = match (p.kind, v) {
            (UserParamKind::I32 | UserParamKind::U32 | UserParamKind::Bool, x) => {
                UserValue::Int(int(x).ok_or_else(bad)?)
            }
            (UserParamKind::F32, x) => UserValue::Float(flt(x).ok_or_else(bad)?),
            (UserParamKind::ArrayI32 | UserParamKind::ArrayU32, toml::Value::Array(a)) => {
                UserValue::Ints(a.iter().map(int).collect::<Option<_>>().ok_or_else(bad)?)
            }
            (UserParamKind::ArrayF32, toml::Value::Array(a)) => {
                UserValue::Floats(a.iter().map(flt).collect::<Option<_>>().ok_or_else(bad)?)
            }
            _ => return Err(bad()),
        };
        out.insert(name.clone(), uv);
    }
    for p in declared {
        if !out.contains_key(&p.name) {
            return Err((
                format!("params.user.{}", p.name),
                format!("missing value of user parameter `{}`", p.name),
                format!("add `{} = ...` under [params.user]", p.name),
            ));
        }
    }
    Ok(out)
}

/// Spec-file view of a catalog entry, with documented default runtime parameters (so that
/// `attnforge check <catalog name>` has something to run). The two catalog user functions
/// (given as CUDA bodies) get hand-written Rust twins here.
pub fn from_catalog(spec: KernelSpec) -> SpecFile {
    let mut user = BTreeMap::new();
    let seq = default_seq();
    let mask_params = MaskParams::defaults_for(&spec.mask, seq);
    if let Mask::Predicate(_) = &spec.mask {
        user.insert("stride".into(), UserValue::Int(3));
    }
    let heads_q = if spec.gqa { 4 } else { 2 };
    if matches!(spec.score, ScoreMod::User(_)) {
        user.insert(
            "bias".into(),
            UserValue::Floats((0..heads_q).map(|h| 0.25 * h as f32 - 0.3).collect()),
        );
        user.insert("decay".into(), UserValue::Float(0.05));
    }
    let doc = spec
        .mask
        .reads_doc()
        .then(|| DocSource::Segments(vec![20, 35, seq - 55]));
    // Block-sparse catalog entries: every block of the problem listed as full (dense), the
    // lists' simplest valid form (see variants.md section 10: equals full attention).
    let block_lists = matches!(spec.mask, Mask::BlockSparse { .. }).then(|| {
        let rows = seq.div_ceil(spec.sparse_block.q);
        let cols = seq.div_ceil(spec.sparse_block.k);
        let row: (Vec<i32>, Vec<i32>) = ((0..cols as i32).collect(), Vec::new());
        BlockLists::from_rows(1, 1, rows, cols, &vec![row; rows])
    });
    SpecFile {
        path: None,
        description: None,
        softcap: spec
            .score
            .param_of(ScoreParamKind::Scalar)
            .map(|p| p.default),
        spec,
        mask_params,
        alibi_slopes: None,
        doc,
        block_lists,
        user,
        host_mask: None,
        host_score: None,
        problem: Problem {
            batch: 1,
            heads_q,
            heads_kv: if heads_q == 4 { 1 } else { 2 },
            seq_q: seq,
            seq_k: seq,
            seed: 1,
        },
        tune: Tune {
            arch: Arch::Sm80,
            tile: None,
            space: Vec::new(),
        },
    }
}

/// Rust twins of the catalog's CUDA-body user functions (`dilated`, `headbias`), used when a
/// catalog entry (not a spec file) is run.
pub fn catalog_twins(sf: &SpecFile, rp: &mut RunParams) {
    if let Mask::Predicate(f) = &sf.spec.mask {
        if f.name == "dilated" {
            let stride = match sf.user.get("stride") {
                Some(UserValue::Int(s)) => i64::from(*s),
                _ => 1,
            };
            rp.host_mask = Some(Arc::new(move |_, _, q, kv| {
                kv <= q && (q - kv) % stride == 0
            }));
        }
    }
    if let ScoreMod::User(f) = &sf.spec.score {
        if f.name == "headbias" {
            let bias = match sf.user.get("bias") {
                Some(UserValue::Floats(b)) => b.clone(),
                _ => Vec::new(),
            };
            let decay = match sf.user.get("decay") {
                Some(UserValue::Float(d)) => *d,
                _ => 0.0,
            };
            rp.host_score = Some(Arc::new(move |s, _, h, q, kv| {
                // Same f32 arithmetic as the CUDA body.
                let dist = (q - kv).unsigned_abs() as f32;
                f64::from(s as f32 + bias[h] - decay * dist)
            }));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Data-dependent families (variants.md sections 6-9): `family = "landmark" | "hax" | "cca"
// | "topk" | "lse_merge"`.
// ---------------------------------------------------------------------------------------

/// Every error of a spec file at once (data-dependent families report all of them; a static
/// spec reports its first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecFileErrors(pub Vec<SpecFileError>);

impl fmt::Display for SpecFileErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.len() > 1 {
            writeln!(f, "{} errors:", self.0.len())?;
        }
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SpecFileErrors {}

impl From<SpecFileError> for SpecFileErrors {
    fn from(e: SpecFileError) -> Self {
        SpecFileErrors(vec![e])
    }
}

/// A spec file of either kind: a static kernel ([`SpecFile`]) or a data-dependent
/// pipeline ([`DynSpecFile`]). A file with a top-level `family` key is dynamic.
#[derive(Clone, Debug)]
pub enum AnySpecFile {
    /// Dense, masks, block-sparse, LM-Infinite: one `KernelSpec`.
    Static(Box<SpecFile>),
    /// Landmark, HAX, CCA, top-k, lse merge: one `DynamicSpec`.
    Dynamic(DynSpecFile),
}

impl AnySpecFile {
    /// Read and parse a spec file of either kind.
    pub fn load(path: &Path) -> Result<AnySpecFile, SpecFileErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| SpecFileError {
            file: path.display().to_string(),
            field: "-".into(),
            message: format!("cannot read the spec file: {e}"),
            fix: "give the path of an existing TOML spec file or a catalog name (`attnforge list`)"
                .into(),
        })?;
        Self::parse(&text, Some(path))
    }

    /// Parse spec-file text of either kind.
    pub fn parse(text: &str, path: Option<&Path>) -> Result<AnySpecFile, SpecFileErrors> {
        if is_dynamic_text(text) {
            DynSpecFile::parse(text, path).map(AnySpecFile::Dynamic)
        } else {
            SpecFile::parse(text, path)
                .map(|s| AnySpecFile::Static(Box::new(s)))
                .map_err(SpecFileErrors::from)
        }
    }

    /// The canonical name (the CUDA symbol of a static kernel without its tile suffix; the
    /// pipeline name of a dynamic spec).
    pub fn canonical_name(&self) -> String {
        match self {
            AnySpecFile::Static(s) => s.spec.canonical_name(),
            AnySpecFile::Dynamic(d) => d.spec.canonical_name(),
        }
    }
}

/// Whether spec-file text declares a data-dependent family (a top-level `family` key).
fn is_dynamic_text(text: &str) -> bool {
    toml::from_str::<toml::Table>(text).is_ok_and(|t| t.contains_key("family"))
}

mod dynamic;
pub use dynamic::{dyn_from_catalog, DynSpecFile, DYNAMIC_FAMILIES};
