//! Input tensors (`[B, H, S, D]`, any strides), the output type, and per-call options.
//!
//! ```
//! use attnforge_reference::{Shape4, Tensor4};
//! let q = Tensor4::from_fn(Shape4::new(1, 2, 3, 4), |b, h, s, d| (b + h + s + d) as f32);
//! assert_eq!(q.get(0, 1, 2, 3), 6.0);
//! ```

use crate::element::{Acc, Element};
use crate::error::RefError;

/// A 4-d shape `[batch, heads, seq, dim]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shape4 {
    /// Batch size B.
    pub batch: usize,
    /// Heads H.
    pub heads: usize,
    /// Sequence length S.
    pub seq: usize,
    /// Head (or value) dimension D.
    pub dim: usize,
}

impl Shape4 {
    /// `[batch, heads, seq, dim]`.
    pub fn new(batch: usize, heads: usize, seq: usize, dim: usize) -> Self {
        Self {
            batch,
            heads,
            seq,
            dim,
        }
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.batch * self.heads * self.seq * self.dim
    }

    /// Contiguous row-major strides.
    pub fn contiguous_strides(&self) -> [usize; 4] {
        [
            self.heads * self.seq * self.dim,
            self.seq * self.dim,
            self.dim,
            1,
        ]
    }
}

/// A `[B, H, S, D]` tensor. Elements are read through `strides` (in elements), so
/// `[B, S, H, D]` memory can be passed with strides `[S*H*D, D, H*D, 1]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor4<T> {
    /// Logical shape.
    pub shape: Shape4,
    /// Element strides for (batch, heads, seq, dim).
    pub strides: [usize; 4],
    /// Storage.
    pub data: Vec<T>,
}

impl<T: Element> Tensor4<T> {
    /// A contiguous row-major tensor; errors when `data.len() != shape.numel()`.
    pub fn from_vec(shape: Shape4, data: Vec<T>) -> Result<Self, RefError> {
        if data.len() != shape.numel() {
            return Err(RefError::DataLength {
                field: "Tensor4::data",
                expected: shape.numel(),
                got: data.len(),
            });
        }
        Ok(Self {
            shape,
            strides: shape.contiguous_strides(),
            data,
        })
    }

    /// A tensor with explicit strides; errors when the largest index is outside `data`.
    pub fn with_strides(
        shape: Shape4,
        strides: [usize; 4],
        data: Vec<T>,
    ) -> Result<Self, RefError> {
        let t = Self {
            shape,
            strides,
            data,
        };
        t.check_len("Tensor4::data")?;
        Ok(t)
    }

    /// A contiguous tensor filled from `f(b, h, s, d)`.
    pub fn from_fn(shape: Shape4, mut f: impl FnMut(usize, usize, usize, usize) -> T) -> Self {
        let mut data = Vec::with_capacity(shape.numel());
        for b in 0..shape.batch {
            for h in 0..shape.heads {
                for s in 0..shape.seq {
                    for d in 0..shape.dim {
                        data.push(f(b, h, s, d));
                    }
                }
            }
        }
        Self {
            shape,
            strides: shape.contiguous_strides(),
            data,
        }
    }

    /// A contiguous tensor converted element-wise from f64 (rounded to `T`).
    pub fn from_f64(shape: Shape4, data: &[f64]) -> Result<Self, RefError> {
        Self::from_vec(shape, data.iter().map(|&x| T::from_f64(x)).collect())
    }

    /// Element `(b, h, s, d)` widened to f64. Panics on an out-of-range index (like slice indexing).
    pub fn get(&self, b: usize, h: usize, s: usize, d: usize) -> f64 {
        self.data[self.offset(b, h, s, d)].to_f64()
    }

    fn offset(&self, b: usize, h: usize, s: usize, d: usize) -> usize {
        b * self.strides[0] + h * self.strides[1] + s * self.strides[2] + d * self.strides[3]
    }

    /// Check that every in-shape index falls inside `data`.
    pub(crate) fn check_len(&self, field: &'static str) -> Result<(), RefError> {
        let sh = self.shape;
        if sh.numel() == 0 {
            return Ok(());
        }
        let last = self.offset(sh.batch - 1, sh.heads - 1, sh.seq - 1, sh.dim - 1);
        if last >= self.data.len() {
            return Err(RefError::DataLength {
                field,
                expected: last + 1,
                got: self.data.len(),
            });
        }
        Ok(())
    }

    /// Contiguous copy in accumulator precision.
    pub(crate) fn to_acc<A: Acc>(&self) -> Dense<A> {
        let sh = self.shape;
        let mut data = Vec::with_capacity(sh.numel());
        for b in 0..sh.batch {
            for h in 0..sh.heads {
                for s in 0..sh.seq {
                    for d in 0..sh.dim {
                        data.push(A::of_elem(self.data[self.offset(b, h, s, d)]));
                    }
                }
            }
        }
        Dense { shape: sh, data }
    }
}

/// Contiguous working copy in accumulator precision.
#[derive(Debug, Clone)]
pub(crate) struct Dense<A> {
    pub shape: Shape4,
    pub data: Vec<A>,
}

impl<A: Acc> Dense<A> {
    /// Row `(b, h, s)` as a slice of length `dim`.
    pub fn row(&self, b: usize, h: usize, s: usize) -> &[A] {
        let sh = self.shape;
        let start = ((b * sh.heads + h) * sh.seq + s) * sh.dim;
        &self.data[start..start + sh.dim]
    }
}

/// Which arithmetic a reference call uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// The f64 reference: inputs widened exactly, everything in f64, outputs unrounded.
    #[default]
    F64,
    /// The naive same-precision path: inputs in their dtype, scores, softmax and
    /// accumulation in f32, the unnormalised probabilities rounded to the input dtype
    /// before the `P @ V` product (as an mma kernel does), the output rounded to the input
    /// dtype and the lse kept in f32 (as a kernel writes them). For f32 inputs only the
    /// f32 arithmetic differs from the reference.
    Naive,
}

/// Per-call options shared by every variant.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct AttnOptions {
    /// Score scale; `None` means the variant's default (`1/sqrt(D)`; 1 for HAX).
    pub scale: Option<f64>,
    /// Reference (f64) or naive same-precision arithmetic.
    pub precision: Precision,
}

impl AttnOptions {
    /// f64 reference with the default scale.
    pub fn reference() -> Self {
        Self {
            scale: None,
            precision: Precision::F64,
        }
    }

    /// Naive same-precision path with the default scale.
    pub fn naive() -> Self {
        Self {
            scale: None,
            precision: Precision::Naive,
        }
    }

    /// The same options with an explicit scale.
    pub fn with_scale(self, scale: f64) -> Self {
        Self {
            scale: Some(scale),
            ..self
        }
    }

    pub(crate) fn scale_or(&self, default: f64) -> Result<f64, RefError> {
        match self.scale {
            None => Ok(default),
            Some(s) if s.is_finite() => Ok(s),
            Some(s) => Err(RefError::InvalidParam {
                field: "AttnOptions::scale",
                value: s.to_string(),
                fix: "pass a finite scale, or None for the default",
            }),
        }
    }
}

/// Shape of an [`AttnOutput`]: `out` is `[batch, heads, seq, dim]`, `lse` is `[batch, heads, seq]`.
pub type OutShape = Shape4;

/// The result of one attention call: `out: [B, Hq, Sq, Dv]` and `lse: [B, Hq, Sq]`,
/// contiguous row-major, in f64. An empty row has `out == 0` and `lse == -inf`.
#[derive(Debug, Clone, PartialEq)]
pub struct AttnOutput {
    /// `[B, Hq, Sq, Dv]` values.
    pub out: Vec<f64>,
    /// `[B, Hq, Sq]` natural-log sum of exp of the allowed (modified) scores.
    pub lse: Vec<f64>,
    /// `(B, Hq, Sq, Dv)`.
    pub shape: OutShape,
}

impl AttnOutput {
    /// Zero-filled output with every row empty (`lse = -inf`).
    pub fn empty(shape: OutShape) -> Self {
        Self {
            out: vec![0.0; shape.numel()],
            lse: vec![f64::NEG_INFINITY; shape.batch * shape.heads * shape.seq],
            shape,
        }
    }

    /// Wrap what a kernel wrote (`out` in its dtype, `lse` in f32) for [`crate::assert_close`].
    pub fn from_kernel<T: Element>(
        shape: OutShape,
        out: &[T],
        lse: &[f32],
    ) -> Result<Self, RefError> {
        if out.len() != shape.numel() {
            return Err(RefError::DataLength {
                field: "kernel out",
                expected: shape.numel(),
                got: out.len(),
            });
        }
        let rows = shape.batch * shape.heads * shape.seq;
        if lse.len() != rows {
            return Err(RefError::DataLength {
                field: "kernel lse",
                expected: rows,
                got: lse.len(),
            });
        }
        Ok(Self {
            out: out.iter().map(|x| x.to_f64()).collect(),
            lse: lse.iter().map(|&x| f64::from(x)).collect(),
            shape,
        })
    }

    /// Output row `(b, h, i)` (length `Dv`).
    pub fn row(&self, b: usize, h: usize, i: usize) -> &[f64] {
        let s = self.shape;
        let start = ((b * s.heads + h) * s.seq + i) * s.dim;
        &self.out[start..start + s.dim]
    }

    /// Log-sum-exp of row `(b, h, i)`.
    pub fn lse_at(&self, b: usize, h: usize, i: usize) -> f64 {
        let s = self.shape;
        self.lse[(b * s.heads + h) * s.seq + i]
    }
}
