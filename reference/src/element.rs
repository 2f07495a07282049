//! Element types (f32, f16, bf16, f64) and the internal accumulator abstraction.
//!
//! [`Element`] converts kernel input/output element types to and from `f64`/`f32`.
//! The crate-private [`Acc`] trait lets one generic implementation of every variant
//! run either in `f64` (the reference) or in `f32` (the naive same-precision path).
//!
//! ```
//! use attnforge_reference::{DType, Element};
//! let x = half::bf16::from_f64(1.0 / 3.0);
//! assert_eq!(<half::bf16 as Element>::DTYPE, DType::Bf16);
//! assert!((x.to_f64() - 1.0 / 3.0).abs() < 1e-2);
//! ```

use std::fmt::Debug;
use std::ops::{Add, AddAssign, Div, Mul, Neg, Sub};

use half::{bf16, f16};

/// The element type of a tensor, as a kernel sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE binary32.
    F32,
    /// IEEE binary16 (`__half`).
    F16,
    /// bfloat16 (`__nv_bfloat16`).
    Bf16,
    /// IEEE binary64 (only for reference-side inputs; no kernel uses it).
    F64,
}

impl DType {
    /// Lower-case name as used in canonical kernel names (`f32`, `f16`, `bf16`, `f64`).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::Bf16 => "bf16",
            DType::F64 => "f64",
        }
    }
}

/// A tensor element type: f32, f16, bf16 (from the `half` crate) or f64.
///
/// Conversions from wider types round to nearest even, like `__float2half_rn`.
pub trait Element: Copy + Send + Sync + Debug + 'static {
    /// The dtype tag of this element type.
    const DTYPE: DType;
    /// Exact widening to f64.
    fn to_f64(self) -> f64;
    /// Widening (exact for f32/f16/bf16, rounding for f64) to f32.
    fn to_f32(self) -> f32;
    /// Round an f64 to this type.
    fn from_f64(x: f64) -> Self;
    /// Round an f32 to this type.
    fn from_f32(x: f32) -> Self;
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    fn to_f32(self) -> f32 {
        self
    }
    fn from_f64(x: f64) -> Self {
        x as f32
    }
    fn from_f32(x: f32) -> Self {
        x
    }
}

impl Element for f64 {
    const DTYPE: DType = DType::F64;
    fn to_f64(self) -> f64 {
        self
    }
    fn to_f32(self) -> f32 {
        self as f32
    }
    fn from_f64(x: f64) -> Self {
        x
    }
    fn from_f32(x: f32) -> Self {
        f64::from(x)
    }
}

impl Element for f16 {
    const DTYPE: DType = DType::F16;
    fn to_f64(self) -> f64 {
        f16::to_f64(self)
    }
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    fn from_f64(x: f64) -> Self {
        f16::from_f64(x)
    }
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
}

impl Element for bf16 {
    const DTYPE: DType = DType::Bf16;
    fn to_f64(self) -> f64 {
        bf16::to_f64(self)
    }
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    fn from_f64(x: f64) -> Self {
        bf16::from_f64(x)
    }
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
}

/// Accumulator arithmetic: `f64` for the reference, `f32` for the naive path.
pub(crate) trait Acc:
    Copy
    + PartialOrd
    + Debug
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
{
    const ZERO: Self;
    const NEG_INF: Self;
    fn of(x: f64) -> Self;
    fn of_elem<T: Element>(x: T) -> Self;
    fn f64(self) -> f64;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn tanh(self) -> Self;
    fn sqrt(self) -> Self;
    fn sin(self) -> Self;
    fn cos(self) -> Self;
    fn powf(self, e: Self) -> Self;
    fn max(self, o: Self) -> Self;
    /// Round to the element type `T` as a kernel storing into `T` would (identity in f64 mode).
    fn round_elem<T: Element>(self) -> Self;
}

impl Acc for f64 {
    const ZERO: Self = 0.0;
    const NEG_INF: Self = f64::NEG_INFINITY;
    fn of(x: f64) -> Self {
        x
    }
    fn of_elem<T: Element>(x: T) -> Self {
        x.to_f64()
    }
    fn f64(self) -> f64 {
        self
    }
    fn exp(self) -> Self {
        f64::exp(self)
    }
    fn ln(self) -> Self {
        f64::ln(self)
    }
    fn tanh(self) -> Self {
        f64::tanh(self)
    }
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
    fn sin(self) -> Self {
        f64::sin(self)
    }
    fn cos(self) -> Self {
        f64::cos(self)
    }
    fn powf(self, e: Self) -> Self {
        f64::powf(self, e)
    }
    fn max(self, o: Self) -> Self {
        f64::max(self, o)
    }
    fn round_elem<T: Element>(self) -> Self {
        self
    }
}

impl Acc for f32 {
    const ZERO: Self = 0.0;
    const NEG_INF: Self = f32::NEG_INFINITY;
    fn of(x: f64) -> Self {
        x as f32
    }
    fn of_elem<T: Element>(x: T) -> Self {
        x.to_f32()
    }
    fn f64(self) -> f64 {
        f64::from(self)
    }
    fn exp(self) -> Self {
        f32::exp(self)
    }
    fn ln(self) -> Self {
        f32::ln(self)
    }
    fn tanh(self) -> Self {
        f32::tanh(self)
    }
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
    fn sin(self) -> Self {
        f32::sin(self)
    }
    fn cos(self) -> Self {
        f32::cos(self)
    }
    fn powf(self, e: Self) -> Self {
        f32::powf(self, e)
    }
    fn max(self, o: Self) -> Self {
        f32::max(self, o)
    }
    fn round_elem<T: Element>(self) -> Self {
        T::from_f32(self).to_f32()
    }
}
