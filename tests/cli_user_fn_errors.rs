//! A user function that fails on the host (integer division by zero, an index out of bounds)
//! or nests too deeply is a clear error with exit code 2 in `check` and `run`, naming the
//! function, the operation and where it happened; never a panic or a stack overflow.

mod cli_common;

use std::path::Path;

use cli_common::*;

const DIV_BY_PARAM: &str = r#"
dtype = "f32"
head_dim = 64
sparse_block = { q = 64, k = 64 }

[mask.function]
source = '''
fn every_dth(q: i64, kv: i64, d: i32) -> bool {
    kv <= q && (q - kv) % (d as i64) == 0
}
'''

[params.user]
d = 0

[problem]
batch = 1
heads_q = 2
heads_kv = 2
seq_q = 40
seq_k = 40
"#;

const SCORE_OUT_OF_BOUNDS: &str = r#"
dtype = "f32"
head_dim = 64
mask = "causal"

[score.function]
source = '''
fn head_bias(score: f32, h: u32, q: i64, kv: i64, bias: &[f32]) -> f32 {
    score + bias[h as usize]
}
'''

[params.user]
bias = [0.5]

[problem]
batch = 1
heads_q = 2
heads_kv = 2
seq_q = 40
seq_k = 40
"#;

fn assert_clean_input_error(o: &std::process::Output, needles: &[&str]) {
    let t = text(o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(!t.contains("panicked"), "panic: {t}");
    for n in needles {
        assert!(t.contains(n), "missing `{n}` in: {t}");
    }
    assert!(t.contains("fix:"), "no fix in: {t}");
}

fn run_reference(dir: &Path, spec: &Path) -> std::process::Output {
    let q: Vec<f32> = values(2 * 40 * 64, 3);
    for n in ["q.npy", "k.npy", "v.npy"] {
        write_npy(&dir.join(n), &[1, 2, 40, 64], &q, npyz::Order::C);
    }
    let p = |n: &str| dir.join(n).to_string_lossy().to_string();
    run(&[
        "run",
        spec.to_str().unwrap(),
        "--backend",
        "reference",
        "--q",
        &p("q.npy"),
        "--k",
        &p("k.npy"),
        "--v",
        &p("v.npy"),
        "--out",
        &p("out.npy"),
    ])
}

#[test]
fn division_by_zero_in_a_user_mask_is_an_input_error() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("div.toml");
    std::fs::write(&spec, DIV_BY_PARAM).unwrap();
    let needles = [
        "mask.function.source",
        "user mask function `every_dth` failed at b = 0, h = 0, q = 0, kv = 0",
        "line 2, column 16: attempt to calculate the remainder by zero (`0 % 0` in i64)",
    ];
    assert_clean_input_error(&run(&["check", spec.to_str().unwrap()]), &needles);
    assert_clean_input_error(&run_reference(dir.path(), &spec), &needles);
    assert!(!dir.path().join("out.npy").exists(), "output written");
}

#[test]
fn index_out_of_bounds_in_a_user_score_is_an_input_error() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("oob.toml");
    std::fs::write(&spec, SCORE_OUT_OF_BOUNDS).unwrap();
    let needles = [
        "score.function.source",
        "user score function `head_bias` failed at",
        "h = 1",
        "index out of bounds: `bias[1]` but `bias` has length 1",
    ];
    assert_clean_input_error(&run(&["check", spec.to_str().unwrap()]), &needles);
    assert_clean_input_error(&run_reference(dir.path(), &spec), &needles);
    assert!(!dir.path().join("out.npy").exists(), "output written");
}

#[test]
fn deeply_nested_user_functions_are_rejected_when_loading() {
    let dir = tempfile::tempdir().unwrap();
    for (_what, body) in [
        (
            "parentheses",
            format!("{}kv{} <= q", "(".repeat(5000), ")".repeat(5000)),
        ),
        ("sum", format!("kv{} <= q", " + 1".repeat(10_000))),
    ] {
        let spec = dir.path().join("deep.toml");
        std::fs::write(
            &spec,
            format!(
                "dtype = \"f32\"\nhead_dim = 64\n[mask.function]\nsource = '''\n\
                 fn deep(q: i64, kv: i64) -> bool {{ {body} }}\n'''\n"
            ),
        )
        .unwrap();
        let o = run(&["check", spec.to_str().unwrap()]);
        assert_clean_input_error(
            &o,
            &[
                "mask.function.source",
                "expression nested deeper than 512 levels",
            ],
        );
    }
}
