//! Sequence-parallel training of a multihead layer: two and three in-process ranks, each with
//! its shard of the sequence, give the one-device outputs, input gradients and (after
//! `all_reduce_gradients`) parameter gradients, with rotary positions and causal masking.

use std::sync::Arc;
use std::thread;

use burn::backend::{Autodiff, NdArray};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use dilated_attention_core::oracle::seeded_normal;
use dilated_attention_core::{DilatedAttentionConfig, DilationMode};
use dilated_attention_multihead::{MultiheadDilatedAttention, MultiheadDilatedAttentionConfig};
use dilated_attention_ring::{
    Communicator, InProcessCommunicator, ShardLayout, all_reduce_gradients,
};

type B = NdArray;
type A = Autodiff<NdArray>;

fn rel_err<const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> f32 {
    let scale = b.clone().abs().max().into_scalar().max(1e-3);
    (a - b).abs().max().into_scalar() / scale
}

/// `[weight of q_proj, bias of out_proj, gamma of the norm]` gradients.
fn param_grads(
    m: &MultiheadDilatedAttention<A>,
    grads: &GradientsParams,
) -> (Tensor<B, 2>, Tensor<B, 1>, Tensor<B, 1>) {
    let norm = m.norm.as_ref().expect("sub-layer norm on");
    (
        grads.get::<B, 2>(m.q_proj.weight.id).unwrap(),
        grads
            .get::<B, 1>(m.out_proj.bias.as_ref().unwrap().id)
            .unwrap(),
        grads.get::<B, 1>(norm.gamma.id).unwrap(),
    )
}

fn check(world: usize, mode: DilationMode, layout: ShardLayout) {
    let device = Default::default();
    let (seq, embed, heads) = (layout.seq_len(), 32, 4);
    // the 48-token segment spans shards; the 8-token one mostly does not
    let attention = DilatedAttentionConfig::new(vec![8, 48], vec![1, 2])
        .with_mode(mode)
        .with_causal(true);
    let mha: MultiheadDilatedAttention<A> =
        MultiheadDilatedAttentionConfig::new(embed, heads, attention)
            .with_rotary(true)
            .init(&device);
    let x = seeded_normal::<B, 3>(21, [2, seq, embed], &device);
    let w = seeded_normal::<B, 3>(22, [2, seq, embed], &device);

    // one device
    let xa = Tensor::<A, 3>::from_inner(x.clone()).require_grad();
    let y = mha.forward(xa.clone(), xa.clone(), xa.clone());
    let grads = (y.clone() * Tensor::from_inner(w.clone())).sum().backward();
    let want_dx = xa.grad(&grads).unwrap();
    let want_params = param_grads(&mha, &GradientsParams::from_grads(grads, &mha));
    let want_y = y.inner();

    // `world` ranks
    let ranks = InProcessCommunicator::<B>::group(vec![device; world]);
    let results: Vec<_> = thread::scope(|s| {
        let handles: Vec<_> = ranks
            .into_iter()
            .map(|comm| {
                let (mha, layout, x, w) = (mha.clone(), layout.clone(), x.clone(), w.clone());
                s.spawn(move || {
                    let rank = comm.rank();
                    let comm: Arc<dyn Communicator<B>> = Arc::new(comm);
                    let mut local = mha.with_sequence_parallel(comm.clone()).unwrap();
                    local.sequence_parallel = Some(
                        local
                            .sequence_parallel
                            .take()
                            .unwrap()
                            .with_layout(layout.clone())
                            .unwrap(),
                    );
                    let xa =
                        Tensor::<A, 3>::from_inner(layout.shard(x, rank).unwrap()).require_grad();
                    let y = local.forward(xa.clone(), xa.clone(), xa.clone());
                    let loss =
                        (y.clone() * Tensor::from_inner(layout.shard(w, rank).unwrap())).sum();
                    let grads = loss.backward();
                    let dx = xa.grad(&grads).unwrap();
                    let params = GradientsParams::from_grads(grads, &local);
                    let params = all_reduce_gradients(&local, params, comm.as_ref()).unwrap();
                    (y.inner(), dx, param_grads(&local, &params))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut ys = Vec::new();
    let mut dxs = Vec::new();
    for (rank, (y, dx, params)) in results.into_iter().enumerate() {
        ys.push(y);
        dxs.push(dx);
        // after the all-reduce every rank holds the whole loss's parameter gradients
        assert!(
            rel_err(params.0, want_params.0.clone()) < 1e-4,
            "rank {rank} q_proj"
        );
        assert!(
            rel_err(params.1, want_params.1.clone()) < 1e-4,
            "rank {rank} out_proj bias"
        );
        assert!(
            rel_err(params.2, want_params.2.clone()) < 1e-4,
            "rank {rank} norm gamma"
        );
    }
    assert!(rel_err(layout.unshard(ys), want_y) < 1e-5, "output");
    assert!(
        rel_err(layout.unshard(dxs), want_dx) < 1e-4,
        "input gradient"
    );
}

#[test]
fn two_ranks_train_like_one_device() {
    check(
        2,
        DilationMode::LongNet,
        ShardLayout::contiguous(64, 2).unwrap(),
    );
}

#[test]
fn three_uneven_ranks_head_grouped_train_like_one_device() {
    check(
        3,
        DilationMode::HeadGrouped,
        ShardLayout::from_lengths(&[20, 13, 26]).unwrap(),
    );
}

#[test]
fn zigzag_ranks_train_like_one_device() {
    check(
        2,
        DilationMode::LongNet,
        ShardLayout::zigzag(48, 2).unwrap(),
    );
}
