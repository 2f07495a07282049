//! Tuning workloads: the problem shape a kernel is tuned for, its shape bucket, and the
//! default runtime parameters and inputs of every mask and score family (used by the
//! correctness gate on the simulator and by GPU timing).

use attnforge_codegen::blocks::build_block_lists;
use attnforge_codegen::check::MaskParams;
use attnforge_codegen::spec::{KernelSpec, Mask, ScoreMod};
use attnforge_reference::{Element, Shape4, Tensor4};
use attnforge_runtime::exec::{Inputs, RunParams, UserValue};

/// A problem shape: what a kernel is tuned (or gated) for.
pub use attnforge_codegen::shape::Shape;

/// Document ids for `seq_k` keys: documents of `seq_k / 3` tokens (at least 1). For
/// share_question the first document (id 0, the question) is a prefix, as required.
pub fn doc_ids(seq_k: usize) -> Vec<i32> {
    let len = (seq_k / 3).max(1);
    (0..seq_k).map(|j| (j / len) as i32).collect()
}

/// Stride of the catalog's dilated user mask in workloads.
pub const DILATED_STRIDE: i32 = 3;

/// Default runtime parameters of `spec` at `shape`: the mask table's defaults
/// ([`MaskParams::defaults`]) at the key length, documents of a third, the catalog user functions' parameters with their
/// Rust twins, block-sparse lists with a checkerboard-plus-diagonal pattern, softcap 5.
pub fn default_params(spec: &KernelSpec, shape: &Shape) -> RunParams {
    let mut p = RunParams {
        mask: Some(MaskParams::defaults_for(&spec.mask, shape.seq_k)),
        ..RunParams::default()
    };
    if spec.mask.reads_doc() {
        p.doc = Some(doc_ids(shape.seq_k));
    }
    if let Mask::Predicate(_) = spec.mask {
        let stride = DILATED_STRIDE as i64;
        p = p
            .with_user("stride", UserValue::Int(DILATED_STRIDE))
            .with_host_mask(move |_, _, q, k| k <= q && (q - k) % stride == 0);
    }
    if let Mask::BlockSparse { .. } = spec.mask {
        let bs = spec.sparse_block;
        let shift = shape.seq_k as i64 - shape.seq_q as i64;
        let (bq, bk) = (bs.q.max(1) as i64, bs.k.max(1) as i64);
        p.block_lists = Some(build_block_lists(
            1,
            1,
            shape.seq_q,
            shape.seq_k,
            bs,
            move |_, _, qp, kp| {
                let (r, c) = ((qp - shift) / bq, kp / bk);
                c == r || (r + c) % 2 == 0
            },
        ));
    }
    match &spec.score {
        ScoreMod::Softcap => p.softcap = Some(5.0),
        ScoreMod::User(_) => {
            let bias: Vec<f32> = (0..shape.heads_q).map(|h| 0.25 * h as f32 - 0.5).collect();
            let decay = 0.01f32;
            let b64: Vec<f64> = bias.iter().map(|&x| x as f64).collect();
            p = p
                .with_user("bias", UserValue::Floats(bias))
                .with_user("decay", UserValue::Float(decay))
                .with_host_score(move |s, _, h, q, k| {
                    s + b64[h] - decay as f64 * (q - k).abs() as f64
                });
        }
        _ => {}
    }
    p
}

/// Deterministic inputs in [-1, 1) (xorshift), rounded to the element type.
pub fn inputs<T: Element>(spec: &KernelSpec, shape: &Shape, seed: u64) -> Inputs<T> {
    let d = spec.head_dim.get();
    let t = |heads: usize, s: usize, salt: u64| {
        let mut x = (seed ^ salt).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        Tensor4::<T>::from_fn(Shape4::new(shape.batch, heads, s, d), |_, _, _, _| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            T::from_f64((x >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0)
        })
    };
    Inputs::new(
        t(shape.heads_q, shape.seq_q, 1),
        t(shape.heads_kv, shape.seq_k, 2),
        t(shape.heads_kv, shape.seq_k, 3),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use attnforge_codegen::catalog;

    #[test]
    fn buckets_round_up() {
        let s = Shape {
            batch: 1,
            heads_q: 6,
            heads_kv: 6,
            seq_q: 1000,
            seq_k: 1024,
        };
        assert_eq!(s.bucket(), "bh8_sq1024_sk1024");
    }

    #[test]
    fn every_catalog_spec_has_valid_default_params() {
        use attnforge_codegen::check::{validate_problem, Problem};
        for spec in catalog() {
            let shape = Shape::for_spec(&spec, 1, 4, 72);
            let p = default_params(&spec, &shape);
            let prob = Problem {
                batch: shape.batch,
                heads_q: shape.heads_q,
                heads_kv: shape.heads_kv,
                seq_q: shape.seq_q,
                seq_k: shape.seq_k,
                mask: p.mask.clone().unwrap_or(MaskParams::None),
                softcap: p.softcap,
            };
            validate_problem(&spec, &prob)
                .unwrap_or_else(|e| panic!("{}: {e:?}", spec.canonical_name()));
        }
    }
}
