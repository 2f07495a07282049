//! Recycled Attention (variants.md section 16) through the real binary: `run` of the example
//! spec on q, q_raw, k, v (.npy) prints every step's kind and keys read and writes out/lse that
//! agree with the reference backend (oracle of section 0); bad inputs exit 2 naming the field.

mod cli_common;

use std::path::Path;

use attnforge::codegen::spec::DType;
use attnforge::exec_recycled::{reference_recycled, RecycledInputs};
use attnforge::reference::{assert_close, AttnOutput, Precision, Shape4, Tensor4, Tolerance};
use attnforge::specfile::DynSpecFile;
use cli_common::*;
use half::f16;

attnforge::kernel! {
    /// Recycled Attention with the default K (1/8 of the cache at step 0).
    pub RecycledDefault { family: recycled(stride: 10, threshold_milli: 850, pool: 7), dtype: f16, head_dim: 64 }
    /// With K = 6 and a stride of 3.
    pub RecycledK6 {
        family: recycled(recycle_size: 6, stride: 3, threshold_milli: 900, pool: 3),
        dtype: f32,
        head_dim: 64,
    }
}

/// The `kernel!` declarations: spec, name, and the typed driver API on the simulator.
#[test]
fn kernel_macro_declares_the_family() {
    use attnforge::codegen::dynamic::DynamicSpec;
    use attnforge::codegen::spec::HeadDim;
    assert_eq!(RecycledDefault::name(), "recycled_d64_f16");
    assert_eq!(
        RecycledK6::spec(),
        DynamicSpec::Recycled {
            dtype: DType::F32,
            head_dim: HeadDim::D64,
            recycle_size: Some(6),
            stride: 3,
            threshold_milli: 900,
            pool: 3,
        }
    );
    let t = |h, s, seed| {
        Tensor4::<f32>::from_vec(Shape4::new(1, h, s, 64), ints(h * s * 64, seed)).unwrap()
    };
    let x = RecycledInputs::new(t(2, 7, 1), t(2, 7, 2), t(1, 40, 3), t(1, 40, 4));
    let r = RecycledK6::check(&x, &attnforge::exec::Backend::sim()).unwrap();
    assert_eq!(r.run.steps.len(), 7);
    assert_eq!(r.run.recycle_size, 6);
    assert_eq!(RecycledK6::reference(&x).unwrap().len(), 7);
    assert_eq!(RecycledK6::simulate(&x).unwrap().steps[1].keys_read, 6);
}

const B: usize = 1;
const HQ: usize = 4;
const HKV: usize = 2;
const T: usize = 24;
const SK: usize = 200;

/// Integers in {-1, 0, 1} (exact in f16).
fn ints(n: usize, seed: u64) -> Vec<f32> {
    values(n, seed)
        .into_iter()
        .map(|x| ((x + 1.0) * 1.5).floor().clamp(0.0, 2.0) - 1.0)
        .collect()
}

/// q_raw: direction `d % 2 == 0` for the first 12 steps, `d % 3 == 0` after (a full step at
/// the check of step 20 with the example's stride 10).
fn q_raw(t: usize) -> Vec<f32> {
    (0..B * HQ * t * 64)
        .map(|i| {
            let (step, d) = ((i / 64) % t, i % 64);
            let w = if step < 12 { 2 } else { 3 };
            f32::from(u8::from(d % w == 0))
        })
        .collect()
}

fn save(dir: &Path, name: &str, shape: [usize; 4], data: &[f32]) {
    let h: Vec<f16> = data.iter().map(|&e| f16::from_f32(e)).collect();
    write_npy(
        &dir.join(name),
        &shape.map(|x| x as u64),
        &h,
        npyz::Order::C,
    );
}

fn tensor(shape: [usize; 4], data: &[f32]) -> Tensor4<f16> {
    Tensor4::from_vec(
        Shape4::new(shape[0], shape[1], shape[2], shape[3]),
        data.iter().map(|&x| f16::from_f32(x)).collect(),
    )
    .unwrap()
}

fn args<'a>(dir: &'a Path, spec: &'a str, backend: &'a str, tag: &str) -> Vec<String> {
    let p = |n: &str| dir.join(n).to_str().unwrap().to_string();
    vec![
        "run".into(),
        spec.into(),
        "--q".into(),
        p("q.npy"),
        "--q-raw".into(),
        p("q_raw.npy"),
        "--k".into(),
        p("k.npy"),
        "--v".into(),
        p("v.npy"),
        "--out".into(),
        p(&format!("o_{tag}.npy")),
        "--lse".into(),
        p(&format!("lse_{tag}.npy")),
        "--backend".into(),
        backend.into(),
    ]
}

fn run_args(a: &[String]) -> std::process::Output {
    let r: Vec<&str> = a.iter().map(String::as_str).collect();
    run(&r)
}

#[test]
fn run_prints_steps_and_matches_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let spec = root().join("examples/specs/recycled.toml");
    let spec = spec.to_str().unwrap();
    let (qs, ks) = ([B, HQ, T, 64], [B, HKV, SK, 64]);
    let (q, k, v, qr) = (
        ints(B * HQ * T * 64, 1),
        ints(B * HKV * SK * 64, 2),
        ints(B * HKV * SK * 64, 3),
        q_raw(T),
    );
    save(dir.path(), "q.npy", qs, &q);
    save(dir.path(), "q_raw.npy", qs, &qr);
    save(dir.path(), "k.npy", ks, &k);
    save(dir.path(), "v.npy", ks, &v);
    let mut outs: Vec<AttnOutput> = Vec::new();
    for backend in ["sim", "reference"] {
        let o = run_args(&args(dir.path(), spec, backend, backend));
        let t = text(&o);
        assert!(o.status.success(), "{backend}: {t}");
        let steps: Vec<&str> = t.lines().filter(|l| l.starts_with("step ")).collect();
        assert_eq!(steps.len(), T, "{t}");
        // K = (176 + 1) / 8 = 22 per kv head: full steps read 2 * (p_t + 1) keys.
        assert_eq!(steps[0], "step 0: full keys_read 354", "{t}");
        assert_eq!(steps[1], "step 1: partial keys_read 44", "{t}");
        assert_eq!(steps[10], "step 10: partial keys_read 44", "{t}");
        assert!(steps[20].starts_with("step 20: full keys_read 394"), "{t}");
        outs.push(load_output(dir.path(), backend, Shape4::new(B, HQ, T, 64)));
    }
    let df = DynSpecFile::load(&root().join("examples/specs/recycled.toml")).unwrap();
    let x = RecycledInputs::new(
        tensor(qs, &q),
        tensor(qs, &qr),
        tensor(ks, &k),
        tensor(ks, &v),
    );
    let naive = reference_recycled(&df.spec, &x, Precision::Naive).unwrap();
    let mut n = AttnOutput::empty(Shape4::new(B, HQ, T, 64));
    for (t, s) in naive.iter().enumerate() {
        for r in 0..B * HQ {
            let dst = r * T + t;
            n.out[dst * 64..(dst + 1) * 64].copy_from_slice(&s.out.out[r * 64..(r + 1) * 64]);
            n.lse[dst] = s.out.lse[r];
        }
    }
    let tol = Tolerance::for_dtype(attnforge::exec::reference_dtype(DType::F16));
    assert_close(&outs[0], &outs[1], &n, tol.rtol, tol.atol).unwrap();
}

#[test]
fn bad_inputs_exit_2_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let spec = root().join("examples/specs/recycled.toml");
    let spec = spec.to_str().unwrap();
    let (qs, ks) = ([B, HQ, 4, 64], [B, HKV, 20, 64]);
    save(dir.path(), "q.npy", qs, &ints(B * HQ * 4 * 64, 1));
    save(dir.path(), "k.npy", ks, &ints(B * HKV * 20 * 64, 2));
    save(dir.path(), "v.npy", ks, &ints(B * HKV * 20 * 64, 3));
    // q_raw of another shape.
    save(dir.path(), "q_raw.npy", [B, HQ, 3, 64], &q_raw(3));
    let o = run_args(&args(dir.path(), spec, "sim", "a"));
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(t.contains("q_raw.shape"), "{t}");
    // Missing --q-raw.
    let mut a = args(dir.path(), spec, "sim", "a");
    a.drain(4..6);
    let o = run_args(&a);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(t.contains("q_raw") && t.contains("--q-raw"), "{t}");
    // T > Sk.
    save(
        dir.path(),
        "q.npy",
        [B, HQ, 21, 64],
        &ints(B * HQ * 21 * 64, 1),
    );
    save(dir.path(), "q_raw.npy", [B, HQ, 21, 64], &q_raw(21));
    let o = run_args(&args(dir.path(), spec, "sim", "a"));
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(t.contains("q.seq"), "{t}");
    // K = 0 and an even pool in a spec file: both reported with their field.
    let bad = dir.path().join("bad.toml");
    let text_in = std::fs::read_to_string(root().join("examples/specs/recycled.toml"))
        .unwrap()
        .replace("# recycle_size = 24", "recycle_size = 0")
        .replace("pool = 7", "pool = 6");
    std::fs::write(&bad, text_in).unwrap();
    let o = run(&["check", bad.to_str().unwrap()]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(
        t.contains("params.recycle_size") && t.contains("params.pool"),
        "{t}"
    );
}
