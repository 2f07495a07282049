//! Helpers shared by the CLI integration tests: run the real binary, write `.npy` inputs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use attnforge::reference::{AttnOutput, Shape4};
use npyz::WriterBuilder;

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_attnforge"))
}

pub fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("spawn attnforge")
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn example_specs() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("examples/specs"))
        .expect("examples/specs")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    v.sort();
    v
}

pub fn write_npy<T: npyz::AutoSerialize + Clone>(
    path: &Path,
    shape: &[u64],
    data: &[T],
    order: npyz::Order,
) {
    let f = std::fs::File::create(path).expect("create");
    let mut w = npyz::WriteOptions::new()
        .default_dtype()
        .shape(shape)
        .order(order)
        .writer(std::io::BufWriter::new(f))
        .begin_nd()
        .expect("npy");
    w.extend(data.iter().cloned()).expect("write");
    w.finish().expect("finish");
}

pub fn read_f32(path: &Path) -> (Vec<u64>, Vec<f32>) {
    let f = std::fs::File::open(path).expect("open output");
    let npy = npyz::NpyFile::new(std::io::BufReader::new(f)).expect("npy");
    let shape = npy.shape().to_vec();
    (shape, npy.into_vec::<f32>().expect("f32 data"))
}

/// Whether a spec file declares a data-dependent family (a top-level `family` key).
pub fn is_dynamic(path: &Path) -> bool {
    let text = std::fs::read_to_string(path).expect("spec file");
    text.parse::<toml::Table>()
        .expect("toml")
        .contains_key("family")
}

/// The static example specs (dense, masks, block-sparse, LM-Infinite).
pub fn static_example_specs() -> Vec<PathBuf> {
    example_specs()
        .into_iter()
        .filter(|p| !is_dynamic(p))
        .collect()
}

/// The example specs of the data-dependent families (`family = ".."`).
pub fn dynamic_example_specs() -> Vec<PathBuf> {
    example_specs()
        .into_iter()
        .filter(|p| is_dynamic(p))
        .collect()
}

/// Deterministic test values in [-1, 1) (an LCG, independent of the CLI's generator).
pub fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// `o_<tag>.npy` and `lse_<tag>.npy` written by `attnforge run` in `dir`, shape-checked.
pub fn load_output(dir: &Path, tag: &str, shape: Shape4) -> AttnOutput {
    let (os, o) = read_f32(&dir.join(format!("o_{tag}.npy")));
    let (ls, l) = read_f32(&dir.join(format!("lse_{tag}.npy")));
    assert_eq!(
        os,
        [shape.batch, shape.heads, shape.seq, shape.dim].map(|x| x as u64)
    );
    assert_eq!(ls, [shape.batch, shape.heads, shape.seq].map(|x| x as u64));
    AttnOutput::from_kernel(shape, &o, &l).unwrap()
}
