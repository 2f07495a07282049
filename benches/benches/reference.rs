//! Speed of the f64 reference (`attnforge-reference`, the oracle of every check) per variant
//! family, on small shapes: B = 1, Hq = 2 (GQA: 4 query heads, 1 kv head), S = 128.
//!
//! Static families: one catalog kernel per (mask, score, GQA) family, through
//! `exec::reference` with the tuner's default runtime parameters (`autotune::workload`);
//! the bench id is that kernel's canonical name (its dtype and head dim are the catalog's).
//! Data-dependent families (landmark, HAX, CCA, top-k) call the reference directly
//! (f32 inputs, D = 64); their ids name the family.

// `criterion_group!` defines an undocumented `pub fn`.
#![allow(missing_docs)]

use std::collections::BTreeSet;

use attnforge_autotune::workload::{default_params, inputs, Shape};
use attnforge_benches::quick_criterion;
use attnforge_codegen::prelude::{catalog, DType, KernelSpec};
use attnforge_reference::{
    cca_attention, hax_attention, landmark_attention, topk_attention, AttnOptions, CcaParams,
    Element, HaxInputs, HaxParams, LandmarkMode, LandmarkParams, Precision, Shape4, Tensor4,
    TopkParams,
};
use attnforge_runtime::exec::{reference, Inputs, RunParams};
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use half::{bf16, f16};

const SEQ: usize = 128;

fn bench_spec<T: Element>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    spec: &KernelSpec,
) {
    let shape = Shape::for_spec(spec, 1, if spec.gqa { 4 } else { 2 }, SEQ);
    let x: Inputs<T> = inputs(spec, &shape, 7);
    let p: RunParams = default_params(spec, &shape);
    reference(spec, &x, &p, Precision::F64).expect("reference runs on the default workload");
    g.bench_function(BenchmarkId::from_parameter(spec.canonical_name()), |b| {
        b.iter(|| reference(black_box(spec), &x, &p, Precision::F64).expect("reference"))
    });
}

fn tensor(heads: usize, seq: usize, dim: usize, salt: usize) -> Tensor4<f32> {
    Tensor4::from_fn(Shape4::new(1, heads, seq, dim), |_, h, s, d| {
        (((h * 31 + s * 17 + d * 7 + salt * 13) % 97) as f32 / 97.0) * 2.0 - 1.0
    })
}

fn static_families(c: &mut Criterion) {
    let mut g = c.benchmark_group("reference");
    let mut seen = BTreeSet::new();
    for spec in catalog() {
        let family = (spec.mask.tag(), spec.score.short(), spec.gqa);
        if !seen.insert(family) {
            continue;
        }
        match spec.dtype {
            DType::F32 => bench_spec::<f32>(&mut g, &spec),
            DType::F16 => bench_spec::<f16>(&mut g, &spec),
            DType::Bf16 => bench_spec::<bf16>(&mut g, &spec),
        }
    }
    g.finish();
}

fn dynamic_families(c: &mut Criterion) {
    let mut g = c.benchmark_group("reference");
    let (q, k, v) = (
        tensor(2, SEQ, 64, 1),
        tensor(2, SEQ, 64, 2),
        tensor(2, SEQ, 64, 3),
    );
    let opts = AttnOptions::reference();
    for (id, mode) in [
        ("landmark_training", LandmarkMode::Training),
        ("landmark_retrieval", LandmarkMode::Retrieval { top_k: 2 }),
    ] {
        let p = LandmarkParams { mem_freq: 15, mode };
        g.bench_function(BenchmarkId::from_parameter(id), |b| {
            b.iter(|| landmark_attention(&q, &k, &v, black_box(&p), &opts).expect("landmark"))
        });
    }
    let cca = CcaParams {
        group: 16,
        window: 32,
    };
    g.bench_function(BenchmarkId::from_parameter("cca"), |b| {
        b.iter(|| cca_attention(&q, &k, &v, black_box(&cca), &opts).expect("cca"))
    });
    let topk = TopkParams {
        start: 4,
        end: 16,
        k: 16,
    };
    g.bench_function(BenchmarkId::from_parameter("topk"), |b| {
        b.iter(|| topk_attention(&q, &k, &v, black_box(&topk), &opts).expect("topk"))
    });
    let hyperplanes = tensor(1, 64, 8, 4);
    let ks = tensor(1, SEQ, 1, 5);
    let hax_in = HaxInputs {
        q2: &q,
        k2: &k,
        x: &v,
        hyperplanes: &hyperplanes,
        ks: &ks,
    };
    let hax = HaxParams {
        k_lsh: 16,
        k_ks: 16,
        ..HaxParams::default()
    };
    g.bench_function(BenchmarkId::from_parameter("hax"), |b| {
        b.iter(|| hax_attention(black_box(&hax_in), &hax, &opts).expect("hax"))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = quick_criterion();
    targets = static_families, dynamic_families
}
criterion_main!(benches);
