"""GPU check, parts (a) and (c): mma fragment layouts and forward TFLOP/s.

(a) compiles kernels/mma_check.cu (codegen prelude + the simulator's check kernel) with nvcc
    for sm_90, launches it through the driver API (ctypes on libcuda) and compares its four
    outputs with a float64 matmul: the simulator passes the same comparison (sim
    tests/correct.rs), so agreement confirms the simulator's fragment layouts.
(c) times our emitted kernels (.cu + metadata JSON, compiled with nvcc -cubin) against
    torch SDPA and FlexAttention, bf16, dense full / causal, d = 64 / 128, seq 1k-16k.
"""
import argparse, ctypes, glob, json, os, subprocess, sys, tempfile, time

import torch

cuda = ctypes.CDLL("libcuda.so.1")


def ck(r, what):
    if r != 0:
        raise RuntimeError(f"{what}: CUresult {r}")


def load(cu_path, name, arch="sm_90"):
    cubin = os.path.join(tempfile.mkdtemp(), name + ".cubin")
    subprocess.run(["nvcc", "-cubin", f"-arch={arch}", "-std=c++17", "-O3", "-o", cubin, cu_path], check=True)
    mod, fn = ctypes.c_void_p(), ctypes.c_void_p()
    ck(cuda.cuModuleLoad(ctypes.byref(mod), cubin.encode()), "cuModuleLoad")
    ck(cuda.cuModuleGetFunction(ctypes.byref(fn), mod, name.encode()), "cuModuleGetFunction")
    return fn


def launch(fn, grid, block, smem, args):
    """args: list of (ctype value)."""
    vals = [a for a in args]
    ptrs = (ctypes.c_void_p * len(vals))(*[ctypes.cast(ctypes.byref(v), ctypes.c_void_p) for v in vals])
    if smem > 48 * 1024:
        ck(cuda.cuFuncSetAttribute(fn, 8, smem), "cuFuncSetAttribute")  # MAX_DYNAMIC_SHARED_SIZE_BYTES
    stream = ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)
    ck(cuda.cuLaunchKernel(fn, *grid, *block, smem, stream, ptrs, None), "cuLaunchKernel")


def mma_check(kdir):
    print("### (a) mma.sync / ldmatrix fragment layouts")
    ok = True
    for name, dt in [("mma_f16", torch.float16), ("mma_bf16", torch.bfloat16)]:
        fn = load(os.path.join(kdir, "mma_check.cu"), name)
        i = torch.arange(256, dtype=torch.float64)
        a = (((i * 37) % 29) - 14) / 8
        b16 = (((i * 53) % 31) - 15) / 16
        c = torch.arange(128, dtype=torch.float32) * 0.25 - 3
        A = a.to(dt).cuda()
        B16 = b16.to(dt).reshape(16, 16).cuda()
        B8 = B16[:, :8].contiguous()
        Bt = B8.t().contiguous()
        C = c.cuda()
        outs = [torch.zeros(128, device="cuda") for _ in range(4)]
        args = [ctypes.c_void_p(t.data_ptr()) for t in [A, B8, B16, Bt, C, *outs]]
        launch(fn, (1, 1, 1), (32, 1, 1), 0, args)
        torch.cuda.synchronize()
        Af = A.double().reshape(16, 16)
        want0 = Af @ B8.double() + C.double().reshape(16, 8)
        want1 = Af @ B16[:, 8:].double() + C.double().reshape(16, 8)
        for label, got, want in [("registers", outs[0], want0), ("ldmatrix x4+x2", outs[1], want0),
                                 ("x4.trans tile 0", outs[2], want0), ("x4.trans tile 1", outs[3], want1)]:
            err = (got.double().reshape(16, 8) - want).abs().max().item()
            ok &= err < 1e-3
            print(f"- {name} {label}: max |gpu - matmul| = {err:.3g} {'ok' if err < 1e-3 else 'MISMATCH'}")
    return ok


def bench_ms(f, iters=20):
    f()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(iters):
        f()
    e.record()
    torch.cuda.synchronize()
    return s.elapsed_time(e) / iters


def ours(kdir, causal, d, tile_suffix=""):
    """Our kernel: the default tile (canonical name), or the tile `tile_suffix` (name
    `<canonical>__<suffix>`; a warpgroup-MMA tile, suffix ending in `wg`, compiles for sm_90a)."""
    name = f"flash_fwd_{'causal' if causal else 'full'}_d{d}_bf16"
    if tile_suffix:
        name += "__" + tile_suffix
    meta = json.load(open(os.path.join(kdir, name + ".json")))
    fn = load(os.path.join(kdir, name + ".cu"), name, "sm_90a" if meta["tile"].get("wgmma") else "sm_90")
    t = meta["tile"]

    def run(q, k, v, o, lse):
        B, H, S, D = q.shape
        vals = {"q": q, "k": k, "v": v, "o": o, "lse": lse}
        args = []
        for a in meta["args"]:
            n = a["name"]
            if n in vals:
                args.append(ctypes.c_void_p(vals[n].data_ptr()))
            elif n in ("batch",):
                args.append(ctypes.c_int(B))
            elif n in ("heads_q", "heads_kv"):
                args.append(ctypes.c_int(H))
            elif n in ("seq_q", "seq_k"):
                args.append(ctypes.c_int(S))
            elif "_stride_" in n:
                x = vals[n[0]]
                args.append(ctypes.c_longlong(x.stride({"b": 0, "h": 1, "s": 2}[n[-1]])))
            elif n == "scale":
                args.append(ctypes.c_float(D ** -0.5))
            else:
                raise RuntimeError(f"unexpected argument {n}")
        smem = meta.get("dynamic_smem_bytes") or meta.get("smem_bytes")
        launch(fn, ((S + t["block_m"] - 1) // t["block_m"], H, B), (t["warps"] * 32, 1, 1), smem, args)
    return run


def sdpa_with(backend_name):
    """SDPA pinned to one backend (FLASH_ATTENTION is FlashAttention-2 inside PyTorch)."""
    from torch.nn.attention import sdpa_kernel, SDPBackend
    be = getattr(SDPBackend, backend_name)

    def f(q, k, v, causal):
        with sdpa_kernel([be]):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return f


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kernels", required=True)
    ap.add_argument("--budget-s", type=float, default=170.0,
                    help="FlexAttention columns are skipped once this much time has passed")
    a = ap.parse_args()
    t0 = time.time()
    torch.cuda.init()
    # the driver-API launches below need the primary context current: an allocation makes it so
    torch.zeros(1, device="cuda")
    torch.cuda.synchronize()
    print(f"device: {torch.cuda.get_device_name()} | torch {torch.__version__} | "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    try:
        ok = mma_check(a.kernels)
        print(f"mma layout check: {'PASS' if ok else 'FAIL'}")
    except Exception as e:  # report and continue with the benchmark
        print(f"mma layout check: ERROR {e}")
    print("\n### (c) forward TFLOP/s, bf16, B*S = 16k tokens, 16 heads, CUDA events, mean of 20 launches")
    print("FLOPs = 4 B H S^2 d (halved for causal). err: max |ours - SDPA| over the output.")
    print("SDPA-FA2 is PyTorch's FLASH_ATTENTION backend (FlashAttention-2); SDPA-cuDNN its CUDNN_ATTENTION.")
    flex = None
    try:
        from torch.nn.attention.flex_attention import flex_attention, create_block_mask
        import torch._dynamo as dynamo
        # one compilation per (shape, mask): 16 of them; past the default limit of 8, dynamo
        # falls back to the unfused eager path (scores materialised), which is not FlexAttention
        for knob in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                     "accumulated_cache_size_limit"):
            if hasattr(dynamo.config, knob):
                setattr(dynamo.config, knob, 256)
        flex = torch.compile(flex_attention, dynamic=False)
    except Exception as e:
        print(f"FlexAttention unavailable: {e}")
    print("| mask | d | seq | ours | err | SDPA-FA2 | SDPA-cuDNN | Flex |\n|---|---|---|---|---|---|---|---|")
    backends = [sdpa_with("FLASH_ATTENTION"), sdpa_with("CUDNN_ATTENTION")]
    for causal in [False, True]:
        for d in [64, 128]:
            try:
                run = ours(a.kernels, causal, d)
            except Exception as e:
                print(f"ours {causal=} {d=}: ERROR {e}")
                run = None
            for S in [1024, 4096, 16384, 3000]:
                B, H = max(1, 16384 // S), 16
                q, k, v = (torch.randn(B, H, S, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
                o = torch.zeros_like(q)
                lse = torch.empty(B, H, S, device="cuda", dtype=torch.float32)
                flops = 4 * B * H * S * S * d / (2 if causal else 1)
                tf = lambda ms: f"{flops / ms / 1e9:.0f}"
                cells = []
                if run:
                    try:
                        ms = bench_ms(lambda: run(q, k, v, o, lse))
                        ref = sdpa_with("MATH")(q.float(), k.float(), v.float(), causal)
                        err = (o.float() - ref).abs().max().item()
                        cells += [tf(ms), f"{err:.2g}"]
                    except Exception as e:
                        cells += [f"ERROR {e}", ""]
                else:
                    cells += ["n/a", ""]
                for f in backends:
                    try:
                        cells.append(tf(bench_ms(lambda: f(q, k, v, causal))))
                    except Exception as e:
                        cells.append(f"n/a ({type(e).__name__})")
                if flex is not None and S != 3000 and time.time() - t0 < a.budget_s:
                    try:
                        bm = None
                        if causal:
                            bm = create_block_mask(lambda b, h, qi, ki: qi >= ki, None, None, S, S)
                        cells.append(tf(bench_ms(lambda: flex(q, k, v, block_mask=bm))))
                    except Exception as e:
                        cells.append(f"n/a ({type(e).__name__})")
                else:
                    cells.append("skipped")
                print(f"| {'causal' if causal else 'full'} | {d} | {S} | " + " | ".join(cells) + " |")
                sys.stdout.flush()
                del q, k, v, o, lse


def wgmma_table(kdir):
    """(c2) The warpgroup-MMA (sm_90a) kernels next to the default mma.sync tile and SDPA."""
    print("\n### (c2) Hopper warpgroup-MMA kernels (sm_90a), bf16, B*S = 16k tokens, 16 heads, TFLOP/s")
    print("err: max |ours - fp32 math SDPA| over the output. Default: the mma.sync default tile (m64n64w4s2).")
    tiles = ["m128n128w8s2wg", "m128n128w8s3wg", "m64n128w4s2wg", "m128n128w12s2wg", "m128n128w12s3wg",
             "m64n128w8s3wg"]
    print("| mask | d | seq | default | " + " | ".join(tiles) + " | err wgmma (max) | SDPA-FA2 | SDPA-cuDNN |")
    print("|---|---|---|---|" + "---|" * len(tiles) + "---|---|---|")
    backends = [sdpa_with("FLASH_ATTENTION"), sdpa_with("CUDNN_ATTENTION")]
    for causal in [False, True]:
        for d in [64, 128]:
            runs = []
            for suffix in [""] + tiles:
                try:
                    runs.append(ours(kdir, causal, d, suffix))
                except Exception as e:
                    print(f"ours {causal=} {d=} {suffix}: ERROR {e}")
                    runs.append(None)
            for S in [4096, 16384, 3000]:
                B, H = max(1, 16384 // S), 16
                q, k, v = (torch.randn(B, H, S, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
                lse = torch.empty(B, H, S, device="cuda", dtype=torch.float32)
                flops = 4 * B * H * S * S * d / (2 if causal else 1)
                ref = sdpa_with("MATH")(q.float(), k.float(), v.float(), causal)
                cells, errs = [], []
                for run in runs:
                    if run is None:
                        cells.append("n/a")
                        continue
                    o = torch.zeros_like(q)
                    try:
                        ms = bench_ms(lambda: run(q, k, v, o, lse))
                        errs.append((o.float() - ref).abs().max().item())
                        cells.append(f"{flops / ms / 1e9:.0f}")
                    except Exception as e:
                        cells.append(f"ERROR {e}")
                err = f"{max(errs[1:]):.2g}" if len(errs) > 1 else "n/a"
                for f in backends:
                    try:
                        cells_b = f"{flops / bench_ms(lambda: f(q, k, v, causal)) / 1e9:.0f}"
                    except Exception as e:
                        cells_b = f"n/a ({type(e).__name__})"
                    cells.append(cells_b)
                cells.insert(len(tiles) + 1, err)
                print(f"| {'causal' if causal else 'full'} | {d} | {S} | " + " | ".join(cells) + " |")
                sys.stdout.flush()
                del q, k, v, lse, ref


if __name__ == "__main__":
    if "--wgmma-only" in sys.argv:
        sys.argv.remove("--wgmma-only")
        ap = argparse.ArgumentParser()
        ap.add_argument("--kernels", required=True)
        a, _ = ap.parse_known_args()
        torch.zeros(1, device="cuda")
        wgmma_table(a.kernels)
    else:
        main()
