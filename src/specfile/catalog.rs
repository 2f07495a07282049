//! Spec files of catalog entries: the documented default runtime parameters of a catalog
//! kernel and the Rust twins of its CUDA-body user functions.

use std::collections::BTreeMap;
use std::sync::Arc;

use attnforge_runtime::codegen::blocks::BlockLists;
use attnforge_runtime::codegen::check::MaskParams;
use attnforge_runtime::codegen::scores::ScoreParamKind;
use attnforge_runtime::codegen::spec::{KernelSpec, Mask, ScoreMod};
use attnforge_runtime::codegen::tile::Arch;
use attnforge_runtime::exec::{RunParams, UserValue};

use super::{default_seq, DocSource, Problem, SpecFile, Tune};

/// Spec-file view of a catalog entry, with documented default runtime parameters (so that
/// `attnforge check <catalog name>` has something to run). The two catalog user functions
/// (given as CUDA bodies) get hand-written Rust twins here.
pub fn from_catalog(spec: KernelSpec) -> SpecFile {
    let mut user = BTreeMap::new();
    let seq = default_seq();
    let mask_params = MaskParams::defaults_for(&spec.mask, seq);
    if let Mask::Predicate(_) = &spec.mask {
        user.insert("stride".into(), UserValue::Int(3));
    }
    let heads_q = if spec.gqa { 4 } else { 2 };
    if matches!(spec.score, ScoreMod::User(_)) {
        user.insert(
            "bias".into(),
            UserValue::Floats((0..heads_q).map(|h| 0.25 * h as f32 - 0.3).collect()),
        );
        user.insert("decay".into(), UserValue::Float(0.05));
    }
    let doc = spec
        .mask
        .reads_doc()
        .then(|| DocSource::Segments(vec![20, 35, seq - 55]));
    // Block-sparse catalog entries: every block of the problem listed as full (dense), the
    // lists' simplest valid form (see variants.md section 10: equals full attention).
    let block_lists = matches!(spec.mask, Mask::BlockSparse { .. }).then(|| {
        let rows = seq.div_ceil(spec.sparse_block.q);
        let cols = seq.div_ceil(spec.sparse_block.k);
        let row: (Vec<i32>, Vec<i32>) = ((0..cols as i32).collect(), Vec::new());
        BlockLists::from_rows(1, 1, rows, cols, &vec![row; rows])
    });
    SpecFile {
        path: None,
        description: None,
        softcap: spec
            .score
            .param_of(ScoreParamKind::Scalar)
            .map(|p| p.default),
        spec,
        mask_params,
        alibi_slopes: None,
        doc,
        block_lists,
        user,
        host_mask: None,
        host_score: None,
        problem: Problem {
            batch: 1,
            heads_q,
            heads_kv: if heads_q == 4 { 1 } else { 2 },
            seq_q: seq,
            seq_k: seq,
            seed: 1,
        },
        backward: false,
        tune: Tune {
            arch: Arch::Sm80,
            tile: None,
            space: Vec::new(),
            backward_tile: None,
        },
    }
}

/// Rust twins of the catalog's CUDA-body user functions (`dilated`, `headbias`), used when a
/// catalog entry (not a spec file) is run.
pub fn catalog_twins(sf: &SpecFile, rp: &mut RunParams) {
    if let Mask::Predicate(f) = &sf.spec.mask {
        if f.name == "dilated" {
            let stride = match sf.user.get("stride") {
                Some(UserValue::Int(s)) => i64::from(*s),
                _ => 1,
            };
            rp.host_mask = Some(Arc::new(move |_, _, q, kv| {
                kv <= q && (q - kv) % stride == 0
            }));
        }
    }
    if let ScoreMod::User(f) = &sf.spec.score {
        if f.name == "headbias" {
            let bias = match sf.user.get("bias") {
                Some(UserValue::Floats(b)) => b.clone(),
                _ => Vec::new(),
            };
            let decay = match sf.user.get("decay") {
                Some(UserValue::Float(d)) => *d,
                _ => 0.0,
            };
            rp.host_score_diff = Some(headbias_diff(&bias, decay));
            rp.host_score = Some(Arc::new(move |s, _, h, q, kv| {
                // Same f32 arithmetic as the CUDA body.
                let dist = (q - kv).unsigned_abs() as f32;
                f64::from(s as f32 + bias[h] - decay * dist)
            }));
        }
    }
}

/// `headbias` with its derivatives for the reference backward: the learnable vector is
/// `bias[0..Hq]` then `decay`; `ds'/ds = 1`, `ds'/dbias[h] = 1`, `ds'/ddecay = -|q - kv|`.
fn headbias_diff(bias: &[f32], decay: f32) -> crate::reference::DiffScoreFn {
    let n = bias.len();
    let mut params: Vec<f64> = bias.iter().map(|&b| f64::from(b)).collect();
    params.push(f64::from(decay));
    crate::reference::DiffScoreFn {
        value: Arc::new(move |s, _, h, q, kv, t| s + t[h] - t[n] * (q - kv).unsigned_abs() as f64),
        d_score: Arc::new(|_, _, _, _, _, _| 1.0),
        d_params: Some(Arc::new(move |_, _, h, q, kv, _, out| {
            out.push((h, 1.0));
            out.push((n, -((q - kv).unsigned_abs() as f64)));
        })),
        params,
    }
}
