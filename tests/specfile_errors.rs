//! Spec-file errors: each names the file, the field and the fix; through the library and
//! through the binary (exit code 2).

mod cli_common;

use attnforge::specfile::SpecFile;
use cli_common::*;

fn err(text: &str) -> attnforge::specfile::SpecFileError {
    SpecFile::parse(text, None).expect_err("must be rejected")
}

const HEAD: &str = "dtype = \"f16\"\nhead_dim = 64\n";

#[test]
fn every_example_spec_parses_and_validates() {
    for p in dynamic_example_specs() {
        let d = attnforge::specfile::DynSpecFile::load(&p).unwrap_or_else(|e| panic!("{e}"));
        // The same text through the kind-agnostic loader.
        match attnforge::specfile::AnySpecFile::load(&p).unwrap() {
            attnforge::specfile::AnySpecFile::Dynamic(x) => assert_eq!(x, d),
            _ => panic!("{}: not dynamic", p.display()),
        }
    }
    for p in static_example_specs() {
        let sf = SpecFile::load(&p).unwrap_or_else(|e| panic!("{e}"));
        sf.tile().unwrap();
        sf.run_params(sf.problem.seq_k, None)
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn field_errors() {
    let cases: &[(&str, &str, &str)] = &[
        ("dtype = \"f16\"\nhead_dim = 64\nmask = \"causal\"\nbogus = 1\n", "bogus", "unknown field"),
        ("dtype = \"f8\"\nhead_dim = 64\nmask = \"causal\"\n", "dtype", "f8"),
        ("dtype = \"f16\"\nhead_dim = 96\nmask = \"causal\"\n", "head_dim", "96"),
        ("dtype = \"f16\"\nhead_dim = 64\nmask = \"causal\n", "toml", "line 3"),
        ("dtype = \"f16\"\nhead_dim = 64\n", "mask", "missing field"),
        ("dtype = \"f16\"\nhead_dim = 64\nmask = \"causl\"\n", "mask", "unknown mask"),
        ("dtype = \"f16\"\nhead_dim = 64\nmask = \"local\"\n[params]\nwindow_left = 3\n", "params.window_right", "needs"),
        ("dtype = \"f16\"\nhead_dim = 64\nmask = \"causal\"\n[params]\nprefix_len = 3\n", "params.prefix_len", "not a parameter"),
        ("dtype = \"f16\"\nhead_dim = 64\nmask = \"causal\"\n[params]\nwindw = 3\n", "windw", "unknown field"),
        ("dtype = \"f16\"\nhead_dim = 64\nmask = \"full\"\nscore = \"softcap\"\n", "params.softcap", "cap"),
        ("dtype = \"f16\"\nhead_dim = 64\nmask = \"full\"\nscore = \"alibi\"\nscale = -1.0\n", "scale", "positive"),
        ("dtype = \"f16\"\nhead_dim = 64\nmask = \"full\"\n[tune]\ntile = { block_m = 40, block_n = 64, warps = 4, stages = 1 }\n", "tune.tile", "block_m"),
        ("dtype = \"f16\"\nhead_dim = 64\nmask = \"full\"\n[tune]\narch = \"sm_70\"\n", "tune.arch", "sm_70"),
        ("dtype = \"f16\"\nhead_dim = 64\nmask = \"causal\"\n[params]\ndoc = [0, 1]\n", "params.doc", "does not use"),
        ("dtype = \"f16\"\nhead_dim = 64\nmask = \"causal\"\nstats = { pool = 4 }\n", "stats.pool", "odd"),
        ("dtype = \"f16\"\nhead_dim = 64\nmask = \"causal\"\nstats = { top_k = 0 }\n", "stats.top_k", "positive"),
        ("dtype = \"f16\"\nhead_dim = 64\nmask = \"causal\"\nstats = { reduce = \"mean\" }\n", "stats", "expected `sum` or `max`"),
    ];
    for (text, field, msg) in cases {
        let e = err(text);
        assert_eq!(&e.field, field, "{text}\n=> {e}");
        assert!(e.message.contains(msg), "{text}\n=> {e}");
        assert!(!e.fix.is_empty());
    }
}

#[test]
fn user_function_errors() {
    let m =
        |src: &str, user: &str| format!("{HEAD}[mask.function]\nsource = '''\n{src}\n'''\n{user}");
    // A syntax / subset error with its line and column inside the source.
    let e = err(&m("fn near(q: i64, kv: i64) -> bool { loop {} }", ""));
    assert_eq!(e.field, "mask.function.source");
    assert!(e.message.contains("line 1, column"), "{e}");
    // i64 user parameters have no kernel argument kind.
    let e = err(&m(
        "fn near(q: i64, kv: i64, w: i64) -> bool { q - kv < w }",
        "[params.user]\nw = 3\n",
    ));
    assert!(
        e.message.contains("`w`") && e.message.contains("i64"),
        "{e}"
    );
    assert!(e.fix.contains("i32"), "{e}");
    // Reserved parameter names.
    let e = err(&m(
        "fn near(q: i64, kv: i64, score: i32) -> bool { kv <= q }",
        "[params.user]\nscore = 3\n",
    ));
    assert!(
        e.message.contains("score") && e.fix.contains("rename"),
        "{e}"
    );
    // Missing / unknown / mistyped user values.
    let src = "fn near(q: i64, kv: i64, w: i32) -> bool { q - kv < w as i64 }";
    let e = err(&m(src, ""));
    assert_eq!(e.field, "params.user.w");
    let e = err(&m(src, "[params.user]\nw = 3\nz = 1\n"));
    assert_eq!(e.field, "params.user.z");
    let e = err(&m(src, "[params.user]\nw = [1, 2]\n"));
    assert_eq!(e.field, "params.user.w");
    // A score function under [mask.function] is a type error of the translator.
    let e = err(&m(
        "fn near(score: f32, q: i64, kv: i64) -> f32 { score }",
        "",
    ));
    assert_eq!(e.field, "mask.function.source");
    // The same text as a score is fine.
    SpecFile::parse(
        &format!("{HEAD}mask = \"causal\"\n[score.function]\nsource = '''fn near(score: f32, q: i64, kv: i64) -> f32 {{ score * 0.5 }}'''\n"),
        None,
    )
    .unwrap();
}

#[test]
fn binary_reports_file_field_and_fix() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.toml");
    std::fs::write(
        &p,
        "dtype = \"f16\"\nhead_dim = 64\nmask = \"local\"\n[params]\nwindow_left = 3\n",
    )
    .unwrap();
    let o = run(&["check", p.to_str().unwrap()]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(
        t.contains("bad.toml") && t.contains("params.window_right") && t.contains("fix:"),
        "{t}"
    );
    std::fs::write(&p, "dtype = \"f16\"\nhead_dim = 64\nmask = [\n").unwrap();
    let o = run(&[
        "emit",
        p.to_str().unwrap(),
        "--no-ptxas",
        "--out-dir",
        dir.path().to_str().unwrap(),
    ]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(
        t.contains("bad.toml") && t.contains("TOML") || t.contains("toml"),
        "{t}"
    );
    // Nothing was emitted.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn host_twin_of_a_spec_file_mask_matches_its_definition() {
    // The reference side of a TOML user mask evaluates the same text: compare the closure
    // handed to RunParams with the formula written out here.
    let sf = SpecFile::load(&root().join("examples/specs/user_mask.toml")).unwrap();
    let rp = sf.run_params(sf.problem.seq_k, None).unwrap();
    let f = rp.host_mask.expect("host mask");
    let doc = |i: i64| i / 40;
    for q in 0..80 {
        for kv in 0..80 {
            let want = kv <= q && (q - kv) % 3 == 0 && doc(q) == doc(kv);
            assert_eq!(f(0, 0, q, kv), want, "q={q} kv={kv}");
        }
    }
}

/// LM-Infinite with a score modification: refused on `score` when the file is loaded, so
/// `emit` writes nothing and `check` fails before any kernel runs (both exit 2).
#[test]
fn lm_infinite_with_a_score_is_refused_on_load() {
    let spec = format!(
        "{HEAD}mask = \"lm_infinite\"\nscore = \"alibi\"\n[params]\nglobal_tokens = 4\nlocal_window = 24\ndist_limit = 40\n"
    );
    let e = err(&spec);
    assert_eq!(e.field, "score", "{e}");
    assert!(
        e.message.contains("lm_infinite") && e.fix.contains("remove `score`"),
        "{e}"
    );
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("lminf_alibi.toml");
    std::fs::write(&p, &spec).unwrap();
    let out = dir.path().join("out");
    for args in [
        vec![
            "emit",
            p.to_str().unwrap(),
            "--no-ptxas",
            "--out-dir",
            out.to_str().unwrap(),
        ],
        vec!["check", p.to_str().unwrap()],
    ] {
        let o = run(&args);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {t}");
        assert!(
            t.contains("field `score`") && t.contains("fix:"),
            "{args:?}: {t}"
        );
    }
    assert!(!out.exists() || std::fs::read_dir(&out).unwrap().count() == 0);
}

#[test]
fn stats_table_parses() {
    let t = "dtype = \"bf16\"\nhead_dim = 64\nmask = \"causal\"\nstats = { reduce = \"max\", pool = 7, top_k = 64 }\n";
    let sf = SpecFile::parse(t, None).unwrap_or_else(|e| panic!("{e}"));
    let st = sf.spec.stats.expect("stats");
    assert_eq!((st.pool, st.top_k), (Some(7), Some(64)));
    assert_eq!(st.reduce, attnforge::codegen::spec::StatReduce::Max);
    assert!(sf.spec.canonical_name().ends_with("_stats"));
}
