//! The dispatch path (`DilatedAttentionBackend`) against the dense oracle on random shapes:
//! outputs, log-sum-exps and gradients, on the backend the features select:
//! `NdArray` by default, `Wgpu` with `test-wgpu` (lavapipe in CI), `Cuda` with `test-cuda`.
//! The oracle always runs on `NdArray` in f32.

mod common;

use common::*;
use dilated_attention_core::oracle::OracleCase;
use dilated_attention_core::{DilationMode, KernelStrategy};

/// Odd shapes: primes, seq 1, heads not a multiple of groups, batch > 1, partial segments.
fn cases() -> Vec<OracleCase> {
    use DilationMode::*;
    let c = |shape, segments: &[usize], rates: &[usize], mode, causal, padding, seed| OracleCase {
        shape,
        segments: segments.to_vec(),
        rates: rates.to_vec(),
        mode,
        causal,
        padding,
        seed,
    };
    vec![
        c([1, 1, 1, 8], &[4], &[1], LongNet, true, None, 1),
        c([2, 97, 3, 16], &[16, 32], &[1, 2], LongNet, false, None, 2),
        c(
            [2, 97, 5, 32],
            &[16, 32, 64],
            &[1, 2, 4],
            LongNet,
            true,
            Some(0.2),
            3,
        ),
        c(
            [1, 131, 7, 8],
            &[20, 50, 131],
            &[1, 3, 5],
            HeadGrouped,
            false,
            None,
            4,
        ),
        c(
            [3, 61, 4, 64],
            &[8, 30],
            &[2, 3],
            HeadGrouped,
            true,
            Some(0.3),
            5,
        ),
        c(
            [1, 200, 2, 32],
            &[64, 128, 256],
            &[1, 2, 4],
            LongNet,
            true,
            None,
            6,
        ),
    ]
}

#[test]
fn dispatch_output_and_lse_match_oracle_on_odd_shapes() {
    for c in cases() {
        check_forward::<TestBackend>(&c);
    }
}

#[test]
fn dispatch_gradients_match_oracle_on_odd_shapes() {
    for c in cases() {
        check_gradients::<TestBackend>(&c, None);
    }
}

/// The reference path forced on the test backend (on WGPU/CUDA the dispatch runs the kernels).
#[test]
fn reference_path_output_and_lse_match_oracle_on_odd_shapes() {
    for c in cases() {
        check_forward_with::<TestBackend>(&c, KernelStrategy::Reference, None);
    }
}

#[test]
#[cfg(any(feature = "test-wgpu", feature = "test-cuda"))]
fn fused_kernels_on_the_raw_cube_backend_match_oracle() {
    for c in cases() {
        check_forward::<RawCube>(&c);
    }
}

#[test]
#[cfg(any(feature = "test-wgpu", feature = "test-cuda"))]
fn fused_kernel_gradients_on_the_raw_cube_backend_match_oracle() {
    for c in cases() {
        check_gradients::<RawCube>(&c, None);
    }
}

/// Attention along a random sequence order (Hilbert attention's path): on NdArray the default
/// body gathers, on WGPU/CUDA the kernels read the order; the oracle gathers along it and back.
#[test]
fn dispatch_along_an_order_matches_the_gathered_oracle() {
    for (i, c) in cases().into_iter().enumerate() {
        let order = random_order(c.shape[1], 100 + i as u64);
        check_forward_with::<TestBackend>(&c, KernelStrategy::Auto, Some(&order));
        check_gradients::<TestBackend>(&c, Some(&order));
    }
}

/// The same with the reference path forced (a gather on every backend).
#[test]
fn reference_path_along_an_order_matches_the_gathered_oracle() {
    for (i, c) in cases().into_iter().enumerate() {
        let order = random_order(c.shape[1], 200 + i as u64);
        check_forward_with::<TestBackend>(&c, KernelStrategy::Reference, Some(&order));
    }
}

#[test]
#[cfg(any(feature = "test-wgpu", feature = "test-cuda"))]
fn fused_kernels_along_an_order_on_the_raw_cube_backend_match_oracle() {
    for (i, c) in cases().into_iter().enumerate() {
        let order = random_order(c.shape[1], 300 + i as u64);
        check_forward_with::<RawCube>(&c, KernelStrategy::Auto, Some(&order));
        check_gradients::<RawCube>(&c, Some(&order));
    }
}
