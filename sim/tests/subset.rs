//! The documented CUDA subset compiles and computes what CUDA would.

use attnforge_sim::{Schedule, SimArg, SimConfig, SimKernel};
use half::{bf16, f16};

const SRC: &str = r#"
struct __align__(16) Pair { float a, b, c, d; };

__device__ __forceinline__ float dot4(const float* __restrict__ p, const float* __restrict__ q) {
  return p[0] * q[0] + p[1] * q[1] + p[2] * q[2] + p[3] * q[3];
}
__device__ void fill(float* dst, int n, float v) { for (int i = 0; i < n; i++) dst[i] = v; }

extern "C" __global__ void __launch_bounds__(64) subset(const float* __restrict__ x, const __half* h,
                                                        const __nv_bfloat16* bf, float* out, int n, long long big) {
  AF_SHARED(float, s, 64 * 4);
  AF_SHARED(__half, sh, 64);
  AF_SHARED(Pair, sp, 64);
  int t = threadIdx.x;
  fill(s + 4 * t, 4, 0.0f);                 // accessor + i is a pointer
  float* row = &s[4 * t];                   // &accessor[i] is a pointer
  row[0] = x[t]; row[1] = 2.0f; row[2] = -1.0f; row[3] = 0.5f;
  sh[t] = h[t];
  sp[t].a = 1.0f; sp[t].b = x[t];
  __syncthreads();
  float4 v = *reinterpret_cast<const float4*>(&s[4 * ((t + 1) % 64)]);
  float* o = out + t * 16;
  o[0] = dot4(row, row);
  o[1] = v.x + v.y + v.z + v.w;
  float hv = sh[t];                         // half element read as float
  o[2] = hv + __half2float(sh[(t + 3) % 64]);
  o[3] = __bfloat162float(bf[t]) * 2.0f;
  o[4] = expf(x[t] * 0.1f) + exp2f(x[t] * 0.1f) + __expf(0.0f);
  o[5] = logf(fabsf(x[t]) + 1.0f) + __logf(2.0f);
  o[6] = tanhf(x[t] * 0.05f) + rsqrtf(4.0f) + sqrtf(9.0f);
  float sn, cs;
  sincosf(x[t] * 0.01f, &sn, &cs);
  o[7] = sn * sn + cs * cs;
  o[8] = fmaxf(x[t], 0.0f) + fminf(x[t], 0.0f) + powf(2.0f, 3.0f) + __fdividef(1.0f, 4.0f);
  o[9] = (float)(max(t, 10) + min(t, 10) + max(3u, (unsigned)t) + (int)min(big, 5ll));
  o[10] = -INFINITY < x[t] ? 1.0f : 0.0f;
  o[11] = sp[(t + 1) % 64].b;
  __half hh = __float2half_rn(x[t]);
  hh = hh * __float2half_rn(2.0f) + __float2half_rn(1.0f);
  o[12] = __half2float(hh);
  __half2 h2 = __floats2half2_rn(1.5f, -2.0f);
  float2 f2 = __half22float2(h2);
  o[13] = f2.x * f2.y + (float)warpSize;
  o[14] = (float)(gridDim.x * blockDim.x);
  o[15] = sinf(0.0f) + cosf(0.0f);
}
"#;

#[test]
fn documented_subset_compiles_and_computes() {
    let k = SimKernel::build(SRC, "subset").unwrap_or_else(|e| panic!("{e}"));
    let x: Vec<f32> = (0..64).map(|i| i as f32 - 20.0).collect();
    let h: Vec<f16> = (0..64).map(|i| f16::from_f32(i as f32 * 0.25)).collect();
    let bf: Vec<bf16> = (0..64).map(|i| bf16::from_f32(i as f32 * 1.5)).collect();
    for sched in Schedule::standard(4) {
        let mut out = vec![0f32; 64 * 16];
        let mut args = [
            SimArg::input(&x),
            SimArg::input(&h),
            SimArg::input(&bf),
            SimArg::output(&mut out),
            SimArg::I32(64),
            SimArg::I64(1 << 40),
        ];
        k.launch(1, 64, 0, &mut args, &SimConfig::new(sched))
            .unwrap();
        for t in 0..64usize {
            let o = &out[t * 16..t * 16 + 16];
            let xt = x[t];
            let near = |got: f32, want: f32, what: &str| {
                assert!(
                    (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                    "t={t} {what}: {got} vs {want}"
                )
            };
            near(o[0], xt * xt + 4.0 + 1.0 + 0.25, "dot4");
            near(o[1], x[(t + 1) % 64] + 2.0 - 1.0 + 0.5, "float4 load");
            near(o[2], h[t].to_f32() + h[(t + 3) % 64].to_f32(), "half");
            near(o[3], bf[t].to_f32() * 2.0, "bf16");
            near(o[4], (xt * 0.1).exp() + (xt * 0.1).exp2() + 1.0, "exp");
            near(o[5], (xt.abs() + 1.0).ln() + 2f32.ln(), "log");
            near(o[6], (xt * 0.05).tanh() + 0.5 + 3.0, "tanh/rsqrt/sqrt");
            near(o[7], 1.0, "sincos");
            near(
                o[8],
                xt.max(0.0) + xt.min(0.0) + 8.0 + 0.25,
                "fmax/fmin/pow/fdivide",
            );
            near(
                o[9],
                (t.max(10) + t.min(10) + t.max(3) + 5) as f32,
                "min/max",
            );
            near(o[10], 1.0, "INFINITY");
            near(o[11], x[(t + 1) % 64], "struct element");
            let hh = f16::from_f32(f16::from_f32(xt).to_f32() * 2.0).to_f32() + 1.0;
            near(o[12], f16::from_f32(hh).to_f32(), "half arithmetic");
            near(o[13], -3.0 + 32.0, "half2");
            near(o[14], 64.0, "gridDim*blockDim");
            near(o[15], 1.0, "sin/cos");
        }
    }
}
