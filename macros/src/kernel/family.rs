//! `family:` declarations: the data-dependent families of
//! `attnforge_codegen::dynamic` (landmark, HAX, CCA, top-k, lse merge). Interprets
//! `family: name(key: value, ..)` into a `DynamicSpec` and validates it with
//! `validate_dynamic`, mapping each `SpecError` back to the span of the parameter's value.

use std::collections::BTreeMap;

use attnforge_codegen::dynamic::{
    family, validate_dynamic, DynamicSpec, Family, FamilyMode, FamilyParam, FAMILIES,
};
use attnforge_codegen::spec::{DType, HeadDim};
use proc_macro2::TokenStream;
use quote::ToTokens;
use syn::Ident;

use super::check::{bool_lit, check_dtype, check_head_dim, expr_of, int_lit, spec_msg, Ctx};
use super::parse::{ArgValue, Call, Entry, KernelDecl, Value};

/// `landmark(mem_freq: N, mode: train | retrieval(top_k: N)), hax(..), ..`: every family
/// with its macro syntax, from the families' tables.
fn families_text() -> String {
    FAMILIES
        .iter()
        .map(|f| {
            // An optional parameter (default below its range) in brackets.
            let mut parts: Vec<String> = f
                .params
                .iter()
                .map(|p| {
                    if p.default < p.min {
                        format!("[{}: N]", p.name)
                    } else {
                        format!("{}: N", p.name)
                    }
                })
                .collect();
            if f.default_mode.is_none() && !f.modes.is_empty() {
                let modes: Vec<String> = f.modes.iter().map(mode_syntax).collect();
                parts.push(format!("mode: {}", modes.join(" | ")));
            }
            let mut text = if parts.is_empty() {
                f.tag.to_string()
            } else {
                format!("{}({}", f.tag, parts.join(", "))
            };
            for m in flag_modes(f) {
                text += &format!("[, {}: bool]", m.name);
            }
            if !parts.is_empty() {
                text += ")";
            }
            text
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `train`, `retrieval(top_k: N)`.
fn mode_syntax(m: &FamilyMode) -> String {
    if m.params.is_empty() {
        m.name.to_string()
    } else {
        let ps: Vec<String> = m.params.iter().map(|p| format!("{}: N", p.name)).collect();
        format!("{}({})", m.name, ps.join(", "))
    }
}

/// `retrieval(top_k: 4)`: a mode with its parameters at their defaults.
fn mode_example(m: &FamilyMode) -> String {
    if m.params.is_empty() {
        m.name.to_string()
    } else {
        let ps: Vec<String> = m
            .params
            .iter()
            .map(|p| format!("{}: {}", p.name, p.default))
            .collect();
        format!("{}({})", m.name, ps.join(", "))
    }
}

/// The modes of a family with a default mode: each other mode is a `name: bool` flag
/// (`topk(.., split: true)`).
fn flag_modes(f: &Family) -> impl Iterator<Item = &'static FamilyMode> + '_ {
    let flags = f.default_mode.is_some();
    f.modes
        .iter()
        .filter(move |m| flags && Some(m.name) != f.default_mode)
}

/// Whether `name` is a dynamic family (reserved in `mask:` for the hint).
pub(crate) fn is_family_name(name: &str) -> bool {
    family(name).is_some()
}

/// A complete `family:` value for `name`, with the papers' defaults.
pub(crate) fn example(name: &str) -> String {
    let Some(f) = family(name) else {
        return name.to_string();
    };
    let params = macro_params(f);
    if params.is_empty() {
        return f.tag.to_string();
    }
    let required: Vec<String> = params
        .iter()
        .filter(|p| p.required)
        .map(|p| format!("{}: {}", p.name, p.example))
        .collect();
    format!("{}({})", f.tag, required.join(", "))
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

/// A parameter of the macro syntax: name, kind, required, example value.
struct Param {
    name: &'static str,
    kind: Kind,
    required: bool,
    example: String,
}

/// The integer parameters of a family table or mode, all required but those whose
/// default lies below their range (absent: the family's default rule, e.g. recycled's
/// `recycle_size`).
fn int_params(ps: &[FamilyParam]) -> Vec<Param> {
    ps.iter()
        .map(|p| Param {
            name: p.name,
            kind: Kind::Int,
            required: p.default >= p.min,
            example: if p.default >= p.min { p.default } else { p.min }.to_string(),
        })
        .collect()
}

/// A family's macro parameters: its table's, then `mode: ..` when the mode is required,
/// or a `name: bool` flag per non-default mode.
fn macro_params(f: &Family) -> Vec<Param> {
    let mut v = int_params(f.params);
    if f.default_mode.is_none() && !f.modes.is_empty() {
        let example = f
            .modes
            .iter()
            .rev()
            .find(|m| !m.params.is_empty())
            .unwrap_or(&f.modes[0]);
        v.push(Param {
            name: "mode",
            kind: Kind::Mode,
            required: true,
            example: mode_example(example),
        });
    }
    v.extend(flag_modes(f).map(|m| Param {
        name: m.name,
        kind: Kind::Bool,
        required: false,
        example: "true".to_string(),
    }));
    v
}

/// A checked parameter value.
enum Val {
    Int(usize),
    Bool(bool),
    /// A mode with its own parameters' values.
    Mode(&'static str, BTreeMap<&'static str, Val>),
}

/// The family with its parameters; dtype and head_dim are filled in later.
struct FamilyOut {
    family: &'static Family,
    vals: BTreeMap<&'static str, Val>,
    /// Span of each parameter's value, by parameter name (`top_k` included).
    spans: BTreeMap<&'static str, TokenStream>,
}

/// `name: example, [flag: true]`.
fn signature(params: &[Param]) -> String {
    params
        .iter()
        .map(|p| {
            if p.required {
                format!("{}: {}", p.name, p.example)
            } else {
                format!("[{}: {}]", p.name, p.example)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The named arguments of `call` against `params` of family `fam` (`call` names the call
/// in messages). `None` when an error was reported.
fn named_args(
    cx: &mut Ctx<'_>,
    fam: &'static Family,
    call: &Call,
    params: &[Param],
    spans: &mut BTreeMap<&'static str, TokenStream>,
) -> Option<BTreeMap<&'static str, Val>> {
    let what = call.name.to_string();
    let sig = signature(params);
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
        let Some(p) = params.iter().find(|p| p.name == k) else {
            let names: Vec<_> = params.iter().map(|p| p.name).collect();
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
        spans.insert(p.name, a.value.tokens());
        match value(cx, fam, p, &a.value, spans) {
            Some(v) => {
                out.insert(p.name, v);
            }
            None => ok = false,
        }
    }
    for p in params {
        if p.required && !seen.contains_key(p.name) {
            cx.err(
                &call.name,
                format!(
                    "missing parameter `{}` of `{what}`: add `{}: {}` (`{what}({sig})`)",
                    p.name, p.name, p.example
                ),
            );
            ok = false;
        }
    }
    ok.then_some(out)
}

fn int_value(cx: &mut Ctx<'_>, p: &Param, e: &syn::Expr) -> Option<Val> {
    let pname = p.name;
    let ex = &p.example;
    match int_lit(e) {
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
    }
}

/// `mode: name` or `mode: name(param: N, ..)`, checked against the family's modes.
fn mode_value(
    cx: &mut Ctx<'_>,
    fam: &'static Family,
    c: &Call,
    spans: &mut BTreeMap<&'static str, TokenStream>,
) -> Option<Val> {
    let name = c.name.to_string();
    let Some(m) = fam.mode(&name) else {
        let choices: Vec<String> = fam
            .modes
            .iter()
            .map(|m| format!("`{}`", mode_syntax(m)))
            .collect();
        cx.err(
            &c.name,
            format!(
                "unknown {} mode `{name}`; expected {}",
                fam.tag,
                choices.join(" or ")
            ),
        );
        return None;
    };
    if m.params.is_empty() {
        if let Some((paren, _)) = &c.args {
            cx.err_span(
                *paren,
                format!(
                    "`{name}` takes no parameters: write `mode: {name}` ({})",
                    m.about
                ),
            );
            return None;
        }
        return Some(Val::Mode(m.name, BTreeMap::new()));
    }
    if c.args.is_none() {
        let needs: Vec<String> = m
            .params
            .iter()
            .map(|p| format!("`{}` ({})", p.name, p.about))
            .collect();
        cx.err(
            &c.name,
            format!(
                "`{name}` needs {}: write `mode: {}`",
                needs.join(", "),
                mode_example(m)
            ),
        );
        return None;
    }
    let vals = named_args(cx, fam, c, &int_params(m.params), spans)?;
    Some(Val::Mode(m.name, vals))
}

fn value(
    cx: &mut Ctx<'_>,
    fam: &'static Family,
    p: &Param,
    v: &ArgValue,
    spans: &mut BTreeMap<&'static str, TokenStream>,
) -> Option<Val> {
    let pname = p.name;
    match (p.kind, v) {
        (Kind::Int, ArgValue::Expr(e)) => int_value(cx, p, e),
        (Kind::Bool, ArgValue::Expr(e)) => match bool_lit(e) {
            Some(b) => Some(Val::Bool(b)),
            None => {
                cx.err(e, format!("`{pname}` takes `true` or `false`"));
                None
            }
        },
        (Kind::Mode, ArgValue::Call(c)) => mode_value(cx, fam, c, spans),
        (Kind::Mode, ArgValue::Expr(e)) => {
            let choices: Vec<String> = fam
                .modes
                .iter()
                .map(|m| format!("`{}`", mode_syntax(m)))
                .collect();
            cx.err(e, format!("`mode` takes {}", choices.join(" or ")));
            None
        }
        (Kind::Int | Kind::Bool, ArgValue::Call(c)) => {
            let want = if p.kind == Kind::Int {
                "an integer literal"
            } else {
                "`true` or `false`"
            };
            cx.err(
                &c.tokens(),
                format!("`{pname}` takes {want}, e.g. `{pname}: {}` (constants and expressions are not evaluated by the macro)", p.example),
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
                    "`family` takes a family name with its parameters; expected one of: {}",
                    families_text()
                ),
            );
            return None;
        }
    };
    let name = call.name.to_string();
    let Some(fam) = family(&name) else {
        let hint = match mode_named_family(&name) {
            Some(h) => h,
            None if name.starts_with("flash") || is_static_mask(&name) => {
                format!(
                    " (`{name}` is a static mask family: write `mask: {name}` and no `family:`)"
                )
            }
            None => String::new(),
        };
        cx.err(
            &call.name,
            format!(
                "unknown dynamic family `{name}`; expected one of: {}{hint}",
                families_text()
            ),
        );
        return None;
    };
    let params = macro_params(fam);
    if !params.is_empty() && call.args.is_none() {
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
    let vals = named_args(cx, fam, call, &params, &mut spans)?;
    Some(FamilyOut {
        family: fam,
        vals,
        spans,
    })
}

/// The hint for a canonical-name spelling `<family>_<mode>` (`landmark_train`,
/// `topk_split`): how the mode is written in the macro.
fn mode_named_family(name: &str) -> Option<String> {
    let (f, m) = FAMILIES.iter().find_map(|f| {
        f.modes
            .iter()
            .find(|m| name == format!("{}_{}", f.tag, m.name))
            .map(|m| (f, m))
    })?;
    let ints: Vec<String> = f
        .params
        .iter()
        .map(|p| format!("{}: {}", p.name, p.default))
        .collect();
    let ints = ints.join(", ");
    Some(if f.default_mode.is_none() {
        format!(
            " (the mode is a parameter: `{}({ints}, mode: {})`)",
            f.tag,
            mode_example(m)
        )
    } else if f.default_mode == Some(m.name) {
        format!(" (write `{}({ints})`)", f.tag)
    } else {
        format!(" (write `{}({ints}, {}: true)`)", f.tag, m.name)
    })
}

fn is_static_mask(n: &str) -> bool {
    n == "block_sparse"
        || attnforge_codegen::masks::MASKS
            .iter()
            .any(|d| d.tag == n || d.shorthands.iter().any(|(s, _)| *s == n))
}

fn build(f: &FamilyOut, dtype: DType, head_dim: HeadDim) -> DynamicSpec {
    let mut ints: BTreeMap<&str, usize> = BTreeMap::new();
    let mut mode = None;
    for (name, v) in &f.vals {
        match v {
            Val::Int(i) => {
                ints.insert(name, *i);
            }
            Val::Bool(true) => mode = Some(*name),
            Val::Bool(false) => {}
            Val::Mode(m, vals) => {
                mode = Some(*m);
                for (n, v) in vals {
                    if let Val::Int(i) = v {
                        ints.insert(n, *i);
                    }
                }
            }
        }
    }
    DynamicSpec::from_params(f.family, mode, dtype, head_dim, |n| {
        ints.get(n).copied().unwrap_or(0)
    })
    .expect("the checked mode is one of the family's")
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
    // An optional parameter given below its range (recycled's `recycle_size: 0`) would read
    // as absent: reject it here.
    for p in f.family.params.iter().filter(|p| p.default < p.min) {
        if let Some(Val::Int(v)) = f.vals.get(p.name) {
            if *v < p.min {
                let at = f.spans.get(p.name).cloned();
                let at = at.unwrap_or_else(|| d.name.to_token_stream());
                let path = format!("{}.{}", f.family.tag, p.name);
                let message = format!("{v} is outside {}..={}", p.min, p.max);
                let e = attnforge_codegen::check::SpecError::new(&path, message, p.range_fix);
                cx.err(&at, spec_msg(&e));
            }
        }
    }
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
