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
    // no temporary files of this kernel left behind (other tests of this process build
    // other `add_one` sources meanwhile)
    let stem = paths[0].file_stem().unwrap().to_string_lossy().into_owned();
    let dir = attnforge_sim::cache_dir();
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&stem) && n.contains(&format!("tmp{}-", std::process::id())))
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

/// Give `so` a fresh inode (copy + rename), so that damaging it in place below does not
/// touch the copy this process already mapped (that would be the test's own SIGBUS).
fn rehome(so: &std::path::Path) {
    let tmp = so.with_extension("rehome");
    std::fs::copy(so, &tmp).unwrap();
    std::fs::rename(&tmp, so).unwrap();
}

#[test]
fn damaged_cache_entries_are_rebuilt_and_launch() {
    let src = unique_source("damaged");
    let first = SimKernel::build(&src, "add_one").unwrap();
    assert!(first.cache_repair().is_none());
    let so = first.so_path().to_path_buf();
    let sum = std::path::PathBuf::from(format!("{}.sha256", so.display()));
    assert!(sum.is_file(), "checksum written at build time");
    let want: Vec<i32> = (1..33).collect();
    let damages: [(&str, &dyn Fn(), &str); 4] = [
        (
            "truncated in place (truncate -s 5000)",
            &|| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&so)
                    .unwrap()
                    .set_len(5000)
                    .unwrap()
            },
            "truncated",
        ),
        (
            "garbage of the same size",
            &|| {
                let len = std::fs::metadata(&so).unwrap().len() as usize;
                std::fs::write(&so, vec![0x5au8; len]).unwrap()
            },
            "differ from the checksum",
        ),
        (
            "checksum file missing",
            &|| std::fs::remove_file(&sum).unwrap(),
            "no checksum file",
        ),
        (
            "checksum file garbage",
            &|| std::fs::write(&sum, "garbage").unwrap(),
            "malformed",
        ),
    ];
    for (what, damage, says) in damages {
        rehome(&so);
        damage();
        let k = SimKernel::build(&src, "add_one").unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(!k.was_cached(), "{what}: must be rebuilt");
        let why = k
            .cache_repair()
            .unwrap_or_else(|| panic!("{what}: no note"));
        assert!(why.contains(says), "{what}: {why}");
        assert_eq!(k.so_path(), so.as_path());
        assert_eq!(run(&k), want, "{what}");
        // the repaired entry is a verified hit again
        let again = SimKernel::build(&src, "add_one").unwrap();
        assert!(
            again.was_cached() && again.cache_repair().is_none(),
            "{what}"
        );
        assert_eq!(run(&again), want, "{what}");
    }
}
