//! `family:` declarations: every dynamic family, the generated spec, name, pipeline sources,
//! and the typed run API (the reference runs here; the simulator is exercised by
//! examples/09_dynamic.rs).
use attnforge::codegen::dynamic::{DynamicSpec, LandmarkMode};
use attnforge::codegen::spec::{DType, HeadDim};
use attnforge::kernels::exec_dynamic::DynInputs;
use attnforge::reference::{Shape4, Tensor4};

attnforge::kernel! {
    /// Landmark retrieval, 4 blocks of 64 tokens.
    pub LmRetrieval {
        family: landmark(mem_freq: 63, mode: retrieval(top_k: 4)),
        dtype: bf16,
        head_dim: 128,
    }
    pub(crate) LmTrain { family: landmark(mode: train, mem_freq: 3), dtype: f32, head_dim: 64 }
    pub Hax { family: hax(k_lsh: 32, k_ks: 32, hash_bits: 8), dtype: f32, head_dim: 64 }
    pub Cca { family: cca(group: 16, window: 1024), dtype: bf16, head_dim: 256 }
    pub Topk { family: topk(sink: 4, recent: 64, k: 64), dtype: f16, head_dim: 128 }
    pub TopkSplit { family: topk(sink: 4, recent: 64, k: 64, split: true), dtype: f16, head_dim: 128 }
    pub Merge { family: lse_merge, dtype: f16, head_dim: 64 }
    pub Merge2 { dtype: f32, family: lse_merge(), head_dim: 128 }
}

pub fn main() {
    assert_eq!(
        LmRetrieval::spec(),
        DynamicSpec::Landmark {
            dtype: DType::Bf16,
            head_dim: HeadDim::D128,
            mem_freq: 63,
            mode: LandmarkMode::Retrieval { top_k: 4 },
        }
    );
    assert_eq!(LmRetrieval::name(), "landmark_retrieval_d128_bf16");
    assert_eq!(LmTrain::name(), "landmark_train_d64_f32");
    assert_eq!(
        Hax::spec(),
        DynamicSpec::Hax {
            dtype: DType::F32,
            head_dim: HeadDim::D64,
            k_lsh: 32,
            k_ks: 32,
            hash_bits: 8
        }
    );
    assert_eq!(
        Cca::spec(),
        DynamicSpec::Cca {
            dtype: DType::Bf16,
            head_dim: HeadDim::D256,
            group: 16,
            window: 1024
        }
    );
    assert_eq!(
        Topk::spec(),
        DynamicSpec::Topk {
            dtype: DType::F16,
            head_dim: HeadDim::D128,
            sink: 4,
            recent: 64,
            k: 64,
            split: false
        }
    );
    assert_eq!(TopkSplit::name(), "topk_split_d128_f16");
    assert_eq!(Merge::name(), "lse_merge_d64_f16");
    assert_eq!(Merge2::name(), "lse_merge_d128_f32");
    let names = |k: Vec<attnforge::codegen::dynamic::DynamicKernel>| {
        k.into_iter().map(|k| k.name).collect::<Vec<_>>()
    };
    assert_eq!(
        names(LmRetrieval::cuda().unwrap()),
        ["landmark_select_d128_bf16", "landmark_attn_d128_bf16"]
    );
    assert_eq!(names(LmTrain::cuda().unwrap()), ["landmark_attn_d64_f32"]);
    assert_eq!(
        names(Hax::cuda().unwrap()),
        ["hax_hash_d64_f32", "hax_keysel_d64_f32", "hax_attn_d64_f32"]
    );
    assert_eq!(
        names(Cca::cuda().unwrap()),
        ["cca_pool_d256_bf16", "cca_attn_d256_bf16"]
    );
    assert_eq!(names(TopkSplit::cuda().unwrap()).len(), 3);
    assert_eq!(names(Merge::cuda().unwrap()), ["lse_merge_d64_f16"]);
    for k in LmRetrieval::cuda().unwrap() {
        assert!(k.source.contains("extern \"C\" __global__"));
        assert!(k.source.contains(&format!(" {}(", k.name)));
    }
    // The element type follows `dtype`: DynInputs<f32> for LmTrain.
    let t = |s: usize, salt: usize| {
        Tensor4::<f32>::from_fn(Shape4::new(1, 1, s, 64), move |_, _, i, d| {
            ((i * 7 + d * 3 + salt) % 5) as f32 - 2.0
        })
    };
    let r = LmTrain::reference(&DynInputs::new(t(9, 0), t(9, 1), t(9, 2))).unwrap();
    assert_eq!(r.lse.len(), 9);
    // Errors are typed: HAX without its extra inputs.
    let x = DynInputs::new(t(4, 0), t(4, 1), t(4, 2));
    assert!(Hax::reference(&x)
        .unwrap_err()
        .to_string()
        .contains("hyperplanes"));
    // lse_merge takes two partial results.
    let part = attnforge::reference::attention_over_keys(
        &t(2, 0),
        &t(4, 1),
        &t(4, 2),
        &vec![vec![0, 1], vec![2]],
        &attnforge::reference::AttnOptions::reference(),
    )
    .unwrap();
    let m = Merge::reference(&part, &part).unwrap();
    assert!((m.lse[0] - part.lse[0] - 2f64.ln()).abs() < 1e-12);
    assert!(Merge2::reference(&part, &part)
        .unwrap_err()
        .to_string()
        .contains("head_dim is 128"));
}
