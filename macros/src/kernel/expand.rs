//! Quotes the typed kernel item. Everything it calls is in `attnforge::__private::rt`.

use attnforge_codegen::check::MaskParams;
use attnforge_codegen::spec::{DType, HeadDim, Mask, ScoreMod};
use proc_macro2::TokenStream;
use quote::{quote, quote_spanned, ToTokens};
use syn::spanned::Spanned;

use super::check::{user_fns, Decl};
use super::parse::KernelDecl;

fn user_fn(path: &syn::Path) -> TokenStream {
    quote!(rt::user_function(#path::NAME, #path::CUDA, #path::PARAMS))
}

fn mask_tokens(m: &Mask, f: Option<&syn::Path>) -> TokenStream {
    let v = match m {
        Mask::Full => quote!(Full),
        Mask::Causal => quote!(Causal),
        Mask::Local => quote!(Local),
        Mask::PrefixLm => quote!(PrefixLm),
        Mask::Document => quote!(Document),
        Mask::CausalDocument => quote!(CausalDocument),
        Mask::ShareQuestion => quote!(ShareQuestion),
        Mask::GlobalLocal => quote!(GlobalLocal),
        Mask::BlockCausalDocument => quote!(BlockCausalDocument),
        Mask::LambdaMask => quote!(LambdaMask),
        Mask::LmInfinite => quote!(LmInfinite),
        Mask::Predicate(_) => {
            let u = user_fn(f.expect("predicate path"));
            quote!(Predicate(#u))
        }
        Mask::BlockSparse { mask: None } => quote!(BlockSparse {
            mask: ::core::option::Option::None
        }),
        Mask::BlockSparse { mask: Some(_) } => {
            let u = user_fn(f.expect("predicate path"));
            quote!(BlockSparse { mask: ::core::option::Option::Some(#u) })
        }
    };
    quote!(spec::Mask::#v)
}

fn score_tokens(s: &ScoreMod, f: Option<&syn::Path>) -> TokenStream {
    match s {
        ScoreMod::None => quote!(spec::ScoreMod::None),
        ScoreMod::Softcap => quote!(spec::ScoreMod::Softcap),
        ScoreMod::Alibi => quote!(spec::ScoreMod::Alibi),
        ScoreMod::User(_) => {
            let u = user_fn(f.expect("score path"));
            quote!(spec::ScoreMod::User(#u))
        }
    }
}

fn mask_params_tokens(p: &MaskParams) -> TokenStream {
    let v = match p {
        MaskParams::None => return quote!(::core::option::Option::None),
        MaskParams::Local { left, right } => quote!(Local { left: #left, right: #right }),
        MaskParams::PrefixLm { prefix_len } => quote!(PrefixLm { prefix_len: #prefix_len }),
        MaskParams::GlobalLocal {
            window,
            global_tokens,
        } => {
            quote!(GlobalLocal { window: #window, global_tokens: #global_tokens })
        }
        MaskParams::BlockCausalDocument { doc_block } => {
            quote!(BlockCausalDocument { doc_block: #doc_block })
        }
        MaskParams::LambdaMask {
            global_tokens,
            local_window,
        } => {
            quote!(LambdaMask { global_tokens: #global_tokens, local_window: #local_window })
        }
        MaskParams::LmInfinite {
            global_tokens,
            local_window,
            dist_limit,
            rope_theta,
        } => quote!(LmInfinite {
            global_tokens: #global_tokens,
            local_window: #local_window,
            dist_limit: #dist_limit,
            rope_theta: #rope_theta,
        }),
    };
    quote!(::core::option::Option::Some(rt::kernels::codegen::check::MaskParams::#v))
}

fn opt<T: ToTokens>(v: Option<T>) -> TokenStream {
    match v {
        Some(v) => quote!(::core::option::Option::Some(#v)),
        None => quote!(::core::option::Option::None),
    }
}

/// Compile-time cross-checks of the named companions (kind, parameter types), spanned at
/// the name the user wrote.
fn companion_asserts(path: &syn::Path, want: &str) -> TokenStream {
    let span = path.span();
    let name = path.to_token_stream().to_string().replace(' ', "");
    let other = if want == "mask" { "score" } else { "mask" };
    let kind_msg =
        format!("`{name}` is a #[{other}] function, but `{want}:` needs a #[{want}] function");
    let param_msg = format!(
        "`{name}` has an i64/u64 parameter: kernel arguments support u32, i32, f32, bool, &[u32], &[i32], &[f32]"
    );
    quote_spanned! {span=>
        const _: () = {
            use ::attnforge::__private::rt;
            ::core::assert!(rt::is_kind(#path::KIND, #want), #kind_msg);
            ::core::assert!(rt::params_supported(#path::PARAMS), #param_msg);
        };
    }
}

pub(crate) fn expand(d: &KernelDecl, decl: Option<&Decl>, errors: &[syn::Error]) -> TokenStream {
    let KernelDecl {
        attrs, vis, name, ..
    } = d;
    let errs = errors.iter().map(syn::Error::to_compile_error);
    let (mask_fn, score_fn) = match decl {
        Some(dl) => (dl.mask_fn.clone(), dl.score_fn.clone()),
        None => user_fns(d),
    };
    let elem = match decl.map(|d| d.spec.dtype) {
        Some(DType::F16) => quote!(::attnforge::__private::rt::half::f16),
        Some(DType::Bf16) => quote!(::attnforge::__private::rt::half::bf16),
        _ => quote!(f32),
    };
    let (spec_body, mask_p, softcap, tune) = match decl {
        Some(dl) => {
            let s = &dl.spec;
            let dtype = match s.dtype {
                DType::F16 => quote!(F16),
                DType::Bf16 => quote!(Bf16),
                DType::F32 => quote!(F32),
            };
            let hd = match s.head_dim {
                HeadDim::D64 => quote!(D64),
                HeadDim::D128 => quote!(D128),
                HeadDim::D256 => quote!(D256),
            };
            let mask = mask_tokens(&s.mask, dl.mask_fn.as_ref());
            let score = score_tokens(&s.score, dl.score_fn.as_ref());
            let gqa = s.gqa;
            let scale = opt(s.scale);
            let (bq, bk) = (s.sparse_block.q, s.sparse_block.k);
            let body = quote! {
                let mut s = spec::KernelSpec::new(spec::DType::#dtype, spec::HeadDim::#hd, #mask, #score);
                s.gqa = #gqa;
                s.scale = #scale;
                s.sparse_block = spec::BlockSize { q: #bq, k: #bk };
                s
            };
            let tune = match &dl.tune {
                Some([a, b, c, e]) => {
                    quote!(::core::option::Option::Some([&[#(#a),*], &[#(#b),*], &[#(#c),*], &[#(#e),*]]))
                }
                None => quote!(::core::option::Option::None),
            };
            (
                body,
                mask_params_tokens(&dl.mask_params),
                opt(dl.softcap),
                tune,
            )
        }
        None => (
            quote!(::core::unreachable!(
                "the kernel declaration has compile errors"
            )),
            quote!(::core::option::Option::None),
            quote!(::core::option::Option::None),
            quote!(::core::option::Option::None),
        ),
    };
    let mut args = Vec::new();
    let mut fill = Vec::new();
    let mut asserts = Vec::new();
    let mut arg_docs = String::new();
    if let Some(m) = &mask_fn {
        args.push(quote!(mask: &#m::Params<'_>));
        fill.push(quote! {
            rt::add_user_values(&mut p, |f| #m::visit(mask, f));
            rt::set_host_mask(&mut p, #m::host_mask(mask));
        });
        asserts.push(companion_asserts(m, "mask"));
        arg_docs.push_str(&format!(
            " `mask`: the parameters of `{}`.",
            m.to_token_stream().to_string().replace(' ', "")
        ));
    }
    if let Some(s) = &score_fn {
        args.push(quote!(score: &#s::Params<'_>));
        fill.push(quote! {
            rt::add_user_values(&mut p, |f| #s::visit(score, f));
            rt::set_host_score(&mut p, #s::host_score(score));
        });
        asserts.push(companion_asserts(s, "score"));
        arg_docs.push_str(&format!(
            " `score`: the parameters of `{}`.",
            s.to_token_stream().to_string().replace(' ', "")
        ));
    }
    let params_doc = format!(
        "Run-time parameters: the declared values (mask parameters, softcap), the user \
         functions' parameter values and their Rust twins (`host_mask` / `host_score`).{arg_docs} \
         Add document ids, block lists or ALiBi slopes with the `RunParams` builders."
    );
    quote! {
        #(#attrs)*
        #[derive(Clone, Copy, Debug, Default)]
        #vis struct #name;

        #(#asserts)*

        #[allow(dead_code, clippy::all)]
        impl #name {
            /// Declared tuning lists (block_m, block_n, warps, stages); `None`: the default grid.
            pub const TUNE: ::core::option::Option<[&'static [usize]; 4]> = { #[allow(unused_imports)] use ::attnforge::__private::rt; #tune };

            /// The kernel spec.
            pub fn spec() -> ::attnforge::__private::rt::kernels::codegen::spec::KernelSpec {
                #[allow(unused_imports)]
                use ::attnforge::__private::rt::{self, kernels::codegen::spec};
                #spec_body
            }

            /// Canonical name (`flash_fwd_...`).
            pub fn name() -> ::std::string::String {
                Self::spec().canonical_name()
            }

            /// The search space for sm_80 (valid on sm_90 too): the declared `tune` lists
            /// filtered by `TileConfig::valid`, or the default space.
            pub fn search_space() -> ::std::vec::Vec<::attnforge::__private::rt::kernels::codegen::tile::TileConfig> {
                Self::search_space_for(::attnforge::__private::rt::DEFAULT_ARCH)
            }

            /// The search space for `arch`.
            pub fn search_space_for(arch: ::attnforge::__private::rt::kernels::codegen::tile::Arch) -> ::std::vec::Vec<::attnforge::__private::rt::kernels::codegen::tile::TileConfig> {
                ::attnforge::__private::rt::search_space(&Self::spec(), Self::TUNE, arch)
            }

            /// The first config of the search space (never empty: checked at compile time).
            pub fn default_tile() -> ::attnforge::__private::rt::kernels::codegen::tile::TileConfig {
                Self::search_space()[0]
            }

            /// The CUDA source (and launch metadata) for one tile config, for sm_80.
            pub fn cuda(tile: &::attnforge::__private::rt::kernels::codegen::tile::TileConfig) -> ::core::result::Result<::attnforge::__private::rt::kernels::codegen::emit::EmittedKernel, ::attnforge::__private::rt::kernels::exec::ExecError> {
                ::attnforge::__private::rt::cuda(&Self::spec(), tile, ::attnforge::__private::rt::DEFAULT_ARCH)
            }

            #[doc = #params_doc]
            pub fn params(#(#args),*) -> ::attnforge::__private::rt::kernels::exec::RunParams {
                #[allow(unused_imports)]
                use ::attnforge::__private::rt;
                #[allow(unused_mut)]
                let mut p = rt::kernels::exec::RunParams::default();
                p.mask = #mask_p;
                p.softcap = #softcap;
                #(#fill)*
                p
            }

            /// Runs the kernel on the CPU simulator (forward schedule).
            pub fn simulate(
                tile: &::attnforge::__private::rt::kernels::codegen::tile::TileConfig,
                inputs: &::attnforge::__private::rt::kernels::exec::Inputs<#elem>,
                params: &::attnforge::__private::rt::kernels::exec::RunParams,
            ) -> ::core::result::Result<::attnforge::__private::rt::kernels::exec::SimRun, ::attnforge::__private::rt::kernels::exec::ExecError> {
                Self::simulate_with(tile, inputs, params, &::attnforge::__private::rt::kernels::sim::SimConfig::new(::attnforge::__private::rt::kernels::sim::Schedule::Forward))
            }

            /// Runs the kernel on the CPU simulator with a simulator config (schedule, workers).
            pub fn simulate_with(
                tile: &::attnforge::__private::rt::kernels::codegen::tile::TileConfig,
                inputs: &::attnforge::__private::rt::kernels::exec::Inputs<#elem>,
                params: &::attnforge::__private::rt::kernels::exec::RunParams,
                cfg: &::attnforge::__private::rt::kernels::sim::SimConfig,
            ) -> ::core::result::Result<::attnforge::__private::rt::kernels::exec::SimRun, ::attnforge::__private::rt::kernels::exec::ExecError> {
                ::attnforge::__private::rt::simulate(&Self::spec(), tile, inputs, params, cfg)
            }

            /// The f64 reference.
            pub fn reference(
                inputs: &::attnforge::__private::rt::kernels::exec::Inputs<#elem>,
                params: &::attnforge::__private::rt::kernels::exec::RunParams,
            ) -> ::core::result::Result<::attnforge::__private::rt::reference::AttnOutput, ::attnforge::__private::rt::kernels::exec::ExecError> {
                ::attnforge::__private::rt::reference(&Self::spec(), inputs, params)
            }

            /// Runs the kernel on `backend` and compares it with the reference (tolerance of
            /// variants.md section 0 for the dtype).
            pub fn check(
                tile: &::attnforge::__private::rt::kernels::codegen::tile::TileConfig,
                inputs: &::attnforge::__private::rt::kernels::exec::Inputs<#elem>,
                params: &::attnforge::__private::rt::kernels::exec::RunParams,
                backend: &::attnforge::__private::rt::kernels::exec::Backend,
            ) -> ::core::result::Result<::attnforge::__private::rt::kernels::exec::CheckReport, ::attnforge::__private::rt::kernels::exec::ExecError> {
                ::attnforge::__private::rt::check(&Self::spec(), tile, inputs, params, backend)
            }

            /// Launches the kernel on GPU `ordinal` (NVRTC for the device's architecture, checked
            /// launch) and returns its `out` and `lse`; "no GPU" is an `ExecError::Cuda`. Use
            /// `check` with `Backend::Cuda` to compare a GPU run with the reference.
            pub fn launch(
                ordinal: usize,
                tile: &::attnforge::__private::rt::kernels::codegen::tile::TileConfig,
                inputs: &::attnforge::__private::rt::kernels::exec::Inputs<#elem>,
                params: &::attnforge::__private::rt::kernels::exec::RunParams,
            ) -> ::core::result::Result<::attnforge::__private::rt::reference::AttnOutput, ::attnforge::__private::rt::kernels::exec::ExecError> {
                ::attnforge::__private::rt::kernels::exec::run_cuda(&Self::spec(), tile, inputs, params, ordinal)
            }
        }

        #(#errs)*
    }
}
