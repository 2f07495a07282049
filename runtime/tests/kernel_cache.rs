//! The persistent kernel cache against the real NVRTC (`cargo xtask setup`): hits are
//! byte-identical to the compile that filled them, keys separate options and sources, damaged
//! entries are recompiled and repaired, `ATTNFORGE_KERNEL_CACHE=off` writes nothing, an
//! unwritable folder still compiles, and concurrent compiles of one key (threads and
//! processes) leave one valid entry. Each test has its own temporary folder; the environment
//! variables are only set on child processes (this test binary, re-run on one ignored test).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Barrier;

use attnforge_runtime::{
    build_with, build_with_cache, compile_with, Arch, CompileOptions, Compiler, KernelBuild,
    KernelCache, KernelSource, KERNEL_CACHE_ENV,
};
use common::{ok, SMALL};

fn src(opts: CompileOptions) -> KernelSource<'static> {
    KernelSource {
        source: SMALL,
        name: "small_k",
        options: opts,
    }
}

fn build(cache: &KernelCache, k: &KernelSource<'_>) -> KernelBuild {
    ok(build_with_cache(ok(Compiler::global()), cache, k))
}

/// Every file below `dir`, recursively (entries, temporary files, anything).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Two independent compiles of one key: everything but ptxas's own timing line agrees.
fn assert_equivalent_build(a: &KernelBuild, b: &KernelBuild) {
    let untimed_log = |b: &KernelBuild| -> Vec<String> {
        b.compiled
            .log
            .lines()
            .filter(|l| !l.contains("Compile time"))
            .map(str::to_owned)
            .collect()
    };
    let untimed_report = |b: &KernelBuild| {
        let mut r = b.report.clone();
        for k in &mut r.kernels {
            k.ptxas_time_ms = None;
        }
        r
    };
    assert_eq!(a.compiled.ptx, b.compiled.ptx, "PTX differs");
    assert_eq!(a.compiled.cubin, b.compiled.cubin, "CUBIN differs");
    assert_eq!(untimed_log(a), untimed_log(b), "log differs");
    assert_eq!(untimed_report(a), untimed_report(b), "report differs");
}

/// A hit against the compile that stored it: byte-identical, timing line included.
fn assert_same_build(a: &KernelBuild, b: &KernelBuild) {
    assert_eq!(a.compiled.ptx, b.compiled.ptx, "PTX differs");
    assert_eq!(a.compiled.cubin, b.compiled.cubin, "CUBIN differs");
    assert_eq!(a.compiled.log, b.compiled.log, "log differs");
    assert_eq!(a.compiled.options, b.compiled.options);
    assert_eq!(a.compiled.nvrtc_version, b.compiled.nvrtc_version);
    assert_eq!(a.resources, b.resources, "parsed ptxas resources differ");
    assert_eq!(a.report, b.report, "parsed ptxas report differs");
}

#[test]
fn miss_then_hit_is_byte_identical() {
    let tmp = ok(tempfile::tempdir());
    let cache = KernelCache::at(tmp.path().join("kc"));
    let k = src(CompileOptions::new(Arch::Sm90));
    let first = build(&cache, &k);
    assert!(!first.compiled.from_cache, "empty cache must miss");
    assert!(first.compiled.compile_time > std::time::Duration::ZERO);
    assert_eq!(
        cache.entries().len(),
        1,
        "one entry after the first compile"
    );
    let second = build(&cache, &k);
    assert!(second.compiled.from_cache, "second build must hit");
    assert_eq!(second.compiled.compile_time, std::time::Duration::ZERO);
    assert!(second.compiled.cache_lookup > std::time::Duration::ZERO);
    assert_same_build(&first, &second);
    assert!(second
        .compiled
        .cubin
        .as_deref()
        .unwrap()
        .starts_with(b"\x7fELF"));
    assert!(
        second.resources.shared_bytes >= 1024,
        "{:?}",
        second.resources
    );
    // The uncached path still compiles, and agrees.
    let fresh = ok(build_with(ok(Compiler::global()), &k));
    assert!(!fresh.compiled.from_cache);
    assert_eq!(fresh.compiled.cache_lookup, std::time::Duration::ZERO);
    assert_equivalent_build(&fresh, &second);
    assert_eq!(cache.entries().len(), 1);
    println!(
        "kernel cache: compile {:?}, hit lookup {:?}",
        first.compiled.compile_time, second.compiled.cache_lookup
    );
}

#[test]
fn a_different_option_source_name_or_arch_misses() {
    let tmp = ok(tempfile::tempdir());
    let cache = KernelCache::at(tmp.path());
    let base = src(CompileOptions::new(Arch::Sm80));
    assert!(!build(&cache, &base).compiled.from_cache);
    assert!(build(&cache, &base).compiled.from_cache);

    let mut extra = base.clone();
    extra.options.extra.push("-DAF_UNUSED_FLAG=1".to_owned());
    let mut arch = base.clone();
    arch.options.arch = Arch::Sm90;
    let edited = format!("{SMALL}// an edit\n");
    let mut source = base.clone();
    source.source = &edited;
    let renamed_src = SMALL.replace("small_k", "small_k2");
    let renamed = KernelSource {
        source: &renamed_src,
        name: "small_k2",
        options: base.options.clone(),
    };
    for (what, k) in [
        ("extra option", &extra),
        ("arch", &arch),
        ("source", &source),
        ("name", &renamed),
    ] {
        let b = build(&cache, k);
        assert!(!b.compiled.from_cache, "{what}: must miss");
        assert!(build(&cache, k).compiled.from_cache, "{what}: then hit");
    }
    assert_eq!(cache.entries().len(), 5);
    let c = ok(Compiler::global());
    let keys: std::collections::HashSet<_> = [&base, &extra, &arch, &source, &renamed]
        .iter()
        .map(|k| c.cache_key(k.source, k.name, &k.options))
        .collect();
    assert_eq!(keys.len(), 5);
}

#[test]
fn a_corrupted_entry_is_recompiled_and_repaired() {
    let tmp = ok(tempfile::tempdir());
    let cache = KernelCache::at(tmp.path());
    let k = src(CompileOptions::new(Arch::Sm90));
    let good = build(&cache, &k);
    let key = ok(Compiler::global()).cache_key(k.source, k.name, &k.options);
    let path = cache.entry_path(&key).unwrap();
    assert_eq!(cache.entries(), vec![path.clone()]);
    let original = ok(std::fs::read(&path));
    type Damage = fn(&mut Vec<u8>);
    let damages: [(&str, Damage); 6] = [
        ("truncated to half", |b| b.truncate(b.len() / 2)),
        ("last byte cut", |b| {
            b.pop();
        }),
        ("empty", |b| b.clear()),
        ("byte flipped in the PTX", |b| {
            let i = b.len() / 3;
            b[i] ^= 0x01;
        }),
        ("byte flipped in the header", |b| b[10] ^= 0x80),
        ("bytes appended", |b| b.extend_from_slice(b"junk")),
    ];
    for (what, damage) in damages {
        let mut bytes = original.clone();
        damage(&mut bytes);
        ok(std::fs::write(&path, &bytes));
        assert!(
            cache.load(&key).is_none(),
            "{what}: damaged entry was trusted"
        );
        let b = build(&cache, &k);
        assert!(!b.compiled.from_cache, "{what}: must recompile");
        assert_equivalent_build(&good, &b);
        assert!(cache.load(&key).is_some(), "{what}: entry not repaired");
        let hit = build(&cache, &k);
        assert!(hit.compiled.from_cache, "{what}: repaired entry must hit");
        assert_same_build(&b, &hit);
    }
    // A file of another key under this key's name is not trusted either.
    let other = KernelSource {
        source: "extern \"C\" __global__ void small_k(float* o) { o[0] = 1.0f; }",
        ..k.clone()
    };
    let other_b = build(&cache, &other);
    let other_key = ok(Compiler::global()).cache_key(other.source, other.name, &other.options);
    ok(std::fs::copy(cache.entry_path(&other_key).unwrap(), &path));
    let b = build(&cache, &k);
    assert!(!b.compiled.from_cache, "a foreign entry must not hit");
    assert_equivalent_build(&good, &b);
    assert_ne!(other_b.compiled.ptx, b.compiled.ptx);
    let leftovers: Vec<_> = files_under(tmp.path())
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[test]
fn an_unwritable_folder_still_compiles() {
    let tmp = ok(tempfile::tempdir());
    // A cache folder below a regular file can never be created, even by root.
    let file = tmp.path().join("a-file");
    ok(std::fs::write(&file, b"not a folder"));
    let cache = KernelCache::at(file.join("kc"));
    let k = src(CompileOptions::new(Arch::Sm80));
    for _ in 0..2 {
        let b = build(&cache, &k);
        assert!(!b.compiled.from_cache);
        assert!(b.compiled.cubin.is_some());
    }
    assert_eq!(files_under(tmp.path()), vec![file]);

    // A read-only folder (only enforced for non-root users).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let ro = tmp.path().join("ro");
        ok(std::fs::create_dir(&ro));
        ok(std::fs::set_permissions(
            &ro,
            std::fs::Permissions::from_mode(0o555),
        ));
        let enforced = std::fs::write(ro.join("probe"), b"x").is_err();
        let _ = std::fs::remove_file(ro.join("probe"));
        let cache = KernelCache::at(&ro);
        let b = build(&cache, &k);
        assert!(!b.compiled.from_cache);
        if enforced {
            assert!(files_under(&ro).is_empty());
            assert!(!build(&cache, &k).compiled.from_cache);
        }
        ok(std::fs::set_permissions(
            &ro,
            std::fs::Permissions::from_mode(0o755),
        ));
    }
}

#[test]
fn two_threads_compiling_one_key_leave_one_valid_entry() {
    let tmp = ok(tempfile::tempdir());
    let cache = KernelCache::at(tmp.path());
    let compiler = ok(Compiler::global());
    let k = src(CompileOptions::new(Arch::Sm90));
    let barrier = Barrier::new(2);
    let builds: Vec<KernelBuild> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    ok(build_with_cache(compiler, &cache, &k))
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_equivalent_build(&builds[0], &builds[1]);
    let key = compiler.cache_key(k.source, k.name, &k.options);
    assert_eq!(
        files_under(tmp.path()),
        vec![cache.entry_path(&key).unwrap()]
    );
    let hit = build(&cache, &k);
    assert!(hit.compiled.from_cache);
    assert!(
        builds.iter().any(|b| b.compiled.log == hit.compiled.log),
        "the entry is one of the two compiles"
    );
    assert_equivalent_build(&builds[0], &hit);
}

/// Name of the ignored test the parent tests re-run in a child process.
const CHILD: &str = "child_compile_through_the_global_cache";
/// Set on the child process only: the source variant it compiles.
const CHILD_TAG: &str = "AF_KCACHE_TEST_CHILD";

/// Runs in a child process (see [`run_child`]): compiles through the process-wide cache,
/// chosen by the child's environment, and prints what happened.
#[test]
#[ignore = "run by the other tests in a child process"]
fn child_compile_through_the_global_cache() {
    let Some(tag) = std::env::var_os(CHILD_TAG) else {
        return;
    };
    let source = format!("{SMALL}// {}\n", tag.to_string_lossy());
    let c = ok(attnforge_runtime::compile_cached(
        &source,
        "small_k",
        Arch::Sm80,
    ));
    println!(
        "KCACHE enabled={} from_cache={}",
        KernelCache::global().is_enabled(),
        c.from_cache
    );
}

/// Starts this test binary on [`CHILD`] with exactly the cache variables in `env`.
fn spawn_child(tag: &str, env: &[(&str, &Path)]) -> std::process::Child {
    let mut cmd = Command::new(ok(std::env::current_exe()));
    cmd.args([
        "--ignored",
        "--exact",
        CHILD,
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_TAG, tag)
    .env_remove(KERNEL_CACHE_ENV)
    .env_remove("XDG_CACHE_HOME")
    .env_remove("HOME")
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    ok(cmd.spawn())
}

/// `(enabled, from_cache)` reported by a finished child.
fn child_result(child: std::process::Child) -> (bool, bool) {
    let out = ok(child.wait_with_output());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text
        .lines()
        .find(|l| l.contains("KCACHE "))
        .unwrap_or_else(|| panic!("child printed no result: {text}"));
    (
        line.contains("enabled=true"),
        line.contains("from_cache=true"),
    )
}

fn run_child(tag: &str, env: &[(&str, &Path)]) -> (bool, bool) {
    child_result(spawn_child(tag, env))
}

fn tag(test: &str) -> String {
    format!("{test} {}", std::process::id())
}

#[test]
fn off_never_writes() {
    let tmp = ok(tempfile::tempdir());
    let (xdg, home) = (tmp.path().join("xdg"), tmp.path().join("home"));
    ok(std::fs::create_dir_all(&xdg));
    ok(std::fs::create_dir_all(&home));
    let off = Path::new("off");
    let env = [
        (KERNEL_CACHE_ENV, off),
        ("XDG_CACHE_HOME", xdg.as_path()),
        ("HOME", home.as_path()),
    ];
    let t = tag("off");
    assert_eq!(run_child(&t, &env), (false, false));
    assert_eq!(run_child(&t, &env), (false, false), "off must never hit");
    assert!(
        files_under(tmp.path()).is_empty(),
        "{:?}",
        files_under(tmp.path())
    );

    // Without the variable, the same environment caches under $XDG_CACHE_HOME.
    let env = [("XDG_CACHE_HOME", xdg.as_path()), ("HOME", home.as_path())];
    assert_eq!(run_child(&t, &env), (true, false));
    assert_eq!(
        run_child(&t, &env),
        (true, true),
        "a second process must hit"
    );
    let stored = KernelCache::at(xdg.join("attnforge/kernels")).entries();
    assert_eq!(stored.len(), 1, "{:?}", files_under(tmp.path()));
    assert!(files_under(&home).is_empty());

    // In process: a disabled cache compiles and stores nothing.
    let c = ok(ok(Compiler::global()).compile_cached(
        &KernelCache::disabled(),
        SMALL,
        "small_k",
        &CompileOptions::new(Arch::Sm80),
    ));
    assert!(!c.from_cache);
    assert_eq!(c.cache_lookup, std::time::Duration::ZERO);
}

#[test]
fn two_processes_compiling_one_key_leave_one_valid_entry() {
    let tmp = ok(tempfile::tempdir());
    let dir = tmp.path().join("kc");
    let env = [(KERNEL_CACHE_ENV, dir.as_path())];
    let t = tag("two processes");
    let children: Vec<_> = (0..2).map(|_| spawn_child(&t, &env)).collect();
    for c in children {
        assert!(child_result(c).0, "cache enabled in the child");
    }
    let cache = KernelCache::at(&dir);
    assert_eq!(files_under(&dir), cache.entries(), "stray files");
    assert_eq!(cache.entries().len(), 1);
    assert_eq!(run_child(&t, &env), (true, true), "the entry is valid");
    // The parent computes the same key and finds a valid entry.
    let source = format!("{SMALL}// {t}\n");
    let c = ok(ok(Compiler::global()).compile_cached(
        &cache,
        &source,
        "small_k",
        &CompileOptions::new(Arch::Sm80),
    ));
    assert!(c.from_cache);
    let fresh = ok(compile_with(
        &source,
        "small_k",
        &CompileOptions::new(Arch::Sm80),
    ));
    assert_eq!(c.ptx, fresh.ptx);
    assert_eq!(c.cubin, fresh.cubin);
}
