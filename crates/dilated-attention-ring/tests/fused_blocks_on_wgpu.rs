//! The sharded forward on burn's `Wgpu` backend (`Fusion<CubeBackend<WgpuRuntime>>`; lavapipe in
//! CI), where its shared blocks run on the fused (portable) kernels: in-process ranks sharing one
//! WGPU device give one device's reference output and log-sum-exp (NdArray, whole sequence) for
//! segments that cross the shards, causal or not, with padding, contiguous and zigzag shards;
//! and, with the backward's shared blocks on the fused backward kernels, the gradients of q, k
//! and v. Segments a rank owns whole (uneven shards) run on the fused kernels too. Run with
//! `--features test-wgpu`.
//! With `--features test-cuda` the same tests run on burn's `Cuda` backend (in-process ranks on
//! one GPU), plus a larger uneven case.
#![cfg(any(feature = "test-wgpu", feature = "test-cuda"))]

mod common;

use burn::backend::NdArray;
use common::{max_abs_diff, reference_gradients, ring_forward, ring_gradients};
use dilated_attention_core::oracle::OracleCase;
use dilated_attention_core::{DilationMode, reference_dilated_attention};
use dilated_attention_ring::{RingDilatedAttentionConfig, ShardLayout};

#[cfg(feature = "test-cuda")]
type W = burn::backend::Cuda;
#[cfg(not(feature = "test-cuda"))]
type W = burn::backend::Wgpu;
type N = NdArray;

/// Largest error allowed against the f32 reference. On CUDA, burn 0.21's f32 matmul runs on
/// TF32 (relative error about 5e-4), and the ring's Burn-ops blocks and merges use it.
#[cfg(feature = "test-cuda")]
const TOLERANCE: f32 = 1e-3;
#[cfg(not(feature = "test-cuda"))]
const TOLERANCE: f32 = 1e-4;

fn check(case: OracleCase, layout: ShardLayout) {
    let device = Default::default();
    let [q, k, v] = case.inputs::<N>(&device);
    let (want_out, want_lse) =
        reference_dilated_attention(q, k, v, case.padding_mask::<N>(&device), &case.config())
            .unwrap();
    let cfg = RingDilatedAttentionConfig::new(case.config());
    let (out, lse) = ring_forward::<W>(&case, &layout, &cfg);
    let (e_out, e_lse) = (max_abs_diff(out, want_out), max_abs_diff(lse, want_lse));
    assert!(
        e_out < TOLERANCE && e_lse < TOLERANCE,
        "{case:?} on {} ranks: out {e_out}, lse {e_lse}",
        layout.world_size()
    );
}

/// Gradients of `sum(out * w) + sum(lse * u)` of q, k and v: the ring on `layout`'s ranks (one
/// WGPU device) against the reference path on NdArray.
fn check_gradients(case: OracleCase, layout: ShardLayout) {
    let got = ring_gradients::<W>(&case, &layout);
    let want = reference_gradients::<N>(&case);
    for (name, (got, want)) in ["q", "k", "v"].into_iter().zip(got.into_iter().zip(want)) {
        let e = max_abs_diff(got, want);
        assert!(
            e < TOLERANCE,
            "{case:?} on {} ranks: d{name} {e}",
            layout.world_size()
        );
    }
}

/// `seq` tokens in two pairs: segments of 16 (rate 1) and one segment over the whole sequence
/// (rate 3), which crosses every shard.
fn crossing(
    seq: usize,
    mode: DilationMode,
    causal: bool,
    padding: Option<f64>,
    seed: u64,
) -> OracleCase {
    OracleCase {
        shape: [2, seq, 4, 32],
        segments: vec![16, seq],
        rates: vec![1, 3],
        mode,
        causal,
        padding,
        seed,
    }
}

/// 96 tokens: on 2 contiguous or 3 zigzag shards the first pair's segments stay inside them.
fn case(mode: DilationMode, causal: bool, padding: Option<f64>, seed: u64) -> OracleCase {
    crossing(96, mode, causal, padding, seed)
}

/// 100 tokens on uneven shards: the first pair's segments (a partial last one) do not line up
/// with them, so each rank runs the segments it owns whole on the fused kernels and shares the
/// ones that cross. Shards 37/40/23, then 33/31/36 (a segment split 1 | 15: one-row query runs
/// and key sets); per case whether it checks gradients (else outputs and LSE).
#[test]
fn owned_and_shared_segments_on_uneven_shards_match_one_device() {
    use DilationMode::{HeadGrouped, LongNet};
    let cases = [
        (&[37, 40, 23], LongNet, true, Some(0.2), 15, false),
        (&[37, 40, 23], LongNet, false, None, 16, false),
        (&[37, 40, 23], LongNet, true, Some(0.2), 17, true),
        (&[37, 40, 23], HeadGrouped, false, None, 18, true),
        (&[33, 31, 36], LongNet, true, None, 19, false),
        (&[33, 31, 36], HeadGrouped, false, None, 20, false),
        (&[33, 31, 36], LongNet, true, None, 21, true),
        (&[33, 31, 36], HeadGrouped, false, Some(0.2), 22, true),
    ];
    for (lengths, mode, causal, padding, seed, gradients) in cases {
        let layout = ShardLayout::from_lengths(lengths).unwrap();
        let case = crossing(100, mode, causal, padding, seed);
        if gradients {
            check_gradients(case, layout);
        } else {
            check(case, layout);
        }
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

/// The shape of the two-GPU run that faulted on CUDA, scaled down: 2 x 2047 rows, LongNet pairs
/// (512,1),(1024,2),(2048,4), so every pair is sharded with owned segments, a partial last
/// segment and segments split 511 | 1 rows.
#[cfg(feature = "test-cuda")]
#[test]
fn uneven_shards_at_scale_match_one_device() {
    let layout = ShardLayout::contiguous(4094, 2).unwrap();
    for (mode, causal, seed) in [
        (DilationMode::LongNet, true, 30),
        (DilationMode::HeadGrouped, false, 31),
    ] {
        let case = OracleCase {
            shape: [1, 4094, 8, 64],
            segments: vec![512, 1024, 2048],
            rates: vec![1, 2, 4],
            mode,
            causal,
            padding: None,
            seed,
        };
        check(case.clone(), layout.clone());
        check_gradients(case, layout.clone());
    }
}
