//! LongHeads (variants.md section 15) on the simulator, stage by stage against
//! `attnforge_reference::longheads_*`: the summary kernel's `r` (relative oracle of section 0),
//! the selection kernel's chunk lists (exactly, given the kernel's `r`), the attention
//! kernel's `out`/`lse` (relative oracle, given the same `r`); prefill and decoding rows,
//! f16/bf16/f32, GQA, lengths that are not chunk multiples, rows below and above `B`, `M`
//! larger than the candidates, all-equal scores (ties: lower chunk), input errors naming
//! their field, and the keys-gathered counter equal to the selected key count.
//! `ATTNFORGE_HEAVY=1` adds D = 128, more shapes, every simulator schedule and the
//! visited-key figures of docs/families/longheads.md (decoding rows at 16k and 128k tokens).

mod dynamic_common;

use attnforge_reference::{
    assert_close, longheads_attention, longheads_chunks, longheads_summaries, AttnOptions,
    AttnOutput, Element, LongHeadsParams, Precision, Shape4, Tensor4, Tolerance,
};
use attnforge_runtime::codegen::dynamic::DynamicSpec;
use attnforge_runtime::codegen::spec::{DType, HeadDim};
use attnforge_runtime::exec::Backend;
use attnforge_runtime::exec_dynamic::{longheads_sel_width, run, DynInputs, DynRun};
use attnforge_runtime::sim::{Schedule, SimConfig, SimElem};
use dynamic_common::fracs;

fn heavy() -> bool {
    std::env::var("ATTNFORGE_HEAVY").is_ok_and(|v| v == "1")
}

fn spec(dtype: DType, head_dim: HeadDim, chunk: usize, m: usize, begin: usize) -> DynamicSpec {
    DynamicSpec::Longheads {
        dtype,
        head_dim,
        chunk,
        chunks_per_query: m,
        begin,
        theta: 10000,
    }
}

fn params(s: &DynamicSpec) -> LongHeadsParams {
    attnforge_runtime::exec_dynamic::longheads_params(s)
}

fn to_f64(r: &Tensor4<f32>) -> Tensor4<f64> {
    Tensor4::<f64>::from_fn(r.shape, |b, h, i, e| r.get(b, h, i, e))
}

fn tol(dtype: DType) -> Tolerance {
    Tolerance::for_dtype(attnforge_runtime::exec::reference_dtype(dtype))
}

/// A tensor as an [`AttnOutput`] with zero lse, for the relative oracle.
fn as_out(t: &Tensor4<f64>) -> AttnOutput {
    let s = t.shape;
    AttnOutput {
        out: Tensor4::<f64>::from_fn(s, |b, h, i, e| t.get(b, h, i, e)).data,
        lse: vec![0.0; s.batch * s.heads * s.seq],
        shape: s,
    }
}

/// The kernel's chunk list of every row (`-1` ends a list).
fn kernel_lists(run: &DynRun, width: usize) -> Vec<Vec<usize>> {
    run.indices["sel"]
        .chunks(width)
        .map(|row| {
            row.iter()
                .take_while(|&&j| j >= 0)
                .map(|&j| j as usize)
                .collect()
        })
        .collect()
}

/// Keys of the rows' lists (own chunk up to t).
fn key_count(lists: &[Vec<usize>], sq: usize, sk: usize, w: usize) -> u64 {
    lists
        .iter()
        .enumerate()
        .map(|(r, l)| {
            let t = r % sq + sk - sq;
            l.iter()
                .map(|&c| if c == t / w { t - c * w + 1 } else { w } as u64)
                .sum::<u64>()
        })
        .sum()
}

/// Run `s` on `backend` and check every stage against the reference: the summaries (prefill),
/// the selection exactly and `out`/`lse`, both given the `r` the attention kernel read.
/// Returns the run and the kernel's lists.
fn check_stages<T: Element + SimElem>(
    s: &DynamicSpec,
    x: &DynInputs<T>,
    backend: &Backend,
) -> (DynRun, Vec<Vec<usize>>) {
    let name = s.canonical_name();
    let p = params(s);
    let got = run(s, x, backend).unwrap_or_else(|e| panic!("{name}: {e}"));
    let t = tol(s.dtype());
    let r = match &x.r {
        Some(r) => {
            assert!(got.summaries.is_none());
            assert_eq!(got.stages.len(), 2, "decoding runs selection + attention");
            to_f64(r)
        }
        None => {
            let r = to_f64(got.summaries.as_ref().expect("prefill writes r"));
            let want = longheads_summaries(&x.q, &x.k, &x.v, &p, Precision::F64).unwrap();
            let naive = longheads_summaries(&x.q, &x.k, &x.v, &p, Precision::Naive).unwrap();
            assert_eq!(r.shape, want.shape);
            assert_close(&as_out(&r), &as_out(&want), &as_out(&naive), t.rtol, t.atol)
                .unwrap_or_else(|e| panic!("{name}: summaries: {e}"));
            r
        }
    };
    let sk = x.k.shape.seq;
    let lists = kernel_lists(&got, longheads_sel_width(s, sk));
    let want_lists = longheads_chunks(&x.q, &r, sk, &p, Precision::F64).unwrap();
    assert_eq!(lists, want_lists, "{name}: selected chunks");
    let (mut exact, mut same) = (AttnOptions::reference(), AttnOptions::naive());
    if let Some(sc) = x.scale {
        exact = exact.with_scale(f64::from(sc));
        same = same.with_scale(f64::from(sc));
    }
    let want = longheads_attention(&x.q, &x.k, &x.v, &r, &p, &exact).unwrap();
    let naive = longheads_attention(&x.q, &x.k, &x.v, &r, &p, &same).unwrap();
    assert_close(&got.output, &want, &naive, t.rtol, t.atol)
        .unwrap_or_else(|e| panic!("{name}: out/lse: {e}"));
    let w = p.chunk;
    assert_eq!(
        got.counters.keys_gathered,
        key_count(&lists, x.q.shape.seq, sk, w),
        "{name}: keys gathered"
    );
    (got, lists)
}

fn qkv<T: Element>(b: usize, hq: usize, hkv: usize, s: usize, d: usize, seed: u64) -> DynInputs<T> {
    DynInputs::new(
        fracs(Shape4::new(b, hq, s, d), seed),
        fracs(Shape4::new(b, hkv, s, d), seed ^ 0x55),
        fracs(Shape4::new(b, hkv, s, d), seed ^ 0xaa),
    )
}

/// Prefill, GQA (Hq = 4, Hkv = 2), 117 tokens (7 chunks of 16 and 5 more), `B` = 32 or 64:
/// rows below and above B, chunk selection among up to 5 candidates (with B = 64 the row at
/// t = B has a real selection, so an off-by-one at B shows).
fn prefill<T: Element + SimElem>(
    dtype: DType,
    head_dim: HeadDim,
    m: usize,
    begin: usize,
    seed: u64,
) {
    let s = spec(dtype, head_dim, 16, m, begin);
    let x = qkv::<T>(1, 4, 2, 117, head_dim.get(), seed);
    let (_, lists) = check_stages(&s, &x, &Backend::sim());
    // both kinds of rows are there, and a real selection among them
    assert_eq!(
        lists[31],
        (0..=1).collect::<Vec<_>>(),
        "t = 31 < B: every chunk"
    );
    assert!(lists
        .iter()
        .any(|l| l.len() == m && *l.last().unwrap() == 7));
}

#[test]
fn prefill_f16_gqa() {
    prefill::<half::f16>(DType::F16, HeadDim::D64, 4, 32, 1);
}

#[test]
fn prefill_bf16_gqa() {
    prefill::<half::bf16>(DType::Bf16, HeadDim::D64, 5, 32, 2);
}

#[test]
fn prefill_f32_gqa() {
    prefill::<f32>(DType::F32, HeadDim::D64, 4, 64, 3);
}

/// Prefill q of 133 tokens; decoding rows are its last 3 with the summaries of the reference
/// (f32) as the input `r`: selection + attention only; then with a non-default scale.
#[test]
fn decoding_rows_take_the_summaries() {
    let s = spec(DType::F16, HeadDim::D64, 16, 5, 32);
    let full = qkv::<half::f16>(1, 2, 1, 133, 64, 7);
    let r = longheads_summaries(&full.q, &full.k, &full.v, &params(&s), Precision::F64).unwrap();
    let r32 = Tensor4::<f32>::from_fn(r.shape, |b, h, i, e| r.get(b, h, i, e) as f32);
    let q = Tensor4::from_fn(Shape4::new(1, 2, 3, 64), |b, h, i, e| {
        half::f16::from_f64(full.q.get(b, h, i + 130, e))
    });
    let mut x = DynInputs::new(q, full.k.clone(), full.v.clone());
    x.r = Some(r32);
    let (plain, lists) = check_stages(&s, &x, &Backend::sim());
    assert!(lists.iter().all(|l| l.len() == 5 && l[3..] == [7, 8]));
    // The variant's scale reaches the attention (not the selection).
    x.scale = Some(0.3);
    let (scaled, lists2) = check_stages(&s, &x, &Backend::sim());
    assert_eq!(lists, lists2);
    assert_ne!(plain.output.lse, scaled.output.lse);
}

/// All-equal summaries: every candidate scores the same and the lowest ones are picked;
/// `M` beyond the candidates selects every chunk.
#[test]
fn ties_and_m_beyond_the_candidates() {
    let full = qkv::<half::bf16>(1, 1, 1, 16 * 8 + 3, 64, 11);
    let ones = Tensor4::<f32>::from_fn(Shape4::new(1, 1, 8, 64), |_, _, _, _| 0.25);
    let q = Tensor4::from_fn(Shape4::new(1, 1, 2, 64), |b, h, i, e| {
        half::bf16::from_f64(full.q.get(b, h, i + 129, e))
    });
    let mut x = DynInputs::new(q, full.k.clone(), full.v.clone());
    x.r = Some(ones);
    let s = spec(DType::Bf16, HeadDim::D64, 16, 5, 32);
    let (_, lists) = check_stages(&s, &x, &Backend::sim());
    assert_eq!(lists, vec![vec![0, 1, 2, 7, 8]; 2], "ties: lower chunks");
    let s = spec(DType::Bf16, HeadDim::D64, 16, 16, 32);
    let (_, lists) = check_stages(&s, &x, &Backend::sim());
    assert_eq!(
        lists,
        vec![(0..=8).collect::<Vec<_>>(); 2],
        "M > candidates"
    );
}

fn err_of<T: Element + SimElem>(s: &DynamicSpec, x: &DynInputs<T>) -> String {
    match run(s, x, &Backend::sim()) {
        Ok(_) => panic!("{}: bad input accepted", s.canonical_name()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_inputs_name_their_field() {
    let ok = spec(DType::F32, HeadDim::D64, 16, 4, 32);
    let x = qkv::<f32>(1, 2, 1, 70, 64, 5);
    let has = |e: String, field: &str| assert!(e.contains(field), "`{field}` not in: {e}");
    has(
        err_of(&spec(DType::F32, HeadDim::D64, 16, 2, 32), &x),
        "longheads.chunks_per_query",
    );
    has(
        err_of(&spec(DType::F32, HeadDim::D64, 16, 4, 40), &x),
        "longheads.begin",
    );
    let mut dv = x.clone();
    dv.v = fracs(Shape4::new(1, 1, 70, 128), 3);
    has(err_of(&ok, &dv), "v.dim");
    let mut dec = x.clone();
    dec.q = fracs(Shape4::new(1, 2, 1, 64), 4);
    has(err_of(&ok, &dec), "r");
    dec.r = Some(Tensor4::from_fn(Shape4::new(1, 1, 2, 64), |_, _, _, _| 0.0));
    has(err_of(&ok, &dec), "r.shape");
    dec.r = Some(Tensor4::from_fn(Shape4::new(1, 2, 1, 64), |_, _, _, _| 0.0));
    has(err_of(&ok, &dec), "r.seq");
    let mut topk_r = x.clone();
    topk_r.r = Some(Tensor4::from_fn(Shape4::new(1, 2, 2, 64), |_, _, _, _| 0.0));
    let topk = DynamicSpec::Topk {
        dtype: DType::F32,
        head_dim: HeadDim::D64,
        sink: 1,
        recent: 1,
        k: 1,
        split: false,
    };
    has(err_of(&topk, &topk_r), "r");
}

/// ATTNFORGE_HEAVY=1: D = 128 in both half types, batch 2, more lengths, every schedule.
#[test]
fn heavy_sweep() {
    if !heavy() {
        return;
    }
    for (i, sk) in [33usize, 64, 95, 160].into_iter().enumerate() {
        for m in [3usize, 4, 6] {
            let s16 = spec(DType::F16, HeadDim::D128, 16, m, 32);
            let sb = spec(DType::Bf16, HeadDim::D64, 16, m, 16);
            for sched in Schedule::standard(i as u64) {
                let be = Backend::Sim(SimConfig::new(sched));
                check_stages(&s16, &qkv::<half::f16>(2, 4, 2, sk, 128, i as u64), &be);
                check_stages(&sb, &qkv::<half::bf16>(2, 2, 1, sk, 64, 9 + i as u64), &be);
            }
        }
    }
}

/// ATTNFORGE_HEAVY=1: the visited-key fraction of one decoding row at 16k and 128k tokens
/// with the default parameters (w = 256, M = 16, B = 4096), from the simulator's counter.
#[test]
fn heavy_visited_key_figures() {
    if !heavy() {
        return;
    }
    let s = DynamicSpec::Longheads {
        dtype: DType::F16,
        head_dim: HeadDim::D64,
        chunk: 256,
        chunks_per_query: 16,
        begin: 4096,
        theta: 10000,
    };
    for sk in [16 * 1024usize, 128 * 1024] {
        let mut x = qkv::<half::f16>(1, 1, 1, sk, 64, 3);
        x.q = fracs(Shape4::new(1, 1, 1, 64), 4);
        x.r = Some(fracs(Shape4::new(1, 1, sk / 256, 64), 5));
        let (got, _) = check_stages(&s, &x, &Backend::sim());
        println!(
            "longheads decode row at {sk} keys: keys_gathered {} ({:.4} of {sk}), select_work {}",
            got.counters.keys_gathered,
            got.counters.keys_gathered as f64 / sk as f64,
            got.counters.select_work
        );
    }
}
