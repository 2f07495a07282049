//! Host-side encoder of TMA tensor maps (tiled mode) for `cp.async.bulk.tensor`.
//!
//! One [`TensorMapSpec`] describes the tensor and the box; it is validated against the
//! rules of `cuTensorMapEncodeTiled` (CUDA driver API) and then either
//! - serialised for the simulator with [`TensorMapSpec::encode_for_sim`] (the shim's
//!   `afsim::TensorMapSim` layout: the tensor is named by its kernel argument index, since
//!   the simulator stages buffers at launch), or
//! - turned into the exact arguments of `cuTensorMapEncodeTiled` with
//!   [`TensorMapSpec::driver_args`] for the GPU (the real `CUtensorMap` is opaque, 128 bytes).
//!
//! Field mapping to `cuTensorMapEncodeTiled(tensorMap, tensorDataType, tensorRank,
//! globalAddress, globalDim, globalStrides, boxDim, elementStrides, interleave, swizzle,
//! l2Promotion, oobFill)`:
//!
//! | spec / [`DriverTiledArgs`] | driver parameter |
//! |---|---|
//! | `dtype` -> `data_type` | `tensorDataType` (`CU_TENSOR_MAP_DATA_TYPE_*`: UINT8 0, UINT16 1, FLOAT16 6, FLOAT32 7, BFLOAT16 9) |
//! | `global_dims.len()` -> `rank` | `tensorRank` (1..5) |
//! | device pointer passed to `driver_args` | `globalAddress` (16-byte aligned) |
//! | `global_dims` | `globalDim` (elements, dimension 0 innermost, each 1..2^32) |
//! | `global_strides_bytes` (rank - 1 entries) | `globalStrides` (bytes of dimensions 1.., multiples of 16, < 2^40) |
//! | `box_dims` | `boxDim` (1..256 each; dimension 0 times element size a multiple of 16 bytes) |
//! | element strides (always 1) | `elementStrides` |
//! | interleave (always none) | `interleave` = `CU_TENSOR_MAP_INTERLEAVE_NONE` (0) |
//! | `swizzle` | `swizzle`: NONE 0, 32B 1, 64B 2, 128B 3 (box dimension 0 in bytes at most the span) |
//! | L2 promotion (none) | `l2Promotion` = `CU_TENSOR_MAP_L2_PROMOTION_NONE` (0) |
//! | out-of-bounds fill: zeros | `oobFill` = `CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE` (0: zeros) |

use std::fmt;

/// Element type of the tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TmaDtype {
    /// 8-bit unsigned (`CU_TENSOR_MAP_DATA_TYPE_UINT8`).
    U8,
    /// 16-bit raw (`CU_TENSOR_MAP_DATA_TYPE_UINT16`).
    U16,
    /// IEEE binary16 (`CU_TENSOR_MAP_DATA_TYPE_FLOAT16`).
    F16,
    /// bfloat16 (`CU_TENSOR_MAP_DATA_TYPE_BFLOAT16`).
    Bf16,
    /// f32 (`CU_TENSOR_MAP_DATA_TYPE_FLOAT32`).
    F32,
}

impl TmaDtype {
    /// Bytes per element.
    pub fn bytes(self) -> u64 {
        match self {
            TmaDtype::U8 => 1,
            TmaDtype::U16 | TmaDtype::F16 | TmaDtype::Bf16 => 2,
            TmaDtype::F32 => 4,
        }
    }
    /// The `CUtensorMapDataType` value.
    pub fn driver_code(self) -> u32 {
        match self {
            TmaDtype::U8 => 0,
            TmaDtype::U16 => 1,
            TmaDtype::F16 => 6,
            TmaDtype::F32 => 7,
            TmaDtype::Bf16 => 9,
        }
    }
}

/// Shared-memory swizzle of the box (the same XOR patterns as wgmma descriptors).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TmaSwizzle {
    /// Row-major box, no swizzle.
    None,
    /// 32-byte swizzle.
    B32,
    /// 64-byte swizzle.
    B64,
    /// 128-byte swizzle.
    B128,
}

impl TmaSwizzle {
    /// The swizzle span in bytes (0 for none).
    pub fn bytes(self) -> u32 {
        match self {
            TmaSwizzle::None => 0,
            TmaSwizzle::B32 => 32,
            TmaSwizzle::B64 => 64,
            TmaSwizzle::B128 => 128,
        }
    }
    /// The `CUtensorMapSwizzle` value.
    pub fn driver_code(self) -> u32 {
        match self {
            TmaSwizzle::None => 0,
            TmaSwizzle::B32 => 1,
            TmaSwizzle::B64 => 2,
            TmaSwizzle::B128 => 3,
        }
    }
}

/// A tiled tensor map: the global tensor and the box one `cp.async.bulk.tensor` copies.
/// Out-of-bounds elements of a box are filled with zeros.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorMapSpec {
    /// Element type.
    pub dtype: TmaDtype,
    /// Extent of each dimension in elements, dimension 0 innermost (contiguous); 1..5 dims.
    pub global_dims: Vec<u64>,
    /// Byte stride of dimensions 1.. (`global_dims.len() - 1` entries).
    pub global_strides_bytes: Vec<u64>,
    /// Box extent per dimension in elements.
    pub box_dims: Vec<u32>,
    /// Shared-memory swizzle.
    pub swizzle: TmaSwizzle,
}

/// A rule of `cuTensorMapEncodeTiled` the spec breaks: the field and the fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TmaError {
    /// The offending field, e.g. `box_dims[0]`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for TmaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tensor map field `{}`: {}", self.field, self.message)
    }
}

impl std::error::Error for TmaError {}

/// The arguments of `cuTensorMapEncodeTiled` for this spec (enums as their numeric values).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriverTiledArgs {
    /// `tensorDataType`.
    pub data_type: u32,
    /// `tensorRank`.
    pub rank: u32,
    /// `globalAddress`.
    pub global_address: u64,
    /// `globalDim`.
    pub global_dim: Vec<u64>,
    /// `globalStrides` (rank - 1 entries).
    pub global_strides: Vec<u64>,
    /// `boxDim`.
    pub box_dim: Vec<u32>,
    /// `elementStrides` (all 1).
    pub element_strides: Vec<u32>,
    /// `interleave` (0: none).
    pub interleave: u32,
    /// `swizzle`.
    pub swizzle: u32,
    /// `l2Promotion` (0: none).
    pub l2_promotion: u32,
    /// `oobFill` (0: zeros).
    pub oob_fill: u32,
}

/// Size of the simulator's tensor map (`afsim::TensorMapSim`).
pub const SIM_TENSOR_MAP_BYTES: usize = 200;
const MAGIC: u32 = 0x4D54_4641; // "AFTM"

impl TensorMapSpec {
    /// Checks the rules of `cuTensorMapEncodeTiled` (tiled mode, no interleave).
    pub fn validate(&self) -> Result<(), TmaError> {
        let err = |field: String, message: String| Err(TmaError { field, message });
        let rank = self.global_dims.len();
        if !(1..=5).contains(&rank) {
            return err(
                "global_dims".into(),
                format!("has {rank} dimensions; a tensor map has 1 to 5"),
            );
        }
        if self.global_strides_bytes.len() != rank - 1 {
            return err(
                "global_strides_bytes".into(),
                format!(
                    "has {} entries; give the byte strides of dimensions 1..{rank} ({} entries)",
                    self.global_strides_bytes.len(),
                    rank - 1
                ),
            );
        }
        if self.box_dims.len() != rank {
            return err(
                "box_dims".into(),
                format!(
                    "has {} entries for a rank-{rank} tensor; give one per dimension",
                    self.box_dims.len()
                ),
            );
        }
        for (d, &n) in self.global_dims.iter().enumerate() {
            if n == 0 || n > 1 << 32 {
                return err(
                    format!("global_dims[{d}]"),
                    format!("is {n}; each extent must be in 1..2^32"),
                );
            }
        }
        let eb = self.dtype.bytes();
        let mut span = self.global_dims[0] * eb;
        for (i, &s) in self.global_strides_bytes.iter().enumerate() {
            if !s.is_multiple_of(16) || s >= 1 << 40 {
                return err(
                    format!("global_strides_bytes[{i}]"),
                    format!(
                        "is {s}; strides must be multiples of 16 bytes below 2^40 (pad the rows)"
                    ),
                );
            }
            if s < span {
                return err(
                    format!("global_strides_bytes[{i}]"),
                    format!(
                        "is {s} bytes, smaller than the {span} bytes dimension {} spans; rows would overlap",
                        i + 1
                    ),
                );
            }
            span = s * self.global_dims[i + 1];
        }
        for (d, &b) in self.box_dims.iter().enumerate() {
            if b == 0 || b > 256 {
                return err(
                    format!("box_dims[{d}]"),
                    format!("is {b}; each box extent must be in 1..256"),
                );
            }
        }
        let inner = u64::from(self.box_dims[0]) * eb;
        if !inner.is_multiple_of(16) {
            return err(
                "box_dims[0]".into(),
                format!(
                    "spans {inner} bytes; the inner box dimension must be a multiple of 16 bytes"
                ),
            );
        }
        let swz = u64::from(self.swizzle.bytes());
        if swz != 0 && inner > swz {
            return err(
                "box_dims[0]".into(),
                format!(
                    "spans {inner} bytes, more than the {swz}-byte swizzle span; use a box of at most {} elements",
                    swz / eb
                ),
            );
        }
        Ok(())
    }

    /// Bytes one box copies (the transaction byte count the mbarrier must expect, also for
    /// boxes partly out of bounds).
    pub fn box_bytes(&self) -> u64 {
        self.box_dims.iter().map(|&b| u64::from(b)).product::<u64>() * self.dtype.bytes()
    }

    /// The simulator's tensor map for a tensor held by kernel argument `arg_index`,
    /// starting `byte_offset` bytes into that buffer. Pass it to the kernel as a
    /// `const unsigned char*` buffer (`SimArg::input(&map)`).
    pub fn encode_for_sim(
        &self,
        arg_index: u32,
        byte_offset: u64,
    ) -> Result<[u8; SIM_TENSOR_MAP_BYTES], TmaError> {
        self.validate()?;
        if !byte_offset.is_multiple_of(16) {
            return Err(TmaError {
                field: "byte_offset".into(),
                message: format!("is {byte_offset}; the global address must be 16-byte aligned"),
            });
        }
        let mut m = [0u8; SIM_TENSOR_MAP_BYTES];
        let mut put = |at: usize, bytes: &[u8]| m[at..at + bytes.len()].copy_from_slice(bytes);
        let rank = self.global_dims.len();
        put(0, &MAGIC.to_le_bytes());
        put(4, &1u32.to_le_bytes());
        put(8, &(rank as u32).to_le_bytes());
        put(12, &(self.dtype.bytes() as u32).to_le_bytes());
        put(16, &arg_index.to_le_bytes());
        put(20, &self.swizzle.bytes().to_le_bytes());
        put(24, &byte_offset.to_le_bytes());
        for d in 0..rank {
            put(32 + 8 * d, &self.global_dims[d].to_le_bytes());
            let stride = if d == 0 {
                self.dtype.bytes()
            } else {
                self.global_strides_bytes[d - 1]
            };
            put(72 + 8 * d, &stride.to_le_bytes());
            put(112 + 4 * d, &self.box_dims[d].to_le_bytes());
        }
        // 132: oob fill 0 = zeros
        Ok(m)
    }

    /// The `cuTensorMapEncodeTiled` arguments for the tensor at device address `global_address`.
    pub fn driver_args(&self, global_address: u64) -> Result<DriverTiledArgs, TmaError> {
        self.validate()?;
        if !global_address.is_multiple_of(16) {
            return Err(TmaError {
                field: "global_address".into(),
                message: format!("{global_address:#x} is not 16-byte aligned"),
            });
        }
        Ok(DriverTiledArgs {
            data_type: self.dtype.driver_code(),
            rank: self.global_dims.len() as u32,
            global_address,
            global_dim: self.global_dims.clone(),
            global_strides: self.global_strides_bytes.clone(),
            box_dim: self.box_dims.clone(),
            element_strides: vec![1; self.global_dims.len()],
            interleave: 0,
            swizzle: self.swizzle.driver_code(),
            l2_promotion: 0,
            oob_fill: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TensorMapSpec {
        TensorMapSpec {
            dtype: TmaDtype::F16,
            global_dims: vec![64, 100],
            global_strides_bytes: vec![128],
            box_dims: vec![64, 32],
            swizzle: TmaSwizzle::B128,
        }
    }

    #[test]
    fn driver_rules_are_checked_with_the_field_named() {
        spec().validate().unwrap();
        let mut s = spec();
        s.global_strides_bytes = vec![120];
        assert_eq!(s.validate().unwrap_err().field, "global_strides_bytes[0]");
        let mut s = spec();
        s.box_dims = vec![64, 300];
        assert_eq!(s.validate().unwrap_err().field, "box_dims[1]");
        let mut s = spec();
        s.global_dims = vec![128, 100];
        s.global_strides_bytes = vec![256];
        s.box_dims = vec![128, 8];
        let e = s.validate().unwrap_err();
        assert!(
            e.field == "box_dims[0]" && e.message.contains("128-byte swizzle"),
            "{e}"
        );
        let mut s = spec();
        s.box_dims = vec![4, 8];
        assert!(s.validate().unwrap_err().message.contains("multiple of 16"));
        let mut s = spec();
        s.global_dims = vec![1; 6];
        assert_eq!(s.validate().unwrap_err().field, "global_dims");
    }

    #[test]
    fn driver_args_use_the_cuda_enum_values() {
        let a = spec().driver_args(0x1000).unwrap();
        assert_eq!((a.data_type, a.rank, a.swizzle), (6, 2, 3));
        assert_eq!(a.global_strides, [128]);
        assert_eq!(a.element_strides, [1, 1]);
        assert!(spec().driver_args(0x1008).is_err());
        assert_eq!(spec().box_bytes(), 64 * 32 * 2);
    }
}
