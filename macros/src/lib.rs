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
//!
//! Only free functions are supported (a module cannot be emitted inside an `impl`). Anything
//! outside the translatable subset is a compile error at the offending expression; all errors
//! are reported at once and the function is still emitted, so one mistake does not cascade.

mod kernel;

use attnforge_dsl::{FnKind, UserFnDef};
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
    if !attr.is_empty() {
        errors.push(syn::Error::new_spanned(
            &attr,
            format!("`#[{}]` takes no arguments", kind.as_str()),
        ));
    }
    let func: syn::ItemFn = match syn::parse2(item.clone()) {
        Ok(f) => f,
        Err(e) => {
            let err = e.to_compile_error();
            return quote! { #item #err };
        }
    };
    match attnforge_dsl::translate_fn(&func, kind) {
        Ok(def) if errors.is_empty() => {
            let companion = companion(&func, &def);
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

fn companion(func: &syn::ItemFn, def: &UserFnDef) -> TokenStream2 {
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

    // Arguments of the call to the user's function, in its declared order.
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
        (has_b, quote!(b)),
        (has_h, quote!(h)),
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
    let (score_param, ret) = match def.kind {
        FnKind::Mask => (quote!(), quote!(bool)),
        FnKind::Score => (quote!(score: f32,), quote!(f32)),
    };
    // Owned copies for `'static` host closures and `Any`-typed values for `visit`.
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
        }
    }
}
