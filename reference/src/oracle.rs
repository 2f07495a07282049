//! The tolerance oracle of variants.md section 0: a kernel output `K` passes when
//! `max|K - R| <= rtol * max|N - R| + atol` for `out` and for `lse`, over the non-empty
//! rows of the f64 reference `R`, with `N` the naive same-precision result; rows empty in
//! `R` must be exactly empty in `K` (out 0, lse -inf).
//!
//! ```
//! use attnforge_reference::{assert_close, dense_attention, AttnOptions, DType, Shape4, Tensor4, Tolerance};
//! let x = Tensor4::from_fn(Shape4::new(1, 1, 4, 8), |_, _, s, d| half::f16::from_f32((s * d) as f32 * 0.1));
//! let r = dense_attention(&x, &x, &x, true, &AttnOptions::reference())?;
//! let n = dense_attention(&x, &x, &x, true, &AttnOptions::naive())?;
//! let tol = Tolerance::for_dtype(DType::F16);
//! let report = assert_close(&n, &r, &n, tol.rtol, tol.atol).expect("naive passes against itself");
//! assert!(report.out.ratio <= 1.0);
//! # Ok::<(), attnforge_reference::RefError>(())
//! ```

use std::fmt;

use thiserror::Error;

use crate::element::DType;
use crate::tensor::AttnOutput;

/// Default tolerances per dtype (see [`Tolerance::for_dtype`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    /// Multiple of the naive path's max error the kernel may reach.
    pub rtol: f64,
    /// Absolute slack added to the bound.
    pub atol: f64,
}

impl Tolerance {
    /// Defaults: `rtol = 2` for every dtype (FlashAttention's and FlexAttention's factor);
    /// `atol` about one unit in the last place at 1.0 so that a naive error of exactly 0
    /// does not demand bit-exactness: f32 `1e-5`, f16 `1e-3`, bf16 `8e-3`, f64 `1e-10`.
    pub fn for_dtype(dtype: DType) -> Self {
        let atol = match dtype {
            DType::F32 => 1e-5,
            DType::F16 => 1e-3,
            DType::Bf16 => 8e-3,
            DType::F64 => 1e-10,
        };
        Self { rtol: 2.0, atol }
    }
}

/// Where an error was found: `(b, h, row)` and, for `out`, the column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Location {
    /// Batch.
    pub b: usize,
    /// Query head.
    pub h: usize,
    /// Query row.
    pub row: usize,
    /// Output column (`None` for lse).
    pub col: Option<usize>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.col {
            Some(c) => write!(f, "(b={}, h={}, row={}, col={c})", self.b, self.h, self.row),
            None => write!(f, "(b={}, h={}, row={})", self.b, self.h, self.row),
        }
    }
}

/// Error statistics for one quantity (`out` or `lse`).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ErrorStat {
    /// `max |K - R|` over non-empty rows.
    pub max_err: f64,
    /// Where `max_err` occurs.
    pub at: Location,
    /// `max |N - R|` over non-empty rows (non-finite differences ignored).
    pub naive_err: f64,
    /// `rtol * naive_err + atol`.
    pub bound: f64,
    /// `max_err / naive_err` (0 when both are 0, +inf when only the naive error is 0).
    pub ratio: f64,
}

/// A passing comparison.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CloseReport {
    /// Statistics of `out`.
    pub out: ErrorStat,
    /// Statistics of `lse`.
    pub lse: ErrorStat,
    /// Rows compared numerically.
    pub checked_rows: usize,
    /// Rows empty in the reference (checked to be exactly empty in the kernel).
    pub empty_rows: usize,
}

/// Why a kernel output failed the oracle.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum CloseError {
    /// The three results do not have the same shape.
    #[error("`{which}` has shape {got:?} ({got_out} out / {got_lse} lse values), expected {expected:?}; compare results of the same problem")]
    Shape {
        /// `kernel` or `naive`.
        which: &'static str,
        /// Reference shape.
        expected: crate::tensor::Shape4,
        /// Given shape.
        got: crate::tensor::Shape4,
        /// Length of `out`.
        got_out: usize,
        /// Length of `lse`.
        got_lse: usize,
    },
    /// The kernel wrote NaN.
    #[error("kernel `{which}` is NaN at {at}")]
    NaN {
        /// `out` or `lse`.
        which: &'static str,
        /// Where.
        at: Location,
    },
    /// A row empty in the reference is not exactly empty in the kernel.
    #[error("row {at} is empty in the reference but the kernel wrote lse = {lse}, max |out| = {max_out}; an empty row must be out 0, lse -inf")]
    EmptyRow {
        /// The row.
        at: Location,
        /// Kernel lse.
        lse: f64,
        /// Kernel max |out| on that row.
        max_out: f64,
    },
    /// The error exceeds the bound.
    #[error("kernel `{which}` error {err:.3e} at {at} exceeds rtol * naive + atol = {bound:.3e} (naive error {naive_err:.3e}, ratio {ratio:.2})")]
    Exceeds {
        /// `out` or `lse`.
        which: &'static str,
        /// Max error.
        err: f64,
        /// Where.
        at: Location,
        /// The bound.
        bound: f64,
        /// Naive error.
        naive_err: f64,
        /// `err / naive_err`.
        ratio: f64,
    },
}

fn check_shape(which: &'static str, r: &AttnOutput, x: &AttnOutput) -> Result<(), CloseError> {
    let rows = r.shape.batch * r.shape.heads * r.shape.seq;
    if x.shape != r.shape || x.out.len() != r.shape.numel() || x.lse.len() != rows {
        return Err(CloseError::Shape {
            which,
            expected: r.shape,
            got: x.shape,
            got_out: x.out.len(),
            got_lse: x.lse.len(),
        });
    }
    Ok(())
}

fn finish(
    which: &'static str,
    mut st: ErrorStat,
    rtol: f64,
    atol: f64,
) -> Result<ErrorStat, CloseError> {
    st.bound = rtol * st.naive_err + atol;
    st.ratio = if st.max_err == 0.0 {
        0.0
    } else {
        st.max_err / st.naive_err
    };
    if st.max_err <= st.bound {
        Ok(st)
    } else {
        Err(CloseError::Exceeds {
            which,
            err: st.max_err,
            at: st.at,
            bound: st.bound,
            naive_err: st.naive_err,
            ratio: st.ratio,
        })
    }
}

/// Compare a kernel result against the f64 `reference` with the bound
/// `rtol * max|naive - reference| + atol`, separately for `out` and `lse`, over the rows
/// that are not empty in the reference. Empty reference rows must be exactly empty in the
/// kernel. Default `rtol`/`atol` per dtype: [`Tolerance::for_dtype`].
pub fn assert_close(
    kernel: &AttnOutput,
    reference: &AttnOutput,
    naive: &AttnOutput,
    rtol: f64,
    atol: f64,
) -> Result<CloseReport, CloseError> {
    check_shape("kernel", reference, kernel)?;
    check_shape("naive", reference, naive)?;
    let sh = reference.shape;
    let mut rep = CloseReport::default();
    let (mut so, mut sl) = (ErrorStat::default(), ErrorStat::default());
    for r in 0..reference.lse.len() {
        let loc = Location {
            b: r / (sh.heads * sh.seq),
            h: (r / sh.seq) % sh.heads,
            row: r % sh.seq,
            col: None,
        };
        let (kr, rr, nr) = (
            &kernel.out[r * sh.dim..(r + 1) * sh.dim],
            &reference.out[r * sh.dim..(r + 1) * sh.dim],
            &naive.out[r * sh.dim..(r + 1) * sh.dim],
        );
        if kernel.lse[r].is_nan() {
            return Err(CloseError::NaN {
                which: "lse",
                at: loc,
            });
        }
        if let Some(c) = kr.iter().position(|x| x.is_nan()) {
            return Err(CloseError::NaN {
                which: "out",
                at: Location {
                    col: Some(c),
                    ..loc
                },
            });
        }
        if reference.lse[r] == f64::NEG_INFINITY {
            rep.empty_rows += 1;
            let max_out = kr.iter().fold(0.0f64, |a, x| a.max(x.abs()));
            if kernel.lse[r] != f64::NEG_INFINITY || max_out != 0.0 {
                return Err(CloseError::EmptyRow {
                    at: loc,
                    lse: kernel.lse[r],
                    max_out,
                });
            }
            continue;
        }
        rep.checked_rows += 1;
        for c in 0..sh.dim {
            let e = (kr[c] - rr[c]).abs();
            if e > so.max_err || (e.is_infinite() && so.max_err.is_finite()) {
                so.max_err = e;
                so.at = Location {
                    col: Some(c),
                    ..loc
                };
            }
            let ne = (nr[c] - rr[c]).abs();
            if ne.is_finite() {
                so.naive_err = so.naive_err.max(ne);
            }
        }
        let e = (kernel.lse[r] - reference.lse[r]).abs();
        if e > sl.max_err {
            sl.max_err = e;
            sl.at = loc;
        }
        let ne = (naive.lse[r] - reference.lse[r]).abs();
        if ne.is_finite() {
            sl.naive_err = sl.naive_err.max(ne);
        }
    }
    rep.out = finish("out", so, rtol, atol)?;
    rep.lse = finish("lse", sl, rtol, atol)?;
    Ok(rep)
}
