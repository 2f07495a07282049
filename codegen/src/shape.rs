//! The problem shape: the one struct of batch, heads and lengths that the runtime, the
//! tuner, the CLI and the dynamic families' launch geometry share (the reference keeps its
//! own shapes: it is the independent oracle).
//!
//! ```
//! use attnforge_codegen::shape::Shape;
//! let s = Shape { batch: 2, heads_q: 8, heads_kv: 2, seq_q: 100, seq_k: 300 };
//! assert_eq!(s.to_string(), "B=2 Hq=8 Hkv=2 Sq=100 Sk=300");
//! assert_eq!(s.bucket(), "bh16_sq128_sk512");
//! ```

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::spec::KernelSpec;

/// Batch, query/key-value heads and query/key lengths of one attention problem.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Shape {
    /// Batch `B`.
    pub batch: usize,
    /// Query heads `Hq`.
    pub heads_q: usize,
    /// Key/value heads `Hkv` (`Hq` unless GQA/MQA; `Hq % Hkv == 0`).
    pub heads_kv: usize,
    /// Query length `Sq`.
    pub seq_q: usize,
    /// Key length `Sk`.
    pub seq_k: usize,
}

impl Shape {
    /// `B x Hq x S x S`; GQA specs get `Hkv = Hq / 4` (at least 1).
    pub fn for_spec(spec: &KernelSpec, batch: usize, heads: usize, seq: usize) -> Self {
        let heads_kv = if spec.gqa { (heads / 4).max(1) } else { heads };
        Shape {
            batch,
            heads_q: heads,
            heads_kv,
            seq_q: seq,
            seq_k: seq,
        }
    }

    /// The tuning-cache bucket: sequence lengths rounded up to a power of two, batch x
    /// heads rounded up to a power of two (configs tuned for one bucket are reused within it).
    pub fn bucket(&self) -> String {
        let p2 = |x: usize| x.max(1).next_power_of_two();
        format!(
            "bh{}_sq{}_sk{}",
            p2(self.batch * self.heads_q),
            p2(self.seq_q),
            p2(self.seq_k)
        )
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "B={} Hq={} Hkv={} Sq={} Sk={}",
            self.batch, self.heads_q, self.heads_kv, self.seq_q, self.seq_k
        )
    }
}
