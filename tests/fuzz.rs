//! Fuzzing of the three parsers of untrusted input: spec files (TOML + user functions), the
//! user-function DSL (parser, checker, translator and host evaluator) and `.npy` files.
//!
//! Each target gets inputs from three generators, in turn: arbitrary bytes, mutations of the
//! corpus (`examples/specs/`, `fuzz/corpus/<target>/`) and structured documents built from
//! the grammar (random spec tables, random well-typed functions, random `.npy` headers). Every
//! input must finish without a panic, within [`PER_INPUT_LIMIT`] (a hang), and without any
//! allocation above [`ALLOC_LIMIT`] (the global allocator below aborts the process on one:
//! the input is in `target/fuzz/<target>.current`). Inputs run on a thread with a 2 MiB stack.
//!
//! CI runs a short seeded pass (a fixed number of inputs per target, 2.5-4 s each in a debug
//! build on a 2-core machine).
//! `ATTNFORGE_FUZZ_SECS=600` runs each target for that many seconds instead, and
//! `ATTNFORGE_FUZZ_SEED=<n>` changes the seed (docs/results.md, "Fuzzing"). A failing input is
//! saved to `target/fuzz/<target>-<kind>-<hash>`: copy it to `fuzz/corpus/<target>/` with the
//! fix, so that every later pass replays it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use attnforge::codegen::spec::DType;
use attnforge::npy::{read_i32, read_tensor};
use attnforge::specfile::{AnySpecFile, DocSource};
use attnforge_dsl::eval::{compile_eval, Value};
use attnforge_dsl::{parse_mask_fn, parse_score_fn, FnKind, ParamKind};

/// No single allocation may exceed this: inputs are at most a few KiB, so a larger request
/// means a size taken from the input was trusted (a header claiming a huge shape).
const ALLOC_LIMIT: usize = 256 << 20;
/// Longest time one input may take (debug build) before it counts as a hang.
const PER_INPUT_LIMIT: Duration = Duration::from_secs(20);

struct LimitAlloc;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

fn check_size(size: usize) {
    LARGEST.fetch_max(size, Ordering::Relaxed);
    if size > ALLOC_LIMIT {
        // Panicking is not allowed in an allocator: report and abort (the current input is
        // on disk, see the module docs).
        let msg = b"fuzz: allocation above ALLOC_LIMIT requested; input in target/fuzz/*.current\n";
        // SAFETY: writing a static buffer to stderr.
        unsafe { libc_write(2, msg.as_ptr(), msg.len()) };
        std::process::abort();
    }
}

extern "C" {
    #[link_name = "write"]
    fn libc_write(fd: i32, buf: *const u8, n: usize) -> isize;
}

// SAFETY: forwards to the system allocator after a size check.
unsafe impl GlobalAlloc for LimitAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        check_size(layout.size());
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        check_size(layout.size());
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check_size(new_size);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: LimitAlloc = LimitAlloc;

/// A small deterministic generator (splitmix64): the pass is reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn files_in(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| Some(e.ok()?.path()))
                .filter(|p| p.extension().is_some_and(|e| e == ext))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Byte-level mutations; `dict` holds tokens worth inserting (syntax, extreme numbers).
fn mutate(rng: &mut Rng, input: &[u8], corpus: &[Vec<u8>], dict: &[&str]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(6) {
        let at = if v.is_empty() {
            0
        } else {
            rng.below(v.len() + 1)
        };
        match rng.below(8) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next() as u8;
            }
            2 if !v.is_empty() => {
                let end = (at + 1 + rng.below(16)).min(v.len());
                v.drain(at.min(end)..end);
            }
            3 if !v.is_empty() => {
                // Repeat a range (deep nesting, long sums, long lists).
                let a = rng.below(v.len());
                let b = (a + 1 + rng.below(8)).min(v.len());
                let chunk = v[a..b].to_vec();
                let most = if rng.chance(8) { 3000 } else { 8 };
                let times = 1 + rng.below(most);
                for _ in 0..times {
                    v.splice(at..at, chunk.iter().copied());
                }
            }
            4 => {
                let other = rng.pick(corpus);
                if !other.is_empty() {
                    let a = rng.below(other.len());
                    let b = (a + 1 + rng.below(64)).min(other.len());
                    v.splice(at..at, other[a..b].iter().copied());
                }
            }
            5 if v.len() > 2 => {
                // Replace a number-looking run with an extreme value.
                let i = rng.below(v.len());
                if let Some(s) = (i..v.len()).find(|&j| v[j].is_ascii_digit()) {
                    let e = (s..v.len())
                        .find(|&j| !v[j].is_ascii_digit())
                        .unwrap_or(v.len());
                    let n = rng.pick(NUMBERS).to_string();
                    v.splice(s..e, n.bytes());
                }
            }
            _ => {
                let t = rng.pick(dict);
                v.splice(at..at, t.bytes());
            }
        }
    }
    if v.len() > 1 << 16 {
        v.truncate(1 << 16);
    }
    v
}

const NUMBERS: &[&str] = &[
    "0",
    "1",
    "2",
    "3",
    "-1",
    "7",
    "16",
    "63",
    "64",
    "65",
    "127",
    "128",
    "255",
    "256",
    "1000",
    "65535",
    "65536",
    "1000000",
    "2147483647",
    "2147483648",
    "-2147483648",
    "4294967295",
    "4294967296",
    "3000000000",
    "9223372036854775807",
    "-9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "340282366920938463463374607431768211456",
    "1e9",
    "3e9",
    "1e38",
    "3.5e38",
    "1e308",
    "-0.0",
    "0.5",
    "nan",
    "inf",
    "-inf",
];

/// What one input did (for the statistics printed at the end of a pass).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Outcome {
    Rejected,
    Accepted,
    /// Accepted, and evaluated (DSL) / ran to the end (spec files).
    Deep,
}

type Target = fn(&[u8], &Path) -> Outcome;

enum Done {
    Finished(Outcome),
    Panicked(String),
}

fn save_failure(name: &str, kind: &str, input: &[u8]) -> PathBuf {
    let mut h = DefaultHasher::new();
    input.hash(&mut h);
    let dir = root().join("target/fuzz");
    let _ = std::fs::create_dir_all(&dir);
    let p = dir.join(format!("{name}-{kind}-{:016x}", h.finish()));
    let _ = std::fs::write(&p, input);
    p
}

/// Runs `target` on the corpus and then on generated inputs, on a worker thread with a
/// 2 MiB stack, with a time limit per input. Panics (with the saved input) on a failure.
fn fuzz(
    name: &str,
    short_pass_inputs: usize,
    target: Target,
    corpus: Vec<Vec<u8>>,
    generate: fn(&mut Rng, &[Vec<u8>]) -> Vec<u8>,
) {
    assert!(!corpus.is_empty(), "{name}: empty corpus");
    let secs: Option<u64> = std::env::var("ATTNFORGE_FUZZ_SECS")
        .ok()
        .map(|s| s.parse().expect("ATTNFORGE_FUZZ_SECS: a number of seconds"));
    let seed: u64 = std::env::var("ATTNFORGE_FUZZ_SEED")
        .ok()
        .map_or(1, |s| s.parse().expect("ATTNFORGE_FUZZ_SEED: an integer"));
    let mut rng = Rng(seed ^ name.bytes().fold(0, |h, b| h * 31 + u64::from(b)));
    let scratch = tempfile::tempdir().expect("scratch dir");
    let scratch_path = scratch.path().to_path_buf();
    let current = root().join(format!("target/fuzz/{name}.current"));
    let _ = std::fs::create_dir_all(current.parent().expect("parent"));

    let (to_worker, inbox) = mpsc::channel::<Vec<u8>>();
    let (reply, from_worker) = mpsc::channel::<Done>();
    let worker = std::thread::Builder::new()
        .name(format!("fuzz-{name}"))
        .stack_size(2 << 20)
        .spawn(move || {
            for input in inbox {
                let r = std::panic::catch_unwind(|| target(&input, &scratch_path));
                // proc-macro2 keeps the text of every parsed source for its span locations,
                // per thread, for the life of the thread: release it (no span outlives an
                // input), or a long pass would grow to gigabytes and run out of span offsets.
                proc_macro2::extra::invalidate_current_thread_spans();
                let done = match r {
                    Ok(o) => Done::Finished(o),
                    Err(p) => Done::Panicked(
                        p.downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_default(),
                    ),
                };
                if reply.send(done).is_err() {
                    return;
                }
            }
        })
        .expect("spawn worker");

    let start = Instant::now();
    let mut counts = std::collections::HashMap::<Outcome, usize>::new();
    let mut slowest = Duration::ZERO;
    let mut n = 0usize;
    let keep_going = |n: usize| match secs {
        Some(s) => start.elapsed() < Duration::from_secs(s) || n < corpus.len(),
        None => n < corpus.len() + short_pass_inputs,
    };
    while keep_going(n) {
        let input = if n < corpus.len() {
            corpus[n].clone()
        } else {
            generate(&mut rng, &corpus)
        };
        n += 1;
        let _ = std::fs::write(&current, &input);
        let t0 = Instant::now();
        to_worker.send(input.clone()).expect("worker alive");
        match from_worker.recv_timeout(PER_INPUT_LIMIT) {
            Ok(Done::Finished(o)) => *counts.entry(o).or_default() += 1,
            Ok(Done::Panicked(msg)) => {
                let p = save_failure(name, "panic", &input);
                panic!(
                    "{name}: input {n} panicked: {msg}\n  input saved to {}",
                    p.display()
                );
            }
            Err(_) => {
                let p = save_failure(name, "hang", &input);
                panic!(
                    "{name}: input {n} took longer than {PER_INPUT_LIMIT:?}\n  input saved to {}",
                    p.display()
                );
            }
        }
        slowest = slowest.max(t0.elapsed());
    }
    drop(to_worker);
    worker.join().expect("worker");
    let _ = std::fs::remove_file(&current);
    println!(
        "fuzz {name}: {n} inputs in {:.1} s (seed {seed}): {} rejected, {} accepted, {} evaluated/ran; \
         slowest input {:.1} ms; largest allocation so far {} KiB; no panic, hang or allocation above {} MiB",
        start.elapsed().as_secs_f64(),
        counts.get(&Outcome::Rejected).copied().unwrap_or(0),
        counts.get(&Outcome::Accepted).copied().unwrap_or(0),
        counts.get(&Outcome::Deep).copied().unwrap_or(0),
        slowest.as_secs_f64() * 1e3,
        LARGEST.load(Ordering::Relaxed) >> 10,
        ALLOC_LIMIT >> 20,
    );
}

fn read_corpus(dirs: &[(&str, &str)]) -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    for (dir, ext) in dirs {
        for p in files_in(&root().join(dir), ext) {
            v.push(std::fs::read(&p).expect("corpus file"));
        }
    }
    v
}

// ---------------------------------------------------------------------------------------
// DSL functions

const DSL_DICT: &[&str] = &[
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    " / 0",
    " % 0",
    " / -1",
    " as usize",
    " as i32",
    " as u32",
    " as i64",
    " as f32",
    " as u64",
    "i32::MIN",
    "i64::MIN",
    "u32::MAX",
    "f32::INFINITY",
    "-",
    "!",
    " && ",
    " || ",
    " << 40",
    " >> 70",
    " + ",
    " * ",
    " == ",
    "if true { 1 } else { 0 }",
    "let x = 1; ",
    "return false; ",
    ".abs()",
    ".min(1)",
    ".powf(0.5)",
    ".ln()",
    "0.0 / 0.0",
    "doc[q as usize]",
    ";",
    ",",
    "'",
    "\"",
    "/*",
    "//",
    "\n",
    "\u{feff}",
    "é",
    "r#\"",
    "loop {}",
    "fn",
    "::",
    "..",
    "?",
];

/// Values of the positions and indices the evaluator is asked about.
const POSITIONS: &[i64] = &[
    0,
    1,
    2,
    5,
    7,
    39,
    63,
    64,
    1000,
    2147483647,
    4294967296,
    -1,
    i64::MAX,
    i64::MIN,
];

fn value_for(rng: &mut Rng, kind: ParamKind) -> Value {
    const INTS: &[i64] = &[
        0,
        1,
        -1,
        2,
        3,
        7,
        64,
        2147483647,
        -2147483648,
        4294967295,
        i64::MAX,
        i64::MIN,
    ];
    const FLOATS: &[f32] = &[
        0.0,
        -0.0,
        1.0,
        -1.5,
        0.5,
        1e38,
        -3.4e38,
        f32::INFINITY,
        f32::NAN,
        1e-45,
    ];
    // A mistyped value now and then: the evaluator must report it, not panic.
    let kind = if rng.chance(20) {
        *rng.pick(&[
            ParamKind::I32,
            ParamKind::F32,
            ParamKind::SliceI32,
            ParamKind::SliceF32,
        ])
    } else {
        kind
    };
    let len = rng.below(6);
    match kind {
        ParamKind::F32 => Value::Float(*rng.pick(FLOATS)),
        ParamKind::SliceF32 => Value::Floats((0..len).map(|_| *rng.pick(FLOATS)).collect()),
        ParamKind::SliceI32 | ParamKind::SliceU32 => {
            Value::Ints((0..len).map(|_| *rng.pick(INTS) as i32).collect())
        }
        _ => Value::Int(*rng.pick(INTS)),
    }
}

/// Parses, translates and (when it compiles) evaluates a function as a mask and as a score.
fn dsl_target(input: &[u8], _: &Path) -> Outcome {
    let src = String::from_utf8_lossy(input);
    let mut rng = Rng(input.len() as u64);
    let mut outcome = Outcome::Rejected;
    for kind in [FnKind::Mask, FnKind::Score] {
        let translated = match kind {
            FnKind::Mask => parse_mask_fn(&src),
            FnKind::Score => parse_score_fn(&src),
        };
        let eval = compile_eval(&src, kind);
        assert_eq!(
            translated.is_ok(),
            eval.is_ok(),
            "the translator and the evaluator disagree on whether the function is valid"
        );
        if let (Ok(def), Ok(f)) = (translated, eval) {
            assert!(
                def.cuda.contains(&def.name),
                "translation without the function"
            );
            outcome = Outcome::Deep;
            for _ in 0..24 {
                let params: Vec<Value> = f
                    .param_kinds()
                    .iter()
                    .map(|&k| value_for(&mut rng, k))
                    .collect();
                let (q, kv) = (*rng.pick(POSITIONS), *rng.pick(POSITIONS));
                let (b, h) = (rng.below(3), rng.below(3));
                // Errors are fine (division by zero, index out of bounds); panics are not.
                let _ = match kind {
                    FnKind::Mask => f.mask(b, h, q, kv, &params).map(|_| ()),
                    FnKind::Score => {
                        let s = *rng.pick(&[0.0, -1.0, 3.5, 1e300, f64::NAN, f64::NEG_INFINITY]);
                        f.score(s, b, h, q, kv, &params).map(|_| ())
                    }
                };
            }
        }
    }
    outcome
}

/// A random expression of integer type `t` (`depth` bounds the recursion).
fn gen_int(rng: &mut Rng, t: &str, vars: &[(String, String)], depth: usize) -> String {
    let same: Vec<&String> = vars
        .iter()
        .filter(|(_, ty)| ty == t)
        .map(|(n, _)| n)
        .collect();
    if depth == 0 || rng.chance(4) {
        return match rng.below(4) {
            0 if !same.is_empty() => (*rng.pick(&same)).clone(),
            1 => format!("{}{t}", rng.pick(&["0", "1", "2", "3", "7", "255", "1000"])),
            2 => format!("{t}::{}", rng.pick(&["MAX", "MIN"])),
            _ => rng.pick(&["0", "1", "2", "5", "31", "64"]).to_string(),
        };
    }
    let d = depth - 1;
    match rng.below(9) {
        0..=2 => {
            let op = rng.pick(&["+", "-", "*", "/", "%", "&", "|", "^", "<<", ">>"]);
            format!(
                "({} {op} {})",
                gen_int(rng, t, vars, d),
                gen_int(rng, t, vars, d)
            )
        }
        3 => {
            let from = *rng.pick(&["i32", "u32", "i64", "u64", "usize", "isize"]);
            format!("({} as {t})", gen_int(rng, from, vars, d))
        }
        4 => format!("({} as {t})", gen_float(rng, vars, d)),
        5 => {
            let arrays: Vec<&String> = vars
                .iter()
                .filter(|(_, ty)| ty == "&[i32]" || ty == "&[u32]")
                .map(|(n, _)| n)
                .collect();
            if arrays.is_empty() {
                format!(
                    "{}.min({})",
                    gen_int(rng, t, vars, d),
                    gen_int(rng, t, vars, d)
                )
            } else {
                format!(
                    "({}[{} as usize] as {t})",
                    rng.pick(&arrays),
                    gen_int(rng, "i64", vars, d)
                )
            }
        }
        6 => format!(
            "(if {} {{ {} }} else {{ {} }})",
            gen_bool(rng, vars, d),
            gen_int(rng, t, vars, d),
            gen_int(rng, t, vars, d)
        ),
        7 if t.starts_with('i') => format!("({}).abs()", gen_int(rng, t, vars, d)),
        _ => format!(
            "{}.max({})",
            gen_int(rng, t, vars, d),
            gen_int(rng, t, vars, d)
        ),
    }
}

fn gen_float(rng: &mut Rng, vars: &[(String, String)], depth: usize) -> String {
    let floats: Vec<&String> = vars
        .iter()
        .filter(|(_, ty)| ty == "f32")
        .map(|(n, _)| n)
        .collect();
    if depth == 0 || rng.chance(4) {
        return match rng.below(3) {
            0 if !floats.is_empty() => (*rng.pick(&floats)).clone(),
            1 => rng
                .pick(&["f32::INFINITY", "f32::MAX", "f32::EPSILON", "(0.0 / 0.0)"])
                .to_string(),
            _ => rng
                .pick(&["0.0", "1.5", "-2.0", "1e30", "0.5f32"])
                .to_string(),
        };
    }
    let d = depth - 1;
    match rng.below(6) {
        0 | 1 => {
            let op = rng.pick(&["+", "-", "*", "/", "%"]);
            format!(
                "({} {op} {})",
                gen_float(rng, vars, d),
                gen_float(rng, vars, d)
            )
        }
        2 => {
            let from = *rng.pick(&["i32", "u32", "i64", "u64"]);
            format!("({} as f32)", gen_int(rng, from, vars, d))
        }
        3 => {
            let f = rng.pick(&["exp", "ln", "sqrt", "tanh", "floor", "abs", "log2", "sin"]);
            format!("({}).{f}()", gen_float(rng, vars, d))
        }
        4 => {
            let arrays: Vec<&String> = vars
                .iter()
                .filter(|(_, ty)| ty == "&[f32]")
                .map(|(n, _)| n)
                .collect();
            if arrays.is_empty() {
                format!(
                    "({}).powf({})",
                    gen_float(rng, vars, d),
                    gen_float(rng, vars, d)
                )
            } else {
                format!(
                    "{}[{} as usize]",
                    rng.pick(&arrays),
                    gen_int(rng, "u32", vars, d)
                )
            }
        }
        _ => format!(
            "(if {} {{ {} }} else {{ {} }})",
            gen_bool(rng, vars, d),
            gen_float(rng, vars, d),
            gen_float(rng, vars, d)
        ),
    }
}

fn gen_bool(rng: &mut Rng, vars: &[(String, String)], depth: usize) -> String {
    if depth == 0 || rng.chance(5) {
        return rng.pick(&["true", "false"]).to_string();
    }
    let d = depth - 1;
    match rng.below(5) {
        0 => {
            let t = *rng.pick(&["i32", "u32", "i64", "u64"]);
            let op = rng.pick(&["==", "!=", "<", "<=", ">", ">="]);
            format!(
                "({} {op} {})",
                gen_int(rng, t, vars, d),
                gen_int(rng, t, vars, d)
            )
        }
        1 => format!(
            "({} < {})",
            gen_float(rng, vars, d),
            gen_float(rng, vars, d)
        ),
        2 => format!("({} && {})", gen_bool(rng, vars, d), gen_bool(rng, vars, d)),
        3 => format!("({} || {})", gen_bool(rng, vars, d), gen_bool(rng, vars, d)),
        _ => format!("!{}", gen_bool(rng, vars, d)),
    }
}

/// A random, mostly well-typed mask or score function of the subset.
fn gen_function(rng: &mut Rng) -> String {
    let score = rng.chance(2);
    gen_function_of(rng, score, &ALL_PARAM_TYPES).0
}

const ALL_PARAM_TYPES: [&str; 9] = [
    "u32", "i32", "i64", "u64", "f32", "bool", "&[u32]", "&[i32]", "&[f32]",
];

/// A random function of the given kind with user parameters of `types`; returns the text
/// and the user parameters (name, type).
fn gen_function_of(rng: &mut Rng, score: bool, types: &[&str]) -> (String, Vec<(String, String)>) {
    let mut sig = Vec::new();
    let mut vars: Vec<(String, String)> = Vec::new();
    if score {
        sig.push("score: f32".to_string());
        vars.push(("score".into(), "f32".into()));
    }
    for (name, p) in [("b", 3), ("h", 3)] {
        if rng.chance(p) {
            let t = *rng.pick(&["u32", "i32", "i64"]);
            sig.push(format!("{name}: {t}"));
            vars.push((name.into(), t.into()));
        }
    }
    for name in ["q", "kv"] {
        let t = *rng.pick(&["u32", "i32", "i64"]);
        sig.push(format!("{name}: {t}"));
        vars.push((name.into(), t.into()));
    }
    let mut user = Vec::new();
    for i in 0..rng.below(4) {
        let t = *rng.pick(types);
        sig.push(format!("p{i}: {t}"));
        vars.push((format!("p{i}"), t.into()));
        user.push((format!("p{i}"), t.to_string()));
    }
    let depth = 1 + rng.below(5);
    let mut body = String::new();
    for i in 0..rng.below(4) {
        let t = *rng.pick(&["i32", "u32", "i64", "f32"]);
        let e = if t == "f32" {
            gen_float(rng, &vars, depth)
        } else {
            gen_int(rng, t, &vars, depth)
        };
        body += &format!("let l{i}: {t} = {e}; ");
        vars.push((format!("l{i}"), t.into()));
        if rng.chance(3) {
            let ret = if score {
                gen_float(rng, &vars, 1)
            } else {
                gen_bool(rng, &vars, 1)
            };
            body += &format!("if {} {{ return {ret}; }} ", gen_bool(rng, &vars, depth));
        }
    }
    let tail = if score {
        gen_float(rng, &vars, depth)
    } else {
        gen_bool(rng, &vars, depth)
    };
    let ret = if score { "f32" } else { "bool" };
    (
        format!("fn user_fn({}) -> {ret} {{ {body}{tail} }}", sig.join(", ")),
        user,
    )
}

fn gen_dsl(rng: &mut Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    match rng.below(10) {
        0 => (0..rng.below(512)).map(|_| rng.next() as u8).collect(),
        1..=3 => {
            let seed = rng_pick_owned(rng, corpus);
            mutate(rng, &seed, corpus, DSL_DICT)
        }
        4 => {
            let f = gen_function(rng);
            mutate(rng, f.as_bytes(), corpus, DSL_DICT)
        }
        _ => gen_function(rng).into_bytes(),
    }
}

fn rng_pick_owned(rng: &mut Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    rng.pick(corpus).clone()
}

#[test]
fn fuzz_dsl() {
    let corpus = read_corpus(&[("fuzz/corpus/dsl", "rs")]);
    fuzz("dsl", 1000, dsl_target, corpus, gen_dsl);
}

// ---------------------------------------------------------------------------------------
// Spec files

const SPEC_DICT: &[&str] = &[
    "[",
    "]",
    "{",
    "}",
    "=",
    "\"",
    "'''",
    "\n",
    "[problem]\n",
    "[params]\n",
    "[params.user]\n",
    "[tune]\n",
    "[mask.function]\n",
    "[score.function]\n",
    "seq_q = ",
    "seq_k = ",
    "batch = ",
    "heads_q = ",
    "heads_kv = ",
    "head_dim = ",
    "doc_segments = [",
    "doc = [",
    "doc_file = ",
    "softcap = ",
    "alibi_slopes = [",
    "window_left = ",
    "block_lists = ",
    "tile = { block_m = ",
    "mask = \"predicate\"\n",
    "mask = \"block_sparse\"\n",
    "family = \"hax\"\n",
    "family = \"topk\"\n",
    "dtype = \"bf16\"\n",
    "sparse_block = ",
    "gqa = true\n",
    "nan",
    "inf",
    "-",
    ".",
    ",",
    "#",
    "\\u0000",
    "é",
];

/// Loads a spec file from text; when it is accepted and small, builds its run parameters and
/// evaluates its user functions at a few positions (the first uses of a spec in `run`).
fn spec_target(input: &[u8], _: &Path) -> Outcome {
    let text = String::from_utf8_lossy(input);
    let Ok(any) = AnySpecFile::parse(&text, None) else {
        return Outcome::Rejected;
    };
    let _ = any.canonical_name();
    let AnySpecFile::Static(sf) = any else {
        return Outcome::Accepted;
    };
    let _ = sf.tile();
    let p = sf.problem;
    // `doc_file` names a file; a fuzz input must not read arbitrary paths.
    let small = p.seq_k <= 4096 && p.seq_q <= 4096 && p.batch <= 8 && p.heads_q <= 64;
    if !small || matches!(sf.doc, Some(DocSource::File(_))) {
        return Outcome::Accepted;
    }
    let Ok(rp) = sf.run_params(p.seq_k, None) else {
        return Outcome::Accepted;
    };
    for (q, kv) in [(0, 0), (1, 0), (p.seq_q as i64 - 1, p.seq_k as i64 - 1)] {
        if let Some(m) = &rp.host_mask {
            let _ = m(0, 0, q, kv);
        }
        if let Some(s) = &rp.host_score {
            let _ = s(0.5, 0, p.heads_q.saturating_sub(1), q, kv);
        }
    }
    let _ = sf.user_fn_failure();
    Outcome::Deep
}

fn gen_spec(rng: &mut Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    match rng.below(10) {
        0 => (0..rng.below(1024)).map(|_| rng.next() as u8).collect(),
        1..=4 => {
            let seed = rng_pick_owned(rng, corpus);
            mutate(rng, &seed, corpus, SPEC_DICT)
        }
        5 => {
            let s = gen_spec_text(rng);
            mutate(rng, s.as_bytes(), corpus, SPEC_DICT)
        }
        _ => gen_spec_text(rng).into_bytes(),
    }
}

/// Mostly one of `good`, now and then one of `bad` (a wrong type, a boundary, garbage).
fn either(rng: &mut Rng, good: &[&str], bad: &[&str]) -> String {
    if rng.chance(12) {
        rng.pick(bad).to_string()
    } else {
        rng.pick(good).to_string()
    }
}

/// A random spec file, mostly valid: every key with valid values and, now and then, a
/// boundary or wrong one; user functions come with matching `[params.user]` values.
fn gen_spec_text(rng: &mut Rng) -> String {
    let mut s = String::new();
    let small = ["0", "1", "2", "3", "4", "8", "16", "37", "64"];
    if rng.chance(8) {
        // A dynamic family.
        let family = either(
            rng,
            &["landmark", "hax", "cca", "topk", "lse_merge"],
            &["", "nope", "1"],
        );
        s += &format!("family = \"{family}\"\n");
        s += &format!(
            "dtype = \"{}\"\n",
            either(rng, &["f16", "bf16", "f32"], &["f64"])
        );
        s += &format!(
            "head_dim = {}\n",
            either(rng, &["64", "128"], &["0", "\"64\""])
        );
        if rng.chance(2) {
            s += "[params]\n";
            for key in [
                "top_k",
                "group_size",
                "block",
                "mem_block",
                "num_hyperplanes",
                "local_window",
            ] {
                if rng.chance(3) {
                    s += &format!("{key} = {}\n", either(rng, &small, NUMBERS));
                }
            }
        }
        if rng.chance(2) {
            s += "[problem]\n";
            for key in ["batch", "heads_q", "heads_kv", "seq_q", "seq_k"] {
                if rng.chance(2) {
                    s += &format!(
                        "{key} = {}\n",
                        either(rng, &["1", "2", "4", "32", "64", "80"], NUMBERS)
                    );
                }
            }
        }
        return s;
    }
    s += &format!(
        "dtype = \"{}\"\n",
        either(rng, &["f16", "bf16", "f32"], &["f64", ""])
    );
    s += &format!(
        "head_dim = {}\n",
        either(
            rng,
            &["64", "128", "256"],
            &["32", "0", "\"64\"", "4294967360"]
        )
    );
    if rng.chance(4) {
        s += &format!("gqa = {}\n", either(rng, &["true", "false"], &["1"]));
    }
    if rng.chance(4) {
        s += &format!(
            "scale = {}\n",
            either(rng, &["0.125", "1.0", "0.0883"], NUMBERS)
        );
    }
    let masks = [
        "full",
        "causal",
        "local",
        "prefix_lm",
        "document",
        "causal_document",
        "share_question",
        "global_local",
        "block_causal_document",
        "lambda_mask",
        "lm_infinite",
        "block_sparse",
    ];
    let user_mask = rng.chance(3);
    let user_score = rng.chance(4);
    let mask = if user_mask {
        "predicate".to_string()
    } else {
        either(rng, &masks, &["predicate", "nope", ""])
    };
    if user_mask || mask == "block_sparse" || rng.chance(4) {
        s += &format!(
            "sparse_block = {{ q = {}, k = {} }}\n",
            either(rng, &["64", "128"], &["0", "3"]),
            either(rng, &["64", "128"], &["1", "-1"])
        );
    }
    if !user_mask {
        s += &format!("mask = \"{mask}\"\n");
    }
    if !user_score && rng.chance(2) {
        let score = either(rng, &["none", "softcap", "alibi"], &["other", "user"]);
        s += &format!("score = \"{score}\"\n");
    }
    // Kernels take 32-bit scalars and arrays; 64-bit types now and then (rejected).
    let types: &[&str] = if rng.chance(10) {
        &ALL_PARAM_TYPES
    } else {
        &["u32", "i32", "f32", "bool", "&[u32]", "&[i32]", "&[f32]"]
    };
    let mut user = Vec::new();
    for (on, score, table) in [(user_mask, false, "mask"), (user_score, true, "score")] {
        if on {
            let (f, params) = gen_function_of(rng, score, types);
            // Distinct parameter names for the mask and the score.
            let f = f
                .replace("fn user_fn", &format!("fn user_{table}"))
                .replace(" p", &format!(" {table}_p"))
                .replace("(p", &format!("({table}_p"))
                .replace("!p", &format!("!{table}_p"));
            s += &format!("[{table}.function]\nsource = \"\"\"\n{f}\n\"\"\"\n");
            user.extend(params.into_iter().map(|(n, t)| (format!("{table}_{n}"), t)));
        }
    }
    s += "[params]\n";
    let keys: &[&str] = match mask.as_str() {
        "local" => &["window_left", "window_right"],
        "prefix_lm" => &["prefix_len"],
        "global_local" => &["window", "global_tokens"],
        "lambda_mask" => &["global_tokens", "local_window"],
        "lm_infinite" => &["global_tokens", "local_window", "dist_limit"],
        "block_causal_document" => &["doc_block"],
        _ => &[],
    };
    for key in keys {
        if !rng.chance(12) {
            s += &format!("{key} = {}\n", either(rng, &small, NUMBERS));
        }
    }
    if rng.chance(12) {
        let key = rng.pick(&["window", "prefix_len", "doc_block", "rope_theta"]);
        s += &format!("{key} = {}\n", rng.pick(NUMBERS));
    }
    if s.contains("softcap") {
        s += &format!("softcap = {}\n", either(rng, &["30.0", "5.0"], NUMBERS));
    }
    let seq = *rng.pick(&["1", "16", "37", "64", "80", "129"]);
    if mask.contains("document") || mask == "share_question" || rng.chance(10) {
        match rng.below(3) {
            0 => {
                let segs = either(
                    rng,
                    &[seq, "1, 15", "0, 37", "40, 40"],
                    &[
                        "9223372036854775807, 9223372036854775807, 2",
                        "-1",
                        "1e9",
                        "",
                    ],
                );
                s += &format!("doc_segments = [{segs}]\n");
            }
            1 => {
                let n: usize = seq.parse().unwrap_or(1);
                let ids: Vec<String> = (0..n).map(|i| (i / 20).to_string()).collect();
                s += &format!("doc = [{}]\n", ids.join(","));
            }
            _ => {
                let ids: Vec<String> = (0..rng.below(90))
                    .map(|_| either(rng, &["0", "1", "2"], &["-1", "2147483647"]))
                    .collect();
                s += &format!("doc = [{}]\n", ids.join(","));
            }
        }
    }
    if s.contains("alibi") && rng.chance(2) {
        let (a, b) = (
            either(rng, &["0.5", "0.25"], NUMBERS),
            either(rng, &["0.5", "0.25"], NUMBERS),
        );
        s += &format!("alibi_slopes = [{a}, {b}]\n");
    }
    if !user.is_empty() || rng.chance(10) {
        s += "[params.user]\n";
        for (name, t) in &user {
            if rng.chance(15) {
                continue;
            }
            let scalar = |rng: &mut Rng| match t.as_str() {
                "f32" | "&[f32]" => either(
                    rng,
                    &["0.5", "-1.0", "3.0", "0.0"],
                    &["nan", "inf", "1e38", "1"],
                ),
                "bool" => either(rng, &["true", "false"], &["1", "2.5"]),
                _ => either(
                    rng,
                    &["0", "1", "2", "3", "7", "64"],
                    &["-1", "2147483647", "4294967296", "0.5", "-2147483648"],
                ),
            };
            let v = if t.starts_with('&') {
                let most = if rng.chance(3) { 200 } else { 6 };
                let n = rng.below(most);
                let items: Vec<String> = (0..n).map(|_| scalar(rng)).collect();
                format!("[{}]", items.join(", "))
            } else {
                scalar(rng)
            };
            s += &format!("{name} = {v}\n");
        }
    }
    if rng.chance(2) {
        s += "[problem]\n";
        let heads = *rng.pick(&["1", "2", "4"]);
        for (key, good) in [
            ("batch", "1"),
            ("heads_q", heads),
            ("heads_kv", heads),
            ("seq_q", seq),
            ("seq_k", seq),
            ("seed", "3"),
        ] {
            if rng.chance(2) {
                s += &format!("{key} = {}\n", either(rng, &[good, "2"], NUMBERS));
            }
        }
    }
    if rng.chance(4) {
        s += &format!(
            "[tune]\ntile = {{ block_m = {}, block_n = {}, warps = {}, stages = {} }}\n",
            either(rng, &["64", "128"], &["16", "0", "17"]),
            either(rng, &["64", "128"], &["16", "4096"]),
            either(rng, &["4", "8"], &["1", "0", "33"]),
            either(rng, &["1", "2"], &["0", "9"])
        );
    }
    s
}

#[test]
fn fuzz_specfile() {
    let corpus = read_corpus(&[("examples/specs", "toml"), ("fuzz/corpus/specfile", "toml")]);
    fuzz("specfile", 1500, spec_target, corpus, gen_spec);
}

// ---------------------------------------------------------------------------------------
// .npy files

const NPY_DICT: &[&str] = &[
    "{",
    "}",
    "(",
    ")",
    "[",
    "]",
    "'",
    ",",
    ":",
    " ",
    "'descr'",
    "'shape'",
    "'fortran_order'",
    "True",
    "False",
    "'<f4'",
    "'<f2'",
    "'<u2'",
    "'<i4'",
    "'>f4'",
    "'|O'",
    "'<f8'",
    "[('a', '<f4')]",
    "(1, 2, 32, 64)",
    "(18446744073709551615, 2)",
    "(4294967296, 4294967296)",
    "\n",
    "NUMPY",
    "\x01\x00",
    "\x02\x00",
    "\x03\x00",
    "\u{ffff}",
];

/// Reads an `.npy` file as a tensor of each kernel dtype and as document ids.
fn npy_target(input: &[u8], scratch: &Path) -> Outcome {
    let path = scratch.join("input.npy");
    std::fs::write(&path, input).expect("scratch write");
    let mut outcome = Outcome::Rejected;
    for dtype in [DType::F32, DType::F16, DType::Bf16] {
        if read_tensor(&path, dtype).is_ok() {
            outcome = Outcome::Deep;
        }
    }
    if read_i32(&path).is_ok() {
        outcome = Outcome::Deep;
    }
    outcome
}

/// An `.npy` file: magic, version, header length, header dict, data (each part valid,
/// boundary or wrong).
fn npy_bytes(rng: &mut Rng) -> Vec<u8> {
    let descr = *rng.pick(&[
        "'<f4'",
        "'<f2'",
        "'<u2'",
        "'<i4'",
        "'>f4'",
        "'<f8'",
        "'|b1'",
        "'|O'",
        "[('a', '<f4'), ('b', '<i4')]",
        "'<f4",
        "4",
    ]);
    let dims = rng.below(6);
    const DIMS: &[&str] = &[
        "0",
        "1",
        "2",
        "3",
        "32",
        "64",
        "4294967296",
        "9223372036854775807",
        "18446744073709551615",
        "18446744073709551616",
        "-1",
        "1e3",
    ];
    let shape: Vec<String> = (0..dims)
        .map(|_| {
            if rng.chance(2) {
                rng.pick(&["1", "2", "4", "8"]).to_string()
            } else {
                rng.pick(DIMS).to_string()
            }
        })
        .collect();
    let shape = match shape.len() {
        1 => format!("({},)", shape[0]),
        _ => format!("({})", shape.join(", ")),
    };
    let fortran = *rng.pick(&["False", "False", "True", "0"]);
    let mut header =
        format!("{{'descr': {descr}, 'fortran_order': {fortran}, 'shape': {shape}, }}");
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    let version = *rng.pick(&[1u8, 1, 2, 3, 4]);
    let mut v = b"\x93NUMPY".to_vec();
    v.extend([version, 0]);
    let len = if rng.chance(8) {
        rng.next() as u32
    } else {
        header.len() as u32
    };
    if version == 1 {
        v.extend((len as u16).to_le_bytes());
    } else {
        v.extend(len.to_le_bytes());
    }
    v.extend(header.bytes());
    let data = match rng.below(3) {
        0 => 0,
        1 => rng.below(64),
        _ => 4 * rng.below(600),
    };
    v.extend((0..data).map(|_| rng.next() as u8));
    v
}

fn gen_npy(rng: &mut Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    match rng.below(10) {
        0 => (0..rng.below(256)).map(|_| rng.next() as u8).collect(),
        1..=4 => {
            let seed = rng_pick_owned(rng, corpus);
            mutate(rng, &seed, corpus, NPY_DICT)
        }
        5 => {
            let b = npy_bytes(rng);
            mutate(rng, &b, corpus, NPY_DICT)
        }
        _ => npy_bytes(rng),
    }
}

#[test]
fn fuzz_npy() {
    let corpus = read_corpus(&[("fuzz/corpus/npy", "npy")]);
    fuzz("npy", 3000, npy_target, corpus, gen_npy);
}
