"""``attnforge.torch``: attnforge kernels as a PyTorch op.

``attention(q, k, v, mask=..., score=..., backend="sim", return_lse=False, **params)`` is
registered with ``torch.library.custom_op`` as ``attnforge::attention`` (with a fake
implementation, so ``torch.compile`` traces it without running it) and has a module form,
:class:`Attention`.

What runs where: CPU tensors run through the extension, on the CPU simulator (the exact
generated CUDA, a correctness tool: slow), on the f64 reference, or with ``backend="cuda"``
on GPU 0 through host copies (built, never run on a GPU yet). CUDA tensors run the kernel
in place: compiled through the kernel cache, launched on PyTorch's current stream of their
device with their pointers and strides, no copies (built, never run on a GPU yet). Gradients:
the generated backward kernels (``backend="sim"`` or ``"cuda"`` on CPU tensors) or the f64
reference backward (``backend="reference"``); none yet on CUDA tensors
(``NotImplementedError``).

The serving layouts, forward only: :func:`varlen_attention` and
:func:`attention_with_kvcache` take FlashAttention's ``flash_attn_varlen_func`` and
``flash_attn_with_kvcache`` arguments.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import numpy as np
import torch

from . import _native, backward as _backward_kernels, backward_reference as _backward_reference, run as _run
from . import run_paged as _run_paged, run_varlen as _run_varlen
from ._spec import build_spec

__all__ = ["Attention", "attention", "attention_with_kvcache", "spec_for", "varlen_attention"]

_DTYPES = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}


def _check_tensors(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise _native.InputError(f"input `{name}`: a {type(t).__name__}\n  fix: pass a torch.Tensor")
        if t.dim() != 4:
            raise _native.InputError(
                f"input `{name}`: shape {tuple(t.shape)}\n  fix: pass {name} as [batch, heads, seq, head_dim]"
            )
        if t.dtype not in _DTYPES:
            raise _native.InputError(
                f"input `{name}`: dtype {t.dtype}\n  fix: use torch.float32, torch.float16 or torch.bfloat16"
            )
        if t.device.type not in ("cpu", "cuda"):
            raise _native.InputError(
                f"input `{name}`: a {t.device.type} tensor; attnforge's op runs CPU and CUDA tensors\n"
                f"  fix: pass {name}.cpu() or {name}.cuda()"
            )
        if t.device != q.device:
            raise _native.InputError(
                f"input `{name}`: on {t.device}, q on {q.device}\n  fix: pass q, k and v on one device"
            )
        if t.device.type == "cuda" and t.stride(-1) != 1 and t.shape[-1] > 1:
            raise _native.InputError(
                f"input `{name}`: stride {tuple(t.stride())}: the last (head) dimension is not contiguous; "
                "the CUDA path reads the caller's memory in place and copies nothing\n"
                f"  fix: pass {name}.contiguous()"
            )
    if not (q.dtype == k.dtype == v.dtype):
        raise _native.InputError(
            f"inputs: dtypes differ (q {q.dtype}, k {k.dtype}, v {v.dtype})\n  fix: pass q, k and v of one dtype"
        )


def spec_for(
    q: torch.Tensor,
    k: torch.Tensor,
    mask: Optional[str] = None,
    score: Optional[str] = None,
    scale: Optional[float] = None,
    **params: Any,
) -> str:
    """Spec-file text for q's dtype and head dimension (GQA when q and k have different
    head counts); see :func:`attnforge.build_spec` for mask, score and params."""
    return build_spec(
        _DTYPES.get(q.dtype, str(q.dtype)),
        q.shape[-1],
        mask=mask,
        score=score,
        gqa=q.shape[1] != k.shape[1],
        scale=scale,
        **params,
    )


def _numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach()
    if t.dtype != torch.float32:
        t = t.float()  # NumPy has no bfloat16; f16/bf16 values are exact in f32
    return t.contiguous().numpy()


def _empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device=device)


def _current_stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream


def _describe(t: torch.Tensor) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    return (t.data_ptr(), tuple(t.shape), tuple(t.stride()))


def _forward_cuda(q, k, v, spec: str, backend: str, doc: Optional[torch.Tensor]):
    """The kernel on CUDA tensors in place: PyTorch's pointers and strides, launched on its
    current stream of q's device (kernel cache, no copies, no synchronization)."""
    if backend != "cuda":
        raise _native.InputError(
            f"backend {backend!r}: runs on the CPU, but q, k, v are CUDA tensors\n"
            "  fix: use backend=\"cuda\" (the default for CUDA tensors), or pass CPU tensors"
        )
    dev = q.device
    b, hq, sq, _ = q.shape
    out = _empty((b, hq, sq, v.shape[-1]), q.dtype, dev)
    lse = _empty((b, hq, sq), torch.float32, dev)
    _native.launch_cuda(
        spec,
        _DTYPES[q.dtype],
        _describe(q),
        _describe(k),
        _describe(v),
        _describe(out),
        lse.data_ptr(),
        dev.index if dev.index is not None else torch.cuda.current_device(),
        _current_stream(dev),
        doc=None if doc is None else [int(i) for i in doc.detach().cpu().reshape(-1).tolist()],
    )
    return out, lse


def _forward(q, k, v, spec: str, backend: str, doc: Optional[torch.Tensor]):
    _check_tensors(q, k, v)
    if q.device.type == "cuda":
        return _forward_cuda(q, k, v, spec, backend, doc)
    d = None if doc is None else doc.detach().cpu().numpy()
    out, lse = _run(spec, _numpy(q), _numpy(k), _numpy(v), backend=backend, doc=d)
    return (
        torch.from_numpy(out).to(q.dtype),
        torch.from_numpy(lse).to(torch.float32),
    )


@torch.library.custom_op("attnforge::attention", mutates_args=())
def _attention_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    spec: str,
    backend: str,
    doc: Optional[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    return _forward(q, k, v, spec, backend, doc)


@_attention_op.register_fake
def _attention_fake(q, k, v, spec, backend, doc):
    b, hq, sq, _ = q.shape
    return (
        q.new_empty((b, hq, sq, v.shape[-1])),
        q.new_empty((b, hq, sq), dtype=torch.float32),
    )


def _backward(ctx, grad_out, grad_lse):
    if ctx.backend not in ("reference", "sim", "cuda"):
        raise NotImplementedError(
            f"attnforge.torch.attention has no backward for backend={ctx.backend!r}: "
            "backend=\"sim\" runs the generated backward kernels, \"reference\" the f64 "
            "reference backward; otherwise use the op under torch.no_grad()."
        )
    q, k, v, out = ctx.saved_tensors
    if q.device.type == "cuda":
        raise NotImplementedError(
            "attnforge.torch.attention: the backward on CUDA tensors is not built yet (the "
            "forward runs in place on PyTorch's stream). Fix: compute gradients on CPU tensors "
            "(backend=\"sim\" runs the generated backward kernels, \"reference\" the f64 "
            "reference), or run the CUDA forward under torch.no_grad()."
        )
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    dlse = None
    if grad_lse is not None and bool(torch.any(grad_lse != 0)):
        dlse = grad_lse.detach().double().contiguous().numpy()
    d = None if ctx.doc is None else ctx.doc.numpy()
    if ctx.backend == "reference":
        dq, dk, dv = _backward_reference(ctx.spec, _numpy(q), _numpy(k), _numpy(v), _numpy(grad_out), dlse=dlse, doc=d)
    else:
        dq, dk, dv = _backward_kernels(
            ctx.spec, _numpy(q), _numpy(k), _numpy(v), _numpy(grad_out), dlse=dlse, backend=ctx.backend, doc=d
        )
    return (
        torch.from_numpy(dq).to(q.dtype),
        torch.from_numpy(dk).to(k.dtype),
        torch.from_numpy(dv).to(v.dtype),
        None,
        None,
        None,
    )


def _setup_context(ctx, inputs, output):
    q, k, v, spec, backend, doc = inputs
    ctx.save_for_backward(q, k, v, output[0])
    ctx.spec, ctx.backend = spec, backend
    ctx.doc = None if doc is None else doc.detach().cpu()


_attention_op.register_autograd(_backward, setup_context=_setup_context)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: Optional[str] = None,
    score: Optional[str] = None,
    *,
    spec: Optional[str] = None,
    backend: Optional[str] = None,
    return_lse: bool = False,
    scale: Optional[float] = None,
    doc: Union[torch.Tensor, Any, None] = None,
    **params: Any,
) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Attention of q ``[B, Hq, Sq, D]`` over k, v ``[B, Hkv, Sk, D]`` with an attnforge
    variant.

    The variant is ``spec`` (a catalog name or spec-file text), or built from ``mask``,
    ``score``, ``scale`` and ``params`` for q's dtype and head dimension. ``doc``: document
    ids (``[Sk]`` or ``[B, Sk]``) for the document masks. ``backend``: for CPU tensors
    ``"sim"`` (the default), ``"reference"`` or ``"cuda"`` (staged to GPU 0 through host
    copies); CUDA tensors run ``"cuda"`` (the default for them): the kernel in place on
    PyTorch's current stream, no copies (built, never run on a GPU yet). Returns ``out``
    (q's dtype), and ``lse`` (float32, ``-inf`` on empty rows) when ``return_lse``.
    """
    _check_tensors(q, k, v)
    if backend is None:
        backend = "cuda" if q.device.type == "cuda" else "sim"
    if spec is None:
        spec = spec_for(q, k, mask=mask, score=score, scale=scale, **params)
    elif mask is not None or score is not None or params or scale is not None:
        raise _native.InputError(
            "spec: given together with mask/score/scale/params\n"
            "  fix: pass either spec= (catalog name or spec-file text) or mask=/score=/params"
        )
    if doc is not None and not isinstance(doc, torch.Tensor):
        doc = torch.as_tensor(np.asarray(doc))
    if doc is not None:
        doc = doc.to(torch.int32).reshape(-1)
    out, lse = _attention_op(q, k, v, spec, backend, doc)
    return (out, lse) if return_lse else out


class Attention(torch.nn.Module):
    """Module form of :func:`attention` with a fixed variant: ``Attention(mask="local",
    window_left=16, window_right=0)(q, k, v)``."""

    def __init__(
        self,
        mask: Optional[str] = None,
        score: Optional[str] = None,
        *,
        spec: Optional[str] = None,
        backend: Optional[str] = None,
        return_lse: bool = False,
        scale: Optional[float] = None,
        **params: Any,
    ) -> None:
        super().__init__()
        self.mask, self.score, self.spec = mask, score, spec
        self.backend, self.return_lse, self.scale, self.params = backend, return_lse, scale, params

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, doc: Optional[torch.Tensor] = None):
        if self.spec is not None:
            return attention(q, k, v, spec=self.spec, backend=self.backend, return_lse=self.return_lse, doc=doc)
        return attention(
            q,
            k,
            v,
            self.mask,
            self.score,
            backend=self.backend,
            return_lse=self.return_lse,
            scale=self.scale,
            doc=doc,
            **self.params,
        )

    def extra_repr(self) -> str:
        return f"mask={self.mask!r}, score={self.score!r}, backend={self.backend!r}"


def _fa_spec(
    q: torch.Tensor,
    k: torch.Tensor,
    softmax_scale: Optional[float],
    causal: bool,
    window_size: tuple[int, int],
    softcap: float,
    alibi_slopes: Any,
) -> str:
    """Spec text for FlashAttention's arguments: ``window_size`` ``(left, right)`` with -1
    for unbounded is the ``local`` mask's ``window_left`` / ``window_right`` (same
    convention, bottom-right aligned), ``causal`` sets the right edge to 0."""
    left, right = (int(window_size[0]), int(window_size[1]))
    if causal:
        right = 0
    params: dict[str, Any] = {}
    if left < 0 and right < 0:
        mask = "full"
    elif left < 0 and right == 0:
        mask = "causal"
    else:
        mask, params = "local", {"window_left": left, "window_right": right}
    score = None
    if softcap and alibi_slopes is not None:
        raise _native.InputError(
            "softcap, alibi_slopes: both given; attnforge kernels take one score modification\n"
            "  fix: pass one of them (or a spec= with a user score function)"
        )
    if softcap:
        score, params["softcap"] = "softcap", float(softcap)
    if alibi_slopes is not None:
        score = "alibi"
        params["alibi_slopes"] = torch.as_tensor(alibi_slopes, dtype=torch.float32).reshape(-1).tolist()
    return build_spec(
        _DTYPES.get(q.dtype, str(q.dtype)),
        q.shape[-1],
        mask=mask,
        score=score,
        gqa=q.shape[-2] != k.shape[-2],
        scale=softmax_scale,
        **params,
    )


def _check_serving(tensors: dict[str, torch.Tensor], ndims: dict[str, int]) -> torch.dtype:
    dtype = None
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise _native.InputError(f"input `{name}`: a {type(t).__name__}\n  fix: pass a torch.Tensor")
        if t.dim() != ndims[name]:
            raise _native.InputError(
                f"input `{name}`: shape {tuple(t.shape)}\n  fix: pass {name} with {ndims[name]} dimensions"
                " (see the docstring)"
            )
        if t.device.type != "cpu":
            raise _native.InputError(
                f"input `{name}`: a {t.device.type} tensor; the serving entry points run CPU tensors only\n"
                f"  fix: pass {name}.cpu()"
            )
        if t.dtype not in _DTYPES:
            raise _native.InputError(f"input `{name}`: dtype {t.dtype}\n  fix: use float32, float16 or bfloat16")
        if dtype is not None and t.dtype != dtype:
            raise _native.InputError(f"input `{name}`: dtype {t.dtype}, q has {dtype}\n  fix: pass one dtype")
        if t.requires_grad and torch.is_grad_enabled():
            raise _native.InputError(
                f"input `{name}`: requires grad; the serving layouts are forward only "
                "(the generated backward reads the dense layout)\n"
                "  fix: use attnforge.torch.attention on [B, H, S, D] tensors for training, or wrap the call in torch.no_grad()"
            )
        dtype = dtype or t.dtype
    return dtype


def _ints(t: Any) -> np.ndarray:
    return np.asarray(torch.as_tensor(t).detach().cpu().numpy())


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: Optional[int] = None,
    max_seqlen_k: Optional[int] = None,
    softmax_scale: Optional[float] = None,
    causal: bool = False,
    window_size: tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    alibi_slopes: Any = None,
    return_softmax_lse: bool = False,
    *,
    spec: Optional[str] = None,
    backend: str = "sim",
    doc: Any = None,
) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """``flash_attn_varlen_func``'s arguments on attnforge's varlen kernels: q
    ``[total_q, Hq, D]``, k, v ``[total_k, Hkv, D]``, int32 ``cu_seqlens_q`` / ``cu_seqlens_k``
    ``[B + 1]``. ``max_seqlen_q`` / ``max_seqlen_k`` are accepted for compatibility and
    checked against the offsets. ``spec=`` (catalog name or spec-file text) replaces the
    FlashAttention arguments. Returns out (q's dtype) and, when ``return_softmax_lse``, lse
    ``[Hq, total_q]`` (float32). Forward only; CPU tensors (``backend`` ``"sim"``,
    ``"reference"`` or ``"cuda"`` through host copies)."""
    dtype = _check_serving({"q": q, "k": k, "v": v}, {"q": 3, "k": 3, "v": 3})
    cq, ck = _ints(cu_seqlens_q), _ints(cu_seqlens_k)
    for name, cu, given in (("max_seqlen_q", cq, max_seqlen_q), ("max_seqlen_k", ck, max_seqlen_k)):
        longest = int(np.max(np.diff(cu))) if cu.size > 1 else 0
        if given is not None and int(given) < longest:
            raise _native.InputError(
                f"input `{name}`: {given}, but a sequence has {longest} rows\n  fix: pass the longest length or None"
            )
    if spec is None:
        spec = _fa_spec(q, k, softmax_scale, causal, window_size, softcap, alibi_slopes)
    out, lse = _run_varlen(spec, _numpy(q), _numpy(k), _numpy(v), cq, ck, backend=backend, doc=doc)
    out = torch.from_numpy(out).to(dtype)
    return (out, torch.from_numpy(lse).to(torch.float32)) if return_softmax_lse else out


def attention_with_kvcache(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_seqlens: Any,
    block_table: torch.Tensor,
    softmax_scale: Optional[float] = None,
    causal: bool = False,
    window_size: tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    alibi_slopes: Any = None,
    num_splits: int = 0,
    return_softmax_lse: bool = False,
    *,
    spec: Optional[str] = None,
    backend: str = "sim",
) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """``flash_attn_with_kvcache``'s arguments on attnforge's paged kernels: q
    ``[B, Sq, Hq, D]``, caches ``[num_pages, page_size, Hkv, D]``, ``block_table`` ``[B,
    max_pages]`` (int32), ``cache_seqlens`` (an int or ``[B]``). The cache already holds the
    new tokens' keys (appending k/v and rotary embedding are not taken). Up to 16 query
    tokens per sequence run the split-KV decode kernel (``num_splits`` 0: the decode
    model's count, as ``attnforge run``), more the paged prefill kernel. Returns out ``[B, Sq, Hq, D]`` and, when
    ``return_softmax_lse``, lse ``[B, Hq, Sq]`` (float32). Forward only, CPU tensors."""
    dtype = _check_serving(
        {"q": q, "k_cache": k_cache, "v_cache": v_cache}, {"q": 4, "k_cache": 4, "v_cache": 4}
    )
    b, sq, hq, d = q.shape
    seqlens = _ints(cache_seqlens)
    if seqlens.ndim == 0:
        seqlens = np.full(b, int(seqlens))
    cu_q = np.arange(b + 1, dtype=np.int32) * sq
    if spec is None:
        spec = _fa_spec(q, k_cache, softmax_scale, causal, window_size, softcap, alibi_slopes)
    out, lse = _run_paged(
        spec,
        _numpy(q).reshape(b * sq, hq, d),
        _numpy(k_cache),
        _numpy(v_cache),
        cu_q,
        _ints(block_table),
        seqlens,
        backend=backend,
        decode=sq <= 16,
        num_splits=num_splits or None,
    )
    out = torch.from_numpy(out.reshape(b, sq, hq, -1)).to(dtype)
    lse = torch.from_numpy(lse.reshape(hq, b, sq).transpose(1, 0, 2).copy()).to(torch.float32)
    return (out, lse) if return_softmax_lse else out
