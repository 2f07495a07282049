//! A damaged precompiled shim header (truncated in place) in the build cache is rebuilt
//! instead of failing every later build. Its own test binary: it points
//! `ATTNFORGE_SIM_CACHE` at a private folder for the whole process.

use attnforge_sim::{SimArg, SimConfig, SimKernel};

const SRC: &str = "extern \"C\" __global__ void add_two(int* x) { x[threadIdx.x] += 2; }\n";

fn run(k: &SimKernel) -> Vec<i32> {
    let mut x: Vec<i32> = (0..32).collect();
    k.launch(
        1,
        32,
        0,
        &mut [SimArg::output(&mut x)],
        &SimConfig::default(),
    )
    .unwrap();
    x
}

#[test]
fn truncated_precompiled_header_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    std::env::set_var("ATTNFORGE_SIM_CACHE", dir.path());
    let first = SimKernel::build(SRC, "add_two").unwrap();
    let want: Vec<i32> = (2..34).collect();
    assert_eq!(run(&first), want);
    let gch = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path().join("afsim.hpp.gch"))
        .find(|p| p.is_file())
        .expect("precompiled header built");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&gch)
        .unwrap()
        .set_len(5000)
        .unwrap();
    let k = SimKernel::build(&format!("{SRC}// another source\n"), "add_two")
        .unwrap_or_else(|e| panic!("{e}"));
    let why = k.cache_repair().expect("repair reported");
    assert!(why.contains("precompiled shim header"), "{why}");
    assert_eq!(run(&k), want);
    assert!(std::fs::metadata(&gch).unwrap().len() > 5000, "rebuilt");
}
