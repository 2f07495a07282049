"""The extension: catalog, running kernels on the simulator against the f64 reference,
and errors that name the field and the fix."""

import numpy as np
import pytest

import attnforge
from attnforge import InputError


def qkv(rng, b=1, hq=2, hkv=2, sq=80, sk=80, d=64, scale=1.0):
    f = lambda h, s: (rng.standard_normal((b, h, s, d)) * scale).astype(np.float32)
    return f(hq, sq), f(hkv, sk), f(hkv, sk)


def test_catalog_lists_every_static_kernel_with_its_fields():
    cat = attnforge.catalog()
    names = [c["name"] for c in cat]
    assert "flash_fwd_causal_d128_bf16" in names
    assert len(names) == len(set(names)) >= 20
    local = next(c for c in cat if c["name"] == "flash_fwd_local_d128_bf16")
    assert (local["mask"], local["dtype"], local["head_dim"]) == ("local", "bf16", 128)
    assert local["params"] == {"window_left": 24.0, "window_right": 8.0}


def test_spec_text_built_from_arguments_names_the_catalog_kernel():
    text = attnforge.build_spec("f16", 64, "local", window_left=24, window_right=8)
    assert attnforge.canonical_name(text) == "flash_fwd_local_d64_f16"


def test_reference_matches_a_hand_computed_causal_attention(rng):
    q, k, v = qkv(rng, sq=5, sk=7)
    out, lse = attnforge.run(attnforge.build_spec("f32", 64, "causal"), q, k, v, backend="reference")
    s = np.einsum("bhid,bhjd->bhij", q.astype(np.float64), k.astype(np.float64)) / 8.0
    p = np.arange(5)[:, None] + 2  # bottom-right: row i sits at position i + Sk - Sq
    s = np.where(np.arange(7)[None, :] <= p, s, -np.inf)
    want_lse = np.log(np.exp(s).sum(-1))
    want = np.einsum("bhij,bhjd->bhid", np.exp(s - want_lse[..., None]), v.astype(np.float64))
    assert np.abs(lse - want_lse).max() < 1e-5
    assert np.abs(out - want).max() < 1e-5


@pytest.mark.parametrize("entry", attnforge.catalog(), ids=lambda c: c["name"])
def test_every_catalog_kernel_on_the_simulator_meets_the_oracle(entry, rng):
    hq, hkv = (4, 1) if entry["gqa"] else (2, 2)
    q, k, v = qkv(rng, hq=hq, hkv=hkv, d=entry["head_dim"])
    name = entry["name"]
    out, lse = attnforge.run(name, q, k, v, backend="sim")
    ref, ref_lse = attnforge.run(name, q, k, v, backend="reference")
    naive, naive_lse = attnforge.run(name, q, k, v, backend="naive")
    rtol, atol = attnforge.tolerance(entry["dtype"])
    rows = np.isfinite(ref_lse)
    assert not np.isnan(out).any() and not np.isnan(lse).any()
    assert np.array_equal(np.isneginf(lse), np.isneginf(ref_lse))
    assert np.abs(out - ref)[rows].max() <= rtol * np.abs(naive - ref)[rows].max() + atol
    assert np.abs(lse - ref_lse)[rows].max() <= rtol * np.abs(naive_lse - ref_lse)[rows].max() + atol


def test_mask_matrix_is_bottom_right_aligned():
    m = attnforge.mask_matrix(attnforge.build_spec("f32", 64, "causal"), 1, 1, 1, 2, 4)
    assert m[0, 0].tolist() == [[True, True, True, False], [True, True, True, True]]


def test_mask_matrix_of_a_document_mask_follows_the_ids():
    doc = np.array([0, 0, 1, 1, 1], dtype=np.int32)
    m = attnforge.mask_matrix(attnforge.build_spec("f32", 64, "document"), 1, 1, 1, 5, 5, doc=doc)
    assert np.array_equal(m[0, 0], doc[:, None] == doc[None, :])


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda x: attnforge.run("flash_fwd_nope_d64_f32", *x), ["spec", "fix", "catalog"]),
        (lambda x: attnforge.run(attnforge.build_spec("f32", 128, "causal"), *x), ["q", "head dimension", "fix"]),
        (lambda x: attnforge.run(attnforge.build_spec("f32", 64, "local", window_left=3), *x), ["params.window_right", "fix"]),
        (lambda x: attnforge.run(attnforge.build_spec("f32", 64, "causal"), *x, backend="gpu"), ["backend", "fix"]),
        (lambda x: attnforge.run(attnforge.build_spec("f32", 64, "document"), *x), ["params.doc", "fix"]),
        (lambda x: attnforge.run(attnforge.build_spec("f32", 64, "causal"), x[0][0], *x[1:]), ["q", "fix"]),
        (lambda x: attnforge.build_spec("f32", 64, "causal", bad=object()), ["bad", "fix"]),
    ],
)
def test_bad_input_is_an_input_error_naming_field_and_fix(call, words, rng):
    with pytest.raises(InputError) as e:
        call(qkv(rng, sq=8, sk=8))
    msg = str(e.value)
    assert all(w in msg for w in words), msg


def test_non_finite_and_overflowing_inputs_are_rejected(rng):
    spec = attnforge.build_spec("f32", 64, "causal")
    q, k, v = qkv(rng, sq=8, sk=8)
    q[0, 0, 3, 5] = np.nan
    with pytest.raises(InputError, match="NaN"):
        attnforge.run(spec, q, k, v, backend="reference")
    q, k, v = qkv(rng, sq=8, sk=8, scale=1e18)
    with pytest.raises(InputError, match="scale q and k down"):
        attnforge.run(spec, q, k, v, backend="sim")


def test_mismatched_key_and_value_lengths_name_v(rng):
    q, k, v = qkv(rng, sq=8, sk=8)
    with pytest.raises(InputError, match="`v`"):
        attnforge.run(attnforge.build_spec("f32", 64, "full"), q, k, v[:, :, :5], backend="reference")


def test_cuda_backend_says_no_gpu_here_and_meets_the_oracle_on_a_gpu(rng):
    """backend="cuda" stages the arrays through host copies to GPU 0 (exec::run_cuda). This
    machine class has no CUDA driver: the error must say so; on a GPU machine the result
    must meet the oracle."""
    import ctypes.util

    spec = attnforge.build_spec("f32", 64, "causal")
    q, k, v = qkv(rng, sq=40, sk=40)
    if ctypes.util.find_library("cuda") is None:
        with pytest.raises(RuntimeError, match="no GPU"):
            attnforge.run(spec, q, k, v, backend="cuda")
        return
    out, lse = attnforge.run(spec, q, k, v, backend="cuda")
    ref, ref_lse = attnforge.run(spec, q, k, v, backend="reference")
    naive, naive_lse = attnforge.run(spec, q, k, v, backend="naive")
    rtol, atol = attnforge.tolerance("f32")
    assert np.abs(out - ref).max() <= rtol * np.abs(naive - ref).max() + atol
    assert np.abs(lse - ref_lse).max() <= rtol * np.abs(naive_lse - ref_lse).max() + atol
