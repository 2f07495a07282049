//! Spec files of the data-dependent families (`family = "landmark" | "hax" | ...`).

use super::*;

/// The dynamic family names of `family = ".."`.
pub const DYNAMIC_FAMILIES: &str = "landmark, hax, cca, topk, lse_merge";

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

/// `[params]` keys of a family, with the fix text of a missing one.
fn family_params(family: &str, mode: Option<&str>) -> &'static [(&'static str, &'static str)] {
    match (family, mode) {
        ("landmark", Some("retrieval")) => &[
            (
                "mem_freq",
                "add `mem_freq = 63` (block size mem_freq + 1; the paper uses 63)",
            ),
            (
                "top_k",
                "add `top_k = 4` (blocks retrieved per query token and head)",
            ),
        ],
        ("landmark", _) => &[(
            "mem_freq",
            "add `mem_freq = 63` (block size mem_freq + 1; the paper uses 63)",
        )],
        ("hax", _) => &[
            (
                "k_lsh",
                "add `k_lsh = 32` (LSH budget; official default 32)",
            ),
            (
                "k_ks",
                "add `k_ks = 32` (key-selection budget; official default 32)",
            ),
            (
                "hash_bits",
                "add `hash_bits = 8` (hyperplanes, 1..=12; official default 8)",
            ),
        ],
        ("cca", _) => &[
            ("group", "add `group = 16` (group size g; default 16)"),
            (
                "window",
                "add `window = 1024` (local window w; default 1024)",
            ),
        ],
        ("topk", _) => &[
            (
                "sink",
                "add `sink = 4` (leading keys always attended, S_start)",
            ),
            (
                "recent",
                "add `recent = 64` (keys ending at the query, S_end)",
            ),
            (
                "k",
                "add `k = 64` (retrieved keys per query head and row, 1..=1024)",
            ),
        ],
        _ => &[],
    }
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
    pub fn parse(text: &str, path: Option<&Path>) -> Result<DynSpecFile, SpecFileErrors> {
        let file = path.map_or("<input>".to_string(), |p| p.display().to_string());
        let mut errs: Vec<SpecFileError> = Vec::new();
        let mut push = |field: &str, message: String, fix: String| {
            errs.push(SpecFileError {
                file: file.clone(),
                field: field.into(),
                message,
                fix,
            })
        };
        let table: toml::Table = toml::from_str(text).map_err(|e| SpecFileError {
            file: file.clone(),
            field: "toml".into(),
            message: e.to_string().replace('\n', " ").trim().to_string(),
            fix: "see docs/spec-files.md for the fields and their types".into(),
        })?;
        // Top-level keys.
        for k in table.keys() {
            if !TOP_KEYS.contains(&k.as_str()) {
                let fix = match k.as_str() {
                    "mask" | "score" | "gqa" | "sparse_block" => format!(
                        "remove it: `{k}` belongs to static kernel specs (no `family` key); dynamic families take {}",
                        TOP_KEYS.join(", ")
                    ),
                    "split" => "write `mode = \"split\"` (topk)".to_string(),
                    _ => format!("remove it; top-level keys: {}", TOP_KEYS.join(", ")),
                };
                push(k, format!("unknown field `{k}`"), fix);
            }
        }
        let get_str = |key: &str, push: &mut dyn FnMut(&str, String, String)| -> Option<String> {
            match table.get(key) {
                None => None,
                Some(toml::Value::String(s)) => Some(s.clone()),
                Some(v) => {
                    push(
                        key,
                        format!("expected a string, found {}", toml_type(v)),
                        format!("write `{key} = \"..\"`"),
                    );
                    None
                }
            }
        };
        let description = get_str("description", &mut push);
        // family
        let family = get_str("family", &mut push);
        let family = match family.as_deref() {
            Some(f @ ("landmark" | "hax" | "cca" | "topk" | "lse_merge")) => Some(f.to_string()),
            Some(f) => {
                push(
                    "family",
                    format!("unknown family `{f}`"),
                    format!(
                        "use one of: {DYNAMIC_FAMILIES} (static kernels omit `family` and name a `mask`)"
                    ),
                );
                None
            }
            None => {
                if !table.contains_key("family") {
                    push(
                        "family",
                        "missing field `family`".into(),
                        format!("add `family = \"..\"` ({DYNAMIC_FAMILIES})"),
                    );
                }
                None
            }
        };
        // mode
        let mode = get_str("mode", &mut push);
        let mode: Option<String> = match (family.as_deref(), mode.as_deref()) {
            (Some("landmark"), Some(m @ ("train" | "retrieval"))) => Some(m.into()),
            (Some("landmark"), Some(m)) => {
                push(
                    "mode",
                    format!("unknown landmark mode `{m}`"),
                    "use mode = \"train\" (grouped softmax over every earlier block) or \"retrieval\" (top_k blocks)".into(),
                );
                None
            }
            (Some("landmark"), None) => {
                if !table.contains_key("mode") {
                    push(
                        "mode",
                        "landmark needs its mode".into(),
                        "add `mode = \"train\"` or `mode = \"retrieval\"`".into(),
                    );
                }
                None
            }
            (Some("topk"), Some(m @ ("fused" | "split"))) => Some(m.into()),
            (Some("topk"), Some(m)) => {
                push(
                    "mode",
                    format!("unknown topk mode `{m}`"),
                    "use mode = \"fused\" (one attention pass, the default) or \"split\" (two partial passes + lse merge)".into(),
                );
                None
            }
            (Some("topk"), None) => Some("fused".into()),
            (Some(f), Some(_)) => {
                push(
                    "mode",
                    format!("family `{f}` has no modes"),
                    "remove it (modes: landmark train|retrieval, topk fused|split)".into(),
                );
                None
            }
            _ => None,
        };
        // dtype
        let dtype = match get_str("dtype", &mut push).as_deref() {
            Some("f16") => Some(DType::F16),
            Some("bf16") => Some(DType::Bf16),
            Some("f32") => Some(DType::F32),
            Some(d) => {
                push(
                    "dtype",
                    format!("unknown dtype `{d}`"),
                    "use \"f16\", \"bf16\" or \"f32\"".into(),
                );
                None
            }
            None => {
                if !table.contains_key("dtype") {
                    push(
                        "dtype",
                        "missing field `dtype`".into(),
                        "add `dtype = \"f16\"` (f16 | bf16 | f32)".into(),
                    );
                }
                None
            }
        };
        // head_dim
        let head_dim = match table.get("head_dim") {
            Some(toml::Value::Integer(64)) => Some(HeadDim::D64),
            Some(toml::Value::Integer(128)) => Some(HeadDim::D128),
            Some(toml::Value::Integer(256)) => Some(HeadDim::D256),
            Some(toml::Value::Integer(d)) => {
                push(
                    "head_dim",
                    format!("unsupported head dimension {d}"),
                    "use 64, 128 or 256".into(),
                );
                None
            }
            Some(v) => {
                push(
                    "head_dim",
                    format!("expected an integer, found {}", toml_type(v)),
                    "write `head_dim = 64` (64 | 128 | 256)".into(),
                );
                None
            }
            None => {
                push(
                    "head_dim",
                    "missing field `head_dim`".into(),
                    "add `head_dim = 64` (64 | 128 | 256)".into(),
                );
                None
            }
        };
        // scale
        let scale = match table.get("scale") {
            None => None,
            Some(v) => {
                let x = match v {
                    toml::Value::Float(f) => Some(*f),
                    toml::Value::Integer(i) => Some(*i as f64),
                    _ => None,
                };
                match x {
                    Some(x) if x.is_finite() && x > 0.0 => {
                        if family.as_deref() == Some("lse_merge") {
                            push(
                                "scale",
                                "lse_merge computes no scores".into(),
                                "remove it".into(),
                            );
                        }
                        Some(x as f32)
                    }
                    Some(x) => {
                        push(
                            "scale",
                            format!("scale {x} is not positive and finite"),
                            "give a positive scale or omit it (default 1/sqrt(head_dim); HAX: 1)"
                                .into(),
                        );
                        None
                    }
                    None => {
                        push(
                            "scale",
                            format!("expected a number, found {}", toml_type(v)),
                            "write `scale = 0.125`".into(),
                        );
                        None
                    }
                }
            }
        };
        // [params]
        let empty = toml::Table::new();
        let params = match table.get("params") {
            None => &empty,
            Some(toml::Value::Table(t)) => t,
            Some(v) => {
                push(
                    "params",
                    format!("expected a table, found {}", toml_type(v)),
                    "write the parameters under a `[params]` table".into(),
                );
                &empty
            }
        };
        let wanted = family
            .as_deref()
            .map_or(&[][..], |f| family_params(f, mode.as_deref()));
        let mut vals: BTreeMap<&str, usize> = BTreeMap::new();
        let mut bad: Vec<String> = Vec::new();
        if family.is_some() && (family.as_deref() != Some("landmark") || mode.is_some()) {
            for (k, v) in params {
                let field = format!("params.{k}");
                if !wanted.iter().any(|(w, _)| w == k) {
                    let fam = family.as_deref().unwrap_or("");
                    let fix = if fam == "landmark" && k == "top_k" {
                        "remove it (train mode attends every earlier block) or set mode = \"retrieval\"".to_string()
                    } else if wanted.is_empty() {
                        format!("remove it: `{fam}` takes no parameters")
                    } else {
                        format!(
                            "remove it; `{fam}`{} takes {}",
                            mode.as_deref()
                                .map_or(String::new(), |m| format!(" (mode {m})")),
                            wanted
                                .iter()
                                .map(|(w, _)| *w)
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    };
                    push(
                        &field,
                        format!("`{k}` is not a parameter of family `{fam}`"),
                        fix,
                    );
                    continue;
                }
                let name = wanted.iter().find(|(w, _)| w == k).map_or("", |(w, _)| w);
                match v {
                    toml::Value::Integer(i) if *i >= 0 => {
                        vals.insert(name, usize::try_from(*i).unwrap_or(usize::MAX));
                    }
                    toml::Value::Integer(i) => {
                        bad.push(name.to_string());
                        push(
                            &field,
                            format!("{i} is negative"),
                            format!(
                                "give a non-negative integer, e.g. {}",
                                wanted_fix(wanted, name)
                            ),
                        );
                    }
                    v => {
                        bad.push(name.to_string());
                        push(
                            &field,
                            format!("expected an integer, found {}", toml_type(v)),
                            format!("write an integer, e.g. {}", wanted_fix(wanted, name)),
                        );
                    }
                }
            }
            for (w, fix) in wanted {
                if !vals.contains_key(w) && !bad.iter().any(|b| b == w) {
                    bad.push(w.to_string());
                    push(
                        &format!("params.{w}"),
                        format!("family `{}` needs `{w}`", family.as_deref().unwrap_or("")),
                        format!("{fix} to [params]"),
                    );
                }
            }
        }
        // [problem]
        let mut problem = Problem {
            batch: 1,
            heads_q: 2,
            heads_kv: 0,
            seq_q: default_seq(),
            seq_k: default_seq(),
            seed: 1,
        };
        let mut hyperplane_sharing = Sharing::Shared;
        let mut ks_sharing = Sharing::Shared;
        match table.get("problem") {
            None => {}
            Some(toml::Value::Table(t)) => {
                let is_hax = family.as_deref() == Some("hax");
                for (k, v) in t {
                    let field = format!("problem.{k}");
                    let slot: Option<&mut usize> = match k.as_str() {
                        "batch" => Some(&mut problem.batch),
                        "heads_q" => Some(&mut problem.heads_q),
                        "heads_kv" => Some(&mut problem.heads_kv),
                        "seq_q" => Some(&mut problem.seq_q),
                        "seq_k" => Some(&mut problem.seq_k),
                        _ => None,
                    };
                    if let Some(slot) = slot {
                        match v {
                            toml::Value::Integer(i) if *i >= 1 => {
                                *slot = usize::try_from(*i).unwrap_or(usize::MAX)
                            }
                            _ => push(
                                &field,
                                format!("expected a positive integer, found {v}"),
                                format!("write `{k} = <integer >= 1>`"),
                            ),
                        }
                        continue;
                    }
                    match (k.as_str(), v) {
                        ("seed", toml::Value::Integer(i)) if *i >= 0 => problem.seed = *i as u64,
                        ("seed", v) => push(
                            &field,
                            format!("expected a non-negative integer, found {v}"),
                            "write `seed = 1`".into(),
                        ),
                        ("hyperplane_sharing" | "ks_sharing", toml::Value::String(s))
                            if is_hax && sharing_name(s).is_some() =>
                        {
                            let sh = sharing_name(s).unwrap_or_default();
                            if k == "ks_sharing" {
                                ks_sharing = sh;
                            } else {
                                hyperplane_sharing = sh;
                            }
                        }
                        ("hyperplane_sharing" | "ks_sharing", v) if is_hax => push(
                            &field,
                            format!("expected \"shared\", \"per_query_head\" or \"per_kv_head\", found {v}"),
                            format!("write `{k} = \"shared\"`"),
                        ),
                        ("hyperplane_sharing" | "ks_sharing", _) => push(
                            &field,
                            format!("`{k}` is only used by family `hax`"),
                            "remove it".into(),
                        ),
                        _ => push(
                            &field,
                            format!("unknown field `{k}`"),
                            format!(
                                "remove it; [problem] takes batch, heads_q, heads_kv, seq_q, seq_k, seed{}",
                                if is_hax { ", hyperplane_sharing, ks_sharing" } else { "" }
                            ),
                        ),
                    }
                }
            }
            Some(v) => push(
                "problem",
                format!("expected a table, found {}", toml_type(v)),
                "write a `[problem]` table".into(),
            ),
        }
        if problem.heads_kv == 0 {
            problem.heads_kv = problem.heads_q;
        }
        if !problem.heads_q.is_multiple_of(problem.heads_kv) {
            push(
                "problem.heads_kv",
                format!(
                    "heads_q = {} is not a multiple of heads_kv = {}",
                    problem.heads_q, problem.heads_kv
                ),
                "pick heads_kv dividing heads_q (GQA; 1 for MQA)".into(),
            );
        }
        if let Err((f, m, fix)) = problem_limits(&problem, head_dim.map_or(256, HeadDim::get)) {
            push(&f, m, fix);
        }
        match family.as_deref() {
            Some("hax" | "cca") if problem.seq_q != problem.seq_k => push(
                "problem.seq_q",
                format!(
                    "seq_q = {} but seq_k = {}: `{}` needs Sq == Sk",
                    problem.seq_q,
                    problem.seq_k,
                    family.as_deref().unwrap_or("")
                ),
                "make seq_q equal to seq_k".into(),
            ),
            Some("landmark" | "topk") if problem.seq_q > problem.seq_k => push(
                "problem.seq_q",
                format!(
                    "seq_q = {} is larger than seq_k = {}",
                    problem.seq_q, problem.seq_k
                ),
                "use seq_q <= seq_k (queries are the last seq_q positions)".into(),
            ),
            _ => {}
        }
        // [tune]
        let mut arch = Arch::Sm80;
        match table.get("tune") {
            None => {}
            Some(toml::Value::Table(t)) => {
                for (k, v) in t {
                    match (k.as_str(), v) {
                        ("arch", toml::Value::String(s)) if s == "sm_80" => arch = Arch::Sm80,
                        ("arch", toml::Value::String(s)) if s == "sm_90" => arch = Arch::Sm90,
                        ("arch", v) => push(
                            "tune.arch",
                            format!("unknown architecture {v}"),
                            "use \"sm_80\" or \"sm_90\"".into(),
                        ),
                        ("tile" | "space", _) => push(
                            &format!("tune.{k}"),
                            "dynamic pipelines have no tile configuration".into(),
                            "remove it: the launch geometry is fixed per stage (Stage::geometry)"
                                .into(),
                        ),
                        _ => push(
                            &format!("tune.{k}"),
                            format!("unknown field `{k}`"),
                            "remove it; [tune] takes arch".into(),
                        ),
                    }
                }
            }
            Some(v) => push(
                "tune",
                format!("expected a table, found {}", toml_type(v)),
                "write a `[tune]` table".into(),
            ),
        }
        // The spec, with placeholders where a value is missing or malformed (its error is
        // already recorded); range checks come from validate_dynamic, the library's own.
        let v = |n: &str| vals.get(n).copied().unwrap_or(1);
        // dtype and head_dim do not change the parameter checks: placeholders when invalid.
        let spec = match (
            family.as_deref(),
            dtype.unwrap_or(DType::F16),
            head_dim.unwrap_or(HeadDim::D64),
        ) {
            (Some(f), dtype, head_dim) => match f {
                "landmark" => Some(DynamicSpec::Landmark {
                    dtype,
                    head_dim,
                    mem_freq: v("mem_freq"),
                    mode: if mode.as_deref() == Some("retrieval") {
                        LandmarkMode::Retrieval { top_k: v("top_k") }
                    } else {
                        LandmarkMode::Train
                    },
                }),
                "hax" => Some(DynamicSpec::Hax {
                    dtype,
                    head_dim,
                    k_lsh: v("k_lsh"),
                    k_ks: v("k_ks"),
                    hash_bits: v("hash_bits"),
                }),
                "cca" => Some(DynamicSpec::Cca {
                    dtype,
                    head_dim,
                    group: v("group"),
                    window: v("window"),
                }),
                "topk" => Some(DynamicSpec::Topk {
                    dtype,
                    head_dim,
                    sink: v("sink"),
                    recent: v("recent"),
                    k: v("k"),
                    split: mode.as_deref() == Some("split"),
                }),
                _ => Some(DynamicSpec::LseMerge { dtype, head_dim }),
            },
            _ => None,
        };
        if let Some(s) = &spec {
            if let Err(ves) = validate_dynamic(s) {
                for e in ves {
                    let last = e.path.rsplit('.').next().unwrap_or(&e.path).to_string();
                    if bad.contains(&last) {
                        continue;
                    }
                    push(&format!("params.{last}"), e.message.clone(), e.fix.clone());
                }
            }
        }
        match spec {
            Some(spec) if errs.is_empty() && dtype.is_some() && head_dim.is_some() => {
                Ok(DynSpecFile {
                    path: path.map(Path::to_path_buf),
                    description,
                    spec,
                    scale,
                    problem,
                    hyperplane_sharing,
                    ks_sharing,
                    arch,
                })
            }
            _ => Err(SpecFileErrors(errs)),
        }
    }
}

fn wanted_fix(wanted: &[(&str, &str)], name: &str) -> String {
    wanted
        .iter()
        .find(|(w, _)| *w == name)
        .map_or(String::new(), |(_, f)| {
            f.trim_start_matches("add ").to_string()
        })
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
        DynamicSpec::LseMerge { .. } => (2, 2, 16, 64),
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
