//! The serving layouts from Python: packed sequences (`run_varlen`, like FlashAttention's
//! `flash_attn_varlen_func`) and a paged KV cache (`run_paged`, like
//! `flash_attn_with_kvcache`), through the same `SpecFile::run_serving` as `attnforge run`.

use attnforge::codegen::spec::{DType, Layout};
use attnforge::exec_serving::{ServingInputs, ServingKeys};
use attnforge::reference::{Element, Packed, PagedCache, VarlenOutput};
use attnforge::sim::SimElem;
use attnforge::specfile::{ServingBackend, SpecFile};
use half::{bf16, f16};
use numpy::{
    PyArray1, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2, PyReadonlyArray3,
    PyReadonlyArray4, PyUntypedArrayMethods,
};
use pyo3::prelude::*;

use crate::{exec_error, guarded, input_error, parse_mode, resolve, Mode, MAX_SCORE_BOUND};

/// The spec of `spec` in `layout`: a dense spec (a catalog name) takes the layout asked
/// for; a spec file that names another serving layout is refused.
fn in_layout(spec: &str, layout: Layout) -> PyResult<SpecFile> {
    let mut sf = resolve(spec)?;
    let have = sf.spec.layout;
    if have != Layout::Dense && have != layout {
        return Err(input_error(format!(
            "spec: layout `{}`, but this entry point runs `{}`\n  fix: drop `layout` from the spec or call the entry point of its layout",
            have.tag(),
            layout.tag()
        )));
    }
    sf.spec.layout = layout;
    Ok(sf)
}

fn contiguous<'a, T>(name: &str, slice: Result<&'a [T], numpy::AsSliceError>) -> PyResult<&'a [T]> {
    slice.map_err(|_| {
        input_error(format!(
            "input `{name}`: not C-contiguous\n  fix: pass numpy.ascontiguousarray({name}) (torch: {name}.contiguous())"
        ))
    })
}

fn packed<T: Element>(name: &str, a: &PyReadonlyArray3<'_, f32>) -> PyResult<Packed<T>> {
    let s = a.shape();
    let data = contiguous(name, a.as_slice())?;
    Packed::from_vec(
        s[0],
        s[1],
        s[2],
        data.iter().map(|&x| T::from_f32(x)).collect(),
    )
    .map_err(|e| input_error(format!("input `{name}`: {e}")))
}

fn cache<T: Element>(name: &str, a: &PyReadonlyArray4<'_, f32>) -> PyResult<PagedCache<T>> {
    let s = a.shape();
    let data = contiguous(name, a.as_slice())?;
    PagedCache::from_vec(
        s[0],
        s[1],
        s[2],
        s[3],
        data.iter().map(|&x| T::from_f32(x)).collect(),
    )
    .map_err(|e| input_error(format!("input `{name}`: {e}")))
}

fn ints(name: &str, a: &PyReadonlyArray1<'_, i32>) -> PyResult<Vec<i32>> {
    Ok(contiguous(name, a.as_slice())?.to_vec())
}

/// NaN/Inf and magnitudes the f32 kernels cannot hold (the dense `run`'s rule, with the
/// longest key sequence as `Sk`).
fn check_values<T: Element>(sf: &SpecFile, x: &ServingInputs<T>) -> PyResult<()> {
    let (k, v, names) = match &x.keys {
        ServingKeys::Varlen { k, v, .. } => (&k.data, &v.data, ["k", "v"]),
        ServingKeys::Paged {
            k_cache, v_cache, ..
        } => (&k_cache.data, &v_cache.data, ["k_cache", "v_cache"]),
    };
    let mut max = [0f64; 3];
    for (i, (name, data)) in [("q", &x.q.data), (names[0], k), (names[1], v)]
        .into_iter()
        .enumerate()
    {
        for e in data.iter() {
            let e = e.to_f64();
            if !e.is_finite() {
                return Err(input_error(format!(
                    "input `{name}`: contains NaN or Inf (after rounding to the spec's dtype)\n  fix: clean the input, or use a wider dtype"
                )));
            }
            max[i] = max[i].max(e.abs());
        }
    }
    let d = sf.spec.head_dim.get() as f64;
    let scale = sf.spec.scale.map_or(1.0 / d.sqrt(), f64::from);
    let longest = match &x.keys {
        ServingKeys::Varlen { cu_seqlens_k, .. } => cu_seqlens_k
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or(0),
        ServingKeys::Paged { seqlens_k, .. } => seqlens_k.iter().copied().max().unwrap_or(0),
    };
    let score = scale.abs() * max[0] * max[1] * d;
    let acc = max[2] * f64::from(longest.max(0));
    if score > MAX_SCORE_BOUND || acc > MAX_SCORE_BOUND {
        return Err(input_error(format!(
            "inputs: scores can reach {score:.3e} and the accumulator {acc:.3e}, above {MAX_SCORE_BOUND:e} (kernels compute in f32)\n  fix: scale q, k or v down"
        )));
    }
    Ok(())
}

type Arrays<'py> = (Bound<'py, PyAny>, Bound<'py, PyAny>);

fn to_numpy(py: Python<'_>, o: VarlenOutput) -> PyResult<Arrays<'_>> {
    let out = PyArray1::from_vec(py, o.out).reshape([o.tokens, o.heads, o.dim])?;
    let lse = PyArray1::from_vec(py, o.lse).reshape([o.heads, o.tokens])?;
    Ok((out.into_any(), lse.into_any()))
}

fn backend(mode: Mode) -> ServingBackend {
    match mode {
        Mode::Sim => ServingBackend::Sim,
        Mode::Reference(p) => ServingBackend::Reference(p),
        Mode::Cuda(o) => ServingBackend::Cuda(o),
    }
}

/// The keys of a call, still as arrays (typed once the spec's dtype is known).
enum KeyArrays<'a, 'py> {
    Varlen(
        &'a PyReadonlyArray3<'py, f32>,
        &'a PyReadonlyArray3<'py, f32>,
        Vec<i32>,
    ),
    Paged(
        &'a PyReadonlyArray4<'py, f32>,
        &'a PyReadonlyArray4<'py, f32>,
        Vec<i32>,
        usize,
        Vec<i32>,
    ),
}

struct Call<'a, 'py> {
    sf: SpecFile,
    q: &'a PyReadonlyArray3<'py, f32>,
    cu_seqlens_q: Vec<i32>,
    keys: KeyArrays<'a, 'py>,
    doc: Option<Vec<i32>>,
    num_splits: Option<usize>,
    mode: Mode,
}

fn inputs<T: Element>(c: &Call<'_, '_>) -> PyResult<ServingInputs<T>> {
    let keys = match &c.keys {
        KeyArrays::Varlen(k, v, cu) => ServingKeys::Varlen {
            k: packed("k", k)?,
            v: packed("v", v)?,
            cu_seqlens_k: cu.clone(),
        },
        KeyArrays::Paged(k, v, table, max_pages, seqlens_k) => ServingKeys::Paged {
            k_cache: cache("k_cache", k)?,
            v_cache: cache("v_cache", v)?,
            block_table: table.clone(),
            max_pages: *max_pages,
            seqlens_k: seqlens_k.clone(),
        },
    };
    Ok(ServingInputs {
        q: packed("q", c.q)?,
        cu_seqlens_q: c.cu_seqlens_q.clone(),
        keys,
    })
}

fn typed<T: Element + SimElem>(py: Python<'_>, c: &Call<'_, '_>) -> PyResult<VarlenOutput> {
    let x = inputs::<T>(c)?;
    check_values(&c.sf, &x)?;
    let (doc, splits, b) = (c.doc.clone(), c.num_splits, backend(c.mode));
    let sf = &c.sf;
    let r = py.detach(|| sf.run_serving(&x, doc, splits, b));
    if let Some(e) = c.sf.user_fn_failure() {
        return Err(input_error(e.to_string()));
    }
    r.map_err(|e| exec_error(&c.sf.spec.canonical_name(), e))
}

fn call<'py>(py: Python<'py>, c: Call<'_, 'py>) -> PyResult<Arrays<'py>> {
    let out = match c.sf.spec.dtype {
        DType::F32 => typed::<f32>(py, &c)?,
        DType::F16 => typed::<f16>(py, &c)?,
        DType::Bf16 => typed::<bf16>(py, &c)?,
    };
    to_numpy(py, out)
}

/// Attention over packed sequences: q `[Tq, Hq, D]`, k, v `[Tk, Hkv, D]` (float32, values
/// rounded to the spec's dtype), sequence `b` owning rows `cu_seqlens_q[b] ..
/// cu_seqlens_q[b + 1]` of q and the `cu_seqlens_k` rows of k, v. Returns `(out, lse)`:
/// float64 `[Tq, Hq, Dv]` and `[Hq, Tq]`. `doc`: document ids packed like the keys.
#[pyfunction]
#[pyo3(signature = (spec, q, k, v, cu_seqlens_q, cu_seqlens_k, backend = "sim", doc = None))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_varlen<'py>(
    py: Python<'py>,
    spec: &str,
    q: PyReadonlyArray3<'py, f32>,
    k: PyReadonlyArray3<'py, f32>,
    v: PyReadonlyArray3<'py, f32>,
    cu_seqlens_q: PyReadonlyArray1<'py, i32>,
    cu_seqlens_k: PyReadonlyArray1<'py, i32>,
    backend: &str,
    doc: Option<PyReadonlyArray1<'py, i32>>,
) -> PyResult<Arrays<'py>> {
    guarded("run_varlen", || {
        let c = Call {
            sf: in_layout(spec, Layout::Varlen)?,
            q: &q,
            cu_seqlens_q: ints("cu_seqlens_q", &cu_seqlens_q)?,
            keys: KeyArrays::Varlen(&k, &v, ints("cu_seqlens_k", &cu_seqlens_k)?),
            doc: doc.as_ref().map(|d| ints("doc", d)).transpose()?,
            num_splits: None,
            mode: parse_mode(backend)?,
        };
        call(py, c)
    })
}

/// Attention over a paged KV cache: q `[Tq, Hq, D]` packed with `cu_seqlens_q`, caches
/// `[num_pages, page_size, Hkv, D]`, `block_table` `[B, max_pages]` (int32) and
/// `seqlens_k` `[B]`. `decode`: the split-KV decode kernel (at most 16 query tokens per
/// sequence; `num_splits` fixes its splits, else the runtime's rule). Returns `(out, lse)`
/// like [`run_varlen`].
#[pyfunction]
#[pyo3(signature = (spec, q, k_cache, v_cache, cu_seqlens_q, block_table, seqlens_k, backend = "sim", decode = false, num_splits = None, doc = None))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_paged<'py>(
    py: Python<'py>,
    spec: &str,
    q: PyReadonlyArray3<'py, f32>,
    k_cache: PyReadonlyArray4<'py, f32>,
    v_cache: PyReadonlyArray4<'py, f32>,
    cu_seqlens_q: PyReadonlyArray1<'py, i32>,
    block_table: PyReadonlyArray2<'py, i32>,
    seqlens_k: PyReadonlyArray1<'py, i32>,
    backend: &str,
    decode: bool,
    num_splits: Option<usize>,
    doc: Option<PyReadonlyArray1<'py, i32>>,
) -> PyResult<Arrays<'py>> {
    guarded("run_paged", || {
        let layout = if decode {
            Layout::Decode
        } else {
            Layout::Paged
        };
        let max_pages = block_table.shape()[1];
        let table = contiguous("block_table", block_table.as_slice())?.to_vec();
        let c = Call {
            sf: in_layout(spec, layout)?,
            q: &q,
            cu_seqlens_q: ints("cu_seqlens_q", &cu_seqlens_q)?,
            keys: KeyArrays::Paged(
                &k_cache,
                &v_cache,
                table,
                max_pages,
                ints("seqlens_k", &seqlens_k)?,
            ),
            doc: doc.as_ref().map(|d| ints("doc", d)).transpose()?,
            num_splits,
            mode: parse_mode(backend)?,
        };
        call(py, c)
    })
}
