//! `attnforge list`, `attnforge check`, usage errors and exit codes.

mod cli_common;

use cli_common::*;

#[test]
fn list_prints_every_catalog_name() {
    use attnforge::codegen::dynamic::dynamic_catalog;
    let o = run(&["list"]);
    assert!(o.status.success());
    let t = text(&o);
    let statics: Vec<_> = attnforge::codegen::catalog()
        .into_iter()
        .chain(attnforge::codegen::catalog::serving_catalog())
        .collect();
    for s in &statics {
        assert!(
            t.contains(&s.canonical_name()),
            "{} missing",
            s.canonical_name()
        );
    }
    // The dynamic pipelines, with their family column.
    let fam = |s: &attnforge::codegen::dynamic::DynamicSpec| {
        serde_json::to_value(s).unwrap()["family"]
            .as_str()
            .unwrap()
            .to_string()
    };
    for s in dynamic_catalog() {
        let line = t
            .lines()
            .find(|l| l.split_whitespace().next() == Some(s.canonical_name().as_str()))
            .unwrap_or_else(|| panic!("{} missing:\n{t}", s.canonical_name()));
        assert_eq!(
            line.split_whitespace().nth(1),
            Some(fam(&s).as_str()),
            "{line}"
        );
    }
    assert!(
        t.contains(&format!(
            "{} kernels, {} dynamic pipelines",
            statics.len(),
            dynamic_catalog().len()
        )),
        "{t}"
    );
    let o = run(&["list", "--json"]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let names: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect();
    let want: Vec<String> = statics
        .iter()
        .map(|s| s.canonical_name())
        .chain(dynamic_catalog().iter().map(|s| s.canonical_name()))
        .collect();
    assert_eq!(names, want);
    // The JSON spec round-trips into a KernelSpec / DynamicSpec with the same name.
    for e in v.as_array().unwrap() {
        let name = e["name"].as_str().unwrap();
        match e["kind"].as_str().unwrap() {
            "static" => {
                let s: attnforge::codegen::spec::KernelSpec =
                    serde_json::from_value(e["spec"].clone()).unwrap();
                assert_eq!(s.canonical_name(), name);
                assert_eq!(e["family"], "flash_fwd");
                assert_eq!(e["layout"], s.layout.tag());
            }
            "dynamic" => {
                let s: attnforge::codegen::dynamic::DynamicSpec =
                    serde_json::from_value(e["spec"].clone()).unwrap();
                assert_eq!(s.canonical_name(), name);
                assert_eq!(e["family"].as_str().unwrap(), fam(&s));
                assert_eq!(
                    e["kernels"].as_array().unwrap().len(),
                    s.stages().len(),
                    "{e}"
                );
            }
            k => panic!("kind {k}"),
        }
    }
    // --family filters.
    let o = run(&["list", "--family", "landmark"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("landmark_retrieval_d128_bf16") && !t.contains("flash_fwd_"),
        "{t}"
    );
    assert!(t.contains("0 kernels, 8 dynamic pipelines"), "{t}");
    let o = run(&["list", "--family", "landmarks"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("lse_merge"));
}

#[test]
fn check_catalog_names_and_spec_files() {
    let o = run(&[
        "check",
        "flash_fwd_causal_d64_f16",
        "flash_fwd_mask_dilated_d64_f16",
        root().join("examples/specs/local.toml").to_str().unwrap(),
        "--json",
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{t}");
    for l in &lines {
        assert_eq!(l["pass"], true, "{l}");
        assert!(l["out_max_err"].as_f64().unwrap() >= 0.0);
        assert!(l["out_ratio_to_naive"].as_f64().unwrap() <= 3.0, "{l}");
    }
    assert!(lines[0]["kernel"]
        .as_str()
        .unwrap()
        .starts_with("flash_fwd_causal_d64_f16__"));
    // A catalog entry runs its problem suite (docs/correctness.md), a spec file its own
    // problem.
    assert!(lines[0]["problems"].as_u64().unwrap() >= 6, "{}", lines[0]);
    assert_eq!(lines[2]["problems"], 1, "{}", lines[2]);
}

#[test]
fn check_all_on_the_catalog_passes() {
    let o = run(&["check", "--all"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    // Static kernels and dynamic pipelines.
    assert_eq!(
        t.matches("PASS ").count(),
        attnforge::codegen::catalog().len() + attnforge::codegen::dynamic::dynamic_catalog().len(),
        "{t}"
    );
    for s in attnforge::codegen::dynamic::dynamic_catalog() {
        assert!(
            t.contains(&format!("PASS {} ", s.canonical_name())),
            "{}: {t}",
            s.canonical_name()
        );
    }
}

#[test]
fn check_cuda_without_a_gpu_fails_with_exit_1() {
    let o = run(&["check", "flash_fwd_causal_d64_f16", "--backend", "cuda"]);
    let t = text(&o);
    if o.status.success() {
        // A machine with a GPU: the kernel passed there.
        assert!(t.contains("PASS"), "{t}");
    } else {
        assert_eq!(o.status.code(), Some(1), "{t}");
        assert!(t.contains("FAIL") && t.contains("cuda"), "{t}");
    }
}

#[test]
fn usage_errors_exit_2_with_a_fix() {
    let o = run(&["check", "flash_fwd_causal_d65_f16"]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(
        t.contains("neither a spec file nor a catalog name") && t.contains("attnforge list"),
        "{t}"
    );
    let o = run(&["check"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("--all"));
    let o = run(&["frobnicate"]);
    assert_eq!(o.status.code(), Some(2));
    let o = run(&["emit", "flash_fwd_causal_d64_f16", "--arch", "sm_70"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("sm_80 or sm_90"));
    let o = run(&["check", "/nonexistent/spec.toml"]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(
        t.contains("/nonexistent/spec.toml") && t.contains("cannot read"),
        "{t}"
    );
}

#[test]
fn help_has_examples() {
    for sub in ["list", "emit", "check", "run"] {
        let o = run(&[sub, "--help"]);
        assert!(o.status.success());
        assert!(text(&o).contains("Examples:"), "{sub}");
    }
}

/// `check --json` fingerprints (used by `cargo xtask mutants` to tell equivalent mutants):
/// the same kernel on the same inputs gives the same digest, other inputs another one.
#[test]
fn check_json_fingerprint_is_stable_and_input_sensitive() {
    let fp = |seed: &str| {
        let o = run(&[
            "check",
            "flash_fwd_causal_d64_f16",
            "--json",
            "--fail-fast",
            "--seed",
            seed,
        ]);
        assert!(o.status.success(), "{}", text(&o));
        let l: serde_json::Value =
            serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim()).unwrap();
        let f = l["fingerprint"].as_str().unwrap().to_string();
        assert!(
            f.len() == 16 && f.chars().all(|c| c.is_ascii_hexdigit()),
            "{f}"
        );
        f
    };
    let a = fp("1");
    assert_eq!(a, fp("1"));
    assert_ne!(a, fp("2"));
}

/// The two masks of variants.md section 11 through spec files, like every built-in mask:
/// they pass on the simulator, and a bad parameter is exit 2 naming the field and the fix.
#[test]
fn section_11_masks_through_spec_files() {
    let spec = |name: &str| root().join(format!("examples/specs/{name}.toml"));
    let o = run(&[
        "check",
        spec("chunked_causal").to_str().unwrap(),
        spec("dilated_causal").to_str().unwrap(),
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("PASS flash_fwd_chunked_causal_d128_bf16"), "{t}");
    assert!(t.contains("PASS flash_fwd_dilated_causal_d64_f16"), "{t}");

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    let body = std::fs::read_to_string(spec("dilated_causal")).unwrap();
    std::fs::write(&bad, body.replace("dilation = 3", "dilation = 0")).unwrap();
    let o = run(&["check", bad.to_str().unwrap()]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(t.contains("mask.dilated_causal.dilation"), "{t}");
    assert!(t.contains("fix:"), "{t}");
}
