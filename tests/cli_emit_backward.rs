//! `attnforge emit --backward` and spec files with `backward = true`: the three backward
//! kernels with metadata that matches their signatures, `check` of both directions, and the
//! variants without backward kernels rejected by the flag or key that asked for them.

mod cli_common;

use std::path::Path;

use attnforge::specfile::SpecFile;
use cli_common::*;

/// The parameter names of the `extern "C"` kernel in a `.cu`.
fn signature(cu: &str, name: &str) -> Vec<String> {
    let head = format!("{name}(");
    let at = cu.find(&head).expect("kernel signature") + head.len();
    let end = at + cu[at..].find(')').expect("closing parenthesis");
    cu[at..end]
        .split(',')
        .map(|p| p.split_whitespace().last().unwrap_or("").to_string())
        .collect()
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("metadata")).expect("json")
}

/// The three backward kernels of `name` (f16, d 64) in `dir`: metadata = signature, geometry
/// of its default backward tile, the tensor-core form's 64 x 64 with 4 warps.
fn assert_backward_files(dir: &Path, name: &str) {
    for part in ["delta", "dkdv", "dq"] {
        let k = format!("{name}_bwd_{part}");
        let cu = std::fs::read_to_string(dir.join(format!("{k}.cu"))).expect("backward .cu");
        let m = json(&dir.join(format!("{k}.json")));
        assert_eq!(m["kernel_name"], k.as_str());
        let sig: Vec<String> = m["signature"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(sig, signature(&cu, &k), "{k}: metadata vs .cu");
        let roles: Vec<&str> = m["grad_args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["role"].as_str().unwrap())
            .collect();
        assert_eq!(
            &roles[..8],
            [
                "d_out",
                "d_lse",
                "delta",
                "d_q",
                "d_k",
                "d_v",
                "d_param",
                "d_q_accum"
            ]
        );
        // the atomic-dQ accumulator is an argument of every backward kernel (null unless the
        // tile is atomic), after the gradients
        assert!(
            sig.ends_with(&[
                "dq".into(),
                "dk".into(),
                "dv".into(),
                "dparam".into(),
                "dq_accum".into()
            ]),
            "{sig:?}"
        );
        // tensor-core form: K, V, Q, dO tiles of 64 x 64 2-byte elements; dK/dV adds lse and
        // Delta of the query tile (2 x 64 f32), dQ the 4 warps' block sum (4 f32)
        let (smem, threads) = match part {
            "delta" => (0, 128),
            "dkdv" => (4 * 64 * 64 * 2 + 2 * 64 * 4, 128),
            _ => (4 * 64 * 64 * 2 + 4 * 4, 128),
        };
        if part != "delta" {
            assert!(
                cu.contains(&format!("af_bwd_{part}_tc<Tile>")),
                "{k}: tensor-core form"
            );
            assert_eq!(
                (m["block_m"].as_u64(), m["block_n"].as_u64()),
                (Some(64), Some(64))
            );
        }
        assert_eq!(m["dynamic_smem_bytes"], smem, "{k}");
        assert_eq!(m["block_threads"], threads, "{k}");
        let grid0 = m["grid"][0].as_str().unwrap();
        assert!(
            grid0.contains(if part == "dkdv" { "seq_k" } else { "seq_q" }),
            "{k}: {grid0}"
        );
    }
}

#[test]
fn emit_backward_writes_three_kernels_with_matching_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("build");
    let name = "flash_fwd_local_softcap_d64_f16";
    let o = run(&[
        "emit",
        name,
        "--backward",
        "--no-ptxas",
        "--out-dir",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(out.join(format!("{name}.cu")).exists());
    assert_backward_files(&out, name);
    // Without --backward: the forward only.
    let plain = dir.path().join("plain");
    let o = run(&[
        "emit",
        name,
        "--no-ptxas",
        "--out-dir",
        plain.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!plain.join(format!("{name}_bwd_dq.cu")).exists());
}

#[test]
fn emit_backward_of_an_uncovered_variant_names_the_flag_and_writes_nothing() {
    for name in ["landmark_train_d64_f16", "hax_d64_f16"] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("build");
        let o = run(&[
            "emit",
            name,
            "--backward",
            "--no-ptxas",
            "--out-dir",
            out.to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(2), "{name}: {}", text(&o));
        assert!(text(&o).contains("--backward"), "{}", text(&o));
        assert!(text(&o).contains("fix:"), "{}", text(&o));
        assert!(!out.exists(), "{name}: emit left {}", out.display());
    }
}

const SPEC: &str = "dtype = \"f16\"\nhead_dim = 64\ngqa = true\nmask = \"causal\"\nscore = \"softcap\"\nbackward = true\n[params]\nsoftcap = 5.0\n[problem]\nheads_q = 2\nheads_kv = 1\nseq_q = 40\nseq_k = 48\n";

#[test]
fn a_spec_file_with_backward_emits_and_checks_both_directions() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("s.toml");
    std::fs::write(&spec, SPEC).unwrap();
    let sf = SpecFile::load(&spec).unwrap();
    assert!(sf.backward);
    let name = sf.spec.canonical_name();
    let out = dir.path().join("build");
    let o = run(&[
        "emit",
        spec.to_str().unwrap(),
        "--no-ptxas",
        "--out-dir",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert_backward_files(&out, &name);
    let o = run(&["check", spec.to_str().unwrap()]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains(&format!("PASS {name}_bwd")), "{t}");
    assert!(t.contains("dq ") && t.contains("score_params"), "{t}");
    assert!(t.contains("2 kernels passed"), "{t}");
}

#[test]
fn backward_true_on_an_uncovered_variant_is_an_error_naming_the_key() {
    let user = "dtype = \"f32\"\nhead_dim = 64\nmask = \"causal\"\nbackward = true\n[score.function]\nsource = '''\nfn halve(score: f32, q: i64, kv: i64) -> f32 { score * 0.5 }\n'''\n";
    let what = "user score without derivatives";
    let e = SpecFile::parse(user, None).expect_err(what);
    assert_eq!(e.field, "backward", "{what}: {e}");
    assert!(e.to_string().contains("remove `backward = true`"), "{e}");
    // Without the key the same file loads.
    let ok = user.replace("backward = true\n", "");
    SpecFile::parse(&ok, None).unwrap_or_else(|e| panic!("{what}: {e}"));
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("user.toml");
    std::fs::write(&spec, user).unwrap();
    let o = run(&["check", spec.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("backward"), "{}", text(&o));
}
