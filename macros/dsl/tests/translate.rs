//! Unit tests of the translator: signature rule, typing of literals and operators, naming,
//! emitted fragments, and errors (positions, messages, all reported at once).

use attnforge_dsl::{parse_mask_fn, parse_score_fn, FnKind, IndexParams, ParamKind, SourceError};

fn mask(src: &str) -> String {
    parse_mask_fn(src)
        .unwrap_or_else(|e| panic!("{src}: {e:?}"))
        .cuda
}

fn mask_errs(src: &str) -> Vec<SourceError> {
    parse_mask_fn(src).expect_err("should be rejected")
}

fn has(errs: &[SourceError], needle: &str) -> bool {
    errs.iter().any(|e| e.message.contains(needle))
}

#[test]
fn signature_rule_recognises_optional_batch_and_head() {
    let d = parse_mask_fn("fn m(b: u32, h: u32, q: u32, kv: u32, w: u32) -> bool { kv + w >= q }")
        .unwrap();
    assert_eq!(
        d.index,
        IndexParams {
            batch: true,
            head: true
        }
    );
    assert_eq!(d.params.len(), 1);
    assert_eq!(
        (d.params[0].name.as_str(), d.params[0].kind),
        ("w", ParamKind::U32)
    );

    let d = parse_mask_fn("fn m(_head: i32, q: u32, kv: u32) -> bool { kv <= q }").unwrap();
    assert_eq!(
        d.index,
        IndexParams {
            batch: false,
            head: true
        }
    );
    assert!(d.cuda.contains("const int _head = h;"));

    // `h` after the positions is a user parameter, not the head index.
    let d = parse_mask_fn("fn m(q: u32, kv: u32, h: u32) -> bool { kv + h <= q }").unwrap();
    assert_eq!(d.index, IndexParams::default());
    assert_eq!(d.params[0].name, "h");
    assert!(
        d.cuda.contains("long long kv_pos, unsigned h_1)"),
        "{}",
        d.cuda
    );
    assert!(d.cuda.contains("((kv + h_1) <= q)"), "{}", d.cuda);

    let d = parse_score_fn(
        "fn s(x: f32, batch: u32, q: i64, kv: i64, t: &[f32]) -> f32 { x * t[q as usize] }",
    )
    .unwrap();
    assert_eq!(d.kind, FnKind::Score);
    assert_eq!(
        d.index,
        IndexParams {
            batch: true,
            head: false
        }
    );
    assert!(d.cuda.contains(
        "float s(float score, int b, int h, long long q_pos, long long kv_pos, const float* t)"
    ));
    assert!(d.cuda.contains("const float x = score;"));
    assert!(d.cuda.contains("const long long q = q_pos;"));
}

#[test]
fn index_types_convert_from_positions() {
    let c = mask("fn m(q: i32, kv: i64) -> bool { kv <= q as i64 }");
    assert!(c.contains("const int q = ((int)q_pos);"), "{c}");
    assert!(c.contains("const long long kv = kv_pos;"), "{c}");
    assert!(c.contains("return (kv <= ((long long)q));"), "{c}");
}

#[test]
fn literals_take_the_type_of_their_context() {
    assert!(mask("fn m(q: u32, kv: u32) -> bool { kv + 1 <= q }").contains("(kv + 1u)"));
    assert!(mask("fn m(q: i64, kv: i64) -> bool { kv + 1 <= q }").contains("1ll"));
    assert!(
        mask("fn m(q: u32, kv: u32) -> bool { let w = 3; (q as i32) - w < kv as i32 }")
            .contains("const int w = 3;")
    );
    // A later use fixes the type of an earlier unsuffixed binding.
    let c = mask("fn m(q: u32, kv: u32) -> bool { let w = 3; kv + w >= q }");
    assert!(c.contains("const unsigned w = 3u;"), "{c}");
    let c = mask("fn m(q: u32, kv: u32, s: f32) -> bool { s * 0.5 > 1e-3 }");
    assert!(c.contains("(s * 0.5f) > 0.001f"), "{c}");
    assert!(mask("fn m(q: u32, kv: u32) -> bool { kv < 4_000_000_000 }").contains("4000000000u"));
    assert!(
        mask("fn m(q: u32, kv: u32, s: f32) -> bool { s < f32::INFINITY }")
            .contains("AF_DSL_INF_F")
    );
}

#[test]
fn signed_arithmetic_wraps_through_unsigned() {
    let c = mask("fn m(q: i32, kv: i32) -> bool { q - kv < 4 && -q < 0 }");
    assert!(c.contains("((int)(((unsigned)q) - ((unsigned)kv)))"), "{c}");
    assert!(c.contains("((int)(-((unsigned)q)))"), "{c}");
    // Division and remainder keep C's (= Rust's) truncation, with no detour.
    assert!(
        mask("fn m(q: i32, kv: i32) -> bool { q / 4 == kv % 4 }").contains("((q / 4) == (kv % 4))")
    );
    // Unsigned arithmetic is emitted as is.
    assert!(mask("fn m(q: u32, kv: u32) -> bool { q - kv < 4 }").contains("((q - kv) < 4u)"));
}

#[test]
fn casts_follow_rust() {
    let c = parse_score_fn("fn s(x: f32, q: u32, kv: u32) -> f32 { (x as i32) as f32 + (x as u64) as f32 + (q > kv) as i32 as f32 }").unwrap().cuda;
    assert!(
        c.contains("af_dsl_f2i32(score)") || c.contains("af_dsl_f2i32(x)"),
        "{c}"
    );
    assert!(c.contains("af_dsl_f2u64("), "{c}");
    assert!(c.contains("((int)(q > kv))"), "{c}");
    let e = mask_errs("fn m(q: u32, kv: u32) -> bool { q as bool }");
    assert!(has(&e, "cannot cast `u32` as `bool`"), "{e:?}");
}

#[test]
fn functions_and_methods_map_to_cuda() {
    let c = parse_score_fn(
        "fn s(x: f32, q: u32, kv: u32) -> f32 { x.exp() + f32::ln(x) + x.sqrt().tanh() + x.max(0.0) + f32::min(x, 1.0) + x.abs() + x.powf(2.0) + x % 2.0 }",
    )
    .unwrap()
    .cuda;
    for f in [
        "expf(x)",
        "logf(x)",
        "tanhf(sqrtf(x))",
        "fmaxf(x, 0.0f)",
        "fminf(x, 1.0f)",
        "fabsf(x)",
        "powf(x, 2.0f)",
        "fmodf(x, 2.0f)",
    ] {
        assert!(c.contains(f), "{f} in {c}");
    }
    let c = mask("fn m(q: u32, kv: u32) -> bool { std::cmp::min(q, kv) == u32::max(q, kv).min(3) && (q as i64 - 4).abs() > 1 }");
    assert!(
        c.contains("af_dsl_min(q, kv)") && c.contains("af_dsl_min(af_dsl_max(q, kv), 3u)"),
        "{c}"
    );
    assert!(c.contains("af_dsl_abs("), "{c}");
}

#[test]
fn names_never_clash_in_c() {
    let c = mask(
        "fn m(q_pos: u32, kv: u32, int: u32) -> bool { let x = kv; let x = x + int; x <= q_pos }",
    );
    assert!(c.contains("unsigned int_)"), "{c}");
    assert!(
        c.contains("const unsigned q_pos_1 = ((unsigned)q_pos);"),
        "{c}"
    );
    assert!(
        c.contains("const unsigned x = kv;") && c.contains("const unsigned x_1 = (x + int_);"),
        "{c}"
    );
    assert!(c.contains("return (x_1 <= q_pos_1);"), "{c}");
    let e = mask_errs("fn int(q: u32, kv: u32) -> bool { true }");
    assert!(has(&e, "reserved word"), "{e:?}");
}

#[test]
fn statements_and_short_circuit_are_kept() {
    let c = mask("fn m(q: u32, kv: u32, d: &[u32]) -> bool { if kv > q { return false; } kv < 4 || { let i = kv as usize; d[i] == 0 } }");
    assert!(
        c.contains("if ((kv > q)) {\n        return false;\n    }"),
        "{c}"
    );
    // The block on the right of `||` is only evaluated when the left is false.
    assert!(c.contains("bool r = (kv < 4u);\n    if ((!r)) {"), "{c}");
}

#[test]
fn errors_have_line_and_column_and_are_all_reported() {
    let src = "fn m(q: u32, kv: u32) -> bool {\n    let a = q.count_ones();\n    for i in 0..3 {}\n    kv <= q && UNKNOWN\n}";
    let e = mask_errs(src);
    assert_eq!(e.len(), 3, "{e:?}");
    assert_eq!((e[0].line, e[0].column), (2, 15));
    assert!(e[0]
        .message
        .contains("method `count_ones` is not supported"));
    assert_eq!((e[1].line, e[1].column), (3, 5));
    assert!(e[1].message.contains("loops are not supported"));
    assert_eq!((e[2].line, e[2].column), (4, 16));
    assert!(e[2].message.contains("cannot find `UNKNOWN`"));
    assert_eq!(e[2].to_string(), format!("4:16: {}", e[2].message));
}

#[test]
fn rejected_inputs_say_what_is_allowed() {
    let cases: &[(&str, &str)] = &[
        (
            "fn m(q: u32, kv: u32) -> bool { let mut x = q; x > kv }",
            "mutable bindings",
        ),
        (
            "fn m(q: u32, kv: u32) -> bool { (|| true)() }",
            "only calls of",
        ),
        (
            "fn m(q: u32, kv: u32) -> bool { kv < q as f64 as u32 }",
            "unsupported cast target",
        ),
        (
            "fn m(q: u32, kv: u32) -> bool { q == 1u32 as u64 }",
            "mismatched types: `u32` and `u64`",
        ),
        (
            "fn m(q: u32, kv: u32) -> bool { q as f32 > 1 }",
            "mismatched types",
        ),
        (
            "fn m(q: u32, kv: u32) -> bool { -q > 1 }",
            "unary `-` need signed integer or `f32`",
        ),
        (
            "fn m(q: u32, kv: u32, d: &[u32]) -> bool { d > 1 }",
            "can only be indexed",
        ),
        (
            "fn m(q: u32, kv: u32) -> bool { q[0] > 1 }",
            "not an array parameter",
        ),
        (
            "fn m(q: u32, kv: u32, d: &[u64]) -> bool { true }",
            "unsupported parameter type",
        ),
        (
            "fn m(q: u32, kv: u32, d: &mut [u32]) -> bool { true }",
            "unsupported parameter type",
        ),
        (
            "fn m(q: u32, kv: u32) -> bool { q.exp() > 0.0 }",
            "mismatched types",
        ),
        (
            "fn m(q: u32, kv: u32) -> bool { q > kv; true }",
            "no effect",
        ),
        (
            "fn m(self, q: u32, kv: u32) -> bool { true }",
            "`self` is not supported",
        ),
        (
            "fn m(q: u32, kv: u32) -> bool { if let 1 = q { true } else { false } }",
            "`if let`",
        ),
        (
            "fn m(q: u32, kv: u32) -> bool { let (a, b) = (q, kv); a < b }",
            "only `let name",
        ),
        (
            "fn m(q: u32, kv: u32) -> bool { loop {} }",
            "loops are not supported",
        ),
        (
            "fn m(q: u32, kv: u32) -> bool { [q][0] > kv }",
            "only array parameters can be indexed",
        ),
    ];
    for (src, want) in cases {
        let e = mask_errs(src);
        assert!(has(&e, want), "{src}: want `{want}`, got {e:?}");
    }
    let e = parse_score_fn("fn s(q: u32, kv: u32, x: u32) -> f32 { 1.0 }").expect_err("no score");
    assert!(has(&e, "must be `f32`"), "{e:?}");
    let e = parse_score_fn("fn s(x: f32, q: u32, kv: u32) -> f32 { x.sinh() }").expect_err("sinh");
    assert!(has(&e, "method `sinh` is not supported"), "{e:?}");
    let e = parse_mask_fn("not a function").expect_err("syntax");
    assert_eq!(e.len(), 1);
}

#[test]
fn helpers_are_guarded_so_functions_can_share_a_file() {
    let c = mask("fn m(q: u32, kv: u32) -> bool { kv <= q }");
    assert!(c.starts_with("#ifndef AF_DSL_HELPERS\n#define AF_DSL_HELPERS\n"));
    assert_eq!(c.matches("#endif // AF_DSL_HELPERS").count(), 1);
    assert!(c.contains("// attnforge mask translated from Rust: fn m(q: u32, kv: u32) -> bool"));
}
