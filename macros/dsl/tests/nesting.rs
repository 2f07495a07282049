//! Deeply nested or very long expressions are rejected with an error, never a stack overflow,
//! and everything up to the documented bound parses, checks, translates and evaluates on a
//! 2 MiB thread stack (the default of spawned threads and of the test harness).

use attnforge_dsl::eval::compile_eval;
use attnforge_dsl::{parse_mask_fn, parse_score_fn, FnKind, MAX_NESTING};

/// Runs `f` on a thread with a 2 MiB stack: a stack overflow aborts the test binary.
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(f)
        .expect("spawn")
        .join()
        .expect("no panic")
}

fn mask_with_body(body: String) -> String {
    format!("fn m(q: i64, kv: i64) -> bool {{ {body} }}")
}

/// Hostile shapes, each `n` levels deep.
fn shapes(n: usize) -> Vec<(&'static str, String)> {
    vec![
        (
            "parentheses",
            mask_with_body(format!("{}kv{} <= q", "(".repeat(n), ")".repeat(n))),
        ),
        (
            "sum",
            mask_with_body(format!("kv{} <= q", " + 1".repeat(n))),
        ),
        (
            "unary minus",
            mask_with_body(format!("{}kv <= q", "-".repeat(n))),
        ),
        ("not", mask_with_body(format!("{}(kv <= q)", "!".repeat(n)))),
        (
            "blocks",
            mask_with_body(format!("{}kv <= q{}", "{".repeat(n), "}".repeat(n))),
        ),
        (
            "else if",
            mask_with_body(format!(
                "{} {{ true }} else {{ false }}",
                (0..n)
                    .map(|i| format!("if kv == {i} {{ false }} else "))
                    .collect::<String>()
                    + "if kv <= q"
            )),
        ),
        (
            "casts",
            mask_with_body(format!("kv{} <= q", " as i64".repeat(n))),
        ),
        (
            "indexing",
            format!(
                "fn m(q: i64, kv: i64, a: &[i32]) -> bool {{ {}0{} as i64 <= q }}",
                "a[".repeat(n),
                " as usize]".repeat(n)
            ),
        ),
        (
            "method calls",
            mask_with_body(format!("kv{} <= q", ".abs()".repeat(n))),
        ),
    ]
}

#[test]
fn hostile_nesting_is_an_error_not_a_stack_overflow() {
    on_small_stack(|| {
        for n in [MAX_NESTING + 1, 5000, 10_000] {
            for (what, src) in shapes(n) {
                let errs = parse_mask_fn(&src).expect_err(what);
                assert!(
                    errs.iter().any(|e| e
                        .message
                        .contains(&format!("nested deeper than {MAX_NESTING}"))),
                    "{what} x{n}: {errs:?}"
                );
                assert!(compile_eval(&src, FnKind::Mask).is_err(), "{what} x{n}");
            }
        }
    });
}

fn too_deep(src: &str) -> bool {
    parse_mask_fn(src).is_err_and(|errs| errs.iter().any(|e| e.message.contains("nested deeper")))
}

#[test]
fn nesting_within_the_bound_translates_and_evaluates() {
    on_small_stack(|| {
        for i in 0..shapes(1).len() {
            // The deepest accepted instance of each shape.
            let (mut lo, mut hi) = (1, MAX_NESTING + 1);
            while hi - lo > 1 {
                let mid = (lo + hi) / 2;
                if too_deep(&shapes(mid)[i].1) {
                    hi = mid;
                } else {
                    lo = mid;
                }
            }
            let (what, src) = shapes(lo).swap_remove(i);
            assert!(lo >= MAX_NESTING / 8, "{what}: only {lo} levels accepted");
            let def = parse_mask_fn(&src).unwrap_or_else(|e| panic!("{what}: {e:?}"));
            assert!(def.cuda.contains("bool m("), "{what}");
            let f = compile_eval(&src, FnKind::Mask).unwrap_or_else(|e| panic!("{what}: {e:?}"));
            let params = if what == "indexing" {
                vec![attnforge_dsl::eval::Value::Ints(vec![0; 4])]
            } else {
                Vec::new()
            };
            f.mask(0, 0, 7, 3, &params)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
        }
        // The deepest accepted parenthesisation (each level adds one).
        let deepest = format!(
            "fn s(x: f32, q: i64, kv: i64) -> f32 {{ {}x{} }}",
            "(".repeat(MAX_NESTING - 20),
            ")".repeat(MAX_NESTING - 20)
        );
        assert!(parse_score_fn(&deepest).is_ok());
        let f = compile_eval(&deepest, FnKind::Score).unwrap();
        assert_eq!(f.score(1.5, 0, 0, 0, 0, &[]).unwrap(), 1.5);
    });
}

#[test]
fn long_functions_of_short_statements_are_accepted() {
    // Statements do not nest: 2000 guards and bindings are fine.
    let body: String = (0..1000)
        .map(|i| format!("let a{i} = kv + {i}; if a{i} == q {{ return false; }} "))
        .collect();
    let src = mask_with_body(body + "kv <= q");
    on_small_stack(move || {
        parse_mask_fn(&src).expect("long but flat");
        let f = compile_eval(&src, FnKind::Mask).unwrap();
        assert!(!f.mask(0, 0, 5, 3, &[]).unwrap());
        assert!(f.mask(0, 0, 5000, 3, &[]).unwrap());
    });
}

#[test]
fn documentation_does_not_count_as_nesting() {
    // `#[attnforge::mask]` passes the whole item (attributes included) to `translate_fn`.
    let docs: String = (0..400).map(|i| format!("/// line {i}\n")).collect();
    let item: syn::ItemFn = syn::parse_str(&format!(
        "{docs}fn m(q: i64, kv: i64) -> bool {{ kv <= q }}"
    ))
    .unwrap();
    let def = attnforge_dsl::translate_fn(&item, FnKind::Mask).expect("documented function");
    assert_eq!(def.name, "m");
}
