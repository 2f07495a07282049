//! Symbolic derivatives of score functions (`#[score(backward)]`): every derivative the pass
//! generates is compared with central finite differences of the DSL's own evaluator of the
//! forward, on random inputs away from kinks; non-differentiable bodies are errors at the
//! offending expression; the emitted CUDA of the derivatives compiles with g++ and gives the
//! host evaluator's values.

use attnforge_dsl::eval::{compile_score_grad, EvalFn, ParamPartial, Value};
use attnforge_dsl::{parse_score_grad, ParamKind};
use std::fmt::Write;
use std::process::Command;

/// A small deterministic generator (splitmix64): the tests need no crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn f(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next() >> 40) as f32 / (1u64 << 24) as f32)
    }
    fn u(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const HEADS: usize = 4;

/// Functions covering every rule, with the range of the score and of the float parameters.
/// Table parameters get `HEADS + 1` elements.
/// A value range `(lo, hi)`.
type Range = (f32, f32);

const CASES: &[(&str, Range, Range)] = &[
    (
        "fn softcap(score: f32, q: u32, kv: u32, c: f32) -> f32 { c * (score / c).tanh() }",
        (-6.0, 6.0),
        (1.0, 5.0),
    ),
    (
        "fn alibi(score: f32, h: u32, q: i32, kv: i32, slope: &[f32]) -> f32 {
             score - slope[h as usize] * ((q - kv).abs() as f32)
         }",
        (-5.0, 5.0),
        (0.05, 1.0),
    ),
    (
        "fn comp(score: f32, q: u32, kv: u32, a: f32) -> f32 {
             let e = (score * 0.5).exp();
             let l = (1.0 + e).ln();
             l * (a * a + score * score + 1.0).sqrt() - (a * score).exp() / 4.0
         }",
        (-2.0, 2.0),
        (-1.0, 1.0),
    ),
    (
        "fn sel(score: f32, h: u32, q: i64, kv: i64, lo: f32, hi: f32) -> f32 {
             let x = if q >= kv { score } else { score * 0.5 - 1.0 };
             let y = if x > 0.0 { x * hi } else { x * lo };
             y.max(-3.0).min(3.0 + lo)
         }",
        (-6.0, 6.0),
        (0.2, 1.5),
    ),
    (
        "fn div(score: f32, b: u32, h: u32, q: u32, kv: u32, t: &[f32], c: f32) -> f32 {
             let d = (q as f32 - kv as f32).abs();
             score / (1.0 + t[h as usize] * t[h as usize] + d * c * c) + (score - c).abs()
         }",
        (-4.0, 4.0),
        (-1.5, 1.5),
    ),
    (
        "fn multi(score: f32, h: u32, q: u32, kv: u32, w: &[f32], bias: &[f32]) -> f32 {
             if kv > q {
                 return score * w[0];
             }
             let k = (h + 1) as usize;
             let a = w[k] * score.tanh() + w[h as usize] * w[k];
             a + bias[(q - kv).min(3) as usize]
         }",
        (-3.0, 3.0),
        (-1.0, 1.0),
    ),
    (
        "fn pw(score: f32, q: u32, kv: u32, p: f32) -> f32 {
             (score * score + 1.0).powf(p) + (score * 0.5).exp2() - (2.0 + score.abs()).log2()
                 + (score * 0.3).sin() * score.cos() + (3.0 + score).log10()
         }",
        (-2.0, 2.0),
        (0.3, 1.7),
    ),
    (
        "fn shadow(score: f32, h: u32, q: u32, kv: u32, g: &[f32]) -> f32 {
             let x = score * g[h as usize];
             let x = { let y = x * x; y - x };
             let s = if q % 2 == 0 { x } else { -x };
             s / (1.0 + g[h as usize].abs()) + (q as f32).floor() - f32::max(kv as f32, 2.0)
         }",
        (-2.0, 2.0),
        (-1.0, 1.0),
    ),
    (
        "fn powbase(score: f32, q: u32, kv: u32, base: f32) -> f32 {
             let e = score / 4.0;
             base.powf(e) * (if score > 1.0 { 2.0 * score } else { score * score + 1.0 })
         }",
        (-3.0, 3.0),
        (0.5, 3.0),
    ),
];

/// The forward evaluated with `s`, or with one float parameter value replaced.
fn forward(f: &EvalFn, s: f32, at: (usize, usize, i64, i64), params: &[Value]) -> f64 {
    let (b, h, q, kv) = at;
    f64::from(f.score(f64::from(s), b, h, q, kv, params).expect("forward"))
}

/// Central difference of `g(x)` at `x` with a step of about `h`; `None` near a kink (the
/// one-sided slopes disagree).
fn central(x: f32, h: f32, tol: f64, g: &mut dyn FnMut(f32) -> f64) -> Option<f64> {
    let (xp, xm) = (x + h, x - h);
    let (fp, f0, fm) = (g(xp), g(x), g(xm));
    let right = (fp - f0) / f64::from(xp - x);
    let left = (f0 - fm) / f64::from(x - xm);
    if (right - left).abs() > 20.0 * tol {
        return None;
    }
    Some((fp - fm) / f64::from(xp - xm))
}

fn random_params(kinds: &[ParamKind], range: (f32, f32), r: &mut Rng) -> Vec<Value> {
    kinds
        .iter()
        .map(|k| match k {
            ParamKind::F32 => Value::Float(r.f(range.0, range.1)),
            ParamKind::SliceF32 => {
                Value::Floats((0..=HEADS).map(|_| r.f(range.0, range.1)).collect())
            }
            other => panic!("no generator for {other:?}"),
        })
        .collect()
}

/// Checks one derivative; returns false when skipped at a kink.
fn check_one(name: &str, what: &str, analytic: f64, fd: Option<f64>, tol: f64) -> bool {
    let Some(fd) = fd else { return false };
    assert!(
        (analytic - fd).abs() <= tol * (1.0 + analytic.abs().max(fd.abs())),
        "{name}: {what}: symbolic {analytic} vs finite difference {fd}"
    );
    true
}

const STEP: f32 = 1.0 / 512.0;
const TOL: f64 = 2e-3;

fn check_case(src: &str, srange: (f32, f32), prange: (f32, f32), r: &mut Rng) {
    let (f, g) = compile_score_grad(src).unwrap_or_else(|e| panic!("{src}: {e:?}"));
    let name = src.split('(').next().unwrap_or(src);
    let (mut checked, mut skipped) = (0usize, 0usize);
    for _ in 0..150 {
        let s = r.f(srange.0, srange.1);
        let at = (
            r.u(2) as usize,
            r.u(HEADS as u64) as usize,
            r.u(12) as i64,
            r.u(12) as i64,
        );
        let params = random_params(f.param_kinds(), prange, r);
        let ds = f64::from(
            g.d_score(f64::from(s), at.0, at.1, at.2, at.3, &params)
                .unwrap(),
        );
        let fd = central(s, STEP, TOL, &mut |x| forward(&f, x, at, &params));
        if check_one(name, &format!("d/dscore at s={s} {at:?}"), ds, fd, TOL) {
            checked += 1;
        } else {
            skipped += 1;
        }
        let mut parts: Vec<ParamPartial> = Vec::new();
        g.d_params(f64::from(s), at.0, at.1, at.2, at.3, &params, &mut parts)
            .unwrap();
        for (pi, v) in params.iter().enumerate() {
            let elems = match v {
                Value::Float(_) => 1,
                Value::Floats(t) => t.len(),
                _ => 0,
            };
            for el in 0..elems {
                let analytic: f64 = parts
                    .iter()
                    .filter(|p| p.param == pi && p.element == el)
                    .map(|p| f64::from(p.value))
                    .sum();
                let x0 = match v {
                    Value::Float(x) => *x,
                    Value::Floats(t) => t[el],
                    _ => unreachable!(),
                };
                let mut perturbed = |x: f32| {
                    let mut p = params.clone();
                    match &mut p[pi] {
                        Value::Float(y) => *y = x,
                        Value::Floats(t) => t[el] = x,
                        _ => unreachable!(),
                    }
                    forward(&f, s, at, &p)
                };
                let fd = central(x0, STEP, TOL, &mut perturbed);
                let what = format!("d/dparam{pi}[{el}] at s={s} {at:?} {params:?}");
                if check_one(name, &what, analytic, fd, TOL) {
                    checked += 1;
                } else {
                    skipped += 1;
                }
            }
        }
    }
    // Kinks are rare in the ranges chosen: a derivative skipped everywhere is not tested.
    assert!(
        skipped * 10 < checked,
        "{name}: {skipped} skipped, {checked} checked"
    );
}

#[test]
fn symbolic_derivatives_match_finite_differences() {
    let mut r = Rng(18);
    for (src, srange, prange) in CASES {
        check_case(src, *srange, *prange, &mut r);
    }
}

#[test]
fn a_table_gradient_goes_to_the_indexed_element() {
    let (_, g) = compile_score_grad(
        "fn t(score: f32, h: u32, q: u32, kv: u32, a: &[f32]) -> f32 { score + a[h as usize] * 3.0 + a[(q - kv) as usize] }",
    )
    .unwrap();
    let p = [Value::Floats(vec![0.5; 8])];
    let mut out = Vec::new();
    g.d_params(1.0, 0, 2, 7, 2, &p, &mut out).unwrap();
    let got: Vec<(usize, usize, f32)> = out.iter().map(|p| (p.param, p.element, p.value)).collect();
    assert_eq!(got, vec![(0, 2, 3.0), (0, 5, 1.0)]);
    assert_eq!(g.d_score(1.0, 0, 2, 7, 2, &p).unwrap(), 1.0);
}

#[test]
fn kinks_take_the_branch_the_forward_takes() {
    let (_, g) = compile_score_grad(
        "fn k(score: f32, q: u32, kv: u32) -> f32 { score.abs() + score.max(0.0) * 2.0 + score.min(1.0) * 4.0 }",
    )
    .unwrap();
    let d = |s: f64| g.d_score(s, 0, 0, 0, 0, &[]).unwrap();
    // abs'(0) = 1 (non-negative branch), max(s, 0) at s = 0 is its first argument, min(s, 1)
    // at s = 1 too.
    assert_eq!(d(0.0), 1.0 + 2.0 + 4.0);
    assert_eq!(d(1.0), 1.0 + 2.0 + 4.0);
    assert_eq!(d(-0.5), -1.0 + 4.0);
    assert_eq!(d(2.0), 1.0 + 2.0);
}

/// `(source, the text of the offending expression)`.
const NOT_DIFFERENTIABLE: &[(&str, &str, &str)] = &[
    (
        "fn f(score: f32, q: u32, kv: u32) -> f32 {\n    let x = score * 2.0;\n    x.floor() + 1.0\n}",
        "x.floor()",
        "`floor` of a value computed from the score",
    ),
    (
        "fn f(score: f32, q: u32, kv: u32) -> f32 {\n    score + (score as i32) as f32\n}",
        "(score as i32) as f32",
        "converting an integer or `bool` computed from",
    ),
    (
        "fn f(score: f32, q: u32, kv: u32, c: f32) -> f32 {\n    score + (c > 0.5) as i32 as f32\n}",
        "(c > 0.5) as i32 as f32",
        "converting an integer or `bool` computed from",
    ),
    (
        "fn f(score: f32, q: u32, kv: u32) -> f32 {\n    score % 3.0\n}",
        "score % 3.0",
        "`%` of values computed from",
    ),
    (
        "fn f(score: f32, h: u32, q: u32, kv: u32, t: &[f32]) -> f32 {\n    score + t[score as usize]\n}",
        "score as usize",
        "the index of the learnable table `t` is computed from",
    ),
    (
        "fn f(score: f32, q: u32, kv: u32, c: f32) -> f32 {\n    score + c.ceil()\n}",
        "c.ceil()",
        "`ceil` of a value computed from",
    ),
];

#[test]
fn non_differentiable_bodies_are_errors_at_the_expression() {
    for (src, offending, msg) in NOT_DIFFERENTIABLE {
        let errs = parse_score_grad(src).expect_err(src);
        assert_eq!(errs.len(), 1, "{src}: {errs:?}");
        let e = &errs[0];
        assert!(e.message.contains(msg), "{src}: {}", e.message);
        // The error points at the first character of the offending expression.
        let line = src.lines().nth(e.line - 1).expect("line");
        let at: String = line.chars().skip(e.column - 1).collect();
        assert!(
            at.starts_with(offending),
            "{src}: error at `{at}`, want `{offending}`"
        );
        // The forward alone is fine: only the backward needs the derivative.
        assert!(attnforge_dsl::parse_score_fn(src).is_ok());
    }
    // Generated names must not collide with each other.
    let errs = parse_score_grad(
        "fn f(score: f32, q: u32, kv: u32, t: &[f32], t_0: f32) -> f32 { score * t[0] * t_0 }",
    )
    .expect_err("name clash");
    assert!(
        errs[0].message.contains("would be named `f_grad_t_0`"),
        "{errs:?}"
    );
    // A step function of integers only is a constant: differentiable (derivative 0).
    let (_, g) = compile_score_grad(
        "fn f(score: f32, q: u32, kv: u32) -> f32 { score + (q as f32 / 3.0).floor() + (kv % 2) as f32 }",
    )
    .unwrap();
    assert_eq!(g.d_score(0.3, 0, 0, 5, 3, &[]).unwrap(), 1.0);
}

#[test]
fn emitted_code_is_small_after_folding() {
    let (_, d) = parse_score_grad(
        "fn alibi(score: f32, h: u32, q: i32, kv: i32, slope: &[f32]) -> f32 { score - slope[h as usize] * ((q - kv).abs() as f32) }",
    )
    .unwrap();
    assert!(
        d.cuda.contains("float alibi_grad_score(float score, int b, int h, long long q_pos, long long kv_pos, const float* slope) {"),
        "{}",
        d.cuda
    );
    // d/dscore = 1, d/dslope[h] = -|q - kv| (no `0.0 *` or `* 1.0` terms).
    assert!(d.cuda.contains("return 1.0f;"), "{}", d.cuda);
    assert!(!d.cuda.contains("0.0f"), "{}", d.cuda);
    assert!(!d.cuda.contains("* 1.0f"), "{}", d.cuda);
    assert_eq!(d.params.len(), 1);
    assert_eq!(d.params[0].partial.name, "alibi_grad_slope_0");
    let index = d.params[0].index.as_ref().expect("table");
    assert!(d.cuda.contains(&format!("long long {}(", index.name)));
    assert!(d.d_score.rust.starts_with(
        "fn alibi_grad_score(score: f32, h: u32, q: i32, kv: i32, slope: &[f32]) -> f32"
    ));
}

/// The derivative CUDA of the property cases, compiled with g++ and run on a grid, gives the
/// host evaluator's derivatives.
#[test]
fn emitted_derivative_cuda_compiles_and_matches_the_evaluator() {
    let mut prog = String::from(
        "#include <cstdio>\n#include <cmath>\n#define __device__\n#define __forceinline__ inline\n\
         static const float T0[] = {0.25f, -0.5f, 0.75f, 1.25f, -1.0f};\n\
         static const float T1[] = {0.1f, 0.2f, -0.3f, 0.4f, 0.5f};\nint main() {\n",
    );
    let mut expected = Vec::new();
    let mut defs = String::new();
    for (src, srange, _) in CASES {
        let (_, d) = parse_score_grad(src).unwrap();
        let (f, g) = compile_score_grad(src).unwrap();
        defs.push_str(&d.cuda);
        let params: Vec<Value> = f
            .param_kinds()
            .iter()
            .enumerate()
            .map(|(i, k)| match k {
                ParamKind::F32 => Value::Float(0.75 + i as f32 * 0.25),
                _ if i % 2 == 0 => Value::Floats(vec![0.25, -0.5, 0.75, 1.25, -1.0]),
                _ => Value::Floats(vec![0.1, 0.2, -0.3, 0.4, 0.5]),
            })
            .collect();
        let c_args: Vec<String> = params
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::Float(x) => format!("{x:?}f"),
                _ if i % 2 == 0 => "T0".into(),
                _ => "T1".into(),
            })
            .collect();
        let extra: String = c_args.iter().map(|a| format!(", {a}")).collect();
        for k in 0..12 {
            let s = srange.0 + (srange.1 - srange.0) * (k as f32 + 0.37) / 12.0;
            let (b, h, q, kv) = (k % 2, k % HEADS, (k * 5) % 11, (k * 3) % 7);
            let mut fns = vec![(d.d_score.name.clone(), None)];
            for p in &d.params {
                fns.push((
                    p.partial.name.clone(),
                    p.index.as_ref().map(|i| i.name.clone()),
                ));
            }
            let mut parts = Vec::new();
            g.d_params(f64::from(s), b, h, q as i64, kv as i64, &params, &mut parts)
                .unwrap();
            let mut host = vec![g
                .d_score(f64::from(s), b, h, q as i64, kv as i64, &params)
                .unwrap()];
            // The evaluator reports table partials only where they are non-zero; the CUDA
            // functions are printed for every reference, so compare the non-zero ones.
            for (i, p) in d.params.iter().enumerate() {
                let call = format!("{}({s:?}f, {b}, {h}, {q}, {kv}{extra})", fns[i + 1].0);
                if p.index.is_some() {
                    let _ = writeln!(
                        prog,
                        "  {{ float v = {call}; if (v != 0.0f) std::printf(\"%a\\n\", v); }}"
                    );
                } else {
                    let _ = writeln!(prog, "  std::printf(\"%a\\n\", {call});");
                }
            }
            host.extend(parts.iter().map(|p| p.value));
            let _ = writeln!(
                prog,
                "  std::printf(\"%a\\n\", {}({s:?}f, {b}, {h}, {q}, {kv}{extra}));",
                d.d_score.name
            );
            // Printed order: params first, then d_score; reorder the host values likewise.
            let first = host.remove(0);
            host.push(first);
            expected.extend(host);
        }
    }
    prog.insert_str(prog.find("static const float T0").unwrap(), &defs);
    prog.push_str("  return 0;\n}\n");
    let dir = std::env::temp_dir().join(format!("attnforge-dsl-grad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cpp, exe) = (dir.join("grad.cpp"), dir.join("grad"));
    std::fs::write(&cpp, &prog).unwrap();
    let out = Command::new("g++")
        .args([
            "-std=c++17",
            "-O1",
            "-ffp-contract=off",
            "-Wall",
            "-Wno-unused-parameter",
            "-Wno-unused-variable",
            "-Werror",
            "-o",
        ])
        .arg(&exe)
        .arg(&cpp)
        .output()
        .expect("g++ must be installed");
    assert!(
        out.status.success(),
        "g++ failed on {}:\n{}",
        cpp.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Command::new(&exe).output().unwrap();
    let text = String::from_utf8(run.stdout).unwrap();
    let got: Vec<f64> = text
        .lines()
        .map(|l| hexf(l).unwrap_or_else(|| panic!("bad line {l}")))
        .collect();
    assert_eq!(got.len(), expected.len(), "{text}");
    for (i, (c, h)) in got.iter().zip(&expected).enumerate() {
        let h = f64::from(*h);
        assert!(
            (c - h).abs() <= 1e-5 * (1.0 + h.abs()),
            "value {i}: cuda {c} host {h}"
        );
    }
}

/// Parses C's `%a` output (`0x1.8p+1`, `-0x0p+0`).
fn hexf(s: &str) -> Option<f64> {
    let (neg, s) = s.strip_prefix('-').map_or((false, s), |r| (true, r));
    let s = s.strip_prefix("0x")?;
    let (mant, exp) = s.split_once('p')?;
    let (int, frac) = mant.split_once('.').unwrap_or((mant, ""));
    let mut v = f64::from(u32::from_str_radix(int, 16).ok()?);
    for (i, c) in frac.chars().enumerate() {
        v += f64::from(c.to_digit(16)?) / 16f64.powi(i as i32 + 1);
    }
    let v = v * 2f64.powi(exp.parse().ok()?);
    Some(if neg { -v } else { v })
}

/// The deepest accepted forward shapes (docs/dsl.md, "Nesting bound") derive, emit and
/// evaluate on a 2 MiB stack, or are rejected with the nesting error: never a stack overflow.
#[test]
fn deep_functions_derive_on_a_small_stack() {
    let score_fn = |body: String| format!("fn f(score: f32, q: u32, kv: u32) -> f32 {{ {body} }}");
    let shapes = vec![
        (
            "parentheses",
            score_fn(format!("{}score{}", "(".repeat(498), ")".repeat(498))),
        ),
        (
            "product",
            score_fn(format!("score{}", " * score".repeat(249))),
        ),
        (
            "quotient",
            score_fn(format!("score{}", " / (score + 2.0)".repeat(120))),
        ),
        ("unary minus", score_fn(format!("{}score", "-".repeat(498)))),
        (
            "blocks",
            score_fn(format!("{}score{}", "{".repeat(124), "}".repeat(124))),
        ),
        (
            "else if",
            score_fn(format!(
                "{} {{ score * 2.0 }}",
                (0..70)
                    .map(|i| format!("if q == {i} {{ score.tanh() }} else "))
                    .collect::<String>()
            )),
        ),
        ("casts", score_fn(format!("score{}", " as f32".repeat(249)))),
        (
            "method calls",
            score_fn(format!("score{}", ".tanh()".repeat(166))),
        ),
    ];
    let handle = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || {
            let mut derived = 0;
            for (what, src) in shapes {
                match (parse_score_grad(&src), compile_score_grad(&src)) {
                    (Ok(_), Ok((_, g))) => {
                        let d = g.d_score(0.5, 0, 0, 3, 1, &[]).expect(what);
                        assert!(!d.is_nan(), "{what}");
                        derived += 1;
                    }
                    (Err(e), Err(_)) => assert!(
                        e.iter()
                            .any(|e| e.message.contains("nests deeper than 512")),
                        "{what}: {e:?}"
                    ),
                    (a, b) => panic!(
                        "{what}: the translator and the evaluator disagree: {:?} / {:?}",
                        a.is_ok(),
                        b.is_ok()
                    ),
                }
            }
            derived
        })
        .expect("spawn");
    let derived = handle.join().expect("no stack overflow, no panic");
    assert!(derived >= 6, "most shapes derive ({derived})");
}
