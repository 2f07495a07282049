//! The forward on CUDA tensors: PyTorch's device pointers, element strides and current
//! stream handed to `attnforge_runtime::exec_device`, which launches without copies.

use attnforge::codegen::spec::DType;
use attnforge::kernels::exec_device::{launch_device, DeviceLaunch, DeviceTensor};
use pyo3::prelude::*;

use crate::{exec_error, guarded, input_error, prepare, tile_of};

/// One tensor as Python describes it: `(data_ptr, shape, stride)`.
type PyTensor = (u64, Vec<usize>, Vec<i64>);

fn device_tensor(name: &str, t: &PyTensor) -> PyResult<DeviceTensor> {
    let (ptr, shape, strides) = t;
    let (Ok(shape), Ok(strides)) = (
        <[usize; 4]>::try_from(shape.as_slice()),
        <[i64; 4]>::try_from(strides.as_slice()),
    ) else {
        return Err(input_error(format!(
            "input `{name}`: shape {shape:?} and stride {strides:?}\n  fix: pass {name} as [batch, heads, seq, head_dim]"
        )));
    };
    Ok(DeviceTensor {
        ptr: *ptr,
        shape,
        strides,
    })
}

fn dtype_of(dtype: &str) -> PyResult<DType> {
    match dtype {
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        "bf16" => Ok(DType::Bf16),
        d => Err(input_error(format!(
            "dtype `{d}`\n  fix: use torch.float32, torch.float16 or torch.bfloat16"
        ))),
    }
}

/// Enqueue the forward of a static kernel on CUDA tensors, on `stream`.
///
/// `q`, `k`, `v`, `out`: `(data_ptr, shape, stride)` of `[B, H, S, D]` tensors of `dtype`
/// (`"f32"`, `"f16"`, `"bf16"`) on device `device`, strides in elements (the last must be
/// 1); `lse`: the `data_ptr` of a contiguous float32 `[B, Hq, Sq]`, or None. `stream`: the
/// `CUstream` handle (`torch.cuda.current_stream(device).cuda_stream`). Returns once the
/// launch is enqueued; nothing is copied or synchronized. Bad input raises `InputError`
/// naming the argument; without a GPU, `RuntimeError` ("no GPU: ...").
#[pyfunction]
#[pyo3(signature = (spec, dtype, q, k, v, out, lse, device, stream, doc = None))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn launch_cuda(
    py: Python<'_>,
    spec: &str,
    dtype: &str,
    q: PyTensor,
    k: PyTensor,
    v: PyTensor,
    out: PyTensor,
    lse: Option<u64>,
    device: usize,
    stream: u64,
    doc: Option<Vec<i32>>,
) -> PyResult<()> {
    guarded("launch_cuda", || {
        let l = DeviceLaunch {
            dtype: dtype_of(dtype)?,
            q: device_tensor("q", &q)?,
            k: device_tensor("k", &k)?,
            v: device_tensor("v", &v)?,
            out: device_tensor("out", &out)?,
            lse,
            ordinal: device,
            stream,
        };
        let p = prepare(spec, l.k.shape[2], doc)?;
        let name = p.sf.spec.canonical_name();
        let tile = tile_of(&p.sf).map_err(|e| exec_error(&name, e))?;
        py.detach(|| launch_device(&p.sf.spec, &tile, &p.rp, &l))
            .map_err(|e| exec_error(&name, e))?;
        if let Some(e) = p.sf.user_fn_failure() {
            return Err(input_error(e.to_string()));
        }
        Ok(())
    })
}
