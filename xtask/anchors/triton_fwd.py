"""Triton's fused-attention forward, compiled for sm_80 / sm_90 without a GPU (`cargo xtask anchors`).

The kernel is the forward of Triton's tutorial 06 (fused attention) in its plain-pointer form:
one program per (BLOCK_M query rows, batch*head), a loop over BLOCK_N key tiles with the online
softmax in base 2 (`qk_scale = sm_scale * log2(e)` folded into one multiply-subtract), fp32
accumulators, bf16 inputs, non-causal (the stage the tutorial runs for full attention).
Specialisations are fixed by hand as Triton's launcher would: unit strides along the head
dimension are constexpr, pointers and the other strides 16-divisible.

usage: python triton_fwd.py OUT_DIR   writes triton_d{64,128}_sm{80,90}.{cubin,json}
"""
import json
import os
import sys

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource


@triton.jit
def _attn_fwd(Q, K, V, Out, sm_scale,
              stride_qz, stride_qh, stride_qm,
              stride_kz, stride_kh, stride_kn,
              stride_vz, stride_vh, stride_vn,
              stride_oz, stride_oh, stride_om,
              Z, H, N_CTX,
              HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    start_m = tl.program_id(0)
    off_hz = tl.program_id(1)
    off_z = off_hz // H
    off_h = off_hz % H
    q_off = off_z.to(tl.int64) * stride_qz + off_h.to(tl.int64) * stride_qh
    k_off = off_z.to(tl.int64) * stride_kz + off_h.to(tl.int64) * stride_kh
    v_off = off_z.to(tl.int64) * stride_vz + off_h.to(tl.int64) * stride_vh
    o_off = off_z.to(tl.int64) * stride_oz + off_h.to(tl.int64) * stride_oh
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    q = tl.load(Q + q_off + offs_m[:, None] * stride_qm + offs_d[None, :])
    k_ptrs = K + k_off + offs_n[None, :] * stride_kn + offs_d[:, None]
    v_ptrs = V + v_off + offs_n[:, None] * stride_vn + offs_d[None, :]
    m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - float("inf")
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32) + 1.0
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    qk_scale = sm_scale * 1.44269504
    for start_n in range(0, N_CTX, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        k = tl.load(k_ptrs + start_n * stride_kn)
        qk = tl.dot(q, k)
        m_ij = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        qk = qk * qk_scale - m_ij[:, None]
        p = tl.math.exp2(qk)
        l_ij = tl.sum(p, 1)
        alpha = tl.math.exp2(m_i - m_ij)
        l_i = l_i * alpha + l_ij
        acc = acc * alpha[:, None]
        v = tl.load(v_ptrs + start_n * stride_vn)
        acc = tl.dot(p.to(v.dtype), v, acc)
        m_i = m_ij
    acc = acc / l_i[:, None]
    tl.store(Out + o_off + offs_m[:, None] * stride_om + offs_d[None, :], acc.to(Out.type.element_ty))


# BLOCK_M, BLOCK_N, num_warps, num_stages per head dim: one point of the tutorial's autotune
# space each (no GPU here to autotune); d128 is the configuration of issue 17's table.
CONFIGS = {64: (128, 64, 4, 3), 128: (128, 64, 8, 3)}


def compile_one(head_dim, cc):
    block_m, block_n, warps, stages = CONFIGS[head_dim]
    sig = {"Q": "*bf16", "K": "*bf16", "V": "*bf16", "Out": "*bf16", "sm_scale": "fp32"}
    for name in ["stride_qz", "stride_qh", "stride_qm", "stride_kz", "stride_kh", "stride_kn",
                 "stride_vz", "stride_vh", "stride_vn", "stride_oz", "stride_oh", "stride_om",
                 "Z", "H", "N_CTX"]:
        sig[name] = "i32"
    for name in ["HEAD_DIM", "BLOCK_M", "BLOCK_N"]:
        sig[name] = "constexpr"
    constexprs = {"HEAD_DIM": head_dim, "BLOCK_M": block_m, "BLOCK_N": block_n}
    # pointers and all strides but the unit ones divisible by 16 (tt.divisibility), as Triton's
    # launcher specialises them for contiguous tensors with 16-multiple sizes
    divisible = [[i] for i, n in enumerate(sig) if n not in ("sm_scale", "Z", "H", "HEAD_DIM",
                                                                  "BLOCK_M", "BLOCK_N")]
    attrs = {tuple(d): [["tt.divisibility", 16]] for d in divisible}
    src = ASTSource(fn=_attn_fwd, signature=sig, constexprs=constexprs, attrs=attrs)
    k = triton.compile(src, target=GPUTarget("cuda", cc, 32),
                       options={"num_warps": warps, "num_stages": stages})
    meta = {
        "name": k.metadata.name,
        "head_dim": head_dim,
        "block_m": block_m,
        "block_n": block_n,
        "num_warps": warps,
        "num_stages": stages,
        "shared": k.metadata.shared,
        "n_regs": getattr(k, "n_regs", None),
        "n_spills": getattr(k, "n_spills", None),
        "triton": triton.__version__,
    }
    return k.asm["cubin"], meta


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    for head_dim in (64, 128):
        for cc in (80, 90):
            cubin, meta = compile_one(head_dim, cc)
            stem = os.path.join(out, f"triton_d{head_dim}_sm{cc}")
            with open(stem + ".cubin", "wb") as f:
                f.write(cubin)
            with open(stem + ".json", "w") as f:
                json.dump(meta, f, indent=1)
            print(f"{stem}.cubin: {meta['name']} ({len(cubin)} bytes)")


if __name__ == "__main__":
    main()
