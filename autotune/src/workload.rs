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

/// Key tiles each query block of one (batch 0, head 0) visits at `shape` with `params`, in
/// launch order: the static model's work ([`crate::model::predict_main_loop`]). Analytic
/// masks: the `block_n` tiles with an allowed pair (their key ranges are exact). List-driven
/// masks: every `block_n` tile of each `sparse_block` block that has an allowed pair (or
/// that the given lists name), as the kernel walks them. Counted with the reference's
/// closed forms ([`attnforge_reference::MaskGeometry`]); a user predicate, which has none,
/// counts as dense. The visited counts of [`tile_profile`].
pub fn work_profile(
    spec: &KernelSpec,
    block_m: usize,
    block_n: usize,
    shape: &Shape,
    params: &RunParams,
) -> Vec<u32> {
    tile_profile(spec, block_m, block_n, shape, params)
        .iter()
        .map(|t| t.visited)
        .collect()
}

/// The key tiles one query block visits, and how many of them take the kernel's partial-tile
/// path (the allowed-element bits, the element mask, scale and select per score).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockTiles {
    /// Key tiles visited.
    pub visited: u32,
    /// Of those, the partial and edge tiles: a tile the kernel classifies partial while its
    /// mask has an element predicate (analytic masks: not every pair of the tile allowed;
    /// list-driven ones: a tile of a partial list block), and a tile with rows past `seq_q`
    /// or keys past `seq_k`. A user predicate, without closed forms, counts every tile.
    pub partial: u32,
}

/// [`work_profile`] with each query block's partial tiles ([`BlockTiles`]), in launch order.
pub fn tile_profile(
    spec: &KernelSpec,
    block_m: usize,
    block_n: usize,
    shape: &Shape,
    params: &RunParams,
) -> Vec<BlockTiles> {
    tile_profile_in(spec, block_m, block_n, shape, params, 0..shape.seq_k)
}

/// The key tiles of each key split of a decode block ([`crate::decode`]): the query rows
/// `0..Sq` of `shape` (one block: the decode kernel packs a GQA group's heads into its M
/// tile, which does not change which keys a row sees), keys split as the kernel's
/// `af_split_schedule` does: `chunk = ceil(ceil(Sk / splits) / block_n) * block_n` keys per
/// split, the last ones shorter or empty.
pub fn split_profile(
    spec: &KernelSpec,
    block_n: usize,
    shape: &Shape,
    params: &RunParams,
    splits: usize,
) -> Vec<BlockTiles> {
    let sk = shape.seq_k;
    let chunk = sk.div_ceil(splits.max(1)).div_ceil(block_n) * block_n;
    (0..splits.max(1))
        .map(|s| {
            let lo = (s * chunk).min(sk);
            let hi = (lo + chunk).min(sk);
            let rows = shape.seq_q.max(1);
            tile_profile_in(spec, rows, block_n, shape, params, lo..hi)
                .into_iter()
                .fold(BlockTiles::default(), BlockTiles::plus)
        })
        .collect()
}

/// [`tile_profile`] over the key tiles starting in `keys` (a multiple of `block_n` wide, or
/// ending at `Sk`).
fn tile_profile_in(
    spec: &KernelSpec,
    block_m: usize,
    block_n: usize,
    shape: &Shape,
    params: &RunParams,
    keys: std::ops::Range<usize>,
) -> Vec<BlockTiles> {
    let (sq, sk) = (shape.seq_q, shape.seq_k);
    let tiles = Tiling {
        block_m,
        block_n,
        sq,
        sk,
    };
    let element_mask = match &spec.mask {
        Mask::Builtin(_) => spec.mask.def().is_some_and(|d| d.element_fn.is_some()),
        Mask::Predicate(_) | Mask::BlockSparse { mask: Some(_) } => true,
        Mask::BlockSparse { mask: None } => false,
    };
    if let (Mask::BlockSparse { .. }, Some(l)) = (&spec.mask, &params.block_lists) {
        let bs = spec.sparse_block;
        return (0..sq)
            .step_by(block_m)
            .map(|m0| {
                let r = m0 / bs.q.max(1);
                let blocks = |idx: &[i32], partial: bool| {
                    idx.iter()
                        .map(|&c| c as usize * bs.k)
                        .filter(|k0| keys.contains(k0))
                        .map(|k0| tiles.split(m0, k0, k0 + bs.k, partial))
                        .fold(BlockTiles::default(), BlockTiles::plus)
                };
                blocks(l.full(0, 0, r), false).plus(blocks(l.partial(0, 0, r), element_mask))
            })
            .collect();
    }
    let dense = || -> Vec<BlockTiles> {
        (0..sq)
            .step_by(block_m)
            .map(|m0| tiles.split(m0, keys.start, keys.end, element_mask))
            .collect()
    };
    let Some(mask) = reference_mask(spec, shape, params) else {
        return dense();
    };
    let Ok(g) = attnforge_reference::MaskGeometry::new(&mask, 1, 1, sq, sk) else {
        return dense();
    };
    let lists = spec.mask.uses_block_lists();
    let step = if lists {
        spec.sparse_block.k.max(1)
    } else {
        block_n
    };
    (0..sq)
        .step_by(block_m)
        .map(|m0| {
            // the rows a tile is classified over: the kernel's block, or its list row block
            let rs = if lists {
                let bq = spec.sparse_block.q.max(1);
                let r0 = m0 / bq * bq;
                r0..(r0 + bq).min(sq)
            } else {
                m0..(m0 + block_m).min(sq)
            };
            (0..sk)
                .step_by(step)
                .filter(|k0| keys.contains(k0))
                .filter(|&k0| g.any(rs.clone(), k0..(k0 + step).min(sk)))
                .map(|k0| {
                    let ks = k0..(k0 + step).min(sk);
                    let area = (rs.len() * ks.len()) as u64;
                    let partial = element_mask && g.pairs(rs.clone(), ks.clone()) < area;
                    tiles.split(m0, k0, k0 + step, partial)
                })
                .fold(BlockTiles::default(), BlockTiles::plus)
        })
        .collect()
}

/// The reference's mask of `spec` at `shape` with `params` (its closed forms through
/// [`attnforge_reference::MaskGeometry`]), or `None` for a mask without them (a user
/// predicate, explicit block lists).
fn reference_mask(
    spec: &KernelSpec,
    shape: &Shape,
    params: &RunParams,
) -> Option<attnforge_reference::Mask> {
    let sk = shape.seq_k;
    let def = spec.mask.def()?;
    let values: Vec<(&str, f64)> = def
        .params
        .iter()
        .filter_map(|p| Some((p.name, params.mask.as_ref()?.get(p.name)?)))
        .collect();
    let doc: Vec<i32> = params
        .doc
        .as_ref()
        .map(|d| d[..sk.min(d.len())].to_vec())
        .unwrap_or_default();
    attnforge_reference::Mask::builtin(def.tag, &values, &doc).ok()
}

/// The backward's dK/dV work ([`crate::backward`]): for each `block_n` key tile of one
/// (batch, kv head), the `block_m` query tiles of one query head that hold an allowed pair
/// (the transposed schedule walks exactly those). Masks without closed forms count every
/// query tile.
pub fn key_tile_profile(
    spec: &KernelSpec,
    block_m: usize,
    block_n: usize,
    shape: &Shape,
    params: &RunParams,
) -> Vec<u32> {
    let (sq, sk) = (shape.seq_q, shape.seq_k);
    let mask = reference_mask(spec, shape, params);
    let g = mask
        .as_ref()
        .and_then(|m| attnforge_reference::MaskGeometry::new(m, 1, 1, sq, sk).ok());
    (0..sk)
        .step_by(block_n.max(1))
        .map(|k0| {
            let ks = k0..(k0 + block_n).min(sk);
            (0..sq)
                .step_by(block_m.max(1))
                .filter(|&m0| {
                    g.as_ref()
                        .is_none_or(|g| g.any(m0..(m0 + block_m).min(sq), ks.clone()))
                })
                .count() as u32
        })
        .collect()
}

impl BlockTiles {
    fn plus(self, o: BlockTiles) -> BlockTiles {
        BlockTiles {
            visited: self.visited + o.visited,
            partial: self.partial + o.partial,
        }
    }
}

/// The kernel's tiling of one problem: `block_m` query rows by `block_n` keys.
struct Tiling {
    block_m: usize,
    block_n: usize,
    sq: usize,
    sk: usize,
}

impl Tiling {
    /// The `block_n` tiles of keys `[k0, k1)` (clipped to `seq_k`) of the query block at row
    /// `m0`, all partial when `partial`, else the edge ones: the last key tile when it is
    /// ragged, all of them when the query block is.
    fn split(&self, m0: usize, k0: usize, k1: usize, partial: bool) -> BlockTiles {
        let k1 = k1.min(self.sk);
        let visited = k1.saturating_sub(k0).div_ceil(self.block_n) as u32;
        let rows_edge = m0 + self.block_m > self.sq;
        let keys_edge = visited > 0 && k0 + visited as usize * self.block_n > self.sk;
        let partial = if partial || rows_edge {
            visited
        } else {
            u32::from(keys_edge)
        };
        BlockTiles { visited, partial }
    }
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

    fn shape(s: usize) -> Shape {
        Shape {
            batch: 1,
            heads_q: 1,
            heads_kv: 1,
            seq_q: s,
            seq_k: s,
        }
    }

    fn spec(tag: &str) -> KernelSpec {
        catalog()
            .into_iter()
            .find(|k| k.mask.def().is_some_and(|d| d.tag == tag))
            .unwrap_or_else(|| panic!("a catalog kernel with mask {tag}"))
    }

    /// Hand counts: full visits every tile, causal the tiles up to the diagonal (a ragged
    /// last tile included), document (thirds of 300 keys, 128-key lists) the lists' tiles.
    #[test]
    fn work_profiles_count_visited_tiles() {
        let s = shape(300);
        let full = spec("full");
        assert_eq!(
            work_profile(&full, 64, 64, &s, &default_params(&full, &s)),
            vec![5; 5]
        );
        let causal = spec("causal");
        assert_eq!(
            work_profile(&causal, 64, 64, &s, &default_params(&causal, &s)),
            vec![1, 2, 3, 4, 5]
        );
        assert_eq!(
            work_profile(&causal, 64, 32, &s, &default_params(&causal, &s)),
            vec![2, 4, 6, 8, 10]
        );
        // documents [0,100), [100,200), [200,300); 128 x 128 blocks: row block 0 (rows
        // 0..128) meets docs 0 and 1 -> key blocks 0 and 1 (keys 0..256: 4 tiles of 64);
        // row block 1 (128..256) docs 1, 2 -> blocks 0, 1, 2 (keys 0..300: 5 tiles); row
        // block 2 (256..300) doc 2 -> blocks 1, 2 (keys 128..300: 3 tiles).
        let doc = spec("document");
        let mut d = doc.clone();
        d.sparse_block = attnforge_codegen::spec::BlockSize { q: 128, k: 128 };
        assert_eq!(
            work_profile(&d, 64, 64, &s, &default_params(&d, &s)),
            vec![4, 4, 5, 5, 3]
        );
    }

    /// Hand counts of partial tiles (300 keys, 64 x 64 tiles): full has the ragged last key
    /// tile (keys 256..300) and the ragged last query block (rows 256..300); causal adds the
    /// diagonal tile of each query block.
    #[test]
    fn tile_profiles_count_partial_tiles() {
        let s = shape(300);
        let split = |tag: &str| -> Vec<(u32, u32)> {
            let k = spec(tag);
            tile_profile(&k, 64, 64, &s, &default_params(&k, &s))
                .iter()
                .map(|t| (t.visited, t.partial))
                .collect()
        };
        assert_eq!(split("full"), vec![(5, 1), (5, 1), (5, 1), (5, 1), (5, 5)]);
        assert_eq!(
            split("causal"),
            vec![(1, 1), (2, 1), (3, 1), (4, 1), (5, 5)]
        );
    }

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
