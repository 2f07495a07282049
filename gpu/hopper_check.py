"""GPU check, part (h): the simulator's Hopper emulation against the hardware.

Compiles kernels/hopper_check.cu (codegen prelude + af_hopper.cuh + the simulator's Hopper
test kernels sim/tests/cuda/hopper.cu and hopper_gpu.cu) with nvcc for sm_90a and runs
(1) `wg_any`: every wgmma shape the simulator tests (N 8..256, f16/bf16, A from shared memory
or registers, B K-major or MN-major) under every swizzle mode, with shared tiles placed from
the PTX ISA's layout description, against an exact matmul (inputs are multiples of 1/8: every
product and sum is exact in f32, so any layout mistake shows as a mismatch, not as rounding);
(2) `hopper_qk`: a TMA producer warpgroup (tensor maps encoded by cuTensorMapEncodeTiled, the
128-byte swizzle, an out-of-bounds box) feeding a wgmma consumer warpgroup through an
mbarrier, with setmaxnreg. The simulator passes the same comparisons (sim/tests/hopper.rs),
so agreement here means its wgmma / TMA / mbarrier semantics are the hardware's.
"""
import ctypes, os, subprocess, sys, tempfile

import torch

cuda = ctypes.CDLL("libcuda.so.1")


def ck(r, what):
    if r != 0:
        raise RuntimeError(f"{what}: CUresult {r}")


def load_module(cu_path):
    cubin = os.path.join(tempfile.mkdtemp(), "hopper_check.cubin")
    subprocess.run(["nvcc", "-cubin", "-arch=sm_90a", "-std=c++17", "-O3", "-o", cubin, cu_path], check=True)
    mod = ctypes.c_void_p()
    ck(cuda.cuModuleLoad(ctypes.byref(mod), cubin.encode()), "cuModuleLoad")
    return mod


def function(mod, name):
    fn = ctypes.c_void_p()
    ck(cuda.cuModuleGetFunction(ctypes.byref(fn), mod, name.encode()), "cuModuleGetFunction " + name)
    return fn


def launch(fn, block, smem, args):
    ptrs = (ctypes.c_void_p * len(args))(*[ctypes.cast(ctypes.byref(v), ctypes.c_void_p) for v in args])
    if smem > 48 * 1024:
        ck(cuda.cuFuncSetAttribute(fn, 8, smem), "cuFuncSetAttribute")
    stream = ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)
    ck(cuda.cuLaunchKernel(fn, 1, 1, 1, block, 1, 1, smem, stream, ptrs, None), "cuLaunchKernel")
    torch.cuda.synchronize()


def val(n, salt):
    i = torch.arange(n, dtype=torch.int64)
    return ((i * 7 + salt * 13) % 17).double() / 8 - 1


# (name, N, bf16, A in registers, B MN-major) in the order of `which` in hopper.cu / tests/hopper.rs
WGS = [("f16_ss", 8, 0, 0, 0), ("f16_ss", 24, 0, 0, 0), ("f16_ss", 64, 0, 0, 0), ("f16_ss", 128, 0, 0, 0),
       ("f16_ss", 256, 0, 0, 0), ("bf16_ss", 64, 1, 0, 0), ("bf16_ss", 256, 1, 0, 0), ("f16_rs", 64, 0, 1, 0),
       ("f16_rs", 128, 0, 1, 0), ("bf16_rs", 256, 1, 1, 0), ("f16_ss_bmn", 64, 0, 0, 1),
       ("bf16_rs_bmn", 128, 1, 1, 1), ("f16_rs_bmn", 256, 0, 1, 1)]


def wgmma_cases(fn):
    ok, n_cases = True, 0
    for which, (name, n, bf, _areg, _bmn) in enumerate(WGS):
        dt = torch.bfloat16 if bf else torch.float16
        for swz, layout, kstep, nsteps in [(0, 0, 0, 1), (0, 1, 0, 1), (32, 0, 0, 1), (64, 0, 0, 2), (64, 0, 1, 1),
                                           (128, 0, 0, 4), (128, 0, 2, 1)]:
            kt = swz // 2 if swz else 16
            a, b = val(64 * kt, 1), val(n * kt, 2)
            c = val(64 * n, 3) * 4
            A = a.to(dt).cuda().view(torch.int16)
            B = b.to(dt).cuda().view(torch.int16)
            C = c.float().cuda()
            D = torch.full((64 * n,), float("nan"), device="cuda")
            ks = slice(16 * kstep, 16 * (kstep + nsteps))
            want = c.reshape(64, n) + a.reshape(64, kt)[:, ks] @ b.reshape(n, kt)[:, ks].t()
            args = [ctypes.c_void_p(t.data_ptr()) for t in [A, B, C, D]] + [
                ctypes.c_int(x) for x in [swz, layout, kstep, nsteps, 1, 0, which]]
            launch(fn, 128, 49152, args)
            err = (D.double().cpu().reshape(64, n) - want).abs().max().item()
            n_cases += 1
            if not err == 0.0:
                ok = False
                print(f"- wg_{name}_{n} swizzle {swz} layout {layout} k-steps {kstep}+{nsteps}: max err {err:.3g} MISMATCH")
    print(f"- wgmma: {n_cases} cases (13 shapes x 7 swizzle/layout/k-step settings): "
          f"{'all exact' if ok else 'MISMATCHES above'}")
    return ok


def tensor_map(t, rows):
    """cuTensorMapEncodeTiled for a [rows][64] f16 tensor, box 64 x 64, 128-byte swizzle."""
    tmap = (ctypes.c_ubyte * 128)()
    dims = (ctypes.c_uint64 * 2)(64, rows)
    strides = (ctypes.c_uint64 * 1)(128)
    box = (ctypes.c_uint32 * 2)(64, 64)
    estr = (ctypes.c_uint32 * 2)(1, 1)
    # FLOAT16 = 6, INTERLEAVE_NONE = 0, SWIZZLE_128B = 3, L2_PROMOTION_NONE = 0, OOB_FILL_NONE = 0
    ck(cuda.cuTensorMapEncodeTiled(ctypes.byref(tmap), 6, 2, ctypes.c_void_p(t.data_ptr()), dims, strides, box,
                                   estr, 0, 3, 0, 0), "cuTensorMapEncodeTiled")
    return torch.tensor(list(bytes(tmap)), dtype=torch.uint8, device="cuda")


def tma_qk(fn):
    rows = 100
    qf, kf = val(rows * 64, 5).reshape(rows, 64), val(rows * 64, 6).reshape(rows, 64)
    q, k = qf.half().cuda(), kf.half().cuda()
    mq, mk = tensor_map(q, rows), tensor_map(k, rows)
    ok = True
    for q_row, k_row in [(0, 0), (36, 64)]:
        s = torch.full((64 * 64,), float("nan"), device="cuda")
        args = [ctypes.c_void_p(x.data_ptr()) for x in [mq, mk, q, k, s]] + [ctypes.c_int(q_row), ctypes.c_int(k_row)]
        launch(fn, 256, 16400, args)
        kk = torch.zeros(64, 64, dtype=torch.float64)
        n_in = max(0, min(64, rows - k_row))
        kk[:n_in] = kf[k_row:k_row + n_in]
        want = qf[q_row:q_row + 64] @ kk.t()
        err = (s.double().cpu().reshape(64, 64) - want).abs().max().item()
        ok &= err == 0.0
        print(f"- hopper_qk (TMA + mbarrier + setmaxnreg + wgmma) q_row {q_row} k_row {k_row}: "
              f"max err {err:.3g} {'exact' if err == 0.0 else 'MISMATCH'}")
    return ok


def main():
    kdir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "kernels")
    print("### (h) Hopper helpers (wgmma, TMA, mbarrier, setmaxnreg) vs exact matmuls, sm_90a")
    torch.zeros(1, device="cuda")  # make the primary context current before the driver API loads
    mod = load_module(os.path.join(kdir, "hopper_check.cu"))
    ok = wgmma_cases(function(mod, "wg_any"))
    ok &= tma_qk(function(mod, "hopper_qk"))
    print("hopper check:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
