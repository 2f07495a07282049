//! How operations map onto NCCL calls, shared by the in-process communicator so that its
//! tests (which run without a GPU) exercise the same schedule.

use std::ops::Range;

use crate::comm::{check_peer, CommError, CommOp};

/// The grouped send/recv schedule of an all-to-all with chunks of `chunk` elements on rank
/// `rank`: `(peer, send range, recv range)` for every other rank, in rank order (the own
/// chunk is a local copy). NCCL has no all-to-all primitive; this is the grouped
/// `ncclSend`/`ncclRecv` form PyTorch's `all_to_all_single` uses.
pub fn all_to_all_schedule(
    rank: usize,
    world: usize,
    chunk: usize,
) -> Vec<(usize, Range<usize>, Range<usize>)> {
    (0..world)
        .filter(|&p| p != rank)
        .map(|p| (p, p * chunk..(p + 1) * chunk, p * chunk..(p + 1) * chunk))
        .collect()
}

/// An NCCL peer index (`i32`), checked like every peer ([`check_peer`]).
pub fn nccl_peer(rank: usize, world: usize, op: CommOp, peer: usize) -> Result<i32, CommError> {
    check_peer(rank, world, op, peer)?;
    i32::try_from(peer).map_err(|_| CommError::InvalidPeer {
        rank,
        op,
        peer,
        world,
    })
}
