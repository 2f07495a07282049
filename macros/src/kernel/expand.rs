//! Quotes the typed kernel item (static kernels: [`expand`]; `family:` declarations:
//! [`expand_dynamic`]). Everything it calls is in `attnforge::__private::rt`.

use attnforge_codegen::check::MaskParams;
use attnforge_codegen::dynamic::{DynamicSpec, LandmarkMode};
use attnforge_codegen::spec::{DType, HeadDim, Layout, Mask, ScoreMod};
use proc_macro2::TokenStream;
use quote::{quote, quote_spanned, ToTokens};
use syn::spanned::Spanned;

use super::check::{user_fns, Decl};
use super::parse::{KernelDecl, Value};

fn user_fn(path: &syn::Path) -> TokenStream {
    quote!(rt::user_function_with_grad(
        #path::NAME,
        #path::CUDA,
        #path::PARAMS,
        (#path::GRAD_CUDA, #path::GRAD_SCORE, #path::GRAD_PARAMS)
    ))
}

/// `backward: true` with a user score function: it must carry derivatives
/// (`#[attnforge::score(backward)]`), asserted at compile time at the name the user wrote;
/// the run-time parameters take its Rust twin with derivatives for the reference backward.
fn score_grad_assert(path: &syn::Path) -> TokenStream {
    let name = path.to_token_stream().to_string().replace(' ', "");
    let msg = format!(
        "`backward: true` needs the derivatives of `{name}`: declare it #[attnforge::score(backward)]"
    );
    quote_spanned! {path.span()=>
        const _: () = ::core::assert!(!#path::GRAD_SCORE.is_empty(), #msg);
    }
}

fn mask_tokens(m: &Mask, f: Option<&syn::Path>) -> TokenStream {
    match m {
        Mask::Builtin(b) => {
            let tag = b.tag();
            quote!(spec::Mask::builtin(#tag).expect("a mask-table tag checked by kernel!"))
        }
        Mask::Predicate(_) => {
            let u = user_fn(f.expect("predicate path"));
            quote!(spec::Mask::Predicate(#u))
        }
        Mask::BlockSparse { mask: None } => quote!(spec::Mask::BlockSparse {
            mask: ::core::option::Option::None
        }),
        Mask::BlockSparse { mask: Some(_) } => {
            let u = user_fn(f.expect("predicate path"));
            quote!(spec::Mask::BlockSparse { mask: ::core::option::Option::Some(#u) })
        }
    }
}

fn score_tokens(s: &ScoreMod, f: Option<&syn::Path>) -> TokenStream {
    match s {
        ScoreMod::User(_) => {
            let u = user_fn(f.expect("score path"));
            quote!(spec::ScoreMod::User(#u))
        }
        builtin => {
            let tag = builtin.def().map_or("none", |d| d.tag);
            quote!(spec::ScoreMod::builtin(#tag).expect("a score-table tag checked by kernel!"))
        }
    }
}

fn mask_params_tokens(p: &MaskParams) -> TokenStream {
    if p.is_empty() {
        return quote!(::core::option::Option::None);
    }
    let (names, values): (Vec<&str>, Vec<f64>) = p.iter().unzip();
    quote!(::core::option::Option::Some(
        rt::kernels::codegen::check::MaskParams::new()
            #(.with(#names, #values))*
    ))
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

/// The element type `T` of a declaration's inputs (`f32` while the declaration has errors).
fn elem_tokens(dtype: Option<DType>) -> TokenStream {
    match dtype {
        Some(DType::F16) => quote!(::attnforge::__private::rt::half::f16),
        Some(DType::Bf16) => quote!(::attnforge::__private::rt::half::bf16),
        _ => quote!(f32),
    }
}

/// The item every declaration expands to, static kernel or data-dependent pipeline: the
/// unit struct, `before` (compile-time assertions), an impl with `spec()` (of type
/// `spec_ty`, built by `spec_body`) and `name()` plus the kind's `methods`, then the
/// declaration's compile errors.
fn item(
    d: &KernelDecl,
    errors: &[syn::Error],
    before: TokenStream,
    (spec_ty, spec_body): (TokenStream, TokenStream),
    methods: TokenStream,
) -> TokenStream {
    let KernelDecl {
        attrs, vis, name, ..
    } = d;
    let errs = errors.iter().map(syn::Error::to_compile_error);
    quote! {
        #(#attrs)*
        #[derive(Clone, Copy, Debug, Default)]
        #vis struct #name;

        #before

        #[allow(dead_code, clippy::all)]
        impl #name {
            /// The spec (static kernel: `KernelSpec`; pipeline: `DynamicSpec`).
            pub fn spec() -> #spec_ty {
                #[allow(unused_imports)]
                use ::attnforge::__private::rt::{self, kernels::codegen::{dynamic, spec}};
                #spec_body
            }

            /// Canonical name (`flash_fwd_...`, `landmark_retrieval_d128_bf16`, ...).
            pub fn name() -> ::std::string::String {
                Self::spec().canonical_name()
            }

            #methods
        }

        #(#errs)*
    }
}

pub(crate) fn expand(d: &KernelDecl, decl: Option<&Decl>, errors: &[syn::Error]) -> TokenStream {
    let (mask_fn, score_fn) = match decl {
        Some(dl) => (dl.mask_fn.clone(), dl.score_fn.clone()),
        None => user_fns(d),
    };
    let elem = elem_tokens(decl.map(|d| d.spec.dtype));
    let (spec_body, mask_p, softcap, tune) = match decl {
        Some(dl) => {
            let s = &dl.spec;
            let dtype = dtype_tokens(s.dtype);
            let hd = head_dim_tokens(s.head_dim);
            let mask = mask_tokens(&s.mask, dl.mask_fn.as_ref());
            let score = score_tokens(&s.score, dl.score_fn.as_ref());
            let gqa = s.gqa;
            let scale = opt(s.scale);
            let (bq, bk) = (s.sparse_block.q, s.sparse_block.k);
            let layout = layout_tokens(s.layout);
            let body = quote! {
                let mut s = spec::KernelSpec::new(spec::DType::#dtype, spec::HeadDim::#hd, #mask, #score);
                s.gqa = #gqa;
                s.scale = #scale;
                s.sparse_block = spec::BlockSize { q: #bq, k: #bk };
                s.layout = spec::Layout::#layout;
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
        if decl.is_some_and(|d| d.backward) {
            asserts.push(score_grad_assert(s));
            fill.push(quote!(p.host_score_diff = ::core::option::Option::Some(#s::host_score_diff(score));));
        }
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
    let spec_ty = quote!(::attnforge::__private::rt::kernels::codegen::spec::KernelSpec);
    let backward = backward_methods(decl.is_some_and(|d| d.backward), &elem);
    let run_methods = match decl.map(|d| d.spec.layout) {
        Some(l) if !l.is_dense() => serving_methods(&elem),
        _ => dense_methods(&elem),
    };
    let methods = quote! {
            #backward

            /// Declared tuning lists (block_m, block_n, warps, stages); `None`: the default grid.
            pub const TUNE: ::core::option::Option<[&'static [usize]; 4]> = { #[allow(unused_imports)] use ::attnforge::__private::rt; #tune };

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

            #run_methods
    };
    item(
        d,
        errors,
        quote!(#(#asserts)*),
        (spec_ty, spec_body),
        methods,
    )
}

/// Simulator, reference, check and GPU runs of a dense-layout kernel.
fn dense_methods(elem: &TokenStream) -> TokenStream {
    quote! {
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
}

/// Simulator, reference and check runs of a serving-layout kernel (`layout:` varlen, paged,
/// decode, decode_varlen; `attnforge_runtime::exec_serving`): packed queries, the keys packed
/// or in a paged cache. No GPU launch: the serving kernels run on the simulator only so far.
fn serving_methods(elem: &TokenStream) -> TokenStream {
    let rt = quote!(::attnforge::__private::rt);
    let tile = quote!(#rt::kernels::codegen::tile::TileConfig);
    let inputs = quote!(#rt::kernels::exec_serving::ServingInputs<#elem>);
    let params = quote!(#rt::kernels::exec::RunParams);
    let err = quote!(#rt::kernels::exec::ExecError);
    let cfg = quote!(#rt::kernels::sim::SimConfig);
    quote! {
        /// Runs the kernel on the CPU simulator (forward schedule): `out: [Tq, Hq, D]`,
        /// `lse: [Hq, Tq]` packed like the queries; the layout arrays are checked first.
        pub fn simulate(tile: &#tile, inputs: &#inputs, params: &#params) -> ::core::result::Result<#rt::kernels::exec_serving::ServingRun, #err> {
            Self::simulate_with(tile, inputs, params, &#cfg::new(#rt::kernels::sim::Schedule::Forward))
        }

        /// Runs the kernel on the CPU simulator with a simulator config (schedule, workers).
        pub fn simulate_with(tile: &#tile, inputs: &#inputs, params: &#params, cfg: &#cfg) -> ::core::result::Result<#rt::kernels::exec_serving::ServingRun, #err> {
            #rt::kernels::exec_serving::simulate(&Self::spec(), tile, inputs, params, cfg)
        }

        /// The f64 reference: each sequence gathered and run through the dense reference.
        pub fn reference(inputs: &#inputs, params: &#params) -> ::core::result::Result<#rt::reference::VarlenOutput, #err> {
            #rt::kernels::exec_serving::reference(&Self::spec(), inputs, params, #rt::reference::Precision::F64)
        }

        /// Runs the kernel on the simulator and compares it with the reference (tolerance of
        /// variants.md section 0 for the dtype).
        pub fn check(tile: &#tile, inputs: &#inputs, params: &#params, cfg: &#cfg) -> ::core::result::Result<#rt::kernels::exec_serving::ServingReport, #err> {
            #rt::kernels::exec_serving::check(&Self::spec(), tile, inputs, params, cfg)
        }
    }
}

fn layout_tokens(l: Layout) -> TokenStream {
    match l {
        Layout::Dense => quote!(Dense),
        Layout::Varlen => quote!(Varlen),
        Layout::Paged => quote!(Paged),
        Layout::Decode => quote!(Decode),
        Layout::DecodeVarlen => quote!(DecodeVarlen),
    }
}

/// `backward: true`: the backward kernels' CUDA and their simulator, reference, check and
/// GPU runs (variants.md section 12; `attnforge_runtime::exec_backward`).
fn backward_methods(on: bool, elem: &TokenStream) -> TokenStream {
    if !on {
        return TokenStream::new();
    }
    let rt = quote!(::attnforge::__private::rt);
    let tile = quote!(#rt::kernels::codegen::tile::TileConfig);
    let btile = quote!(#rt::kernels::codegen::backward::BackwardTile);
    let inputs = quote!(#rt::kernels::exec::Inputs<#elem>);
    let up = quote!(#rt::kernels::exec_backward::Upstream<'_, #elem>);
    let params = quote!(#rt::kernels::exec::RunParams);
    let res = |t: TokenStream| quote!(::core::result::Result<#t, #rt::kernels::exec::ExecError>);
    let grads = res(quote!(#rt::kernels::exec_backward::KernelGrads));
    let checked = res(
        quote!((#rt::kernels::exec_backward::KernelGrads, ::std::vec::Vec<#rt::kernels::exec_backward::GradCheck>)),
    );
    let kernels = res(quote!(#rt::kernels::codegen::backward::BackwardKernels));
    let rgrads = res(quote!(#rt::reference::AttnGrads));
    quote! {
        /// Whether the declaration has `backward: true` (checked at compile time against
        /// `backward_supported`).
        pub const BACKWARD: bool = true;

        /// The three backward kernels (delta, dK/dV, dQ) for `tile`, for sm_80.
        pub fn backward_cuda(tile: &#btile) -> #kernels {
            #rt::kernels::codegen::backward::emit_backward(&Self::spec(), tile, #rt::DEFAULT_ARCH)
                .map_err(#rt::kernels::exec::ExecError::Spec)
        }

        /// The forward kernel `tile`, then the backward kernels `bwd_tile`, on the CPU
        /// simulator (forward schedule): dq, dk, dv, the score parameter's gradient.
        pub fn simulate_backward(tile: &#tile, bwd_tile: &#btile, inputs: &#inputs, upstream: #up, params: &#params) -> #grads {
            #rt::kernels::exec_backward::simulate_backward(&Self::spec(), tile, bwd_tile, inputs, upstream, params, &#rt::kernels::sim::SimConfig::new(#rt::kernels::sim::Schedule::Forward))
        }

        /// The f64 reference backward.
        pub fn reference_backward(inputs: &#inputs, upstream: #up, params: &#params) -> #rgrads {
            #rt::kernels::exec_backward::reference_backward(&Self::spec(), inputs, upstream, params, #rt::reference::Precision::F64)
        }

        /// The backward on `backend` (simulator or GPU) against the reference, gradient by
        /// gradient (tolerance of variants.md section 0 for the dtype).
        pub fn check_backward(tile: &#tile, bwd_tile: &#btile, inputs: &#inputs, upstream: #up, params: &#params, backend: &#rt::kernels::exec::Backend) -> #checked {
            #rt::kernels::exec_backward::check_backward(&Self::spec(), tile, bwd_tile, inputs, upstream, params, backend)
        }
    }
}

fn dtype_tokens(d: DType) -> TokenStream {
    match d {
        DType::F16 => quote!(F16),
        DType::Bf16 => quote!(Bf16),
        DType::F32 => quote!(F32),
    }
}

fn head_dim_tokens(h: HeadDim) -> TokenStream {
    match h {
        HeadDim::D64 => quote!(D64),
        HeadDim::D128 => quote!(D128),
        HeadDim::D256 => quote!(D256),
    }
}

/// The `DynamicSpec` constructor of a checked declaration.
fn dynamic_spec_tokens(s: &DynamicSpec) -> TokenStream {
    let dtype = dtype_tokens(s.dtype());
    let hd = head_dim_tokens(s.head_dim());
    let common = quote!(dtype: spec::DType::#dtype, head_dim: spec::HeadDim::#hd);
    match *s {
        DynamicSpec::Landmark { mem_freq, mode, .. } => {
            let mode = match mode {
                LandmarkMode::Train => quote!(dynamic::LandmarkMode::Train),
                LandmarkMode::Retrieval { top_k } => {
                    quote!(dynamic::LandmarkMode::Retrieval { top_k: #top_k })
                }
            };
            quote!(dynamic::DynamicSpec::Landmark { #common, mem_freq: #mem_freq, mode: #mode })
        }
        DynamicSpec::Hax {
            k_lsh,
            k_ks,
            hash_bits,
            ..
        } => quote!(dynamic::DynamicSpec::Hax {
            #common, k_lsh: #k_lsh, k_ks: #k_ks, hash_bits: #hash_bits
        }),
        DynamicSpec::Cca { group, window, .. } => {
            quote!(dynamic::DynamicSpec::Cca { #common, group: #group, window: #window })
        }
        DynamicSpec::Topk {
            sink,
            recent,
            k,
            split,
            ..
        } => quote!(dynamic::DynamicSpec::Topk {
            #common, sink: #sink, recent: #recent, k: #k, split: #split
        }),
        DynamicSpec::Recycled {
            recycle_size,
            stride,
            threshold_milli,
            pool,
            ..
        } => {
            let k = match recycle_size {
                Some(k) => quote!(::core::option::Option::Some(#k)),
                None => quote!(::core::option::Option::None),
            };
            quote!(dynamic::DynamicSpec::Recycled {
                #common, recycle_size: #k, stride: #stride,
                threshold_milli: #threshold_milli, pool: #pool
            })
        }
        DynamicSpec::LseMerge { .. } => quote!(dynamic::DynamicSpec::LseMerge { #common }),
        DynamicSpec::Longheads {
            chunk,
            chunks_per_query,
            begin,
            theta,
            ..
        } => quote!(dynamic::DynamicSpec::Longheads {
            #common, chunk: #chunk, chunks_per_query: #chunks_per_query, begin: #begin,
            theta: #theta
        }),
    }
}

/// The run API of a `recycled` declaration: the decode driver over `T` steps
/// (`exec_recycled`), inputs `RecycledInputs<T>` (q, q_raw, k, v).
fn recycled_fns(rt: &TokenStream, elem: &TokenStream) -> TokenStream {
    let ex = quote!(#rt::kernels::exec_recycled);
    let inputs = quote!(#ex::RecycledInputs<#elem>);
    let res = |t: TokenStream| quote!(::core::result::Result<#t, #rt::kernels::exec::ExecError>);
    let (run_t, check_t) = (
        res(quote!(#ex::RecycledRun)),
        res(quote!(#ex::RecycledCheck)),
    );
    let steps_t = res(quote!(::std::vec::Vec<#rt::reference::RecycledStep>));
    let backend = quote!(#rt::kernels::exec::Backend);
    quote! {
        /// Runs the `T` decode steps on the CPU simulator (forward schedule): per step the
        /// kinds, key sets, keys read, recycled sets, `out` and `lse`.
        pub fn simulate(inputs: &#inputs) -> #run_t {
            #ex::run_recycled(&Self::spec(), inputs, &#backend::sim())
        }

        /// The f64 reference steps (`attnforge_reference::recycled_attention`).
        pub fn reference(inputs: &#inputs) -> #steps_t {
            #ex::reference_recycled(&Self::spec(), inputs, #rt::reference::Precision::F64)
        }

        /// Runs on `backend` (the simulator) and compares every step with the reference:
        /// kinds, key sets, recycled sets, out/lse (tolerance of variants.md section 0).
        pub fn check(inputs: &#inputs, backend: &#backend) -> #check_t {
            #ex::check_recycled(&Self::spec(), inputs, backend)
        }
    }
}

/// The item of a `family:` declaration: the unit struct and `spec`, `name`, `cuda`,
/// `simulate`, `simulate_with`, `reference`, `check`, `launch` (inputs `DynInputs<T>`; for
/// `lse_merge` two partial results).
pub(crate) fn expand_dynamic(
    d: &KernelDecl,
    spec: Option<&DynamicSpec>,
    errors: &[syn::Error],
) -> TokenStream {
    let elem = elem_tokens(spec.map(|s| s.dtype()));
    let is_merge = match spec {
        Some(s) => matches!(s, DynamicSpec::LseMerge { .. }),
        None => d.entries.iter().any(|e| {
            e.key == "family" && matches!(&e.value, Value::Call(c) if c.name == "lse_merge")
        }),
    };
    let spec_body = match spec {
        Some(s) => dynamic_spec_tokens(s),
        None => quote!(::core::unreachable!(
            "the kernel declaration has compile errors"
        )),
    };
    let rt = quote!(::attnforge::__private::rt);
    let res = |t: TokenStream| quote!(::core::result::Result<#t, #rt::kernels::exec::ExecError>);
    let run_t = res(quote!(#rt::kernels::exec_dynamic::DynRun));
    let out_t = res(quote!(#rt::reference::AttnOutput));
    let report_t = res(quote!(#rt::kernels::exec_dynamic::DynCheckReport));
    let kernels_t = res(quote!(::std::vec::Vec<#rt::kernels::codegen::dynamic::DynamicKernel>));
    let sim_cfg = quote!(#rt::kernels::sim::SimConfig);
    let backend = quote!(#rt::kernels::exec::Backend);
    let forward = quote!(#sim_cfg::new(#rt::kernels::sim::Schedule::Forward));
    let is_recycled = match spec {
        Some(s) => matches!(s, DynamicSpec::Recycled { .. }),
        None => d.entries.iter().any(|e| {
            e.key == "family" && matches!(&e.value, Value::Call(c) if c.name == "recycled")
        }),
    };
    let run_fns = if is_recycled {
        recycled_fns(&rt, &elem)
    } else if is_merge {
        let part = quote!(#rt::reference::AttnOutput);
        quote! {
            /// Merges two partial results (`out`, `lse`; rounded to f32 as the partial
            /// kernels write them) on the CPU simulator (forward schedule).
            pub fn simulate(a: &#part, b: &#part) -> #run_t {
                Self::simulate_with(a, b, &#forward)
            }

            /// Merges on the CPU simulator with a simulator config (schedule, workers).
            pub fn simulate_with(a: &#part, b: &#part, cfg: &#sim_cfg) -> #run_t {
                #rt::dynamic::merge::<#elem>(&Self::spec(), a, b, &#backend::Sim(*cfg))
            }

            /// The f64 log-sum-exp merge.
            pub fn reference(a: &#part, b: &#part) -> #out_t {
                #rt::dynamic::merge_reference(&Self::spec(), a, b)
            }

            /// Merges on `backend` and compares with the f64 merge (tolerance of
            /// variants.md section 0 for the dtype).
            pub fn check(a: &#part, b: &#part, backend: &#backend) -> #report_t {
                #rt::dynamic::merge_check::<#elem>(&Self::spec(), a, b, backend)
            }

            /// Merges on GPU `ordinal` (NVRTC for the device, checked launch); "no GPU" is
            /// an `ExecError::Cuda`.
            pub fn launch(ordinal: usize, a: &#part, b: &#part) -> #out_t {
                #rt::dynamic::merge::<#elem>(&Self::spec(), a, b, &#backend::Cuda(ordinal)).map(|r| r.output)
            }
        }
    } else {
        let inputs = quote!(#rt::kernels::exec_dynamic::DynInputs<#elem>);
        quote! {
            /// Runs every stage of the pipeline on the CPU simulator (forward schedule):
            /// output, work counters summed over the launches, per-stage counters and the
            /// selection stages' index buffers.
            pub fn simulate(inputs: &#inputs) -> #run_t {
                Self::simulate_with(inputs, &#forward)
            }

            /// Runs the pipeline on the CPU simulator with a simulator config (schedule,
            /// workers).
            pub fn simulate_with(inputs: &#inputs, cfg: &#sim_cfg) -> #run_t {
                #rt::dynamic::simulate(&Self::spec(), inputs, cfg)
            }

            /// The f64 reference (`attnforge_reference`, variants.md sections 6-9).
            pub fn reference(inputs: &#inputs) -> #out_t {
                #rt::dynamic::reference(&Self::spec(), inputs)
            }

            /// Runs the pipeline on `backend` and compares it with the reference (tolerance
            /// of variants.md section 0 for the dtype).
            pub fn check(inputs: &#inputs, backend: &#backend) -> #report_t {
                #rt::dynamic::check(&Self::spec(), inputs, backend)
            }

            /// Runs the pipeline on GPU `ordinal` (NVRTC for the device, checked launches)
            /// and returns its `out` and `lse`; "no GPU" is an `ExecError::Cuda`. Use
            /// `check` with `Backend::Cuda` to compare a GPU run with the reference.
            pub fn launch(ordinal: usize, inputs: &#inputs) -> #out_t {
                #rt::dynamic::launch(&Self::spec(), inputs, ordinal)
            }
        }
    };
    let spec_ty = quote!(#rt::kernels::codegen::dynamic::DynamicSpec);
    let methods = quote! {
        /// The CUDA sources of the pipeline's kernels, in launch order (selection
        /// kernels first), each self-contained with its name and argument list.
        pub fn cuda() -> #kernels_t {
            #rt::dynamic::cuda(&Self::spec())
        }

        #run_fns
    };
    item(d, errors, TokenStream::new(), (spec_ty, spec_body), methods)
}
