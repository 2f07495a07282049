//! Bugs found by tests/fuzz.rs outside the DSL (the DSL's are in its own unit tests): `.npy`
//! headers that claim more than the file holds are rejected before anything is allocated or
//! multiplied, and document segments whose sum overflows are an error, not a panic. The
//! inputs are also in fuzz/corpus/.

use std::path::Path;

use attnforge::codegen::spec::DType;
use attnforge::npy::{read_i32, read_tensor};

fn npy(version: u8, header: &str, header_len: Option<u32>, data: &[u8]) -> Vec<u8> {
    let mut h = header.to_string();
    let pre = if version == 1 { 10 } else { 12 };
    while !(pre + h.len() + 1).is_multiple_of(64) {
        h.push(' ');
    }
    h.push('\n');
    let mut v = b"\x93NUMPY".to_vec();
    v.extend([version, 0]);
    let len = header_len.unwrap_or(h.len() as u32);
    if version == 1 {
        v.extend((len as u16).to_le_bytes());
    } else {
        v.extend(len.to_le_bytes());
    }
    v.extend(h.bytes());
    v.extend(data);
    v
}

fn errors(dir: &Path, name: &str, bytes: &[u8]) -> Vec<String> {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    let mut v: Vec<String> = [DType::F32, DType::F16, DType::Bf16]
        .into_iter()
        .map(|d| read_tensor(&p, d).expect_err(name).to_string())
        .collect();
    v.push(read_i32(&p).expect_err(name).to_string());
    v
}

fn dict(descr: &str, shape: &str) -> String {
    format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}")
}

#[test]
fn oversized_claims_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = [0u8; 64];
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "header_len.npy",
            npy(2, &dict("<f4", "(1, 1, 1, 16)"), Some(0xA2CA_0000), &data),
            "the header claims 2731147264 bytes",
        ),
        (
            "u64_max.npy",
            npy(
                1,
                &dict("<f4", "(18446744073709551615, 2, 1, 1)"),
                None,
                &data,
            ),
            "has more than 2^64 elements",
        ),
        (
            "wraps_to_zero.npy",
            npy(1, &dict("<i4", "(4294967296, 4294967296)"), None, &data),
            "has more than 2^64 elements",
        ),
        (
            "zero_and_huge.npy",
            npy(
                1,
                &dict("<f4", "(0, 4294967296, 4294967296, 2)"),
                None,
                &data,
            ),
            "has more than 2^64 elements",
        ),
        (
            "more_than_data.npy",
            npy(1, &dict("<f4", "(1, 2, 1000000, 64)"), None, &data),
            "claims 128000000 elements but the file has 64 bytes of data",
        ),
        (
            "too_large_dim.npy",
            npy(3, &dict("<i4", "(18446744073709551616,)"), None, &data),
            "is not a dimension",
        ),
        (
            "nested.npy",
            npy(
                1,
                &format!(
                    "{{'descr': {}'<f4'{}, 'fortran_order': False, 'shape': (16,), }}",
                    "[".repeat(200),
                    "]".repeat(200)
                ),
                None,
                &data,
            ),
            "nests brackets deeper than 16 levels",
        ),
    ];
    for (name, bytes, want) in cases {
        for e in errors(d, name, &bytes) {
            assert!(e.contains(want), "{name}: {e}");
            assert!(e.contains("fix:"), "{name}: {e}");
        }
    }
}

#[test]
fn numpy_headers_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let ids: Vec<u8> = [0i32, 0, 1, 1, 2, 2, 2, 2]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    for (version, shape) in [(1, "(8,)"), (2, "(2, 4)"), (3, "(8,)")] {
        let p = dir.path().join("ids.npy");
        std::fs::write(&p, npy(version, &dict("<i4", shape), None, &ids)).unwrap();
        assert_eq!(read_i32(&p).unwrap(), vec![0, 0, 1, 1, 2, 2, 2, 2]);
    }
    // A string value that mentions 'shape' does not confuse the scan.
    let p = dir.path().join("q.npy");
    let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1, 1, 16), 'x': 'shape: (99999999999,)', }";
    std::fs::write(&p, npy(1, header, None, &[0u8; 64])).unwrap();
    let t = read_tensor(&p, DType::F32).unwrap();
    assert_eq!(t.shape().dim, 16);
}

#[test]
fn document_segments_whose_sum_overflows_are_an_error() {
    let text = "dtype = \"f16\"\nhead_dim = 64\nmask = \"document\"\n[params]\n\
                doc_segments = [9223372036854775807, 9223372036854775807, 2]\n";
    let sf = attnforge::specfile::SpecFile::parse(text, None).unwrap();
    let e = sf.run_params(80, None).unwrap_err().to_string();
    assert!(
        e.contains(
            "field `params.doc_segments`: segments sum to more than 2^64 but the key length is 80"
        ),
        "{e}"
    );
}
