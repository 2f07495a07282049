//! The dynamic kernels' arguments by role: every argument of a stage is a buffer or a scalar
//! of a closed set, and the host fills it by an exhaustive match on that role (the static
//! kernels do the same with [`crate::args::ArgRole`]). The C parameter names come from the
//! roles and serve only as launch metadata (the CUDA signature, the GPU argument checks and
//! the JSON of `attnforge emit`).

use crate::args::{ArgKind, Elem, KernelArg, Scalar};

/// A device buffer a dynamic stage reads or writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DynBuffer {
    /// Queries `[B, Hq, Sq, D]` (every family but HAX).
    Q,
    /// Keys `[B, Hkv, Sk, D]`.
    K,
    /// Values `[B, Hkv, Sk, D]`.
    V,
    /// HAX: the queries that are hashed and scored (`q2`).
    Q2,
    /// HAX: the keys that are hashed and scored (`k2`).
    K2,
    /// HAX: the values (`x`).
    X,
    /// Output `[B, Hq, Sq, D]`.
    O,
    /// Log-sum-exp per row (f32).
    Lse,
    /// Split top-k: the static window's partial output (f32), a merge input.
    OA,
    /// Split top-k: the static window's partial lse, a merge input.
    LseA,
    /// Split top-k: the selected keys' partial output (f32), a merge input.
    OB,
    /// Split top-k: the selected keys' partial lse, a merge input.
    LseB,
    /// Selected key (landmark: block) indices per row.
    Sel,
    /// CCA: pooled keys per group (f32).
    KBar,
    /// CCA: pooled values per group (f32).
    VBar,
    /// HAX: hyperplanes (f32).
    Hyperplanes,
    /// HAX: key-selection scores (f32).
    KeyScores,
    /// HAX: query hash codes.
    CodeQ,
    /// HAX: key hash codes.
    CodeK,
    /// HAX: first key of each bucket chain.
    LshHead,
    /// HAX: previous key of the same bucket.
    LshPrev,
    /// HAX: keys chosen by the cumulative key selection.
    KeySelIdx,
    /// HAX: per-query count threshold of the key selection.
    KeySelThreshold,
    /// LongHeads: chunk summaries `r [B, Hq, n_chunks, D]` (f32; written by the summary
    /// kernel in prefill, an input in decoding).
    Summaries,
    /// Paged cache: `cu_seqlens_q [B + 1]` of the packed queries (int32).
    CuSeqlensQ,
    /// Paged cache: `block_table [B, max_pages]` (int32).
    BlockTable,
    /// Paged cache: `seqlens_k [B]` (int32).
    SeqlensK,
}

impl DynBuffer {
    /// Every buffer role (a test checks the names are distinct).
    pub const ALL: [DynBuffer; 27] = [
        DynBuffer::Q,
        DynBuffer::K,
        DynBuffer::V,
        DynBuffer::Q2,
        DynBuffer::K2,
        DynBuffer::X,
        DynBuffer::O,
        DynBuffer::Lse,
        DynBuffer::OA,
        DynBuffer::LseA,
        DynBuffer::OB,
        DynBuffer::LseB,
        DynBuffer::Sel,
        DynBuffer::KBar,
        DynBuffer::VBar,
        DynBuffer::Hyperplanes,
        DynBuffer::KeyScores,
        DynBuffer::CodeQ,
        DynBuffer::CodeK,
        DynBuffer::LshHead,
        DynBuffer::LshPrev,
        DynBuffer::KeySelIdx,
        DynBuffer::KeySelThreshold,
        DynBuffer::Summaries,
        DynBuffer::CuSeqlensQ,
        DynBuffer::BlockTable,
        DynBuffer::SeqlensK,
    ];

    /// The C parameter name (launch metadata; [`crate::dynamic::DynamicKernel`] users see
    /// the index buffers under these names).
    pub fn name(self) -> &'static str {
        match self {
            DynBuffer::Q => "q",
            DynBuffer::K => "k",
            DynBuffer::V => "v",
            DynBuffer::Q2 => "q2",
            DynBuffer::K2 => "k2",
            DynBuffer::X => "x",
            DynBuffer::O => "o",
            DynBuffer::Lse => "lse",
            DynBuffer::OA => "o_a",
            DynBuffer::LseA => "lse_a",
            DynBuffer::OB => "o_b",
            DynBuffer::LseB => "lse_b",
            DynBuffer::Sel => "sel",
            DynBuffer::KBar => "kbar",
            DynBuffer::VBar => "vbar",
            DynBuffer::Hyperplanes => "hp",
            DynBuffer::KeyScores => "ks",
            DynBuffer::CodeQ => "code_q",
            DynBuffer::CodeK => "code_k",
            DynBuffer::LshHead => "lsh_head",
            DynBuffer::LshPrev => "lsh_prev",
            DynBuffer::KeySelIdx => "ks_idx",
            DynBuffer::KeySelThreshold => "ks_thr",
            DynBuffer::Summaries => "r",
            DynBuffer::CuSeqlensQ => "cu_seqlens_q",
            DynBuffer::BlockTable => "block_table",
            DynBuffer::SeqlensK => "seqlens_k",
        }
    }
}

/// A scalar argument of a dynamic stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DynScalar {
    /// Batch `B`.
    Batch,
    /// Query heads `Hq`.
    HeadsQ,
    /// Key/value heads `Hkv`.
    HeadsKv,
    /// Query length `Sq` (stages with two lengths).
    SeqQ,
    /// Key length `Sk`.
    SeqK,
    /// The one length of the stages with `Sq == Sk` (the query length).
    Seq,
    /// Rows `B * Hq * Sq` (lse merge).
    Rows,
    /// Score scale.
    Scale,
    /// Landmark: block length (a landmark every `mem_freq` keys).
    MemFreq,
    /// Landmark retrieval: blocks selected per row.
    TopK,
    /// Width of the selection list (landmark: `top_k`, 0 in training; LongHeads:
    /// `max(M, min(B / w, ceil(Sk / w)))`).
    SelWidth,
    /// Top-k: sink keys of the static window (`sink`, kernel `s_start`).
    Sink,
    /// Top-k: recent keys of the static window (`recent`, kernel `s_end`).
    Recent,
    /// Top-k: keys selected per row (`k`).
    TopkK,
    /// Top-k attention: which part to compute (0 all, 1 the window, 2 the selection).
    Part,
    /// CCA: group size.
    Group,
    /// CCA: local window.
    Window,
    /// CCA: pooled groups `(Sq - window) / group`.
    Pooled,
    /// CCA: scale of the pooling scores.
    PoolScale,
    /// HAX: hash bits (hyperplanes per head).
    HashBits,
    /// HAX: batch stride of the hyperplanes (0: shared across the batch).
    HyperplaneBatchStride,
    /// HAX: head sharing of the hyperplanes.
    HyperplaneMode,
    /// HAX: batch stride of the key-selection scores.
    KeyScoreBatchStride,
    /// HAX: head sharing of the key-selection scores.
    KeyScoreMode,
    /// HAX: keys per query from the hash buckets.
    KLsh,
    /// HAX: keys per query from the key selection.
    KKs,
    /// LongHeads: chunk size `w`.
    Chunk,
    /// LongHeads: chunks per query `M`.
    ChunksPerQuery,
    /// LongHeads: begin length `B`.
    Begin,
    /// LongHeads: RoPE base theta.
    Theta,
    /// LongHeads: chunks of the summaries `r` (its third extent).
    SummaryChunks,
    /// Paged cache: entries per block-table row.
    MaxPages,
    /// Paged cache: keys per page (a power of two, 1..=1024).
    PageSize,
    /// Paged cache: packed query rows `Tq`.
    TotalQ,
}

impl DynScalar {
    /// Every scalar role (a test checks the names are distinct).
    pub const ALL: [DynScalar; 34] = [
        DynScalar::Batch,
        DynScalar::HeadsQ,
        DynScalar::HeadsKv,
        DynScalar::SeqQ,
        DynScalar::SeqK,
        DynScalar::Seq,
        DynScalar::Rows,
        DynScalar::Scale,
        DynScalar::MemFreq,
        DynScalar::TopK,
        DynScalar::SelWidth,
        DynScalar::Sink,
        DynScalar::Recent,
        DynScalar::TopkK,
        DynScalar::Part,
        DynScalar::Group,
        DynScalar::Window,
        DynScalar::Pooled,
        DynScalar::PoolScale,
        DynScalar::HashBits,
        DynScalar::HyperplaneBatchStride,
        DynScalar::HyperplaneMode,
        DynScalar::KeyScoreBatchStride,
        DynScalar::KeyScoreMode,
        DynScalar::KLsh,
        DynScalar::KKs,
        DynScalar::Chunk,
        DynScalar::ChunksPerQuery,
        DynScalar::Begin,
        DynScalar::Theta,
        DynScalar::SummaryChunks,
        DynScalar::MaxPages,
        DynScalar::PageSize,
        DynScalar::TotalQ,
    ];

    /// The C parameter name (launch metadata).
    pub fn name(self) -> &'static str {
        match self {
            DynScalar::Batch => "batch",
            DynScalar::HeadsQ => "heads_q",
            DynScalar::HeadsKv => "heads_kv",
            DynScalar::SeqQ => "seq_q",
            DynScalar::SeqK => "seq_k",
            DynScalar::Seq => "seq",
            DynScalar::Rows => "rows",
            DynScalar::Scale => "scale",
            DynScalar::MemFreq => "mem_freq",
            DynScalar::TopK => "top_k",
            DynScalar::SelWidth => "sel_width",
            DynScalar::Sink => "s_start",
            DynScalar::Recent => "s_end",
            DynScalar::TopkK => "topk",
            DynScalar::Part => "part",
            DynScalar::Group => "group",
            DynScalar::Window => "window",
            DynScalar::Pooled => "pooled",
            DynScalar::PoolScale => "pool_scale",
            DynScalar::HashBits => "nb",
            DynScalar::HyperplaneBatchStride => "hp_bstride",
            DynScalar::HyperplaneMode => "hp_mode",
            DynScalar::KeyScoreBatchStride => "ks_bstride",
            DynScalar::KeyScoreMode => "ks_mode",
            DynScalar::KLsh => "k_lsh",
            DynScalar::KKs => "k_ks",
            DynScalar::Chunk => "chunk",
            DynScalar::ChunksPerQuery => "m_chunks",
            DynScalar::Begin => "begin",
            DynScalar::Theta => "theta",
            DynScalar::SummaryChunks => "n_chunks",
            DynScalar::MaxPages => "max_pages",
            DynScalar::PageSize => "page_size",
            DynScalar::TotalQ => "total_q",
        }
    }

    /// The C type of the argument.
    pub fn scalar(self) -> Scalar {
        match self {
            DynScalar::Scale | DynScalar::PoolScale | DynScalar::Theta => Scalar::F32,
            DynScalar::HyperplaneBatchStride | DynScalar::KeyScoreBatchStride => Scalar::I64,
            DynScalar::Batch
            | DynScalar::HeadsQ
            | DynScalar::HeadsKv
            | DynScalar::SeqQ
            | DynScalar::SeqK
            | DynScalar::Seq
            | DynScalar::Rows
            | DynScalar::MemFreq
            | DynScalar::TopK
            | DynScalar::SelWidth
            | DynScalar::Sink
            | DynScalar::Recent
            | DynScalar::TopkK
            | DynScalar::Part
            | DynScalar::Group
            | DynScalar::Window
            | DynScalar::Pooled
            | DynScalar::HashBits
            | DynScalar::HyperplaneMode
            | DynScalar::KeyScoreMode
            | DynScalar::KLsh
            | DynScalar::KKs
            | DynScalar::Chunk
            | DynScalar::ChunksPerQuery
            | DynScalar::Begin
            | DynScalar::SummaryChunks
            | DynScalar::MaxPages
            | DynScalar::PageSize
            | DynScalar::TotalQ => Scalar::I32,
        }
    }
}

/// What one argument of a dynamic stage is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DynArgRole {
    /// A device buffer.
    Buffer(DynBuffer),
    /// A scalar.
    Scalar(DynScalar),
}

impl DynArgRole {
    /// The C parameter name (launch metadata).
    pub fn name(self) -> &'static str {
        match self {
            DynArgRole::Buffer(b) => b.name(),
            DynArgRole::Scalar(s) => s.name(),
        }
    }
}

/// One argument of a dynamic stage: its declaration and its role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DynTypedArg {
    /// Name (the role's) and C kind.
    pub arg: KernelArg,
    /// What the host passes.
    pub role: DynArgRole,
}

/// A buffer argument: `const T*` (read) or `T*` (written).
pub(super) fn buffer(b: DynBuffer, elem: Elem, mutable: bool) -> DynTypedArg {
    DynTypedArg {
        arg: KernelArg {
            name: b.name().into(),
            kind: ArgKind::Ptr { elem, mutable },
        },
        role: DynArgRole::Buffer(b),
    }
}

/// A scalar argument of its role's C type.
pub(super) fn scalar(s: DynScalar) -> DynTypedArg {
    DynTypedArg {
        arg: KernelArg {
            name: s.name().into(),
            kind: ArgKind::Scalar(s.scalar()),
        },
        role: DynArgRole::Scalar(s),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::dynamic::{dynamic_catalog, emit_dynamic};

    #[test]
    fn role_names_are_distinct() {
        let names: Vec<&str> = DynBuffer::ALL
            .iter()
            .map(|b| b.name())
            .chain(DynScalar::ALL.iter().map(|s| s.name()))
            .collect();
        let set: BTreeSet<&str> = names.iter().copied().collect();
        assert_eq!(set.len(), names.len(), "{names:?}");
    }

    /// The parameter names of the `extern "C"` wrapper and of the template call in a
    /// kernel's source.
    fn signature_and_call(source: &str, name: &str) -> (Vec<String>, Vec<String>) {
        let line = source
            .lines()
            .find(|l| l.starts_with("extern \"C\" __global__"))
            .expect("wrapper line");
        let open = line.find(&format!(" {name}(")).unwrap() + name.len() + 2;
        let params = line[open..line.rfind(')').unwrap()]
            .split(", ")
            .map(|p| p.rsplit(' ').next().unwrap().to_string())
            .collect();
        let after = &source[source.find(line).unwrap() + line.len()..];
        let call = after.lines().find(|l| !l.trim().is_empty()).unwrap().trim();
        let call = call[call.find('(').unwrap() + 1..call.rfind(')').unwrap()]
            .split(", ")
            .map(str::to_string)
            .collect();
        (params, call)
    }

    /// Every argument of every dynamic kernel has a role: the wrapper's parameters and the
    /// template call are exactly the roles' names, in order, and each declaration's kind
    /// is its role's (a buffer is a pointer, a scalar has its role's C type). A parameter
    /// added to a kernel without a role fails here.
    #[test]
    fn every_dynamic_kernel_argument_has_a_role() {
        let mut stages = BTreeSet::new();
        for spec in dynamic_catalog() {
            for k in emit_dynamic(&spec).unwrap() {
                stages.insert(format!("{:?}", k.stage));
                assert_eq!(k.args.len(), k.roles.len(), "{}", k.name);
                let roles: Vec<String> = k.roles.iter().map(|r| r.name().to_string()).collect();
                let (params, call) = signature_and_call(&k.source, &k.name);
                assert_eq!(params, roles, "{}: wrapper parameters vs roles", k.name);
                assert_eq!(call, roles, "{}: template call vs roles", k.name);
                let distinct: BTreeSet<&String> = roles.iter().collect();
                assert_eq!(distinct.len(), roles.len(), "{}: a role twice", k.name);
                for (a, r) in k.args.iter().zip(&k.roles) {
                    assert_eq!(a.name, r.name(), "{}", k.name);
                    let kind_ok = match (r, a.kind) {
                        (DynArgRole::Buffer(_), ArgKind::Ptr { .. }) => true,
                        (DynArgRole::Scalar(s), ArgKind::Scalar(c)) => c == s.scalar(),
                        _ => false,
                    };
                    assert!(
                        kind_ok,
                        "{}: `{}` is {:?} but its role is {r:?}",
                        k.name, a.name, a.kind
                    );
                }
            }
        }
        assert_eq!(stages.len(), 14, "the catalog misses a stage: {stages:?}");
    }
}
