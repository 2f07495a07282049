//! Spec files of the data-dependent families (`family = "landmark" | "hax" | ...`).

use attnforge_runtime::codegen::dynamic::{family, Family, FamilyParam, FAMILIES};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use attnforge_reference::Sharing;
use attnforge_runtime::codegen::dynamic::{validate_dynamic, DynamicSpec, LandmarkMode};
use attnforge_runtime::codegen::spec::{DType, HeadDim};
use attnforge_runtime::codegen::tile::Arch;
use serde::Deserialize;

use super::load::problem_limits;
use super::{default_seq, AnySpecFile, Problem, SpecFileError, SpecFileErrors};

/// The dynamic family names of `family = ".."`.
pub const DYNAMIC_FAMILIES: &str = "landmark, hax, cca, topk, recycled, lse_merge, longheads";

/// A parsed, validated spec file of a data-dependent family ([`DynamicSpec`]).
#[derive(Clone, Debug, PartialEq)]
pub struct DynSpecFile {
    /// Where it came from (`None` for catalog entries and text).
    pub path: Option<PathBuf>,
    /// Free text.
    pub description: Option<String>,
    /// The pipeline spec (validated by [`validate_dynamic`]).
    pub spec: DynamicSpec,
    /// Score scale (`None`: `1/sqrt(D)`, HAX: 1).
    pub scale: Option<f32>,
    /// The `[problem]` table (random test problem of `attnforge check`).
    pub problem: Problem,
    /// HAX: head sharing of the hyperplanes in the test problem.
    pub hyperplane_sharing: Sharing,
    /// HAX: head sharing of the key-selection scores in the test problem.
    pub ks_sharing: Sharing,
    /// `[tune] arch`: emit's ptxas target.
    pub arch: Arch,
}

/// The top-level keys of a dynamic spec file (the fields of [`RawDyn`]).
const TOP_KEYS: [&str; 9] = [
    "description",
    "family",
    "mode",
    "dtype",
    "head_dim",
    "scale",
    "params",
    "problem",
    "tune",
];

/// A value of the expected type, or what the file holds instead (reported with its field,
/// so that one bad value does not hide the other errors).
#[derive(Deserialize)]
#[serde(untagged)]
enum Typed<T> {
    Ok(T),
    Bad(toml::Value),
}

/// The file as deserialized: every field typed where possible, unknown keys collected.
#[derive(Deserialize)]
struct RawDyn {
    description: Option<Typed<String>>,
    family: Option<Typed<String>>,
    mode: Option<Typed<String>>,
    dtype: Option<Typed<String>>,
    head_dim: Option<Typed<i64>>,
    scale: Option<Typed<f64>>,
    params: Option<Typed<BTreeMap<String, Typed<i64>>>>,
    problem: Option<Typed<RawProblem>>,
    tune: Option<Typed<RawTune>>,
    #[serde(flatten)]
    unknown: BTreeMap<String, toml::Value>,
}

#[derive(Deserialize)]
struct RawProblem {
    batch: Option<Typed<i64>>,
    heads_q: Option<Typed<i64>>,
    heads_kv: Option<Typed<i64>>,
    seq_q: Option<Typed<i64>>,
    seq_k: Option<Typed<i64>>,
    seed: Option<Typed<i64>>,
    hyperplane_sharing: Option<Typed<String>>,
    ks_sharing: Option<Typed<String>>,
    #[serde(flatten)]
    unknown: BTreeMap<String, toml::Value>,
}

#[derive(Deserialize)]
struct RawTune {
    arch: Option<Typed<String>>,
    tile: Option<toml::Value>,
    space: Option<toml::Value>,
    #[serde(flatten)]
    unknown: BTreeMap<String, toml::Value>,
}

fn toml_type(v: &toml::Value) -> &'static str {
    match v {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a datetime",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    }
}

fn sharing_name(s: &str) -> Option<Sharing> {
    Some(match s {
        "shared" => Sharing::Shared,
        "per_query_head" => Sharing::PerQueryHead,
        "per_kv_head" => Sharing::PerKvHead,
        _ => return None,
    })
}

/// Every error of one file, each with its field and fix.
struct Errs {
    file: String,
    list: Vec<SpecFileError>,
}

impl Errs {
    fn push(&mut self, field: &str, message: impl Into<String>, fix: impl Into<String>) {
        self.list.push(SpecFileError {
            file: self.file.clone(),
            field: field.into(),
            message: message.into(),
            fix: fix.into(),
        });
    }

    /// A string field: its value, or an error when it holds another type.
    fn string(&mut self, key: &str, v: Option<Typed<String>>) -> Option<String> {
        match v? {
            Typed::Ok(s) => Some(s),
            Typed::Bad(v) => {
                let found = format!("expected a string, found {}", toml_type(&v));
                self.push(key, found, format!("write `{key} = \"..\"`"));
                None
            }
        }
    }
}

/// The parts of a file that become the [`DynamicSpec`].
struct Head {
    family: Option<&'static Family>,
    /// The mode as written (validated), `None` when absent or invalid.
    mode: Option<String>,
    dtype: Option<DType>,
    head_dim: Option<HeadDim>,
}

fn unknown_top_keys(unknown: &BTreeMap<String, toml::Value>, e: &mut Errs) {
    for k in unknown.keys() {
        let fix = match k.as_str() {
            "mask" | "score" | "gqa" | "sparse_block" => format!(
                "remove it: `{k}` belongs to static kernel specs (no `family` key); dynamic families take {}",
                TOP_KEYS.join(", ")
            ),
            "split" => "write `mode = \"split\"` (topk)".to_string(),
            _ => format!("remove it; top-level keys: {}", TOP_KEYS.join(", ")),
        };
        e.push(k, format!("unknown field `{k}`"), fix);
    }
}

fn family_of(v: Option<Typed<String>>, e: &mut Errs) -> Option<&'static Family> {
    let missing = v.is_none();
    let tag = e.string("family", v);
    match tag.as_deref() {
        Some(t) => {
            let f = family(t);
            if f.is_none() {
                e.push(
                    "family",
                    format!("unknown family `{t}`"),
                    format!(
                        "use one of: {DYNAMIC_FAMILIES} (static kernels omit `family` and name a `mask`)"
                    ),
                );
            }
            f
        }
        None if missing => {
            e.push(
                "family",
                "missing field `family`",
                format!("add `family = \"..\"` ({DYNAMIC_FAMILIES})"),
            );
            None
        }
        None => None,
    }
}

/// `landmark train|retrieval, topk fused|split`.
fn modes_overview() -> String {
    FAMILIES
        .iter()
        .filter(|f| !f.modes.is_empty())
        .map(|f| {
            let names: Vec<_> = f.modes.iter().map(|m| m.name).collect();
            format!("{} {}", f.tag, names.join("|"))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn mode_of(f: Option<&Family>, v: Option<Typed<String>>, e: &mut Errs) -> Option<String> {
    let missing = v.is_none();
    let mode = e.string("mode", v);
    let f = f?;
    match mode {
        Some(_) if f.modes.is_empty() => {
            e.push(
                "mode",
                format!("family `{}` has no modes", f.tag),
                format!("remove it (modes: {})", modes_overview()),
            );
            None
        }
        Some(m) if f.mode(&m).is_some() => Some(m),
        Some(m) => {
            e.push(
                "mode",
                format!("unknown {} mode `{m}`", f.tag),
                format!("use mode = {}", f.modes_text()),
            );
            None
        }
        None if missing && !f.modes.is_empty() && f.default_mode.is_none() => {
            let choices: Vec<_> = f
                .modes
                .iter()
                .map(|m| format!("`mode = \"{}\"`", m.name))
                .collect();
            e.push(
                "mode",
                format!("{} needs its mode", f.tag),
                format!("add {}", choices.join(" or ")),
            );
            None
        }
        // An absent (or mistyped, already reported) mode is the family's default; an
        // unknown name stays unknown.
        None => f.default_mode.map(str::to_owned),
    }
}

fn dtype_of(v: Option<Typed<String>>, e: &mut Errs) -> Option<DType> {
    let missing = v.is_none();
    match e.string("dtype", v).as_deref() {
        Some("f16") => Some(DType::F16),
        Some("bf16") => Some(DType::Bf16),
        Some("f32") => Some(DType::F32),
        Some(d) => {
            e.push(
                "dtype",
                format!("unknown dtype `{d}`"),
                "use \"f16\", \"bf16\" or \"f32\"",
            );
            None
        }
        None => {
            if missing {
                e.push(
                    "dtype",
                    "missing field `dtype`",
                    "add `dtype = \"f16\"` (f16 | bf16 | f32)",
                );
            }
            None
        }
    }
}

fn head_dim_of(v: Option<Typed<i64>>, e: &mut Errs) -> Option<HeadDim> {
    match v {
        Some(Typed::Ok(64)) => Some(HeadDim::D64),
        Some(Typed::Ok(128)) => Some(HeadDim::D128),
        Some(Typed::Ok(256)) => Some(HeadDim::D256),
        Some(Typed::Ok(d)) => {
            let m = format!("unsupported head dimension {d}");
            e.push("head_dim", m, "use 64, 128 or 256");
            None
        }
        Some(Typed::Bad(v)) => {
            e.push(
                "head_dim",
                format!("expected an integer, found {}", toml_type(&v)),
                "write `head_dim = 64` (64 | 128 | 256)",
            );
            None
        }
        None => {
            e.push(
                "head_dim",
                "missing field `head_dim`",
                "add `head_dim = 64` (64 | 128 | 256)",
            );
            None
        }
    }
}

fn scale_of(v: Option<Typed<f64>>, f: Option<&Family>, e: &mut Errs) -> Option<f32> {
    match v? {
        Typed::Ok(x) if x.is_finite() && x > 0.0 => {
            if f.is_some_and(|f| f.tag == "lse_merge") {
                e.push("scale", "lse_merge computes no scores", "remove it");
            }
            Some(x as f32)
        }
        Typed::Ok(x) => {
            e.push(
                "scale",
                format!("scale {x} is not positive and finite"),
                "give a positive scale or omit it (default 1/sqrt(head_dim); HAX: 1)",
            );
            None
        }
        Typed::Bad(v) => {
            let m = format!("expected a number, found {}", toml_type(&v));
            e.push("scale", m, "write `scale = 0.125`");
            None
        }
    }
}

/// The fix of a key in `[params]` that the family (in this mode) does not take.
fn not_a_param_fix(f: &Family, mode: Option<&str>, wanted: &[&FamilyParam], k: &str) -> String {
    let other_mode = f
        .modes
        .iter()
        .find(|m| Some(m.name) != mode && m.params.iter().any(|p| p.name == k));
    if let (Some(other), Some(cur)) = (other_mode, mode.and_then(|m| f.mode(m))) {
        return format!(
            "remove it (mode {}: {}) or set mode = \"{}\"",
            cur.name, cur.about, other.name
        );
    }
    if wanted.is_empty() {
        return format!("remove it: `{}` takes no parameters", f.tag);
    }
    let names: Vec<_> = wanted.iter().map(|p| p.name).collect();
    // `mode` is `None` when the file's mode was invalid (its own error).
    let in_mode = mode.map_or(String::new(), |m| format!(" (mode {m})"));
    format!("remove it; `{}`{in_mode} takes {}", f.tag, names.join(", "))
}

/// The `[params]` values by name; names whose value was reported as bad are left out and
/// listed in `bad` (their range is not checked again).
struct Params {
    values: BTreeMap<&'static str, usize>,
    bad: Vec<&'static str>,
}

fn params_of(h: &Head, v: Option<Typed<BTreeMap<String, Typed<i64>>>>, e: &mut Errs) -> Params {
    let mut out = Params {
        values: BTreeMap::new(),
        bad: Vec::new(),
    };
    let table = match v {
        None => BTreeMap::new(),
        Some(Typed::Ok(t)) => t,
        Some(Typed::Bad(v)) => {
            e.push(
                "params",
                format!("expected a table, found {}", toml_type(&v)),
                "write the parameters under a `[params]` table",
            );
            BTreeMap::new()
        }
    };
    let Some(f) = h.family else {
        return out;
    };
    if h.mode.is_none() && !f.modes.is_empty() && f.default_mode.is_none() {
        return out; // the missing or unknown mode is the error
    }
    let wanted = f.params_of(h.mode.as_deref());
    for (k, v) in table {
        let field = format!("params.{k}");
        let Some(p) = wanted.iter().find(|p| p.name == k) else {
            let fix = not_a_param_fix(f, h.mode.as_deref(), &wanted, &k);
            let m = format!("`{k}` is not a parameter of family `{}`", f.tag);
            e.push(&field, m, fix);
            continue;
        };
        let example = p.missing_fix().trim_start_matches("add ").to_string();
        match v {
            // An optional parameter (default below its range: absent is the family's rule)
            // given below its range would read as absent.
            Typed::Ok(i) if p.default < p.min && i < p.min as i64 => {
                out.bad.push(p.name);
                e.push(
                    &field,
                    format!("{i} is outside {}..={}", p.min, p.max),
                    p.range_fix,
                );
            }
            Typed::Ok(i) if i >= 0 => {
                out.values
                    .insert(p.name, usize::try_from(i).unwrap_or(usize::MAX));
            }
            Typed::Ok(i) => {
                out.bad.push(p.name);
                let fix = format!("give a non-negative integer, e.g. {example}");
                e.push(&field, format!("{i} is negative"), fix);
            }
            Typed::Bad(v) => {
                out.bad.push(p.name);
                let m = format!("expected an integer, found {}", toml_type(&v));
                e.push(&field, m, format!("write an integer, e.g. {example}"));
            }
        }
    }
    for p in wanted {
        if p.default < p.min {
            continue; // optional: absent is the family's default rule
        }
        if !out.values.contains_key(p.name) && !out.bad.contains(&p.name) {
            out.bad.push(p.name);
            let m = format!("family `{}` needs `{}`", f.tag, p.name);
            e.push(
                &format!("params.{}", p.name),
                m,
                format!("{} to [params]", p.missing_fix()),
            );
        }
    }
    out
}

/// One `[problem]` size: a positive integer.
fn positive(key: &str, v: Option<Typed<i64>>, slot: &mut usize, e: &mut Errs) {
    match v {
        None => {}
        Some(Typed::Ok(i)) if i >= 1 => *slot = usize::try_from(i).unwrap_or(usize::MAX),
        Some(Typed::Ok(i)) => e.push(
            &format!("problem.{key}"),
            format!("expected a positive integer, found {i}"),
            format!("write `{key} = <integer >= 1>`"),
        ),
        Some(Typed::Bad(v)) => e.push(
            &format!("problem.{key}"),
            format!("expected a positive integer, found {v}"),
            format!("write `{key} = <integer >= 1>`"),
        ),
    }
}

/// The test problem and HAX's head sharing.
struct ProblemPart {
    problem: Problem,
    hyperplane_sharing: Sharing,
    ks_sharing: Sharing,
}

fn sharing(key: &str, v: Option<Typed<String>>, is_hax: bool, e: &mut Errs) -> Option<Sharing> {
    let v = v?;
    let field = format!("problem.{key}");
    if !is_hax {
        e.push(
            &field,
            format!("`{key}` is only used by family `hax`"),
            "remove it",
        );
        return None;
    }
    let found = match v {
        Typed::Ok(s) => match sharing_name(&s) {
            Some(sh) => return Some(sh),
            None => toml::Value::String(s),
        },
        Typed::Bad(b) => b,
    };
    e.push(
        &field,
        format!("expected \"shared\", \"per_query_head\" or \"per_kv_head\", found {found}"),
        format!("write `{key} = \"shared\"`"),
    );
    None
}

fn problem_of(v: Option<Typed<RawProblem>>, h: &Head, e: &mut Errs) -> ProblemPart {
    let mut out = ProblemPart {
        problem: Problem {
            batch: 1,
            heads_q: 2,
            heads_kv: 0,
            seq_q: default_seq(),
            seq_k: default_seq(),
            seed: 1,
        },
        hyperplane_sharing: Sharing::Shared,
        ks_sharing: Sharing::Shared,
    };
    let is_hax = h.family.is_some_and(|f| f.tag == "hax");
    match v {
        None => {}
        Some(Typed::Bad(v)) => e.push(
            "problem",
            format!("expected a table, found {}", toml_type(&v)),
            "write a `[problem]` table",
        ),
        Some(Typed::Ok(r)) => {
            let p = &mut out.problem;
            positive("batch", r.batch, &mut p.batch, e);
            positive("heads_q", r.heads_q, &mut p.heads_q, e);
            positive("heads_kv", r.heads_kv, &mut p.heads_kv, e);
            positive("seq_q", r.seq_q, &mut p.seq_q, e);
            positive("seq_k", r.seq_k, &mut p.seq_k, e);
            match r.seed {
                None => {}
                Some(Typed::Ok(i)) if i >= 0 => p.seed = i as u64,
                Some(v) => {
                    let found = match v {
                        Typed::Ok(i) => i.to_string(),
                        Typed::Bad(b) => b.to_string(),
                    };
                    e.push(
                        "problem.seed",
                        format!("expected a non-negative integer, found {found}"),
                        "write `seed = 1`",
                    );
                }
            }
            if let Some(s) = sharing("hyperplane_sharing", r.hyperplane_sharing, is_hax, e) {
                out.hyperplane_sharing = s;
            }
            if let Some(s) = sharing("ks_sharing", r.ks_sharing, is_hax, e) {
                out.ks_sharing = s;
            }
            let also = if is_hax {
                ", hyperplane_sharing, ks_sharing"
            } else {
                ""
            };
            for k in r.unknown.keys() {
                e.push(
                    &format!("problem.{k}"),
                    format!("unknown field `{k}`"),
                    format!("remove it; [problem] takes batch, heads_q, heads_kv, seq_q, seq_k, seed{also}"),
                );
            }
        }
    }
    check_problem(&mut out.problem, h, e);
    out
}

/// Head counts, the hard size limits and the family's length rules.
fn check_problem(p: &mut Problem, h: &Head, e: &mut Errs) {
    if p.heads_kv == 0 {
        p.heads_kv = p.heads_q;
    }
    if !p.heads_q.is_multiple_of(p.heads_kv) {
        e.push(
            "problem.heads_kv",
            format!(
                "heads_q = {} is not a multiple of heads_kv = {}",
                p.heads_q, p.heads_kv
            ),
            "pick heads_kv dividing heads_q (GQA; 1 for MQA)",
        );
    }
    if let Err((f, m, fix)) = problem_limits(p, h.head_dim.map_or(256, HeadDim::get)) {
        e.push(&f, m, fix);
    }
    match h.family.map(|f| f.tag) {
        Some(f @ ("hax" | "cca")) if p.seq_q != p.seq_k => e.push(
            "problem.seq_q",
            format!(
                "seq_q = {} but seq_k = {}: `{f}` needs Sq == Sk",
                p.seq_q, p.seq_k
            ),
            "make seq_q equal to seq_k",
        ),
        Some("landmark" | "topk" | "longheads") if p.seq_q > p.seq_k => e.push(
            "problem.seq_q",
            format!("seq_q = {} is larger than seq_k = {}", p.seq_q, p.seq_k),
            "use seq_q <= seq_k (queries are the last seq_q positions)",
        ),
        _ => {}
    }
}

fn tune_of(v: Option<Typed<RawTune>>, e: &mut Errs) -> Arch {
    let t = match v {
        None => return Arch::Sm80,
        Some(Typed::Bad(v)) => {
            e.push(
                "tune",
                format!("expected a table, found {}", toml_type(&v)),
                "write a `[tune]` table",
            );
            return Arch::Sm80;
        }
        Some(Typed::Ok(t)) => t,
    };
    let arch = match t.arch {
        None => Some(Arch::Sm80),
        Some(v) => {
            let v = match v {
                Typed::Ok(s) => toml::Value::String(s),
                Typed::Bad(b) => b,
            };
            let arch = Arch::ALL
                .into_iter()
                .find(|a| v.as_str() == Some(a.sm_name()));
            if arch.is_none() {
                let m = format!("unknown architecture {v}");
                e.push("tune.arch", m, "use \"sm_80\" or \"sm_90\"");
            }
            arch
        }
    };
    for (k, present) in [("tile", t.tile.is_some()), ("space", t.space.is_some())] {
        if present {
            e.push(
                &format!("tune.{k}"),
                "dynamic pipelines have no tile configuration",
                "remove it: the launch geometry is fixed per stage (Stage::geometry)",
            );
        }
    }
    for k in t.unknown.keys() {
        e.push(
            &format!("tune.{k}"),
            format!("unknown field `{k}`"),
            "remove it; [tune] takes arch",
        );
    }
    arch.unwrap_or(Arch::Sm80)
}

/// The spec with placeholders where a value is missing or malformed (its error is already
/// recorded), range-checked by [`validate_dynamic`], the library's own check.
fn spec_of(h: &Head, p: &Params, e: &mut Errs) -> Option<DynamicSpec> {
    let f = h.family?;
    // dtype and head_dim do not change the parameter checks: placeholders when invalid.
    let spec = DynamicSpec::from_params(
        f,
        h.mode.as_deref(),
        h.dtype.unwrap_or(DType::F16),
        h.head_dim.unwrap_or(HeadDim::D64),
        // An absent optional parameter is passed as its table default (recycled's
        // `recycle_size`: 0, the 1/8-of-the-cache rule).
        |n| {
            let default = f.params.iter().find(|q| q.name == n && q.default < q.min);
            p.values
                .get(n)
                .copied()
                .unwrap_or(default.map_or(1, |q| q.default))
        },
    )?;
    if let Err(ves) = validate_dynamic(&spec) {
        for v in ves {
            let last = v.path.rsplit('.').next().unwrap_or(&v.path).to_string();
            if !p.bad.contains(&last.as_str()) {
                e.push(&format!("params.{last}"), v.message.clone(), v.fix.clone());
            }
        }
    }
    Some(spec)
}

impl DynSpecFile {
    /// Read and parse a dynamic-family spec file.
    pub fn load(path: &Path) -> Result<DynSpecFile, SpecFileErrors> {
        match AnySpecFile::load(path)? {
            AnySpecFile::Dynamic(d) => Ok(d),
            AnySpecFile::Static(_) => Err(SpecFileError {
                file: path.display().to_string(),
                field: "family".into(),
                message: "no `family` key: this is a static kernel spec".into(),
                fix: format!(
                    "add `family = \"..\"` ({DYNAMIC_FAMILIES}) or load it with SpecFile::load"
                ),
            }
            .into()),
        }
    }

    /// Parse dynamic-family spec text; every error at once, each with its field path and fix.
    /// The text is deserialized into typed fields; a value of the wrong type
    /// or out of range is reported with its field and the others are still checked.
    pub fn parse(text: &str, path: Option<&Path>) -> Result<DynSpecFile, SpecFileErrors> {
        let file = path.map_or("<input>".to_string(), |p| p.display().to_string());
        let raw: RawDyn = toml::from_str(text).map_err(|e| SpecFileError {
            file: file.clone(),
            field: "toml".into(),
            message: e.to_string().replace('\n', " ").trim().to_string(),
            fix: "see docs/spec-files.md for the fields and their types".into(),
        })?;
        let mut e = Errs {
            file,
            list: Vec::new(),
        };
        unknown_top_keys(&raw.unknown, &mut e);
        let description = e.string("description", raw.description);
        let family = family_of(raw.family, &mut e);
        let head = Head {
            family,
            mode: mode_of(family, raw.mode, &mut e),
            dtype: dtype_of(raw.dtype, &mut e),
            head_dim: head_dim_of(raw.head_dim, &mut e),
        };
        let scale = scale_of(raw.scale, family, &mut e);
        let params = params_of(&head, raw.params, &mut e);
        let problem = problem_of(raw.problem, &head, &mut e);
        let arch = tune_of(raw.tune, &mut e);
        let spec = spec_of(&head, &params, &mut e);
        match spec {
            Some(spec) if e.list.is_empty() && head.dtype.is_some() && head.head_dim.is_some() => {
                Ok(DynSpecFile {
                    path: path.map(Path::to_path_buf),
                    description,
                    spec,
                    scale,
                    problem: problem.problem,
                    hyperplane_sharing: problem.hyperplane_sharing,
                    ks_sharing: problem.ks_sharing,
                    arch,
                })
            }
            _ => Err(SpecFileErrors(e.list)),
        }
    }
}

/// Spec-file view of a dynamic catalog entry: the entry's own parameters (the papers'
/// defaults) and a test problem just large enough to exercise its selection (landmark:
/// more blocks than `top_k`; top-k: keys beyond sink + recent + k; CCA: pooled groups
/// before the window).
pub fn dyn_from_catalog(spec: DynamicSpec) -> DynSpecFile {
    let (heads_q, heads_kv, seq_q, seq_k) = match spec {
        DynamicSpec::Landmark { mem_freq, mode, .. } => {
            let blocks = match mode {
                LandmarkMode::Retrieval { top_k } => top_k + 2,
                LandmarkMode::Train => 3,
            };
            let sk = (mem_freq + 1) * blocks + mem_freq / 2;
            (2, 1, 48.min(sk), sk)
        }
        DynamicSpec::Hax { k_lsh, k_ks, .. } => {
            let s = 2 * (k_lsh + k_ks) + 32;
            (2, 1, s, s)
        }
        DynamicSpec::Cca { group, window, .. } => {
            let s = window + 3 * group + 5;
            (1, 1, s, s)
        }
        DynamicSpec::Topk {
            sink, recent, k, ..
        } => (2, 1, 4, sink + recent + 2 * k + 16),
        // 16 decode steps (a similarity check at 10) over 200 keys, GQA.
        DynamicSpec::Recycled { .. } => (4, 2, 16, 200),
        DynamicSpec::LseMerge { .. } => (2, 2, 16, 64),
        // Decoding rows (random summaries r) past B with 3 candidate chunks and a partial
        // own chunk; the prefill stages run in the extra problem (check_problems.rs).
        DynamicSpec::Longheads { chunk, begin, .. } => (2, 1, 3, begin + 3 * chunk + chunk / 2),
    };
    DynSpecFile {
        path: None,
        description: None,
        spec,
        scale: None,
        problem: Problem {
            batch: 1,
            heads_q,
            heads_kv,
            seq_q,
            seq_k,
            seed: 1,
        },
        hyperplane_sharing: Sharing::Shared,
        ks_sharing: Sharing::PerKvHead,
        arch: Arch::Sm80,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn family_list_is_the_tables() {
        assert_eq!(
            DYNAMIC_FAMILIES,
            attnforge_runtime::codegen::dynamic::family_tags()
        );
    }
}
