//! Helpers the ring suites share: ranks on threads, the ring's output and gradients on the whole
//! sequence, the reference gradients, and the comparison.

#![allow(dead_code)]

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use burn::backend::Autodiff;
use burn::tensor::{Bool, Tensor, backend::Backend};
use dilated_attention_core::compare::max_scaled_error;
use dilated_attention_core::oracle::{OracleCase, seeded_normal};
use dilated_attention_core::reference_dilated_attention;
use dilated_attention_kernels::DilatedAttentionBackend;
use dilated_attention_ring::{
    Communicator, InProcessCommunicator, RingDilatedAttentionConfig, ShardLayout,
};

/// Runs `f(rank communicator)` on `world` threads (ranks on `B`'s default device) and returns the
/// results in rank order.
pub fn on_ranks<B: Backend, T: Send>(
    world: usize,
    f: impl Fn(InProcessCommunicator<B>) -> T + Sync,
) -> Vec<T> {
    let ranks = InProcessCommunicator::<B>::group_with_timeout(
        vec![Default::default(); world],
        Duration::from_secs(60),
    );
    thread::scope(|s| {
        let f = &f;
        let handles: Vec<_> = ranks.into_iter().map(|c| s.spawn(move || f(c))).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("rank thread"))
            .collect()
    })
}

/// Largest `|a - b| / (1 + |b|)` across backends (equal infinities count as equal): infinite,
/// failing every bound, on NaN or an infinity on one side only.
pub fn max_abs_diff<const D: usize, B1: Backend, B2: Backend>(
    a: Tensor<B1, D>,
    b: Tensor<B2, D>,
) -> f32 {
    let a: Vec<f32> = a.into_data().convert::<f32>().to_vec().unwrap();
    let b: Vec<f32> = b.into_data().convert::<f32>().to_vec().unwrap();
    max_scaled_error(&a, &b) as f32
}

/// `lse` with `-inf` (a query that sees no key) read as 0, for a loss.
pub fn finite_lse<B: Backend>(lse: Tensor<B, 3>) -> Tensor<B, 3> {
    lse.clone()
        .mask_fill(lse.equal_elem(f32::NEG_INFINITY), 0.0)
}

/// The ring's output and LSE on `layout`'s ranks, unsharded.
pub fn ring_forward<B: DilatedAttentionBackend<Inner = B>>(
    case: &OracleCase,
    layout: &ShardLayout,
    cfg: &RingDilatedAttentionConfig,
) -> (Tensor<B, 4>, Tensor<B, 3>) {
    let device = Default::default();
    let [q, k, v] = case.inputs::<B>(&device);
    let mask = case.padding_mask::<B>(&device);
    let results = on_ranks::<B, _>(layout.world_size(), |comm| {
        let rank = comm.rank();
        let ring = cfg
            .init::<B>(Arc::new(comm))
            .with_layout(layout.clone())
            .unwrap();
        let shard = |t: &Tensor<B, 4>| layout.shard(t.clone(), rank).unwrap();
        let mask = mask.clone().map(|m| layout.shard(m, rank).unwrap());
        ring.try_forward_with_lse(shard(&q), shard(&k), shard(&v), mask)
            .unwrap()
    });
    let (outs, lses): (Vec<_>, Vec<_>) = results.into_iter().unzip();
    (layout.unshard(outs), layout.unshard(lses))
}

/// The weights of the test loss `sum(out * w) + sum(lse * u)` (lse with -inf read as 0).
fn loss_weights<B: Backend>(case: &OracleCase, device: &B::Device) -> (Tensor<B, 4>, Tensor<B, 3>) {
    let [b, n, h, _] = case.shape;
    (
        seeded_normal::<B, 4>(case.seed ^ 11, case.shape, device),
        seeded_normal::<B, 3>(case.seed ^ 13, [b, n, h], device),
    )
}

/// Gradients of the test loss of q, k and v: the ring on `layout`'s ranks, unsharded.
pub fn ring_gradients<B: DilatedAttentionBackend<Inner = B>>(
    case: &OracleCase,
    layout: &ShardLayout,
) -> [Tensor<B, 4>; 3] {
    let device = Default::default();
    let inputs = case.inputs::<B>(&device);
    let mask = case.padding_mask::<B>(&device);
    let (w, u) = loss_weights::<B>(case, &device);
    let cfg = RingDilatedAttentionConfig::new(case.config());
    let results = on_ranks::<B, _>(layout.world_size(), |comm| {
        let rank = comm.rank();
        let ring = cfg
            .init::<Autodiff<B>>(Arc::new(comm))
            .with_layout(layout.clone())
            .unwrap();
        let [q, k, v] = inputs.clone().map(|t| {
            Tensor::<Autodiff<B>, 4>::from_inner(layout.shard(t, rank).unwrap()).require_grad()
        });
        let mask: Option<Tensor<Autodiff<B>, 2, Bool>> = mask
            .clone()
            .map(|m| Tensor::from_primitive(layout.shard(m, rank).unwrap().into_primitive()));
        let (out, lse) = ring
            .try_forward_with_lse(q.clone(), k.clone(), v.clone(), mask)
            .unwrap();
        let loss = (out * Tensor::from_inner(layout.shard(w.clone(), rank).unwrap())).sum()
            + (finite_lse(lse) * Tensor::from_inner(layout.shard(u.clone(), rank).unwrap())).sum();
        let grads = loss.backward();
        [q, k, v].map(|t| t.grad(&grads).unwrap())
    });
    let mut per_input: [Vec<Tensor<B, 4>>; 3] = Default::default();
    for grads in results {
        for (acc, g) in per_input.iter_mut().zip(grads) {
            acc.push(g);
        }
    }
    per_input.map(|shards| layout.unshard(shards))
}

/// Gradients of the test loss of q, k and v through the reference path on the whole sequence.
pub fn reference_gradients<B: Backend>(case: &OracleCase) -> [Tensor<B, 4>; 3] {
    let device = Default::default();
    let [q, k, v] = case
        .inputs::<B>(&device)
        .map(|t| Tensor::<Autodiff<B>, 4>::from_inner(t).require_grad());
    let mask = case.padding_mask::<B>(&device).map(Tensor::from_inner);
    let (w, u) = loss_weights::<B>(case, &device);
    let (out, lse) =
        reference_dilated_attention(q.clone(), k.clone(), v.clone(), mask, &case.config()).unwrap();
    let loss =
        (out * Tensor::from_inner(w)).sum() + (finite_lse(lse) * Tensor::from_inner(u)).sum();
    let grads = loss.backward();
    [q, k, v].map(|t| t.grad(&grads).unwrap())
}
