//! Proc-macros of attnforge: `#[mask]` and `#[score]` turn a plain Rust function into a CUDA
//! device function at `cargo build` time while keeping the Rust function callable.
//!
//! ```
//! // (Through the facade: `#[attnforge::mask]`.)
//! #[attnforge_macros::mask]
//! fn doc_causal(q: u32, kv: u32, doc: &[u32]) -> bool {
//!     kv <= q && doc[q as usize] == doc[kv as usize]
//! }
//!
//! fn main() {
//!     // The function is unchanged: the reference and the block-list builder call it.
//!     assert!(doc_causal(3, 1, &[0, 0, 0, 0]));
//!     // A companion module with the same name holds the translation.
//!     assert!(doc_causal::CUDA.contains("bool doc_causal(int b, int h, long long q_pos"));
//!     let p = doc_causal::Params::new(&[0, 0, 1, 1]);
//!     assert!(!doc_causal::eval(0, 0, 2, 1, &p));
//! }
//! ```
//!
//! # Expansion contract
//! The attribute emits the function unchanged, plus a module of the same name (modules live
//! in the type namespace, functions in the value namespace, so both coexist) with the
//! function's visibility, `#[doc(hidden)]`, that depends on no crate:
//! - `NAME: &str`, `KIND: &str` (`"mask"` / `"score"`), `CUDA: &str` (self-contained device
//!   text, see `attnforge_dsl`), `PARAMS: &[(&str, &str)]` (user parameters after the index
//!   parameters: name and Rust type, e.g. `("doc", "&[u32]")`), `HAS_BATCH` / `HAS_HEAD: bool`;
//! - `struct Params<'a>` with one public field per user parameter and `Params::new(..)`;
//! - `fn eval(b: u32, h: u32, q: i64, kv: i64, p: &Params<'_>) -> bool` (masks) or
//!   `fn eval(score: f32, b: u32, h: u32, q: i64, kv: i64, p: &Params<'_>) -> f32` (scores):
//!   calls the user's function with the uniform index signature (positions converted with
//!   `as` to the declared types), for the reference and the host block-list builder.
//! - with `#[score(backward)]` only: `BACKWARD_CUDA: &str` (the derivatives' device functions),
//!   `d_score(score, b, h, q, kv, p) -> f32` (`ds'/ds`), `d_params(score, b, h, q, kv, p, out)`
//!   (pushes `(k, ds'/dtheta[k])`), `learnable(p) -> Vec<f64>` (the `f32` parameters and
//!   `&[f32]` table elements in declaration order: the vector `theta`) and
//!   `host_score_diff(p) -> attnforge::reference::DiffScoreFn` (names the facade crate
//!   `attnforge`), all derived symbolically from the body (`attnforge_dsl::translate_score_grad`;
//!   docs/dsl.md, "Derivatives").
//!
//! Only free functions are supported (a module cannot be emitted inside an `impl`). Anything
//! outside the translatable subset is a compile error at the offending expression; all errors
//! are reported at once and the function is still emitted, so one mistake does not cascade.

mod kernel;

use attnforge_dsl::{FnKind, ScoreGradDef, UserFnDef};
use proc_macro::TokenStream;
use proc_macro2::TokenStream as TokenStream2;
use quote::{format_ident, quote};

/// Marks an element-mask function `fn name([b], [h], q, kv, params...) -> bool` and
/// translates it to CUDA (see the crate docs for the expansion).
#[proc_macro_attribute]
pub fn mask(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(attr.into(), item.into(), FnKind::Mask).into()
}

/// Marks a score-modification function `fn name(score: f32, [b], [h], q, kv, params...) -> f32`
/// and translates it to CUDA (see the crate docs for the expansion).
#[proc_macro_attribute]
pub fn score(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(attr.into(), item.into(), FnKind::Score).into()
}

/// Declares typed attention kernels: `attnforge::kernel! { pub Name { mask: .., score: ..,
/// dtype: bf16, head_dim: 128, tune: { .. } } }`, or a data-dependent family with
/// `family:` (`pub Lm { family: landmark(mem_freq: 63, mode: retrieval(top_k: 4)),
/// dtype: bf16, head_dim: 128 }`; also `hax(..)`, `cca(..)`, `topk(..)`, `lse_merge`).
/// See `docs/dsl.md` for the syntax, the generated items and the compile-time checks.
#[proc_macro]
pub fn kernel(input: TokenStream) -> TokenStream {
    kernel::kernel(input.into()).into()
}

fn expand(attr: TokenStream2, item: TokenStream2, kind: FnKind) -> TokenStream2 {
    let mut errors = Vec::new();
    // `#[score(backward)]`: also derive the backward (`attnforge_dsl::translate_score_grad`).
    let backward = kind == FnKind::Score && attr.to_string() == "backward";
    if !attr.is_empty() && !backward {
        let msg = match kind {
            FnKind::Mask => "`#[mask]` takes no arguments".to_string(),
            FnKind::Score => "`#[score]` takes no arguments or `backward` (`#[score(backward)]`: also derive the symbolic derivatives for the backward pass)".to_string(),
        };
        errors.push(syn::Error::new_spanned(&attr, msg));
    }
    let func: syn::ItemFn = match syn::parse2(item.clone()) {
        Ok(f) => f,
        Err(e) => {
            let err = e.to_compile_error();
            return quote! { #item #err };
        }
    };
    let translated = if backward {
        attnforge_dsl::translate_score_grad(&func).map(|(d, g)| (d, Some(g)))
    } else {
        attnforge_dsl::translate_fn(&func, kind).map(|d| (d, None))
    };
    match translated {
        Ok((def, grad)) if errors.is_empty() => {
            let companion = companion(&func, &def, grad.as_ref());
            quote! { #func #companion }
        }
        Ok(_) => {
            let errs = errors.iter().map(syn::Error::to_compile_error);
            quote! { #func #(#errs)* }
        }
        Err(mut e) => {
            errors.append(&mut e);
            let errs = errors.iter().map(syn::Error::to_compile_error);
            quote! { #func #(#errs)* }
        }
    }
}

fn rust_type(kind: attnforge_dsl::ParamKind) -> TokenStream2 {
    use attnforge_dsl::ParamKind as K;
    match kind {
        K::U32 => quote!(u32),
        K::I32 => quote!(i32),
        K::I64 => quote!(i64),
        K::U64 => quote!(u64),
        K::F32 => quote!(f32),
        K::Bool => quote!(bool),
        K::SliceU32 => quote!(&'a [u32]),
        K::SliceI32 => quote!(&'a [i32]),
        K::SliceF32 => quote!(&'a [f32]),
    }
}

fn companion(func: &syn::ItemFn, def: &UserFnDef, grad: Option<&ScoreGradDef>) -> TokenStream2 {
    let vis = &func.vis;
    let ident = &func.sig.ident;
    let name = &def.name;
    let kind = def.kind.as_str();
    let cuda = &def.cuda;
    let pnames: Vec<&str> = def.params.iter().map(|p| p.name.as_str()).collect();
    let ptypes: Vec<&str> = def.params.iter().map(|p| p.kind.rust_type()).collect();
    let fields: Vec<syn::Ident> = def
        .params
        .iter()
        .map(|p| format_ident!("{}", p.name))
        .collect();
    let ftypes: Vec<TokenStream2> = def.params.iter().map(|p| rust_type(p.kind)).collect();
    let has_b = def.index.batch;
    let has_h = def.index.head;

    let args = index_args(func, def);
    let (score_param, ret) = match def.kind {
        FnKind::Mask => (quote!(), quote!(bool)),
        FnKind::Score => (quote!(score: f32,), quote!(f32)),
    };
    let (owned, borrowed, visited) = param_tokens(def);
    let (host_mask, host_score) = match def.kind {
        FnKind::Mask => (
            quote!(move |b, h, q, kv| eval(b, h, q, kv, &Params::new(#(#borrowed),*))),
            quote!(|_: f32, _: u32, _: u32, _: i64, _: i64| -> f32 {
                ::core::panic!("`{}` is a mask function, not a score function", NAME)
            }),
        ),
        FnKind::Score => (
            quote!(|_: u32, _: u32, _: i64, _: i64| -> bool {
                ::core::panic!("`{}` is a score function, not a mask function", NAME)
            }),
            quote!(move |s, b, h, q, kv| eval(s, b, h, q, kv, &Params::new(#(#borrowed),*))),
        ),
    };
    let backward = grad.map_or_else(TokenStream2::new, |g| backward_items(def, g, &args));
    let grad_consts = grad_consts(grad);
    let doc = format!("Companion of the attnforge {kind} function `{name}`: its CUDA translation and a uniform call.");
    quote! {
        #[doc = #doc]
        #[doc(hidden)]
        #[allow(non_snake_case, dead_code, clippy::all)]
        #vis mod #ident {
            /// Function name (the CUDA symbol).
            pub const NAME: &str = #name;
            /// `"mask"` or `"score"`.
            pub const KIND: &str = #kind;
            /// Self-contained CUDA device-function text.
            pub const CUDA: &str = #cuda;
            /// User parameters after the index parameters: name and Rust type.
            pub const PARAMS: &[(&str, &str)] = &[#((#pnames, #ptypes)),*];
            /// Whether the Rust function takes a batch index.
            pub const HAS_BATCH: bool = #has_b;
            /// Whether the Rust function takes a head index.
            pub const HAS_HEAD: bool = #has_h;
            #grad_consts

            /// Values of the user parameters.
            #[derive(Clone, Copy, Debug)]
            pub struct Params<'a> {
                #(#[doc = "User parameter."] pub #fields: #ftypes,)*
                #[doc(hidden)]
                pub _lifetime: ::core::marker::PhantomData<&'a ()>,
            }

            impl<'a> Params<'a> {
                /// The user parameters, in declaration order.
                pub fn new(#(#fields: #ftypes),*) -> Self {
                    Params { #(#fields,)* _lifetime: ::core::marker::PhantomData }
                }
            }

            /// Calls the function with the uniform index signature (positions as `i64`).
            #[inline]
            pub fn eval(#score_param b: u32, h: u32, q: i64, kv: i64, p: &Params<'_>) -> #ret {
                let _ = (b, h);
                super::#ident(#(#args,)* #(p.#fields),*)
            }

            /// Reports each user parameter value by name (arrays as owned `Vec`s), for the
            /// `kernel!` macro's run-time parameters.
            pub fn visit(p: &Params<'_>, f: &mut dyn FnMut(&'static str, &dyn ::core::any::Any)) {
                let _ = (&p, &f);
                #(#visited)*
            }

            /// `eval` of a mask as a `'static` closure owning copies of the parameters
            /// (panics when called on a score function; `kernel!` rejects that at compile time).
            #[allow(unused_variables)]
            pub fn host_mask(p: &Params<'_>) -> impl Fn(u32, u32, i64, i64) -> bool + Send + Sync + 'static {
                #(#owned)*
                #host_mask
            }

            /// `eval` of a score function as a `'static` closure owning copies of the
            /// parameters (panics when called on a mask).
            #[allow(unused_variables)]
            pub fn host_score(p: &Params<'_>) -> impl Fn(f32, u32, u32, i64, i64) -> f32 + Send + Sync + 'static {
                #(#owned)*
                #host_score
            }

            #backward
        }
    }
}

/// The arguments of a call to the user's function before its user parameters, in its
/// declared order (`score`, then `b`/`h`/`q`/`kv` converted with `as` to the declared types).
fn index_args(func: &syn::ItemFn, def: &UserFnDef) -> Vec<TokenStream2> {
    let mut args = Vec::new();
    let mut index_tys = func.sig.inputs.iter().filter_map(|a| match a {
        syn::FnArg::Typed(pt) => Some(&*pt.ty),
        syn::FnArg::Receiver(_) => None,
    });
    if def.kind == FnKind::Score {
        index_tys.next();
        args.push(quote!(score));
    }
    for (present, v) in [
        (def.index.batch, quote!(b)),
        (def.index.head, quote!(h)),
        (true, quote!(q)),
        (true, quote!(kv)),
    ] {
        if present {
            let ty = index_tys
                .next()
                .expect("index parameter checked by the translator");
            args.push(quote!(#v as #ty));
        }
    }
    args
}

/// Per user parameter: an owned copy for `'static` host closures (`let x = p.x.to_vec();`),
/// the borrow passed back to `Params::new`, and the `visit` call with an `Any`-typed value.
fn param_tokens(def: &UserFnDef) -> (Vec<TokenStream2>, Vec<TokenStream2>, Vec<TokenStream2>) {
    let owned: Vec<TokenStream2> = def
        .params
        .iter()
        .map(|p| {
            let f = format_ident!("{}", p.name);
            if p.kind.is_array() {
                quote!(let #f = p.#f.to_vec();)
            } else {
                quote!(let #f = p.#f;)
            }
        })
        .collect();
    let borrowed: Vec<TokenStream2> = def
        .params
        .iter()
        .map(|p| {
            let f = format_ident!("{}", p.name);
            if p.kind.is_array() {
                quote!(&#f[..])
            } else {
                quote!(#f)
            }
        })
        .collect();
    let visited: Vec<TokenStream2> = def
        .params
        .iter()
        .map(|p| {
            let f = format_ident!("{}", p.name);
            let n = &p.name;
            if p.kind.is_array() {
                quote!(f(#n, &p.#f.to_vec());)
            } else {
                quote!(f(#n, &p.#f);)
            }
        })
        .collect();
    (owned, borrowed, visited)
}

/// The derivatives in the form the backward kernels take (`UserFunction::grad`), for every
/// companion: `GRAD_CUDA` (`BACKWARD_CUDA`, empty without `backward`), `GRAD_SCORE` (the
/// `ds'/ds` function, empty without), `GRAD_PARAMS` (per reference to a learnable parameter:
/// its parameter index, the partial's name, the index function's name or empty).
fn grad_consts(grad: Option<&ScoreGradDef>) -> TokenStream2 {
    let (cuda, d_score) = grad.map_or((String::new(), String::new()), |g| {
        (g.cuda.clone(), g.d_score.name.clone())
    });
    let params = grad.map_or_else(Vec::new, |g| {
        g.params
            .iter()
            .map(|p| {
                let (i, partial) = (p.param, &p.partial.name);
                let index = p.index.as_ref().map_or(String::new(), |f| f.name.clone());
                quote!((#i, #partial, #index))
            })
            .collect()
    });
    quote! {
        /// The derivatives' CUDA text (empty without `#[score(backward)]`).
        pub const GRAD_CUDA: &str = #cuda;
        /// The `ds'/ds` device function (empty without `#[score(backward)]`).
        pub const GRAD_SCORE: &str = #d_score;
        /// Per reference to a learnable parameter: (parameter index, `ds'/dparam` function,
        /// index function of a table or empty).
        pub const GRAD_PARAMS: &[(usize, &str, &str)] = &[#(#params),*];
    }
}

/// The items `#[score(backward)]` adds to the companion: the derivative functions (natively
/// compiled Rust and CUDA text), `d_score`, `d_params`, `learnable` and `host_score_diff`.
/// `args` are the call arguments of the user's function before its user parameters.
fn backward_items(def: &UserFnDef, g: &ScoreGradDef, args: &[TokenStream2]) -> TokenStream2 {
    use attnforge_dsl::ParamKind as K;
    let cuda = &g.cuda;
    let mut items = Vec::new();
    let mut parse_fn = |f: &attnforge_dsl::GradFnDef| -> TokenStream2 {
        match syn::parse_str::<syn::ItemFn>(&f.rust) {
            Ok(mut item) => {
                item.vis = syn::parse_quote!(pub(super));
                items.push(quote!(#item));
                let ident = &item.sig.ident;
                quote!(grad::#ident)
            }
            Err(e) => {
                let msg = format!("internal error of #[score(backward)] (please report): {e}");
                quote!(::core::compile_error!(#msg))
            }
        }
    };
    let fields: Vec<syn::Ident> = def
        .params
        .iter()
        .map(|p| format_ident!("{}", p.name))
        .collect();
    let call = |f: &TokenStream2| quote!(#f(#(#args,)* #(p.#fields),*));
    let d_score_fn = parse_fn(&g.d_score);
    let d_score_call = call(&d_score_fn);
    // Per float parameter, in declaration order: its pushes, then its size in the vector.
    let mut pushes = Vec::new();
    let mut learnable = Vec::new();
    for (i, p) in def.params.iter().enumerate() {
        let f = &fields[i];
        match p.kind {
            K::F32 => {
                learnable.push(quote!(v.push(f64::from(p.#f));));
                for pg in g.params.iter().filter(|pg| pg.param == i) {
                    let c = call(&parse_fn(&pg.partial));
                    pushes.push(quote!(out.push((off, #c));));
                }
                pushes.push(quote!(off += 1;));
            }
            K::SliceF32 => {
                learnable.push(quote!(v.extend(p.#f.iter().map(|&x| f64::from(x)));));
                for pg in g.params.iter().filter(|pg| pg.param == i) {
                    let c = call(&parse_fn(&pg.partial));
                    let Some(index) = &pg.index else { continue };
                    let ic = call(&parse_fn(index));
                    pushes.push(quote! {
                        let g = #c;
                        // An indexing on a branch the forward did not take has derivative 0.
                        if g != 0.0 {
                            let at = match usize::try_from(#ic) {
                                Ok(i) if i < p.#f.len() => off + i,
                                _ => usize::MAX,
                            };
                            out.push((at, g));
                        }
                    });
                }
                pushes.push(quote!(off += p.#f.len();));
            }
            _ => {}
        }
    }
    let owned = Owned::new(def);
    quote! {
        /// CUDA device functions of the derivatives, with the score function's C signature:
        /// `<name>_grad_score`, `<name>_grad_<param>` per `f32` parameter, and
        /// `<name>_grad_<table>_<k>` / `<name>_grad_<table>_<k>_index` per indexing of an
        /// `&[f32]` table (the partial derivative and the element it goes to).
        pub const BACKWARD_CUDA: &str = #cuda;

        /// The derivative functions, derived from the body, compiled natively.
        #[allow(unused, clippy::all)]
        mod grad {
            #(#items)*
        }

        /// `d s' / d score` with the uniform index signature (as `eval`).
        #[allow(unused)]
        pub fn d_score(score: f32, b: u32, h: u32, q: i64, kv: i64, p: &Params<'_>) -> f32 {
            #d_score_call
        }

        /// Appends `(k, d s' / d theta[k])` for the learnable vector `theta` of [`learnable`]
        /// (an index out of range, from an out-of-range table read, is `usize::MAX`).
        #[allow(unused)]
        pub fn d_params(score: f32, b: u32, h: u32, q: i64, kv: i64, p: &Params<'_>, out: &mut ::std::vec::Vec<(usize, f32)>) {
            let mut off = 0usize;
            #(#pushes)*
        }

        /// The learnable parameters as one vector: the `f32` parameters and the elements of
        /// the `&[f32]` tables, in declaration order.
        #[allow(unused)]
        pub fn learnable(p: &Params<'_>) -> ::std::vec::Vec<f64> {
            let mut v = ::std::vec::Vec::new();
            #(#learnable)*
            v
        }

        #owned
    }
}

/// `host_score_diff`: the function and its derivatives as an `attnforge_reference`
/// `DiffScoreFn` whose learnable vector replaces the float parameters.
struct Owned {
    fields: Vec<TokenStream2>,
    rebuild: Vec<TokenStream2>,
    init: Vec<TokenStream2>,
    args: Vec<TokenStream2>,
}

impl Owned {
    fn new(def: &UserFnDef) -> Owned {
        use attnforge_dsl::ParamKind as K;
        let mut o = Owned {
            fields: Vec::new(),
            rebuild: Vec::new(),
            init: Vec::new(),
            args: Vec::new(),
        };
        for p in &def.params {
            let f = format_ident!("{}", p.name);
            let ty = rust_type(p.kind);
            match p.kind {
                K::F32 => o.rebuild.push(quote! {
                    let #f: f32 = *__af_theta.get(__af_off)? as f32;
                    __af_off += 1;
                }),
                K::SliceF32 => o.rebuild.push(quote! {
                    let __af_n = self.#f.len();
                    let #f: ::std::vec::Vec<f32> = __af_theta
                        .get(__af_off..__af_off + __af_n)?
                        .iter()
                        .map(|&x| x as f32)
                        .collect();
                    __af_off += __af_n;
                }),
                _ if p.kind.is_array() => o.rebuild.push(quote!(let #f = &self.#f[..];)),
                _ => o.rebuild.push(quote!(let #f = self.#f;)),
            }
            if p.kind.is_array() {
                let elem = match p.kind {
                    K::SliceU32 => quote!(u32),
                    K::SliceI32 => quote!(i32),
                    _ => quote!(f32),
                };
                o.fields.push(quote!(#f: ::std::vec::Vec<#elem>));
                o.init.push(quote!(#f: p.#f.to_vec()));
            } else {
                o.fields.push(quote!(#f: #ty));
                o.init.push(quote!(#f: p.#f));
            }
            o.args.push(if p.kind == K::SliceF32 {
                quote!(&#f[..])
            } else {
                quote!(#f)
            });
        }
        o
    }
}

impl quote::ToTokens for Owned {
    fn to_tokens(&self, tokens: &mut TokenStream2) {
        let Owned {
            fields,
            rebuild,
            init,
            args,
        } = self;
        let r = quote!(::attnforge::__private::reference);
        tokens.extend(quote! {
            /// Owned copies of the parameter values, for `'static` closures.
            #[derive(Clone)]
            struct Owned { #(#fields,)* }

            impl Owned {
                /// Calls `f` with the parameters, the float ones taken from `theta`
                /// (`None` when `theta` does not have the length of [`learnable`]).
                #[allow(unused)]
                fn with<R>(&self, __af_theta: &[f64], __af_f: impl FnOnce(&Params<'_>) -> R) -> Option<R> {
                    // Prefixed locals: the parameters' own names are bound here too.
                    let mut __af_off = 0usize;
                    #(#rebuild)*
                    if __af_off != __af_theta.len() {
                        return None;
                    }
                    Some(__af_f(&Params::new(#(#args),*)))
                }
            }

            /// The function with its symbolic derivatives, for the f64 reference backward
            /// (`attnforge::reference::attention_backward` with `DiffScoreMod::Function`):
            /// `params` is [`learnable`]`(p)`, the other parameters are fixed to `p`'s values.
            /// A learnable vector of another length gives NaN scores and an out-of-range
            /// gradient index (a reference error, never a panic).
            pub fn host_score_diff(p: &Params<'_>) -> #r::DiffScoreFn {
                let o = Owned { #(#init,)* };
                let (o1, o2, o3) = (o.clone(), o.clone(), o);
                #r::DiffScoreFn {
                    value: ::std::sync::Arc::new(move |s: f64, b: usize, h: usize, i: i64, j: i64, theta: &[f64]| {
                        o1.with(theta, |p| f64::from(eval(s as f32, b as u32, h as u32, i, j, p))).unwrap_or(f64::NAN)
                    }),
                    d_score: ::std::sync::Arc::new(move |s: f64, b: usize, h: usize, i: i64, j: i64, theta: &[f64]| {
                        o2.with(theta, |p| f64::from(d_score(s as f32, b as u32, h as u32, i, j, p))).unwrap_or(f64::NAN)
                    }),
                    d_params: Some(::std::sync::Arc::new(move |s: f64, b: usize, h: usize, i: i64, j: i64, theta: &[f64], out: &mut ::std::vec::Vec<(usize, f64)>| {
                        let mut v = ::std::vec::Vec::new();
                        match o3.with(theta, |p| d_params(s as f32, b as u32, h as u32, i, j, p, &mut v)) {
                            Some(()) => out.extend(v.into_iter().map(|(k, g)| (k, f64::from(g)))),
                            None => out.push((usize::MAX, f64::NAN)),
                        }
                    })),
                    params: learnable(p),
                }
            }
        });
    }
}
