//! `family: longheads(..)`: the generated spec, name, the three kernels, and the typed
//! reference (prefill; decoding rows take the summaries `r`).
use attnforge::codegen::dynamic::DynamicSpec;
use attnforge::codegen::spec::{DType, HeadDim};
use attnforge::kernels::exec_dynamic::DynInputs;
use attnforge::reference::{Shape4, Tensor4};

attnforge::kernel! {
    /// LongHeads with the official defaults.
    pub LongHeads {
        family: longheads(chunk: 256, chunks_per_query: 16, begin: 4096, theta: 10000),
        dtype: bf16,
        head_dim: 128,
    }
    pub Small { family: longheads(chunk: 2, chunks_per_query: 3, begin: 4, theta: 100), dtype: f32, head_dim: 64 }
}

pub fn main() {
    assert_eq!(
        LongHeads::spec(),
        DynamicSpec::Longheads {
            dtype: DType::Bf16,
            head_dim: HeadDim::D128,
            chunk: 256,
            chunks_per_query: 16,
            begin: 4096,
            theta: 10000,
        }
    );
    assert_eq!(LongHeads::name(), "longheads_d128_bf16");
    let names: Vec<String> = Small::cuda().unwrap().into_iter().map(|k| k.name).collect();
    assert_eq!(
        names,
        ["longheads_summary_d64_f32", "longheads_select_d64_f32", "longheads_attn_d64_f32"]
    );
    let t = |s: usize, salt: usize| {
        Tensor4::<f32>::from_fn(Shape4::new(1, 1, s, 64), move |_, _, i, d| {
            ((i * 7 + d * 3 + salt) % 5) as f32 * 0.25 - 0.5
        })
    };
    let r = Small::reference(&DynInputs::new(t(11, 0), t(11, 1), t(11, 2))).unwrap();
    assert_eq!(r.lse.len(), 11);
    // Decoding rows without the summaries: a typed error naming `r`.
    let e = Small::reference(&DynInputs::new(t(1, 0), t(11, 1), t(11, 2)));
    assert!(e.is_err());
}
