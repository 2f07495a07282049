//! The data-dependent families (landmark, HAX, CCA, top-k, lse merge) through spec files and
//! the real binary: every example spec checks green on the simulator vs the f64 reference,
//! catalog names resolve, `emit` writes every kernel of the pipeline, `run` agrees with the
//! reference, and bad spec files report every error at once with field paths and fixes.

mod cli_common;

use std::collections::BTreeSet;
use std::path::Path;

use attnforge::codegen::dynamic::{DynamicSpec, LandmarkMode, Stage};
use attnforge::codegen::spec::DType;
use attnforge::kernels::exec_dynamic::{reference_output, DynInputs, HaxExtra};
use attnforge::reference::{
    assert_close, AttnOutput, Element, Precision, Shape4, Sharing, Tensor4, Tolerance,
};
use attnforge::specfile::{AnySpecFile, DynSpecFile, SpecFile};
use cli_common::*;
use half::{bf16, f16};

/// Kernel launches of a pipeline, in order (the split top-k attention runs twice).
fn launches(spec: &DynamicSpec) -> Vec<String> {
    if let Some(c) = attnforge::codegen::dynamic::RecycledConfig::of(spec) {
        return c.kernel_names().to_vec(); // the decode driver's three kernels
    }
    let mut v = Vec::new();
    for s in spec.stages() {
        let n = format!(
            "{}_d{}_{}",
            s.stem(),
            spec.head_dim().get(),
            spec.dtype().short()
        );
        if s == Stage::TopkAttnPart {
            v.push(n.clone());
        }
        v.push(n);
    }
    v
}

fn check_json(args: &[&str]) -> Vec<serde_json::Value> {
    let mut a = vec!["check", "--json"];
    a.extend_from_slice(args);
    let o = run(&a);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn every_dynamic_example_spec_checks_green_on_the_simulator() {
    let specs = dynamic_example_specs();
    let loaded: Vec<DynSpecFile> = specs
        .iter()
        .map(|p| DynSpecFile::load(p).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    // At least one example per family, landmark in both modes, top-k fused and split.
    let kinds: BTreeSet<String> = loaded.iter().map(|d| d.spec.family().into()).collect();
    for k in [
        "landmark_train",
        "landmark_retrieval",
        "hax",
        "cca",
        "topk",
        "topk_split",
        "recycled",
        "lse_merge",
        "longheads",
    ] {
        assert!(kinds.contains(k), "no example spec for {k}: {kinds:?}");
    }
    let args: Vec<&str> = specs.iter().map(|p| p.to_str().unwrap()).collect();
    let lines = check_json(&args);
    assert_eq!(lines.len(), specs.len());
    for (l, d) in lines.iter().zip(&loaded) {
        let name = d.spec.canonical_name();
        assert_eq!(l["kernel"], name.as_str(), "{l}");
        assert_eq!(l["pass"], true, "{l}");
        assert_eq!(l["dynamic"], true, "{l}");
        let ratio = l["out_ratio_to_naive"].as_f64().unwrap();
        assert!((0.0..=3.0).contains(&ratio), "{l}");
        assert!(l["lse_max_err"].as_f64().unwrap() >= 0.0, "{l}");
        let kernels: Vec<String> = l["kernels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap().to_string())
            .collect();
        let mut want = launches(&d.spec);
        if matches!(d.spec, DynamicSpec::Longheads { .. }) && d.problem.seq_q < d.problem.seq_k {
            want.remove(0); // decoding rows: the summaries are an input, no summary kernel
        }
        assert_eq!(kernels, want, "{name}: kernels run");
        // Work counters: the pipelines gather keys (the merge gathers none).
        let gathered = l["keys_gathered"].as_u64().unwrap();
        if matches!(d.spec, DynamicSpec::LseMerge { .. }) {
            assert_eq!(gathered, 0, "{l}");
        } else {
            let p = d.problem;
            let dense = (p.batch * p.heads_q * p.seq_q * p.seq_k) as u64;
            assert!(gathered > 0 && gathered <= dense, "{l}");
        }
    }
}

#[test]
fn dynamic_catalog_names_resolve_and_check() {
    let lines = check_json(&[
        "landmark_retrieval_d64_f16",
        "topk_split_d64_bf16",
        "hax_d64_bf16",
    ]);
    assert_eq!(lines.len(), 3);
    for l in &lines {
        assert_eq!(l["pass"], true, "{l}");
    }
    assert_eq!(lines[1]["kernel"], "topk_split_d64_bf16");
    // The table form names the pipeline and its work.
    let o = run(&["check", "landmark_train_d64_f16"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("PASS landmark_train_d64_f16") && t.contains("keys gathered"),
        "{t}"
    );
    // A misspelt dynamic name suggests the real ones.
    let o = run(&["check", "landmark_retrieve_d64_f16"]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(t.contains("similar:") && t.contains("landmark_"), "{t}");
}

#[test]
fn check_dynamic_on_cuda_without_a_gpu_fails_with_exit_1() {
    let spec = root().join("examples/specs/topk.toml");
    let o = run(&["check", spec.to_str().unwrap(), "--backend", "cuda"]);
    let t = text(&o);
    if o.status.success() {
        assert!(t.contains("PASS topk_d128_f16"), "{t}");
    } else {
        assert_eq!(o.status.code(), Some(1), "{t}");
        assert!(
            t.contains("FAIL topk_d128_f16") && t.contains("cuda"),
            "{t}"
        );
    }
}

// ---- spec-file errors -------------------------------------------------------------------

fn errors(text: &str) -> Vec<(String, String, String)> {
    let e = DynSpecFile::parse(text, None).expect_err("must be rejected");
    e.0.into_iter()
        .map(|x| {
            assert!(!x.fix.is_empty(), "{x}");
            (x.field, x.message, x.fix)
        })
        .collect()
}

fn fields(text: &str) -> Vec<String> {
    let mut v: Vec<String> = errors(text).into_iter().map(|e| e.0).collect();
    v.sort();
    v
}

#[test]
fn bad_dynamic_specs_report_every_error_at_once() {
    // Landmark: out-of-range values and an unknown parameter, together.
    let t = "family = \"landmark\"\nmode = \"retrieval\"\ndtype = \"f16\"\nhead_dim = 64\n\
             [params]\nmem_freq = 0\ntop_k = 0\nwindow = 3\n";
    assert_eq!(
        fields(t),
        ["params.mem_freq", "params.top_k", "params.window"]
    );
    let e = errors(t);
    let mf = e.iter().find(|x| x.0 == "params.mem_freq").unwrap();
    assert!(mf.1.contains("0 is outside 1..="), "{mf:?}");
    assert!(mf.2.contains("mem_freq >= 1"), "{mf:?}");
    let w = e.iter().find(|x| x.0 == "params.window").unwrap();
    assert!(w.2.contains("mem_freq, top_k"), "{w:?}");
    // HAX: hash_bits out of range, a mistyped budget, a missing one, an unknown top-level key,
    // a static-only key.
    let t = "family = \"hax\"\ndtype = \"bf16\"\nhead_dim = 64\nmask = \"causal\"\nbogus = 1\n\
             [params]\nk_lsh = \"32\"\nhash_bits = 13\n";
    assert_eq!(
        fields(t),
        [
            "bogus",
            "mask",
            "params.hash_bits",
            "params.k_ks",
            "params.k_lsh"
        ]
    );
    let e = errors(t);
    let hb = e.iter().find(|x| x.0 == "params.hash_bits").unwrap();
    assert!(hb.1.contains("13 is outside 1..=12"), "{hb:?}");
    let kl = e.iter().find(|x| x.0 == "params.k_lsh").unwrap();
    assert!(
        kl.1.contains("expected an integer, found a string"),
        "{kl:?}"
    );
    let m = e.iter().find(|x| x.0 == "mask").unwrap();
    assert!(m.2.contains("static"), "{m:?}");
    // Top-k: k = 0, an unknown mode, a bad head_dim, Sq > Sk, a negative value.
    let t = "family = \"topk\"\nmode = \"fast\"\ndtype = \"f16\"\nhead_dim = 96\n\
             [params]\nsink = -4\nrecent = 8\nk = 0\n[problem]\nseq_q = 90\nseq_k = 80\n";
    assert_eq!(
        fields(t),
        [
            "head_dim",
            "mode",
            "params.k",
            "params.sink",
            "problem.seq_q"
        ]
    );
    let e = errors(t);
    assert!(e.iter().any(|x| x.0 == "mode" && x.2.contains("split")));
    assert!(e
        .iter()
        .any(|x| x.0 == "params.sink" && x.1.contains("negative")));
    // CCA: group 0, GQA heads that do not divide, tune tile / arch, Sq != Sk.
    let t = "family = \"cca\"\ndtype = \"f32\"\nhead_dim = 128\nscale = -1.0\n\
             [params]\ngroup = 0\nwindow = 16\n\
             [problem]\nheads_q = 2\nheads_kv = 3\nseq_q = 40\nseq_k = 41\ncolour = 1\n\
             [tune]\narch = \"sm_70\"\ntile = { block_m = 64 }\n";
    assert_eq!(
        fields(t),
        [
            "params.group",
            "problem.colour",
            "problem.heads_kv",
            "problem.seq_q",
            "scale",
            "tune.arch",
            "tune.tile"
        ]
    );
    // Parameters that do not belong to the family or the mode.
    let t = "family = \"landmark\"\nmode = \"train\"\ndtype = \"f16\"\nhead_dim = 64\n\
             [params]\nmem_freq = 15\ntop_k = 2\n";
    let e = errors(t);
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].0, "params.top_k");
    assert!(e[0].2.contains("retrieval"), "{e:?}");
    let t =
        "family = \"lse_merge\"\ndtype = \"f16\"\nhead_dim = 64\nmode = \"split\"\nscale = 0.5\n\
             [params]\nk = 1\n[problem]\nhyperplane_sharing = \"shared\"\n";
    assert_eq!(
        fields(t),
        ["mode", "params.k", "problem.hyperplane_sharing", "scale"]
    );
    // Unknown family; missing mode and dtype.
    assert_eq!(
        fields("family = \"landmarks\"\ndtype = \"f16\"\nhead_dim = 64\n"),
        ["family"]
    );
    assert_eq!(
        fields("family = \"landmark\"\nhead_dim = 64\n[params]\nmem_freq = 3\n"),
        ["dtype", "mode"]
    );
    // A TOML syntax error is one error with its position.
    let e = errors("family = \"hax\"\ndtype = \n");
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].0, "toml");
    // The static loader points dynamic text at the right loader.
    let e = SpecFile::parse(
        "family = \"cca\"\ndtype = \"f16\"\nhead_dim = 64\n[params]\ngroup = 4\nwindow = 8\n",
        None,
    )
    .unwrap_err();
    assert_eq!(e.field, "family");
    assert!(e.fix.contains("AnySpecFile"), "{e}");
    // ... and the kind-agnostic one takes both.
    assert!(matches!(
        AnySpecFile::parse(
            "family = \"cca\"\ndtype = \"f16\"\nhead_dim = 64\n[params]\ngroup = 4\nwindow = 8\n",
            None
        ),
        Ok(AnySpecFile::Dynamic(_))
    ));
    assert!(matches!(
        AnySpecFile::parse("dtype = \"f16\"\nhead_dim = 64\nmask = \"causal\"\n", None),
        Ok(AnySpecFile::Static(_))
    ));
}

#[test]
fn parsed_examples_carry_their_parameters() {
    let d = DynSpecFile::load(&root().join("examples/specs/landmark_retrieval.toml")).unwrap();
    assert_eq!(
        d.spec,
        DynamicSpec::Landmark {
            dtype: DType::Bf16,
            head_dim: attnforge::codegen::spec::HeadDim::D64,
            mem_freq: 15,
            mode: LandmarkMode::Retrieval { top_k: 2 },
        }
    );
    assert_eq!((d.problem.seq_q, d.problem.seq_k), (32, 120));
    let h = DynSpecFile::load(&root().join("examples/specs/hax.toml")).unwrap();
    assert_eq!(h.hyperplane_sharing, Sharing::PerQueryHead);
    assert_eq!(h.ks_sharing, Sharing::PerKvHead);
    assert!(matches!(h.spec, DynamicSpec::Hax { hash_bits: 4, .. }));
    let t = DynSpecFile::load(&root().join("examples/specs/topk_split.toml")).unwrap();
    assert_eq!(t.spec.canonical_name(), "topk_split_d64_f32");
    assert_eq!(t.scale, Some(0.1));
}

#[test]
fn binary_reports_every_dynamic_error_with_file_field_and_fix() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad_hax.toml");
    std::fs::write(
        &p,
        "family = \"hax\"\ndtype = \"f16\"\nhead_dim = 64\n[params]\nk_lsh = 0\nk_ks = 0\nhash_bits = 0\n",
    )
    .unwrap();
    for cmd in ["check", "emit"] {
        let out = dir.path().join("out");
        let mut args = vec![cmd, p.to_str().unwrap()];
        if cmd == "emit" {
            args.extend(["--no-ptxas", "--out-dir", out.to_str().unwrap()]);
        }
        let o = run(&args);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(2), "{cmd}: {t}");
        assert!(t.contains("2 errors:"), "{t}");
        assert!(
            t.contains("bad_hax.toml: field `params.k_lsh`: k_lsh + k_ks is 0")
                && t.contains("bad_hax.toml: field `params.hash_bits`: 0 is outside 1..=12"),
            "{t}"
        );
        assert_eq!(t.matches("fix:").count(), 2, "{t}");
        assert!(!out.exists() || std::fs::read_dir(&out).unwrap().count() == 0);
    }
}

// ---- emit -------------------------------------------------------------------------------

#[test]
fn emit_writes_every_kernel_of_the_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let spec = root().join("examples/specs/topk_split.toml");
    let o = run(&[
        "emit",
        spec.to_str().unwrap(),
        "--out-dir",
        dir.path().to_str().unwrap(),
        "--no-ptxas",
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    let pj: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("topk_split_d64_f32.pipeline.json")).unwrap(),
    )
    .unwrap();
    let d = DynSpecFile::load(&spec).unwrap();
    let want: Vec<String> = d
        .spec
        .stages()
        .iter()
        .map(|s| format!("{}_d64_f32", s.stem()))
        .collect();
    let got: Vec<String> = pj["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["kernel"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, want);
    assert_eq!(pj["family"], "topk");
    assert_eq!(pj["mode"], "split");
    assert_eq!(pj["params"]["k"], 8);
    let back: DynamicSpec = serde_json::from_value(pj["spec"].clone()).unwrap();
    assert_eq!(back, d.spec);
    let p = d.problem;
    let prob = attnforge::codegen::shape::Shape {
        batch: p.batch,
        heads_q: p.heads_q,
        heads_kv: p.heads_kv,
        seq_q: p.seq_q,
        seq_k: p.seq_k,
    };
    for (k, stage) in want.iter().zip(d.spec.stages()) {
        let cu = std::fs::read_to_string(dir.path().join(format!("{k}.cu"))).unwrap();
        assert!(
            cu.contains("extern \"C\" __global__ void __launch_bounds__")
                && cu.contains(&format!(" {k}(")),
            "{k}"
        );
        let m: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join(format!("{k}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(m["pipeline"], "topk_split_d64_f32");
        assert!(m["ptxas"].is_null());
        let geo = stage.geometry(&d.spec, &prob);
        assert_eq!(
            m["problem_launch"]["grid"],
            serde_json::json!(geo.grid),
            "{k}"
        );
        assert_eq!(m["block_threads"], geo.block[0]);
    }
    assert!(t.contains("3 kernels"), "{t}");
}

#[test]
fn emit_dynamic_with_ptxas_report() {
    // Needs the CUDA toolchain (`cargo xtask setup`), as the static ptxas test.
    let dir = tempfile::tempdir().unwrap();
    let o = run(&[
        "emit",
        "landmark_retrieval_d128_bf16",
        "--arch",
        "sm_90",
        "--out-dir",
        dir.path().to_str().unwrap(),
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    for k in ["landmark_select_d128_bf16", "landmark_attn_d128_bf16"] {
        let m: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join(format!("{k}.json"))).unwrap(),
        )
        .unwrap();
        let regs = m["ptxas"]["registers"].as_u64().expect("registers");
        assert!(regs > 0 && regs <= 255, "{m}");
        assert_eq!(m["arch_name"], "sm_90");
    }
}

// ---- run --------------------------------------------------------------------------------

/// Exact inputs: integers in {-1, 0, 1} (`ints`) or multiples of 1/16.
fn exact(n: usize, seed: u64, ints: bool) -> Vec<f32> {
    values(n, seed)
        .into_iter()
        .map(|x| {
            if ints {
                ((x + 1.0) * 1.5).floor().clamp(0.0, 2.0) - 1.0
            } else {
                (x * 16.0).round() / 16.0
            }
        })
        .collect()
}

fn save(path: &Path, shape: [usize; 4], data: &[f32], dtype: DType) {
    let s = shape.map(|x| x as u64);
    match dtype {
        DType::F16 => {
            let h: Vec<f16> = data.iter().map(|&e| f16::from_f32(e)).collect();
            write_npy(path, &s, &h, npyz::Order::C)
        }
        DType::Bf16 => {
            let h: Vec<u16> = data.iter().map(|&e| bf16::from_f32(e).to_bits()).collect();
            write_npy(path, &s, &h, npyz::Order::C)
        }
        DType::F32 => write_npy(path, &s, data, npyz::Order::C),
    }
}

fn tensor<T: Element>(shape: [usize; 4], data: &[f32]) -> Tensor4<T> {
    Tensor4::from_vec(
        Shape4::new(shape[0], shape[1], shape[2], shape[3]),
        data.iter().map(|&x| T::from_f32(x)).collect(),
    )
    .unwrap()
}

struct Case {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    hp: Vec<f32>,
    ks: Vec<f32>,
    qs: [usize; 4],
    ks_: [usize; 4],
    hps: [usize; 4],
    kss: [usize; 4],
}

fn naive<T: Element>(d: &DynSpecFile, c: &Case) -> AttnOutput {
    let mut x = DynInputs::new(
        tensor::<T>(c.qs, &c.q),
        tensor::<T>(c.ks_, &c.k),
        tensor::<T>(c.ks_, &c.v),
    );
    x.scale = d.scale;
    if matches!(d.spec, DynamicSpec::Hax { .. }) {
        x.hax = Some(HaxExtra {
            hyperplanes: tensor::<f32>(c.hps, &c.hp),
            ks: tensor::<f32>(c.kss, &c.ks),
            hyperplane_sharing: d.hyperplane_sharing,
            ks_sharing: d.ks_sharing,
        });
    }
    reference_output(&d.spec, &x, Precision::Naive).unwrap()
}

#[test]
fn run_dynamic_specs_reference_and_sim_agree() {
    for name in [
        "landmark_retrieval.toml",
        "cca.toml",
        "topk.toml",
        "topk_split.toml",
        "hax.toml",
    ] {
        let path = root().join("examples/specs").join(name);
        let d = DynSpecFile::load(&path).unwrap();
        let p = d.problem;
        let dim = d.spec.head_dim().get();
        let is_hax = matches!(d.spec, DynamicSpec::Hax { .. });
        let ranking = matches!(
            d.spec,
            DynamicSpec::Landmark { .. } | DynamicSpec::Topk { .. }
        );
        let nb = match d.spec {
            DynamicSpec::Hax { hash_bits, .. } => hash_bits,
            _ => 1,
        };
        let heads = |s: Sharing| match s {
            Sharing::Shared => 1,
            Sharing::PerQueryHead => p.heads_q,
            Sharing::PerKvHead => p.heads_kv,
        };
        let qs = [p.batch, p.heads_q, p.seq_q, dim];
        let kvs = [p.batch, p.heads_kv, p.seq_k, dim];
        let hps = [1, heads(d.hyperplane_sharing), dim, nb];
        let kss = [p.batch, heads(d.ks_sharing), p.seq_k, 1];
        let n = |s: [usize; 4]| s.iter().product::<usize>();
        let c = Case {
            q: exact(n(qs), 1, ranking),
            k: exact(n(kvs), 2, ranking),
            v: exact(n(kvs), 3, false),
            hp: values(n(hps), 4)
                .into_iter()
                .map(|x| (x * 1000.0).round() / 1000.0)
                .collect(),
            ks: exact(n(kss), 5, true),
            qs,
            ks_: kvs,
            hps,
            kss,
        };
        let dir = tempfile::tempdir().unwrap();
        let dp = |f: &str| dir.path().join(f).to_string_lossy().to_string();
        let dt = d.spec.dtype();
        save(&dir.path().join("q.npy"), qs, &c.q, dt);
        save(&dir.path().join("k.npy"), kvs, &c.k, dt);
        save(&dir.path().join("v.npy"), kvs, &c.v, dt);
        save(&dir.path().join("hp.npy"), hps, &c.hp, DType::F32);
        save(&dir.path().join("ks.npy"), kss, &c.ks, DType::F32);
        for backend in ["reference", "sim"] {
            let (o, l) = (
                dp(&format!("o_{backend}.npy")),
                dp(&format!("lse_{backend}.npy")),
            );
            let (q, k, v, hp, ks) = (
                dp("q.npy"),
                dp("k.npy"),
                dp("v.npy"),
                dp("hp.npy"),
                dp("ks.npy"),
            );
            let mut args = vec![
                "run",
                path.to_str().unwrap(),
                "--backend",
                backend,
                "--q",
                &q,
                "--k",
                &k,
                "--v",
                &v,
                "--out",
                &o,
                "--lse",
                &l,
            ];
            if is_hax {
                args.extend(["--hyperplanes", &hp, "--ks", &ks]);
            }
            let out = run(&args);
            let t = text(&out);
            assert!(out.status.success(), "{name} {backend}: {t}");
            assert!(t.contains(&d.spec.canonical_name()), "{t}");
        }
        let shape = Shape4::new(p.batch, p.heads_q, p.seq_q, dim);
        let want = load_output(dir.path(), "reference", shape);
        let got = load_output(dir.path(), "sim", shape);
        let nv = match dt {
            DType::F32 => naive::<f32>(&d, &c),
            DType::F16 => naive::<f16>(&d, &c),
            DType::Bf16 => naive::<bf16>(&d, &c),
        };
        let tol = Tolerance::for_dtype(attnforge::exec::reference_dtype(dt));
        if let Err(e) = assert_close(&got, &want, &nv, tol.rtol, tol.atol) {
            panic!("{name}: sim vs reference: {e}");
        }
    }
}

#[test]
fn run_dynamic_input_errors() {
    let dir = tempfile::tempdir().unwrap();
    let dp = |f: &str| dir.path().join(f).to_string_lossy().to_string();
    let q = exact(2 * 16 * 64, 1, true);
    save(&dir.path().join("q.npy"), [1, 2, 16, 64], &q, DType::F16);
    save(
        &dir.path().join("hp.npy"),
        [1, 3, 64, 4],
        &q[..3 * 64 * 4],
        DType::F32,
    );
    save(
        &dir.path().join("ks.npy"),
        [1, 1, 16, 1],
        &q[..16],
        DType::F32,
    );
    let spec = |n: &str| {
        root()
            .join("examples/specs")
            .join(n)
            .to_string_lossy()
            .to_string()
    };
    let (qp, out) = (dp("q.npy"), dp("o.npy"));
    let base = |s: &str| {
        vec![
            "run".to_string(),
            s.to_string(),
            "--q".into(),
            qp.clone(),
            "--k".into(),
            qp.clone(),
            "--v".into(),
            qp.clone(),
            "--out".into(),
            out.clone(),
        ]
    };
    let go = |args: Vec<String>, needles: &[&str]| {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = run(&a);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(2), "{a:?}: {t}");
        for n in needles {
            assert!(t.contains(n), "{a:?}: `{n}` not in {t}");
        }
        assert!(!Path::new(&out).exists(), "nothing written");
    };
    // lse_merge takes partial results, not q/k/v: not supported by run, points at check.
    go(
        base(&spec("lse_merge.toml")),
        &["does not support lse_merge", "attnforge check"],
    );
    go(base("lse_merge_d64_f16"), &["does not support lse_merge"]);
    // HAX needs its extra inputs; a head extent that is neither 1, Hq nor Hkv is rejected.
    go(base(&spec("hax.toml")), &["--hyperplanes", "--ks"]);
    let mut a = base(&spec("hax.toml"));
    a.extend([
        "--hyperplanes".into(),
        dp("hp.npy"),
        "--ks".into(),
        dp("ks.npy"),
    ]);
    go(a, &["hp.npy", "3 heads"]);
    // HAX inputs on another family, document ids on a dynamic family.
    let mut a = base(&spec("landmark_train.toml"));
    a.extend(["--ks".into(), dp("ks.npy")]);
    go(a, &["HAX inputs"]);
    let mut a = base(&spec("landmark_train.toml"));
    a.extend(["--doc".into(), dp("ks.npy")]);
    go(a, &["--doc"]);
    // The spec's dtype is asserted.
    let mut a = base(&spec("landmark_train.toml"));
    a.extend(["--dtype".into(), "bf16".into()]);
    go(a, &["--dtype bf16", "f16"]);
}
