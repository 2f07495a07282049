//! Correct kernels give correct results under every schedule.

use attnforge_sim::{Schedule, SimArg, SimConfig, SimKernel};
use half::{bf16, f16};

fn build(src: &str, name: &str) -> SimKernel {
    SimKernel::build(src, name).unwrap_or_else(|e| panic!("{e}"))
}

const BLOCK_REDUCE: &str = r#"
extern "C" __global__ void block_reduce(const float* __restrict__ x, float* out, int n) {
  AF_SHARED(float, s, 128);
  int t = threadIdx.x;
  int i = blockIdx.x * blockDim.x + t;
  s[t] = i < n ? x[i] : 0.0f;
  __syncthreads();
  for (int st = 64; st >= 32; st >>= 1) {
    if (t < st) s[t] += s[t + st];
    __syncthreads();
  }
  if (t < 32) {
    float v = s[t];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (t == 0) out[blockIdx.x] = v;
  }
  AF_COUNT(AF_CTR_TILE_FULL, 1);
  if (t == 0) AF_COUNT(AF_CTR_MASK_EVAL, 3);
}
"#;

#[test]
fn block_reduction_with_barriers_and_shuffles() {
    let k = build(BLOCK_REDUCE, "block_reduce");
    let n = 37 * 128 - 5;
    let x: Vec<f32> = (0..n).map(|i| ((i * 7919) % 23) as f32 - 11.0).collect();
    let want: Vec<f32> = (0..37)
        .map(|b| x[b * 128..((b + 1) * 128).min(n)].iter().sum())
        .collect();
    for sched in Schedule::standard(11) {
        let mut out = vec![f32::NAN; 37];
        let mut args = [
            SimArg::input(&x),
            SimArg::output(&mut out),
            SimArg::I32(n as i32),
        ];
        let c = k
            .launch(37, 128, 0, &mut args, &SimConfig::new(sched))
            .unwrap();
        assert_eq!(out, want, "{sched:?}");
        assert_eq!(c.tiles_full, 37 * 128);
        assert_eq!(c.mask_evals, 37 * 3);
        assert_eq!(c.raw[0], c.tiles_full);
    }
}

#[test]
fn warp_collectives() {
    let src = r#"
extern "C" __global__ void warp_ops(const int* x, int* out) {
  int t = threadIdx.x, lane = t & 31;
  int v = x[blockIdx.x * 64 + t];
  int* o = out + (blockIdx.x * 64 + t) * 8;
  int s = v;
  for (int k = 16; k > 0; k >>= 1) s += __shfl_down_sync(0xffffffffu, s, k);
  o[0] = __shfl_sync(0xffffffffu, s, 0);            // warp sum broadcast from lane 0
  o[1] = __shfl_up_sync(0xffffffffu, v, 3);          // lane-3's value, own below 3
  o[2] = __shfl_xor_sync(0xffffffffu, v, 5, 8);      // xor within groups of 8
  o[3] = __shfl_sync(0xffffffffu, v, 2, 4);          // lane 2 of each group of 4
  o[4] = (int)__ballot_sync(0xffffffffu, v > 0);
  o[5] = __any_sync(0xffffffffu, v > 40);
  o[6] = __all_sync(0xffffffffu, v > -100);
  unsigned half_mask = 0x0000ffffu;
  if (lane < 16) o[7] = __shfl_down_sync(half_mask, v, 1, 16);
  else o[7] = -1;
  __syncwarp();
}
"#;
    let k = build(src, "warp_ops");
    let x: Vec<i32> = (0..128).map(|i| ((i * 37) % 41) - 20).collect();
    let mut want = vec![0i32; 128 * 8];
    for t in 0..128usize {
        let w = t / 32 * 32;
        let lane = t % 32;
        let warp = &x[w..w + 32];
        let o = &mut want[t * 8..t * 8 + 8];
        o[0] = warp.iter().sum();
        o[1] = if lane >= 3 {
            warp[lane - 3]
        } else {
            warp[lane]
        };
        o[2] = warp[lane ^ 5];
        o[3] = warp[(lane & !3) + 2];
        o[4] = warp
            .iter()
            .enumerate()
            .fold(0u32, |m, (l, v)| m | (u32::from(*v > 0) << l)) as i32;
        o[5] = i32::from(warp.iter().any(|v| *v > 40));
        o[6] = i32::from(warp.iter().all(|v| *v > -100));
        o[7] = if lane < 16 {
            if lane + 1 < 16 {
                warp[lane + 1]
            } else {
                warp[lane]
            }
        } else {
            -1
        };
    }
    for sched in Schedule::standard(3) {
        let mut out = vec![0i32; 128 * 8];
        let mut args = [SimArg::input(&x), SimArg::output(&mut out)];
        k.launch(2, 64, 0, &mut args, &SimConfig::new(sched))
            .unwrap();
        assert_eq!(out, want, "{sched:?}");
    }
}

#[test]
fn atomics_across_blocks_and_workers() {
    let src = r#"
extern "C" __global__ void atomics(float* fsum, int* isum, int* imax, int* imin, unsigned* cas_count, int* exch) {
  int g = blockIdx.x * blockDim.x + threadIdx.x;
  atomicAdd(fsum, 0.5f);
  atomicAdd(isum, g);
  atomicMax(imax, g * 3 % 1001);
  atomicMin(imin, 1000 - g);
  // increment via a CAS loop
  unsigned old = *(volatile unsigned*)cas_count, seen;
  do { seen = old; old = atomicCAS(cas_count, seen, seen + 1); } while (old != seen);
  atomicExch(exch, 7);
}
"#;
    let k = build(src, "atomics");
    let n = 50 * 96;
    for sched in Schedule::standard(5) {
        let (mut f, mut s, mut mx, mut mn, mut c, mut e) = (
            vec![0f32],
            vec![0i32],
            vec![i32::MIN],
            vec![i32::MAX],
            vec![0u32],
            vec![0i32],
        );
        let mut args = [
            SimArg::output(&mut f),
            SimArg::output(&mut s),
            SimArg::output(&mut mx),
            SimArg::output(&mut mn),
            SimArg::output(&mut c),
            SimArg::output(&mut e),
        ];
        k.launch(50, 96, 0, &mut args, &SimConfig::new(sched).with_workers(2))
            .unwrap();
        assert_eq!(f[0], 0.5 * n as f32);
        assert_eq!(s[0], (0..n).sum::<i32>());
        assert_eq!(mx[0], (0..n).map(|g| g * 3 % 1001).max().unwrap());
        assert_eq!(mn[0], 1000 - (n - 1));
        assert_eq!(c[0], n as u32);
        assert_eq!(e[0], 7);
    }
}

/// Row-major 16x16 A, B given as [k][n] 16x8 (row-major), C 16x8: D = A*B + C in f64.
fn matmul(a: &[f32], b: &[f32], c: &[f32]) -> Vec<f32> {
    let mut d = vec![0f32; 128];
    for r in 0..16 {
        for n in 0..8 {
            let mut acc = f64::from(c[r * 8 + n]);
            for k in 0..16 {
                acc += f64::from(a[r * 16 + k]) * f64::from(b[k * 8 + n]);
            }
            d[r * 8 + n] = acc as f32;
        }
    }
    d
}

fn close(got: &[f32], want: &[f32], what: &str) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
            "{what}: element {i} (row {}, col {}): got {g}, want {w}",
            i / 8,
            i % 8
        );
    }
}

/// mma via fragments loaded by hand (PTX layout) and via ldmatrix (the usual smem path).
const MMA_SRC: &str = include_str!("cuda/mma_check.cu");

fn check_mma<T: attnforge_sim::SimElem>(
    name: &str,
    conv: impl Fn(f32) -> T,
    back: impl Fn(T) -> f32,
) {
    let k = build(MMA_SRC, name);
    // distinct, non-symmetric values so that any transposition or swap shows
    let a: Vec<T> = (0..256)
        .map(|i| conv(((i * 37 % 29) as f32 - 14.0) / 8.0))
        .collect();
    let b16: Vec<T> = (0..256)
        .map(|i| conv(((i * 53 % 31) as f32 - 15.0) / 16.0))
        .collect();
    let c: Vec<f32> = (0..128).map(|i| (i as f32) * 0.25 - 3.0).collect();
    // B8 = first n-tile of B16 ([k][0..8]); B8' = second tile; Bt = B8^T
    let b8: Vec<T> = (0..128).map(|i| b16[(i / 8) * 16 + i % 8]).collect();
    let b8b: Vec<f32> = (0..128)
        .map(|i| back(b16[(i / 8) * 16 + 8 + i % 8]))
        .collect();
    let bt: Vec<T> = (0..128).map(|i| b8[(i % 16) * 8 + i / 16]).collect();
    let af: Vec<f32> = a.iter().map(|v| back(*v)).collect();
    let bf: Vec<f32> = b8.iter().map(|v| back(*v)).collect();
    let want0 = matmul(&af, &bf, &c);
    let want1 = matmul(&af, &b8b, &c);
    for sched in Schedule::standard(9) {
        let (mut dr, mut d0, mut d1, mut d2) = (
            vec![0f32; 128],
            vec![0f32; 128],
            vec![0f32; 128],
            vec![0f32; 128],
        );
        let mut args = [
            SimArg::input(&a),
            SimArg::input(&b8),
            SimArg::input(&b16),
            SimArg::input(&bt),
            SimArg::input(&c),
            SimArg::output(&mut dr),
            SimArg::output(&mut d0),
            SimArg::output(&mut d1),
            SimArg::output(&mut d2),
        ];
        k.launch(1, 32, 0, &mut args, &SimConfig::new(sched))
            .unwrap();
        close(&dr, &want0, "register fragments");
        close(&d0, &want0, "ldmatrix x4 (A) + x2 (B^T)");
        close(&d1, &want0, "ldmatrix x4.trans (B) tile 0");
        close(&d2, &want1, "ldmatrix x4.trans (B) tile 1");
    }
}

#[test]
fn mma_f16_matches_matmul() {
    check_mma("mma_f16", f16::from_f32, f16::to_f32);
}

#[test]
fn mma_bf16_matches_matmul() {
    check_mma("mma_bf16", bf16::from_f32, bf16::to_f32);
}

const CP_ASYNC: &str = r#"
// Copies a 64x8 f16 tile (16 bytes per row) global -> smem with cp.async in two groups.
extern "C" __global__ void cp_tile(const __half* src, __half* dst, int wait_mode) {
  AF_SHARED(__half, tile, 64 * 8);
  int t = threadIdx.x;  // 32 threads, rows t and t + 32
  af_cp_async_16(&tile[t * 8], src + t * 8);
  af_cp_async_commit();
  af_cp_async_16(&tile[(t + 32) * 8], src + (t + 32) * 8);
  af_cp_async_commit();
  if (wait_mode == 0) af_cp_async_wait<0>();
  if (wait_mode == 1) af_cp_async_wait<1>();   // second group still in flight
  __syncthreads();
  for (int i = t; i < 64 * 8; i += 32) dst[i] = tile[i];
}
"#;

#[test]
fn cp_async_copies_a_tile() {
    let k = build(CP_ASYNC, "cp_tile");
    let src: Vec<f16> = (0..512)
        .map(|i| f16::from_f32(i as f32 * 0.5 - 100.0))
        .collect();
    for sched in Schedule::standard(1) {
        let mut dst = vec![f16::ZERO; 512];
        let mut args = [
            SimArg::input(&src),
            SimArg::output(&mut dst),
            SimArg::I32(0),
        ];
        k.launch(3, 32, 0, &mut args, &SimConfig::new(sched))
            .unwrap();
        assert_eq!(dst, src, "{sched:?}");
    }
}

#[test]
fn dynamic_shared_and_3d_indexing() {
    let src = r#"
extern "C" __global__ void dyn3d(int* out) {
  AF_DYNAMIC_SHARED(int, buf);
  int t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  int n = blockDim.x * blockDim.y * blockDim.z;
  buf[t] = t * 10 + (int)blockIdx.y;
  __syncthreads();
  int b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  out[b * n + t] = buf[n - 1 - t] + 1000 * (int)blockIdx.z;
}
"#;
    let k = build(src, "dyn3d");
    let (gx, gy, gz, bx, by, bz) = (2u32, 3u32, 2u32, 4u32, 3u32, 2u32);
    let n = (bx * by * bz) as usize;
    let nb = (gx * gy * gz) as usize;
    let mut want = vec![0i32; nb * n];
    for z in 0..gz {
        for y in 0..gy {
            for x in 0..gx {
                let b = (x + gx * (y + gy * z)) as usize;
                for t in 0..n {
                    want[b * n + t] = (n - 1 - t) as i32 * 10 + y as i32 + 1000 * z as i32;
                }
            }
        }
    }
    for sched in Schedule::standard(2) {
        let mut out = vec![0i32; nb * n];
        let mut args = [SimArg::output(&mut out)];
        k.launch(
            (gx, gy, gz),
            (bx, by, bz),
            n * 4,
            &mut args,
            &SimConfig::new(sched),
        )
        .unwrap();
        assert_eq!(out, want, "{sched:?}");
    }
}

#[test]
fn half_and_bfloat16_conversions_round_to_nearest_even() {
    let src = r#"
extern "C" __global__ void convert(const float* x, __half* h, __nv_bfloat16* b, float* hb, float* bb, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  h[i] = __float2half_rn(x[i]);
  b[i] = __float2bfloat16_rn(x[i]);
  hb[i] = __half2float(h[i]);
  bb[i] = __bfloat162float(b[i]);
}
"#;
    let k = build(src, "convert");
    let mut x: Vec<f32> = vec![
        0.0,
        -0.0,
        1.0,
        -1.0,
        65504.0,
        65519.0,
        65520.0,
        1e6,
        -1e6,
        5.96e-8,
        2.98e-8,
        2.99e-8,
        1e-7,
        3e-5,
        6.1e-5,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MIN_POSITIVE,
        1.0 + 1.0 / 1024.0,
        1.0 + 1.0 / 2048.0,
        1.0 + 3.0 / 2048.0,
        3.0e38,
        f32::MAX,
    ];
    let mut s = 0x1234_5678u32;
    for _ in 0..4000 {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        let v = f32::from_bits(s);
        if !v.is_nan() {
            x.push(v);
        }
        x.push((s % 100_000) as f32 / 997.0 - 50.0);
    }
    let n = x.len();
    let (mut h, mut b, mut hb, mut bb) = (
        vec![f16::ZERO; n],
        vec![bf16::ZERO; n],
        vec![0f32; n],
        vec![0f32; n],
    );
    let mut args = [
        SimArg::input(&x),
        SimArg::output(&mut h),
        SimArg::output(&mut b),
        SimArg::output(&mut hb),
        SimArg::output(&mut bb),
        SimArg::I32(n as i32),
    ];
    k.launch(
        n.div_ceil(128) as u32,
        128,
        0,
        &mut args,
        &SimConfig::default(),
    )
    .unwrap();
    for i in 0..n {
        assert_eq!(
            h[i].to_bits(),
            f16::from_f32(x[i]).to_bits(),
            "f16 of {:e} ({:#x})",
            x[i],
            x[i].to_bits()
        );
        assert_eq!(
            b[i].to_bits(),
            bf16::from_f32(x[i]).to_bits(),
            "bf16 of {:e}",
            x[i]
        );
        assert_eq!(hb[i].to_bits(), f16::from_f32(x[i]).to_f32().to_bits());
        assert_eq!(bb[i].to_bits(), bf16::from_f32(x[i]).to_f32().to_bits());
    }
    // NaN stays NaN
    let nan = [f32::NAN];
    let (mut h, mut b, mut hb, mut bb) =
        (vec![f16::ZERO], vec![bf16::ZERO], vec![0f32], vec![0f32]);
    let mut args = [
        SimArg::input(&nan),
        SimArg::output(&mut h),
        SimArg::output(&mut b),
        SimArg::output(&mut hb),
        SimArg::output(&mut bb),
        SimArg::I32(1),
    ];
    k.launch(1, 32, 0, &mut args, &SimConfig::default())
        .unwrap();
    assert!(h[0].is_nan() && b[0].is_nan() && hb[0].is_nan() && bb[0].is_nan());
}

/// Each thread takes a ticket from a global counter: the tickets record execution order.
#[test]
fn schedules_change_execution_order() {
    let src = r#"
extern "C" __global__ void tickets(int* counter, int* thread_ticket, int* block_ticket) {
  int t = threadIdx.x;
  int b = blockIdx.x;
  if (t == 0) block_ticket[b] = atomicAdd(counter + 1, 1);
  __syncthreads();
  thread_ticket[b * blockDim.x + t] = atomicAdd(counter, 1) - b * (int)blockDim.x;
}
"#;
    let k = build(src, "tickets");
    let run = |sched: Schedule| {
        let (mut c, mut tt, mut bt) = (vec![0i32; 2], vec![0i32; 4 * 64], vec![0i32; 4]);
        // the tickets are only comparable when blocks run one at a time
        let mut args = [
            SimArg::output(&mut c),
            SimArg::output(&mut tt),
            SimArg::output(&mut bt),
        ];
        k.launch(4, 64, 0, &mut args, &SimConfig::new(sched).with_workers(1))
            .unwrap();
        (tt, bt)
    };
    let (ft, fb) = run(Schedule::Forward);
    let (rt, rb) = run(Schedule::Reverse);
    let (xt, xb) = run(Schedule::Random(1));
    let (yt, _) = run(Schedule::Random(2));
    let (xt2, xb2) = run(Schedule::Random(1));
    assert_eq!(fb, vec![0, 1, 2, 3]);
    assert_eq!(rb, vec![3, 2, 1, 0]);
    let b0: Vec<i32> = ft[..64].to_vec();
    assert_eq!(
        b0,
        (0..64).collect::<Vec<_>>(),
        "forward runs threads in ascending order"
    );
    // block 3 ran first under Reverse, so its tickets are offset by -3*64 + 0
    let r3: Vec<i32> = rt[3 * 64..].iter().map(|v| v + 3 * 64).collect();
    assert_eq!(
        r3,
        (0..64).rev().collect::<Vec<_>>(),
        "reverse runs threads in descending order"
    );
    assert_ne!(xt, ft);
    assert_ne!(xt, rt);
    assert_ne!(xt, yt, "different seeds give different orders");
    assert_eq!((xt, xb), (xt2, xb2), "the same seed gives the same order");
}

#[test]
fn ucontext_fallback_runs_the_same_kernel() {
    let opts = attnforge_sim::BuildOptions {
        defines: vec!["AFSIM_FORCE_UCONTEXT".into()],
        ..Default::default()
    };
    let k = SimKernel::build_with(BLOCK_REDUCE, "block_reduce", &opts).unwrap();
    let x: Vec<f32> = (0..512).map(|i| (i % 9) as f32).collect();
    let mut out = vec![0f32; 4];
    let mut args = [
        SimArg::input(&x),
        SimArg::output(&mut out),
        SimArg::I32(512),
    ];
    k.launch(4, 128, 0, &mut args, &SimConfig::new(Schedule::Random(4)))
        .unwrap();
    let want: Vec<f32> = x.chunks(128).map(|c| c.iter().sum()).collect();
    assert_eq!(out, want);
}
