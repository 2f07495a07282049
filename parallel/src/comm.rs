//! The [`Communicator`] trait and its in-process implementation ([`InProcessComm`]: N ranks
//! as threads over host buffers).
//!
//! Buffers are the communicator's own type ([`Communicator::Buffer`]): host `Vec<T>` for the
//! in-process one, device `CudaSlice<T>` for the NCCL one (feature `nccl`). Algorithms move
//! host data in and out with [`Communicator::upload`] / [`Communicator::download`], so the same
//! ring and Ulysses code runs on both.
//!
//! ```
//! use attnforge_parallel::{run_in_process, Communicator};
//! let sums = run_in_process(3, std::time::Duration::from_secs(5), |c| {
//!     let send = c.upload(&[c.rank() as f64; 3])?;
//!     let mut recv = c.alloc::<f64>(1)?;
//!     c.reduce_scatter(&send, &mut recv)?;
//!     c.download(&recv)
//! })
//! .unwrap();
//! assert_eq!(sums, vec![vec![3.0]; 3]);
//! ```

use std::any::Any;
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use attnforge_reference::Element;

use crate::wiring::all_to_all_schedule;

/// An element type the communicators carry: `f32`, `f64`, `half::f16`, `half::bf16`.
#[cfg(not(feature = "nccl"))]
pub trait CommElem: Element + Default {}
/// An element type the communicators carry: `f32`, `f64`, `half::f16`, `half::bf16`.
#[cfg(feature = "nccl")]
pub trait CommElem:
    Element
    + Default
    + cudarc::nccl::safe::NcclType
    + cudarc::driver::DeviceRepr
    + cudarc::driver::ValidAsZeroBits
{
}
impl CommElem for f32 {}
impl CommElem for f64 {}
impl CommElem for half::f16 {}
impl CommElem for half::bf16 {}

/// A communicator buffer's element count.
pub trait CommBuffer {
    /// Number of elements.
    fn elems(&self) -> usize;
}

impl<T> CommBuffer for Vec<T> {
    fn elems(&self) -> usize {
        self.len()
    }
}

/// The collective or point-to-point operation an error happened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommOp {
    /// Grouped point-to-point sends and receives ([`Communicator::exchange`]).
    Exchange,
    /// [`Communicator::all_to_all`].
    AllToAll,
    /// [`Communicator::all_gather`].
    AllGather,
    /// [`Communicator::reduce_scatter`].
    ReduceScatter,
    /// Allocation or host/device copies.
    Memory,
}

impl std::fmt::Display for CommOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CommOp::Exchange => "exchange (send/recv)",
            CommOp::AllToAll => "all_to_all",
            CommOp::AllGather => "all_gather",
            CommOp::ReduceScatter => "reduce_scatter",
            CommOp::Memory => "memory",
        })
    }
}

/// A communicator error; every variant names the rank and the operation.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CommError {
    /// A peer index outside `0..world`, or the rank itself.
    #[error("rank {rank}: {op} with peer {peer}: no such peer in a world of {world} (fix: peers are 0..{world}, never the rank itself)")]
    InvalidPeer {
        /// The calling rank.
        rank: usize,
        /// The operation.
        op: CommOp,
        /// The bad peer.
        peer: usize,
        /// World size.
        world: usize,
    },
    /// A buffer whose length does not fit the operation.
    #[error("rank {rank}: {op}: {field} has {got} elements, expected {expected} (fix: {fix})")]
    SizeMismatch {
        /// The calling rank.
        rank: usize,
        /// The operation.
        op: CommOp,
        /// Which buffer.
        field: &'static str,
        /// Expected length.
        expected: usize,
        /// Actual length.
        got: usize,
        /// How to fix it.
        fix: &'static str,
    },
    /// A message from `peer` arrived for another operation or element type than expected.
    #[error("rank {rank}: {op} from peer {peer}: got a {got} message, expected {expected} (the ranks called different operations in a different order)")]
    Mismatch {
        /// The receiving rank.
        rank: usize,
        /// The operation.
        op: CommOp,
        /// The sending peer.
        peer: usize,
        /// What was expected (operation and element type).
        expected: String,
        /// What arrived.
        got: String,
    },
    /// Nothing arrived from `peer` within the timeout.
    #[error("rank {rank}: {op}: timed out after {after_ms} ms waiting for peer {peer} (a rank skipped the call, failed, or the ranks disagree on the schedule)")]
    Timeout {
        /// The waiting rank.
        rank: usize,
        /// The operation.
        op: CommOp,
        /// The peer it waited for.
        peer: usize,
        /// The timeout in milliseconds.
        after_ms: u128,
    },
    /// A rank's thread panicked or the backend failed.
    #[error("rank {rank}: {op}: {message}")]
    Backend {
        /// The rank.
        rank: usize,
        /// The operation.
        op: CommOp,
        /// What the backend said.
        message: String,
    },
}

/// A group of `world_size` ranks that exchange buffers of [`CommElem`]s.
///
/// Every operation is collective over the ranks it names: all ranks of a collective call it
/// in the same order with consistent lengths; a grouped [`exchange`](Self::exchange) must be
/// matched by the peers' own exchanges (NCCL's `ncclGroupStart/End` semantics: no ordering
/// deadlock between a rank's sends and receives).
pub trait Communicator {
    /// The buffer type (host `Vec<T>` or a device slice).
    type Buffer<T: CommElem>: CommBuffer;

    /// This rank, `0..world_size()`.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn world_size(&self) -> usize;
    /// A zero-filled buffer of `len` elements.
    fn alloc<T: CommElem>(&self, len: usize) -> Result<Self::Buffer<T>, CommError>;
    /// A buffer holding a copy of `host`.
    fn upload<T: CommElem>(&self, host: &[T]) -> Result<Self::Buffer<T>, CommError>;
    /// A host copy of `buf` (waits for pending operations on it).
    fn download<T: CommElem>(&self, buf: &Self::Buffer<T>) -> Result<Vec<T>, CommError>;
    /// Grouped point-to-point: send each `(peer, buffer)` of `sends` and fill each
    /// `(peer, buffer)` of `recvs` from that peer; receive lengths must equal the peer's send.
    fn exchange<T: CommElem>(
        &self,
        sends: &[(usize, &Self::Buffer<T>)],
        recvs: &mut [(usize, &mut Self::Buffer<T>)],
    ) -> Result<(), CommError>;
    /// `send` holds `world` equal chunks; chunk `p` goes to rank `p`, and `recv`'s chunk `p`
    /// comes from rank `p` (lengths equal, divisible by the world size).
    fn all_to_all<T: CommElem>(
        &self,
        send: &Self::Buffer<T>,
        recv: &mut Self::Buffer<T>,
    ) -> Result<(), CommError>;
    /// `recv` (`world * send.len()`) receives every rank's `send`, in rank order.
    fn all_gather<T: CommElem>(
        &self,
        send: &Self::Buffer<T>,
        recv: &mut Self::Buffer<T>,
    ) -> Result<(), CommError>;
    /// Sum over ranks of `send` (`world * recv.len()` elements); rank `r` gets chunk `r`.
    fn reduce_scatter<T: CommElem>(
        &self,
        send: &Self::Buffer<T>,
        recv: &mut Self::Buffer<T>,
    ) -> Result<(), CommError>;
}

/// Check a peer index (shared by both implementations).
pub fn check_peer(rank: usize, world: usize, op: CommOp, peer: usize) -> Result<(), CommError> {
    if peer >= world || peer == rank {
        return Err(CommError::InvalidPeer {
            rank,
            op,
            peer,
            world,
        });
    }
    Ok(())
}

/// Check the lengths of a collective: `send` and `recv` of an all-to-all are equal and
/// divisible by `world`; an all-gather's `recv` is `world * send`; a reduce-scatter's `send`
/// is `world * recv`. Returns the per-rank chunk length.
pub fn check_collective(
    rank: usize,
    world: usize,
    op: CommOp,
    send: usize,
    recv: usize,
) -> Result<usize, CommError> {
    let mismatch = |field, expected, got, fix| CommError::SizeMismatch {
        rank,
        op,
        field,
        expected,
        got,
        fix,
    };
    match op {
        CommOp::AllToAll => {
            if recv != send {
                return Err(mismatch(
                    "recv",
                    send,
                    recv,
                    "all_to_all's recv has send's length",
                ));
            }
            if !send.is_multiple_of(world) {
                return Err(mismatch(
                    "send",
                    send.div_ceil(world) * world,
                    send,
                    "all_to_all's buffers hold world_size equal chunks",
                ));
            }
            Ok(send / world)
        }
        CommOp::AllGather => {
            if recv != world * send {
                return Err(mismatch(
                    "recv",
                    world * send,
                    recv,
                    "all_gather's recv holds world_size * send.len() elements",
                ));
            }
            Ok(send)
        }
        CommOp::ReduceScatter => {
            if send != world * recv {
                return Err(mismatch(
                    "send",
                    world * recv,
                    send,
                    "reduce_scatter's send holds world_size * recv.len() elements",
                ));
            }
            Ok(recv)
        }
        CommOp::Exchange | CommOp::Memory => Ok(send),
    }
}

struct Message {
    op: CommOp,
    type_name: &'static str,
    len: usize,
    data: Box<dyn Any + Send>,
}

/// One FIFO per (source, destination) pair, all behind one lock.
struct Fabric {
    world: usize,
    queues: Mutex<Vec<VecDeque<Message>>>,
    arrived: Condvar,
}

/// One rank of an in-process group (threads over host `Vec` buffers).
///
/// Sends never block (unbounded FIFOs per ordered pair); a receive waits at most the group's
/// timeout and then fails with [`CommError::Timeout`] naming the rank, the peer and the
/// operation. Collectives are built from point-to-point messages in a fixed order, and sums
/// run in rank order in f64, so results are deterministic.
pub struct InProcessComm {
    rank: usize,
    fabric: Arc<Fabric>,
    timeout: Duration,
}

impl std::fmt::Debug for InProcessComm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "InProcessComm(rank {} of {})",
            self.rank, self.fabric.world
        )
    }
}

impl InProcessComm {
    /// The `world` ranks of a new group; each receive waits at most `timeout`.
    pub fn group(world: usize, timeout: Duration) -> Vec<InProcessComm> {
        let fabric = Arc::new(Fabric {
            world,
            queues: Mutex::new((0..world * world).map(|_| VecDeque::new()).collect()),
            arrived: Condvar::new(),
        });
        (0..world)
            .map(|rank| InProcessComm {
                rank,
                fabric: fabric.clone(),
                timeout,
            })
            .collect()
    }

    fn world(&self) -> usize {
        self.fabric.world
    }

    fn post<T: CommElem>(&self, op: CommOp, peer: usize, data: Vec<T>) {
        let msg = Message {
            op,
            type_name: std::any::type_name::<T>(),
            len: data.len(),
            data: Box::new(data),
        };
        let mut q = self.fabric.queues.lock().unwrap_or_else(|e| e.into_inner());
        q[self.rank * self.world() + peer].push_back(msg);
        self.fabric.arrived.notify_all();
    }

    fn take<T: CommElem>(&self, op: CommOp, peer: usize, len: usize) -> Result<Vec<T>, CommError> {
        let deadline = Instant::now() + self.timeout;
        let idx = peer * self.world() + self.rank;
        let mut q = self.fabric.queues.lock().unwrap_or_else(|e| e.into_inner());
        let msg = loop {
            if let Some(m) = q[idx].pop_front() {
                break m;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(CommError::Timeout {
                    rank: self.rank,
                    op,
                    peer,
                    after_ms: self.timeout.as_millis(),
                });
            }
            q = self
                .fabric
                .arrived
                .wait_timeout(q, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        };
        drop(q);
        let want = std::any::type_name::<T>();
        if msg.op != op || msg.type_name != want {
            return Err(CommError::Mismatch {
                rank: self.rank,
                op,
                peer,
                expected: format!("{op} of {want}"),
                got: format!("{} of {}", msg.op, msg.type_name),
            });
        }
        if msg.len != len {
            return Err(CommError::SizeMismatch {
                rank: self.rank,
                op,
                field: "recv (the peer sent another length)",
                expected: len,
                got: msg.len,
                fix: "the sender and receiver must agree on the message length",
            });
        }
        msg.data
            .downcast::<Vec<T>>()
            .map(|b| *b)
            .map_err(|_| CommError::Backend {
                rank: self.rank,
                op,
                message: "message payload of an unexpected type".into(),
            })
    }

    fn check_world(&self, op: CommOp) -> Result<(), CommError> {
        if self.world() == 0 {
            return Err(CommError::Backend {
                rank: self.rank,
                op,
                message: "empty group".into(),
            });
        }
        Ok(())
    }
}

impl Communicator for InProcessComm {
    type Buffer<T: CommElem> = Vec<T>;

    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world()
    }

    fn alloc<T: CommElem>(&self, len: usize) -> Result<Vec<T>, CommError> {
        Ok(vec![T::default(); len])
    }

    fn upload<T: CommElem>(&self, host: &[T]) -> Result<Vec<T>, CommError> {
        Ok(host.to_vec())
    }

    fn download<T: CommElem>(&self, buf: &Vec<T>) -> Result<Vec<T>, CommError> {
        Ok(buf.clone())
    }

    fn exchange<T: CommElem>(
        &self,
        sends: &[(usize, &Vec<T>)],
        recvs: &mut [(usize, &mut Vec<T>)],
    ) -> Result<(), CommError> {
        let op = CommOp::Exchange;
        for (peer, _) in sends {
            check_peer(self.rank, self.world(), op, *peer)?;
        }
        for (peer, _) in recvs.iter() {
            check_peer(self.rank, self.world(), op, *peer)?;
        }
        for (peer, buf) in sends {
            self.post(op, *peer, (*buf).clone());
        }
        for (peer, buf) in recvs.iter_mut() {
            let data = self.take::<T>(op, *peer, buf.len())?;
            buf.copy_from_slice(&data);
        }
        Ok(())
    }

    fn all_to_all<T: CommElem>(&self, send: &Vec<T>, recv: &mut Vec<T>) -> Result<(), CommError> {
        let op = CommOp::AllToAll;
        self.check_world(op)?;
        let n = check_collective(self.rank, self.world(), op, send.len(), recv.len())?;
        let schedule = all_to_all_schedule(self.rank, self.world(), n);
        for (p, s, _) in &schedule {
            self.post(op, *p, send[s.clone()].to_vec());
        }
        let me = self.rank * n..(self.rank + 1) * n;
        recv[me.clone()].copy_from_slice(&send[me]);
        for (p, _, r) in schedule {
            let data = self.take::<T>(op, p, n)?;
            recv[r].copy_from_slice(&data);
        }
        Ok(())
    }

    fn all_gather<T: CommElem>(&self, send: &Vec<T>, recv: &mut Vec<T>) -> Result<(), CommError> {
        let op = CommOp::AllGather;
        self.check_world(op)?;
        let n = check_collective(self.rank, self.world(), op, send.len(), recv.len())?;
        for p in (0..self.world()).filter(|&p| p != self.rank) {
            self.post(op, p, send.clone());
        }
        recv[self.rank * n..(self.rank + 1) * n].copy_from_slice(send);
        for p in (0..self.world()).filter(|&p| p != self.rank) {
            let data = self.take::<T>(op, p, n)?;
            recv[p * n..(p + 1) * n].copy_from_slice(&data);
        }
        Ok(())
    }

    fn reduce_scatter<T: CommElem>(
        &self,
        send: &Vec<T>,
        recv: &mut Vec<T>,
    ) -> Result<(), CommError> {
        let op = CommOp::ReduceScatter;
        self.check_world(op)?;
        let n = check_collective(self.rank, self.world(), op, send.len(), recv.len())?;
        for p in (0..self.world()).filter(|&p| p != self.rank) {
            self.post(op, p, send[p * n..(p + 1) * n].to_vec());
        }
        let mut parts: Vec<Vec<T>> = Vec::with_capacity(self.world());
        for p in 0..self.world() {
            if p == self.rank {
                parts.push(send[p * n..(p + 1) * n].to_vec());
            } else {
                parts.push(self.take::<T>(op, p, n)?);
            }
        }
        for (i, r) in recv.iter_mut().enumerate() {
            let s: f64 = parts.iter().map(|part| part[i].to_f64()).sum();
            *r = T::from_f64(s);
        }
        Ok(())
    }
}

/// Run `f` on every rank of a new in-process group of `world` threads (receive timeout
/// `timeout`) and return the per-rank results in rank order; the first error (lowest rank)
/// wins, a panicking rank is a [`CommError::Backend`].
pub fn run_in_process<R, E, F>(world: usize, timeout: Duration, f: F) -> Result<Vec<R>, E>
where
    R: Send,
    E: Send + From<CommError>,
    F: Fn(&InProcessComm) -> Result<R, E> + Sync,
{
    let comms = InProcessComm::group(world, timeout);
    let results: Vec<Result<R, E>> = std::thread::scope(|s| {
        let handles: Vec<_> = comms
            .iter()
            .map(|c| {
                let f = &f;
                s.spawn(move || f(c))
            })
            .collect();
        handles
            .into_iter()
            .enumerate()
            .map(|(rank, h)| {
                h.join().unwrap_or_else(|_| {
                    Err(E::from(CommError::Backend {
                        rank,
                        op: CommOp::Exchange,
                        message: "the rank's thread panicked".into(),
                    }))
                })
            })
            .collect()
    });
    results.into_iter().collect()
}
