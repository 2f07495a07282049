//! Hopper emulation (wgmma, mbarrier, TMA / bulk copies, setmaxnreg) against the PTX ISA,
//! and the misuse the simulator must report. Kernels: `tests/cuda/hopper.cu`.

use attnforge_sim::tma::{TensorMapSpec, TmaDtype, TmaSwizzle};
use attnforge_sim::{Schedule, SimArg, SimConfig, SimCounters, SimError, SimKernel};
use half::{bf16, f16};

const SRC: &str = include_str!("cuda/hopper.cu");

fn build(name: &str) -> SimKernel {
    SimKernel::build(SRC, name).unwrap_or_else(|e| panic!("{e}"))
}

fn message(r: Result<SimCounters, SimError>) -> String {
    match r {
        Err(SimError::Launch { message, .. }) => message,
        other => panic!("expected a launch error, got {other:?}"),
    }
}

fn assert_all(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "`{p}` missing from: {msg}");
    }
}

/// Small values whose products and sums are exact in f32.
fn val(i: usize, salt: usize) -> f32 {
    ((i * 7 + salt * 13) % 17) as f32 / 8.0 - 1.0
}

struct Wg {
    name: &'static str,
    n: usize,
    bf: bool,
}

/// The shapes `wg_any` instantiates, by its `which` argument.
const WGS: [&str; 13] = [
    "wg_f16_ss_8",
    "wg_f16_ss_24",
    "wg_f16_ss_64",
    "wg_f16_ss_128",
    "wg_f16_ss_256",
    "wg_bf16_ss_64",
    "wg_bf16_ss_256",
    "wg_f16_rs_64",
    "wg_f16_rs_128",
    "wg_bf16_rs_256",
    "wg_f16_ss_bmn_64",
    "wg_bf16_rs_bmn_128",
    "wg_f16_rs_bmn_256",
];

#[allow(clippy::too_many_arguments)]
fn run_wgmma(
    wg: &Wg,
    swz: i32,
    layout: i32,
    kstep: usize,
    nsteps: usize,
    scale_d: bool,
    mode: i32,
    sched: Schedule,
) -> Result<(Vec<f32>, Vec<f32>), String> {
    let kt = if swz == 0 { 16 } else { swz as usize / 2 };
    let n = wg.n;
    let bits = |x: f32| {
        if wg.bf {
            bf16::from_f32(x).to_bits()
        } else {
            f16::from_f32(x).to_bits()
        }
    };
    let af: Vec<f32> = (0..64 * kt).map(|i| val(i, 1)).collect();
    let bf: Vec<f32> = (0..n * kt).map(|i| val(i, 2)).collect();
    let a: Vec<u16> = af.iter().map(|&x| bits(x)).collect();
    let b: Vec<u16> = bf.iter().map(|&x| bits(x)).collect();
    let c: Vec<f32> = (0..64 * n).map(|i| val(i, 3) * 4.0).collect();
    // D = C + A[:, ks] * B[:, ks]^T over the instruction's k range, f32 in k order
    let mut want = vec![0f32; 64 * n];
    for r in 0..64 {
        for col in 0..n {
            let mut acc = if scale_d { c[r * n + col] } else { 0.0 };
            for k in 16 * kstep..16 * (kstep + nsteps) {
                acc += af[r * kt + k] * bf[col * kt + k];
            }
            want[r * n + col] = acc;
        }
    }
    let which = WGS
        .iter()
        .position(|&w| w == wg.name)
        .expect("a shape wg_any has") as i32;
    let k = build("wg_any");
    let mut d = vec![f32::NAN; 64 * n];
    let mut args = [
        SimArg::input(&a),
        SimArg::input(&b),
        SimArg::input(&c),
        SimArg::output(&mut d),
        SimArg::I32(swz),
        SimArg::I32(layout),
        SimArg::I32(kstep as i32),
        SimArg::I32(nsteps as i32),
        SimArg::I32(scale_d as i32),
        SimArg::I32(mode),
        SimArg::I32(which),
    ];
    match k.launch(1, 128, 49152, &mut args, &SimConfig::new(sched)) {
        Ok(_) => Ok((d, want)),
        Err(e) => Err(message(Err(e))),
    }
}

const SS_F16: [Wg; 5] = [
    Wg {
        name: "wg_f16_ss_8",
        n: 8,
        bf: false,
    },
    Wg {
        name: "wg_f16_ss_24",
        n: 24,
        bf: false,
    },
    Wg {
        name: "wg_f16_ss_64",
        n: 64,
        bf: false,
    },
    Wg {
        name: "wg_f16_ss_128",
        n: 128,
        bf: false,
    },
    Wg {
        name: "wg_f16_ss_256",
        n: 256,
        bf: false,
    },
];

#[test]
fn wgmma_from_shared_memory_matches_a_matmul_for_every_n_and_swizzle() {
    for wg in &SS_F16 {
        for (swz, layout) in [(0, 0), (0, 1), (32, 0), (64, 0), (128, 0)] {
            let (d, want) = run_wgmma(wg, swz, layout, 0, 1, true, 0, Schedule::Forward).unwrap();
            assert_eq!(d, want, "{} swizzle {swz} layout {layout}", wg.name);
        }
    }
}

#[test]
fn wgmma_k_steps_inside_a_swizzled_row_chain_without_fences() {
    // 128B rows hold 64 elements: k-steps 1..3 chained in one group (in flight together)
    let wg = &SS_F16[2];
    for (kstep, nsteps) in [(1, 1), (3, 1), (0, 4), (1, 2)] {
        let (d, want) = run_wgmma(wg, 128, 0, kstep, nsteps, true, 0, Schedule::Random(3)).unwrap();
        assert_eq!(d, want, "kstep {kstep} nsteps {nsteps}");
    }
    let (d, want) = run_wgmma(wg, 64, 0, 1, 1, false, 0, Schedule::Reverse).unwrap();
    assert_eq!(d, want, "64B swizzle, k-step 1, scale-d 0");
}

#[test]
fn wgmma_bf16_and_register_a_operands() {
    let cases = [
        Wg {
            name: "wg_bf16_ss_64",
            n: 64,
            bf: true,
        },
        Wg {
            name: "wg_bf16_ss_256",
            n: 256,
            bf: true,
        },
        Wg {
            name: "wg_f16_rs_64",
            n: 64,
            bf: false,
        },
        Wg {
            name: "wg_f16_rs_128",
            n: 128,
            bf: false,
        },
        Wg {
            name: "wg_bf16_rs_256",
            n: 256,
            bf: true,
        },
    ];
    for wg in &cases {
        for (swz, kstep, nsteps) in [(0, 0, 1), (128, 0, 2), (32, 0, 1)] {
            for scale_d in [true, false] {
                let (d, want) =
                    run_wgmma(wg, swz, 0, kstep, nsteps, scale_d, 0, Schedule::Forward).unwrap();
                assert_eq!(d, want, "{} swizzle {swz} scale_d {scale_d}", wg.name);
            }
        }
    }
}

#[test]
fn wgmma_with_an_mn_major_b_operand() {
    // P V with V row-major: B (k x n) stored with n contiguous (imm-trans-b)
    let cases = [
        Wg {
            name: "wg_f16_ss_bmn_64",
            n: 64,
            bf: false,
        },
        Wg {
            name: "wg_bf16_rs_bmn_128",
            n: 128,
            bf: true,
        },
        Wg {
            name: "wg_f16_rs_bmn_256",
            n: 256,
            bf: false,
        },
    ];
    for wg in &cases {
        for (swz, kstep, nsteps) in [(0, 0, 1), (32, 0, 1), (64, 1, 1), (128, 0, 4), (128, 2, 1)] {
            let (d, want) =
                run_wgmma(wg, swz, 0, kstep, nsteps, true, 0, Schedule::Forward).unwrap();
            assert_eq!(
                d, want,
                "{} swizzle {swz} kstep {kstep} nsteps {nsteps}",
                wg.name
            );
        }
    }
}

#[test]
fn wgmma_misuse_is_reported() {
    let wg = &SS_F16[2];
    for sched in Schedule::standard(11) {
        assert_all(
            &run_wgmma(wg, 128, 0, 0, 1, true, 1, sched).unwrap_err(),
            &[
                "uses accumulator registers this thread accessed after its last af_wgmma_fence",
                "wgmma.fence.sync.aligned is required",
                "warpgroup 0",
            ],
        );
        assert_all(
            &run_wgmma(wg, 128, 0, 0, 1, true, 2, sched).unwrap_err(),
            &[
                "(warpgroup 0) accesses accumulator register d[0] of the wgmma.mma_async issued at",
                "before af_wgmma_wait_group retired it",
            ],
        );
        assert_all(
            &run_wgmma(wg, 128, 0, 0, 1, true, 3, sched).unwrap_err(),
            &[
                "accesses accumulator register d[0]",
                "before af_wgmma_wait_group",
            ],
        );
    }
    assert_all(
        &run_wgmma(wg, 0, 0, 0, 1, true, 4, Schedule::Forward).unwrap_err(),
        &[
            "af_wgmma: descriptor A differs between threads 0 and 5 of warpgroup 0",
            "warpgroup-uniform",
        ],
    );
}

/// The expected shared image of a TMA box: box elements in row-major order (dimension 0
/// innermost), out-of-bounds elements 0, 16-byte chunks of each `swz`-byte row permuted by
/// the ISA's swizzle pattern.
fn tma_image(
    src: &[u16],
    dims: &[usize],
    strides: &[usize],
    boxd: &[usize],
    at: &[i64],
    swz: usize,
) -> Vec<u16> {
    let total: usize = boxd.iter().product();
    let mut lin = vec![0u16; total];
    for (e, slot) in lin.iter_mut().enumerate() {
        let mut rem = e;
        let mut off = 0usize;
        let mut inside = true;
        for d in 0..dims.len() {
            let c = at[d] + (rem % boxd[d]) as i64;
            rem /= boxd[d];
            if c < 0 || c as usize >= dims[d] {
                inside = false;
            } else {
                off += c as usize * strides[d];
            }
        }
        if inside {
            *slot = src[off];
        }
    }
    if swz == 0 {
        return lin;
    }
    let mut out = vec![0u16; total];
    for (i, &v) in lin.iter().enumerate() {
        let byte = 2 * i;
        let (row, chunk, within) = (byte / swz, (byte % swz) / 16, byte % 16);
        let pat = match swz {
            128 => row % 8,
            64 => (row / 2) % 4,
            _ => (row / 4) % 2,
        };
        out[(row * swz + (chunk ^ pat) * 16 + within) / 2] = v;
    }
    out
}

struct Tma {
    dims: Vec<usize>,
    row_stride: Vec<usize>, // element strides of dims 1..
    boxd: Vec<usize>,
    swz: TmaSwizzle,
}

fn run_tma(
    t: &Tma,
    at: &[i64],
    mode: i32,
    sched: Schedule,
) -> Result<(Vec<u16>, Vec<u16>), String> {
    let rank = t.dims.len();
    let mut strides = vec![1usize];
    strides.extend(&t.row_stride);
    let len = (0..rank)
        .map(|d| (t.dims[d] - 1) * strides[d])
        .sum::<usize>()
        + 1;
    let src: Vec<u16> = (0..len)
        .map(|i| (i as u16).wrapping_mul(3).wrapping_add(1))
        .collect();
    let spec = TensorMapSpec {
        dtype: TmaDtype::U16,
        global_dims: t.dims.iter().map(|&d| d as u64).collect(),
        global_strides_bytes: t.row_stride.iter().map(|&s| 2 * s as u64).collect(),
        box_dims: t.boxd.iter().map(|&b| b as u32).collect(),
        swizzle: t.swz,
    };
    let map = spec.encode_for_sim(1, 0).unwrap();
    let want = tma_image(&src, &t.dims, &strides, &t.boxd, at, t.swz.bytes() as usize);
    let box_bytes = spec.box_bytes() as i32;
    let mut out = vec![0xFFFFu16; want.len()];
    let mut c = [0i32; 5];
    for (d, &x) in at.iter().enumerate() {
        c[d] = x as i32;
    }
    let k = build("tma_box");
    let mut args = [
        SimArg::input(&map[..]),
        SimArg::input(&src),
        SimArg::output(&mut out),
        SimArg::I32(rank as i32),
        SimArg::I32(c[0]),
        SimArg::I32(c[1]),
        SimArg::I32(c[2]),
        SimArg::I32(c[3]),
        SimArg::I32(c[4]),
        SimArg::I32(box_bytes),
        SimArg::I32(mode),
    ];
    match k.launch(1, 64, 65536, &mut args, &SimConfig::new(sched)) {
        Ok(_) => Ok((out, want)),
        Err(e) => Err(message(Err(e))),
    }
}

fn tma_2d() -> Tma {
    // 100 rows of 64 elements (128 bytes), box 64 x 32, 128-byte swizzle
    Tma {
        dims: vec![64, 100],
        row_stride: vec![64],
        boxd: vec![64, 32],
        swz: TmaSwizzle::B128,
    }
}

#[test]
fn tma_boxes_with_out_of_bounds_edges_and_swizzle() {
    let cases: Vec<(Tma, Vec<Vec<i64>>)> = vec![
        (
            tma_2d(),
            vec![vec![0, 0], vec![0, 80], vec![0, -5], vec![-8, 50]],
        ),
        (
            Tma {
                dims: vec![32, 40],
                row_stride: vec![40],
                boxd: vec![32, 16],
                swz: TmaSwizzle::B64,
            },
            vec![vec![0, 3], vec![8, 30]],
        ),
        (
            Tma {
                dims: vec![16, 10, 7],
                row_stride: vec![32, 320],
                boxd: vec![16, 4, 3],
                swz: TmaSwizzle::B32,
            },
            vec![vec![0, 8, 5], vec![0, 0, 0]],
        ),
        (
            Tma {
                dims: vec![1000],
                row_stride: vec![],
                boxd: vec![256],
                swz: TmaSwizzle::None,
            },
            vec![vec![900], vec![-40]],
        ),
        (
            Tma {
                dims: vec![16, 3, 3],
                row_stride: vec![24, 80],
                boxd: vec![8, 2, 2],
                swz: TmaSwizzle::None,
            },
            vec![vec![12, 2, -1]],
        ),
        (
            Tma {
                dims: vec![8, 3, 3, 3, 3],
                row_stride: vec![8, 24, 72, 216],
                boxd: vec![8, 2, 2, 2, 2],
                swz: TmaSwizzle::None,
            },
            vec![vec![0, 2, -1, 1, 2]],
        ),
        (
            Tma {
                dims: vec![8, 5, 5, 5],
                row_stride: vec![8, 40, 200],
                boxd: vec![8, 4, 2, 3],
                swz: TmaSwizzle::None,
            },
            vec![vec![0, 3, 4, -1]],
        ),
    ];
    for (t, ats) in &cases {
        for at in ats {
            for sched in [Schedule::Forward, Schedule::Random(7)] {
                let (out, want) = run_tma(t, at, 0, sched).unwrap();
                assert_eq!(out, want, "dims {:?} box {:?} at {at:?}", t.dims, t.boxd);
            }
        }
    }
}

#[test]
fn tma_misuse_is_reported() {
    let t = tma_2d();
    for sched in Schedule::standard(5) {
        assert_all(
            &run_tma(&t, &[0, 0], 1, sched).unwrap_err(),
            &[
                "deadlock in block (0,0,0)",
                "threads 0-63 wait on the mbarrier at shared byte offset",
                "for the phase with parity 0",
                "0 of 1 arrivals and 16 transaction bytes",
                "no bulk copy in flight",
            ],
        );
        assert_all(
            &run_tma(&t, &[0, 0], 2, sched).unwrap_err(),
            &[
                "deadlock",
                "threads 0-63 wait on the mbarrier",
                "1 of 1 arrivals and 0 transaction bytes",
            ],
        );
    }
    // reading the destination before the wait: the copy has not landed
    let msg = run_tma(&t, &[0, 0], 3, Schedule::Forward).unwrap_err();
    assert_all(&msg, &["uninitialised", "thread (1,0,0)"]);
    // a map of another rank, a map not from the encoder
    let k = build("tma_box");
    let spec = TensorMapSpec {
        dtype: TmaDtype::U16,
        global_dims: vec![64, 100],
        global_strides_bytes: vec![128],
        box_dims: vec![64, 32],
        swizzle: TmaSwizzle::B128,
    };
    let good = spec.encode_for_sim(1, 0).unwrap();
    let garbage = [7u8; 200];
    let src = vec![0u16; 6400];
    for (map, rank, want) in [
        (&good, 3, "af_tma_load_3d with a tensor map of rank 2; use af_tma_load_2d"),
        (
            &garbage,
            2,
            "af_tma_load_2d: the tensor map is not one written by attnforge_sim::tma::TensorMapSpec",
        ),
    ] {
        let mut out = vec![0u16; 2048];
        let mut args = [
            SimArg::input(&map[..]),
            SimArg::input(&src),
            SimArg::output(&mut out),
            SimArg::I32(rank),
            SimArg::I32(0),
            SimArg::I32(0),
            SimArg::I32(0),
            SimArg::I32(0),
            SimArg::I32(0),
            SimArg::I32(4096),
            SimArg::I32(0),
        ];
        let msg = message(k.launch(1, 64, 65536, &mut args, &SimConfig::default()));
        assert_all(&msg, &[want, "thread (0,0,0)"]);
    }
}

#[test]
fn bulk_copies_complete_the_transaction_count() {
    let k = build("bulk2");
    let src: Vec<f32> = (0..128).map(|i| i as f32 * 0.5).collect();
    for sched in Schedule::standard(2) {
        let mut out = vec![0f32; 128];
        let mut args = [
            SimArg::input(&src),
            SimArg::output(&mut out),
            SimArg::I32(0),
        ];
        k.launch(1, 32, 0, &mut args, &SimConfig::new(sched))
            .unwrap();
        assert_eq!(out, src);
        let mut args = [
            SimArg::input(&src),
            SimArg::output(&mut out),
            SimArg::I32(1),
        ];
        assert_all(
            &message(k.launch(1, 32, 0, &mut args, &SimConfig::new(sched))),
            &["deadlock", "0 of 1 arrivals and 16 transaction bytes"],
        );
        let mut args = [
            SimArg::input(&src),
            SimArg::output(&mut out),
            SimArg::I32(2),
        ];
        assert_all(
            &message(k.launch(1, 32, 0, &mut args, &SimConfig::new(sched))),
            &[
                // the first thread to use it: thread 0 arriving or another one waiting
                "on the mbarrier at shared byte offset 0 before af_mbarrier_init initialised it",
            ],
        );
    }
}

#[test]
fn mbarrier_phases_flip_and_test_wait_polls() {
    let k = build("mbar_phases");
    for sched in Schedule::standard(9) {
        let mut out = vec![-1i32; 195];
        let mut args = [SimArg::output(&mut out), SimArg::I32(0)];
        k.launch(1, 64, 0, &mut args, &SimConfig::new(sched))
            .unwrap();
        for t in 0..64 {
            for p in 0..3 {
                assert_eq!(
                    out[3 * t + p],
                    100 * p as i32 + ((t + 1) % 64) as i32,
                    "t {t} p {p}"
                );
            }
        }
        for p in 0..3 {
            assert!(
                out[192 + p] >= 1,
                "thread 0 polled an incomplete phase {p} at least once"
            );
        }
        // thread 0 never arrives: its poll loop can never succeed
        let mut args = [SimArg::output(&mut out), SimArg::I32(1)];
        assert_all(
            &message(k.launch(1, 64, 0, &mut args, &SimConfig::new(sched))),
            &[
                "deadlock",
                "threads 0-63 wait on the mbarrier",
                "1 of 64 arrivals",
            ],
        );
    }
}

#[test]
fn setmaxnreg_rules_are_checked() {
    let k = build("regs");
    let run = |mode: i32| {
        let mut out = vec![-1i32; 256];
        let r = k.launch(
            1,
            256,
            0,
            &mut [SimArg::output(&mut out), SimArg::I32(mode)],
            &SimConfig::default(),
        );
        r.map(|_| out).map_err(|e| message(Err(e)))
    };
    let out = run(0).unwrap();
    assert!(out.iter().enumerate().all(|(t, &w)| w == (t / 128) as i32));
    assert_all(
        &run(1).unwrap_err(),
        &["requests 32 registers, thread 0 40", "warpgroup-uniform"],
    );
    assert_all(
        &run(2).unwrap_err(),
        &["af_setmaxnreg_inc<100>", "multiple of 8 in 24..256"],
    );
    assert_all(
        &run(3).unwrap_err(),
        &["af_setmaxnreg_inc<264>", "multiple of 8 in 24..256"],
    );
    assert_all(
        &run(4).unwrap_err(),
        &[
            "setmaxnreg.inc) 32 in warpgroup 0 which holds 40 registers",
            ".inc must not lower",
        ],
    );
    assert_all(
        &run(5).unwrap_err(),
        &[
            "deadlock",
            "threads 0-31 of warpgroup 0 wait in af_setmaxnreg_dec",
            "threads 32-127 never arrive",
        ],
    );
}

const GPU_SRC: &str = include_str!("cuda/hopper_gpu.cu");

/// NVRTC options for `sm_90a`: `sm_90` with the arch-specific target named last (NVRTC takes
/// the last `--gpu-architecture`), which does not depend on how the runtime spells sm_90a.
fn sm_90a_options() -> attnforge_runtime::CompileOptions {
    let mut o = attnforge_runtime::CompileOptions::new(attnforge_runtime::Arch::Sm90);
    o.extra.push("--gpu-architecture=sm_90a".into());
    o
}

/// Q, K: `rows` x 64 f16; maps with 64 x 64 boxes and the 128-byte swizzle.
fn qk_inputs(rows: usize) -> (Vec<f32>, Vec<f32>, [u8; 200], [u8; 200]) {
    let q: Vec<f32> = (0..rows * 64).map(|i| val(i, 5)).collect();
    let k: Vec<f32> = (0..rows * 64).map(|i| val(i, 6)).collect();
    let spec = TensorMapSpec {
        dtype: TmaDtype::F16,
        global_dims: vec![64, rows as u64],
        global_strides_bytes: vec![128],
        box_dims: vec![64, 64],
        swizzle: TmaSwizzle::B128,
    };
    let mq = spec.encode_for_sim(2, 0).unwrap();
    let mk = spec.encode_for_sim(3, 0).unwrap();
    (q, k, mq, mk)
}

#[test]
fn tma_producer_and_wgmma_consumer_warpgroups_compute_q_k_transposed() {
    let rows = 100;
    let (qf, kf, mq, mk) = qk_inputs(rows);
    let q: Vec<u16> = qf.iter().map(|&x| f16::from_f32(x).to_bits()).collect();
    let k: Vec<u16> = kf.iter().map(|&x| f16::from_f32(x).to_bits()).collect();
    let kernel = SimKernel::build(GPU_SRC, "hopper_qk").unwrap_or_else(|e| panic!("{e}"));
    // the K tile at row 64 runs past the 100 rows: zeros
    for (q_row, k_row) in [(0usize, 0usize), (36, 64)] {
        let mut want = vec![0f32; 64 * 64];
        for r in 0..64 {
            for c in 0..64 {
                let mut acc = 0f32;
                for x in 0..64 {
                    let kv = if k_row + c < rows {
                        kf[(k_row + c) * 64 + x]
                    } else {
                        0.0
                    };
                    acc += qf[(q_row + r) * 64 + x] * kv;
                }
                want[r * 64 + c] = acc;
            }
        }
        for sched in Schedule::standard(21) {
            let mut s = vec![f32::NAN; 64 * 64];
            let mut args = [
                SimArg::input(&mq[..]),
                SimArg::input(&mk[..]),
                SimArg::input(&q),
                SimArg::input(&k),
                SimArg::output(&mut s),
                SimArg::I32(q_row as i32),
                SimArg::I32(k_row as i32),
            ];
            kernel
                .launch(1, 256, 16400, &mut args, &SimConfig::new(sched))
                .unwrap();
            assert_eq!(s, want, "q_row {q_row} k_row {k_row} {sched:?}");
        }
    }
}

/// The CUDA side of the helpers (codegen/cuda/af_hopper.cuh) compiles with NVRTC for sm_90a
/// without warnings, ptxas accepts it, and the SASS has HGMMA and TMA loads.
#[test]
fn hopper_header_compiles_for_sm_90a_with_hgmma_in_the_sass() {
    use attnforge_runtime::compile_with;
    let src = format!(
        "{}\n{}\n{}",
        include_str!("../../codegen/cuda/af_prelude.cuh"),
        include_str!("../../codegen/cuda/af_hopper.cuh"),
        GPU_SRC
    );
    let compiled = compile_with(&src, "hopper_qk", &sm_90a_options())
        .unwrap_or_else(|e| panic!("NVRTC/ptxas rejected the Hopper helpers: {e}"));
    assert!(
        !compiled.log.to_lowercase().contains("warning"),
        "warnings: {}",
        compiled.log
    );
    eprintln!("NVRTC/ptxas log:\n{}", compiled.log);
    let cubin = compiled.cubin.expect("sm_90a gives a cubin (ptxas ran)");
    let sass = attnforge_runtime::sass(&cubin).unwrap();
    assert!(sass.contains("HGMMA.64x64x16.F32"), "no HGMMA in:\n{sass}");
    assert!(sass.contains("UTMALDG"), "no TMA load in:\n{sass}");
    assert!(
        !compiled.log.contains("serialized"),
        "ptxas serialized the wgmma: {}",
        compiled.log
    );
}

/// Every other helper of af_hopper.cuh (mbarrier forms, bulk and 1-5d tensor copies,
/// setmaxnreg, fence.proxy.async) is accepted by ptxas for sm_90a.
#[test]
fn every_other_hopper_helper_assembles_for_sm_90a() {
    use attnforge_runtime::compile_with;
    let src = format!(
        "{}\n{}\n{}",
        include_str!("../../codegen/cuda/af_prelude.cuh"),
        include_str!("../../codegen/cuda/af_hopper.cuh"),
        GPU_SRC
    );
    let compiled = compile_with(&src, "hopper_all_helpers", &sm_90a_options())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !compiled.log.to_lowercase().contains("warning"),
        "{}",
        compiled.log
    );
    let sass = attnforge_runtime::sass(&compiled.cubin.expect("cubin")).unwrap();
    for op in [
        "UBLKCP",
        "UTMALDG.1D",
        "UTMALDG.2D",
        "UTMALDG.3D",
        "UTMALDG.4D",
        "UTMALDG.5D",
        "USETMAXREG",
    ] {
        assert!(sass.contains(op), "no {op} in:\n{sass}");
    }
}

/// Every wgmma specialization of af_hopper.cuh (each N, f16/bf16, A from shared memory or
/// registers) is accepted by ptxas for sm_90a and becomes an HGMMA of that shape.
#[test]
fn every_wgmma_specialization_assembles_for_sm_90a() {
    use attnforge_runtime::compile_with;
    let ns = [8, 16, 24, 32, 48, 64, 96, 128, 192, 256];
    let mut body = String::new();
    for (i, n) in ns.iter().enumerate() {
        for (j, v) in ["f16_ss", "bf16_ss", "f16_rs", "bf16_rs"]
            .iter()
            .enumerate()
        {
            let call = if v.ends_with("ss") {
                format!("af_wgmma_m64k16_{v}<{n}>(acc, da, db, 1)")
            } else {
                format!("af_wgmma_m64k16_{v}<{n}>(acc, a, db, 1)")
            };
            body += &format!(
                "  if (sel == {}) {{ af_wgmma_acc<{n}> acc; for (int i = 0; i < {h}; i++) acc[i] = 0.f; \
                 af_wgmma_fence(); {call}; af_wgmma_commit_group(); af_wgmma_wait_group<0>(); \
                 for (int i = 0; i < {h}; i++) out[i * 128 + threadIdx.x] = acc[i]; }}\n",
                8 * i + j,
                h = n / 2
            );
        }
    }
    let src = format!(
        "{}\n{}\nextern \"C\" __global__ void all_wgmma(float* out, int sel, unsigned long long da, \
         unsigned long long db, unsigned a0) {{\n  unsigned a[4] = {{a0, a0 + 1, a0 + 2, a0 + 3}};\n{body}}}\n",
        include_str!("../../codegen/cuda/af_prelude.cuh"),
        include_str!("../../codegen/cuda/af_hopper.cuh"),
    );
    let compiled =
        compile_with(&src, "all_wgmma", &sm_90a_options()).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !compiled.log.to_lowercase().contains("warning"),
        "{}",
        compiled.log
    );
    let sass = attnforge_runtime::sass(&compiled.cubin.expect("cubin")).unwrap();
    for n in ns {
        assert!(
            sass.contains(&format!("HGMMA.64x{n}x16.F32")),
            "no HGMMA.64x{n}x16 in the SASS"
        );
    }
}
