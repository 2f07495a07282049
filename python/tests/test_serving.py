"""The serving entry points (varlen, paged KV cache, decode) against an oracle written here
in PyTorch float64, with the tolerance rule of variants.md section 0."""

import numpy as np
import pytest
import torch

import attnforge
import attnforge.torch as at


def oracle(q, k, v, allowed, scale, softcap=0.0):
    """float64 attention of one sequence: q [Sq, Hq, D], k, v [Sk, Hkv, D], allowed(i, j)
    with i the query's bottom-right position; out [Sq, Hq, D], lse [Hq, Sq]."""
    q, k, v = (t.double() for t in (q, k, v))
    sq, hq, _ = q.shape
    sk, hkv, _ = k.shape
    g = hq // hkv
    out = torch.zeros(sq, hq, v.shape[-1], dtype=torch.float64)
    lse = torch.full((hq, sq), -float("inf"), dtype=torch.float64)
    if sq == 0:
        return out, lse
    for h in range(hq):
        s = scale * q[:, h] @ k[:, h // g].T
        if softcap:
            s = softcap * torch.tanh(s / softcap)
        m = torch.tensor([[allowed(i + sk - sq, j) for j in range(sk)] for i in range(sq)], dtype=torch.bool)
        s = s.masked_fill(~m, -float("inf"))
        rows = m.any(dim=1)
        l = torch.logsumexp(s[rows], dim=1)
        out[rows, h] = torch.softmax(s[rows], dim=1) @ v[:, h // g]
        lse[h, rows] = l
    return out, lse


def within(kernel, naive, ref, dtype):
    """variants.md section 0: max|K - R| <= rtol * max|N - R| + atol over non-empty rows."""
    rtol, atol = attnforge.tolerance(dtype)
    ref = torch.as_tensor(ref, dtype=torch.float64)
    finite = torch.isfinite(ref)
    k = torch.as_tensor(np.asarray(kernel, dtype=np.float64))
    n = torch.as_tensor(np.asarray(naive, dtype=np.float64))
    assert torch.equal(torch.isfinite(k), finite), "empty rows differ"
    err_k = (k[finite] - ref[finite]).abs().max().item()
    err_n = (n[finite] - ref[finite]).abs().max().item()
    assert err_k <= rtol * err_n + atol, (err_k, err_n, rtol, atol)


def rand(shape, dtype, gen, mag=3.0):
    return (torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1).mul(mag).to(dtype)


def test_varlen_causal_gqa_bf16_with_empty_rows_and_a_sequence_without_queries():
    gen = torch.Generator().manual_seed(1)
    lens = [(5, 37), (0, 12), (33, 33), (9, 4), (1, 70)]  # (Sq, Sk); 9 > 4: five empty rows
    hq, hkv, d, dt = 4, 2, 64, torch.bfloat16
    cq = np.cumsum([0] + [a for a, _ in lens]).astype(np.int32)
    ck = np.cumsum([0] + [b for _, b in lens]).astype(np.int32)
    q, k, v = rand((cq[-1], hq, d), dt, gen), rand((ck[-1], hkv, d), dt, gen), rand((ck[-1], hkv, d), dt, gen)
    out, lse = at.varlen_attention(q, k, v, torch.from_numpy(cq), torch.from_numpy(ck), causal=True,
                                   return_softmax_lse=True)
    assert out.shape == (cq[-1], hq, d) and out.dtype == dt and lse.shape == (hq, cq[-1])
    spec = at._fa_spec(q, k, None, True, (-1, -1), 0.0, None)
    naive = attnforge.run_varlen(spec, q.float(), k.float(), v.float(), cq, ck, backend="naive")
    ref = attnforge.run_varlen(spec, q.float(), k.float(), v.float(), cq, ck, backend="reference")
    want_o, want_l = [], []
    for b, (sq, sk) in enumerate(lens):
        o, l = oracle(q[cq[b]:cq[b + 1]], k[ck[b]:ck[b + 1]], v[ck[b]:ck[b + 1]], lambda i, j: j <= i, d ** -0.5)
        want_o.append(o)
        want_l.append(l)
    want_o, want_l = torch.cat(want_o), torch.cat(want_l, dim=1)
    # the package's f64 reference is the oracle the kernel is held to: it agrees with this one
    assert np.abs(np.nan_to_num(ref[0] - want_o.numpy())).max() < 1e-9
    within(out.float(), naive[0], want_o, "bf16")
    within(lse, naive[1], want_l, "bf16")
    empty = slice(int(cq[3]), int(cq[3]) + 5)
    assert torch.all(out[empty] == 0) and torch.all(torch.isneginf(lse[:, empty]))


def paged_problem(gen, seqlens, page, hkv, d, dt):
    """A cache whose pages are shuffled, page 0 unused (a freed page)."""
    pages = [(s + page - 1) // page for s in seqlens]
    n = sum(pages) + 1
    perm = torch.randperm(n - 1, generator=gen) + 1
    table = np.full((len(seqlens), max(pages)), -1, dtype=np.int32)
    at_ = 0
    for b, p in enumerate(pages):
        table[b, :p] = perm[at_:at_ + p].numpy()
        at_ += p
    kc, vc = rand((n, page, hkv, d), dt, gen), rand((n, page, hkv, d), dt, gen)
    return kc, vc, table


def gathered(cache, table, b, sk):
    page = cache.shape[1]
    return torch.stack([cache[table[b, j // page], j % page] for j in range(sk)])


@pytest.mark.parametrize("sq,softcap", [(3, 0.0), (20, 30.0)])
def test_kvcache_decode_and_paged_prefill_match_the_oracle(sq, softcap):
    # sq 3: the split-KV decode kernel; 20 > 16: the paged prefill kernel, with softcap
    gen = torch.Generator().manual_seed(2 + sq)
    seqlens, page, hq, hkv, d, dt = [37, 20, 129], 16, 4, 2, 64, torch.float16
    kc, vc, table = paged_problem(gen, seqlens, page, hkv, d, dt)
    q = rand((3, sq, hq, d), dt, gen, mag=6.0 if softcap else 3.0)
    out, lse = at.attention_with_kvcache(q, kc, vc, torch.tensor(seqlens, dtype=torch.int32),
                                         torch.from_numpy(table), causal=True, softcap=softcap,
                                         return_softmax_lse=True)
    assert out.shape == q.shape and lse.shape == (3, hq, sq)
    spec = at._fa_spec(q, kc, None, True, (-1, -1), softcap, None)
    cq = np.arange(4, dtype=np.int32) * sq
    naive = attnforge.run_paged(spec, q.float().reshape(-1, hq, d), kc.float(), vc.float(), cq, table,
                                np.array(seqlens, dtype=np.int32), backend="naive", decode=sq <= 16)
    naive_o = naive[0].reshape(3, sq, hq, d)
    naive_l = naive[1].reshape(hq, 3, sq).transpose(1, 0, 2)
    for b, sk in enumerate(seqlens):
        o, l = oracle(q[b], gathered(kc, table, b, sk), gathered(vc, table, b, sk), lambda i, j: j <= i,
                      d ** -0.5, softcap)
        within(out[b].float(), naive_o[b], o, "f16")
        within(lse[b], naive_l[b], l, "f16")


def test_local_window_maps_to_flash_attention_window_size():
    gen = torch.Generator().manual_seed(9)
    lens = [(17, 50), (40, 40)]
    hq, hkv, d, dt = 2, 2, 64, torch.float32
    cq = torch.tensor(np.cumsum([0] + [a for a, _ in lens]), dtype=torch.int32)
    ck = torch.tensor(np.cumsum([0] + [b for _, b in lens]), dtype=torch.int32)
    q, k, v = rand((int(cq[-1]), hq, d), dt, gen), rand((int(ck[-1]), hkv, d), dt, gen), rand((int(ck[-1]), hkv, d), dt, gen)
    out = at.varlen_attention(q, k, v, cq, ck, window_size=(7, 3), backend="reference")
    for b, (sq, sk) in enumerate(lens):
        o, _ = oracle(q[cq[b]:cq[b + 1]], k[ck[b]:ck[b + 1]], v[ck[b]:ck[b + 1]],
                      lambda i, j: i - 7 <= j <= i + 3, d ** -0.5)
        assert (out[cq[b]:cq[b + 1]].double() - o).abs().max() < 1e-5


def test_serving_errors_name_the_field():
    gen = torch.Generator().manual_seed(3)
    kc, vc, table = paged_problem(gen, [20], 16, 1, 64, torch.float16)
    q = rand((1, 1, 1, 64), torch.float16, gen)
    bad = table.copy()
    bad[0, 1] = 999
    with pytest.raises(attnforge.InputError, match="block_table"):
        at.attention_with_kvcache(q, kc, vc, 20, torch.from_numpy(bad), backend="reference")
    with pytest.raises(attnforge.InputError, match="requires grad"):
        at.attention_with_kvcache(q.clone().requires_grad_(), kc, vc, 20, torch.from_numpy(table))
    with pytest.raises(attnforge.InputError, match="max_seqlen_k"):
        at.varlen_attention(q[0], kc[0], vc[0], torch.tensor([0, 1]), torch.tensor([0, 16]), max_seqlen_k=8)
    with pytest.raises(attnforge.InputError, match="layout"):
        attnforge.run_paged('dtype = "f16"\nhead_dim = 64\nmask = "causal"\nlayout = "varlen"\n',
                            q[0].float(), kc.float(), vc.float(), np.array([0, 1], dtype=np.int32), table,
                            np.array([20], dtype=np.int32))
    nan_q = q.clone()
    nan_q[0, 0, 0, 0] = float("nan")
    with pytest.raises(attnforge.InputError, match="NaN"):
        at.attention_with_kvcache(nan_q, kc, vc, 20, torch.from_numpy(table))
