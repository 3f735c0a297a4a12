//! The sharded ring equals one device: outputs, log-sum-exps and gradients of 1, 2, 3 and 4
//! in-process ranks against the reference path on the whole sequence, for random shapes and
//! configs (both modes, causal, padding, uneven and zigzag shards), f32 to 1e-5.

mod common;

use std::sync::Arc;

use burn::backend::{Autodiff, NdArray};
use burn::tensor::Tensor;
use common::{max_abs_diff, reference_gradients, ring_gradients};
use dilated_attention_core::oracle::{OracleCase, arbitrary_case, seeded_normal};
use dilated_attention_core::{
    DilatedAttentionConfig, DilatedAttentionError, reference_dilated_attention,
};
use dilated_attention_ring::{
    Communicator, InProcessCommunicator, RingDilatedAttentionConfig, ShardLayout, ShardOrder,
};
use proptest::prelude::*;

type B = NdArray;

/// How a case cuts its sequence.
#[derive(Debug, Clone, Copy)]
enum Cut {
    Even,
    Uneven,
    Zigzag,
}

fn layout(seq: usize, world: usize, cut: Cut) -> Option<ShardLayout> {
    match cut {
        Cut::Even => ShardLayout::contiguous(seq, world).ok(),
        Cut::Zigzag => ShardLayout::zigzag(seq, world).ok(),
        Cut::Uneven => {
            // rank r holds about (r + 1) parts: lengths 1, 2, 3, ... scaled
            let weights: usize = (1..=world).sum();
            if seq < weights {
                return None;
            }
            let mut lengths: Vec<usize> = (1..=world).map(|w| seq * w / weights).collect();
            let rest = seq - lengths.iter().sum::<usize>();
            lengths[world - 1] += rest;
            ShardLayout::from_lengths(&lengths).ok()
        }
    }
}

/// [`common::on_ranks`] on NdArray ranks.
fn on_ranks<T: Send>(world: usize, f: impl Fn(InProcessCommunicator<B>) -> T + Sync) -> Vec<T> {
    common::on_ranks(world, f)
}

/// The ring with its fault checks on, unsharded.
fn ring_forward(case: &OracleCase, layout: &ShardLayout) -> (Tensor<B, 4>, Tensor<B, 3>) {
    let cfg = RingDilatedAttentionConfig::new(case.config()).with_fault_checks(true);
    common::ring_forward::<B>(case, layout, &cfg)
}

fn small_case() -> impl Strategy<Value = (OracleCase, usize, Cut)> {
    (
        arbitrary_case(vec![4, 8]),
        1usize..=4,
        prop_oneof![Just(Cut::Even), Just(Cut::Uneven), Just(Cut::Zigzag)],
        8usize..=96,
    )
        .prop_map(|(mut case, world, cut, seq)| {
            // keep the suite fast: shorter sequences, segments that often exceed a shard
            case.shape[1] = seq;
            case.shape[0] = case.shape[0].min(2);
            // HeadGrouped needs a head per pair: make every case valid (the invalid ones are
            // the single-device suites' errors to check).
            case.shape[2] = case.shape[2].max(case.segments.len());
            for s in &mut case.segments {
                *s = (*s % 100).max(1);
            }
            (case, world, cut)
        })
        .prop_filter("a layout of the sequence", |(case, world, cut)| {
            layout(case.shape[1], *world, *cut).is_some()
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn ring_forward_equals_one_device((case, world, cut) in small_case()) {
        let layout = layout(case.shape[1], world, cut).unwrap();
        let device = Default::default();
        let [q, k, v] = case.inputs::<B>(&device);
        let (want_out, want_lse) =
            reference_dilated_attention(q, k, v, case.padding_mask::<B>(&device), &case.config()).unwrap();
        let (out, lse) = ring_forward(&case, &layout);
        let (e_out, e_lse) = (max_abs_diff(out, want_out), max_abs_diff(lse, want_lse));
        prop_assert!(e_out < 1e-5 && e_lse < 1e-5, "{case:?} {cut:?} world {world}: out {e_out} lse {e_lse}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn ring_gradients_equal_one_device((case, world, cut) in small_case()) {
        let layout = layout(case.shape[1], world, cut).unwrap();
        let got = ring_gradients::<B>(&case, &layout);
        let want = reference_gradients::<B>(&case);
        for (name, (g, w)) in ["dq", "dk", "dv"].iter().zip(got.into_iter().zip(want)) {
            let err = max_abs_diff(g, w);
            prop_assert!(err < 1e-5, "{case:?} {cut:?} world {world}: {name} error {err}");
        }
    }
}

/// A segment spanning every rank, causal, with padding: the path that exchanges the most.
#[test]
fn one_segment_over_four_ranks_matches_forward_and_gradients() {
    let case = OracleCase {
        shape: [2, 61, 3, 8],
        segments: vec![8, 61],
        rates: vec![1, 2],
        mode: dilated_attention_core::DilationMode::LongNet,
        causal: true,
        padding: Some(0.25),
        seed: 0x5eed_0001,
    };
    for cut in [Cut::Even, Cut::Uneven, Cut::Zigzag] {
        let layout = layout(61, 4, cut).unwrap();
        let device = Default::default();
        let [q, k, v] = case.inputs::<B>(&device);
        let (want, want_lse) =
            reference_dilated_attention(q, k, v, case.padding_mask::<B>(&device), &case.config())
                .unwrap();
        let (out, lse) = ring_forward(&case, &layout);
        assert!(max_abs_diff(out, want) < 1e-5, "{cut:?}");
        assert!(max_abs_diff(lse, want_lse) < 1e-5, "{cut:?}");
        for (g, w) in ring_gradients::<B>(&case, &layout)
            .into_iter()
            .zip(reference_gradients::<B>(&case))
        {
            assert!(max_abs_diff(g, w) < 1e-5, "{cut:?}");
        }
    }
}

#[test]
fn a_shard_of_the_wrong_length_is_a_typed_error() {
    let cfg = RingDilatedAttentionConfig::new(DilatedAttentionConfig::new(vec![16], vec![1]));
    let errors = on_ranks(2, |comm| {
        let ring = cfg
            .init::<B>(Arc::new(comm))
            .with_layout(ShardLayout::from_lengths(&[10, 22]).unwrap())
            .unwrap();
        let x = seeded_normal::<B, 4>(3, [1, 16, 2, 4], &Default::default());
        ring.try_forward(x.clone(), x.clone(), x).unwrap_err()
    });
    assert!(matches!(
        errors[0],
        DilatedAttentionError::ShardMismatch {
            rank: 0,
            expected: 10,
            actual: 16,
            ..
        }
    ));
    assert!(matches!(
        errors[1],
        DilatedAttentionError::ShardMismatch {
            rank: 1,
            expected: 22,
            actual: 16,
            ..
        }
    ));
}

#[test]
fn ranks_with_different_lengths_fail_the_production_check() {
    // both ranks think the layout is even, but rank 1 holds 12 tokens
    let cfg = RingDilatedAttentionConfig::new(DilatedAttentionConfig::new(vec![64], vec![1]))
        .with_fault_checks(true);
    let errors = on_ranks(2, |comm| {
        let len = if comm.rank() == 0 { 10 } else { 12 };
        let ring = cfg.init::<B>(Arc::new(comm));
        let x = seeded_normal::<B, 4>(3, [1, len, 2, 4], &Default::default());
        ring.try_forward(x.clone(), x.clone(), x).unwrap_err()
    });
    for e in errors {
        assert!(
            matches!(e, DilatedAttentionError::ShardMismatch { .. }),
            "{e}"
        );
    }
}

#[test]
fn nan_input_is_reported_by_the_production_checks() {
    let cfg = RingDilatedAttentionConfig::new(DilatedAttentionConfig::new(vec![8], vec![1]))
        .with_fault_checks(true);
    let ring = cfg.init::<B>(Arc::new(InProcessCommunicator::solo(Default::default())));
    let x = seeded_normal::<B, 4>(3, [1, 8, 2, 4], &Default::default());
    let bad = x.clone().slice_assign(
        [0..1, 2..3, 0..1, 0..1],
        Tensor::full([1, 1, 1, 1], f32::NAN, &Default::default()),
    );
    let err = ring.try_forward(x.clone(), bad, x).unwrap_err();
    assert_eq!(
        err,
        DilatedAttentionError::NonFinite {
            name: "key",
            rank: 0,
            count: 1
        }
    );
}

#[test]
fn a_peer_that_fails_mid_ring_is_an_error_not_a_hang() {
    // rank 1 dies before the exchange; rank 0 must return an error
    let cfg = RingDilatedAttentionConfig::new(DilatedAttentionConfig::new(vec![32], vec![1]));
    let results = on_ranks(2, |comm| {
        if comm.rank() == 1 {
            drop(comm);
            return None;
        }
        let ring = cfg.init::<B>(Arc::new(comm));
        let x = seeded_normal::<B, 4>(5, [1, 16, 2, 4], &Default::default());
        Some(ring.try_forward(x.clone(), x.clone(), x).unwrap_err())
    });
    let err = results[0].clone().unwrap();
    // The error names the step and the phase, then the transfer that failed.
    let DilatedAttentionError::RingStep {
        rank: 0,
        phase: "forward",
        cause,
        ..
    } = &err
    else {
        panic!("not a ring step error: {err}");
    };
    assert!(
        matches!(
            **cause,
            DilatedAttentionError::Communication {
                rank: 0,
                peer: 1,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_peer_that_fails_in_the_backward_panics_naming_rank_step_and_cause() {
    // Both ranks run the forward; rank 1 then leaves, and rank 0's backward (which Autodiff
    // cannot make return an error) panics with the step and the failed transfer.
    let cfg = RingDilatedAttentionConfig::new(DilatedAttentionConfig::new(vec![32], vec![1]));
    // Autodiff's graph may keep rank 1's communicator alive after it leaves: then rank 0 gives
    // up after the timeout instead of seeing the peer gone. Either way the backward panics.
    let ranks = dilated_attention_ring::InProcessCommunicator::<B>::group_with_timeout(
        vec![Default::default(); 2],
        std::time::Duration::from_secs(2),
    );
    let results: Vec<Option<String>> = std::thread::scope(|s| {
        let handles: Vec<_> = ranks
            .into_iter()
            .map(|comm| s.spawn(|| rank_then_leave(&cfg, comm)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let message = results[0].clone().unwrap();
    assert!(
        message.contains("rank 0, ring step 1 of the backward") && message.contains("rank 1"),
        "{message}"
    );
}

/// One rank of [`a_peer_that_fails_in_the_backward_panics_naming_rank_step_and_cause`]: the
/// forward, then rank 1 leaves and rank 0 runs the backward; rank 0's panic message.
fn rank_then_leave(
    cfg: &RingDilatedAttentionConfig,
    comm: dilated_attention_ring::InProcessCommunicator<B>,
) -> Option<String> {
    {
        let rank = comm.rank();
        let ring = cfg.init::<Autodiff<B>>(Arc::new(comm));
        let x =
            seeded_normal::<Autodiff<B>, 4>(5, [1, 16, 2, 4], &Default::default()).require_grad();
        let out = ring.try_forward(x.clone(), x.clone(), x.clone()).unwrap();
        if rank == 1 {
            drop(ring);
            return None;
        }
        let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            out.sum().backward();
        }))
        .unwrap_err();
        Some(
            panic
                .downcast_ref::<String>()
                .cloned()
                .unwrap_or_else(|| "(not a string)".into()),
        )
    }
}

#[test]
fn zigzag_order_from_the_config_matches_one_device() {
    let case = OracleCase {
        shape: [1, 48, 2, 8],
        segments: vec![48],
        rates: vec![1],
        mode: dilated_attention_core::DilationMode::LongNet,
        causal: true,
        padding: None,
        seed: 77,
    };
    let layout = ShardLayout::zigzag(48, 3).unwrap();
    let device = Default::default();
    let [q, k, v] = case.inputs::<B>(&device);
    let (want, _) =
        reference_dilated_attention(q.clone(), k.clone(), v.clone(), None, &case.config()).unwrap();
    let cfg = RingDilatedAttentionConfig::new(case.config()).with_shard_order(ShardOrder::Zigzag);
    let outs = on_ranks(3, |comm| {
        let rank = comm.rank();
        let ring = cfg.init::<B>(Arc::new(comm));
        ring.forward(
            layout.shard(q.clone(), rank).unwrap(),
            layout.shard(k.clone(), rank).unwrap(),
            layout.shard(v.clone(), rank).unwrap(),
        )
    });
    assert!(max_abs_diff(layout.unshard(outs), want) < 1e-5);
}

#[test]
fn the_memory_guard_chunks_the_batch_or_refuses_the_call() {
    let attention = DilatedAttentionConfig::new(vec![8, 64], vec![1, 4]).with_causal(true);
    let x = seeded_normal::<B, 4>(9, [4, 64, 2, 8], &Default::default());
    let layout = ShardLayout::contiguous(64, 2).unwrap();
    let results = on_ranks(2, |comm| {
        let rank = comm.rank();
        let comm: Arc<dyn dilated_attention_ring::Communicator<B>> = Arc::new(comm);
        let shard = layout.shard(x.clone(), rank).unwrap();
        let free = RingDilatedAttentionConfig::new(attention.clone())
            .init::<B>(comm.clone())
            .with_layout(layout.clone())
            .unwrap();
        let want = free.forward(shard.clone(), shard.clone(), shard.clone());
        let device = Default::default();
        let two = free
            .estimated_call_bytes([2, 32, 2, 8], burn::tensor::DType::F32, &device)
            .unwrap();
        let one = free
            .estimated_call_bytes([1, 32, 2, 8], burn::tensor::DType::F32, &device)
            .unwrap();
        let guarded = |limit| {
            RingDilatedAttentionConfig::new(attention.clone())
                .with_fault_checks(true)
                .with_memory_limit_bytes(Some(limit))
                .init::<B>(comm.clone())
                .with_layout(layout.clone())
                .unwrap()
        };
        // room for two batch elements at a time: two chunks, the same output
        let got = guarded(two)
            .try_forward(shard.clone(), shard.clone(), shard.clone())
            .unwrap();
        let err = guarded(one - 1)
            .try_forward(shard.clone(), shard.clone(), shard)
            .unwrap_err();
        (max_abs_diff(got, want), err, one, two)
    });
    for (diff, err, one, two) in results {
        assert!(two > one);
        assert_eq!(diff, 0.0, "chunking the batch changes nothing");
        assert!(
            matches!(err, DilatedAttentionError::MemoryLimit { needed, limit, .. } if needed == one && limit == one - 1),
            "{err}"
        );
    }
}

#[test]
fn dropout_while_training_on_sharded_pairs_is_refused() {
    // One segment of 32 over two ranks of 16: the pair is sharded.
    let attention = DilatedAttentionConfig::new(vec![32], vec![1]).with_dropout(0.1);
    let cfg = RingDilatedAttentionConfig::new(attention);
    let results = on_ranks(2, |comm| {
        let comm = Arc::new(comm);
        let x = seeded_normal::<B, 4>(5, [1, 16, 2, 4], &Default::default());
        let training = cfg.init::<Autodiff<B>>(comm.clone());
        let xa = Tensor::<Autodiff<B>, 4>::from_inner(x.clone());
        let refused = training
            .try_forward(xa.clone(), xa.clone(), xa)
            .unwrap_err();
        // Inference (no Autodiff) has no dropout: the call runs.
        let inference = cfg.init::<B>(comm);
        let ran = inference.try_forward(x.clone(), x.clone(), x).is_ok();
        (refused, ran)
    });
    for (refused, ran) in results {
        assert!(
            matches!(refused, DilatedAttentionError::Unsupported { .. }),
            "{refused}"
        );
        assert!(ran);
    }
}
