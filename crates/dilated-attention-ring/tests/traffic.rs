//! Traffic per rank, counted: zero when every segment fits in a shard, and for a segment that
//! spans every rank at most the dilated rows of that segment (LongNet sec. 3.1: constant in the
//! number of ranks), twice that with the backward.

use std::sync::Arc;
use std::thread;

use burn::backend::{Autodiff, NdArray};
use burn::tensor::Tensor;
use dilated_attention_core::oracle::seeded_normal;
use dilated_attention_core::{DilatedAttentionConfig, DilationMode};
use dilated_attention_ring::{
    Communicator, InProcessCommunicator, RingDilatedAttentionConfig, TrafficCounter, TrafficTotals,
};

type B = NdArray;
type A = Autodiff<NdArray>;

const BATCH: usize = 1;
const HEADS: usize = 4;
const HEAD_DIM: usize = 8;

/// Per-rank totals of a forward (and backward) of `cfg` over `world` ranks of `local` tokens.
fn traffic(
    cfg: &DilatedAttentionConfig,
    world: usize,
    local: usize,
    backward: bool,
) -> Vec<TrafficTotals> {
    let ranks = InProcessCommunicator::<B>::group(vec![Default::default(); world]);
    thread::scope(|s| {
        let handles: Vec<_> = ranks
            .into_iter()
            .map(|comm| {
                s.spawn(move || {
                    let rank = comm.rank();
                    let counter = Arc::new(TrafficCounter::new(Arc::new(comm)));
                    let ring =
                        RingDilatedAttentionConfig::new(cfg.clone()).init::<A>(counter.clone());
                    let x = Tensor::<A, 4>::from_inner(seeded_normal::<B, 4>(
                        rank as u64,
                        [BATCH, local, HEADS, HEAD_DIM],
                        &Default::default(),
                    ))
                    .require_grad();
                    let out = ring.forward(x.clone(), x.clone(), x);
                    if backward {
                        let _ = out.sum().backward();
                    }
                    counter.totals()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn segments_inside_shards_cost_no_traffic() {
    let cfg = DilatedAttentionConfig::new(vec![16, 32], vec![1, 2]);
    for totals in traffic(&cfg, 4, 64, true) {
        assert_eq!(
            totals,
            TrafficTotals {
                time: totals.time,
                ..Default::default()
            }
        );
    }
}

#[test]
fn a_segment_over_every_rank_costs_at_most_its_dilated_rows() {
    // one pair whose segment is the whole sequence with s / r = 16 rows, as in LongNet's
    // largest pairs; 2, 4 and 8 ranks of 32 tokens each
    for world in [2usize, 4, 8] {
        let n = 32 * world;
        let cfg = DilatedAttentionConfig::new(vec![8, n], vec![1, n / 16])
            .with_mode(DilationMode::LongNet);
        // LongNet mode: head h uses offset h % r, so each head's group selects 16 rows
        let bound = (2 * BATCH * 16 * HEADS * HEAD_DIM * 4) as u64;
        let forward = traffic(&cfg, world, 32, false);
        let both = traffic(&cfg, world, 32, true);
        for (rank, (f, b)) in forward.iter().zip(&both).enumerate() {
            assert!(
                f.bytes_received > 0 && f.bytes_received <= bound,
                "world {world} rank {rank}: {f:?} > {bound}"
            );
            // the backward receives the keys again and the key/value gradients (f32) of its rows
            assert!(
                b.bytes_received <= 3 * bound,
                "world {world} rank {rank}: {b:?}"
            );
            assert_eq!(
                f.bytes_sent,
                forward.iter().map(|t| t.bytes_received).sum::<u64>() / world as u64,
                "symmetric ranks send what they receive"
            );
        }
    }
}
