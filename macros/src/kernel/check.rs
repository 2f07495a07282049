//! Interprets the entries of a declaration and validates the result with the codegen
//! crate, mapping every `SpecError` back to the span of the value it is about.

use std::collections::BTreeMap;

use attnforge_codegen::backward::backward_supported;
use attnforge_codegen::check::{validate_problem, validate_spec, MaskParams, Problem, SpecError};
use attnforge_codegen::masks::{BuiltinMask, Causality, ParamDef, ParamType, DEFAULT_MASK, MASKS};
use attnforge_codegen::scores::ScoreParamKind;
use attnforge_codegen::spec::{
    BlockSize, DType, HeadDim, KernelSpec, Layout, Mask, ScoreMod, UserFunction, UserSource,
};
use attnforge_codegen::tile::{default_search_space, Arch, TileConfig};
use proc_macro2::{Span, TokenStream};
use quote::ToTokens;
use syn::{Expr, Lit};

use super::parse::{Entry, KernelDecl, Value};

/// Architecture the declaration is validated for (the smaller shared-memory limit).
const ARCH: Arch = Arch::Sm80;
const KEYS: &str = "mask, score, dtype, head_dim, gqa, causal, scale, sparse_block, layout, tune, backward (or `family` for a dynamic family)";
const TUNE_KEYS: [&str; 4] = ["block_m", "block_n", "warps", "stages"];
const DEFAULT_GRID: [&[usize]; 4] = [&[16, 32, 64, 128], &[32, 64, 128], &[1, 2, 4, 8], &[1]];

/// A tuning list: each value with its literal (`None` for values of the default grid).
type TuneList = Vec<(usize, Option<Expr>)>;

/// A checked declaration. User functions appear in `spec` as placeholders (their name, no
/// text); `expand` replaces them with the companions' data.
pub(crate) struct Decl {
    pub spec: KernelSpec,
    pub mask_params: MaskParams,
    pub softcap: Option<f32>,
    pub mask_fn: Option<syn::Path>,
    pub score_fn: Option<syn::Path>,
    pub tune: Option<[Vec<usize>; 4]>,
    /// `backward: true`: the item also has the backward kernels (checked here with
    /// `backward_supported`).
    pub backward: bool,
}

pub(crate) struct Ctx<'a> {
    pub errors: &'a mut Vec<syn::Error>,
}

impl Ctx<'_> {
    pub fn err(&mut self, at: &dyn ToTokens, msg: impl std::fmt::Display) {
        self.errors
            .push(syn::Error::new_spanned(at.to_token_stream(), msg));
    }
    pub fn err_span(&mut self, at: Span, msg: impl std::fmt::Display) {
        self.errors.push(syn::Error::new(at, msg));
    }
}

pub(crate) fn spec_msg(e: &SpecError) -> String {
    format!("{}: {} (fix: {})", e.path, e.message, e.fix)
}

pub(crate) fn int_lit(e: &Expr) -> Option<i64> {
    match e {
        Expr::Lit(l) => match &l.lit {
            Lit::Int(i) => i.base10_parse().ok(),
            _ => None,
        },
        Expr::Unary(u) if matches!(u.op, syn::UnOp::Neg(_)) => int_lit(&u.expr).map(|v| -v),
        Expr::Group(g) => int_lit(&g.expr),
        _ => None,
    }
}

fn float_lit(e: &Expr) -> Option<f64> {
    match e {
        Expr::Lit(l) => match &l.lit {
            Lit::Float(f) => f.base10_parse().ok(),
            Lit::Int(i) => i.base10_parse::<i64>().ok().map(|v| v as f64),
            _ => None,
        },
        Expr::Unary(u) if matches!(u.op, syn::UnOp::Neg(_)) => float_lit(&u.expr).map(|v| -v),
        Expr::Group(g) => float_lit(&g.expr),
        _ => None,
    }
}

pub(crate) fn bool_lit(e: &Expr) -> Option<bool> {
    match e {
        Expr::Lit(l) => match &l.lit {
            Lit::Bool(b) => Some(b.value),
            _ => None,
        },
        _ => None,
    }
}

/// A single identifier (built-in names); a longer path is always a user function.
pub(crate) fn single_ident(p: &syn::Path) -> Option<String> {
    (p.leading_colon.is_none() && p.segments.len() == 1 && p.segments[0].arguments.is_empty())
        .then(|| p.segments[0].ident.to_string())
}

fn placeholder(path: &syn::Path) -> UserFunction {
    let name = path
        .segments
        .last()
        .map(|s| s.ident.to_string())
        .unwrap_or_default();
    UserFunction {
        name: name.clone(),
        source: UserSource::Function(name),
        params: Vec::new(),
        grad: None,
    }
}

/// A mask or score value: a path, or a call `name(args)`.
fn split_call(e: &Expr) -> Option<(&syn::Path, Option<Vec<&Expr>>)> {
    match e {
        Expr::Path(p) if p.qself.is_none() => Some((&p.path, None)),
        Expr::Call(c) => match &*c.func {
            Expr::Path(p) if p.qself.is_none() => Some((&p.path, Some(c.args.iter().collect()))),
            _ => None,
        },
        _ => None,
    }
}

/// The mask expressions the macro accepts (from the mask table), for error messages.
fn mask_forms() -> String {
    let mut v = Vec::new();
    for d in MASKS {
        v.push(call_form(d.tag, d.params, None));
        for (short, fixed) in d.shorthands {
            v.push(call_form(short, d.params, Some(fixed)));
        }
    }
    format!(
        "{}, block_sparse, block_sparse(<#[mask] fn>), or the name of a #[mask] function",
        v.join(", ")
    )
}

/// `name(p1, p2[, optional])`, without the parameter `skip` (a shorthand's fixed one) or
/// with it written as `0` (`zero`).
fn call_form(name: &str, params: &[ParamDef], skip: Option<&str>) -> String {
    call_form_with(name, params, skip, None)
}

fn call_form_with(
    name: &str,
    params: &[ParamDef],
    skip: Option<&str>,
    zero: Option<&str>,
) -> String {
    let (mut req, mut opt) = (Vec::new(), Vec::new());
    for p in params.iter().filter(|p| Some(p.name) != skip) {
        let n = if Some(p.name) == zero { "0" } else { p.name };
        if p.optional {
            opt.push(n);
        } else {
            req.push(n);
        }
    }
    if req.is_empty() && opt.is_empty() {
        return name.to_string();
    }
    let opt = if opt.is_empty() {
        String::new()
    } else {
        format!("[, {}]", opt.join(", "))
    };
    format!("{name}({}{opt})", req.join(", "))
}

/// A built-in mask call: the mask and, for a shorthand, the parameter fixed to 0.
fn builtin_call(name: &str) -> Option<(BuiltinMask, Option<&'static str>)> {
    BuiltinMask::from_tag(name).map(|m| (m, None)).or_else(|| {
        BuiltinMask::all().find_map(|m| {
            m.def()
                .shorthands
                .iter()
                .find(|(s, _)| *s == name)
                .map(|(_, fixed)| (m, Some(*fixed)))
        })
    })
}

struct MaskOut {
    mask: Mask,
    params: MaskParams,
    user: Option<syn::Path>,
    /// Spans of the arguments by parameter name, for validation errors.
    arg_spans: BTreeMap<&'static str, TokenStream>,
}

fn check_mask(cx: &mut Ctx<'_>, e: &Expr) -> Option<MaskOut> {
    let Some((path, args)) = split_call(e) else {
        cx.err(
            e,
            format!(
                "unsupported mask expression; expected one of: {}",
                mask_forms()
            ),
        );
        return None;
    };
    let builtin = single_ident(path);
    let mut out = MaskOut {
        mask: DEFAULT_MASK,
        params: MaskParams::None,
        user: None,
        arg_spans: BTreeMap::new(),
    };
    let Some(name) = builtin else {
        if args.is_some() {
            cx.err(e, "a #[mask] function is named, not called: write `mask: my_mask` (its parameters are passed at run time)");
            return None;
        }
        out.mask = Mask::Predicate(placeholder(path));
        out.user = Some(path.clone());
        return Some(out);
    };
    if name == "block_sparse" {
        match args.as_deref() {
            None => out.mask = Mask::BlockSparse { mask: None },
            Some([Expr::Path(p)]) if p.qself.is_none() => {
                out.mask = Mask::BlockSparse {
                    mask: Some(placeholder(&p.path)),
                };
                out.user = Some(p.path.clone());
            }
            Some(_) => {
                cx.err(e, "block_sparse takes at most the name of a #[mask] function for partial blocks: `block_sparse` or `block_sparse(my_mask)`");
                return None;
            }
        }
        return Some(out);
    }
    let Some((builtin, fixed)) = builtin_call(&name) else {
        if super::family::is_family_name(&name) {
            cx.err(
                path,
                format!(
                    "`{name}` is a dynamic family, not a mask: declare it with `family: {}` and no `mask:` \
                     (to use your own #[mask] function named `{name}`, write `mask: self::{name}`)",
                    super::family::example(&name)
                ),
            );
            return None;
        }
        if args.is_some() {
            cx.err(
                path,
                format!(
                    "unknown mask family `{name}`; expected one of: {}",
                    mask_forms()
                ),
            );
            return None;
        }
        out.mask = Mask::Predicate(placeholder(path));
        out.user = Some(path.clone());
        return Some(out);
    };
    let def = builtin.def();
    let params: Vec<&ParamDef> = def
        .params
        .iter()
        .filter(|p| Some(p.name) != fixed)
        .collect();
    let required = params.iter().filter(|p| !p.optional).count();
    let args = args.unwrap_or_default();
    if args.len() < required || args.len() > params.len() {
        let names: Vec<&str> = params.iter().map(|p| p.name).collect();
        let want = if names.is_empty() {
            format!("`{name}` takes no arguments: write `mask: {name}`")
        } else {
            format!(
                "`{name}` takes {}: `{name}({})`",
                if required == names.len() {
                    format!("{required} argument(s)")
                } else {
                    format!("{required} to {} arguments", names.len())
                },
                names.join(", ")
            )
        };
        cx.err(e, format!("{want}; got {}", args.len()));
        return None;
    }
    let mut values = MaskParams::new();
    if let Some(f) = fixed {
        values.set(f, 0);
    }
    let mut ok = true;
    for (p, a) in params.iter().zip(&args) {
        out.arg_spans.insert(p.name, a.to_token_stream());
        let v = match p.ty {
            ParamType::Int => int_lit(a).map(|v| v as f64),
            ParamType::Float => float_lit(a),
        };
        match (v, p.ty) {
            (Some(v), _) => values.set(p.name, v),
            (None, ParamType::Float) => {
                cx.err(
                    a,
                    format!(
                        "expected a number literal for `{}` ({}), e.g. `{}`",
                        p.name,
                        p.doc,
                        p.default.at(0)
                    ),
                );
                ok = false;
            }
            (None, ParamType::Int) => {
                cx.err(a, format!("unsupported expression for `{}`: expected an integer literal (override it at run time through `RunParams::mask`)", p.name));
                ok = false;
            }
        }
    }
    if !ok {
        return None;
    }
    out.mask = Mask::Builtin(builtin);
    out.params = values;
    Some(out)
}

struct ScoreOut {
    score: ScoreMod,
    softcap: Option<f32>,
    user: Option<syn::Path>,
}

fn check_score(cx: &mut Ctx<'_>, e: &Expr) -> Option<ScoreOut> {
    let Some((path, args)) = split_call(e) else {
        cx.err(e, "unsupported score expression; expected `none`, `softcap(<cap>)`, `alibi` or the name of a #[score] function");
        return None;
    };
    let mut out = ScoreOut {
        score: ScoreMod::None,
        softcap: None,
        user: None,
    };
    let builtin = single_ident(path).and_then(|n| ScoreMod::builtin(&n).map(|s| (n, s)));
    match (builtin, args.as_deref()) {
        (Some((n, sm)), args) => match (sm.param_of(ScoreParamKind::Scalar), args) {
            (Some(p), Some([c])) => match float_lit(c) {
                Some(v) => {
                    out.score = sm;
                    out.softcap = Some(v as f32);
                }
                None => {
                    cx.err(c, format!("unsupported expression for the {} value: expected a number literal, e.g. `{n}(30.0)`", p.name));
                    return None;
                }
            },
            (Some(_), _) => {
                cx.err(e, format!("`{n}` takes its cap value: `{n}(30.0)` (to use your own #[score] function named `{n}`, write `self::{n}`)"));
                return None;
            }
            (None, None) => out.score = sm,
            (None, Some(_)) => {
                cx.err(e, format!("`{n}` takes no arguments: write `score: {n}` (ALiBi slopes are a run-time input)"));
                return None;
            }
        },
        (None, Some(_)) => {
            cx.err(e, "a #[score] function is named, not called: write `score: my_score` (its parameters are passed at run time)");
            return None;
        }
        (None, None) => {
            out.score = ScoreMod::User(placeholder(path));
            out.user = Some(path.clone());
        }
    }
    Some(out)
}

/// `dtype: f16 | bf16 | f32`.
pub(crate) fn check_dtype(cx: &mut Ctx<'_>, e: &Expr) -> Option<DType> {
    let name = match e {
        Expr::Path(p) => single_ident(&p.path),
        _ => None,
    };
    match name.as_deref() {
        Some("f16") => Some(DType::F16),
        Some("bf16") => Some(DType::Bf16),
        Some("f32") => Some(DType::F32),
        _ => {
            cx.err(e, "unsupported dtype: expected `f16`, `bf16` or `f32`");
            None
        }
    }
}

/// `layout: dense | varlen | paged | decode | decode_varlen` (variants.md section 13), the
/// spelling of spec files and the CLI.
fn check_layout(cx: &mut Ctx<'_>, e: &Expr) -> Option<Layout> {
    let name = match e {
        Expr::Path(p) => single_ident(&p.path),
        Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Str(s),
            ..
        }) => Some(s.value()),
        _ => None,
    };
    let found = name
        .as_deref()
        .and_then(|n| Layout::ALL.into_iter().find(|l| l.tag() == n));
    if found.is_none() {
        let all: Vec<_> = Layout::ALL
            .iter()
            .map(|l| format!("`{}`", l.tag()))
            .collect();
        cx.err(
            e,
            format!("unknown layout: expected one of {}", all.join(", ")),
        );
    }
    found
}

/// `head_dim: 64 | 128 | 256`.
pub(crate) fn check_head_dim(cx: &mut Ctx<'_>, e: &Expr) -> Option<HeadDim> {
    match int_lit(e) {
        Some(64) => Some(HeadDim::D64),
        Some(128) => Some(HeadDim::D128),
        Some(256) => Some(HeadDim::D256),
        Some(v) => {
            cx.err(
                e,
                format!("unsupported head_dim {v}: the kernels are generated for 64, 128 or 256"),
            );
            None
        }
        None => {
            cx.err(e, "head_dim takes an integer literal: 64, 128 or 256");
            None
        }
    }
}

pub(crate) fn expr_of<'a>(cx: &mut Ctx<'_>, entry: &'a Entry) -> Option<&'a Expr> {
    match &entry.value {
        Value::Expr(e) => Some(e),
        Value::Group(_) => {
            cx.err(
                &entry.key,
                format!("`{}` takes a value, not a `{{ .. }}` group", entry.key),
            );
            None
        }
        Value::Call(c) => {
            let hint = if super::family::is_family_name(&c.name.to_string()) {
                format!(
                    "; `{}` is a dynamic family: declare it with `family: {}(..)` (and no `{}:`)",
                    c.name, c.name, entry.key
                )
            } else {
                String::new()
            };
            cx.err(
                &c.name,
                format!(
                    "`{}` takes a value, not a call with named parameters{hint}",
                    entry.key
                ),
            );
            None
        }
    }
}

fn check_tune(cx: &mut Ctx<'_>, entry: &Entry) -> Option<[TuneList; 4]> {
    let Value::Group(entries) = &entry.value else {
        cx.err(&entry.key, "`tune` takes a group of lists: `tune: { block_m: [64, 128], block_n: [64], warps: [4, 8] }`");
        return None;
    };
    let mut lists: [Option<TuneList>; 4] = Default::default();
    let mut ok = true;
    let mut seen: BTreeMap<String, Span> = BTreeMap::new();
    for e in entries {
        let key = e.key.to_string();
        let Some(slot) = TUNE_KEYS.iter().position(|k| *k == key) else {
            cx.err(
                &e.key,
                format!(
                    "unknown tuning key `{key}`; expected one of: block_m, block_n, warps, stages"
                ),
            );
            ok = false;
            continue;
        };
        if seen.insert(key.clone(), e.key.span()).is_some() {
            cx.err(
                &e.key,
                format!("duplicate tuning key `{key}`: give each list once"),
            );
            ok = false;
            continue;
        }
        let arr = match &e.value {
            Value::Expr(x) if matches!(**x, Expr::Array(_)) => match &**x {
                Expr::Array(a) => a,
                _ => unreachable!(),
            },
            _ => {
                cx.err(
                    &e.key,
                    format!("`{key}` takes a list of integers, e.g. `{key}: [64, 128]`"),
                );
                ok = false;
                continue;
            }
        };
        if arr.elems.is_empty() {
            cx.err(arr, format!("empty `{key}` list: give at least one value (or leave `{key}` out for the default grid)"));
            ok = false;
            continue;
        }
        let mut vals = Vec::new();
        for x in &arr.elems {
            match int_lit(x) {
                Some(v) if v > 0 => {
                    if vals.iter().any(|(w, _)| *w == v as usize) {
                        cx.err(x, format!("`{key}` lists {v} twice"));
                        ok = false;
                    } else {
                        vals.push((v as usize, Some(x.clone())));
                    }
                }
                Some(v) => {
                    cx.err(x, format!("`{key}` must be positive: got {v}"));
                    ok = false;
                }
                None => {
                    cx.err(
                        x,
                        format!("unsupported expression in `{key}`: expected an integer literal"),
                    );
                    ok = false;
                }
            }
        }
        lists[slot] = Some(vals);
    }
    if !ok {
        return None;
    }
    let mut i = 0;
    Some(lists.map(|l| {
        let l = l.unwrap_or_else(|| DEFAULT_GRID[i].iter().map(|&v| (v, None)).collect());
        i += 1;
        l
    }))
}

/// Checks one declaration; `None` when errors were reported.
pub(crate) fn check(d: &KernelDecl, errors: &mut Vec<syn::Error>) -> Option<Decl> {
    let before = errors.len();
    let mut cx = Ctx { errors };
    let mut seen: BTreeMap<String, &Entry> = BTreeMap::new();
    let (mut dtype, mut head_dim, mut gqa, mut causal, mut scale, mut sparse) =
        (None, None, false, None, None, None);
    let mut backward = false;
    let mut layout = Layout::Dense;
    let (mut mask, mut score, mut tune) = (None, None, None);
    let mut spans: BTreeMap<&str, TokenStream> = BTreeMap::new();
    let mut mask_failed = false;
    let mut score_failed = false;
    let mut tune_failed = false;
    for entry in &d.entries {
        let key = entry.key.to_string();
        if let Some(first) = seen.get(&key) {
            let _ = first;
            cx.err(
                &entry.key,
                format!("duplicate key `{key}`: each key may be given once"),
            );
            continue;
        }
        seen.insert(key.clone(), entry);
        if key == "tune" {
            spans.insert("tune", entry.key.to_token_stream());
            tune = check_tune(&mut cx, entry);
            tune_failed |= tune.is_none();
            continue;
        }
        let known = [
            "mask",
            "score",
            "dtype",
            "head_dim",
            "gqa",
            "causal",
            "scale",
            "sparse_block",
            "layout",
            "backward",
        ];
        let Some(k) = known.iter().find(|k| **k == key) else {
            cx.err(
                &entry.key,
                format!("unknown key `{key}`; expected one of: {KEYS}"),
            );
            continue;
        };
        let Some(e) = expr_of(&mut cx, entry) else {
            continue;
        };
        spans.insert(k, e.to_token_stream());
        match *k {
            "mask" => {
                mask = check_mask(&mut cx, e);
                mask_failed |= mask.is_none();
            }
            "score" => {
                score = check_score(&mut cx, e);
                score_failed |= score.is_none();
            }
            "dtype" => dtype = check_dtype(&mut cx, e),
            "layout" => layout = check_layout(&mut cx, e).unwrap_or(layout),
            "head_dim" => head_dim = check_head_dim(&mut cx, e),
            "gqa" | "causal" | "backward" => match bool_lit(e) {
                Some(b) if *k == "gqa" => gqa = b,
                Some(b) if *k == "backward" => backward = b,
                Some(b) => causal = Some(b),
                None => cx.err(e, format!("`{k}` takes `true` or `false`")),
            },
            "scale" => match float_lit(e) {
                Some(v) => scale = Some(v as f32),
                None => cx.err(e, "scale takes a number literal, e.g. `scale: 0.125` (leave it out for 1/sqrt(head_dim))"),
            },
            _ => {
                let v = match e {
                    Expr::Tuple(t) if t.elems.len() == 2 => {
                        int_lit(&t.elems[0]).zip(int_lit(&t.elems[1]))
                    }
                    _ => int_lit(e).map(|v| (v, v)),
                };
                match v {
                    Some((q, k)) if q > 0 && k > 0 => sparse = Some(BlockSize { q: q as usize, k: k as usize }),
                    _ => cx.err(e, "sparse_block takes a positive integer or a pair `(rows, cols)`, e.g. `sparse_block: (64, 128)`"),
                }
            }
        }
    }
    let name_tokens = d.name.to_token_stream();
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
    let mut mask = match mask {
        Some(m) => m,
        None if mask_failed || seen.contains_key("mask") => return None,
        None => MaskOut {
            mask: DEFAULT_MASK,
            params: MaskParams::None,
            user: None,
            arg_spans: BTreeMap::new(),
        },
    };
    let score = match score {
        Some(s) => s,
        None if score_failed || seen.contains_key("score") => return None,
        None => ScoreOut {
            score: ScoreMod::None,
            softcap: None,
            user: None,
        },
    };
    // `causal:` combines with a mask family or contradicts it.
    if let Some(c) = causal {
        let at = seen
            .get("causal")
            .map(|e| e.key.to_token_stream())
            .unwrap_or_else(|| name_tokens.clone());
        let mspan = spans
            .get("mask")
            .cloned()
            .unwrap_or_else(|| name_tokens.clone());
        let contradiction =
            |what: &str| format!("`causal: {c}` contradicts `mask: {}`: {what}", mspan);
        let user_fn = matches!(mask.mask, Mask::Predicate(_) | Mask::BlockSparse { .. });
        match (mask.mask.def().map(|d| d.causality), c) {
            (_, true) if user_fn => cx.err(&at, format!("`causal: true` cannot be combined with `mask: {mspan}`: the kernel does not know what the function decides; write the causal condition (`kv <= q`) inside the #[mask] function and remove `causal`")),
            (_, false) if user_fn => cx.err(&at, format!("`causal: false` cannot be checked against `mask: {mspan}`: remove `causal` (the #[mask] function decides)")),
            (Some(Causality::NotCausal(Some(causal_form))), true) => {
                mask.mask = Mask::builtin(causal_form).expect("a table tag");
            }
            (Some(Causality::NotCausal(None)), true) => cx.err(&at, contradiction("that mask lets queries see later keys; remove `causal` or use another mask")),
            (Some(Causality::CausalWhenZero(param)), true) => {
                let v = mask.params.get(param).unwrap_or(0.0);
                if let (true, Some(d)) = (v != 0.0, mask.mask.def()) {
                    let mut fixes = vec![format!("`{}`", call_form_with(d.tag, d.params, None, Some(param)))];
                    fixes.extend(d.shorthands.iter().filter(|(_, f)| *f == param).map(|(s, _)| format!("`{}`", call_form(s, d.params, Some(param)))));
                    cx.err(&at, contradiction(&format!("the window reaches {v} key(s) to the right; use {}", fixes.join(" or "))));
                }
            }
            (Some(Causality::Causal) | None, true) => {}
            (Some(Causality::NotCausal(_) | Causality::CausalWhenZero(_)), false) => {}
            (Some(Causality::Causal) | None, false) => cx.err(&at, contradiction("that mask is causal; remove `causal: false` or use a non-causal mask")),
        }
    }
    let (Some(dtype), Some(head_dim)) = (dtype, head_dim) else {
        return None;
    };
    if tune_failed {
        return None;
    }
    let mut spec = KernelSpec::new(dtype, head_dim, mask.mask.clone(), score.score.clone());
    spec.gqa = gqa;
    spec.scale = scale;
    spec.layout = layout;
    if let Some(s) = sparse {
        spec.sparse_block = s;
    } else if seen.contains_key("sparse_block") {
        return None;
    }
    let span_for = |path: &str, mask: &MaskOut| -> TokenStream {
        let pick = |k: &str| spans.get(k).cloned().unwrap_or_else(|| name_tokens.clone());
        if path.starts_with("mask.predicate") || path.starts_with("mask.block_sparse.mask") {
            mask.user
                .as_ref()
                .map(|p| p.to_token_stream())
                .unwrap_or_else(|| pick("mask"))
        } else if path.starts_with("score.user") {
            score
                .user
                .as_ref()
                .map(|p| p.to_token_stream())
                .unwrap_or_else(|| pick("score"))
        } else if path.starts_with("mask") {
            let field = path.rsplit('.').next().unwrap_or("");
            mask.arg_spans
                .get(field)
                .cloned()
                .unwrap_or_else(|| pick("mask"))
        } else if path.starts_with("softcap") || path == "score" {
            pick("score")
        } else if path.starts_with("scale") {
            pick("scale")
        } else if path.starts_with("sparse_block") {
            pick("sparse_block")
        } else if path.starts_with("layout") {
            pick("layout")
        } else {
            name_tokens.clone()
        }
    };
    if let Err(es) = validate_spec(&spec) {
        for e in &es {
            cx.err(&span_for(&e.path, &mask), spec_msg(e));
        }
    }
    let problem = Problem {
        batch: 1,
        heads_q: 1,
        heads_kv: 1,
        seq_q: 1,
        seq_k: 1,
        mask: mask.params.clone(),
        softcap: score.softcap,
    };
    if let Err(es) = validate_problem(&spec, &problem) {
        for e in es
            .iter()
            .filter(|e| e.path.starts_with("mask") || e.path.starts_with("softcap"))
        {
            cx.err(&span_for(&e.path, &mask), spec_msg(e));
        }
    }
    if cx.errors.len() > before {
        return None;
    }
    if backward {
        check_backward(
            &mut cx,
            &spec,
            spans
                .get("backward")
                .cloned()
                .unwrap_or(name_tokens.clone()),
        );
    }
    let tune_vals = match &tune {
        Some(lists) => {
            check_space(
                &mut cx,
                &spec,
                lists,
                spans.get("tune").cloned().unwrap_or(name_tokens.clone()),
            );
            Some(
                lists
                    .clone()
                    .map(|l| l.into_iter().map(|(v, _)| v).collect::<Vec<_>>()),
            )
        }
        None => {
            if default_search_space(&spec, ARCH).is_empty() {
                cx.err(&d.name, "no config of the default tuning space is valid for this spec: give a `tune` space");
            }
            None
        }
    };
    if cx.errors.len() > before {
        return None;
    }
    Some(Decl {
        spec,
        mask_params: mask.params,
        softcap: score.softcap,
        mask_fn: mask.user,
        score_fn: score.user,
        tune: tune_vals,
        backward,
    })
}

/// `backward: true` only for a variant the backward kernels cover (spanned at the value).
fn check_backward(cx: &mut Ctx<'_>, spec: &KernelSpec, at: TokenStream) {
    if let Err(es) = backward_supported(spec) {
        // a user score function's derivatives are in its companion, which the expansion
        // asserts (the placeholder here cannot know them)
        for e in es.iter().filter(|e| e.path != "score.grad") {
            cx.err(
                &at,
                format!(
                    "`backward: true`: {} (fix: remove `backward: true`, or {})",
                    format_args!("{}: {}", e.path, e.message),
                    e.fix
                ),
            );
        }
    }
}

/// Every listed value must occur in at least one valid config; the space must not be empty.
fn check_space(cx: &mut Ctx<'_>, spec: &KernelSpec, lists: &[TuneList; 4], tune_span: TokenStream) {
    let mut configs = Vec::new();
    for (m, _) in &lists[0] {
        for (n, _) in &lists[1] {
            for (w, _) in &lists[2] {
                for (s, _) in &lists[3] {
                    let t = TileConfig::new(*m, *n, *w, *s);
                    configs.push((t, t.valid(spec, ARCH)));
                }
            }
        }
    }
    let get = |t: &TileConfig, i: usize| [t.block_m, t.block_n, t.warps, t.stages][i];
    let any_valid = configs.iter().any(|(_, r)| r.is_ok());
    let mut reported = false;
    for (i, list) in lists.iter().enumerate() {
        let key = TUNE_KEYS[i];
        for (v, at) in list {
            let Some(at) = at else { continue };
            let with: Vec<_> = configs.iter().filter(|(t, _)| get(t, i) == *v).collect();
            if with.iter().any(|(_, r)| r.is_ok()) {
                continue;
            }
            let errs: Vec<&SpecError> = with
                .iter()
                .filter_map(|(_, r)| r.as_ref().err())
                .flatten()
                .collect();
            let own = format!("tile.{key}");
            let own_err = errs.iter().find(|e| e.path == own);
            if own_err.is_none() && !any_valid {
                // Not this value's fault alone: the empty-space error below covers it.
                continue;
            }
            let e = own_err.or_else(|| errs.first());
            let why = e
                .map(|e| format!("{} (fix: {})", e.message, e.fix))
                .unwrap_or_default();
            let t = with.first().map(|(t, _)| t.suffix()).unwrap_or_default();
            cx.err(
                at,
                format!("{key} = {v} never gives a valid tile config (e.g. {t}): {why}"),
            );
            reported = true;
        }
    }
    if !reported && !any_valid {
        let (t, r) = &configs[0];
        let e = r
            .as_ref()
            .err()
            .and_then(|e| e.first())
            .map(spec_msg)
            .unwrap_or_default();
        cx.err_span(
            tune_span
                .into_iter()
                .next()
                .map(|t| t.span())
                .unwrap_or_else(Span::call_site),
            format!(
                "no config of the tuning space is valid for {} (e.g. {}: {e}); widen the lists",
                ARCH.sm_name(),
                t.suffix()
            ),
        );
    }
}

/// The user functions a declaration names, even when it has errors (for the placeholder).
pub(crate) fn user_fns(d: &KernelDecl) -> (Option<syn::Path>, Option<syn::Path>) {
    let mut sink = Vec::new();
    let mut cx = Ctx { errors: &mut sink };
    let (mut m, mut s) = (None, None);
    for e in &d.entries {
        if let Value::Expr(x) = &e.value {
            if e.key == "mask" {
                m = check_mask(&mut cx, x).and_then(|o| o.user);
            } else if e.key == "score" {
                s = check_score(&mut cx, x).and_then(|o| o.user);
            }
        }
    }
    (m, s)
}
