//! Deliberately broken kernels are caught: wrong results under some schedule, or a
//! launch error that names the problem, never a hang.

use std::time::Instant;

use attnforge_sim::{Schedule, SimArg, SimConfig, SimError, SimKernel};
use half::f16;

fn build(src: &str, name: &str) -> SimKernel {
    SimKernel::build(src, name).unwrap_or_else(|e| panic!("{e}"))
}

fn launch_err(
    k: &SimKernel,
    grid: u32,
    block: u32,
    args: &mut [SimArg<'_>],
    sched: Schedule,
) -> String {
    match k.launch(grid, block, 0, args, &SimConfig::new(sched)) {
        Err(SimError::Launch { kernel, message }) => {
            assert_eq!(kernel, k.name());
            message
        }
        other => panic!(
            "{}: expected a launch error under {sched:?}, got {other:?}",
            k.name()
        ),
    }
}

/// The tree reduction of `correct.rs` without the barrier inside the loop.
#[test]
fn missing_syncthreads_changes_the_result_under_some_schedule() {
    let src = r#"
extern "C" __global__ void racy_reduce(const float* x, float* out) {
  AF_SHARED(float, s, 128);
  int t = threadIdx.x;
  s[t] = x[blockIdx.x * 128 + t];
  __syncthreads();
  for (int st = 64; st > 0; st >>= 1) {
    if (t < st) s[t] += s[t + st];
    // missing __syncthreads() here
  }
  __syncthreads();
  if (t == 0) out[blockIdx.x] = s[0];
}
"#;
    let k = build(src, "racy_reduce");
    let x: Vec<f32> = (0..8 * 128).map(|i| (i % 17) as f32).collect();
    let want: Vec<f32> = x.chunks(128).map(|c| c.iter().sum()).collect();
    let mut wrong = Vec::new();
    for sched in Schedule::standard(21) {
        let mut out = vec![0f32; 8];
        let mut args = [SimArg::input(&x), SimArg::output(&mut out)];
        match k.launch(8, 128, 0, &mut args, &SimConfig::new(sched)) {
            Ok(_) if out == want => {}
            _ => wrong.push(sched),
        }
    }
    assert!(!wrong.is_empty(), "no schedule exposed the missing barrier");
}

#[test]
fn missing_syncthreads_before_reading_a_neighbour_reports_a_poisoned_read() {
    let src = r#"
extern "C" __global__ void neighbour(const float* x, float* out) {
  AF_SHARED(float, s, 64);
  int t = threadIdx.x;
  s[t] = x[t];
  // missing __syncthreads()
  out[t] = s[(t + 1) % 64];
}
"#;
    let k = build(src, "neighbour");
    let x = vec![1.0f32; 64];
    for sched in Schedule::standard(8) {
        let mut out = vec![0f32; 64];
        let mut args = [SimArg::input(&x), SimArg::output(&mut out)];
        let msg = launch_err(&k, 1, 64, &mut args, sched);
        assert!(msg.contains("uninitialised shared memory s["), "{msg}");
        assert!(msg.contains("block (0,0,0)"), "{msg}");
    }
}

#[test]
fn barrier_in_a_divergent_branch_is_an_error_not_a_hang() {
    let src = r#"
extern "C" __global__ void divergent(float* out) {
  int t = threadIdx.x;
  if (t < 40) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[t] = 1.0f;
}
"#;
    let k = build(src, "divergent");
    let start = Instant::now();
    for sched in Schedule::standard(2) {
        let mut out = vec![0f32; 128];
        let mut args = [SimArg::output(&mut out)];
        let msg = launch_err(&k, 2, 128, &mut args, sched);
        assert!(msg.contains("divergent __syncthreads"), "{msg}");
        assert!(
            msg.contains("threads 0-39") || msg.contains("threads 40-127"),
            "{msg}"
        );
    }
    assert!(start.elapsed().as_secs() < 30);
}

#[test]
fn barrier_after_some_threads_exit_is_a_deadlock_error() {
    let src = r#"
extern "C" __global__ void early_exit(float* out) {
  int t = threadIdx.x;
  if (t >= 96) return;
  __syncthreads();
  out[t] = 1.0f;
}
"#;
    let k = build(src, "early_exit");
    for sched in Schedule::standard(2) {
        let mut out = vec![0f32; 128];
        let mut args = [SimArg::output(&mut out)];
        let msg = launch_err(&k, 3, 128, &mut args, sched);
        assert!(msg.contains("deadlock in block"), "{msg}");
        assert!(msg.contains("threads 0-95 wait at __syncthreads"), "{msg}");
        assert!(msg.contains("threads 96-127 have exited"), "{msg}");
    }
}

#[test]
fn shuffle_with_exited_lanes_is_a_deadlock_error() {
    let src = r#"
extern "C" __global__ void shfl_exit(float* out) {
  int t = threadIdx.x;
  if ((t & 31) >= 16) return;
  out[t] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
}
"#;
    let k = build(src, "shfl_exit");
    let mut out = vec![0f32; 64];
    let mut args = [SimArg::output(&mut out)];
    let msg = launch_err(&k, 1, 64, &mut args, Schedule::Forward);
    assert!(msg.contains("__shfl*_sync"), "{msg}");
    assert!(msg.contains("never arrive"), "{msg}");
}

const CP_ASYNC: &str = r#"
extern "C" __global__ void cp_tile(const __half* src, __half* dst, int wait_mode) {
  AF_SHARED(__half, tile, 64 * 8);
  int t = threadIdx.x;
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
fn missing_cp_async_wait_is_reported() {
    let k = build(CP_ASYNC, "cp_tile");
    let src: Vec<f16> = (0..512).map(|i| f16::from_f32(i as f32)).collect();
    for (mode, sched) in [
        (2, Schedule::Forward),
        (1, Schedule::Reverse),
        (2, Schedule::Random(3)),
        (1, Schedule::Random(4)),
    ] {
        let mut dst = vec![f16::ZERO; 512];
        let mut args = [
            SimArg::input(&src),
            SimArg::output(&mut dst),
            SimArg::I32(mode),
        ];
        let msg = launch_err(&k, 1, 32, &mut args, sched);
        assert!(msg.contains("cp.async"), "mode {mode}: {msg}");
    }
    // the correct wait passes
    let mut dst = vec![f16::ZERO; 512];
    let mut args = [
        SimArg::input(&src),
        SimArg::output(&mut dst),
        SimArg::I32(0),
    ];
    k.launch(1, 32, 0, &mut args, &SimConfig::default())
        .unwrap();
    assert_eq!(dst, src);
}

#[test]
fn reused_buffer_with_pending_cp_async_is_reported() {
    // the destination was written before; a new cp.async makes it undefined until the wait
    let src = r#"
extern "C" __global__ void cp_reuse(const float* src, float* dst) {
  AF_SHARED(float, buf, 128);
  int t = threadIdx.x;
  for (int i = 0; i < 4; i++) buf[t * 4 + i] = 0.0f;
  __syncthreads();
  af_cp_async_16(&buf[t * 4], src + t * 4);
  af_cp_async_commit();
  // missing af_cp_async_wait<0>()
  __syncthreads();
  dst[t] = buf[t];
}
"#;
    let k = build(src, "cp_reuse");
    let s = vec![2.0f32; 128];
    let mut d = vec![0f32; 32];
    let mut args = [SimArg::input(&s), SimArg::output(&mut d)];
    let msg = launch_err(&k, 1, 32, &mut args, Schedule::Forward);
    assert!(msg.contains("uninitialised shared memory buf["), "{msg}");
}

#[test]
fn out_of_bounds_shared_index_is_an_error() {
    let src = r#"
extern "C" __global__ void oob(float* out) {
  AF_SHARED(float, s, 128);
  int t = threadIdx.x;
  s[t + 1] = 1.0f;   // thread 127 writes s[128]
  __syncthreads();
  out[t] = s[t];
}
"#;
    let k = build(src, "oob");
    for sched in Schedule::standard(5) {
        let mut out = vec![0f32; 128];
        let mut args = [SimArg::output(&mut out)];
        let msg = launch_err(&k, 2, 128, &mut args, sched);
        assert!(
            msg.contains("shared-memory index 128 out of bounds for s[128]"),
            "{msg}"
        );
        assert!(msg.contains("thread (127,0,0)"), "{msg}");
    }
}

#[test]
fn negative_and_dynamic_out_of_bounds_are_errors() {
    let src = r#"
extern "C" __global__ void oob_dyn(float* out, int idx) {
  AF_DYNAMIC_SHARED(float, d);
  d[threadIdx.x] = 0.0f;
  __syncthreads();
  out[threadIdx.x] = d[idx];
}
"#;
    let k = build(src, "oob_dyn");
    for (idx, want) in [
        (-1, "index -1 out of bounds for d[32]"),
        (32, "index 32 out of bounds for d[32]"),
    ] {
        let mut out = vec![0f32; 32];
        let mut args = [SimArg::output(&mut out), SimArg::I32(idx)];
        let msg = match k.launch(1, 32, 32 * 4, &mut args, &SimConfig::default()) {
            Err(SimError::Launch { message, .. }) => message,
            other => panic!("{other:?}"),
        };
        assert!(msg.contains(want), "{msg}");
    }
    let mut out = vec![0f32; 32];
    let mut args = [SimArg::output(&mut out), SimArg::I32(31)];
    k.launch(1, 32, 32 * 4, &mut args, &SimConfig::default())
        .unwrap();
}

#[test]
fn reading_shared_memory_before_writing_it_is_an_error() {
    let src = r#"
extern "C" __global__ void uninit(int* out) {
  AF_SHARED(int, acc, 64);
  int t = threadIdx.x;
  acc[t] += 1;   // never initialised
  out[t] = acc[t];
}
"#;
    let k = build(src, "uninit");
    let mut out = vec![0i32; 64];
    let mut args = [SimArg::output(&mut out)];
    let msg = launch_err(&k, 1, 64, &mut args, Schedule::Random(1));
    assert!(msg.contains("uninitialised shared memory acc["), "{msg}");
}

#[test]
fn ldmatrix_of_unwritten_shared_memory_is_an_error() {
    let src = r#"
extern "C" __global__ void ldm_uninit(unsigned* out) {
  AF_SHARED(__half, s, 256);
  int lane = threadIdx.x;
  for (int i = lane; i < 128; i += 32) s[i] = __float2half_rn(1.0f);  // only half the tile
  __syncwarp();
  unsigned r[4];
  af_ldmatrix_x4(r, &s[(lane % 16) * 16 + (lane / 16) * 8]);
  out[lane] = r[0] ^ r[1] ^ r[2] ^ r[3];
}
"#;
    let k = build(src, "ldm_uninit");
    let mut out = vec![0u32; 32];
    let mut args = [SimArg::output(&mut out)];
    let msg = launch_err(&k, 1, 32, &mut args, Schedule::Forward);
    assert!(
        msg.contains("af_ldmatrix_x4 reads uninitialised shared memory"),
        "{msg}"
    );
}

/// The shared-window address forms (`af_smem_addr`, `af_ldmatrix_x4_at`, `af_cp_async_16_at`)
/// read and write what the pointer forms do, and an address past the block's shared memory is
/// a launch error naming the operation, not a wild read.
#[test]
fn shared_window_addresses_match_pointers_and_are_bounds_checked() {
    let src = r#"
extern "C" __global__ void ldm_at(const __half* g, unsigned* out, int past) {
  AF_SHARED(__half, s, 512);
  int lane = threadIdx.x;
  for (int i = lane; i < 256; i += 32) s[i] = __float2half_rn(0.25f * (i % 13));
  af_cp_async_16_at(af_smem_addr(&s[256 + 8 * lane]), g + 8 * lane);
  af_cp_async_commit();
  af_cp_async_wait<0>();
  __syncthreads();
  unsigned r[4], q[4];
  const int row = (lane % 16) * 16 + (lane / 16) * 8;
  af_ldmatrix_x4_at(q, af_smem_addr(&s[0]) + 2 * row + past);
  unsigned bad = 0;  // matrix m of lane l: row l / 4 (the address of lane 8 m + l / 4), elements 2 (l % 4), + 1
  for (int m = 0; m < 4; ++m) {
    const int src = 8 * m + lane / 4, e = ((src % 16) * 16 + (src / 16) * 8) + 2 * (lane % 4);
    bad |= q[m] ^ ((unsigned)__half_as_ushort(s[e]) | (unsigned)__half_as_ushort(s[e + 1]) << 16);
  }
  out[lane] = bad;
  af_ldmatrix_x4_trans(r, &s[row]);
  af_ldmatrix_x4_trans_at(q, af_smem_addr(&s[row]));
  out[32 + lane] = (r[0] ^ q[0]) | (r[1] ^ q[1]) | (r[2] ^ q[2]) | (r[3] ^ q[3]);
  for (int e = 0; e < 8; ++e) out[64 + 8 * lane + e] = __half_as_ushort(s[256 + 8 * lane + e]) ^ __half_as_ushort(g[8 * lane + e]);
}
"#;
    let k = build(src, "ldm_at");
    let g: Vec<f16> = (0..256).map(|i| f16::from_f32(i as f32 * 0.5)).collect();
    let mut out = vec![1u32; 64 + 256];
    let mut args = [SimArg::input(&g), SimArg::output(&mut out), SimArg::I32(0)];
    k.launch(1, 32, 0, &mut args, &SimConfig::new(Schedule::Forward))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.iter().all(|&x| x == 0), "{out:?}");
    // 1 MiB further is past any block's shared memory
    let mut args = [
        SimArg::input(&g),
        SimArg::output(&mut out),
        SimArg::I32(1 << 20),
    ];
    let msg = launch_err(&k, 1, 32, &mut args, Schedule::Forward);
    assert!(
        msg.contains("af_ldmatrix_x4") && msg.contains("inside this block's shared memory"),
        "{msg}"
    );
}

#[test]
fn bad_arguments_are_typed_errors() {
    let src = r#"
extern "C" __global__ void args_k(const float* x, __half* y, int n, long long m, float a) {
  if (threadIdx.x == 0 && n > 0 && m > 0) y[0] = __float2half_rn(x[0] * a);
}
"#;
    let k = build(src, "args_k");
    assert_eq!(
        k.param_types(),
        ["const float*", "__half*", "int", "long long", "float"]
    );
    let x = vec![1.0f32];
    let mut y = vec![f16::ZERO];
    let mut y32 = vec![0f32];
    // wrong count
    let err = k
        .launch(1, 1, 0, &mut [SimArg::input(&x)], &SimConfig::default())
        .unwrap_err();
    assert!(
        matches!(&err, SimError::Args { message, .. } if message.contains("takes 5 arguments")),
        "{err}"
    );
    // wrong pointee type
    let mut args = [
        SimArg::input(&x),
        SimArg::output(&mut y32),
        SimArg::I32(1),
        SimArg::I64(1),
        SimArg::F32(1.0),
    ];
    let err = k
        .launch(1, 1, 0, &mut args, &SimConfig::default())
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("argument 1 is `__half*`") && msg.contains("SimArg::output(&mut [half::f16])"),
        "{msg}"
    );
    // wrong scalar type
    let mut args = [
        SimArg::input(&x),
        SimArg::output(&mut y),
        SimArg::I64(1),
        SimArg::I64(1),
        SimArg::F32(1.0),
    ];
    let msg = k
        .launch(1, 1, 0, &mut args, &SimConfig::default())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("argument 2 is `int`") && msg.contains("SimArg::I32"),
        "{msg}"
    );
    // bad config
    let mut args = [
        SimArg::input(&x),
        SimArg::output(&mut y),
        SimArg::I32(1),
        SimArg::I64(1),
        SimArg::F32(3.0),
    ];
    let err = k
        .launch((1, 0), 1, 0, &mut args, &SimConfig::default())
        .unwrap_err();
    assert!(
        matches!(
            err,
            SimError::Config {
                field: "grid.y",
                ..
            }
        ),
        "{err}"
    );
    let err = k
        .launch(1, (32, 33), 0, &mut args, &SimConfig::default())
        .unwrap_err();
    assert!(
        matches!(err, SimError::Config { field: "block", .. }),
        "{err}"
    );
    // and the right arguments work
    k.launch(1, 1, 0, &mut args, &SimConfig::default()).unwrap();
    assert_eq!(y[0].to_f32(), 3.0);
}

#[test]
fn compile_errors_carry_the_compiler_log() {
    let err = SimKernel::build(
        "extern \"C\" __global__ void bad(float* x) { x[0] = undefined_thing; }",
        "bad",
    )
    .unwrap_err();
    match &err {
        SimError::Compile {
            kernel,
            log,
            source_path,
            ..
        } => {
            assert_eq!(kernel, "bad");
            assert!(log.contains("undefined_thing"), "{log}");
            assert!(source_path.exists());
        }
        other => panic!("{other:?}"),
    }
    // raw __shared__ is rejected with a hint
    let err = SimKernel::build(
        "extern \"C\" __global__ void raw(float* x) { __shared__ float s[4]; x[0] = s[0]; }",
        "raw",
    )
    .unwrap_err();
    assert!(err.to_string().contains("use_AF_SHARED"), "{err}");
    // an invalid name never reaches the compiler
    assert!(matches!(
        SimKernel::build("", "1abc"),
        Err(SimError::InvalidName { .. })
    ));
    // a name that is not in the source
    let err = SimKernel::build(
        "extern \"C\" __global__ void there(float* x) {}",
        "not_there",
    )
    .unwrap_err();
    assert!(matches!(err, SimError::Compile { .. }), "{err}");
}

#[test]
fn fiber_stack_overflow_is_an_error_not_a_crash() {
    let src = r#"
__device__ int deep(int n, volatile char* prev) {
  volatile char buf[2048];
  buf[0] = (char)n;
  buf[2047] = prev ? prev[0] : 0;
  return n == 0 ? buf[0] : deep(n - 1, buf) + buf[2047];
}
extern "C" __global__ void overflow(int* out, int depth) {
  out[threadIdx.x] = deep(depth, nullptr);
}
"#;
    let k = build(src, "overflow");
    for workers in [1, 2] {
        let mut out = vec![0i32; 64];
        let mut args = [SimArg::output(&mut out), SimArg::I32(1000)];
        let msg = match k.launch(
            2,
            32,
            0,
            &mut args,
            &SimConfig::default().with_workers(workers),
        ) {
            Err(SimError::Launch { message, .. }) => message,
            other => panic!("{other:?}"),
        };
        assert!(msg.contains("stack overflow"), "{msg}");
        // a shallow call still works afterwards
        let mut args = [SimArg::output(&mut out), SimArg::I32(3)];
        k.launch(
            2,
            32,
            0,
            &mut args,
            &SimConfig::default().with_workers(workers),
        )
        .unwrap();
        assert_eq!(out[0], 3 + 2, "deep(3) sums the depths 3 and 2");
    }
}

#[test]
fn views_of_dynamic_shared_memory_keep_the_checks() {
    let src = r#"
extern "C" __global__ void views(const float* x, float* out, int read_at, int view_len) {
  AF_DYNAMIC_SHARED(float, smem);
  AF_SHARED_VIEW(float, sA, smem, 0, 64);
  AF_SHARED_VIEW(float, sB, smem, 64, view_len);
  int t = threadIdx.x;
  sA[t] = x[t];
  sB[t] = 2.0f * x[t];
  __syncthreads();
  out[t] = sA[t] + sB[read_at + t];
}
"#;
    let k = build(src, "views");
    let x: Vec<f32> = (0..64).map(|i| i as f32).collect();
    let run = |read_at: i32, view_len: i32, smem: usize| {
        let mut out = vec![0f32; 64];
        let mut args = [
            SimArg::input(&x),
            SimArg::output(&mut out),
            SimArg::I32(read_at),
            SimArg::I32(view_len),
        ];
        k.launch(1, 64, smem, &mut args, &SimConfig::default())
            .map(|_| out)
    };
    let out = run(0, 64, 128 * 4).unwrap();
    assert_eq!(out, x.iter().map(|v| 3.0 * v).collect::<Vec<_>>());
    let msg = run(1, 64, 128 * 4).unwrap_err().to_string();
    assert!(msg.contains("index 64 out of bounds for sB[64]"), "{msg}");
    let msg = run(0, 65, 128 * 4).unwrap_err().to_string();
    assert!(
        msg.contains("AF_SHARED_VIEW sB") && msg.contains("do not fit"),
        "{msg}"
    );
    let msg = run(0, 64, 100 * 4).unwrap_err().to_string();
    assert!(msg.contains("do not fit"), "{msg}");
}

#[test]
fn faults_in_kernel_code_are_errors_not_crashes() {
    let src = r#"
extern "C" __global__ void faulty(int* out, int mode, int zero) {
  int t = threadIdx.x;
  if (mode == 1 && t == 5) out[t] = 100 / zero;                      // SIGFPE
  else if (mode == 2 && t == 7) out[t] = *(volatile int*)(16 + zero); // null-page read
  else out[t] = t;
}
"#;
    let k = build(src, "faulty");
    for (mode, want, thread) in [
        (1, "SIGFPE", "thread (5,0,0)"),
        (2, "invalid memory access at 0x10", "thread (7,0,0)"),
    ] {
        for workers in [1, 2] {
            let mut out = vec![0i32; 32];
            let mut args = [SimArg::output(&mut out), SimArg::I32(mode), SimArg::I32(0)];
            let msg = match k.launch(
                2,
                32,
                0,
                &mut args,
                &SimConfig::default().with_workers(workers),
            ) {
                Err(SimError::Launch { message, .. }) => message,
                other => panic!("{other:?}"),
            };
            assert!(msg.contains(want) && msg.contains(thread), "{msg}");
        }
    }
    let mut out = vec![0i32; 32];
    let mut args = [SimArg::output(&mut out), SimArg::I32(0), SimArg::I32(0)];
    k.launch(1, 32, 0, &mut args, &SimConfig::default())
        .unwrap();
    assert_eq!(out, (0..32).collect::<Vec<_>>());
}
