//! LongHeads through spec files and the real binary: a prefill `run` writes out, lse and the
//! chunk summaries (`--r-out`); decoding rows (`--r`) reproduce the prefill's last rows; bad
//! inputs and bad parameters exit 2 naming their field. (`attnforge check` of
//! examples/specs/longheads.toml runs in cli_dynamic.rs with every example spec, the catalog
//! entries in cli_list_check.rs.)

mod cli_common;

use std::path::Path;

use cli_common::*;

/// A small f32 LongHeads spec: w = 16, M = 4, B = 32, D = 64.
fn spec_text(m: usize, begin: usize) -> String {
    format!(
        "family = \"longheads\"\ndtype = \"f32\"\nhead_dim = 64\n[params]\nchunk = 16\nchunks_per_query = {m}\nbegin = {begin}\ntheta = 10000\n"
    )
}

fn write(dir: &Path, name: &str, shape: [u64; 4], data: &[f32]) -> String {
    let p = dir.join(name);
    write_npy(&p, &shape, data, npyz::Order::C);
    p.to_str().unwrap().to_string()
}

const S: usize = 70;
const D: usize = 64;

/// q [1, 2, S, D], k and v [1, 1, S, D] (GQA), the spec file; returns their paths.
fn inputs(dir: &Path, m: usize, begin: usize) -> (String, String, String, String) {
    let spec = dir.join("lh.toml");
    std::fs::write(&spec, spec_text(m, begin)).unwrap();
    let q = write(
        dir,
        "q.npy",
        [1, 2, S as u64, D as u64],
        &values(2 * S * D, 1),
    );
    let k = write(dir, "k.npy", [1, 1, S as u64, D as u64], &values(S * D, 2));
    let v = write(dir, "v.npy", [1, 1, S as u64, D as u64], &values(S * D, 3));
    (spec.to_str().unwrap().to_string(), q, k, v)
}

#[test]
fn prefill_writes_r_and_decoding_rows_reproduce_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (spec, q, k, v) = inputs(d, 4, 32);
    let at = |n: &str| d.join(n).to_str().unwrap().to_string();
    let o = run(&[
        "run",
        &spec,
        "--q",
        &q,
        "--k",
        &k,
        "--v",
        &v,
        "--out",
        &at("o_p.npy"),
        "--lse",
        &at("lse_p.npy"),
        "--r-out",
        &at("r.npy"),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let (rs, r) = read_f32(&d.join("r.npy"));
    assert_eq!(rs, [1, 2, (S / 16) as u64, D as u64]);
    assert!(r.iter().all(|x| x.is_finite()));
    // Decoding: the last 3 rows as queries, the prefill's summaries as --r.
    let qv = values(2 * S * D, 1);
    let last: Vec<f32> = (0..2)
        .flat_map(|h| qv[(h * S + S - 3) * D..(h + 1) * S * D].to_vec())
        .collect();
    let qd = write(d, "qd.npy", [1, 2, 3, D as u64], &last);
    let o = run(&[
        "run",
        &spec,
        "--q",
        &qd,
        "--k",
        &k,
        "--v",
        &v,
        "--r",
        &at("r.npy"),
        "--out",
        &at("o_d.npy"),
        "--lse",
        &at("lse_d.npy"),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let (_, op) = read_f32(&d.join("o_p.npy"));
    let (_, od) = read_f32(&d.join("o_d.npy"));
    let (_, lp) = read_f32(&d.join("lse_p.npy"));
    let (_, ld) = read_f32(&d.join("lse_d.npy"));
    for h in 0..2 {
        for i in 0..3 {
            let (pr, dr) = (h * S + S - 3 + i, h * 3 + i);
            assert_eq!(lp[pr], ld[dr], "lse of head {h} row {i}");
            assert_eq!(
                op[pr * D..(pr + 1) * D],
                od[dr * D..(dr + 1) * D],
                "out of head {h} row {i}"
            );
        }
    }
    // The reference backend agrees on the summaries' shape.
    let o = run(&[
        "run",
        &spec,
        "--q",
        &q,
        "--k",
        &k,
        "--v",
        &v,
        "--out",
        &at("o_ref.npy"),
        "--r-out",
        &at("r_ref.npy"),
        "--backend",
        "reference",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(read_f32(&d.join("r_ref.npy")).0, rs);
}

fn fails_naming(args: &[&str], field: &str) {
    let o = run(args);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {t}");
    assert!(t.contains(field), "`{field}` not named: {t}");
}

#[test]
fn bad_inputs_exit_2_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (spec, q, k, v) = inputs(d, 4, 32);
    let out = d.join("o.npy").to_str().unwrap().to_string();
    let qd = write(d, "qd.npy", [1, 2, 1, D as u64], &values(2 * D, 9));
    // decoding rows without summaries
    fails_naming(
        &[
            "run", &spec, "--q", &qd, "--k", &k, "--v", &v, "--out", &out,
        ],
        "--r",
    );
    // summaries of the wrong shape
    let rbad = write(d, "rbad.npy", [1, 1, 4, D as u64], &values(4 * D, 4));
    fails_naming(
        &[
            "run", &spec, "--q", &qd, "--k", &k, "--v", &v, "--r", &rbad, "--out", &out,
        ],
        "r.shape",
    );
    // Dv != D
    let v32 = write(d, "v32.npy", [1, 1, S as u64, 32], &values(S * 32, 5));
    fails_naming(
        &[
            "run", &spec, "--q", &q, "--k", &k, "--v", &v32, "--out", &out,
        ],
        "v.dim",
    );
    // parameters
    for (m, begin, field) in [(2, 32, "params.chunks_per_query"), (4, 40, "params.begin")] {
        let bad = d.join(format!("bad_{m}_{begin}.toml"));
        std::fs::write(&bad, spec_text(m, begin)).unwrap();
        let bad = bad.to_str().unwrap();
        fails_naming(
            &["run", bad, "--q", &q, "--k", &k, "--v", &v, "--out", &out],
            field,
        );
        fails_naming(&["check", bad], field);
    }
    // --r-out is LongHeads' only
    let topk = root().join("examples/specs/topk.toml");
    fails_naming(
        &[
            "run",
            topk.to_str().unwrap(),
            "--q",
            &q,
            "--k",
            &k,
            "--v",
            &v,
            "--out",
            &out,
            "--r-out",
            &d.join("r.npy").to_string_lossy(),
        ],
        "--r-out",
    );
}
