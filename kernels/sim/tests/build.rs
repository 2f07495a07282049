//! The build cache: hits, keys, and parallel builds of the same kernel.

use attnforge_sim::{SimArg, SimConfig, SimKernel};

fn unique_source(tag: &str) -> String {
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "// {tag} {nonce}\nextern \"C\" __global__ void add_one(int* x) {{ x[threadIdx.x] += 1; }}\n"
    )
}

fn run(k: &SimKernel) -> Vec<i32> {
    let mut x: Vec<i32> = (0..32).collect();
    let mut args = [SimArg::output(&mut x)];
    k.launch(1, 32, 0, &mut args, &SimConfig::default())
        .unwrap();
    x
}

#[test]
fn second_build_is_a_cache_hit_and_sources_are_keyed() {
    let src = unique_source("cache");
    let a = SimKernel::build(&src, "add_one").unwrap();
    assert!(!a.was_cached());
    let b = SimKernel::build(&src, "add_one").unwrap();
    assert!(b.was_cached());
    assert_eq!(a.so_path(), b.so_path());
    let c = SimKernel::build(&format!("{src}\n"), "add_one").unwrap();
    assert_ne!(
        a.so_path(),
        c.so_path(),
        "a different source is a different cache entry"
    );
    assert!(a.so_path().starts_with(attnforge_sim::cache_dir()));
    let want: Vec<i32> = (1..33).collect();
    assert_eq!(run(&a), want);
    assert_eq!(run(&b), want);
}

#[test]
fn parallel_builds_of_one_kernel_all_succeed() {
    let src = unique_source("parallel");
    let paths: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|_| s.spawn(|| SimKernel::build(&src, "add_one").unwrap()))
            .collect();
        hs.into_iter()
            .map(|h| {
                let k = h.join().unwrap();
                assert_eq!(run(&k), (1..33).collect::<Vec<i32>>());
                k.so_path().to_path_buf()
            })
            .collect()
    });
    assert!(paths.windows(2).all(|w| w[0] == w[1]));
    // no temporary files left behind
    let dir = attnforge_sim::cache_dir();
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp") && n.contains(&format!("tmp{}-", std::process::id())))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn other_optimisation_levels_build_and_run() {
    let src = r#"
extern "C" __global__ void opt_levels(const float* x, float* out) {
  AF_SHARED(float, s, 64);
  int t = threadIdx.x;
  s[t] = x[t];
  __syncthreads();
  float v = s[63 - t];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  out[t] = v;
}
"#;
    let x: Vec<f32> = (0..64).map(|i| i as f32).collect();
    for opt_level in [0u8, 2] {
        let opts = attnforge_sim::BuildOptions {
            opt_level,
            ..Default::default()
        };
        let k = SimKernel::build_with(src, "opt_levels", &opts).unwrap();
        let mut out = vec![0f32; 64];
        let mut args = [SimArg::input(&x), SimArg::output(&mut out)];
        k.launch(
            1,
            64,
            0,
            &mut args,
            &SimConfig::new(attnforge_sim::Schedule::Random(1)),
        )
        .unwrap();
        // warp 0 reads s[63..32], warp 1 s[31..0]
        let w0: f32 = (32..64).map(|i| i as f32).sum();
        let w1: f32 = (0..32).map(|i| i as f32).sum();
        let want: Vec<f32> = (0..64).map(|t| if t < 32 { w0 } else { w1 }).collect();
        assert_eq!(out, want, "-O{opt_level}");
    }
}
