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


def test_non_cpu_tensors_are_a_clear_error():
    q, k, v = qkv()
    with pytest.raises(attnforge.InputError, match="CPU tensors only"):
        at.attention(q.to("meta"), k.to("meta"), v.to("meta"), mask="causal")


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
