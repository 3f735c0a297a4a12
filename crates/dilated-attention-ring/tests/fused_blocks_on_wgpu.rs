//! The sharded forward on burn's `Wgpu` backend (`Fusion<CubeBackend<WgpuRuntime>>`; lavapipe in
//! CI), where its shared blocks run on the fused (portable) kernels: in-process ranks sharing one
//! WGPU device give one device's reference output and log-sum-exp (NdArray, whole sequence) for
//! segments that cross the shards, causal or not, with padding, contiguous and zigzag shards.
//! Run with `--features test-wgpu`.
#![cfg(feature = "test-wgpu")]

use std::sync::Arc;
use std::thread;

use burn::backend::{NdArray, Wgpu};
use burn::tensor::{Tensor, backend::Backend};
use dilated_attention_core::oracle::OracleCase;
use dilated_attention_core::{DilationMode, reference_dilated_attention};
use dilated_attention_ring::{
    Communicator, InProcessCommunicator, RingDilatedAttentionConfig, ShardLayout,
};

type W = Wgpu;
type N = NdArray;

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
