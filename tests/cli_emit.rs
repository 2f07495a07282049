//! `attnforge emit`: the `.cu` signature matches the metadata JSON's argument list, the
//! ptxas report is present, and the Python example compiles.

mod cli_common;

use cli_common::*;

/// `(name, c_type)` of each parameter of `extern "C" __global__ void NAME(...)`.
fn signature(cu: &str, name: &str) -> Vec<(String, String)> {
    let head = "extern \"C\" __global__";
    let start = cu.find(head).expect("extern C kernel");
    let rest = &cu[start..];
    let open = rest.find(&format!("{name}(")).expect("kernel name") + name.len() + 1;
    let close = rest[open..].find(')').expect(")") + open;
    rest[open..close]
        .split(',')
        .map(|p| {
            let p = p.split_whitespace().collect::<Vec<_>>().join(" ");
            let p = p.replace("__restrict__ ", "").replace(" __restrict__", "");
            let cut = p.rfind([' ', '*']).expect("type name");
            (p[cut + 1..].to_string(), p[..=cut].trim().to_string())
        })
        .collect()
}

/// Emit `spec` and compare every kernel's `.cu` signature with its JSON metadata; returns
/// the metadata of every kernel (one for a static spec, one per stage for a dynamic one).
fn emit_and_compare_all(spec: &str, extra: &[&str]) -> Vec<serde_json::Value> {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["emit", spec, "--out-dir", dir.path().to_str().unwrap()];
    args.extend_from_slice(extra);
    let o = run(&args);
    assert!(o.status.success(), "{}", text(&o));
    let mut jsons: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "json")
                && !p.to_string_lossy().ends_with(".pipeline.json")
        })
        .collect();
    jsons.sort();
    assert!(!jsons.is_empty(), "{spec}: no json written");
    let mut metas = Vec::new();
    for json in jsons {
        let meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        let name = meta["kernel_name"].as_str().unwrap().to_string();
        let cu = std::fs::read_to_string(dir.path().join(format!("{name}.cu"))).unwrap();
        let sig = signature(&cu, &name);
        let js: Vec<(String, String)> = meta["signature"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["name"].as_str().unwrap().to_string(),
                    a["c_type"].as_str().unwrap().replace(' ', ""),
                )
            })
            .collect();
        let sig_norm: Vec<(String, String)> = sig
            .into_iter()
            .map(|(n, t)| (n, t.replace(' ', "")))
            .collect();
        assert_eq!(sig_norm, js, "{spec} / {name}: .cu signature vs metadata");
        assert_eq!(meta["args"].as_array().unwrap().len(), js.len());
        assert_eq!(meta["block_threads"].as_u64().unwrap() % 32, 0);
        metas.push(meta);
    }
    metas
}

fn emit_and_compare(spec: &str, extra: &[&str]) -> serde_json::Value {
    let mut m = emit_and_compare_all(spec, extra);
    assert_eq!(m.len(), 1, "{spec}: one kernel expected");
    m.remove(0)
}

#[test]
fn emitted_signature_matches_metadata_for_every_example_spec() {
    for p in example_specs() {
        for meta in emit_and_compare_all(p.to_str().unwrap(), &["--no-ptxas"]) {
            assert!(meta["ptxas"].is_null());
        }
    }
}

#[test]
fn emit_with_ptxas_report_for_sm_90() {
    // Needs the CUDA toolchain (`cargo xtask setup`, done by `cargo xtask test`).
    let meta = emit_and_compare("flash_fwd_causal_d128_bf16", &["--arch", "sm_90"]);
    assert_eq!(meta["arch_name"], "sm_90");
    let regs = meta["ptxas"]["registers"]
        .as_u64()
        .expect("ptxas registers");
    assert!(regs > 0 && regs <= 255, "{meta}");
    assert_eq!(meta["ptxas"]["arch"], "sm_90");
}

#[test]
fn python_example_compiles() {
    let py = root().join("examples/python/run_cupy.py");
    assert!(py.exists());
    let o = std::process::Command::new("python3")
        .args(["-m", "py_compile", py.to_str().unwrap()])
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env(
            "PYTHONPYCACHEPREFIX",
            std::env::temp_dir().join("attnforge-pycache"),
        )
        .output()
        .expect("python3");
    assert!(o.status.success(), "{}", text(&o));
}
