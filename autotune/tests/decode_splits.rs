//! The run-time split count of a decode launch (`decode::model_splits`, what `attnforge run`
//! launches with when `--num-splits` is not given) is the tuner's model's choice: for a long
//! cache, a batch and a short cache it equals the tuner's `Prediction::splits` for the tile
//! and is the fastest of every split count the model tries; the simulator's run with that
//! split count equals the per-sequence reference. Needs the toolchain (NVRTC) and g++.

use attnforge_autotune::decode::{model_splits, split_candidates, DecodeLaunch, DecodeTunable};
use attnforge_autotune::occupancy::{occupancy, ArchLimits};
use attnforge_autotune::tuner::Tunable;
use attnforge_autotune::Arch;
use attnforge_codegen::catalog::find;
use attnforge_codegen::spec::{KernelSpec, Layout};
use attnforge_codegen::tile::{default_tile, TileConfig};
use attnforge_reference::{Packed, PagedCache};
use attnforge_runtime::exec::RunParams;
use attnforge_runtime::exec_serving::{self, ServingInputs, ServingKeys};
use attnforge_runtime::sim::{Schedule, SimConfig};
use half::bf16;

fn decode_spec() -> (KernelSpec, TileConfig) {
    let spec = find("flash_fwd_causal_d128_bf16_gqa_decode").expect("catalog entry");
    let tile = default_tile(&spec, Arch::Sm90).expect("a tile");
    (spec, tile)
}

fn launch(batch: usize, (hq, hkv): (usize, usize), sq: usize, sk: usize) -> DecodeLaunch {
    DecodeLaunch {
        batch,
        heads_q: hq,
        heads_kv: hkv,
        max_seq_q: sq,
        max_seq_k: sk,
    }
}

/// The tuner's prediction of `tile` at the launch's shape, and every split count's time.
fn tuner_view(spec: &KernelSpec, tile: &TileConfig, l: DecodeLaunch) -> (usize, Vec<f64>, f64) {
    let mut t = DecodeTunable::new(
        spec,
        l.batch,
        l.heads_q,
        (l.max_seq_q, l.max_seq_k),
        l.max_seq_k,
    )
    .unwrap();
    t.shape.heads_kv = l.heads_kv;
    let res = t
        .build(&[*tile], Arch::Sm90)
        .unwrap()
        .pop()
        .unwrap()
        .unwrap();
    let lim = ArchLimits::of(Arch::Sm90);
    let occ = occupancy(
        &lim,
        res.threads as _,
        res.registers as _,
        res.smem_bytes as _,
    );
    let p = t.predict(tile, &res, &occ, Arch::Sm90);
    let times = split_candidates(&t.shape, tile, lim.sms)
        .into_iter()
        .map(|k| t.predict_splits(tile, &res, &occ, Arch::Sm90, k).time_us)
        .collect();
    (p.splits.unwrap(), times, p.time_us)
}

/// One sequence over 131072 keys, 8 sequences over 8192 and 4 over 200 (Hq 32, Hkv 8, one
/// token; the short one 4 tokens): the run-time choice is the tuner's, the fastest the model
/// knows, many splits for the lone long sequence and at most the 2 key tiles of the short one.
#[test]
fn the_run_time_split_count_is_the_tuners_prediction() {
    let (spec, tile) = decode_spec();
    assert_eq!(tile.block_n, 128);
    let cases = [
        launch(1, (32, 8), 1, 131_072),
        launch(8, (32, 8), 1, 8192),
        launch(4, (32, 8), 4, 200),
    ];
    let mut chosen = Vec::new();
    for l in cases {
        let run = model_splits(&spec, &tile, l, Arch::Sm90).expect("NVRTC toolchain");
        let (tuned, times, best) = tuner_view(&spec, &tile, l);
        let k = run.splits.expect("a split count");
        assert_eq!(k, tuned, "{l:?}: the run uses the tuner's split count");
        assert!((run.time_us - best).abs() < 1e-9, "{l:?}");
        for t in &times {
            assert!(
                best <= *t,
                "{l:?}: {best} us is not the fastest ({times:?})"
            );
        }
        chosen.push(k);
    }
    // 144 KiB of shared memory: one block per SM, so the lone sequence's 8 kv heads want
    // about 132 / 8 splits (one full wave), the batch of 8 about 132 / 64
    assert!(
        chosen[0] >= 16,
        "one sequence needs many splits: {chosen:?}"
    );
    assert!(chosen[0] > chosen[1] && chosen[1] > 1, "{chosen:?}");
    assert!(chosen[2] <= 2, "200 keys are 2 key tiles: {chosen:?}");
}

/// A paged decode batch of 16-key pages (a permuted table, partial last pages).
fn batch(lens: &[usize], (hq, hkv): (usize, usize), sq: usize) -> ServingInputs<bf16> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut unit = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bf16::from_f64((state % 2001) as f64 / 1000.0 - 1.0)
    };
    let pages: Vec<usize> = lens.iter().map(|l| l.div_ceil(16)).collect();
    let max_pages = pages.iter().copied().max().unwrap();
    let num_pages: usize = pages.iter().sum();
    let mut table = vec![-1; lens.len() * max_pages];
    let mut next = num_pages;
    for (b, &n) in pages.iter().enumerate() {
        for i in 0..n {
            next -= 1; // pages from the end of the pool: a permuted table
            table[b * max_pages + i] = next as i32;
        }
    }
    let mut cache = || PagedCache::from_fn(num_pages, 16, hkv, 128, |_, _, _, _| unit());
    let (k_cache, v_cache) = (cache(), cache());
    ServingInputs {
        q: Packed::from_fn(sq * lens.len(), hq, 128, |_, _, _| unit()),
        cu_seqlens_q: (0..=lens.len()).map(|b| (b * sq) as i32).collect(),
        keys: ServingKeys::Paged {
            k_cache,
            v_cache,
            block_table: table,
            max_pages,
            seqlens_k: lens.iter().map(|&l| l as i32).collect(),
        },
    }
}

/// The simulator's decode at the model's split count equals the per-sequence reference, for
/// a short batch and one sequence long enough for several splits.
#[test]
fn outputs_stay_correct_at_the_models_split_count() {
    let (spec, tile) = decode_spec();
    for (lens, sq) in [(vec![200, 77, 129, 5], 4), (vec![2000], 1)] {
        let l = launch(lens.len(), (8, 2), sq, *lens.iter().max().unwrap());
        let k = model_splits(&spec, &tile, l, Arch::Sm90)
            .unwrap()
            .splits
            .unwrap();
        if lens.len() == 1 {
            assert!(k > 1, "one sequence of 2000 keys on 2 kv heads splits: {k}");
        }
        let x = batch(&lens, (8, 2), sq);
        let p = RunParams::default().with_num_splits(k);
        let cfg = SimConfig::new(Schedule::Forward);
        if let Err(e) = exec_serving::check(&spec, &tile, &x, &p, &cfg) {
            panic!("{lens:?} at {k} splits: {e}");
        }
    }
}

/// A decode_varlen spec gets its run-time split count from the same model.
#[test]
fn decode_varlen_launches_get_a_model_split_count() {
    let spec = find("flash_fwd_causal_d128_bf16_gqa_decode_varlen").expect("catalog entry");
    assert_eq!(spec.layout, Layout::DecodeVarlen);
    let tile = default_tile(&spec, Arch::Sm90).unwrap();
    let p = model_splits(&spec, &tile, launch(1, (32, 8), 1, 65_536), Arch::Sm90).unwrap();
    assert!(p.splits.unwrap() > 1, "{p:?}");
}
