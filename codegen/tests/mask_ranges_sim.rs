//! The analytic ranges of the mask table, as the kernels evaluate them (the C expressions of
//! `MaskDef::key_range` and `MaskDef::query_range`, compiled into a probe kernel per mask
//! with the mask's parameters as named `int`/`float` arguments, like the generated
//! wrappers), on the simulator, against brute force over the table's host predicate:
//!
//! - key range `[lo, hi)` of every query interval `[p_lo, p_hi]` (the forward schedule):
//!   sound (every key a row of the interval may see lies inside) and exact at both ends but
//!   for `prefix_lm` and `global_local` (every key: their classifiers skip the tiles);
//! - query range `[lo, hi)` of every key interval `[c0, c1]` (the backward's transposed
//!   schedule): sound, and exact at both ends but for the masks listed in
//!   `QUERY_RANGE_NOT_EXACT` (with the reason).
//!
//! Shapes: `Sq = Sk` and `Sq < Sk` for every mask, `Sq > Sk` (negative positions) for those
//! the table allows; parameters: the table's defaults and stress values, and edge values
//! (0, 1, negative windows).

use attnforge_codegen::emit::{ATTN_CUH, PRELUDE_CUH};
use attnforge_codegen::masks::{MaskDef, ParamType, ScheduleKind, MASKS};
use attnforge_sim::{SimArg, SimConfig, SimKernel};

/// Masks whose query range is sound but not exact: `global_local` (its global rows make the
/// row set a union), `dilated_causal` (a key's rows are an arithmetic progression: where the
/// range is clipped at `seq_k`, the last row may fall between two allowed distances).
const QUERY_RANGE_NOT_EXACT: &[&str] = &["global_local", "dilated_causal"];
/// Masks whose forward key range is every key (their classifiers skip tiles instead).
const KEY_RANGE_NOT_EXACT: &[&str] = &["prefix_lm", "global_local"];

fn probe_source(def: &MaskDef) -> String {
    let params: String = def
        .params
        .iter()
        .map(|p| {
            let ty = match p.ty {
                ParamType::Int => "int",
                ParamType::Float => "float",
            };
            format!(", {ty} {}", p.name)
        })
        .collect();
    format!(
        "{PRELUDE_CUH}\n{ATTN_CUH}\n\
         extern \"C\" __global__ void ranges(int seq_q, int seq_k{params}, const long long* ivl,\n\
             int n, long long* keys, long long* queries) {{\n\
           const int t = blockIdx.x * blockDim.x + threadIdx.x;\n\
           if (t >= n) return;\n\
           const long long p_lo = ivl[2 * t], p_hi = ivl[2 * t + 1];\n\
           const long long c0 = p_lo, c1 = p_hi;\n\
           keys[2 * t] = {klo};\n\
           keys[2 * t + 1] = {khi};\n\
           queries[2 * t] = {qlo};\n\
           queries[2 * t + 1] = {qhi};\n\
         }}\n",
        klo = def.key_range.0,
        khi = def.key_range.1,
        qlo = def.query_range.0,
        qhi = def.query_range.1,
    )
}

/// Parameter sets of a mask: defaults and stress values at `seq_k`, then edge values.
fn param_sets(def: &MaskDef, seq_k: usize) -> Vec<Vec<f64>> {
    let mut sets = vec![
        def.params.iter().map(|p| p.default.at(seq_k)).collect(),
        def.params.iter().map(|p| p.stress.at(seq_k)).collect(),
    ];
    for edge in [0.0, 1.0, 3.0, -1.0] {
        let v: Vec<f64> = def
            .params
            .iter()
            .map(|p| {
                let x = if p.ty == ParamType::Float {
                    p.default.at(seq_k)
                } else {
                    edge
                };
                if p.check(x).is_ok() {
                    x
                } else {
                    p.default.at(seq_k)
                }
            })
            .collect();
        sets.push(v);
    }
    sets.dedup();
    sets
}

/// Every interval `[a, b]` of `[lo, hi)`.
fn intervals(lo: i64, hi: i64) -> Vec<(i64, i64)> {
    let mut v = Vec::new();
    for a in lo..hi {
        for b in a..hi {
            v.push((a, b));
        }
    }
    v
}

fn run_probe(
    k: &SimKernel,
    def: &MaskDef,
    values: &[f64],
    sq: usize,
    sk: usize,
    ivl: &[(i64, i64)],
) -> (Vec<i64>, Vec<i64>) {
    let flat: Vec<i64> = ivl.iter().flat_map(|&(a, b)| [a, b]).collect();
    let mut keys = vec![i64::MIN; 2 * ivl.len()];
    let mut queries = vec![i64::MIN; 2 * ivl.len()];
    let mut args = vec![SimArg::I32(sq as i32), SimArg::I32(sk as i32)];
    for (p, &v) in def.params.iter().zip(values) {
        args.push(match p.ty {
            ParamType::Int => SimArg::I32(v as i32),
            ParamType::Float => SimArg::F32(v as f32),
        });
    }
    args.push(SimArg::input(&flat));
    args.push(SimArg::I32(ivl.len() as i32));
    args.push(SimArg::output(&mut keys));
    args.push(SimArg::output(&mut queries));
    let threads = 128u32;
    let blocks = (ivl.len() as u32).div_ceil(threads);
    k.launch(blocks, threads, 0, &mut args, &SimConfig::default())
        .unwrap_or_else(|e| panic!("{}: {e}", def.tag));
    (keys, queries)
}

/// `[min, max + 1)` of the positions in `range` that satisfy `hit`, `None` if none does.
fn span(range: std::ops::Range<i64>, hit: impl Fn(i64) -> bool) -> Option<(i64, i64)> {
    let v: Vec<i64> = range.filter(|&x| hit(x)).collect();
    Some((*v.first()?, *v.last()? + 1))
}

fn check_mask(def: &MaskDef) -> Vec<String> {
    let k = SimKernel::build(&probe_source(def), "ranges").unwrap_or_else(|e| panic!("{e}"));
    let mut shapes = vec![(40usize, 40usize), (23, 40)];
    if def.allows_sq_gt_sk {
        shapes.push((40, 27));
    }
    let mut errors = Vec::new();
    for (sq, sk) in shapes {
        let (p_min, p_end) = (sk as i64 - sq as i64, sk as i64);
        let allowed = |v: &[f64], p: i64, j: i64| (def.host_allowed)(v, &[], p, j);
        for values in param_sets(def, sk) {
            let q_ivl = intervals(p_min, p_end);
            let k_ivl = intervals(0, sk as i64);
            let (keys, _) = run_probe(&k, def, &values, sq, sk, &q_ivl);
            for (t, &(p_lo, p_hi)) in q_ivl.iter().enumerate() {
                let got = (keys[2 * t], keys[2 * t + 1]);
                let want = span(0..sk as i64, |j| {
                    (p_lo..=p_hi).any(|p| allowed(&values, p, j))
                });
                if let Some((lo, hi)) = want {
                    let sound = got.0 <= lo && hi <= got.1;
                    let exact = !KEY_RANGE_NOT_EXACT.contains(&def.tag);
                    if !sound || (exact && got != (lo, hi)) {
                        errors.push(format!(
                            "{} {values:?} Sq {sq} Sk {sk}: key range of queries [{p_lo}, {p_hi}] is {got:?}, brute force [{lo}, {hi})",
                            def.tag
                        ));
                    }
                }
            }
            let (_, queries) = run_probe(&k, def, &values, sq, sk, &k_ivl);
            let exact = !QUERY_RANGE_NOT_EXACT.contains(&def.tag);
            for (t, &(c0, c1)) in k_ivl.iter().enumerate() {
                let (lo, hi) = (queries[2 * t], queries[2 * t + 1]);
                let want = span(p_min..p_end, |p| (c0..=c1).any(|j| allowed(&values, p, j)));
                let Some((wlo, whi)) = want else { continue };
                let sound = lo <= wlo && whi <= hi;
                let tight = lo.max(p_min) == wlo && hi.min(p_end) == whi;
                if !sound || (exact && !tight) {
                    errors.push(format!(
                        "{} {values:?} Sq {sq} Sk {sk}: query range of keys [{c0}, {c1}] is [{lo}, {hi}), brute force [{wlo}, {whi})",
                        def.tag
                    ));
                }
            }
        }
    }
    errors
}

#[test]
fn key_and_query_ranges_of_every_analytic_mask() {
    let mut errors = Vec::new();
    let mut checked = 0;
    for def in MASKS
        .iter()
        .filter(|d| d.schedule == ScheduleKind::Analytic)
    {
        errors.extend(check_mask(def));
        checked += 1;
    }
    assert!(checked >= 9, "only {checked} analytic masks in the table");
    assert!(
        errors.is_empty(),
        "{} range errors (first 20):\n{}",
        errors.len(),
        errors[..errors.len().min(20)].join("\n")
    );
}

/// The list-driven masks answer "every query" (their block lists are transposed instead):
/// the probe must agree, so a list-driven mask cannot silently narrow the range.
#[test]
fn list_driven_masks_cover_every_query() {
    for def in MASKS
        .iter()
        .filter(|d| d.schedule == ScheduleKind::BlockLists)
    {
        let k = SimKernel::build(&probe_source(def), "ranges").unwrap_or_else(|e| panic!("{e}"));
        let ivl = intervals(0, 12);
        let values: Vec<f64> = def.params.iter().map(|p| p.default.at(12)).collect();
        let (_, q) = run_probe(&k, def, &values, 9, 12, &ivl);
        for t in 0..ivl.len() {
            assert_eq!((q[2 * t], q[2 * t + 1]), (3, 12), "{}", def.tag);
        }
    }
}
