"""The PyTorch op: CPU tensors through the extension, torch.compile, the module form,
errors for devices and gradients it does not support."""

import pytest
import torch

import attnforge
import attnforge.torch as at


def qkv(b=1, hq=4, hkv=2, sq=33, sk=40, d=64, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    f = lambda h, s: torch.randn(b, h, s, d, generator=g).to(dtype)
    return f(hq, sq), f(hkv, sk), f(hkv, sk)


def test_op_on_the_simulator_matches_the_reference_within_the_oracle():
    q, k, v = qkv()
    out, lse = at.attention(q, k, v, mask="causal", backend="sim", return_lse=True)
    ref, ref_lse = at.attention(q, k, v, mask="causal", backend="reference", return_lse=True)
    assert out.shape == (1, 4, 33, 64) and lse.shape == (1, 4, 33)
    assert out.dtype == torch.float32 and lse.dtype == torch.float32
    assert (out - ref).abs().max() < 1e-5 and (lse - ref_lse).abs().max() < 1e-5


def test_op_matches_sdpa_with_the_same_boolean_mask():
    q, k, v = qkv()
    out = at.attention(q, k, v, mask="local", window_left=5, window_right=2, backend="reference")
    m = torch.from_numpy(attnforge.mask_matrix(at.spec_for(q, k, mask="local", window_left=5, window_right=2), 1, 4, 2, 33, 40))
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=m, enable_gqa=True)
    assert (out - want).abs().max() < 1e-5


def test_bf16_in_bf16_out_and_empty_rows_give_zero_and_minus_inf():
    q, k, v = qkv(sq=40, sk=23, dtype=torch.bfloat16)
    out, lse = at.attention(q, k, v, mask="causal", backend="sim", return_lse=True)
    assert out.dtype == torch.bfloat16
    empty = slice(0, 17)  # rows whose bottom-right position is negative
    assert torch.all(out[:, :, empty] == 0) and torch.all(torch.isneginf(lse[:, :, empty]))
    assert not torch.isnan(out).any()


def test_catalog_spec_and_document_ids():
    q, k, v = qkv(hq=2, hkv=2, sq=80, sk=80, d=128, dtype=torch.bfloat16)
    doc = torch.tensor([0] * 30 + [1] * 50)
    out = at.attention(q, k, v, spec="flash_fwd_document_d128_bf16", doc=doc, backend="reference")
    # queries of document 1 must not see keys of document 0: changing those keys changes nothing
    k2, v2 = k.clone(), v.clone()
    k2[:, :, :30] += 1
    v2[:, :, :30] -= 1
    out2 = at.attention(q, k2, v2, spec="flash_fwd_document_d128_bf16", doc=doc, backend="reference")
    assert torch.equal(out[:, :, 30:], out2[:, :, 30:])
    assert not torch.equal(out[:, :, :30], out2[:, :, :30])


def test_module_form_and_torch_compile_of_a_small_model():
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(64, 3 * 64)
            self.attn = at.Attention(mask="causal", backend="reference")

        def forward(self, x):
            q, k, v = self.proj(x).unflatten(-1, (3, 1, 64)).permute(2, 0, 3, 1, 4)
            return self.attn(q.contiguous(), k.contiguous(), v.contiguous())

    torch.manual_seed(0)
    m = Block().eval()
    x = torch.randn(2, 24, 64)
    with torch.no_grad():
        eager = m(x)
        compiled = torch.compile(m, fullgraph=True)(x)
    assert compiled.shape == (2, 1, 24, 64)
    assert torch.equal(eager, compiled)


def test_fake_implementation_and_schema_pass_opcheck():
    q, k, v = qkv()
    spec = at.spec_for(q, k, mask="causal")
    torch.library.opcheck(
        torch.ops.attnforge.attention.default,
        (q, k, v, spec, "reference", None),
        test_utils=("test_schema", "test_faketensor"),
    )


def test_tensors_on_other_devices_are_a_clear_error():
    q, k, v = qkv()
    with pytest.raises(attnforge.InputError, match="runs CPU and CUDA tensors"):
        at.attention(q.to("meta"), k.to("meta"), v.to("meta"), mask="causal")


class _OnCuda(torch.Tensor):
    """A CPU tensor that reports a CUDA device: real pointers and strides for the CUDA
    branch's call, without a GPU (none exists where these tests run)."""

    __torch_function__ = torch._C._disabled_torch_function_impl

    @property
    def device(self):
        return torch.device("cuda", 1)


def on_cuda(t):
    return torch.Tensor._make_subclass(_OnCuda, t)


@pytest.fixture
def captured(monkeypatch):
    """Calls of the native CUDA launch, with the allocation and the stream faked."""
    calls = []
    made = []

    def empty(shape, dtype, device):
        assert device == torch.device("cuda", 1)
        made.append(torch.full(shape, 7.0, dtype=dtype))
        return made[-1]

    monkeypatch.setattr(at, "_empty", empty)
    monkeypatch.setattr(at, "_current_stream", lambda device: 0xC0FFEE + device.index)
    monkeypatch.setattr(at._native, "launch_cuda", lambda *a, **kw: calls.append((a, kw)))
    return calls, made


def test_cuda_tensors_launch_in_place_with_their_pointers_strides_and_stream(captured):
    calls, made = captured
    q, k, v = qkv(b=2, hq=4, hkv=2, sq=5, sk=7, dtype=torch.bfloat16)
    base = torch.randn(2, 5, 4, 64).to(torch.bfloat16)
    q = base.transpose(1, 2)  # [B, S, H, D] storage seen as [B, H, S, D]: strides kept
    qc, kc, vc = on_cuda(q), on_cuda(k), on_cuda(v)
    spec = at.spec_for(q, k, mask="causal")
    out, lse = at._forward(qc, kc, vc, spec, "cuda", torch.tensor([0, 0, 1, 1, 1, 2, 2]))
    assert len(calls) == 1
    (a_spec, dtype, dq, dk, dv, dout, lse_ptr, device, stream), kw = calls[0]
    assert (a_spec, dtype, device, stream) == (spec, "bf16", 1, 0xC0FFEE + 1)
    assert dq == (q.data_ptr(), (2, 4, 5, 64), (5 * 4 * 64, 64, 4 * 64, 1))
    assert dk == (k.data_ptr(), (2, 2, 7, 64), (2 * 7 * 64, 7 * 64, 64, 1))
    assert dv[0] == v.data_ptr()
    assert out is made[0] and out.dtype == torch.bfloat16 and out.shape == (2, 4, 5, 64)
    assert dout == (out.data_ptr(), (2, 4, 5, 64), (4 * 5 * 64, 5 * 64, 64, 1))
    assert lse is made[1] and lse.dtype == torch.float32 and lse.shape == (2, 4, 5)
    assert lse_ptr == lse.data_ptr()
    assert kw == {"doc": [0, 0, 1, 1, 1, 2, 2]}
    # nothing was copied: the kernel's outputs are the tensors handed to it, untouched here
    assert bool((out == 7).all())


def test_cpu_tensors_never_take_the_cuda_branch(captured, monkeypatch):
    calls, _ = captured
    q, k, v = qkv(sq=3, sk=3)
    at.attention(q, k, v, mask="causal", backend="reference")
    assert calls == []


def test_cuda_tensors_need_a_contiguous_head_dimension_and_one_device(captured):
    calls, _ = captured
    q, k, v = qkv(sq=4, sk=4)
    strided = torch.randn(1, 4, 4, 128)[..., ::2]
    with pytest.raises(attnforge.InputError, match=r"\.contiguous\(\)"):
        at._forward(on_cuda(strided), on_cuda(k), on_cuda(v), "s", "cuda", None)
    with pytest.raises(attnforge.InputError, match="one device"):
        at._forward(on_cuda(q), k, v, "s", "cuda", None)
    with pytest.raises(attnforge.InputError, match='backend="cuda"'):
        at._forward(on_cuda(q), on_cuda(k), on_cuda(v), "s", "sim", None)
    assert calls == []


def test_cuda_launch_without_a_gpu_is_the_runtimes_no_gpu_error():
    q, k, v = qkv(sq=4, sk=4)
    spec = at.spec_for(q, k, mask="causal")
    d = lambda t: (t.data_ptr(), tuple(t.shape), tuple(t.stride()))
    out, lse = torch.empty_like(q), torch.empty(1, 4, 4)
    with pytest.raises(RuntimeError, match="no GPU"):
        attnforge._native.launch_cuda(spec, "f32", d(q), d(k), d(v), d(out), lse.data_ptr(), 0, 0)
    # the host checks come first, with or without a GPU
    with pytest.raises(attnforge.InputError, match="out"):
        attnforge._native.launch_cuda(spec, "f32", d(q), d(k), d(v), d(q), None, 0, 0)


def test_fake_implementation_gives_cuda_shapes_on_cuda_fake_tensors():
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    mode = FakeTensorMode()
    fake = lambda *shape: FakeTensor(
        mode, torch.empty(shape, dtype=torch.float16, device="meta"), torch.device("cuda", 1)
    )
    q, k = fake(1, 4, 6, 64), fake(1, 2, 9, 64)
    spec = at.spec_for(torch.zeros(1, 4, 6, 64, dtype=torch.float16), torch.zeros(1, 2, 9, 64), mask="causal")
    with mode:
        out, lse = torch.ops.attnforge.attention(q, k, k, spec, "cuda", None)
    assert (out.device, out.shape, out.dtype) == (torch.device("cuda", 1), (1, 4, 6, 64), torch.float16)
    assert (lse.device, lse.shape, lse.dtype) == (torch.device("cuda", 1), (1, 4, 6), torch.float32)


def test_the_backward_on_cuda_tensors_says_what_to_do():
    class Ctx:
        saved_tensors = (on_cuda(torch.zeros(1, 1, 2, 64)),) * 4
        backend = "cuda"

    with pytest.raises(NotImplementedError, match="CPU tensors"):
        at._backward(Ctx(), torch.zeros(1, 1, 2, 64), None)


@pytest.mark.parametrize(
    "mask, params, shape",
    [
        ("causal", {}, (4, 2, 9, 12)),
        ("causal", {}, (2, 2, 12, 7)),  # Sq > Sk: 5 empty rows, zero dq there
        ("local", {"window_left": 3, "window_right": 1}, (2, 1, 20, 20)),
        ("full", {"score": "softcap", "softcap": 5.0}, (2, 2, 10, 13)),
    ],
)
def test_generated_backward_on_the_simulator_matches_pytorch_autograd(mask, params, shape):
    """The op's autograd with backend="sim" runs the generated backward kernels (forward,
    Delta, dK/dV, dQ on the simulator); PyTorch's float64 autograd of the same loss is the
    oracle. The kernels compute in f32 (inputs float32), hence the 1e-4 relative bound."""
    hq, hkv, sq, sk = shape
    q, k, v = qkv(hq=hq, hkv=hkv, sq=sq, sk=sk, seed=7)
    q, k, v = (t.requires_grad_(True) for t in (q, k, v))
    out, lse = at.attention(q, k, v, mask=mask, backend="sim", return_lse=True, **params)
    (out.square().sum() + torch.where(torch.isinf(lse), 0.0, lse).sum()).backward()
    spec = at.spec_for(q, k, mask=mask, **params)
    allowed = torch.from_numpy(attnforge.mask_matrix(spec, 1, hq, hkv, sq, sk))
    want = torch_f64_grads(q, k, v, allowed, 1 / 8, params.get("softcap"))
    for got, w in zip((q.grad, k.grad, v.grad), want):
        assert not torch.isnan(got).any()
        assert (got.double() - w).abs().max() <= 1e-4 * w.abs().max() + 1e-5


def torch_f64_grads(q, k, v, allowed, scale, softcap=None):
    """dq, dk, dv of out.square().sum() + lse.sum() by PyTorch's autograd in float64."""
    q, k, v = [t.detach().double().requires_grad_(True) for t in (q, k, v)]
    g = q.shape[1] // k.shape[1]
    s = q @ k.repeat_interleave(g, 1).transpose(-1, -2) * scale
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    s = s.masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(s, -1)
    out = torch.nan_to_num(torch.softmax(s, -1)) @ v.repeat_interleave(g, 1)
    (out.square().sum() + torch.where(torch.isinf(lse), 0.0, lse).sum()).backward()
    return q.grad, k.grad, v.grad


@pytest.mark.parametrize(
    "mask, params, shape",
    [
        ("causal", {}, (4, 2, 9, 12)),
        ("causal", {}, (2, 2, 12, 7)),  # Sq > Sk: 5 empty rows, zero dq there
        ("local", {"window_left": 3, "window_right": 1}, (2, 1, 20, 20)),
        ("full", {"score": "softcap", "softcap": 5.0}, (2, 2, 10, 10)),
    ],
)
def test_reference_backward_matches_pytorch_autograd_in_float64(mask, params, shape):
    hq, hkv, sq, sk = shape
    q, k, v = qkv(hq=hq, hkv=hkv, sq=sq, sk=sk, seed=5)
    q, k, v = (t.requires_grad_(True) for t in (q, k, v))
    out, lse = at.attention(q, k, v, mask=mask, backend="reference", return_lse=True, **params)
    (out.square().sum() + torch.where(torch.isinf(lse), 0.0, lse).sum()).backward()
    spec = at.spec_for(q, k, mask=mask, **params)
    allowed = torch.from_numpy(attnforge.mask_matrix(spec, 1, hq, hkv, sq, sk))
    want = torch_f64_grads(q, k, v, allowed, 1 / 8, params.get("softcap"))
    for got, w in zip((q.grad, k.grad, v.grad), want):
        assert not torch.isnan(got).any()
        assert (got.double() - w).abs().max() <= 1e-5 * w.abs().max() + 1e-6


def test_reference_backward_rejects_what_it_does_not_cover():
    q, k, v = qkv()
    q.requires_grad_(True)
    out = at.attention(q, k, v, mask="causal", score="alibi", backend="reference")
    with pytest.raises(attnforge.InputError, match="score"):
        out.sum().backward()


def test_training_example_loss_decreases():
    import runpy, pathlib, sys

    path = pathlib.Path(__file__).parents[1] / "examples" / "train_causal_lm.py"
    sys.argv = [str(path), "--steps", "8"]
    losses = runpy.run_path(str(path), run_name="__main__")["LOSSES"]
    assert len(losses) == 8 and losses[-1] < 0.8 * losses[0], losses


def test_spec_together_with_mask_is_an_error():
    q, k, v = qkv()
    with pytest.raises(attnforge.InputError, match="either spec"):
        at.attention(q, k, v, mask="causal", spec="flash_fwd_causal_d64_f16")


_TORCH = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


@pytest.mark.parametrize("entry", attnforge.catalog(), ids=lambda c: c["name"])
def test_the_op_runs_every_catalog_kernel_on_the_simulator(entry):
    """Through the op: the kernel's out and lse come back unchanged (out in q's dtype) and meet
    the oracle against the f64 reference."""
    hq, hkv = (4, 1) if entry["gqa"] else (2, 2)
    q, k, v = qkv(hq=hq, hkv=hkv, sq=80, sk=80, d=entry["head_dim"], dtype=_TORCH[entry["dtype"]], seed=3)
    out, lse = at.attention(q, k, v, spec=entry["name"], backend="sim", return_lse=True)
    assert out.dtype == q.dtype and lse.dtype == torch.float32
    x = [t.float().numpy() for t in (q, k, v)]
    ref, ref_lse = attnforge.run(entry["name"], *x, backend="reference")
    naive, naive_lse = attnforge.run(entry["name"], *x, backend="naive")
    rtol, atol = attnforge.tolerance(entry["dtype"])
    o, l = out.double().numpy(), lse.double().numpy()
    assert abs(o - ref).max() <= rtol * abs(naive - ref).max() + atol
    assert abs(l - ref_lse).max() <= rtol * abs(naive_lse - ref_lse).max() + atol
