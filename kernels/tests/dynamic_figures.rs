//! Visited work vs dense from the simulator counters (the figures of
//! `docs/families/*.md`). By default a small configuration (a few seconds) checks that
//! every family visits fewer keys than dense attention; with `ATTNFORGE_DYNAMIC_FIGURES=1`
//! the documented long-context configuration runs and a Markdown table is printed:
//! `ATTNFORGE_DYNAMIC_FIGURES=1 cargo test -p attnforge-kernels --test dynamic_figures -- --nocapture`

mod dynamic_common;

use attnforge_kernels::codegen::dynamic::{DynamicSpec, LandmarkMode};
use attnforge_kernels::codegen::spec::{DType, HeadDim};
use attnforge_kernels::exec::Backend;
use attnforge_kernels::exec_dynamic::{run, DynInputs, HaxExtra};
use attnforge_reference::{Shape4, Sharing, SplitMix64, Tensor4};
use dynamic_common::{fracs, ints};

type H = half::f16;

fn causal_dense(sq: usize, sk: usize) -> u64 {
    (0..sq).map(|i| (i + sk - sq + 1) as u64).sum()
}

#[test]
fn visited_work_vs_dense() {
    let long = std::env::var("ATTNFORGE_DYNAMIC_FIGURES").is_ok_and(|v| v == "1");
    let (sk, s_cca, s_hax) = if long {
        (16384, 4096, 16384)
    } else {
        (1024, 512, 512)
    };
    let d = 64;
    let (f16, d64) = (DType::F16, HeadDim::D64);
    let sim = Backend::sim();
    let mut rows = Vec::new();
    // Top-k decode: 1 query over sk keys.
    let q = ints::<H>(Shape4::new(1, 1, 1, d), 1, 1);
    let k = ints::<H>(Shape4::new(1, 1, sk, d), 2, 1);
    let v = fracs::<H>(Shape4::new(1, 1, sk, d), 3);
    let spec = DynamicSpec::Topk {
        dtype: f16,
        head_dim: d64,
        sink: 4,
        recent: 64,
        k: 64,
        split: false,
    };
    let r = run(&spec, &DynInputs::new(q, k, v), &sim).unwrap();
    rows.push((
        spec.canonical_name(),
        format!("Sq=1, Sk={sk}, sink 4, recent 64, k 64"),
        r.counters.keys_gathered,
        r.counters.select_work,
        sk as u64,
    ));
    // Landmark retrieval: the last 64 queries of an sk-token context.
    let sq = 64;
    let q = ints::<H>(Shape4::new(1, 1, sq, d), 4, 1);
    let k = ints::<H>(Shape4::new(1, 1, sk, d), 5, 1);
    let v = fracs::<H>(Shape4::new(1, 1, sk, d), 6);
    for mode in [LandmarkMode::Retrieval { top_k: 4 }, LandmarkMode::Train] {
        let spec = DynamicSpec::Landmark {
            dtype: f16,
            head_dim: d64,
            mem_freq: 63,
            mode,
        };
        let r = run(
            &spec,
            &DynInputs::new(q.clone(), k.clone(), v.clone()),
            &sim,
        )
        .unwrap();
        rows.push((
            spec.canonical_name(),
            format!("Sq={sq} (last rows), Sk={sk}, mem_freq 63"),
            r.counters.keys_gathered,
            r.counters.select_work,
            causal_dense(sq, sk),
        ));
    }
    // CCA: every row of an s_cca-token sequence.
    let s = s_cca;
    let q = fracs::<H>(Shape4::new(1, 1, s, d), 7);
    let spec = DynamicSpec::Cca {
        dtype: f16,
        head_dim: d64,
        group: 16,
        window: s / 16,
    };
    let r = run(
        &spec,
        &DynInputs::new(
            q.clone(),
            fracs(Shape4::new(1, 1, s, d), 8),
            fracs(Shape4::new(1, 1, s, d), 9),
        ),
        &sim,
    )
    .unwrap();
    rows.push((
        spec.canonical_name(),
        format!("S={s}, g 16, w {}", s / 16),
        r.counters.keys_gathered,
        r.counters.select_work,
        causal_dense(s, s),
    ));
    // HAX: every row of an s_hax-token sequence, defaults 32 + 32, 8 bits.
    let s = s_hax;
    let mut g = SplitMix64(10);
    let hp = Tensor4::from_fn(Shape4::new(1, 1, d, 8), |_, _, _, _| {
        (g.below(2001) as f32 - 1000.0) / 1000.0
    });
    let mut x = DynInputs::new(
        fracs::<H>(Shape4::new(1, 1, s, d), 11),
        fracs(Shape4::new(1, 1, s, d), 12),
        fracs(Shape4::new(1, 1, s, d), 13),
    );
    x.hax = Some(HaxExtra {
        hyperplanes: hp,
        ks: fracs(Shape4::new(1, 1, s, 1), 14),
        hyperplane_sharing: Sharing::Shared,
        ks_sharing: Sharing::Shared,
    });
    let spec = DynamicSpec::Hax {
        dtype: f16,
        head_dim: d64,
        k_lsh: 32,
        k_ks: 32,
        hash_bits: 8,
    };
    let r = run(&spec, &x, &sim).unwrap();
    rows.push((
        spec.canonical_name(),
        format!("S={s}, k_lsh 32, k_ks 32, 8 bits"),
        r.counters.keys_gathered,
        r.counters.select_work,
        causal_dense(s, s),
    ));
    println!("| pipeline | problem (B=1, H=1, D=64, f16) | keys gathered | select work | dense causal keys | visited / dense |");
    println!("|---|---|---|---|---|---|");
    for (name, prob, kg, sw, dense) in &rows {
        println!(
            "| `{name}` | {prob} | {kg} | {sw} | {dense} | {:.4} |",
            *kg as f64 / *dense as f64
        );
        if !name.starts_with("landmark_train") {
            assert!(kg < dense, "{name}: {kg} keys gathered, dense {dense}");
        }
    }
}
