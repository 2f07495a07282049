//! `attnforge run --backward` end to end: a simulator run equals the f64 reference within
//! the tolerance rule of variants.md section 0 (per gradient), and every kind of bad input
//! is a clear error naming the flag, exit 2, nothing written.

mod cli_common;

use std::path::{Path, PathBuf};

use attnforge::exec::Inputs;
use attnforge::exec_backward::{compare_grads, reference_backward, KernelGrads, Upstream};
use attnforge::reference::{
    AttnGrads, AttnOutput, DType, Precision, ScoreParamGrads, Shape4, Tensor4, Tolerance,
};
use attnforge::specfile::SpecFile;
use cli_common::*;
use half::f16;

const SPEC: &str = "dtype = \"f16\"\nhead_dim = 64\ngqa = true\nmask = \"causal\"\nscore = \"softcap\"\n[params]\nsoftcap = 5.0\n";
const B: usize = 1;
const HQ: usize = 2;
const HKV: usize = 1;
const SQ: usize = 40;
const SK: usize = 48;
const D: usize = 64;

/// A temp folder with the spec, q, k, v, dO (f16) and dlse (f32); the values as read back.
struct Case {
    dir: tempfile::TempDir,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    dout: Vec<f32>,
    dlse: Vec<f32>,
}

fn round16(x: Vec<f32>) -> Vec<f32> {
    x.into_iter().map(|e| f16::from_f32(e).to_f32()).collect()
}

fn case() -> Case {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("s.toml"), SPEC).unwrap();
    let (nq, nk) = (B * HQ * SQ * D, B * HKV * SK * D);
    let c = Case {
        q: round16(values(nq, 1)),
        k: round16(values(nk, 2)),
        v: round16(values(nk, 3)),
        dout: round16(values(nq, 4)),
        dlse: values(B * HQ * SQ, 5),
        dir,
    };
    let qs = [B, HQ, SQ, D].map(|x| x as u64);
    let ks = [B, HKV, SK, D].map(|x| x as u64);
    for (name, shape, data) in [
        ("q", qs, &c.q),
        ("k", ks, &c.k),
        ("v", ks, &c.v),
        ("do", qs, &c.dout),
    ] {
        let h: Vec<f16> = data.iter().map(|&x| f16::from_f32(x)).collect();
        write_npy(&c.p(&format!("{name}.npy")), &shape, &h, npyz::Order::C);
    }
    let ls = [B, HQ, SQ].map(|x| x as u64);
    write_npy(&c.p("dlse.npy"), &ls, &c.dlse, npyz::Order::C);
    c
}

impl Case {
    fn p(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn s(&self, name: &str) -> String {
        self.p(name).display().to_string()
    }
    /// `run s.toml --backward` with the inputs, `extra` flags appended.
    fn run(&self, extra: &[&str]) -> std::process::Output {
        let mut args: Vec<String> = vec!["run".into(), self.s("s.toml"), "--backward".into()];
        for f in ["q", "k", "v"] {
            args.push(format!("--{f}"));
            args.push(self.s(&format!("{f}.npy")));
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&a)
    }
    /// The usual outputs with `tag`: dq, dk, dv, dparams, out, lse.
    fn outputs(&self, tag: &str) -> Vec<String> {
        let mut v = Vec::new();
        for f in ["dq", "dk", "dv", "dparams", "out", "lse"] {
            v.push(format!("--{f}"));
            v.push(self.s(&format!("{f}_{tag}.npy")));
        }
        v
    }
    fn files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        v.sort();
        v
    }
}

fn tensor(path: &Path, shape: Shape4) -> Tensor4<f64> {
    let (s, v) = read_f32(path);
    assert_eq!(
        s,
        [shape.batch, shape.heads, shape.seq, shape.dim].map(|x| x as u64)
    );
    Tensor4::from_vec(shape, v.into_iter().map(f64::from).collect()).unwrap()
}

/// The gradients a run wrote (`tag`), as the library's types.
fn load(c: &Case, tag: &str) -> (Tensor4<f64>, Tensor4<f64>, Tensor4<f64>, f64, AttnOutput) {
    let qs = Shape4::new(B, HQ, SQ, D);
    let ks = Shape4::new(B, HKV, SK, D);
    let (ps, p) = read_f32(&c.p(&format!("dparams_{tag}.npy")));
    assert_eq!(ps, [1], "softcap: one parameter gradient");
    let fw = load_output_named(c, tag, qs);
    (
        tensor(&c.p(&format!("dq_{tag}.npy")), qs),
        tensor(&c.p(&format!("dk_{tag}.npy")), ks),
        tensor(&c.p(&format!("dv_{tag}.npy")), ks),
        f64::from(p[0]),
        fw,
    )
}

fn load_output_named(c: &Case, tag: &str, s: Shape4) -> AttnOutput {
    let (_, o) = read_f32(&c.p(&format!("out_{tag}.npy")));
    let (ls, l) = read_f32(&c.p(&format!("lse_{tag}.npy")));
    assert_eq!(ls, [B, HQ, SQ].map(|x| x as u64));
    AttnOutput::from_kernel(s, &o, &l).unwrap()
}

#[test]
fn sim_backward_equals_the_reference_within_the_oracle() {
    let c = case();
    for tag in ["ref", "sim"] {
        let mut extra: Vec<String> = vec![
            "--do".into(),
            c.s("do.npy"),
            "--dlse".into(),
            c.s("dlse.npy"),
            "--backend".into(),
            if tag == "ref" { "reference" } else { "sim" }.into(),
        ];
        extra.extend(c.outputs(tag));
        let e: Vec<&str> = extra.iter().map(String::as_str).collect();
        let o = c.run(&e);
        assert!(o.status.success(), "{tag}: {}", text(&o));
        assert!(text(&o).contains("backward: wrote"), "{}", text(&o));
    }
    let (rdq, rdk, rdv, rp, rfw) = load(&c, "ref");
    let (kdq, kdk, kdv, kp, kfw) = load(&c, "sim");
    // The naive same-precision backward of the library is the error scale N.
    let sf = SpecFile::load(&c.p("s.toml")).unwrap();
    let t16 = |s: Shape4, v: &[f32]| {
        Tensor4::from_vec(s, v.iter().map(|&x| f16::from_f32(x)).collect()).unwrap()
    };
    let x = Inputs::new(
        t16(Shape4::new(B, HQ, SQ, D), &c.q),
        t16(Shape4::new(B, HKV, SK, D), &c.k),
        t16(Shape4::new(B, HKV, SK, D), &c.v),
    );
    let dout = t16(Shape4::new(B, HQ, SQ, D), &c.dout);
    let up = Upstream {
        dout: &dout,
        dlse: Some(&c.dlse),
    };
    let params = sf.run_params(SK, None).unwrap();
    let n = reference_backward(&sf.spec, &x, up, &params, Precision::Naive).unwrap();
    let r = AttnGrads {
        dq: rdq,
        dk: rdk,
        dv: rdv,
        score_params: ScoreParamGrads::Softcap(rp),
        forward: rfw,
    };
    let k = KernelGrads {
        dq: kdq,
        dk: kdk,
        dv: kdv,
        score_params: ScoreParamGrads::Softcap(kp),
        forward: kfw,
    };
    let checks = compare_grads(&k, &r, &n, Tolerance::for_dtype(DType::F16));
    assert_eq!(checks.len(), 4, "dq, dk, dv, score_params");
    for ch in &checks {
        assert!(ch.passed(), "{ch:?}");
    }
    // The gradients are not trivially zero (the comparison can fail).
    assert!(r.dq.data.iter().any(|x| x.abs() > 1e-3));
    assert!(r.dk.data.iter().any(|x| x.abs() > 1e-3));
    assert!(rp.abs() > 0.0);
}

/// Runs `extra` and expects exit 2 with every needle in the message, and no new file.
fn rejects(c: &Case, extra: &[&str], needles: &[&str]) {
    let before = c.files();
    let o = c.run(extra);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{extra:?}: {t}");
    for n in needles {
        assert!(t.contains(n), "{extra:?}: `{n}` not in: {t}");
    }
    assert!(!t.contains("panicked"), "{t}");
    assert_eq!(c.files(), before, "{extra:?} wrote a file");
}

#[test]
fn bad_backward_input_is_a_clear_error_and_writes_nothing() {
    let c = case();
    let outs = c.outputs("x");
    let o: Vec<&str> = outs.iter().map(String::as_str).collect();
    fn with<'a>(pre: &[&'a str], o: &[&'a str]) -> Vec<&'a str> {
        [pre, o].concat()
    }
    let (dq, dk) = (c.s("dq_x.npy"), c.s("dk_x.npy"));
    // dO of the wrong shape, of the wrong dtype, with a NaN.
    write_npy(
        &c.p("do_shape.npy"),
        &[1, 2, 39, 64],
        &vec![f16::from_f32(0.5); 2 * 39 * 64],
        npyz::Order::C,
    );
    let mut nan = vec![f16::from_f32(0.5); HQ * SQ * D];
    nan[7] = f16::NAN;
    write_npy(&c.p("do_nan.npy"), &[1, 2, 40, 64], &nan, npyz::Order::C);
    write_npy(
        &c.p("do_f32.npy"),
        &[1, 2, 40, 64],
        &vec![0.5f32; HQ * SQ * D],
        npyz::Order::C,
    );
    write_npy(
        &c.p("dlse_short.npy"),
        &[1, 2, 39],
        &vec![0.5f32; 78],
        npyz::Order::C,
    );
    let (ds, dn, df, dl) = (
        c.s("do_shape.npy"),
        c.s("do_nan.npy"),
        c.s("do_f32.npy"),
        c.s("dlse_short.npy"),
    );
    let dd = c.s("do.npy");
    rejects(&c, &with(&["--do", &ds], &o), &["--do", "shape", "fix:"]);
    rejects(&c, &with(&["--do", &df], &o), &["--do", "dtype", "fix:"]);
    rejects(&c, &with(&["--do", &dn], &o), &["--do", "NaN", "fix:"]);
    rejects(
        &c,
        &with(&["--do", &dd, "--dlse", &dl], &o),
        &["--dlse", "query rows", "fix:"],
    );
    // Missing outputs and dO: every one named.
    rejects(
        &c,
        &["--do", &dd, "--dq", &dq],
        &["--dk", "--dv", "fix: add"],
    );
    rejects(
        &c,
        &["--dq", &dq, "--dk", &dk, "--dv", &c.s("dv_x.npy")],
        &["--do"],
    );
    // Outputs that alias an input or each other.
    rejects(
        &c,
        &[
            "--do",
            &dd,
            "--dq",
            &dd,
            "--dk",
            &dk,
            "--dv",
            &c.s("dv_x.npy"),
        ],
        &["--dq", "the input --do"],
    );
    rejects(
        &c,
        &[
            "--do",
            &dd,
            "--dq",
            &dq,
            "--dk",
            &dq,
            "--dv",
            &c.s("dv_x.npy"),
        ],
        &["--dq", "--dk", "same file"],
    );
    // Backward flags without --backward (clap: exit 2).
    let o2 = run(&[
        "run",
        &c.s("s.toml"),
        "--q",
        &c.s("q.npy"),
        "--k",
        &c.s("k.npy"),
        "--v",
        &c.s("v.npy"),
        "--out",
        &c.s("o.npy"),
        "--do",
        &dd,
    ]);
    assert_eq!(o2.status.code(), Some(2), "{}", text(&o2));
    assert!(text(&o2).contains("--backward"), "{}", text(&o2));
}

#[test]
fn variants_without_backward_kernels_are_rejected_by_name() {
    let c = case();
    let outs = ["--dq", "dq.npy", "--dk", "dk.npy", "--dv", "dv.npy"];
    let (q, k, v, dd) = (c.s("q.npy"), c.s("k.npy"), c.s("v.npy"), c.s("do.npy"));
    let base = |spec: &str| -> Vec<String> {
        [
            "run",
            spec,
            "--backward",
            "--q",
            &q,
            "--k",
            &k,
            "--v",
            &v,
            "--do",
            &dd,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let dir = c.dir.path();
    let go = |spec: &str, extra: &[&str], needles: &[&str]| {
        let mut a = base(spec);
        a.extend(extra.iter().map(|s| match s.ends_with(".npy") {
            true => dir.join(s).display().to_string(),
            false => s.to_string(),
        }));
        let r: Vec<&str> = a.iter().map(String::as_str).collect();
        let before = c.files();
        let o = run(&r);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(2), "{spec}: {t}");
        for n in needles {
            assert!(t.contains(n), "{spec}: `{n}` not in {t}");
        }
        assert_eq!(c.files(), before);
    };
    // A data-dependent pipeline (no backward in variants.md section 12).
    go(
        "landmark_train_d64_f16",
        &outs,
        &["--backward", "data-dependent", "fix:"],
    );
    // --dparams on a variant without a learnable parameter.
    let plain = dir.join("plain.toml");
    std::fs::write(
        &plain,
        "dtype = \"f16\"\nhead_dim = 64\ngqa = true\nmask = \"causal\"\n",
    )
    .unwrap();
    let mut with_p = outs.to_vec();
    with_p.extend(["--dparams", "dp.npy"]);
    go(
        &plain.display().to_string(),
        &with_p,
        &["--dparams", "no learnable", "fix: remove --dparams"],
    );
}

#[test]
fn alibi_writes_one_slope_gradient_per_query_head_equal_to_the_library() {
    let c = case();
    let alibi =
        "dtype = \"f16\"\nhead_dim = 64\ngqa = true\nmask = \"causal\"\nscore = \"alibi\"\n";
    std::fs::write(c.p("s.toml"), alibi).unwrap();
    let (dd, dl, dp) = (c.s("do.npy"), c.s("dlse.npy"), c.s("dslopes.npy"));
    let (dq, dk, dv) = (c.s("dq.npy"), c.s("dk.npy"), c.s("dv.npy"));
    let o = c.run(&[
        "--do",
        &dd,
        "--dlse",
        &dl,
        "--dq",
        &dq,
        "--dk",
        &dk,
        "--dv",
        &dv,
        "--dparams",
        &dp,
        "--backend",
        "reference",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let (shape, slopes) = read_f32(&c.p("dslopes.npy"));
    assert_eq!(shape, [HQ as u64], "one gradient per query head");
    let sf = SpecFile::load(&c.p("s.toml")).unwrap();
    let t16 = |s: Shape4, v: &[f32]| {
        Tensor4::from_vec(s, v.iter().map(|&x| f16::from_f32(x)).collect()).unwrap()
    };
    let x = Inputs::new(
        t16(Shape4::new(B, HQ, SQ, D), &c.q),
        t16(Shape4::new(B, HKV, SK, D), &c.k),
        t16(Shape4::new(B, HKV, SK, D), &c.v),
    );
    let dout = t16(Shape4::new(B, HQ, SQ, D), &c.dout);
    let up = Upstream {
        dout: &dout,
        dlse: Some(&c.dlse),
    };
    let params = sf.run_params(SK, None).unwrap();
    let r = reference_backward(&sf.spec, &x, up, &params, Precision::F64).unwrap();
    let ScoreParamGrads::Alibi(want) = &r.score_params else {
        panic!("{:?}", r.score_params)
    };
    for (g, w) in slopes.iter().zip(want) {
        assert_eq!(*g, *w as f32);
    }
    let (_, dqv) = read_f32(&c.p("dq.npy"));
    assert!(dqv.iter().zip(&r.dq.data).all(|(a, b)| *a == *b as f32));
}
