//! `attnforge run` with `Sq > Sk` and a score modification: variants.md section 0 defines
//! `Sq > Sk` only for full and causal without one, so it is an input error (exit 2) naming
//! `seq_q` and the fix, on every backend, and nothing is written.

mod cli_common;

use cli_common::*;
use half::f16;

#[test]
fn sq_gt_sk_with_a_score_modification_is_an_input_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (hq, sq, sk, dim) = (4u64, 40u64, 32u64, 64u64);
    let x = |n: u64, seed| -> Vec<f16> {
        values(n as usize, seed)
            .into_iter()
            .map(f16::from_f32)
            .collect()
    };
    write_npy(
        &d.join("q.npy"),
        &[1, hq, sq, dim],
        &x(hq * sq * dim, 3),
        npyz::Order::C,
    );
    write_npy(
        &d.join("k.npy"),
        &[1, hq, sk, dim],
        &x(hq * sk * dim, 4),
        npyz::Order::C,
    );
    write_npy(
        &d.join("v.npy"),
        &[1, hq, sk, dim],
        &x(hq * sk * dim, 5),
        npyz::Order::C,
    );
    let p = |n: &str| d.join(n).to_string_lossy().to_string();
    // causal + alibi and full + softcap (the example specs), on both backends.
    for spec in ["alibi.toml", "softcap.toml"] {
        for backend in ["reference", "sim"] {
            let o = run(&[
                "run",
                root().join("examples/specs").join(spec).to_str().unwrap(),
                "--backend",
                backend,
                "--q",
                &p("q.npy"),
                "--k",
                &p("k.npy"),
                "--v",
                &p("v.npy"),
                "--out",
                &p("out.npy"),
            ]);
            let t = text(&o);
            assert_eq!(o.status.code(), Some(2), "{spec} {backend}: {t}");
            for needle in ["seq_q", "seq_q <= seq_k", "fix"] {
                assert!(
                    t.contains(needle),
                    "{spec} {backend}: missing `{needle}` in {t}"
                );
            }
            assert!(
                !d.join("out.npy").exists(),
                "{spec} {backend}: output written"
            );
        }
    }
}
