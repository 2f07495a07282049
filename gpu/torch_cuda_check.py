"""attnforge.torch on CUDA tensors (in place, on PyTorch's current stream) against the f64
reference on CPU copies: max error of out and lse per case, verdict by the oracle's
tolerance (|gpu - ref| <= atol + rtol * |ref|). Exits non-zero without a CUDA GPU: it never
passes where it did not run. Usage: python3 torch_cuda_check.py (attnforge importable)."""

import sys

import torch

import attnforge
import attnforge.torch as at


def case(name, b, hq, hkv, sq, sk, d, dtype, layout="bhsd", doc=None, stream=False, **kw):
    g = torch.Generator().manual_seed(len(name))
    if layout == "bshd":  # [B, S, H, D] storage seen as [B, H, S, D]: strided heads
        mk = lambda h, s: torch.randn(b, s, h, d, generator=g).to(dtype).transpose(1, 2)
    else:
        mk = lambda h, s: torch.randn(b, h, s, d, generator=g).to(dtype)
    q, k, v = mk(hq, sq), mk(hkv, sk), mk(hkv, sk)
    qc, kc, vc = (t.cuda() for t in (q, k, v))  # preserve_format: the strides travel along
    assert qc.stride() == q.stride()
    docs = None if doc is None else torch.as_tensor(doc, dtype=torch.int32)
    s = torch.cuda.Stream() if stream else torch.cuda.current_stream()
    with torch.cuda.stream(s):
        out, lse = at.attention(qc, kc, vc, return_lse=True, doc=docs, **kw)
    s.synchronize()
    ref, ref_lse = at.attention(q, k, v, return_lse=True, backend="reference", doc=docs, **kw)
    rtol, atol = attnforge.tolerance(at._DTYPES[dtype])
    e_out = (out.cpu().double() - ref.double()).abs()
    fin = torch.isfinite(ref_lse)
    e_lse = (lse.cpu().double() - ref_lse.double()).abs()[fin]
    ok = bool((e_out <= atol + rtol * ref.double().abs()).all())
    ok &= bool((e_lse <= atol + rtol * ref_lse.double().abs()[fin]).all())
    ok &= bool(torch.equal(torch.isinf(lse.cpu()), ~fin))
    print(f"{name:<44} out max err {e_out.max().item():.3e}  lse max err "
          f"{(e_lse.max().item() if e_lse.numel() else 0.0):.3e}  {'PASS' if ok else 'FAIL'}")
    return ok


def main():
    if not torch.cuda.is_available():
        print("no CUDA GPU: attnforge.torch's CUDA-tensor path was not run")
        return 2
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}")
    results = [
        case("causal f16 d64", 2, 4, 4, 100, 100, 64, torch.float16, mask="causal"),
        case("causal bf16 d128 GQA 8:2 Sq<Sk", 1, 8, 2, 70, 129, 128, torch.bfloat16, mask="causal"),
        case("causal f16 Sq>Sk (empty rows)", 1, 2, 2, 40, 17, 64, torch.float16, mask="causal"),
        case("local bf16 d64 [B,S,H,D] strides", 2, 4, 2, 90, 90, 64, torch.bfloat16, layout="bshd",
             mask="local", window_left=16, window_right=0),
        case("full f32 d64 softcap", 1, 2, 2, 33, 47, 64, torch.float32, score="softcap", softcap=20.0),
        case("document bf16 d64 (doc ids copied)", 1, 2, 2, 48, 48, 64, torch.bfloat16,
             doc=[0] * 20 + [1] * 28, mask="document"),
        case("causal f16 on a side stream", 1, 4, 4, 64, 64, 64, torch.float16, stream=True, mask="causal"),
    ]
    print(f"{sum(results)}/{len(results)} cases pass")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
