//! Global-memory bounds: a load or store outside a pointer argument's buffer, or a
//! misaligned vector access, is a launch error naming the argument, the offset and the
//! thread. Kernels: `tests/cuda/global_bounds.cu`.

use attnforge_sim::{Schedule, SimArg, SimConfig, SimError, SimKernel};

const SRC: &str = include_str!("cuda/global_bounds.cu");

fn build(name: &str) -> SimKernel {
    SimKernel::build(SRC, name).unwrap_or_else(|e| panic!("{e}"))
}

fn message(r: Result<attnforge_sim::SimCounters, SimError>) -> String {
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

/// `gb_raw` with `n` floats under `sched`: the error message, or the output.
fn raw(n: usize, mode: i32, sched: Schedule) -> Result<Vec<f32>, String> {
    let k = build("gb_raw");
    let src: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let mut dst = vec![0f32; n];
    let mut args = [
        SimArg::input(&src),
        SimArg::output(&mut dst),
        SimArg::I32(n as i32),
        SimArg::I32(mode),
    ];
    let r = k.launch(
        n.div_ceil(32) as u32,
        32,
        0,
        &mut args,
        &SimConfig::new(sched),
    );
    match r {
        Ok(_) => Ok(dst),
        Err(e) => Err(message(Err(e))),
    }
}

#[test]
fn correct_raw_accesses_pass_under_every_schedule() {
    for n in [1, 33, 100, 1024] {
        for sched in Schedule::standard(3) {
            let out = raw(n, 0, sched).unwrap();
            assert_eq!(out, (0..n).map(|i| i as f32).collect::<Vec<_>>());
        }
    }
}

#[test]
fn raw_read_one_element_past_the_end_is_an_error() {
    // 100 floats: not a page multiple, the end is flush against the guard region
    for sched in [Schedule::Forward, Schedule::Random(5)] {
        let msg = raw(100, 1, sched).unwrap_err();
        assert_all(
            &msg,
            &[
                "out-of-bounds global read",
                "byte offset 400 (element 100) of argument 0 `src` (const float*, 100 elements = 400 bytes), past its end",
                "block (3,0,0) thread (3,0,0)",
            ],
        );
    }
}

#[test]
fn raw_read_one_element_before_the_start_is_an_error() {
    // under Reverse the start is flush against the guard region
    let msg = raw(100, 2, Schedule::Reverse).unwrap_err();
    assert_all(
        &msg,
        &[
            "out-of-bounds global read",
            "byte offset -4 (element -1) of argument 0 `src`",
            "before its start",
            "block (0,0,0) thread (0,0,0)",
        ],
    );
    // a page-multiple buffer has no slack at either end: caught under every schedule
    for sched in Schedule::standard(9) {
        let msg = raw(1024, 2, sched).unwrap_err();
        assert_all(&msg, &["byte offset -4 (element -1) of argument 0 `src`"]);
    }
}

#[test]
fn raw_writes_out_of_bounds_are_errors() {
    for sched in Schedule::standard(4) {
        let msg = raw(100, 3, sched).unwrap_err();
        assert_all(
            &msg,
            &[
                "out-of-bounds global write",
                "byte offset 4400 (element 1100) of argument 1 `dst` (float*, 100 elements = 400 bytes), past its end",
                "thread (3,0,0)",
            ],
        );
    }
    // one element before the start: a fault where the start is flush (Reverse), else a
    // write into the poisoned page slack found after the launch
    let msg = raw(100, 4, Schedule::Reverse).unwrap_err();
    assert_all(
        &msg,
        &[
            "out-of-bounds global write",
            "byte offset -4 (element -1) of argument 1 `dst`",
            "thread (1,0,0)",
        ],
    );
    let msg = raw(100, 4, Schedule::Forward).unwrap_err();
    assert_all(
        &msg,
        &["write before the start of argument 1 `dst` (100 elements = 400 bytes): byte offset -4 (element -1)"],
    );
    // one element past the end: a fault, or a slack write under Reverse
    let msg = raw(100, 5, Schedule::Forward).unwrap_err();
    assert_all(
        &msg,
        &[
            "out-of-bounds global write",
            "byte offset 400 (element 100) of argument 1 `dst`",
            "thread (3,0,0)",
        ],
    );
    let msg = raw(100, 5, Schedule::Reverse).unwrap_err();
    assert_all(
        &msg,
        &["write past the end of argument 1 `dst` (100 elements = 400 bytes): byte offset 400 (element 100)"],
    );
}

fn run_async(mode: i32, sched: Schedule) -> Result<Vec<f32>, String> {
    let k = build("gb_async");
    let src: Vec<f32> = (0..128).map(|i| i as f32).collect();
    let mut dst = vec![0f32; 128];
    let mut args = [
        SimArg::input(&src),
        SimArg::output(&mut dst),
        SimArg::I32(mode),
    ];
    match k.launch(1, 32, 0, &mut args, &SimConfig::new(sched)) {
        Ok(_) => Ok(dst),
        Err(e) => Err(message(Err(e))),
    }
}

#[test]
fn cp_async_out_of_bounds_and_misaligned_sources_are_errors() {
    for sched in Schedule::standard(8) {
        assert_eq!(
            run_async(0, sched).unwrap(),
            (0..128).map(|i| i as f32).collect::<Vec<_>>()
        );
        assert_all(
            &run_async(1, sched).unwrap_err(),
            &[
                "out-of-bounds global access: af_cp_async_16 reads 16 bytes at byte offset 512 (element 128) of argument 0 `src` (const float*, 128 elements = 512 bytes), past its end",
                "block (0,0,0) thread (31,0,0)",
            ],
        );
        assert_all(
            &run_async(2, sched).unwrap_err(),
            &[
                "misaligned global access: af_cp_async_16 reads 16 bytes at byte offset 8 (element 2) of argument 0 `src`",
                "needs 16-byte alignment",
                "thread (0,0,0)",
            ],
        );
        assert_all(
            &run_async(3, sched).unwrap_err(),
            &[
                "af_cp_async_16 reads 16 bytes at byte offset -16 (element -4) of argument 0 `src`",
                "before its start",
                "thread (5,0,0)",
            ],
        );
    }
}

#[test]
fn packed_stores_out_of_bounds_and_misaligned_are_errors() {
    let k = build("gb_store");
    let run = |mode: i32| {
        let mut dst = vec![0u16; 64];
        let r = k.launch(
            1,
            32,
            0,
            &mut [SimArg::output(&mut dst), SimArg::I32(mode)],
            &SimConfig::default(),
        );
        r.map(|_| dst).map_err(|e| message(Err(e)))
    };
    let out = run(0).unwrap();
    assert_eq!(out[2 * 7], 0x3c07);
    assert_eq!(out[2 * 7 + 1], 0x3c00);
    assert_all(
        &run(1).unwrap_err(),
        &[
            "out-of-bounds global access: af_st_global_b32 writes 4 bytes at byte offset 128 (element 64) of argument 0 `dst` (unsigned short*, 64 elements = 128 bytes), past its end",
            "thread (31,0,0)",
        ],
    );
    assert_all(
        &run(2).unwrap_err(),
        &[
            "misaligned global access: af_st_global_b32 writes 4 bytes at byte offset 10 (element 5) of argument 0 `dst`",
            "needs 4-byte alignment",
            "thread (2,0,0)",
        ],
    );
}

#[test]
fn a_null_pointer_argument_is_named() {
    let k = build("gb_raw");
    let mut dst = vec![0f32; 4];
    let mut args = [
        SimArg::Null,
        SimArg::output(&mut dst),
        SimArg::I32(4),
        SimArg::I32(0),
    ];
    let msg = message(k.launch(1, 32, 0, &mut args, &SimConfig::default()));
    assert_all(
        &msg,
        &[
            "out-of-bounds global read",
            "argument 0 `src` (const float*, a null pointer)",
        ],
    );
}
