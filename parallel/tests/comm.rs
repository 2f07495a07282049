//! The in-process communicator: collectives with 2, 4 and 8 ranks, and named errors.

use std::time::Duration;

use attnforge_parallel::*;

const T: Duration = Duration::from_secs(10);

#[test]
fn collectives_and_exchange_with_2_4_8_ranks() {
    for w in [2usize, 4, 8] {
        let res = run_in_process(w, T, |c| -> Result<_, CommError> {
            let r = c.rank();
            // all_to_all: element p of rank r is 100 r + p; rank r receives 100 p + r from p.
            let send = c.upload(&(0..w).map(|p| (100 * r + p) as f32).collect::<Vec<_>>())?;
            let mut recv = c.alloc::<f32>(w)?;
            c.all_to_all(&send, &mut recv)?;
            let a2a = c.download(&recv)?;
            let g = c.upload(&[r as f64, -(r as f64)])?;
            let mut gathered = c.alloc::<f64>(2 * w)?;
            c.all_gather(&g, &mut gathered)?;
            let rs_in = c.upload(
                &(0..2 * w)
                    .map(|i| half::bf16::from_f64((i + r) as f64))
                    .collect::<Vec<_>>(),
            )?;
            let mut rs = c.alloc::<half::bf16>(2)?;
            c.reduce_scatter(&rs_in, &mut rs)?;
            // exchange: a ring shift by one.
            let out = c.upload(&[half::f16::from_f64(r as f64)])?;
            let mut inb = c.alloc::<half::f16>(1)?;
            c.exchange(&[((r + 1) % w, &out)], &mut [((r + w - 1) % w, &mut inb)])?;
            Ok((
                a2a,
                c.download(&gathered)?,
                c.download(&rs)?,
                c.download(&inb)?,
            ))
        })
        .unwrap();
        for (r, (a2a, gathered, rs, shifted)) in res.into_iter().enumerate() {
            assert_eq!(
                a2a,
                (0..w).map(|p| (100 * p + r) as f32).collect::<Vec<_>>()
            );
            assert_eq!(
                gathered,
                (0..w)
                    .flat_map(|p| [p as f64, -(p as f64)])
                    .collect::<Vec<_>>()
            );
            let want: Vec<f64> = (0..2)
                .map(|i| (0..w).map(|q| (2 * r + i + q) as f64).sum())
                .collect();
            assert_eq!(rs.iter().map(|x| x.to_f64()).collect::<Vec<_>>(), want);
            assert_eq!(shifted[0].to_f64(), ((r + w - 1) % w) as f64);
        }
    }
}

#[test]
fn wrong_peer_is_a_named_error() {
    let res = run_in_process(2, T, |c| -> Result<(), CommError> {
        let b = c.upload(&[1.0f32])?;
        c.exchange(&[(2, &b)], &mut [])
    });
    assert_eq!(
        res,
        Err(CommError::InvalidPeer {
            rank: 0,
            op: CommOp::Exchange,
            peer: 2,
            world: 2
        })
    );
    let res = run_in_process(2, T, |c| -> Result<(), CommError> {
        let mut b = c.alloc::<f32>(1)?;
        c.exchange(&[], &mut [(c.rank(), &mut b)])
    });
    assert!(
        matches!(
            res,
            Err(CommError::InvalidPeer {
                rank: 0,
                peer: 0,
                ..
            })
        ),
        "{res:?}"
    );
}

#[test]
fn mismatched_sizes_are_named_errors() {
    // Rank 0 sends 3 elements, rank 1 expects 4.
    let res = run_in_process(2, T, |c| -> Result<(), CommError> {
        if c.rank() == 0 {
            let b = c.upload(&[1.0f64; 3])?;
            c.exchange(&[(1, &b)], &mut [])
        } else {
            let mut b = c.alloc::<f64>(4)?;
            c.exchange(&[], &mut [(0, &mut b)])
        }
    });
    assert!(
        matches!(
            res,
            Err(CommError::SizeMismatch {
                rank: 1,
                op: CommOp::Exchange,
                expected: 4,
                got: 3,
                ..
            })
        ),
        "{res:?}"
    );
    // Collective lengths are checked before anything is sent.
    let res = run_in_process(2, T, |c| -> Result<(), CommError> {
        let s = c.upload(&[1.0f32; 3])?;
        let mut r = c.alloc::<f32>(3)?;
        c.all_to_all(&s, &mut r)
    });
    assert!(
        matches!(
            res,
            Err(CommError::SizeMismatch {
                op: CommOp::AllToAll,
                field: "send",
                got: 3,
                ..
            })
        ),
        "{res:?}"
    );
    let res = run_in_process(4, T, |c| -> Result<(), CommError> {
        let s = c.upload(&[1.0f32; 2])?;
        let mut r = c.alloc::<f32>(4)?;
        c.all_gather(&s, &mut r)
    });
    assert!(
        matches!(
            res,
            Err(CommError::SizeMismatch {
                op: CommOp::AllGather,
                expected: 8,
                got: 4,
                ..
            })
        ),
        "{res:?}"
    );
    // A message of another element type or operation is a mismatch, not garbage.
    let res = run_in_process(2, T, |c| -> Result<(), CommError> {
        if c.rank() == 0 {
            let b = c.upload(&[1.0f32])?;
            c.exchange(&[(1, &b)], &mut [])
        } else {
            let mut b = c.alloc::<f64>(1)?;
            c.exchange(&[], &mut [(0, &mut b)])
        }
    });
    assert!(
        matches!(
            res,
            Err(CommError::Mismatch {
                rank: 1,
                peer: 0,
                ..
            })
        ),
        "{res:?}"
    );
}

#[test]
fn a_missing_peer_times_out_naming_rank_peer_and_operation() {
    let start = std::time::Instant::now();
    let res = run_in_process(
        3,
        Duration::from_millis(200),
        |c| -> Result<(), CommError> {
            if c.rank() == 2 {
                let mut b = c.alloc::<f32>(1)?;
                return c.exchange(&[], &mut [(1, &mut b)]);
            }
            Ok(())
        },
    );
    assert_eq!(
        res,
        Err(CommError::Timeout {
            rank: 2,
            op: CommOp::Exchange,
            peer: 1,
            after_ms: 200
        })
    );
    let msg = res.unwrap_err().to_string();
    assert!(
        msg.contains("rank 2") && msg.contains("peer 1") && msg.contains("exchange"),
        "{msg}"
    );
    assert!(start.elapsed() < Duration::from_secs(5));
    // A collective that one rank skips also times out instead of hanging.
    let res = run_in_process(
        2,
        Duration::from_millis(100),
        |c| -> Result<(), CommError> {
            if c.rank() == 0 {
                let s = c.upload(&[1.0f32; 2])?;
                let mut r = c.alloc::<f32>(2)?;
                c.all_to_all(&s, &mut r)?;
            }
            Ok(())
        },
    );
    assert!(
        matches!(
            res,
            Err(CommError::Timeout {
                rank: 0,
                op: CommOp::AllToAll,
                peer: 1,
                ..
            })
        ),
        "{res:?}"
    );
}

#[test]
fn cp_errors_name_the_field() {
    use attnforge_reference::{Mask, Shape4, Tensor4};
    use std::sync::Arc;
    let problem = CpProblem {
        mask: Arc::new(Mask::Causal),
        batch: 1,
        heads_q: 3,
        heads_kv: 1,
        sq: 8,
        sk: 8,
        dim: 2,
        dim_v: 2,
        scale: None,
    };
    let layout = Layout {
        q: Partition::contiguous(8, 2).unwrap(),
        k: Partition::contiguous(8, 2).unwrap(),
    };
    let res = run_in_process(2, T, |c| {
        let q = Tensor4::from_fn(Shape4::new(1, 3, 4, 2), |_, _, _, _| 0.5f64);
        let k = Tensor4::from_fn(Shape4::new(1, 1, 4, 2), |_, _, _, _| 0.5f64);
        ulysses_forward(
            c,
            &ReferenceEngine::default(),
            &problem,
            &layout,
            &Shards {
                q: &q,
                k: &k,
                v: &k,
            },
        )
        .map(|_| ())
    });
    assert!(
        matches!(
            res,
            Err(CpError::Invalid {
                field: "heads_q",
                ..
            })
        ),
        "{res:?}"
    );
    let res = run_in_process(2, T, |c| {
        let q = Tensor4::from_fn(Shape4::new(1, 3, 5, 2), |_, _, _, _| 0.5f64);
        let k = Tensor4::from_fn(Shape4::new(1, 1, 4, 2), |_, _, _, _| 0.5f64);
        ring_forward(
            c,
            &ReferenceEngine::default(),
            &problem,
            &layout,
            &Shards {
                q: &q,
                k: &k,
                v: &k,
            },
        )
        .map(|_| ())
    });
    assert!(
        matches!(
            res,
            Err(CpError::Invalid {
                field: "q shard",
                ..
            })
        ),
        "{res:?}"
    );
}

#[test]
fn all_to_all_schedule_pairs_every_peer_once_with_mirrored_chunks() {
    for world in 1..9 {
        for rank in 0..world {
            let s = all_to_all_schedule(rank, world, 3);
            assert_eq!(s.len(), world - 1);
            for (p, send, recv) in &s {
                assert_ne!(*p, rank);
                assert_eq!(
                    *send,
                    p * 3..p * 3 + 3,
                    "rank {rank} sends chunk {p} to {p}"
                );
                assert_eq!(
                    *recv,
                    p * 3..p * 3 + 3,
                    "rank {rank} receives {p}'s chunk at {p}"
                );
                // The peer's schedule holds the mirrored entry of the same length.
                let theirs = all_to_all_schedule(*p, world, 3);
                let back = theirs.iter().find(|(q, _, _)| *q == rank).unwrap();
                assert_eq!(back.1, rank * 3..rank * 3 + 3);
            }
        }
    }
}

#[test]
fn nccl_peer_indices_are_checked() {
    assert_eq!(nccl_peer(1, 4, CommOp::Exchange, 3), Ok(3));
    assert!(matches!(
        nccl_peer(1, 4, CommOp::Exchange, 1),
        Err(CommError::InvalidPeer { peer: 1, .. })
    ));
    assert!(matches!(
        nccl_peer(1, 4, CommOp::AllToAll, 4),
        Err(CommError::InvalidPeer {
            peer: 4,
            op: CommOp::AllToAll,
            ..
        })
    ));
}
