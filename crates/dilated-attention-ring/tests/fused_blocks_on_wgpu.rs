//! The sharded forward on burn's `Wgpu` backend (`Fusion<CubeBackend<WgpuRuntime>>`; lavapipe in
//! CI), where its shared blocks run on the fused (portable) kernels: in-process ranks sharing one
//! WGPU device give one device's reference output and log-sum-exp (NdArray, whole sequence) for
//! segments that cross the shards, causal or not, with padding, contiguous and zigzag shards;
//! and, with the backward's shared blocks on the fused backward kernels, the gradients of q, k
//! and v. Run with `--features test-wgpu`.
#![cfg(feature = "test-wgpu")]

use std::sync::Arc;
use std::thread;

use burn::backend::{Autodiff, NdArray, Wgpu};
use burn::tensor::{Bool, Tensor, backend::Backend};
use dilated_attention_core::oracle::{OracleCase, seeded_normal};
use dilated_attention_core::{DilationMode, reference_dilated_attention};
use dilated_attention_ring::{
    Communicator, InProcessCommunicator, RingDilatedAttentionConfig, ShardLayout,
};

type W = Wgpu;
type N = NdArray;
type WA = Autodiff<Wgpu>;
type NA = Autodiff<NdArray>;

/// `lse` with `-inf` (a query that sees no key) read as 0, for a loss.
fn finite_lse<B: Backend>(lse: Tensor<B, 3>) -> Tensor<B, 3> {
    lse.clone()
        .mask_fill(lse.equal_elem(f32::NEG_INFINITY), 0.0)
}

/// Gradients of `sum(out * w) + sum(lse * u)` of q, k and v: the ring on `layout`'s ranks
/// (one WGPU device, unsharded) and the reference path on NdArray.
fn gradients(case: &OracleCase, layout: &ShardLayout) -> [(Tensor<W, 4>, Tensor<N, 4>); 3] {
    let (device, cpu) = (Default::default(), Default::default());
    let [b, n, h, _] = case.shape;
    let w = seeded_normal::<W, 4>(case.seed ^ 11, case.shape, &device);
    let u = seeded_normal::<W, 3>(case.seed ^ 13, [b, n, h], &device);
    let inputs = case.inputs::<W>(&device);
    let mask = case.padding_mask::<W>(&device);
    let cfg = RingDilatedAttentionConfig::new(case.config());
    let ranks = InProcessCommunicator::<W>::group(vec![device; layout.world_size()]);
    let results: Vec<[Tensor<W, 4>; 3]> = thread::scope(|s| {
        let handles: Vec<_> = ranks
            .into_iter()
            .map(|comm| {
                let (inputs, mask, cfg, w, u) = (&inputs, &mask, &cfg, &w, &u);
                s.spawn(move || {
                    let rank = comm.rank();
                    let ring = cfg
                        .init::<WA>(Arc::new(comm))
                        .with_layout(layout.clone())
                        .unwrap();
                    let [q, k, v] = inputs
                        .clone()
                        .map(|t| Tensor::<WA, 4>::from_inner(layout.shard(t, rank)).require_grad());
                    let mask: Option<Tensor<WA, 2, Bool>> = mask
                        .clone()
                        .map(|m| Tensor::from_primitive(layout.shard(m, rank).into_primitive()));
                    let (out, lse) = ring
                        .try_forward_with_lse(q.clone(), k.clone(), v.clone(), mask)
                        .unwrap();
                    let loss = (out * Tensor::from_inner(layout.shard(w.clone(), rank))).sum()
                        + (finite_lse(lse) * Tensor::from_inner(layout.shard(u.clone(), rank)))
                            .sum();
                    let grads = loss.backward();
                    [q, k, v].map(|t| t.grad(&grads).unwrap())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("rank thread"))
            .collect()
    });
    let mut per_input: [Vec<Tensor<W, 4>>; 3] = Default::default();
    for grads in results {
        for (acc, g) in per_input.iter_mut().zip(grads) {
            acc.push(g);
        }
    }
    let got = per_input.map(|parts| layout.unshard(parts));

    let [q, k, v] = case
        .inputs::<N>(&cpu)
        .map(|t| Tensor::<NA, 4>::from_inner(t).require_grad());
    let mask = case
        .padding_mask::<N>(&cpu)
        .map(|m| Tensor::<NA, 2, Bool>::from_primitive(m.into_primitive()));
    let (out, lse) =
        reference_dilated_attention(q.clone(), k.clone(), v.clone(), mask, &case.config()).unwrap();
    let w = seeded_normal::<N, 4>(case.seed ^ 11, case.shape, &cpu);
    let u = seeded_normal::<N, 3>(case.seed ^ 13, [b, n, h], &cpu);
    let loss =
        (out * Tensor::from_inner(w)).sum() + (finite_lse(lse) * Tensor::from_inner(u)).sum();
    let grads = loss.backward();
    let want = [q, k, v].map(|t| t.grad(&grads).unwrap());
    let [g0, g1, g2] = got;
    let [w0, w1, w2] = want;
    [(g0, w0), (g1, w1), (g2, w2)]
}

fn check_gradients(case: OracleCase, layout: ShardLayout) {
    for (name, (got, want)) in ["q", "k", "v"].into_iter().zip(gradients(&case, &layout)) {
        let e = max_rel_diff(got, want);
        assert!(
            e < 1e-4,
            "{case:?} on {} ranks: d{name} {e}",
            layout.world_size()
        );
    }
}

fn max_rel_diff<const D: usize, B1: Backend, B2: Backend>(
    got: Tensor<B1, D>,
    want: Tensor<B2, D>,
) -> f32 {
    let got: Vec<f32> = got.into_data().convert::<f32>().to_vec().unwrap();
    let want: Vec<f32> = want.into_data().convert::<f32>().to_vec().unwrap();
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(&want)
        .map(|(x, y)| {
            if x == y {
                0.0 // equal infinities
            } else {
                (x - y).abs() / (1.0 + y.abs())
            }
        })
        .fold(0.0, f32::max)
}

/// The ring's output and LSE on `layout`'s ranks (threads on one WGPU device), unsharded.
fn ring_on_wgpu(case: &OracleCase, layout: &ShardLayout) -> (Tensor<W, 4>, Tensor<W, 3>) {
    let device = Default::default();
    let [q, k, v] = case.inputs::<W>(&device);
    let mask = case.padding_mask::<W>(&device);
    let cfg = RingDilatedAttentionConfig::new(case.config());
    let ranks = InProcessCommunicator::<W>::group(vec![device; layout.world_size()]);
    let results: Vec<_> = thread::scope(|s| {
        let handles: Vec<_> = ranks
            .into_iter()
            .map(|comm| {
                let (q, k, v, mask, cfg) = (&q, &k, &v, &mask, &cfg);
                s.spawn(move || {
                    let rank = comm.rank();
                    let ring = cfg
                        .init::<W>(Arc::new(comm))
                        .with_layout(layout.clone())
                        .unwrap();
                    let shard = |t: &Tensor<W, 4>| layout.shard(t.clone(), rank);
                    let mask = mask.clone().map(|m| layout.shard(m, rank));
                    ring.try_forward_with_lse(shard(q), shard(k), shard(v), mask)
                        .unwrap()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("rank thread"))
            .collect()
    });
    let (outs, lses): (Vec<_>, Vec<_>) = results.into_iter().unzip();
    (layout.unshard(outs), layout.unshard(lses))
}

fn check(case: OracleCase, layout: ShardLayout) {
    let device = Default::default();
    let [q, k, v] = case.inputs::<N>(&device);
    let (want_out, want_lse) =
        reference_dilated_attention(q, k, v, case.padding_mask::<N>(&device), &case.config())
            .unwrap();
    let (out, lse) = ring_on_wgpu(&case, &layout);
    let (e_out, e_lse) = (max_rel_diff(out, want_out), max_rel_diff(lse, want_lse));
    assert!(
        e_out < 1e-4 && e_lse < 1e-4,
        "{case:?} on {} ranks: out {e_out}, lse {e_lse}",
        layout.world_size()
    );
}

fn case(mode: DilationMode, causal: bool, padding: Option<f64>, seed: u64) -> OracleCase {
    OracleCase {
        // 96 tokens, the second pair's segment (96, rate 3) crosses every shard
        shape: [2, 96, 4, 32],
        segments: vec![16, 96],
        rates: vec![1, 3],
        mode,
        causal,
        padding,
        seed,
    }
}

#[test]
fn crossing_segments_on_two_ranks_match_one_device() {
    let layout = ShardLayout::contiguous(96, 2).unwrap();
    check(
        case(DilationMode::LongNet, true, Some(0.2), 7),
        layout.clone(),
    );
    check(case(DilationMode::LongNet, false, None, 8), layout.clone());
    check(case(DilationMode::HeadGrouped, true, None, 9), layout);
}

#[test]
fn zigzag_shards_on_three_ranks_match_one_device() {
    let layout = ShardLayout::zigzag(96, 3).unwrap();
    check(
        case(DilationMode::LongNet, true, Some(0.2), 10),
        layout.clone(),
    );
    check(
        case(DilationMode::HeadGrouped, false, Some(0.2), 11),
        layout,
    );
}

#[test]
fn gradients_with_crossing_segments_match_one_device() {
    let layout = ShardLayout::contiguous(96, 2).unwrap();
    check_gradients(
        case(DilationMode::LongNet, true, Some(0.2), 12),
        layout.clone(),
    );
    check_gradients(case(DilationMode::HeadGrouped, false, None, 13), layout);
    let zigzag = ShardLayout::zigzag(96, 3).unwrap();
    check_gradients(case(DilationMode::LongNet, true, None, 14), zigzag);
}
