"""attnforge from Python.

The generated attention kernels of attnforge, run on CPU arrays through the SIMT simulator
(the exact generated CUDA) or the f64 reference, a PyTorch op (``attnforge.torch``) and a
conformance suite for any attention implementation (``attnforge.conformance``).

The generated backward kernels run on the simulator (``backward``); the serving layouts run
through ``run_varlen`` (packed sequences) and ``run_paged`` (a paged KV cache, prefill or
split-KV decoding), forward only.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from . import _native
from ._native import InputError
from ._spec import build_spec

__all__ = [
    "InputError",
    "backward",
    "backward_reference",
    "build_spec",
    "canonical_name",
    "catalog",
    "mask_matrix",
    "run",
    "run_paged",
    "run_varlen",
    "tolerance",
]


def catalog() -> list[dict[str, Any]]:
    """The built-in static kernels: dicts with name, dtype, head_dim, mask, score, gqa,
    reads_doc (needs document ids) and params (the default mask parameters)."""
    return _native.catalog_entries()


def canonical_name(spec: str) -> str:
    """The canonical kernel name of a catalog name or spec-file text (validates it)."""
    return _native.canonical_name(spec)


def tolerance(dtype: str) -> tuple[float, float]:
    """``(rtol, atol)`` of the oracle for ``"f32"``, ``"f16"`` or ``"bf16"``."""
    return _native.tolerance(dtype)


def _f32(name: str, a: Any) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 4:
        raise InputError(
            f"input `{name}`: {a.ndim} dimensions, shape {tuple(a.shape)}\n"
            f"  fix: pass {name} as [batch, heads, seq, head_dim]"
        )
    if not np.issubdtype(a.dtype, np.floating):
        raise InputError(f"input `{name}`: dtype {a.dtype}\n  fix: pass a floating-point array")
    return np.ascontiguousarray(a, dtype=np.float32)


def _doc(doc: Any) -> Optional[np.ndarray]:
    if doc is None:
        return None
    d = np.asarray(doc)
    if not np.issubdtype(d.dtype, np.integer):
        raise InputError(f"input `doc`: dtype {d.dtype}\n  fix: pass integer document ids ([Sk] or [B, Sk])")
    return np.ascontiguousarray(d.reshape(-1), dtype=np.int32)


def run(spec: str, q: Any, k: Any, v: Any, backend: str = "sim", doc: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Run a static kernel (catalog name or spec-file text) on q, k, v.

    Arrays are converted to C-contiguous float32 and rounded to the spec's dtype.
    ``backend``: ``"sim"`` (generated CUDA on the CPU simulator), ``"reference"`` (f64),
    ``"naive"`` (same-precision naive path) or ``"cuda"`` (GPU 0 through host copies; built,
    never run on a GPU yet). Returns float64 ``(out [B, Hq, Sq, Dv],
    lse [B, Hq, Sq])``; empty rows have out 0 and lse -inf.
    """
    return _native.run(spec, _f32("q", q), _f32("k", k), _f32("v", v), backend, _doc(doc))


def mask_matrix(
    spec: str, batch: int, heads_q: int, heads_kv: int, seq_q: int, seq_k: int, doc: Any = None
) -> np.ndarray:
    """Boolean ``[B, Hq, Sq, Sk]``: which keys each query row may attend to under the spec's
    mask, as the f64 reference sees it (bottom-right aligned when Sq != Sk)."""
    return _native.mask_matrix(spec, batch, heads_q, heads_kv, seq_q, seq_k, _doc(doc))


def backward(
    spec: str, q: Any, k: Any, v: Any, dout: Any, dlse: Any = None, backend: str = "sim", doc: Any = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The generated backward kernels (variants.md section 12): the forward kernel, then the
    Delta, dK/dV and dQ kernels, on the simulator (``backend="sim"``) or GPU 0 (``"cuda"``).
    Float64 ``(dq, dk, dv)`` holding values of the spec's dtype; ``dlse`` (``[B, Hq, Sq]``)
    when the loss reads lse. Deterministic: two calls give identical arrays."""
    dl = None if dlse is None else np.ascontiguousarray(np.asarray(dlse, dtype=np.float32).reshape(-1))
    return _native.backward(spec, _f32("q", q), _f32("k", k), _f32("v", v), _f32("dout", dout), dl, backend, _doc(doc))


def backward_reference(
    spec: str, q: Any, k: Any, v: Any, dout: Any, dlse: Any = None, doc: Any = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The f64 reference backward (variants.md section 12): float64 ``(dq, dk, dv)`` for
    ``dout`` (and ``dlse``, ``[B, Hq, Sq]``, when the loss reads lse). Built-in element masks,
    no score modification or softcap. Not a kernel: see ``backward`` for the generated one."""
    dl = None if dlse is None else np.ascontiguousarray(np.asarray(dlse, dtype=np.float64).reshape(-1))
    return _native.backward_reference(spec, _f32("q", q), _f32("k", k), _f32("v", v), _f32("dout", dout), dl, _doc(doc))


def _packed(name: str, a: Any, ndim: int = 3) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != ndim:
        want = "[tokens, heads, head_dim]" if ndim == 3 else "[num_pages, page_size, heads, head_dim]"
        raise InputError(f"input `{name}`: {a.ndim} dimensions, shape {tuple(a.shape)}\n  fix: pass {name} as {want}")
    if not np.issubdtype(a.dtype, np.floating):
        raise InputError(f"input `{name}`: dtype {a.dtype}\n  fix: pass a floating-point array")
    return np.ascontiguousarray(a, dtype=np.float32)


def _i32(name: str, a: Any, ndim: int = 1) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != ndim or not np.issubdtype(a.dtype, np.integer):
        want = "[B + 1] or [B]" if ndim == 1 else "[B, max_pages]"
        raise InputError(
            f"input `{name}`: dtype {a.dtype}, shape {tuple(a.shape)}\n  fix: pass integer {name} of shape {want}"
        )
    return np.ascontiguousarray(a, dtype=np.int32)


def run_varlen(
    spec: str,
    q: Any,
    k: Any,
    v: Any,
    cu_seqlens_q: Any,
    cu_seqlens_k: Any,
    backend: str = "sim",
    doc: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Attention over packed sequences (``flash_attn_varlen_func``'s layout): q
    ``[Tq, Hq, D]``, k, v ``[Tk, Hkv, D]``; sequence ``b`` owns q rows ``cu_seqlens_q[b] ..
    cu_seqlens_q[b + 1]`` and the k, v rows of ``cu_seqlens_k``. A catalog name or dense spec
    takes the varlen layout. Returns float64 ``(out [Tq, Hq, Dv], lse [Hq, Tq])``; empty rows
    have out 0 and lse -inf. ``doc``: document ids packed like the keys."""
    return _native.run_varlen(
        spec,
        _packed("q", q),
        _packed("k", k),
        _packed("v", v),
        _i32("cu_seqlens_q", cu_seqlens_q),
        _i32("cu_seqlens_k", cu_seqlens_k),
        backend,
        _doc(doc),
    )


def run_paged(
    spec: str,
    q: Any,
    k_cache: Any,
    v_cache: Any,
    cu_seqlens_q: Any,
    block_table: Any,
    seqlens_k: Any,
    backend: str = "sim",
    decode: bool = False,
    num_splits: Optional[int] = None,
    doc: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Attention over a paged KV cache (``flash_attn_with_kvcache``'s cache layout): q
    ``[Tq, Hq, D]`` packed with ``cu_seqlens_q``; caches ``[num_pages, page_size, Hkv, D]``;
    key ``j`` of sequence ``b`` is slot ``j % page_size`` of page ``block_table[b, j //
    page_size]``; ``seqlens_k`` ``[B]``. ``decode=True``: the split-KV decode kernel (at
    most 16 query tokens per sequence; ``num_splits`` fixes the splits, else the decode
    model's count, as ``attnforge run``). Returns float64 ``(out [Tq, Hq, Dv], lse [Hq, Tq])``."""
    return _native.run_paged(
        spec,
        _packed("q", q),
        _packed("k_cache", k_cache, 4),
        _packed("v_cache", v_cache, 4),
        _i32("cu_seqlens_q", cu_seqlens_q),
        _i32("block_table", block_table, 2),
        _i32("seqlens_k", seqlens_k),
        backend,
        decode,
        num_splits,
        _doc(doc),
    )
