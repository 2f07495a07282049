//! Run-time support of the `kernel!` macro (crate `attnforge-macros`): everything the
//! expansion calls lives here as plain Rust, so the proc-macro stays thin and the expansion
//! short. Not a public API: reached through `attnforge::__private::rt`.
//!
//! The bridge to `#[mask]` / `#[score]` companion modules uses only their std-typed items
//! (`NAME`, `KIND`, `CUDA`, `PARAMS`, `visit`, `host_mask`, `host_score`), so a companion
//! needs no dependency on attnforge.
//!
//! Declarations with `family:` (landmark, HAX, CCA, top-k, lse merge) expand to calls of
//! [`dynamic`], which delegates to `attnforge_runtime::exec_dynamic`.
//!
//! ```
//! use attnforge_macros_rt as rt;
//! let f = rt::user_function("w", "__device__ bool w(int b, int h, long long q_pos, long long kv_pos, const unsigned* doc) { return true; }", &[("doc", "&[u32]")]);
//! assert_eq!(f.params[0].kind, attnforge_runtime::codegen::spec::UserParamKind::ArrayU32);
//! const OK: bool = rt::params_supported(&[("doc", "&[u32]"), ("n", "i32")]);
//! assert!(OK && !rt::params_supported(&[("n", "u64")]));
//! ```

use std::any::Any;
use std::collections::BTreeMap;

use attnforge_reference::{AttnOutput, Element, Precision};
use attnforge_runtime::codegen::emit::{emit, EmittedKernel};
use attnforge_runtime::codegen::spec::{
    KernelSpec, UserFunction, UserParam, UserParamGrad, UserParamKind, UserScoreGrad, UserSource,
};
use attnforge_runtime::codegen::tile::{default_search_space, Arch, TileConfig};
use attnforge_runtime::exec::{
    self, Backend, CheckReport, ExecError, Inputs, RunParams, SimRun, UserValue,
};
use attnforge_runtime::sim::{SimConfig, SimElem};

pub mod dynamic;

pub use attnforge_reference as reference;
pub use attnforge_runtime as kernels;
pub use half;

/// The default grid of `tune:` keys a declaration leaves out (as in
/// [`default_search_space`]): block_m, block_n, warps, stages.
pub const DEFAULT_GRID: [&[usize]; 4] = [&[16, 32, 64, 128], &[32, 64, 128], &[1, 2, 4, 8], &[1]];

/// Architecture the declared space is checked against at compile time and filtered for by
/// default (the smaller shared-memory limit, so every listed config also fits sm_90).
pub const DEFAULT_ARCH: Arch = Arch::Sm80;

const fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Whether a companion's `KIND` is `want` (`"mask"` / `"score"`); used in `const` asserts.
pub const fn is_kind(kind: &str, want: &str) -> bool {
    str_eq(kind, want)
}

const SUPPORTED: [&str; 7] = ["u32", "i32", "f32", "bool", "&[u32]", "&[i32]", "&[f32]"];

/// Whether every parameter type has a kernel-argument kind (`i64`/`u64` scalars have none);
/// used in `const` asserts.
pub const fn params_supported(params: &[(&str, &str)]) -> bool {
    let mut i = 0;
    while i < params.len() {
        let mut ok = false;
        let mut k = 0;
        while k < SUPPORTED.len() {
            ok |= str_eq(params[i].1, SUPPORTED[k]);
            k += 1;
        }
        if !ok {
            return false;
        }
        i += 1;
    }
    true
}

fn param_kind(ty: &str) -> UserParamKind {
    match ty {
        "u32" => UserParamKind::U32,
        "i32" => UserParamKind::I32,
        "f32" => UserParamKind::F32,
        "bool" => UserParamKind::Bool,
        "&[u32]" => UserParamKind::ArrayU32,
        "&[i32]" => UserParamKind::ArrayI32,
        "&[f32]" => UserParamKind::ArrayF32,
        other => panic!(
            "parameter type `{other}` has no kernel-argument kind (rejected at compile time)"
        ),
    }
}

/// The codegen user function of a companion (`NAME`, `CUDA`, `PARAMS`).
pub fn user_function(name: &str, cuda: &str, params: &[(&str, &str)]) -> UserFunction {
    UserFunction {
        name: name.to_string(),
        source: UserSource::Function(cuda.to_string()),
        params: params
            .iter()
            .map(|&(n, t)| UserParam {
                name: n.to_string(),
                kind: param_kind(t),
            })
            .collect(),
        grad: None,
    }
}

/// [`user_function`] with the companion's derivatives (`GRAD_CUDA`, `GRAD_SCORE`,
/// `GRAD_PARAMS`; empty without `#[score(backward)]`, which gives no `grad`).
pub fn user_function_with_grad(
    name: &str,
    cuda: &str,
    params: &[(&str, &str)],
    (grad_cuda, grad_score, grad_params): (&str, &str, &[(usize, &str, &str)]),
) -> UserFunction {
    let mut f = user_function(name, cuda, params);
    if !grad_score.is_empty() {
        f.grad = Some(UserScoreGrad {
            cuda: grad_cuda.to_string(),
            d_score: grad_score.to_string(),
            params: grad_params
                .iter()
                .map(|&(param, partial, index)| UserParamGrad {
                    param,
                    partial: partial.to_string(),
                    index: (!index.is_empty()).then(|| index.to_string()),
                })
                .collect(),
        });
    }
    f
}

/// Collects the values a companion's `visit` reports into `p.user` (by parameter name).
/// `visit` passes scalars as `u32`/`i32`/`f32`/`bool` and arrays as `Vec<u32>`/`Vec<i32>`/`Vec<f32>`.
pub fn add_user_values(
    p: &mut RunParams,
    visit: impl FnOnce(&mut dyn FnMut(&'static str, &dyn Any)),
) {
    visit(&mut |name, v| {
        let value = if let Some(x) = v.downcast_ref::<u32>() {
            UserValue::Int(*x as i32)
        } else if let Some(x) = v.downcast_ref::<i32>() {
            UserValue::Int(*x)
        } else if let Some(x) = v.downcast_ref::<bool>() {
            UserValue::Int(i32::from(*x))
        } else if let Some(x) = v.downcast_ref::<f32>() {
            UserValue::Float(*x)
        } else if let Some(x) = v.downcast_ref::<Vec<u32>>() {
            UserValue::Ints(x.iter().map(|&e| e as i32).collect())
        } else if let Some(x) = v.downcast_ref::<Vec<i32>>() {
            UserValue::Ints(x.clone())
        } else if let Some(x) = v.downcast_ref::<Vec<f32>>() {
            UserValue::Floats(x.clone())
        } else {
            panic!("user parameter `{name}` has a type without a kernel-argument kind")
        };
        p.user.insert(name.to_string(), value);
    });
}

/// Adapts a companion's `host_mask` closure to the exec layer's `(b, h, q_pos, kv_pos)`.
pub fn set_host_mask(
    p: &mut RunParams,
    f: impl Fn(u32, u32, i64, i64) -> bool + Send + Sync + 'static,
) {
    *p = std::mem::take(p).with_host_mask(move |b, h, q, kv| f(b as u32, h as u32, q, kv));
}

/// Adapts a companion's `host_score` closure (f32 in, f32 out) to the exec layer's f64 twin.
pub fn set_host_score(
    p: &mut RunParams,
    f: impl Fn(f32, u32, u32, i64, i64) -> f32 + Send + Sync + 'static,
) {
    *p = std::mem::take(p)
        .with_host_score(move |s, b, h, q, kv| f64::from(f(s as f32, b as u32, h as u32, q, kv)));
}

/// The search space of a declaration: the product of the `tune:` lists (`None`: the default
/// grid) filtered by [`TileConfig::valid`] for `arch`, in list order.
pub fn search_space(
    spec: &KernelSpec,
    lists: Option<[&[usize]; 4]>,
    arch: Arch,
) -> Vec<TileConfig> {
    let Some([bm, bn, w, s]) = lists else {
        return default_search_space(spec, arch);
    };
    let mut v = Vec::new();
    for &m in bm {
        for &n in bn {
            for &wa in w {
                for &st in s {
                    let t = TileConfig::new(m, n, wa, st);
                    if t.valid(spec, arch).is_ok() {
                        v.push(t);
                    }
                }
            }
        }
    }
    v
}

/// CUDA source of `spec` for one tile config (see [`emit`]); an invalid config is
/// `ExecError::Spec`.
pub fn cuda(spec: &KernelSpec, tile: &TileConfig, arch: Arch) -> Result<EmittedKernel, ExecError> {
    emit(spec, tile, arch).map_err(ExecError::Spec)
}

/// Runs the kernel on the simulator.
pub fn simulate<T: Element + SimElem>(
    spec: &KernelSpec,
    tile: &TileConfig,
    x: &Inputs<T>,
    p: &RunParams,
    cfg: &SimConfig,
) -> Result<SimRun, ExecError> {
    exec::simulate(spec, tile, x, p, cfg)
}

/// The f64 reference.
pub fn reference<T: Element>(
    spec: &KernelSpec,
    x: &Inputs<T>,
    p: &RunParams,
) -> Result<AttnOutput, ExecError> {
    exec::reference(spec, x, p, Precision::F64)
}

/// Runs on `backend` and compares with the reference.
pub fn check<T: Element + SimElem>(
    spec: &KernelSpec,
    tile: &TileConfig,
    x: &Inputs<T>,
    p: &RunParams,
    backend: &Backend,
) -> Result<CheckReport, ExecError> {
    exec::check(spec, tile, x, p, backend)
}

/// Shorthand for user-parameter maps in tests.
pub type UserMap = BTreeMap<String, UserValue>;
