//! Translator of attnforge mask and score functions, written in a subset of Rust, to CUDA
//! device functions.
//!
//! The researcher writes a plain Rust function; the `#[attnforge::mask]` / `#[attnforge::score]`
//! attribute macros (crate `attnforge-macros`) keep it callable (the f64 reference and the host
//! block-list builder call it) and use this crate to translate its body to CUDA, so the spec and
//! the oracle cannot drift. A TOML spec reader can use [`parse_mask_fn`] / [`parse_score_fn`] on
//! the same source text.
//!
//! ```
//! let def = attnforge_dsl::parse_mask_fn(
//!     "fn doc_causal(q: u32, kv: u32, doc: &[u32]) -> bool {
//!          kv <= q && doc[q as usize] == doc[kv as usize]
//!      }",
//! )
//! .unwrap();
//! assert_eq!(def.name, "doc_causal");
//! assert!(def.cuda.contains("bool doc_causal(int b, int h, long long q_pos, long long kv_pos, const unsigned* doc)"));
//! ```
//!
//! # Pipeline
//! `parse` (syn -> spanned AST, rejects everything outside the subset) -> `check` (type
//! inference as rustc does it for the subset) -> `lower` (C statements/expressions with Rust
//! semantics made explicit) -> `emit` (CUDA text). All errors of a function are collected.
//! For the backward ([`translate_score_grad`]), `grad` derives from the checked tree one
//! function per differentiation target (the score, each `f32` parameter, each indexing of an
//! `&[f32]` table), in the same subset, which goes through `check`, `lower` and `emit` again
//! and is printed back as Rust (`rust`) for the host.
//!
//! # Signature rule
//! Mask: `fn name([b], [h], q, kv, params...) -> bool`; score:
//! `fn name(score: f32, [b], [h], q, kv, params...) -> f32`. After the score, leading parameters
//! named `b`/`batch` (optionally `_`-prefixed) and then `h`/`head` are the batch and head
//! indices; each is optional. The next two parameters, whatever their names, are the query and
//! key **positions** (variants.md section 0). Index parameters are `u32`, `i32` or `i64`.
//! The remaining parameters are user parameters: scalars `u32`, `i32`, `i64`, `u64`, `f32`,
//! `bool`, or read-only per-token arrays `&[u32]`, `&[i32]`, `&[f32]`.
//!
//! # Emitted C signature
//! `bool name(int b, int h, long long q_pos, long long kv_pos, <params>)` for masks and
//! `float name(float score, int b, int h, long long q_pos, long long kv_pos, <params>)` for
//! scores; the positions are converted to the declared Rust types inside (`(unsigned)q_pos`).
//! Parameters map to `unsigned`, `int`, `long long`, `unsigned long long`, `float`, `bool`,
//! `const unsigned*`, `const int*`, `const float*`. The text starts with a guarded block of
//! helpers (`AF_DSL_HELPERS`), so several translated functions can share one `.cu` file.
//!
//! # Semantics
//! - Integer `+ - *` wrap (Rust's release-mode semantics; debug Rust would panic instead):
//!   signed arithmetic is done in the unsigned type so CUDA has no undefined overflow.
//! - `/` and `%` truncate toward zero as in Rust. Division by zero, `MIN / -1` and
//!   out-of-bounds array indices panic in Rust and are errors of the host evaluator
//!   ([`eval`], with the position); the CUDA result is then unspecified (the CPU simulator
//!   raises SIGFPE on an integer division by zero).
//! - Expressions nest at most [`MAX_NESTING`] levels (an error, never a stack overflow).
//! - Shifts mask the shift amount by the bit width (Rust release semantics).
//! - `as` casts follow Rust: integer casts wrap, float-to-integer casts saturate and map NaN
//!   to 0 (through helpers), `bool as` integer gives 0/1.
//! - Unsuffixed integer literals default to `i32`, float literals to `f32` (`f64` is not
//!   supported).
//! - `f32` math: `exp exp2 ln log2 log10 sqrt tanh sin cos floor ceil abs powf min max` map to
//!   `expf ... fminf fmaxf`; on a GPU these may differ from Rust's libm by a few ulps.

mod check;
mod emit;
pub mod eval;
mod grad;
mod lower;
mod parse;
mod rust;

use proc_macro2::Span;
use std::fmt;

/// Whether a user function is an element mask or a score modification.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FnKind {
    /// `fn(b, h, q, kv, params...) -> bool`: is key `kv` visible to query `q`.
    Mask,
    /// `fn(score, b, h, q, kv, params...) -> f32`: the modified score.
    Score,
}

impl FnKind {
    /// `"mask"` or `"score"`.
    pub fn as_str(self) -> &'static str {
        match self {
            FnKind::Mask => "mask",
            FnKind::Score => "score",
        }
    }
}

/// The type of a user parameter (after the index parameters).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ParamKind {
    /// `u32` scalar (`unsigned`).
    U32,
    /// `i32` scalar (`int`).
    I32,
    /// `i64` scalar (`long long`).
    I64,
    /// `u64` scalar (`unsigned long long`).
    U64,
    /// `f32` scalar (`float`).
    F32,
    /// `bool` scalar (`bool`).
    Bool,
    /// Per-token array `&[u32]` (`const unsigned*`).
    SliceU32,
    /// Per-token array `&[i32]` (`const int*`).
    SliceI32,
    /// Per-token array `&[f32]` (`const float*`).
    SliceF32,
}

impl ParamKind {
    /// The Rust spelling of the type, e.g. `"&[u32]"`.
    pub fn rust_type(self) -> &'static str {
        match self {
            ParamKind::U32 => "u32",
            ParamKind::I32 => "i32",
            ParamKind::I64 => "i64",
            ParamKind::U64 => "u64",
            ParamKind::F32 => "f32",
            ParamKind::Bool => "bool",
            ParamKind::SliceU32 => "&[u32]",
            ParamKind::SliceI32 => "&[i32]",
            ParamKind::SliceF32 => "&[f32]",
        }
    }

    /// The C type of the parameter in the emitted signature, e.g. `"const unsigned*"`.
    pub fn c_type(self) -> &'static str {
        match self {
            ParamKind::U32 => "unsigned",
            ParamKind::I32 => "int",
            ParamKind::I64 => "long long",
            ParamKind::U64 => "unsigned long long",
            ParamKind::F32 => "float",
            ParamKind::Bool => "bool",
            ParamKind::SliceU32 => "const unsigned*",
            ParamKind::SliceI32 => "const int*",
            ParamKind::SliceF32 => "const float*",
        }
    }

    /// Whether this is a per-token array (a device pointer in CUDA).
    pub fn is_array(self) -> bool {
        matches!(
            self,
            ParamKind::SliceU32 | ParamKind::SliceI32 | ParamKind::SliceF32
        )
    }

    /// Inverse of [`ParamKind::rust_type`].
    pub fn from_rust_type(s: &str) -> Option<ParamKind> {
        ALL_PARAM_KINDS.iter().copied().find(|k| k.rust_type() == s)
    }
}

const ALL_PARAM_KINDS: [ParamKind; 9] = [
    ParamKind::U32,
    ParamKind::I32,
    ParamKind::I64,
    ParamKind::U64,
    ParamKind::F32,
    ParamKind::Bool,
    ParamKind::SliceU32,
    ParamKind::SliceI32,
    ParamKind::SliceF32,
];

/// A user parameter: its Rust name (also its C name in the signature) and its type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamDef {
    /// The parameter name, as written in Rust.
    pub name: String,
    /// Its type.
    pub kind: ParamKind,
}

/// Which optional index parameters the Rust function declares (positions are always there).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IndexParams {
    /// The function takes a batch index (`b`/`batch`).
    pub batch: bool,
    /// The function takes a head index (`h`/`head`).
    pub head: bool,
}

/// A translated mask or score function.
#[derive(Clone, Debug, PartialEq)]
pub struct UserFnDef {
    /// Function name: the Rust name and the CUDA symbol.
    pub name: String,
    /// Mask or score.
    pub kind: FnKind,
    /// Self-contained CUDA text: the guarded helper block and the `__device__` function.
    pub cuda: String,
    /// User parameters, in order, after the fixed index parameters of the C signature.
    pub params: Vec<ParamDef>,
    /// Which optional index parameters the Rust function declares.
    pub index: IndexParams,
}

/// An error in a function given as source text, with a 1-based line and column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceError {
    /// 1-based line in the source text.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
    /// What is wrong and what is allowed.
    pub message: String,
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.column, self.message)
    }
}

impl std::error::Error for SourceError {}

/// Translates a parsed function. Returns every error found, each with the span of the
/// offending expression (for `syn::Error::to_compile_error`).
pub fn translate_fn(item: &syn::ItemFn, kind: FnKind) -> Result<UserFnDef, Vec<syn::Error>> {
    // The body only: attributes (doc comments) and the signature do not nest.
    check_nesting(quote::ToTokens::to_token_stream(&item.block)).map_err(|e| vec![e])?;
    let mut errors = Errors::default();
    let ast = parse::parse_fn(item, kind, &mut errors);
    if !ast.sig_complete {
        return Err(errors.into_vec());
    }
    let typed = check::check(&ast, &mut errors);
    if !errors.is_empty() {
        return Err(errors.into_vec());
    }
    let lowered = lower::lower(&ast, &typed);
    Ok(UserFnDef {
        name: ast.name.clone(),
        kind,
        cuda: emit::emit(&lowered),
        params: ast
            .params
            .iter()
            .map(|p| ParamDef {
                name: p.name.clone(),
                kind: p.kind,
            })
            .collect(),
        index: IndexParams {
            batch: ast.index.iter().any(|p| p.role == parse::Role::Batch),
            head: ast.index.iter().any(|p| p.role == parse::Role::Head),
        },
    })
}

/// One generated derivative function: its symbol (CUDA and Rust) and its Rust item text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GradFnDef {
    /// Function name, e.g. `softcap_grad_score`.
    pub name: String,
    /// The Rust item `fn name(<the user's parameters>) -> f32 { .. }` (`-> i64` for an index
    /// function), for native host evaluation.
    pub rust: String,
}

/// The derivative of a score function in one learnable float parameter reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamGradDef {
    /// Index of the parameter in [`UserFnDef::params`] (an `f32` or `&[f32]` parameter).
    pub param: usize,
    /// `d s' / d param` (a scalar) or `d s' / d param[index]` (one indexing of a table).
    pub partial: GradFnDef,
    /// For a table: the index the expression reads (`None` for a scalar).
    pub index: Option<GradFnDef>,
}

/// The symbolic derivatives of a score function (`#[attnforge::score(backward)]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScoreGradDef {
    /// Self-contained CUDA text (the guarded helper block, then one `__device__` function per
    /// derivative and index function, all with the score function's C signature).
    pub cuda: String,
    /// `d s' / d score`.
    pub d_score: GradFnDef,
    /// One entry per `f32` parameter and per indexing `a[i]` of an `&[f32]` parameter, in
    /// declaration and then source order.
    pub params: Vec<ParamGradDef>,
}

/// Translates a score function and derives its derivatives (see [`ScoreGradDef`]). Errors
/// as [`translate_fn`], plus one per expression that cannot be differentiated, at its span.
pub fn translate_score_grad(
    item: &syn::ItemFn,
) -> Result<(UserFnDef, ScoreGradDef), Vec<syn::Error>> {
    let def = translate_fn(item, FnKind::Score)?;
    let mut errors = Errors::default();
    let ast = parse::parse_fn(item, FnKind::Score, &mut errors);
    let typed = check::check(&ast, &mut errors);
    let grads = checked_grads(&ast, &typed).map_err(|e| {
        let mut errors = Errors::default();
        for (span, msg) in e {
            errors.push(span, msg);
        }
        errors.into_vec()
    })?;
    let mut cuda = String::new();
    let mut out = ScoreGradDef {
        cuda: String::new(),
        d_score: GradFnDef {
            name: String::new(),
            rust: String::new(),
        },
        params: Vec::new(),
    };
    let mut def_of = |f: &(parse::FnAst, check::Typed)| {
        let text = emit::emit(&lower::lower(&f.0, &f.1));
        if cuda.is_empty() {
            cuda = text;
        } else {
            cuda.push_str(text.strip_prefix(emit::HELPERS).unwrap_or(&text));
        }
        GradFnDef {
            name: f.0.name.clone(),
            rust: rust::print_fn(&f.0, &f.1),
        }
    };
    for g in &grads {
        let partial = def_of(&g.partial);
        match g.target {
            grad::Target::Score => out.d_score = partial,
            grad::Target::Scalar(p) | grad::Target::Elem(p, _) => {
                let index = g.index.as_ref().map(&mut def_of);
                out.params.push(ParamGradDef {
                    param: p,
                    partial,
                    index,
                });
            }
        }
    }
    out.cuda = cuda;
    Ok((def, out))
}

/// A derivative function and its index function, each checked.
pub(crate) struct CheckedGrad {
    pub target: grad::Target,
    pub partial: (parse::FnAst, check::Typed),
    pub index: Option<(parse::FnAst, check::Typed)>,
}

/// Derives and type-checks every derivative of a checked score function.
pub(crate) fn checked_grads(
    ast: &parse::FnAst,
    typed: &check::Typed,
) -> Result<Vec<CheckedGrad>, Vec<(Rng, String)>> {
    let body_span = ast
        .body
        .tail
        .as_ref()
        .map_or_else(|| Rng::from(Span::call_site()), |t| t.span);
    let depth_limit = |f: &parse::FnAst| -> Result<(), Vec<(Rng, String)>> {
        if grad::depth(&f.body) > MAX_NESTING {
            return Err(vec![(body_span, format!("the derivative `{}` of this function nests deeper than {MAX_NESTING} levels: split the function with `let` bindings", f.name))]);
        }
        Ok(())
    };
    let check = |f: parse::FnAst| -> Result<(parse::FnAst, check::Typed), Vec<(Rng, String)>> {
        depth_limit(&f)?;
        let mut errors = Errors::default();
        let typed = check::check(&f, &mut errors);
        if !errors.is_empty() {
            let msgs: Vec<String> = errors.into_vec().iter().map(ToString::to_string).collect();
            return Err(vec![(body_span, format!("internal error of the derivative pass (please report): `{}` does not type-check: {}", f.name, msgs.join("; ")))]);
        }
        Ok((f, typed))
    };
    let mut out = Vec::new();
    for g in grad::derive(ast, typed)? {
        out.push(CheckedGrad {
            target: g.target,
            partial: check(g.partial)?,
            index: g.index.map(check).transpose()?,
        });
    }
    Ok(out)
}

/// Parses and derives a score function given as source text (see [`translate_score_grad`]).
pub fn parse_score_grad(src: &str) -> Result<(UserFnDef, ScoreGradDef), Vec<SourceError>> {
    let item = parse_item(src)?;
    translate_score_grad(&item).map_err(|errs| errs.iter().flat_map(to_source_errors).collect())
}

/// Parses and translates a mask function given as Rust source text
/// (`fn name(q: u32, kv: u32, ...) -> bool { ... }`).
pub fn parse_mask_fn(src: &str) -> Result<UserFnDef, Vec<SourceError>> {
    parse_src(src, FnKind::Mask)
}

/// Parses and translates a score function given as Rust source text
/// (`fn name(score: f32, q: u32, kv: u32, ...) -> f32 { ... }`).
pub fn parse_score_fn(src: &str) -> Result<UserFnDef, Vec<SourceError>> {
    parse_src(src, FnKind::Score)
}

fn parse_src(src: &str, kind: FnKind) -> Result<UserFnDef, Vec<SourceError>> {
    let item = parse_item(src)?;
    translate_fn(&item, kind).map_err(|errs| errs.iter().flat_map(to_source_errors).collect())
}

/// Parses source text as a function, after bounding its nesting (syn's parser recurses).
pub(crate) fn parse_item(src: &str) -> Result<syn::ItemFn, Vec<SourceError>> {
    let tokens: proc_macro2::TokenStream = src
        .parse()
        .map_err(|e: proc_macro2::LexError| to_source_errors(&syn::Error::from(e)))?;
    check_nesting(tokens.clone()).map_err(|e| to_source_errors(&e))?;
    syn::parse2(tokens).map_err(|e| to_source_errors(&e))
}

/// The deepest expression nesting a mask or score function may have. Every step of the
/// pipeline (syn's parser, the checker, the lowering, the emitter, the host evaluator) walks
/// expressions recursively; this bound keeps them within a 2 MiB thread stack.
pub const MAX_NESTING: usize = 512;

/// Extra levels charged for entering a `{ .. }` block.
const BLOCK_COST: usize = 3;

/// Rejects token streams whose expressions may nest deeper than [`MAX_NESTING`], without
/// recursion (the token trees themselves may be nested arbitrarily deep).
///
/// The bound is conservative: within one group, the tokens of a statement or argument (split
/// at `;`, `,` and between a `{ .. }` block and a following `if`/`let`/`return`) may each add a
/// level (`a + b + c` nests once per operator, `- - x` once per sign, `else if` once per
/// branch), and a nested group starts from the level of the segment it is in.
pub(crate) fn check_nesting(tokens: proc_macro2::TokenStream) -> Result<(), syn::Error> {
    use proc_macro2::{Delimiter, TokenTree};
    let mut stack = vec![(tokens, 0usize)];
    while let Some((stream, base)) = stack.pop() {
        let toks: Vec<TokenTree> = stream.into_iter().collect();
        let mut start = 0;
        for i in 0..=toks.len() {
            let ends = match toks.get(i) {
                None => true,
                Some(TokenTree::Punct(p)) => matches!(p.as_char(), ';' | ','),
                Some(TokenTree::Ident(id)) => {
                    i > start
                        && matches!(&toks[i - 1], TokenTree::Group(g) if g.delimiter() == Delimiter::Brace)
                        && (id == "if" || id == "let" || id == "return")
                }
                _ => false,
            };
            if !ends {
                continue;
            }
            let segment = &toks[start..i];
            let depth = base + segment.len();
            if depth > MAX_NESTING {
                let span = segment
                    .first()
                    .map_or_else(proc_macro2::Span::call_site, TokenTree::span);
                return Err(syn::Error::new(
                    span,
                    format!(
                        "expression nested deeper than {MAX_NESTING} levels (each operator, \
                         parenthesis, block, cast or `else if` adds a level): split it with \
                         `let` bindings"
                    ),
                ));
            }
            for t in segment {
                if let TokenTree::Group(g) = t {
                    // A block costs syn and the walks several frames (block, statement,
                    // expression), a parenthesis or bracket about one.
                    let cost = if g.delimiter() == Delimiter::Brace {
                        BLOCK_COST
                    } else {
                        0
                    };
                    stack.push((g.stream(), depth + cost));
                }
            }
            // A separator token is not part of the next segment; a keyword is.
            start = if matches!(toks.get(i), Some(TokenTree::Ident(_))) {
                i
            } else {
                i + 1
            };
        }
    }
    Ok(())
}

fn to_source_errors(e: &syn::Error) -> Vec<SourceError> {
    e.clone()
        .into_iter()
        .map(|e| {
            let start = e.span().start();
            SourceError {
                line: start.line,
                column: start.column + 1,
                message: e.to_string(),
            }
        })
        .collect()
}

/// A source range: the spans of its first and last tokens.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rng(pub Span, pub Span);

impl From<Span> for Rng {
    fn from(s: Span) -> Rng {
        Rng(s, s)
    }
}

/// The range covered by a syntax node.
pub(crate) fn rng(node: &impl quote::ToTokens) -> Rng {
    let mut it = node.to_token_stream().into_iter();
    let first = it.next().map(|t| t.span()).unwrap_or_else(Span::call_site);
    let last = it.last().map(|t| t.span()).unwrap_or(first);
    Rng(first, last)
}

/// Error collector (serde's `Ctxt`): every check reports here and goes on.
#[derive(Default, Debug)]
pub(crate) struct Errors(Vec<syn::Error>);

impl Errors {
    pub(crate) fn push(&mut self, span: impl Into<Rng>, msg: impl fmt::Display) {
        let Rng(start, end) = span.into();
        let tokens: proc_macro2::TokenStream = [
            proc_macro2::TokenTree::Ident(proc_macro2::Ident::new("start", start)),
            proc_macro2::TokenTree::Ident(proc_macro2::Ident::new("end", end)),
        ]
        .into_iter()
        .collect();
        // `new_spanned` underlines from the first to the last token, also on stable.
        self.0.push(syn::Error::new_spanned(tokens, msg));
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
    pub(crate) fn into_vec(self) -> Vec<syn::Error> {
        self.0
    }
}

/// What the subset allows, appended to "not supported" messages.
pub(crate) const ALLOWED: &str =
    "mask/score functions allow arithmetic, comparisons, `&&`/`||`/`!`, \
`if`/`else`, immutable `let`, `as` casts, literals, `min`/`max`/`abs`, f32 math \
(`exp`, `ln`, `sqrt`, `tanh`, ...), parameters and indexing of array parameters";
