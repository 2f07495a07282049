//! `attnforge list`, `attnforge check`, usage errors and exit codes.

mod cli_common;

use cli_common::*;

#[test]
fn list_prints_every_catalog_name() {
    let o = run(&["list"]);
    assert!(o.status.success());
    let t = text(&o);
    for s in attnforge::codegen::catalog() {
        assert!(
            t.contains(&s.canonical_name()),
            "{} missing",
            s.canonical_name()
        );
    }
    let o = run(&["list", "--json"]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let names: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect();
    let want: Vec<String> = attnforge::codegen::catalog()
        .iter()
        .map(|s| s.canonical_name())
        .collect();
    assert_eq!(names, want);
    // The JSON spec round-trips into a KernelSpec with the same name.
    for e in v.as_array().unwrap() {
        let s: attnforge::codegen::spec::KernelSpec =
            serde_json::from_value(e["spec"].clone()).unwrap();
        assert_eq!(s.canonical_name(), e["name"].as_str().unwrap());
    }
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
}

#[test]
fn check_all_on_the_catalog_passes() {
    let o = run(&["check", "--all"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert_eq!(
        t.matches("PASS ").count(),
        attnforge::codegen::catalog().len(),
        "{t}"
    );
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
