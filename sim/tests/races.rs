//! The shared-memory race checker: a missing barrier is reported under every schedule,
//! correct synchronisation (including warp-level and cp.async pipelines) is not.

use attnforge_sim::{Schedule, SimArg, SimConfig, SimError, SimKernel};
use half::f16;

fn build(src: &str, name: &str) -> SimKernel {
    SimKernel::build(src, name).unwrap_or_else(|e| panic!("{e}"))
}

fn message(r: Result<attnforge_sim::SimCounters, SimError>) -> String {
    match r {
        Err(SimError::Launch { message, .. }) => message,
        other => panic!("expected a launch error, got {other:?}"),
    }
}

const NEIGHBOUR: &str = r#"
extern "C" __global__ void neighbour2(const float* x, float* out, int sync) {
  AF_SHARED(float, s, 64);
  int t = threadIdx.x;
  s[t] = 0.0f;                 // initialised: no poisoned reads below
  __syncthreads();
  s[t] = x[t];
  if (sync) __syncthreads();
  out[t] = s[(t + 1) % 64];
}
"#;

#[test]
fn missing_barrier_is_a_race_under_every_schedule() {
    let k = build(NEIGHBOUR, "neighbour2");
    let x: Vec<f32> = (0..64).map(|i| i as f32).collect();
    for sched in Schedule::standard(17) {
        let mut out = vec![0f32; 64];
        let mut args = [SimArg::input(&x), SimArg::output(&mut out), SimArg::I32(0)];
        let msg = message(k.launch(1, 64, 0, &mut args, &SimConfig::new(sched)));
        assert!(msg.starts_with("race: thread"), "{sched:?}: {msg}");
        assert!(
            msg.contains("s[") && msg.contains("__syncthreads)"),
            "{sched:?}: {msg}"
        );
        // with the barrier it is correct
        let mut args = [SimArg::input(&x), SimArg::output(&mut out), SimArg::I32(1)];
        k.launch(1, 64, 0, &mut args, &SimConfig::new(sched))
            .unwrap();
        let want: Vec<f32> = (0..64).map(|i| ((i + 1) % 64) as f32).collect();
        assert_eq!(out, want);
    }
}

#[test]
fn missing_second_barrier_in_a_tiled_loop_is_a_write_after_read_race() {
    let src = r#"
extern "C" __global__ void tiled(const float* x, float* out, int second_sync) {
  AF_SHARED(float, tile, 128);
  int t = threadIdx.x;
  float acc = 0.0f;
  for (int i = 0; i < 4; i++) {
    tile[t] = x[i * 128 + t];        // load the next tile
    __syncthreads();
    acc += tile[127 - t];            // use it
    if (second_sync) __syncthreads(); // before the next load overwrites it
  }
  out[t] = acc;
}
"#;
    let k = build(src, "tiled");
    let x: Vec<f32> = (0..512).map(|i| (i % 29) as f32).collect();
    let want: Vec<f32> = (0..128)
        .map(|t| (0..4).map(|i| x[i * 128 + 127 - t]).sum())
        .collect();
    for sched in Schedule::standard(5) {
        let mut out = vec![0f32; 128];
        let mut args = [SimArg::input(&x), SimArg::output(&mut out), SimArg::I32(0)];
        let msg = message(k.launch(2, 128, 0, &mut args, &SimConfig::new(sched)));
        // read-after-write or write-after-read, depending on the order
        assert!(
            msg.contains("race: thread") && msg.contains(" tile["),
            "{sched:?}: {msg}"
        );
        let mut args = [SimArg::input(&x), SimArg::output(&mut out), SimArg::I32(1)];
        k.launch(2, 128, 0, &mut args, &SimConfig::new(sched))
            .unwrap();
        assert_eq!(out, want, "{sched:?}");
    }
}

#[test]
fn warp_level_exchange_needs_syncwarp_even_after_a_shuffle() {
    let src = r#"
extern "C" __global__ void warp_xchg(float* out, int use_syncwarp) {
  AF_SHARED(float, s, 32);
  int lane = threadIdx.x;
  s[lane] = (float)lane;
  float v = __shfl_xor_sync(0xffffffffu, (float)lane, 1);   // orders lanes, but not memory
  if (use_syncwarp) __syncwarp();
  out[lane] = s[lane ^ 1] + v;
}
"#;
    let k = build(src, "warp_xchg");
    for sched in Schedule::standard(2) {
        let mut out = vec![0f32; 32];
        let mut args = [SimArg::output(&mut out), SimArg::I32(0)];
        let msg = message(k.launch(1, 32, 0, &mut args, &SimConfig::new(sched)));
        assert!(
            msg.contains("since the last __syncthreads and __syncwarp (missing __syncwarp"),
            "{sched:?}: {msg}"
        );
        let mut args = [SimArg::output(&mut out), SimArg::I32(1)];
        k.launch(1, 32, 0, &mut args, &SimConfig::new(sched))
            .unwrap();
        assert_eq!(
            out,
            (0..32).map(|l| (2 * (l ^ 1)) as f32).collect::<Vec<_>>()
        );
    }
}

const PIPELINE: &str = r#"
// Double-buffered cp.async pipeline: 6 tiles of 32 rows x 8 halves, one row per thread.
extern "C" __global__ void pipeline(const __half* src, float* out, int ntiles, int skip_release) {
  AF_SHARED(__half, buf, 2 * 32 * 8);
  int t = threadIdx.x;
  float acc = 0.0f;
  af_cp_async_16(&buf[t * 8], src + t * 8);
  af_cp_async_commit();
  for (int i = 0; i < ntiles; i++) {
    if (i + 1 < ntiles) af_cp_async_16(&buf[((i + 1) % 2) * 256 + t * 8], src + (i + 1) * 256 + t * 8);
    af_cp_async_commit();
    af_cp_async_wait<1>();          // tile i has landed (for this thread)
    __syncthreads();                // ... and for every thread
    int r = (t + 1) % 32;           // read a row another thread copied
    for (int c = 0; c < 8; c++) acc += __half2float(buf[(i % 2) * 256 + r * 8 + c]);
    if (!skip_release) __syncthreads();  // stage i%2 is free to be refilled
  }
  out[t] = acc;
}
"#;

#[test]
fn double_buffered_cp_async_pipeline_is_clean_and_its_missing_release_barrier_is_caught() {
    let k = build(PIPELINE, "pipeline");
    let n = 6;
    let src: Vec<f16> = (0..n * 256)
        .map(|i| f16::from_f32((i % 37) as f32 - 18.0))
        .collect();
    let want: Vec<f32> = (0..32)
        .map(|t| {
            let r = (t + 1) % 32;
            (0..n)
                .map(|i| {
                    (0..8)
                        .map(|c| src[i * 256 + r * 8 + c].to_f32())
                        .sum::<f32>()
                })
                .sum()
        })
        .collect();
    for sched in Schedule::standard(6) {
        let mut out = vec![0f32; 32];
        let mut args = [
            SimArg::input(&src),
            SimArg::output(&mut out),
            SimArg::I32(n as i32),
            SimArg::I32(0),
        ];
        k.launch(3, 32, 0, &mut args, &SimConfig::new(sched))
            .unwrap();
        assert_eq!(out, want, "{sched:?}");
        let mut args = [
            SimArg::input(&src),
            SimArg::output(&mut out),
            SimArg::I32(n as i32),
            SimArg::I32(1),
        ];
        let msg = message(k.launch(3, 32, 0, &mut args, &SimConfig::new(sched)));
        // the refill overwrites a stage another thread still reads (a race at the cp.async),
        // or a slow thread reads the re-poisoned stage (an uninitialised read)
        assert!(
            msg.contains("race: thread")
                && msg.contains("overwrites the af_cp_async_16 destination")
                || msg.contains("read of uninitialised shared memory buf["),
            "{sched:?}: {msg}"
        );
    }
}
