//! `family:` declarations: the data-dependent families of
//! `attnforge_codegen::dynamic` (landmark, HAX, CCA, top-k, lse merge). Interprets
//! `family: name(key: value, ..)` into a `DynamicSpec` and validates it with
//! `validate_dynamic`, mapping each `SpecError` back to the span of the parameter's value.

use std::collections::BTreeMap;

use attnforge_codegen::dynamic::{validate_dynamic, DynamicSpec, LandmarkMode};
use attnforge_codegen::spec::{DType, HeadDim};
use proc_macro2::TokenStream;
use quote::ToTokens;
use syn::Ident;

use super::check::{bool_lit, check_dtype, check_head_dim, expr_of, int_lit, spec_msg, Ctx};
use super::parse::{ArgValue, Call, Entry, KernelDecl, Value};

/// The family names `family:` accepts.
const NAMES: [&str; 5] = ["landmark", "hax", "cca", "topk", "lse_merge"];

const FAMILIES: &str = "landmark(mem_freq: N, mode: train | retrieval(top_k: N)), \
hax(k_lsh: N, k_ks: N, hash_bits: N), cca(group: N, window: N), \
topk(sink: N, recent: N, k: N[, split: bool]), lse_merge";

/// Whether `name` is a dynamic family (reserved in `mask:` for the hint).
pub(crate) fn is_family_name(name: &str) -> bool {
    NAMES.contains(&name)
}

/// A complete `family:` value for `name`, with the papers' defaults.
pub(crate) fn example(name: &str) -> &'static str {
    match name {
        "landmark" => "landmark(mem_freq: 63, mode: retrieval(top_k: 4))",
        "hax" => "hax(k_lsh: 32, k_ks: 32, hash_bits: 8)",
        "cca" => "cca(group: 16, window: 1024)",
        "topk" => "topk(sink: 4, recent: 64, k: 64)",
        _ => "lse_merge",
    }
}

/// Whether a declaration names a dynamic family (it has a `family:` key).
pub(crate) fn is_dynamic(d: &KernelDecl) -> bool {
    d.entries.iter().any(|e| e.key == "family")
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Int,
    Bool,
    Mode,
}

/// A parameter: name, kind, required, example value.
type Param = (&'static str, Kind, bool, &'static str);

fn params_of(family: &str) -> &'static [Param] {
    match family {
        "landmark" => &[
            ("mem_freq", Kind::Int, true, "63"),
            ("mode", Kind::Mode, true, "retrieval(top_k: 4)"),
        ],
        "hax" => &[
            ("k_lsh", Kind::Int, true, "32"),
            ("k_ks", Kind::Int, true, "32"),
            ("hash_bits", Kind::Int, true, "8"),
        ],
        "cca" => &[
            ("group", Kind::Int, true, "16"),
            ("window", Kind::Int, true, "1024"),
        ],
        "topk" => &[
            ("sink", Kind::Int, true, "4"),
            ("recent", Kind::Int, true, "64"),
            ("k", Kind::Int, true, "64"),
            ("split", Kind::Bool, false, "true"),
        ],
        "retrieval" => &[("top_k", Kind::Int, true, "4")],
        _ => &[],
    }
}

/// A checked parameter value.
enum Val {
    Int(usize),
    Bool(bool),
    Mode(LandmarkMode),
}

/// The family with its parameters; dtype and head_dim are filled in later.
struct FamilyOut {
    name: String,
    vals: BTreeMap<&'static str, Val>,
    /// Span of each parameter's value, by parameter name (`top_k` included).
    spans: BTreeMap<&'static str, TokenStream>,
}

/// The named arguments of `call` against `params` (`what` names the call in messages).
/// `None` when an error was reported.
fn named_args(
    cx: &mut Ctx<'_>,
    call: &Call,
    params: &'static [Param],
    spans: &mut BTreeMap<&'static str, TokenStream>,
) -> Option<BTreeMap<&'static str, Val>> {
    let what = call.name.to_string();
    let sig = params
        .iter()
        .map(|(n, _, req, ex)| {
            if *req {
                format!("{n}: {ex}")
            } else {
                format!("[{n}: {ex}]")
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    let mut out = BTreeMap::new();
    let mut ok = true;
    let args = match &call.args {
        Some((_, a)) => a.as_slice(),
        None => &[],
    };
    if params.is_empty() {
        if let Some((paren, a)) = &call.args {
            if a.is_empty() {
                return Some(out);
            }
            cx.err_span(
                *paren,
                format!("`{what}` takes no parameters: write `{what}`"),
            );
            return None;
        }
        return Some(out);
    }
    if let Some(a) = args.iter().find(|a| a.key.is_none()) {
        cx.err(
            &a.value.tokens(),
            format!("the parameters of `{what}` are named: write `{what}({sig})`"),
        );
        return None;
    }
    let mut seen: BTreeMap<String, ()> = BTreeMap::new();
    for a in args {
        let Some(key) = &a.key else {
            continue;
        };
        let k = key.to_string();
        let Some(&(pname, kind, _, ex)) = params.iter().find(|p| p.0 == k) else {
            let names: Vec<_> = params.iter().map(|p| p.0).collect();
            cx.err(
                key,
                format!(
                    "unknown parameter `{k}` of `{what}`; expected: {}",
                    names.join(", ")
                ),
            );
            ok = false;
            continue;
        };
        if seen.insert(k.clone(), ()).is_some() {
            cx.err(
                key,
                format!("duplicate parameter `{k}` of `{what}`: give each parameter once"),
            );
            ok = false;
            continue;
        }
        spans.insert(pname, a.value.tokens());
        match value(cx, pname, kind, ex, &a.value, spans) {
            Some(v) => {
                out.insert(pname, v);
            }
            None => ok = false,
        }
    }
    for &(pname, _, req, ex) in params {
        if req && !seen.contains_key(pname) {
            cx.err(
                &call.name,
                format!("missing parameter `{pname}` of `{what}`: add `{pname}: {ex}` (`{what}({sig})`)"),
            );
            ok = false;
        }
    }
    ok.then_some(out)
}

fn value(
    cx: &mut Ctx<'_>,
    pname: &'static str,
    kind: Kind,
    ex: &str,
    v: &ArgValue,
    spans: &mut BTreeMap<&'static str, TokenStream>,
) -> Option<Val> {
    match (kind, v) {
        (Kind::Int, ArgValue::Expr(e)) => match int_lit(e) {
            Some(n) if n >= 0 => match usize::try_from(n) {
                Ok(n) => Some(Val::Int(n)),
                Err(_) => {
                    cx.err(e, format!("`{pname}` = {n} does not fit a usize"));
                    None
                }
            },
            Some(n) => {
                cx.err(
                    e,
                    format!("`{pname}` = {n} is negative: family parameters are non-negative integers, e.g. `{pname}: {ex}`"),
                );
                None
            }
            None => {
                cx.err(
                    e,
                    format!("`{pname}` takes an integer literal, e.g. `{pname}: {ex}`"),
                );
                None
            }
        },
        (Kind::Bool, ArgValue::Expr(e)) => match bool_lit(e) {
            Some(b) => Some(Val::Bool(b)),
            None => {
                cx.err(e, format!("`{pname}` takes `true` or `false`"));
                None
            }
        },
        (Kind::Mode, ArgValue::Call(c)) => match c.name.to_string().as_str() {
            "train" => {
                if let Some((paren, _)) = &c.args {
                    cx.err_span(
                        *paren,
                        "`train` takes no parameters: write `mode: train` (training mode attends to every earlier block)",
                    );
                    return None;
                }
                Some(Val::Mode(LandmarkMode::Train))
            }
            "retrieval" => {
                if c.args.is_none() {
                    cx.err(
                        &c.name,
                        "`retrieval` needs the number of blocks it retrieves: write `mode: retrieval(top_k: 4)`",
                    );
                    return None;
                }
                let mut v = named_args(cx, c, params_of("retrieval"), spans)?;
                let Some(Val::Int(top_k)) = v.remove("top_k") else {
                    return None;
                };
                Some(Val::Mode(LandmarkMode::Retrieval { top_k }))
            }
            other => {
                cx.err(
                    &c.name,
                    format!("unknown landmark mode `{other}`; expected `train` or `retrieval(top_k: N)`"),
                );
                None
            }
        },
        (Kind::Mode, ArgValue::Expr(e)) => {
            cx.err(e, "`mode` takes `train` or `retrieval(top_k: N)`");
            None
        }
        (Kind::Int | Kind::Bool, ArgValue::Call(c)) => {
            let want = if kind == Kind::Int {
                "an integer literal"
            } else {
                "`true` or `false`"
            };
            cx.err(
                &c.tokens(),
                format!("`{pname}` takes {want}, e.g. `{pname}: {ex}` (constants and expressions are not evaluated by the macro)"),
            );
            None
        }
    }
}

fn check_family(cx: &mut Ctx<'_>, entry: &Entry) -> Option<FamilyOut> {
    let call = match &entry.value {
        Value::Call(c) => c,
        other => {
            let at = match other {
                Value::Expr(e) => e.to_token_stream(),
                _ => entry.key.to_token_stream(),
            };
            cx.err(
                &at,
                format!(
                    "`family` takes a family name with its parameters; expected one of: {FAMILIES}"
                ),
            );
            return None;
        }
    };
    let name = call.name.to_string();
    if !is_family_name(&name) {
        let hint = match name.as_str() {
            "landmark_train" | "landmark_retrieval" => {
                " (the mode is a parameter: `landmark(mem_freq: 63, mode: train)`)".to_string()
            }
            "topk_split" => " (write `topk(sink: 4, recent: 64, k: 64, split: true)`)".to_string(),
            n if n.starts_with("flash") || is_static_mask(n) => {
                format!(" (`{n}` is a static mask family: write `mask: {n}` and no `family:`)")
            }
            _ => String::new(),
        };
        cx.err(
            &call.name,
            format!("unknown dynamic family `{name}`; expected one of: {FAMILIES}{hint}"),
        );
        return None;
    }
    if name != "lse_merge" && call.args.is_none() {
        cx.err(
            &call.name,
            format!(
                "`{name}` needs its parameters: `family: {}`",
                example(&name)
            ),
        );
        return None;
    }
    let mut spans = BTreeMap::new();
    let vals = named_args(cx, call, params_of(&name), &mut spans)?;
    Some(FamilyOut { name, vals, spans })
}

fn is_static_mask(n: &str) -> bool {
    n == "block_sparse"
        || attnforge_codegen::masks::MASKS
            .iter()
            .any(|d| d.tag == n || d.shorthands.iter().any(|(s, _)| *s == n))
}

fn build(f: &FamilyOut, dtype: DType, head_dim: HeadDim) -> DynamicSpec {
    let int = |k: &str| match f.vals.get(k) {
        Some(Val::Int(v)) => *v,
        _ => 0,
    };
    match f.name.as_str() {
        "landmark" => DynamicSpec::Landmark {
            dtype,
            head_dim,
            mem_freq: int("mem_freq"),
            mode: match f.vals.get("mode") {
                Some(Val::Mode(m)) => *m,
                _ => LandmarkMode::Train,
            },
        },
        "hax" => DynamicSpec::Hax {
            dtype,
            head_dim,
            k_lsh: int("k_lsh"),
            k_ks: int("k_ks"),
            hash_bits: int("hash_bits"),
        },
        "cca" => DynamicSpec::Cca {
            dtype,
            head_dim,
            group: int("group"),
            window: int("window"),
        },
        "topk" => DynamicSpec::Topk {
            dtype,
            head_dim,
            sink: int("sink"),
            recent: int("recent"),
            k: int("k"),
            split: matches!(f.vals.get("split"), Some(Val::Bool(true))),
        },
        _ => DynamicSpec::LseMerge { dtype, head_dim },
    }
}

/// Why a static key does not apply to a dynamic family, and the fix.
fn not_applicable(key: &str) -> Option<&'static str> {
    Some(match key {
        "mask" => "its key set is chosen from the data by the pipeline's selection kernels; remove `mask:` (static kernels declare `mask:` without `family:`)",
        "score" => "its scores are `scale * q.k` by definition; remove `score:`",
        "causal" => "causality is part of the family's definition; remove `causal:`",
        "gqa" => "GQA/MQA is taken from the tensors' head counts at run time; remove `gqa:`",
        "scale" => "the score scale is a run-time input; remove `scale:` and set `DynInputs::scale` (default 1/sqrt(head_dim), HAX 1)",
        "sparse_block" => "its blocks are family parameters (e.g. `landmark(mem_freq: ..)`), selected at run time; remove `sparse_block:`",
        "tune" => "its kernels have a fixed launch geometry (one warp per row); remove `tune:`",
        _ => return None,
    })
}

/// Checks a declaration with a `family:` key; `None` when errors were reported.
pub(crate) fn check(d: &KernelDecl, errors: &mut Vec<syn::Error>) -> Option<DynamicSpec> {
    let before = errors.len();
    let mut cx = Ctx { errors };
    let fam_name = d.entries.iter().find_map(|e| match &e.value {
        Value::Call(c) if e.key == "family" && is_family_name(&c.name.to_string()) => {
            Some(c.name.to_string())
        }
        _ => None,
    });
    let fam_label = fam_name
        .as_deref()
        .map_or("a dynamic family".to_string(), |n| {
            format!("the dynamic family `{n}`")
        });
    let mut seen: BTreeMap<String, &Ident> = BTreeMap::new();
    let (mut dtype, mut head_dim, mut family) = (None, None, None);
    for entry in &d.entries {
        let key = entry.key.to_string();
        if seen.contains_key(&key) {
            cx.err(
                &entry.key,
                format!("duplicate key `{key}`: each key may be given once"),
            );
            continue;
        }
        seen.insert(key.clone(), &entry.key);
        match key.as_str() {
            "family" => family = check_family(&mut cx, entry),
            "dtype" | "head_dim" => {
                let Some(e) = expr_of(&mut cx, entry) else {
                    continue;
                };
                if key == "dtype" {
                    dtype = check_dtype(&mut cx, e);
                } else {
                    head_dim = check_head_dim(&mut cx, e);
                }
            }
            k => match not_applicable(k) {
                Some(why) => cx.err(
                    &entry.key,
                    format!("`{k}` does not apply to {fam_label}: {why}"),
                ),
                None => cx.err(
                    &entry.key,
                    format!(
                        "unknown key `{k}`; a `family:` declaration takes: family, dtype, head_dim"
                    ),
                ),
            },
        }
    }
    if !seen.contains_key("dtype") {
        cx.err(
            &d.name,
            "missing key `dtype`: add `dtype: bf16` (or `f16`, `f32`)",
        );
    }
    if !seen.contains_key("head_dim") {
        cx.err(
            &d.name,
            "missing key `head_dim`: add `head_dim: 128` (or 64, 256)",
        );
    }
    let (Some(f), Some(dtype), Some(head_dim)) = (family, dtype, head_dim) else {
        return None;
    };
    let spec = build(&f, dtype, head_dim);
    if let Err(es) = validate_dynamic(&spec) {
        for e in &es {
            let field = e.path.rsplit('.').next().unwrap_or("");
            let at = f
                .spans
                .iter()
                .find(|(k, _)| **k == field)
                .map(|(_, t)| t.clone())
                .unwrap_or_else(|| d.name.to_token_stream());
            // The codegen's fixes are written for spec files; say them in macro syntax.
            cx.err(
                &at,
                spec_msg(e).replace("mode = \"train\"", "`mode: train`"),
            );
        }
    }
    (cx.errors.len() == before).then_some(spec)
}
