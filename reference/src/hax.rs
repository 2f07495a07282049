//! HAX: LSH hashing attention with sparse key selection (variants.md section 7).
//!
//! Per (batch, query head): hash preprocessing (centre and L2-normalise each feature
//! column over the sequence), sign-bit codes against hyperplanes, the LSH set (the
//! `k_lsh` most recent same-bucket keys), the key-selection set (the keys among the
//! `k_ks` largest `ks`), and exact attention over their union.
//!
//! ```
//! use attnforge_reference::{hax_attention, AttnOptions, HaxInputs, HaxParams, Shape4, Tensor4};
//! let qk = Tensor4::from_fn(Shape4::new(1, 1, 6, 2), |_, _, s, d| ((s * 3 + d * 5) % 7) as f32 - 3.0);
//! let hp = Tensor4::from_fn(Shape4::new(1, 1, 2, 2), |_, _, n, t| if n == t { 1.0f32 } else { -0.5 });
//! let ks = Tensor4::from_fn(Shape4::new(1, 1, 6, 1), |_, _, s, _| s as f32);
//! let inputs = HaxInputs { q2: &qk, k2: &qk, x: &qk, hyperplanes: &hp, ks: &ks };
//! let params = HaxParams { k_lsh: 2, k_ks: 2, ..HaxParams::default() };
//! let r = hax_attention(&inputs, &params, &AttnOptions::reference())?;
//! assert!(r.lse.iter().all(|l| l.is_finite()));
//! # Ok::<(), attnforge_reference::RefError>(())
//! ```

use crate::core::{check_key_sets, check_qkv, dispatch, keys_impl, Dims, KeySets};
use crate::element::{Acc, Element};
use crate::error::RefError;
use crate::landmark::top_k_by;
use crate::tensor::{AttnOptions, AttnOutput, Dense, Precision, Tensor4};

/// How a per-head parameter (hyperplanes, `ks`) is shared across heads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sharing {
    /// One copy for every head (head extent 1).
    #[default]
    Shared,
    /// One copy per query head (head extent Hq).
    PerQueryHead,
    /// One copy per kv head, used by every query head of its group (head extent Hkv).
    PerKvHead,
}

/// HAX budgets and sharing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HaxParams {
    /// LSH budget: most recent same-bucket keys kept (official default 32).
    pub k_lsh: usize,
    /// Key-selection budget (official default 32).
    pub k_ks: usize,
    /// Sharing of the hyperplanes across heads.
    pub hyperplane_sharing: Sharing,
    /// Sharing of the key-selection scores across heads.
    pub ks_sharing: Sharing,
}

impl Default for HaxParams {
    /// `k_lsh = k_ks = 32`, everything shared.
    fn default() -> Self {
        Self {
            k_lsh: 32,
            k_ks: 32,
            hyperplane_sharing: Sharing::Shared,
            ks_sharing: Sharing::Shared,
        }
    }
}

/// HAX inputs. `q2: [B, Hq, S, N]`, `k2: [B, Hkv, S, N]`, `x: [B, Hkv, S, Dv]`,
/// `hyperplanes: [1 or B, H', N, nb]` (`1 <= nb <= 31`), `ks: [1 or B, H', S, 1]`, where
/// `H'` is 1, Hq or Hkv according to the [`Sharing`] in [`HaxParams`].
#[derive(Debug, Clone, Copy)]
pub struct HaxInputs<'a, T, U> {
    /// Queries Q2.
    pub q2: &'a Tensor4<T>,
    /// Keys K2 (already scaled by the model; the default score scale is 1).
    pub k2: &'a Tensor4<T>,
    /// Values X.
    pub x: &'a Tensor4<T>,
    /// Hyperplanes Hp.
    pub hyperplanes: &'a Tensor4<U>,
    /// Key-selection scores ks.
    pub ks: &'a Tensor4<U>,
}

/// LSH codes per query head: `q[(b * Hq + h) * S + i]` is `code_q(i)` and
/// `k[(b * Hq + h) * S + j]` is `code_k(j)` of kv head `h / (Hq / Hkv)` hashed with query
/// head `h`'s hyperplanes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaxCodes {
    /// Query codes `[B, Hq, S]`.
    pub q: Vec<u32>,
    /// Key codes `[B, Hq, S]`.
    pub k: Vec<u32>,
}

fn head_index(sharing: Sharing, h: usize, kh: usize) -> usize {
    match sharing {
        Sharing::Shared => 0,
        Sharing::PerQueryHead => h,
        Sharing::PerKvHead => kh,
    }
}

fn check_param<U: Element>(
    t: &Tensor4<U>,
    sharing: Sharing,
    dims: &Dims,
    field: &'static str,
    seq: usize,
    seq_fix: &'static str,
) -> Result<(), RefError> {
    t.check_len(field)?;
    let sh = t.shape;
    if sh.batch != 1 && sh.batch != dims.b {
        return Err(RefError::ShapeMismatch {
            field,
            expected: format!("batch 1 or B = {}", dims.b),
            got: sh.batch,
            fix: "use batch extent 1 (shared) or B",
        });
    }
    let heads = match sharing {
        Sharing::Shared => 1,
        Sharing::PerQueryHead => dims.hq,
        Sharing::PerKvHead => dims.hkv,
    };
    if sh.heads != heads {
        return Err(RefError::ShapeMismatch {
            field,
            expected: format!("{heads} heads for {sharing:?}"),
            got: sh.heads,
            fix: "head extent must be 1 (Shared), Hq (PerQueryHead) or Hkv (PerKvHead)",
        });
    }
    if sh.seq != seq {
        return Err(RefError::ShapeMismatch {
            field,
            expected: seq.to_string(),
            got: sh.seq,
            fix: seq_fix,
        });
    }
    Ok(())
}

fn check_hax<T: Element, U: Element>(
    inp: &HaxInputs<'_, T, U>,
    params: &HaxParams,
) -> Result<Dims, RefError> {
    let dims = check_qkv(inp.q2, inp.k2, inp.x)?;
    dims.require_sq_eq_sk("hax")?;
    check_param(
        inp.hyperplanes,
        params.hyperplane_sharing,
        &dims,
        "hyperplanes",
        dims.d,
        "hyperplanes are [_, _, N, nb] with N the feature dimension of q2/k2",
    )?;
    let nb = inp.hyperplanes.shape.dim;
    if nb == 0 || nb > 31 {
        return Err(RefError::InvalidParam {
            field: "hyperplanes.dim (nb)",
            value: nb.to_string(),
            fix: "use between 1 and 31 hyperplanes (official default 8)",
        });
    }
    check_param(
        inp.ks,
        params.ks_sharing,
        &dims,
        "ks",
        dims.sk,
        "ks is [_, _, S, 1]: one score per key",
    )?;
    if inp.ks.shape.dim != 1 {
        return Err(RefError::ShapeMismatch {
            field: "ks.dim",
            expected: "1".into(),
            got: inp.ks.shape.dim,
            fix: "ks is [_, _, S, 1]: one score per key",
        });
    }
    if inp.ks.data.iter().any(|x| !x.to_f64().is_finite()) {
        return Err(RefError::InvalidParam {
            field: "ks",
            value: "a non-finite value".into(),
            fix: "key-selection scores must be finite",
        });
    }
    if params.k_lsh == 0 && params.k_ks == 0 {
        return Err(RefError::InvalidParam {
            field: "HaxParams::k_lsh + k_ks",
            value: "0".into(),
            fix: "at least one budget must be >= 1 (official default 32 + 32)",
        });
    }
    Ok(dims)
}

/// Centre each column over the sequence, then divide by its L2 norm (`max(norm, 1e-12)`).
fn normalise<A: Acc>(x: &Dense<A>, b: usize, h: usize) -> Vec<Vec<A>> {
    let (s, n) = (x.shape.seq, x.shape.dim);
    let mut rows: Vec<Vec<A>> = (0..s).map(|i| x.row(b, h, i).to_vec()).collect();
    for c in 0..n {
        let mean = rows.iter().fold(A::ZERO, |a, r| a + r[c]) / A::of(s as f64);
        for r in rows.iter_mut() {
            r[c] = r[c] - mean;
        }
        let norm = rows
            .iter()
            .fold(A::ZERO, |a, r| a + r[c] * r[c])
            .sqrt()
            .max(A::of(1e-12));
        for r in rows.iter_mut() {
            r[c] = r[c] / norm;
        }
    }
    rows
}

fn code<A: Acc>(x: &[A], hp: &Dense<A>, hb: usize, hh: usize) -> u32 {
    let nb = hp.shape.dim;
    let mut c = 0u32;
    for t in 0..nb {
        let mut d = A::ZERO;
        for (n, xn) in x.iter().enumerate() {
            d += *xn * hp.row(hb, hh, n)[t];
        }
        if d > A::ZERO {
            c |= 1 << t;
        }
    }
    c
}

fn codes_impl<T: Element, U: Element, A: Acc>(
    inp: &HaxInputs<'_, T, U>,
    dims: &Dims,
    params: &HaxParams,
) -> HaxCodes {
    let (qa, ka) = (inp.q2.to_acc::<A>(), inp.k2.to_acc::<A>());
    let hp = inp.hyperplanes.to_acc::<A>();
    let s = dims.sq;
    let mut codes = HaxCodes {
        q: Vec::with_capacity(dims.b * dims.hq * s),
        k: Vec::new(),
    };
    for b in 0..dims.b {
        let hb = if hp.shape.batch == 1 { 0 } else { b };
        for h in 0..dims.hq {
            let kh = dims.kv_head(h);
            let hh = head_index(params.hyperplane_sharing, h, kh);
            let qn = normalise(&qa, b, h);
            let kn = normalise(&ka, b, kh);
            codes.q.extend(qn.iter().map(|r| code(r, &hp, hb, hh)));
            codes.k.extend(kn.iter().map(|r| code(r, &hp, hb, hh)));
        }
    }
    codes
}

fn sets_impl<T: Element, U: Element, A: Acc>(
    inp: &HaxInputs<'_, T, U>,
    dims: &Dims,
    params: &HaxParams,
) -> KeySets {
    let codes = codes_impl::<T, U, A>(inp, dims, params);
    let s = dims.sq;
    let mut sets = Vec::with_capacity(dims.b * dims.hq * s);
    for b in 0..dims.b {
        let kb = if inp.ks.shape.batch == 1 { 0 } else { b };
        for h in 0..dims.hq {
            let kh = dims.kv_head(h);
            let ksh = head_index(params.ks_sharing, h, kh);
            let base = (b * dims.hq + h) * s;
            let ks = |j: usize| inp.ks.get(kb, ksh, j, 0);
            for i in 0..s {
                let mut keep = vec![false; i + 1];
                let lsh = (0..=i)
                    .rev()
                    .filter(|&j| codes.q[base + i] == codes.k[base + j]);
                for j in lsh.take(params.k_lsh) {
                    keep[j] = true;
                }
                let prefix: Vec<usize> = (0..=i).collect();
                for j in top_k_by(&prefix, params.k_ks, ks) {
                    keep[j] = true;
                }
                sets.push((0..=i).filter(|&j| keep[j]).collect());
            }
        }
    }
    sets
}

fn hax_impl<T: Element, U: Element, A: Acc>(
    inp: &HaxInputs<'_, T, U>,
    dims: &Dims,
    params: &HaxParams,
    scale: f64,
) -> Result<AttnOutput, RefError> {
    let sets = sets_impl::<T, U, A>(inp, dims, params);
    check_key_sets(dims, &sets)?;
    Ok(keys_impl::<T, A>(inp.q2, inp.k2, inp.x, dims, &sets, scale))
}

/// The LSH codes of section 7 (hash preprocessing + sign bits), computed in `precision`.
pub fn hax_codes<T: Element, U: Element>(
    inputs: &HaxInputs<'_, T, U>,
    params: &HaxParams,
    precision: Precision,
) -> Result<HaxCodes, RefError> {
    let dims = check_hax(inputs, params)?;
    Ok(match precision {
        Precision::F64 => codes_impl::<T, U, f64>(inputs, &dims, params),
        Precision::Naive => codes_impl::<T, U, f32>(inputs, &dims, params),
    })
}

/// The union of the LSH set and the key-selection set per `(b, h, i)`, ascending
/// (indexed `[(b * Hq + h) * S + i]`), computed in `precision`.
pub fn hax_key_sets<T: Element, U: Element>(
    inputs: &HaxInputs<'_, T, U>,
    params: &HaxParams,
    precision: Precision,
) -> Result<KeySets, RefError> {
    let dims = check_hax(inputs, params)?;
    Ok(match precision {
        Precision::F64 => sets_impl::<T, U, f64>(inputs, &dims, params),
        Precision::Naive => sets_impl::<T, U, f32>(inputs, &dims, params),
    })
}

/// HAX attention (section 7): exact attention over the union of the LSH set and the
/// key-selection set with scores `scale * dot(Q2_i, K2_j)` (`scale` defaults to 1) and
/// values X. Requires `Sq == Sk`. With `k_ks = 0` a row may be empty (out 0, lse -inf).
pub fn hax_attention<T: Element, U: Element>(
    inputs: &HaxInputs<'_, T, U>,
    params: &HaxParams,
    opts: &AttnOptions,
) -> Result<AttnOutput, RefError> {
    let dims = check_hax(inputs, params)?;
    let scale = opts.scale_or(1.0)?;
    dispatch!(opts, hax_impl::<T, U>(inputs, &dims, params, scale))
}
