//! `attnforge._native`: the Rust side of the Python package.
//!
//! Every entry point takes q, k, v as C-contiguous float32 NumPy arrays (`[B, Hq, Sq, D]`,
//! `[B, Hkv, Sk, D]`, `[B, Hkv, Sk, Dv]`), a spec (a catalog name or spec-file text, the
//! format of `docs/spec-files.md`) and optional document ids, and returns float64 arrays.
//! Values are rounded to the spec's dtype first (exact when they came from tensors of that
//! dtype). Bad input raises `attnforge.InputError` (a `ValueError`) naming the field and the
//! fix; a panic is caught and raised as `RuntimeError`, never unwound across the FFI.

use std::panic::{catch_unwind, AssertUnwindSafe};

mod device;
mod serving;

use attnforge::codegen::catalog;
use attnforge::codegen::spec::{DType, ScoreMod};
use attnforge::exec::{Backend, ExecError, Inputs, RunParams};
use attnforge::kernels::pipeline::{self, StaticKernel};
use attnforge::reference::{
    attention_backward, AttnGrads, AttnOptions, AttnOutput, BackwardVariant, DiffScoreMod, Element,
    Mask as RefMask, Precision, Shape4, Tensor4, Tolerance,
};
use attnforge::sim::SimElem;
use attnforge::specfile::{self, AnySpecFile, SpecFile};
use half::{bf16, f16};
use numpy::{PyArray1, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray4, PyUntypedArrayMethods};
use pyo3::create_exception;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

create_exception!(
    attnforge,
    InputError,
    PyValueError,
    "Bad input to attnforge: the message names the field and the fix."
);

/// Largest `scale * max|q| * max|k| * D` and `max|v| * Sk` accepted: the kernels compute in
/// f32 (max 3.4e38), the margin covers the log2(e) pre-scaling (the CLI's limit).
const MAX_SCORE_BOUND: f64 = 1e36;

fn input_error(msg: impl Into<String>) -> PyErr {
    InputError::new_err(msg.into())
}

fn exec_error(label: &str, e: ExecError) -> PyErr {
    match e {
        ExecError::Spec(_) | ExecError::Input { .. } | ExecError::Reference(_) => {
            input_error(format!("{label}: {e}"))
        }
        e => PyRuntimeError::new_err(format!("{label}: {e}")),
    }
}

/// Run `f`, turning a panic into a `RuntimeError` (a bug report, not a crash of the host).
fn guarded<R>(what: &str, f: impl FnOnce() -> PyResult<R>) -> PyResult<R> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(PyRuntimeError::new_err(format!(
                "attnforge internal error in {what}: {msg} (a bug: please report it with the inputs' shapes)"
            )))
        }
    }
}

/// A catalog name, or spec-file text (anything with a newline or `=`).
fn resolve(spec: &str) -> PyResult<SpecFile> {
    let spec = spec.trim();
    if spec.contains('\n') || spec.contains('=') {
        return match AnySpecFile::parse(spec, None) {
            Ok(AnySpecFile::Static(s)) => Ok(*s),
            Ok(AnySpecFile::Dynamic(d)) => Err(input_error(format!(
                "spec: `{}` is a data-dependent pipeline (family = ...); the Python package runs static kernels only\n  fix: use the CLI (`attnforge run`) for landmark, hax, cca and topk",
                d.spec.canonical_name()
            ))),
            Err(e) => Err(input_error(format!("spec: {e}"))),
        };
    }
    if let Some(s) = catalog::find(spec) {
        return Ok(specfile::from_catalog(s));
    }
    Err(input_error(format!(
        "spec: `{spec}` is neither spec-file text nor a catalog name\n  fix: pass a name from attnforge.catalog() or the text of a TOML spec file (docs/spec-files.md)"
    )))
}

fn tensor<T: Element>(name: &str, a: &PyReadonlyArray4<'_, f32>) -> PyResult<Tensor4<T>> {
    let shape = a.shape();
    let data = a.as_slice().map_err(|_| {
        input_error(format!(
            "input `{name}`: not C-contiguous\n  fix: pass numpy.ascontiguousarray({name}) (torch: {name}.contiguous())"
        ))
    })?;
    let sh = Shape4::new(shape[0], shape[1], shape[2], shape[3]);
    Tensor4::from_vec(sh, data.iter().map(|&x| T::from_f32(x)).collect())
        .map_err(|e| input_error(format!("input `{name}`: {e}")))
}

fn max_abs<T: Element>(t: &Tensor4<T>) -> f64 {
    t.data.iter().fold(0.0, |a, &x| a.max(x.to_f64().abs()))
}

/// Reject inputs whose f32 scores or accumulators could overflow in a kernel (the f64
/// reference would stay finite and the kernel would not), and non-finite inputs.
fn check_magnitudes<T: Element>(x: &Inputs<T>, scale: f64) -> PyResult<()> {
    for (name, t) in [("q", &x.q), ("k", &x.k), ("v", &x.v)] {
        if t.data.iter().any(|e| !e.to_f64().is_finite()) {
            return Err(input_error(format!(
                "input `{name}`: contains NaN or Inf (after rounding to the spec's dtype)\n  fix: clean the input, or use a wider dtype"
            )));
        }
    }
    let (mq, mk, mv) = (max_abs(&x.q), max_abs(&x.k), max_abs(&x.v));
    let dim = x.q.shape.dim as f64;
    let score = scale.abs() * mq * mk * dim;
    if score > MAX_SCORE_BOUND {
        return Err(input_error(format!(
            "input `q`/`k`: scores can reach scale * max|q| * max|k| * D = {score:.3e}, above {MAX_SCORE_BOUND:e} (kernels compute scores in f32)\n  fix: scale q and k down (attention is unchanged by scaling q by c and the scale by 1/c)"
        )));
    }
    let acc = mv * x.k.shape.seq as f64;
    if acc > MAX_SCORE_BOUND {
        return Err(input_error(format!(
            "input `v`: the output accumulator can reach max|v| * Sk = {acc:.3e}, above {MAX_SCORE_BOUND:e} (f32 accumulation)\n  fix: scale v down (the output scales with it)"
        )));
    }
    Ok(())
}

/// What to compute: a kernel on the simulator, or the reference at a precision.
#[derive(Clone, Copy, Debug)]
enum Mode {
    Sim,
    Reference(Precision),
    /// GPU `ordinal` through `exec::run_cuda`: host arrays copied to the device and back.
    Cuda(usize),
}

fn parse_mode(backend: &str) -> PyResult<Mode> {
    match backend {
        "sim" => Ok(Mode::Sim),
        "reference" => Ok(Mode::Reference(Precision::F64)),
        "naive" => Ok(Mode::Reference(Precision::Naive)),
        "cuda" => Ok(Mode::Cuda(0)),
        b => Err(input_error(format!(
            "backend `{b}` is unknown\n  fix: use \"sim\" (the generated CUDA on the CPU simulator), \"reference\" (f64), \"naive\" (same-precision naive path) or \"cuda\" (GPU 0, arrays staged through host copies)"
        ))),
    }
}

/// The spec file's tile (its own or the default), a bad one as an input error.
fn tile_of(sf: &SpecFile) -> Result<attnforge::codegen::tile::TileConfig, ExecError> {
    sf.tile().map_err(|e| ExecError::Input {
        field: e.field.clone(),
        message: e.message.clone(),
        fix: e.fix.clone(),
    })
}

fn execute<T: Element + SimElem>(
    sf: &SpecFile,
    x: Inputs<T>,
    rp: &RunParams,
    mode: Mode,
) -> Result<AttnOutput, ExecError> {
    let tile = tile_of(sf)?;
    let kernel = StaticKernel {
        spec: &sf.spec,
        tile: &tile,
        params: rp,
    };
    match mode {
        Mode::Sim => Ok(pipeline::run(&kernel, &x, &Backend::sim())?.output),
        Mode::Reference(p) => pipeline::reference(&kernel, &x, p),
        Mode::Cuda(ordinal) => Ok(pipeline::run(&kernel, &x, &Backend::Cuda(ordinal))?.output),
    }
}

struct Prepared {
    sf: SpecFile,
    rp: RunParams,
}

fn prepare(spec: &str, seq_k: usize, doc: Option<Vec<i32>>) -> PyResult<Prepared> {
    let sf = resolve(spec)?;
    let mut rp = sf
        .run_params(seq_k, doc)
        .map_err(|e| input_error(e.to_string()))?;
    specfile::catalog_twins(&sf, &mut rp);
    Ok(Prepared { sf, rp })
}

fn typed<T: Element + SimElem>(
    p: &Prepared,
    q: &PyReadonlyArray4<'_, f32>,
    k: &PyReadonlyArray4<'_, f32>,
    v: &PyReadonlyArray4<'_, f32>,
) -> PyResult<Inputs<T>> {
    let x = Inputs::new(tensor("q", q)?, tensor("k", k)?, tensor("v", v)?);
    let scale =
        p.sf.spec
            .scale
            .map_or(1.0 / (p.sf.spec.head_dim.get() as f64).sqrt(), f64::from);
    check_magnitudes(&x, scale)?;
    Ok(x)
}

type OutArrays<'py> = (Bound<'py, PyAny>, Bound<'py, PyAny>);

fn to_numpy<'py>(py: Python<'py>, o: AttnOutput) -> PyResult<OutArrays<'py>> {
    let s = o.shape;
    let out = PyArray1::from_vec(py, o.out).reshape([s.batch, s.heads, s.seq, s.dim])?;
    let lse = PyArray1::from_vec(py, o.lse).reshape([s.batch, s.heads, s.seq])?;
    Ok((out.into_any(), lse.into_any()))
}

/// Run a static kernel (catalog name or spec-file text) on float32 arrays.
///
/// `backend`: `"sim"` (the generated CUDA on the CPU simulator), `"reference"` (f64) or
/// `"naive"` (the same-precision naive path, the oracle's error scale). `doc`: int32
/// document ids (`[Sk]` or `[B * Sk]`) replacing the spec's. Returns `(out, lse)` as
/// float64 arrays `[B, Hq, Sq, Dv]` and `[B, Hq, Sq]` (`lse = -inf` on empty rows).
#[pyfunction]
#[pyo3(signature = (spec, q, k, v, backend = "sim", doc = None))]
fn run<'py>(
    py: Python<'py>,
    spec: &str,
    q: PyReadonlyArray4<'py, f32>,
    k: PyReadonlyArray4<'py, f32>,
    v: PyReadonlyArray4<'py, f32>,
    backend: &str,
    doc: Option<PyReadonlyArray1<'py, i32>>,
) -> PyResult<OutArrays<'py>> {
    guarded("run", || {
        let mode = parse_mode(backend)?;
        let doc = doc.map(|d| d.as_array().to_vec());
        let p = prepare(spec, k.shape()[2], doc)?;
        let name = p.sf.spec.canonical_name();
        let result = match p.sf.spec.dtype {
            DType::F32 => {
                let x = typed::<f32>(&p, &q, &k, &v)?;
                py.detach(|| execute(&p.sf, x, &p.rp, mode))
            }
            DType::F16 => {
                let x = typed::<f16>(&p, &q, &k, &v)?;
                py.detach(|| execute(&p.sf, x, &p.rp, mode))
            }
            DType::Bf16 => {
                let x = typed::<bf16>(&p, &q, &k, &v)?;
                py.detach(|| execute(&p.sf, x, &p.rp, mode))
            }
        };
        // A user function that failed on the host makes every result meaningless.
        if let Some(e) = p.sf.user_fn_failure() {
            return Err(input_error(e.to_string()));
        }
        to_numpy(py, result.map_err(|e| exec_error(&name, e))?)
    })
}

/// The allowed-key matrix `[B, Hq, Sq, Sk]` (bool) of a spec's mask for a problem shape, as
/// the f64 reference sees it (bottom-right aligned positions, document ids, block lists).
///
/// It is read off the reference itself: with q = k = 0 every allowed score is equal, so the
/// weight of key j in row i is `1 / count_i > 0` exactly when j is allowed; v holds one-hot
/// columns, `D` keys per reference call. Softcap and ALiBi are left out of the probe (they
/// change no key set); a user score function is kept, so it must stay finite at score 0.
#[pyfunction]
#[pyo3(signature = (spec, batch, heads_q, heads_kv, seq_q, seq_k, doc = None))]
#[allow(clippy::too_many_arguments)]
fn mask_matrix<'py>(
    py: Python<'py>,
    spec: &str,
    batch: usize,
    heads_q: usize,
    heads_kv: usize,
    seq_q: usize,
    seq_k: usize,
    doc: Option<PyReadonlyArray1<'py, i32>>,
) -> PyResult<Bound<'py, PyAny>> {
    guarded("mask_matrix", || {
        let doc = doc.map(|d| d.as_array().to_vec());
        let p = prepare(spec, seq_k, doc)?;
        if batch * heads_q * seq_q * seq_k > 1 << 26 {
            return Err(input_error(
                "mask_matrix: B * Hq * Sq * Sk above 2^26\n  fix: ask for a smaller problem",
            ));
        }
        let dims = Shape4::new(batch, heads_q, seq_q, seq_k);
        let allowed = py
            .detach(|| match p.sf.spec.dtype {
                DType::F32 => probe_mask::<f32>(&p, dims, heads_kv),
                DType::F16 => probe_mask::<f16>(&p, dims, heads_kv),
                DType::Bf16 => probe_mask::<bf16>(&p, dims, heads_kv),
            })
            .map_err(|e| exec_error(&p.sf.spec.canonical_name(), e))?;
        if let Some(e) = p.sf.user_fn_failure() {
            return Err(input_error(e.to_string()));
        }
        Ok(numpy::PyArray1::from_vec(py, allowed)
            .reshape([batch, heads_q, seq_q, seq_k])?
            .into_any())
    })
}

/// The allowed-key matrix of `p` for `dims` = (B, Hq, Sq, Sk) (see [`mask_matrix`]).
fn probe_mask<T: Element + SimElem>(
    p: &Prepared,
    dims: Shape4,
    heads_kv: usize,
) -> Result<Vec<bool>, ExecError> {
    let (batch, heads_q, seq_q, seq_k) = (dims.batch, dims.heads, dims.seq, dims.dim);
    // Built-in score modifications change no key set but can underflow a far key's weight
    // (ALiBi at long distances): the probe runs without them.
    let mut sf = p.sf.clone();
    let mut rp = p.rp.clone();
    if matches!(sf.spec.score, ScoreMod::Softcap | ScoreMod::Alibi) {
        sf.spec.score = ScoreMod::None;
        (rp.softcap, rp.alibi_slopes) = (None, None);
    }
    let d = sf.spec.head_dim.get();
    let zero = T::from_f32(0.0);
    let zeros = |h, s| Tensor4::<T>::from_fn(Shape4::new(batch, h, s, d), |_, _, _, _| zero);
    let mut allowed = vec![false; batch * heads_q * seq_q * seq_k];
    for j0 in (0..seq_k).step_by(d) {
        let v = Tensor4::<T>::from_fn(Shape4::new(batch, heads_kv, seq_k, d), |_, _, j, c| {
            T::from_f32(if j >= j0 && j - j0 == c { 1.0 } else { 0.0 })
        });
        let x = Inputs::new(zeros(heads_q, seq_q), zeros(heads_kv, seq_k), v);
        let o = execute(&sf, x, &rp, Mode::Reference(Precision::F64))?;
        for row in 0..batch * heads_q * seq_q {
            for c in 0..d.min(seq_k - j0) {
                if o.out[row * d + c] > 0.0 {
                    allowed[row * seq_k + j0 + c] = true;
                }
            }
        }
    }
    Ok(allowed)
}

/// The f64 reference backward (variants.md section 12) of a spec on q, k, v, `dout` and
/// optionally `dlse`: `(dq, dk, dv)` as float64 arrays. Built-in masks with no score
/// modification or softcap (the generated kernels, [`backward`], cover every static variant).
#[pyfunction]
#[pyo3(signature = (spec, q, k, v, dout, dlse = None, doc = None))]
#[allow(clippy::too_many_arguments)]
fn backward_reference<'py>(
    py: Python<'py>,
    spec: &str,
    q: PyReadonlyArray4<'py, f32>,
    k: PyReadonlyArray4<'py, f32>,
    v: PyReadonlyArray4<'py, f32>,
    dout: PyReadonlyArray4<'py, f32>,
    dlse: Option<PyReadonlyArray1<'py, f64>>,
    doc: Option<PyReadonlyArray1<'py, i32>>,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    guarded("backward_reference", || {
        let doc = doc.map(|d| d.as_array().to_vec());
        let dlse = dlse.map(|d| d.as_array().to_vec());
        let p = prepare(spec, k.shape()[2], doc)?;
        let name = p.sf.spec.canonical_name();
        let score = match p.sf.spec.score {
            ScoreMod::None => DiffScoreMod::None,
            ScoreMod::Softcap => DiffScoreMod::Softcap(f64::from(p.rp.softcap.unwrap_or(0.0))),
            _ => {
                return Err(input_error(format!(
                    "score: {name}: the Python package has the reference backward for no score modification and softcap only\n  fix: drop the score modification for training, or use the Rust API (attnforge_reference::attention_backward)"
                )))
            }
        };
        let tag = p.sf.spec.mask.tag();
        if matches!(tag, "predicate" | "block_sparse" | "lm_infinite") {
            return Err(input_error(format!(
                "mask: {name}: the Python package has the reference backward for the built-in element masks only, not `{tag}`\n  fix: use another mask, or the Rust API (attnforge_reference::attention_backward)"
            )));
        }
        let params: Vec<(&str, f64)> = p.sf.mask_params.iter().collect();
        let mask = RefMask::builtin(tag, &params, p.rp.doc.as_deref().unwrap_or(&[]))
            .map_err(|e| input_error(format!("{name}: {e}")))?;
        let scale =
            p.sf.spec
                .scale
                .map_or(1.0 / (p.sf.spec.head_dim.get() as f64).sqrt(), f64::from);
        let grads = match p.sf.spec.dtype {
            DType::F32 => {
                let (x, g) = (typed::<f32>(&p, &q, &k, &v)?, tensor::<f32>("dout", &dout)?);
                py.detach(|| grads_of(&x, &g, dlse.as_deref(), &mask, &score, scale))
            }
            DType::F16 => {
                let (x, g) = (typed::<f16>(&p, &q, &k, &v)?, tensor::<f16>("dout", &dout)?);
                py.detach(|| grads_of(&x, &g, dlse.as_deref(), &mask, &score, scale))
            }
            DType::Bf16 => {
                let (x, g) = (
                    typed::<bf16>(&p, &q, &k, &v)?,
                    tensor::<bf16>("dout", &dout)?,
                );
                py.detach(|| grads_of(&x, &g, dlse.as_deref(), &mask, &score, scale))
            }
        }
        .map_err(|e| input_error(format!("{name}: {e}")))?;
        let arr = |t: Tensor4<f64>| -> PyResult<Bound<'py, PyAny>> {
            let s = t.shape;
            let data = if t.strides == s.contiguous_strides() {
                t.data
            } else {
                let mut d = Vec::with_capacity(s.numel());
                for b in 0..s.batch {
                    for h in 0..s.heads {
                        for i in 0..s.seq {
                            for c in 0..s.dim {
                                let st = t.strides;
                                d.push(t.data[b * st[0] + h * st[1] + i * st[2] + c * st[3]]);
                            }
                        }
                    }
                }
                d
            };
            Ok(PyArray1::from_vec(py, data)
                .reshape([s.batch, s.heads, s.seq, s.dim])?
                .into_any())
        };
        Ok((arr(grads.dq)?, arr(grads.dk)?, arr(grads.dv)?))
    })
}

fn grads_of<T: Element>(
    x: &Inputs<T>,
    dout: &Tensor4<T>,
    dlse: Option<&[f64]>,
    mask: &RefMask,
    score: &DiffScoreMod,
    scale: f64,
) -> Result<AttnGrads, attnforge::reference::RefError> {
    let variant = BackwardVariant::Masked {
        mask,
        score_mod: score,
    };
    let opts = AttnOptions {
        scale: Some(scale),
        precision: Precision::F64,
    };
    attention_backward(&x.q, &x.k, &x.v, dout, dlse, &variant, &opts)
}

/// The generated backward kernels (variants.md section 12) of a static spec, on the simulator
/// (`backend="sim"`) or GPU 0 (`"cuda"`, arrays staged through host copies): the forward
/// kernel, then the Delta, dK/dV and dQ kernels. Returns float64 `(dq, dk, dv)` (values of the
/// spec's dtype). `dlse`: `[B * Hq * Sq]` when the loss reads lse.
#[pyfunction]
#[pyo3(signature = (spec, q, k, v, dout, dlse = None, backend = "sim", doc = None))]
#[allow(clippy::too_many_arguments)]
fn backward<'py>(
    py: Python<'py>,
    spec: &str,
    q: PyReadonlyArray4<'py, f32>,
    k: PyReadonlyArray4<'py, f32>,
    v: PyReadonlyArray4<'py, f32>,
    dout: PyReadonlyArray4<'py, f32>,
    dlse: Option<PyReadonlyArray1<'py, f32>>,
    backend: &str,
    doc: Option<PyReadonlyArray1<'py, i32>>,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    guarded("backward", || {
        let backend = match backend {
            "sim" => Backend::sim(),
            "cuda" => Backend::Cuda(0),
            b => {
                return Err(input_error(format!(
                    "backend `{b}`: the generated backward runs on \"sim\" or \"cuda\"\n  fix: use backward_reference for the f64 reference"
                )))
            }
        };
        let doc = doc.map(|d| d.as_array().to_vec());
        let dlse = dlse.map(|d| d.as_array().to_vec());
        let p = prepare(spec, k.shape()[2], doc)?;
        let name = p.sf.spec.canonical_name();
        let g = match p.sf.spec.dtype {
            DType::F32 => {
                let (x, g) = (typed::<f32>(&p, &q, &k, &v)?, tensor::<f32>("dout", &dout)?);
                py.detach(|| kernel_grads(&p, &x, &g, dlse.as_deref(), &backend))
            }
            DType::F16 => {
                let (x, g) = (typed::<f16>(&p, &q, &k, &v)?, tensor::<f16>("dout", &dout)?);
                py.detach(|| kernel_grads(&p, &x, &g, dlse.as_deref(), &backend))
            }
            DType::Bf16 => {
                let (x, g) = (
                    typed::<bf16>(&p, &q, &k, &v)?,
                    tensor::<bf16>("dout", &dout)?,
                );
                py.detach(|| kernel_grads(&p, &x, &g, dlse.as_deref(), &backend))
            }
        }
        .map_err(|e| exec_error(&name, e))?;
        Ok((
            f64_array(py, g.dq)?,
            f64_array(py, g.dk)?,
            f64_array(py, g.dv)?,
        ))
    })
}

fn kernel_grads<T: Element + SimElem>(
    p: &Prepared,
    x: &Inputs<T>,
    dout: &Tensor4<T>,
    dlse: Option<&[f32]>,
    backend: &Backend,
) -> Result<attnforge::exec_backward::KernelGrads, ExecError> {
    use attnforge::codegen::backward::BackwardTile;
    use attnforge::exec_backward::{run_backward_cuda, simulate_backward, Upstream};
    let tile = p.sf.tile().map_err(|e| ExecError::Input {
        field: e.field.clone(),
        message: e.message.clone(),
        fix: e.fix.clone(),
    })?;
    let up = Upstream { dout, dlse };
    let bt = BackwardTile::for_spec(&p.sf.spec);
    match backend {
        Backend::Sim(cfg) => simulate_backward(&p.sf.spec, &tile, &bt, x, up, &p.rp, cfg),
        Backend::Cuda(o) => Ok(run_backward_cuda(&p.sf.spec, &tile, &bt, x, up, &p.rp, 0, *o)?.0),
        Backend::Reference => unreachable!("parsed above"),
    }
}

/// A contiguous float64 NumPy array of `t`.
fn f64_array(py: Python<'_>, t: Tensor4<f64>) -> PyResult<Bound<'_, PyAny>> {
    let s = t.shape;
    Ok(PyArray1::from_vec(py, t.data)
        .reshape([s.batch, s.heads, s.seq, s.dim])?
        .into_any())
}

/// The catalog of static kernels: a list of dicts (name, dtype, head_dim, mask, score, gqa).
#[pyfunction]
fn catalog_entries(py: Python<'_>) -> PyResult<Vec<Bound<'_, PyDict>>> {
    guarded("catalog", || {
        catalog::catalog()
            .into_iter()
            .map(|s| {
                let d = PyDict::new(py);
                d.set_item("name", s.canonical_name())?;
                d.set_item("dtype", s.dtype.short())?;
                d.set_item("head_dim", s.head_dim.get())?;
                d.set_item("mask", s.mask.tag())?;
                d.set_item("score", s.score.short().unwrap_or_else(|| "none".into()))?;
                d.set_item("gqa", s.gqa)?;
                let sf = specfile::from_catalog(s);
                d.set_item("reads_doc", sf.spec.mask.reads_doc())?;
                let params = PyDict::new(py);
                for (n, x) in sf.mask_params.iter() {
                    params.set_item(n, x)?;
                }
                if let Some(c) = sf.softcap {
                    params.set_item("softcap", c)?;
                }
                d.set_item("params", params)?;
                Ok(d)
            })
            .collect()
    })
}

/// The canonical name of a spec (catalog name or spec-file text); validates it.
#[pyfunction]
fn canonical_name(spec: &str) -> PyResult<String> {
    guarded("canonical_name", || {
        Ok(resolve(spec)?.spec.canonical_name())
    })
}

/// The oracle's tolerance `(rtol, atol)` for a dtype (`"f32"`, `"f16"`, `"bf16"`):
/// `max|K - R| <= rtol * max|N - R| + atol` (variants.md section 0).
#[pyfunction]
fn tolerance(dtype: &str) -> PyResult<(f64, f64)> {
    use attnforge::reference::DType as R;
    let d = match dtype {
        "f32" | "float32" => R::F32,
        "f16" | "float16" => R::F16,
        "bf16" | "bfloat16" => R::Bf16,
        x => {
            return Err(input_error(format!(
                "dtype `{x}` is unknown\n  fix: use \"f32\", \"f16\" or \"bf16\""
            )))
        }
    };
    let t = Tolerance::for_dtype(d);
    Ok((t.rtol, t.atol))
}

/// Every parameter name of the built-in masks (the `[params]` keys of a spec file).
#[pyfunction]
fn mask_param_names() -> Vec<&'static str> {
    attnforge::codegen::masks::all_param_names()
}

/// The extension module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("InputError", m.py().get_type::<InputError>())?;
    m.add_function(wrap_pyfunction!(run, m)?)?;
    m.add_function(wrap_pyfunction!(device::launch_cuda, m)?)?;
    m.add_function(wrap_pyfunction!(mask_matrix, m)?)?;
    m.add_function(wrap_pyfunction!(serving::run_varlen, m)?)?;
    m.add_function(wrap_pyfunction!(serving::run_paged, m)?)?;
    m.add_function(wrap_pyfunction!(backward_reference, m)?)?;
    m.add_function(wrap_pyfunction!(backward, m)?)?;
    m.add_function(wrap_pyfunction!(catalog_entries, m)?)?;
    m.add_function(wrap_pyfunction!(canonical_name, m)?)?;
    m.add_function(wrap_pyfunction!(tolerance, m)?)?;
    m.add_function(wrap_pyfunction!(mask_param_names, m)?)?;
    Ok(())
}
