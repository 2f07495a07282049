//! The NCCL communicator (feature `nccl`): cudarc's NCCL bindings on device buffers.
//!
//! Wiring: one [`NcclComm`] per rank, each owning a `cudarc::nccl::Comm` bound to one CUDA
//! stream of its GPU; every operation is enqueued on that stream, and
//! [`Communicator::download`] synchronises it. Buffers are `CudaSlice<T>` on that stream's
//! context. NCCL has no all-to-all primitive: [`Communicator::all_to_all`] is the grouped
//! send/recv of chunk `p` to and from rank `p` ([`crate::all_to_all_schedule`], which the
//! in-process communicator follows too), as PyTorch's
//! `all_to_all_single` does; [`Communicator::exchange`] is one NCCL group (no deadlock
//! between a rank's sends and receives). Lengths and peers are checked on the host before
//! any NCCL call with the same checks as the in-process communicator.
//!
//! Not yet run on hardware: this machine has no GPU. NCCL calls are asynchronous; a peer that
//! never posts its matching call blocks the stream instead of timing out (NCCL's own
//! `NCCL_TIMEOUT`/watchdog is the caller's responsibility).

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream};
use cudarc::nccl::safe::{group_end, group_start, Comm, Id, ReduceOp};

use crate::comm::{check_collective, CommBuffer, CommElem, CommError, CommOp, Communicator};
use crate::wiring::{all_to_all_schedule, nccl_peer};

impl<T> CommBuffer for CudaSlice<T> {
    fn elems(&self) -> usize {
        self.len()
    }
}

/// One rank of an NCCL group.
#[derive(Debug)]
pub struct NcclComm {
    comm: Comm,
    stream: Arc<CudaStream>,
}

impl NcclComm {
    /// One communicator per stream (one GPU each) in this process: rank `i` is `streams[i]`.
    pub fn from_streams(streams: Vec<Arc<CudaStream>>) -> Result<Vec<NcclComm>, CommError> {
        let comms =
            Comm::from_devices(streams.clone()).map_err(|e| backend(0, CommOp::Memory, e))?;
        Ok(comms
            .into_iter()
            .zip(streams)
            .map(|(comm, stream)| NcclComm { comm, stream })
            .collect())
    }

    /// Rank `rank` of a multi-process group; `id` comes from rank 0 ([`Id::new`]) by any
    /// out-of-band channel.
    pub fn from_rank(
        stream: Arc<CudaStream>,
        rank: usize,
        world: usize,
        id: Id,
    ) -> Result<NcclComm, CommError> {
        let comm = Comm::from_rank(stream.clone(), rank, world, id)
            .map_err(|e| backend(rank, CommOp::Memory, e))?;
        Ok(NcclComm { comm, stream })
    }

    fn err(&self, op: CommOp) -> impl Fn(String) -> CommError + '_ {
        move |message| CommError::Backend {
            rank: self.comm.rank(),
            op,
            message,
        }
    }
}

fn backend(rank: usize, op: CommOp, e: impl std::fmt::Debug) -> CommError {
    CommError::Backend {
        rank,
        op,
        message: format!("{e:?}"),
    }
}

impl Communicator for NcclComm {
    type Buffer<T: CommElem> = CudaSlice<T>;

    fn rank(&self) -> usize {
        self.comm.rank()
    }

    fn world_size(&self) -> usize {
        self.comm.world_size()
    }

    fn alloc<T: CommElem>(&self, len: usize) -> Result<CudaSlice<T>, CommError> {
        self.stream
            .alloc_zeros::<T>(len)
            .map_err(|e| (self.err(CommOp::Memory))(format!("{e:?}")))
    }

    fn upload<T: CommElem>(&self, host: &[T]) -> Result<CudaSlice<T>, CommError> {
        self.stream
            .clone_htod(host)
            .map_err(|e| (self.err(CommOp::Memory))(format!("{e:?}")))
    }

    fn download<T: CommElem>(&self, buf: &CudaSlice<T>) -> Result<Vec<T>, CommError> {
        self.stream
            .clone_dtoh(buf)
            .map_err(|e| (self.err(CommOp::Memory))(format!("{e:?}")))
    }

    fn exchange<T: CommElem>(
        &self,
        sends: &[(usize, &CudaSlice<T>)],
        recvs: &mut [(usize, &mut CudaSlice<T>)],
    ) -> Result<(), CommError> {
        let (rank, world, op) = (self.rank(), self.world_size(), CommOp::Exchange);
        let mut peers = Vec::new();
        for (p, _) in sends.iter() {
            peers.push(nccl_peer(rank, world, op, *p)?);
        }
        for (p, _) in recvs.iter() {
            peers.push(nccl_peer(rank, world, op, *p)?);
        }
        let e = self.err(op);
        group_start().map_err(|x| e(format!("{x:?}")))?;
        let mut result = Ok(());
        for (i, (_, buf)) in sends.iter().enumerate() {
            if let Err(x) = self.comm.send(*buf, peers[i]) {
                result = Err(e(format!("{x:?}")));
            }
        }
        for (i, (_, buf)) in recvs.iter_mut().enumerate() {
            if let Err(x) = self.comm.recv(*buf, peers[sends.len() + i]) {
                result = Err(e(format!("{x:?}")));
            }
        }
        group_end().map_err(|x| e(format!("{x:?}")))?;
        result
    }

    fn all_to_all<T: CommElem>(
        &self,
        send: &CudaSlice<T>,
        recv: &mut CudaSlice<T>,
    ) -> Result<(), CommError> {
        let (rank, world, op) = (self.rank(), self.world_size(), CommOp::AllToAll);
        let n = check_collective(rank, world, op, send.len(), recv.len())?;
        let e = self.err(op);
        let me = rank * n..(rank + 1) * n;
        self.stream
            .memcpy_dtod(&send.slice(me.clone()), &mut recv.slice_mut(me))
            .map_err(|x| e(format!("{x:?}")))?;
        group_start().map_err(|x| e(format!("{x:?}")))?;
        let mut result = Ok(());
        for (p, s, r) in all_to_all_schedule(rank, world, n) {
            let peer = p as i32;
            if let Err(x) = self.comm.send(&send.slice(s), peer) {
                result = Err(e(format!("{x:?}")));
            }
            if let Err(x) = self.comm.recv(&mut recv.slice_mut(r), peer) {
                result = Err(e(format!("{x:?}")));
            }
        }
        group_end().map_err(|x| e(format!("{x:?}")))?;
        result
    }

    fn all_gather<T: CommElem>(
        &self,
        send: &CudaSlice<T>,
        recv: &mut CudaSlice<T>,
    ) -> Result<(), CommError> {
        let (rank, world, op) = (self.rank(), self.world_size(), CommOp::AllGather);
        check_collective(rank, world, op, send.len(), recv.len())?;
        self.comm
            .all_gather(send, recv)
            .map(|_| ())
            .map_err(|x| (self.err(op))(format!("{x:?}")))
    }

    fn reduce_scatter<T: CommElem>(
        &self,
        send: &CudaSlice<T>,
        recv: &mut CudaSlice<T>,
    ) -> Result<(), CommError> {
        let (rank, world, op) = (self.rank(), self.world_size(), CommOp::ReduceScatter);
        check_collective(rank, world, op, send.len(), recv.len())?;
        self.comm
            .reduce_scatter(send, recv, &ReduceOp::Sum)
            .map(|_| ())
            .map_err(|x| (self.err(op))(format!("{x:?}")))
    }
}
