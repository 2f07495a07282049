//! `attnforge run` end to end: every example spec on reference and sim backends (they must
//! agree within the oracle), and every kind of bad input (clear error, exit 2, nothing
//! written).

mod cli_common;

use std::path::Path;

use attnforge::codegen::spec::DType;
use attnforge::exec::{reference, Inputs};
use attnforge::reference::{
    assert_close, AttnOutput, Element, Precision, Shape4, Tensor4, Tolerance,
};
use attnforge::specfile::SpecFile;
use cli_common::*;
use half::{bf16, f16};

/// Naive same-precision output of the library (the oracle's N).
fn naive<T: Element>(sf: &SpecFile, q: &[f32], k: &[f32], v: &[f32]) -> AttnOutput {
    let p = sf.problem;
    let d = sf.spec.head_dim.get();
    let t = |h, s, x: &[f32]| {
        Tensor4::from_vec(
            Shape4::new(p.batch, h, s, d),
            x.iter().map(|&e| T::from_f32(e)).collect(),
        )
        .unwrap()
    };
    let x = Inputs::new(
        t(p.heads_q, p.seq_q, q),
        t(p.heads_kv, p.seq_k, k),
        t(p.heads_kv, p.seq_k, v),
    );
    let rp = sf.run_params(p.seq_k, None).unwrap();
    reference(&sf.spec, &x, &rp, Precision::Naive).unwrap()
}

#[test]
fn reference_and_sim_agree_on_every_example_spec() {
    // The dynamic families' example specs: tests/cli_dynamic.rs.
    let specs = static_example_specs();
    assert!(
        specs.len() >= 15,
        "examples/specs has {} files",
        specs.len()
    );
    for path in specs {
        let sf = SpecFile::load(&path).unwrap();
        let p = sf.problem;
        let d = sf.spec.head_dim.get();
        let dir = tempfile::tempdir().unwrap();
        let (nq, nk) = (
            p.batch * p.heads_q * p.seq_q * d,
            p.batch * p.heads_kv * p.seq_k * d,
        );
        let (q, k, v) = (values(nq, 1), values(nk, 2), values(nk, 3));
        // Round to the spec's dtype here, so that the CLI reads exactly these values.
        let (q, k, v) = match sf.spec.dtype {
            DType::F32 => (q, k, v),
            DType::F16 => {
                let r = |x: Vec<f32>| {
                    x.into_iter()
                        .map(|e| f16::from_f32(e).to_f32())
                        .collect::<Vec<_>>()
                };
                (r(q), r(k), r(v))
            }
            DType::Bf16 => {
                let r = |x: Vec<f32>| {
                    x.into_iter()
                        .map(|e| bf16::from_f32(e).to_f32())
                        .collect::<Vec<_>>()
                };
                (r(q), r(k), r(v))
            }
        };
        let qs = [p.batch, p.heads_q, p.seq_q, d].map(|x| x as u64);
        let ks = [p.batch, p.heads_kv, p.seq_k, d].map(|x| x as u64);
        for (name, shape, data) in [("q", qs, &q), ("k", ks, &k), ("v", ks, &v)] {
            let f = dir.path().join(format!("{name}.npy"));
            match sf.spec.dtype {
                DType::F16 => {
                    let h: Vec<f16> = data.iter().map(|&e| f16::from_f32(e)).collect();
                    write_npy(&f, &shape, &h, npyz::Order::C)
                }
                // bf16 travels as raw bits ('<u2') for q, as f32 for k and v: both forms.
                DType::Bf16 if name == "q" => {
                    let h: Vec<u16> = data.iter().map(|&e| bf16::from_f32(e).to_bits()).collect();
                    write_npy(&f, &shape, &h, npyz::Order::C)
                }
                _ => write_npy(&f, &shape, data, npyz::Order::C),
            }
        }
        for backend in ["reference", "sim"] {
            let dp = |n: &str| dir.path().join(n).to_string_lossy().to_string();
            let o = run(&[
                "run",
                path.to_str().unwrap(),
                "--backend",
                backend,
                "--q",
                &dp("q.npy"),
                "--k",
                &dp("k.npy"),
                "--v",
                &dp("v.npy"),
                "--out",
                &dp(&format!("o_{backend}.npy")),
                "--lse",
                &dp(&format!("lse_{backend}.npy")),
            ]);
            assert!(o.status.success(), "{}: {}", path.display(), text(&o));
        }
        let shape = Shape4::new(p.batch, p.heads_q, p.seq_q, d);
        let want = load_output(dir.path(), "reference", shape);
        let got = load_output(dir.path(), "sim", shape);
        let n = match sf.spec.dtype {
            DType::F32 => naive::<f32>(&sf, &q, &k, &v),
            DType::F16 => naive::<f16>(&sf, &q, &k, &v),
            DType::Bf16 => naive::<bf16>(&sf, &q, &k, &v),
        };
        // The reference written as f32 is within f32 rounding of the f64 reference, far
        // below the naive error of any kernel dtype.
        let tol = Tolerance::for_dtype(attnforge::exec::reference_dtype(sf.spec.dtype));
        if let Err(e) = assert_close(&got, &want, &n, tol.rtol, tol.atol) {
            panic!("{}: sim vs reference: {e}", path.display());
        }
    }
}

fn setup_f16(dir: &Path) {
    let q: Vec<f16> = values(2 * 32 * 64, 5)
        .into_iter()
        .map(f16::from_f32)
        .collect();
    write_npy(&dir.join("q.npy"), &[1, 2, 32, 64], &q, npyz::Order::C);
    write_npy(&dir.join("k.npy"), &[1, 2, 32, 64], &q, npyz::Order::C);
    write_npy(&dir.join("v.npy"), &[1, 2, 32, 64], &q, npyz::Order::C);
}

fn run_dense(dir: &Path, q: &str) -> std::process::Output {
    let p = |n: &str| dir.join(n).to_string_lossy().to_string();
    run(&[
        "run",
        root().join("examples/specs/dense.toml").to_str().unwrap(),
        "--backend",
        "reference",
        "--q",
        &p(q),
        "--k",
        &p("k.npy"),
        "--v",
        &p("v.npy"),
        "--out",
        &p("out.npy"),
        "--lse",
        &p("lse.npy"),
    ])
}

fn assert_input_error(o: &std::process::Output, dir: &Path, needles: &[&str]) {
    let t = text(o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    for n in needles {
        assert!(t.contains(n), "missing `{n}` in: {t}");
    }
    assert!(t.contains("fix:"), "no fix in: {t}");
    assert!(
        !dir.join("out.npy").exists() && !dir.join("lse.npy").exists(),
        "output written on failure"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let n = e.ok()?.file_name().to_string_lossy().to_string();
            n.contains(".tmp-").then_some(n)
        })
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[test]
fn bad_npy_inputs_are_reported_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup_f16(d);
    // Sanity: the good input works.
    let o = run_dense(d, "q.npy");
    assert!(o.status.success(), "{}", text(&o));
    std::fs::remove_file(d.join("out.npy")).unwrap();
    std::fs::remove_file(d.join("lse.npy")).unwrap();

    // Wrong dtype.
    let f: Vec<f32> = values(2 * 32 * 64, 5);
    write_npy(&d.join("q_f32.npy"), &[1, 2, 32, 64], &f, npyz::Order::C);
    assert_input_error(&run_dense(d, "q_f32.npy"), d, &["q_f32.npy", "<f4", "f16"]);
    // Wrong rank.
    let h: Vec<f16> = f.iter().map(|&e| f16::from_f32(e)).collect();
    write_npy(&d.join("q_3d.npy"), &[2, 32, 64], &h, npyz::Order::C);
    assert_input_error(&run_dense(d, "q_3d.npy"), d, &["q_3d.npy", "4-D"]);
    // Wrong head dimension.
    write_npy(&d.join("q_d32.npy"), &[1, 4, 32, 32], &h, npyz::Order::C);
    assert_input_error(&run_dense(d, "q_d32.npy"), d, &["head dimension 32"]);
    // Fortran order.
    write_npy(
        &d.join("q_f.npy"),
        &[1, 2, 32, 64],
        &h,
        npyz::Order::Fortran,
    );
    assert_input_error(&run_dense(d, "q_f.npy"), d, &["q_f.npy", "Fortran"]);
    // NaN / Inf.
    let mut bad = h.clone();
    bad[77] = f16::NAN;
    write_npy(&d.join("q_nan.npy"), &[1, 2, 32, 64], &bad, npyz::Order::C);
    assert_input_error(
        &run_dense(d, "q_nan.npy"),
        d,
        &["q_nan.npy", "element 77", "NaN"],
    );
    bad[77] = f16::INFINITY;
    write_npy(&d.join("q_inf.npy"), &[1, 2, 32, 64], &bad, npyz::Order::C);
    assert_input_error(&run_dense(d, "q_inf.npy"), d, &["q_inf.npy", "Inf"]);
    // Missing file.
    assert_input_error(&run_dense(d, "nope.npy"), d, &["nope.npy", "cannot open"]);
    // Not an npy file.
    std::fs::write(d.join("junk.npy"), b"hello").unwrap();
    assert_input_error(
        &run_dense(d, "junk.npy"),
        d,
        &["junk.npy", "not a valid .npy"],
    );
}

#[test]
fn document_ids_from_npy_and_their_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let q: Vec<f16> = values(2 * 80 * 64, 9)
        .into_iter()
        .map(f16::from_f32)
        .collect();
    for n in ["q", "k", "v"] {
        write_npy(
            &d.join(format!("{n}.npy")),
            &[1, 2, 80, 64],
            &q,
            npyz::Order::C,
        );
    }
    let ids: Vec<i32> = (0..80).map(|i| i / 30).collect();
    write_npy(&d.join("doc.npy"), &[80], &ids, npyz::Order::C);
    let f: Vec<f32> = ids.iter().map(|&i| i as f32).collect();
    write_npy(&d.join("doc_f.npy"), &[80], &f, npyz::Order::C);
    let p = |n: &str| d.join(n).to_string_lossy().to_string();
    let go = |doc: &str, out: &str| {
        run(&[
            "run",
            root()
                .join("examples/specs/document.toml")
                .to_str()
                .unwrap(),
            "--backend",
            "sim",
            "--q",
            &p("q.npy"),
            "--k",
            &p("k.npy"),
            "--v",
            &p("v.npy"),
            "--doc",
            &p(doc),
            "--out",
            &p(out),
        ])
    };
    let o = go("doc.npy", "o_doc.npy");
    assert!(o.status.success(), "{}", text(&o));
    assert!(d.join("o_doc.npy").exists());
    let o = go("doc_f.npy", "out.npy");
    assert_input_error(&o, d, &["doc_f.npy", "int32"]);
}
