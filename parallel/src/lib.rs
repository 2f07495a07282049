//! Context parallelism for attnforge (issue 23): split one attention problem's sequence
//! across ranks and compute it exactly.
//!
//! - [`Communicator`]: rank, world size, grouped send/recv, all-to-all, all-gather,
//!   reduce-scatter over the communicator's own buffers; [`InProcessComm`] (threads over host
//!   buffers, receive timeout, named errors) and, with feature `nccl`, `NcclComm` (cudarc's
//!   NCCL on device buffers).
//! - [`ring_forward`] / [`ring_backward`]: ring attention with a log-sum-exp merge per step,
//!   dK/dV returned to their owners, and blocks the mask leaves empty never sent nor computed
//!   (decided exactly by [`MaskGeometry`]).
//! - [`ulysses_forward`] / [`ulysses_backward`]: all-to-all over heads.
//! - [`StepEngine`]: the per-step attention; [`ReferenceEngine`] runs `attnforge-reference`
//!   (f64 or the naive same-precision path).
//! - [`plan`]: partition (contiguous, zigzag, mask-aware greedy) and method (ring or Ulysses)
//!   from exact per-rank work and a link-bandwidth cost model, with predicted times.
//!
//! See `docs/context-parallel.md`.

mod comm;
mod engine;
mod error;
mod layout;
#[cfg(feature = "nccl")]
mod nccl;
mod partition;
mod planner;
mod ring;
mod ulysses;
mod wiring;

pub use crate::comm::{
    check_collective, check_peer, run_in_process, CommBuffer, CommElem, CommError, CommOp,
    Communicator, InProcessComm,
};
pub use crate::engine::{
    ReferenceEngine, StepBlock, StepEngine, StepGrad, StepGrads, StepProblem, PAD,
};
pub use crate::error::CpError;
pub use crate::layout::{shard, shard_rows, unshard, unshard_output, CpProblem, Layout};
#[cfg(feature = "nccl")]
pub use crate::nccl::NcclComm;
pub use crate::partition::{equal_chunks, Partition};
pub use crate::planner::{
    plan, Link, Method, PartitionKind, Plan, PlanCandidate, PlanRequest, RankLoad, GPU_H100_SXM,
    IB_NDR, NVLINK4,
};
pub use crate::ring::{ring_backward, ring_forward, RankForward, RankGrads, RingStats, Shards};
pub use crate::ulysses::{ulysses_backward, ulysses_forward};
pub use crate::wiring::{all_to_all_schedule, nccl_peer};
pub use attnforge_reference::MaskGeometry;
