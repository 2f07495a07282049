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
