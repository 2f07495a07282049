"""Launch a kernel emitted by `attnforge emit` from Python with CuPy's RawKernel.

    attnforge emit examples/specs/causal.toml --out-dir build/ --arch sm_90
    python3 examples/python/run_cupy.py build/flash_fwd_causal_d64_bf16 \
        --batch 1 --heads-q 2 --heads-kv 2 --seq-q 40 --seq-k 72

The `.json` next to the `.cu` gives everything needed: the argument order and C types
(`signature`), the grid formula (`grid`, over batch, heads_q, seq_q and `block_m`), the block
size (`block_threads`) and the dynamic shared memory (`dynamic_smem_bytes`, with
`needs_smem_opt_in` above 48 KiB); `requirements` lists the layout preconditions of the
pointers (this script allocates contiguous tensors, which meet them). Mask / score parameters are passed with --param NAME=VALUE
(scalars) and arrays (doc ids, block lists, ALiBi slopes, user arrays) with
--array NAME=file.npy. The result is compared with PyTorch SDPA when PyTorch is present
(dense and causal specs).
"""

import argparse
import json
import math
import sys

import numpy as np


def load(prefix):
    with open(prefix + ".json") as f:
        meta = json.load(f)
    with open(prefix + ".cu") as f:
        src = f.read()
    return meta, src


def grid_of(meta, sizes):
    env = dict(sizes, block_m=meta["block_m"], ceil=math.ceil)
    # The formulas are plain arithmetic over these names, e.g. "ceil(seq_q / block_m)".
    return tuple(int(eval(g, {"__builtins__": {}}, env)) for g in meta["grid"])


def main():
    import cupy as cp

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("prefix", help="path of the emitted kernel without .cu/.json")
    for n in ["batch", "heads-q", "heads-kv", "seq-q", "seq-k"]:
        ap.add_argument("--" + n, type=int, required=True)
    ap.add_argument("--param", action="append", default=[], help="NAME=VALUE scalar kernel argument")
    ap.add_argument("--array", action="append", default=[], help="NAME=file.npy array kernel argument")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    meta, src = load(a.prefix)
    spec = meta["spec"]
    dim = int(spec["head_dim"])
    elem = {"f16": cp.float16, "f32": cp.float32, "bf16": cp.uint16}[spec["dtype"]]
    sizes = dict(batch=a.batch, heads_q=a.heads_q, heads_kv=a.heads_kv, seq_q=a.seq_q, seq_k=a.seq_k)

    rng = np.random.default_rng(a.seed)

    def tensor(h, s):
        x = rng.uniform(-1, 1, size=(a.batch, h, s, dim)).astype(np.float32)
        if spec["dtype"] == "bf16":  # raw bf16 bits (round to nearest even)
            b = x.view(np.uint32)
            b = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)
            return cp.asarray(b)
        return cp.asarray(x.astype(elem))

    t = {"q": tensor(a.heads_q, a.seq_q), "k": tensor(a.heads_kv, a.seq_k), "v": tensor(a.heads_kv, a.seq_k)}
    t["o"] = cp.zeros((a.batch, a.heads_q, a.seq_q, dim), dtype=elem)
    t["lse"] = cp.zeros((a.batch, a.heads_q, a.seq_q), dtype=cp.float32)
    scalars = {k: v for k, v in (p.split("=", 1) for p in a.param)}
    arrays = {k: cp.asarray(np.load(v)) for k, v in (p.split("=", 1) for p in a.array)}

    args = []
    for arg in meta["signature"]:
        name, ctype = arg["name"], arg["c_type"]
        if name in t:
            args.append(t[name])
        elif name in sizes:
            args.append(np.int32(sizes[name]))
        elif "_stride_" in name:
            x, _, which = name.split("_")
            strides = [s // t[x].itemsize for s in t[x].strides]
            args.append(np.int64(strides["bhs".index(which)]))
        elif name == "scale":
            args.append(np.float32(scalars.get("scale", meta["default_scale"])))
        elif ctype.endswith("*"):
            args.append(arrays.get(name, 0))  # a null pointer when not given
        elif ctype == "float":
            args.append(np.float32(scalars[name]))
        elif ctype == "long long":
            args.append(np.int64(scalars[name]))
        else:
            args.append(np.int32(scalars[name]))

    options = ("-std=c++17",)
    kernel = cp.RawKernel(src, meta["kernel_name"], options=options)
    smem = meta["dynamic_smem_bytes"]
    if meta["needs_smem_opt_in"]:
        kernel.max_dynamic_shared_size_bytes = smem
    grid = grid_of(meta, sizes)
    kernel(grid, (meta["block_threads"],), tuple(args), shared_mem=smem)
    cp.cuda.Device().synchronize()
    out = t["o"]
    if spec["dtype"] == "bf16":
        out = (out.astype(cp.uint32) << 16).view(cp.float32)
    print("out", out.shape, "finite:", bool(cp.isfinite(out).all()), "lse[0,0,:4]", t["lse"][0, 0, :4])

    mask = spec["mask"]
    if mask in ("full", "causal") and spec.get("score", "none") == "none":
        try:
            import torch
            import torch.nn.functional as F
        except ImportError:
            return 0
        def tt(x):
            if spec["dtype"] == "bf16":
                x = (x.astype(cp.uint32) << 16).view(cp.float32)
            return torch.as_tensor(x.astype(cp.float32), device="cuda")
        rep = a.heads_q // a.heads_kv
        k = tt(t["k"]).repeat_interleave(rep, dim=1)
        v = tt(t["v"]).repeat_interleave(rep, dim=1)
        q = tt(t["q"])
        bias = None
        if mask == "causal":
            i = torch.arange(a.seq_q, device="cuda")[:, None] + (a.seq_k - a.seq_q)
            j = torch.arange(a.seq_k, device="cuda")[None, :]
            bias = j <= i
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=meta["default_scale"])
        err = (torch.as_tensor(out.astype(cp.float32), device="cuda") - ref).abs().max().item()
        print("max |out - SDPA(f32)|:", err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
