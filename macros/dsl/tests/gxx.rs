//! The emitted CUDA of a set of mask/score functions is compiled with g++ (behind a prelude
//! that defines `__device__`/`__forceinline__`) and evaluated on a grid of (b, h, q, kv, score);
//! every decision and score must equal the Rust function's, bit for bit. This is the seed of
//! "the same user function gives identical decisions in Rust, the block-list builder and CUDA".

// The functions below are written to exercise the translator (`let` then return, `!(a > b)`).
#![allow(clippy::let_and_return, clippy::nonminimal_bool)]

use attnforge_dsl::{parse_mask_fn, parse_score_fn, UserFnDef};
use std::fmt::Write;
use std::process::Command;

/// Defines a Rust function and a `const` holding its source text, so the two cannot drift.
macro_rules! dual {
    ($src:ident = $($f:tt)*) => {
        $($f)*
        const $src: &str = stringify!($($f)*);
    };
}

const N: u32 = 20;
const DOC: [u32; N as usize] = [0, 0, 0, 1, 1, 1, 1, 2, 3, 3, 3, 3, 3, 4, 4, 5, 5, 5, 5, 5];
const SLOPES: [f32; 3] = [0.5, 0.25, 0.125];
const SCORES: [f32; 9] = [
    0.0,
    -0.0,
    1.5,
    -2.75,
    33.3,
    1.0e10,
    -1.0e10,
    f32::INFINITY,
    f32::NAN,
];

dual!(DOC_CAUSAL = fn doc_causal(q: u32, kv: u32, doc: &[u32]) -> bool {
    kv <= q && doc[q as usize] == doc[kv as usize]
});

dual!(LOCAL = fn local(_b: u32, _h: u32, q: i64, kv: i64, left: i64, right: i64) -> bool {
    (left < 0 || q - left <= kv) && (right < 0 || kv <= q + right)
});

dual!(LAMBDA = fn lambda_mask(q: u32, kv: u32, g: u32, l: u32) -> bool {
    if kv > q {
        return false;
    }
    let dist = q - kv;
    let near = if dist < l { true } else { kv < g };
    near
});

dual!(GLOBAL_LOCAL = fn global_local(q: u32, kv: u32, w: i32, g: i32) -> bool {
    let d = (q as i32 - kv as i32).abs();
    d <= w || (q as i32) < g || (kv as i32) < g
});

dual!(BLOCK_DOC = fn block_causal_document(q: u32, kv: u32, doc: &[u32], bc: u32) -> bool {
    doc[q as usize] == doc[kv as usize] && kv / bc <= q / bc
});

dual!(BITS = fn bits(h: u32, q: u32, kv: u32, flip: bool) -> bool {
    let same = (q ^ kv) & 3 == 0 || (q >> 2) == (kv >> 2);
    (same != flip) | (h % 2 == 1 && !(kv > q))
});

dual!(SHARE_Q = fn share_question(q: u32, kv: u32, doc: &[i32]) -> bool {
    let dq = doc[q as usize];
    let dk = doc[kv as usize];
    (dq != 0 && dk == 0) || {
        let same = dq == dk;
        same && kv <= q
    }
});

dual!(SOFTCAP = fn softcap(score: f32, _q: u32, _kv: u32, cap: f32) -> f32 {
    cap * (score / cap).tanh()
});

dual!(ALIBI = fn alibi(score: f32, h: u32, q: u32, kv: u32, slopes: &[f32]) -> f32 {
    score - slopes[h as usize] * (q as f32 - kv as f32).abs()
});

dual!(QUANT = fn quantized(score: f32, q: i64, kv: i64) -> f32 {
    let bucket = (score * 4.0) as i32;
    let wide = score as i64;
    let u = score as u32;
    bucket as f32 * 0.25 + ((q - kv) as f32).abs().sqrt() + (wide % 7) as f32 + (u % 5) as f32
});

dual!(SIGNED = fn signed_ops(score: f32, b: u32, q: u32, kv: u32) -> f32 {
    let d = q as i64 - kv as i64;
    let r = if d % 3 == -1 {
        score * 2.0
    } else if d < -5 {
        let t = -d;
        score - (t / 2) as f32
    } else {
        f32::max(score, -1.0).min(f32::MAX)
    };
    r + b as f32 + (i64::max(d, -3) as f32).exp2().ln()
});

const MASKS: &[(&str, &str)] = &[
    (DOC_CAUSAL, "DOC"),
    (LOCAL, "3, 1"),
    (LAMBDA, "2, 4"),
    (GLOBAL_LOCAL, "2, 3"),
    (BLOCK_DOC, "DOC, 4"),
    (BITS, "true"),
    (SHARE_Q, "DOC_I"),
];
const SCORE_FNS: &[(&str, &str)] = &[
    (SOFTCAP, "30.0f"),
    (ALIBI, "SLOPES"),
    (QUANT, ""),
    (SIGNED, ""),
];

fn doc_i() -> Vec<i32> {
    DOC.iter().map(|&d| d as i32).collect()
}

fn rust_mask(i: usize, b: u32, h: u32, q: u32, kv: u32) -> bool {
    let di = doc_i();
    match i {
        0 => doc_causal(q, kv, &DOC),
        1 => local(b, h, q as i64, kv as i64, 3, 1),
        2 => lambda_mask(q, kv, 2, 4),
        3 => global_local(q, kv, 2, 3),
        4 => block_causal_document(q, kv, &DOC, 4),
        5 => bits(h, q, kv, true),
        6 => share_question(q, kv, &di),
        _ => unreachable!(),
    }
}

fn rust_score(i: usize, s: f32, b: u32, h: u32, q: u32, kv: u32) -> f32 {
    match i {
        0 => softcap(s, q, kv, 30.0),
        1 => alibi(s, h, q, kv, &SLOPES),
        2 => quantized(s, q as i64, kv as i64),
        3 => signed_ops(s, b, q, kv),
        _ => unreachable!(),
    }
}

fn call_args(def: &UserFnDef, extra: &str) -> String {
    if extra.is_empty() {
        String::new()
    } else {
        let _ = def;
        format!(", {extra}")
    }
}

fn program(masks: &[UserFnDef], scores: &[UserFnDef]) -> String {
    let mut s = String::from(
        "#include <cstdio>\n#include <cmath>\n#include <cstring>\n\
         #define __device__\n#define __forceinline__ inline\n",
    );
    for d in masks.iter().chain(scores) {
        s.push_str(&d.cuda);
    }
    let doc: Vec<String> = DOC.iter().map(|d| format!("{d}u")).collect();
    let doc_i: Vec<String> = DOC.iter().map(|d| d.to_string()).collect();
    let slopes: Vec<String> = SLOPES.iter().map(|v| format!("{v:?}f")).collect();
    let scores_c: Vec<String> = SCORES
        .iter()
        .map(|v| {
            if v.is_nan() {
                "NAN".into()
            } else if v.is_infinite() {
                "INFINITY".into()
            } else {
                format!("{v:?}f")
            }
        })
        .collect();
    let _ = write!(
        s,
        "static const unsigned DOC[] = {{{}}};\nstatic const int DOC_I[] = {{{}}};\n\
         static const float SLOPES[] = {{{}}};\nstatic const float SCORES[] = {{{}}};\n\
         int main() {{\n",
        doc.join(", "),
        doc_i.join(", "),
        slopes.join(", "),
        scores_c.join(", ")
    );
    let grid = format!(
        "for (int b = 0; b < 2; b++) for (int h = 0; h < 3; h++) \
         for (long long q = 0; q < {N}; q++) for (long long kv = 0; kv < {N}; kv++)"
    );
    for (d, (_, extra)) in masks.iter().zip(MASKS) {
        let _ = writeln!(
            s,
            "  {grid} std::printf(\"%d\\n\", (int){}(b, h, q, kv{}));",
            d.name,
            call_args(d, extra)
        );
    }
    for (d, (_, extra)) in scores.iter().zip(SCORE_FNS) {
        let _ = writeln!(
            s,
            "  {grid} for (int si = 0; si < {}; si++) {{ float r = {}(SCORES[si], b, h, q, kv{}); \
             unsigned u; std::memcpy(&u, &r, 4); std::printf(\"%08x\\n\", u); }}",
            SCORES.len(),
            d.name,
            call_args(d, extra)
        );
    }
    s.push_str("  return 0;\n}\n");
    s
}

#[test]
fn emitted_cuda_matches_rust_bit_for_bit() {
    let masks: Vec<UserFnDef> = MASKS
        .iter()
        .map(|(src, _)| parse_mask_fn(src).unwrap_or_else(|e| panic!("{src}: {e:?}")))
        .collect();
    let scores: Vec<UserFnDef> = SCORE_FNS
        .iter()
        .map(|(src, _)| parse_score_fn(src).unwrap_or_else(|e| panic!("{src}: {e:?}")))
        .collect();
    let dir = tempdir();
    let cpp = dir.join("dsl_check.cpp");
    let exe = dir.join("dsl_check");
    std::fs::write(&cpp, program(&masks, &scores)).expect("write cpp");
    let out = Command::new("g++")
        .args([
            "-std=c++17",
            "-O1",
            "-ffp-contract=off",
            "-Wall",
            "-Wno-unused-parameter",
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
    let run = Command::new(&exe).output().expect("run");
    assert!(run.status.success());
    let text = String::from_utf8(run.stdout).expect("utf8");
    let mut lines = text.lines();
    let mut checked = 0usize;
    for (i, d) in masks.iter().enumerate() {
        let mut allowed = 0;
        for b in 0..2 {
            for h in 0..3 {
                for q in 0..N {
                    for kv in 0..N {
                        let c = lines.next().expect("line") == "1";
                        let r = rust_mask(i, b, h, q, kv);
                        assert_eq!(c, r, "{} at b={b} h={h} q={q} kv={kv}", d.name);
                        allowed += r as usize;
                        checked += 1;
                    }
                }
            }
        }
        // A mask that is constant over the grid would not test much.
        assert!(
            allowed > 0 && allowed < (2 * 3 * N * N) as usize,
            "{}",
            d.name
        );
    }
    for (i, d) in scores.iter().enumerate() {
        for b in 0..2 {
            for h in 0..3 {
                for q in 0..N {
                    for kv in 0..N {
                        for &s in &SCORES {
                            let bits =
                                u32::from_str_radix(lines.next().expect("line"), 16).unwrap();
                            let c = f32::from_bits(bits);
                            let r = rust_score(i, s, b, h, q, kv);
                            assert!(
                                c.to_bits() == r.to_bits() || (c.is_nan() && r.is_nan()),
                                "{} at s={s} b={b} h={h} q={q} kv={kv}: cuda {c} rust {r}",
                                d.name
                            );
                            checked += 1;
                        }
                    }
                }
            }
        }
    }
    assert!(lines.next().is_none());
    assert_eq!(
        checked,
        (MASKS.len() + SCORE_FNS.len() * SCORES.len()) * (6 * N * N) as usize
    );
}

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("attnforge-dsl-gxx-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}
