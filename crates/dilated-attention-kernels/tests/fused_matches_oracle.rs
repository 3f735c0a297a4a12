//! The fused kernels against the dense oracle on random shapes and configs (the equivalence
//! suite of the reference path, run on the kernels): outputs, LSEs and gradients in f32, and
//! outputs in half precision. Runs with `test-wgpu` (lavapipe in CI: the portable variant) and
//! `test-cuda` (the H100), through the default fused backend (`Fusion<CubeBackend<..>>`).

#![cfg(any(feature = "test-wgpu", feature = "test-cuda"))]

mod common;

use burn::tensor::DType;
use common::*;
use dilated_attention_core::KernelStrategy;
use dilated_attention_core::oracle::arbitrary_case;
use proptest::prelude::*;

/// Head dims of the cases: the 32/64/128 and odd ones on CUDA. On WGPU (lavapipe in CI)
/// only up to 32: Mesa 22.3's lavapipe miscompiles the kernels' larger per-unit register arrays
/// when they stay live across many barriers (e.g. LongNet pairs of segment length 1 at head
/// dims of 40 and more come back wrong; the same kernels pass these cases on CUDA; see docs/architecture.md).
/// The fixed odd-shape cases of `backend_suite` cover head dims 64 on lavapipe.
fn head_dims() -> Vec<usize> {
    if cfg!(feature = "test-cuda") {
        vec![8, 16, 32, 40, 64, 128]
    } else {
        vec![8, 16, 24, 32]
    }
}

/// The case count of a test: `default`, or `PROPTEST_CASES` when set (the GPU runs set a few to
/// fit one device call; CI runs the defaults).
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(32), .. ProptestConfig::default() })]

    #[test]
    fn fused_output_and_lse_match_oracle(c in arbitrary_case(head_dims())) {
        if valid_or_rejected::<TestBackend>(&c) {
            check_forward::<TestBackend>(&c);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(16), .. ProptestConfig::default() })]

    #[test]
    fn fused_gradients_match_oracle(c in arbitrary_case(head_dims())) {
        if valid_or_rejected::<TestBackend>(&c) {
            check_gradients::<TestBackend>(&c, None);
        }
    }

    #[test]
    fn fused_f16_matches_oracle_on_rounded_inputs(c in arbitrary_case(head_dims())) {
        if valid_or_rejected::<TestBackend>(&c) {
            check_forward_half::<TestBackend>(&c, DType::F16, 2e-3, None);
        }
    }
}

// Along a random sequence order (Hilbert attention's path): the kernels read the order as an
// index array, forward and backward; the oracle gathers the inputs along it and the results back.
proptest! {
    #![proptest_config(ProptestConfig { cases: cases(16), .. ProptestConfig::default() })]

    #[test]
    fn fused_along_an_order_matches_the_gathered_oracle(
        c in arbitrary_case(head_dims()),
        order_seed in any::<u64>(),
    ) {
        if valid_or_rejected::<TestBackend>(&c) {
            let order = random_order(c.shape[1], order_seed);
            check_forward_with::<TestBackend>(&c, KernelStrategy::Auto, Some(&order));
            check_gradients::<TestBackend>(&c, Some(&order));
        }
    }
}

// bf16 is a CUDA type here (WGSL has no bf16).
#[cfg(feature = "test-cuda")]
proptest! {
    #![proptest_config(ProptestConfig { cases: cases(16), .. ProptestConfig::default() })]

    #[test]
    fn fused_bf16_matches_oracle_on_rounded_inputs(c in arbitrary_case(head_dims())) {
        if valid_or_rejected::<TestBackend>(&c) {
            check_forward_half::<TestBackend>(&c, DType::BF16, 1e-2, None);
        }
    }
}

// The tensor-core forward (CUDA: `cmma` for f16/bf16 at head dims that are multiples of 16);
// these head dims select it wherever the device has it, the proptests above mix both variants.
#[cfg(feature = "test-cuda")]
proptest! {
    #![proptest_config(ProptestConfig { cases: cases(24), .. ProptestConfig::default() })]

    #[test]
    fn tensor_core_f16_matches_oracle_on_rounded_inputs(c in arbitrary_case(vec![16, 32, 64, 128])) {
        if valid_or_rejected::<TestBackend>(&c) {
            check_forward_half::<TestBackend>(&c, DType::F16, 2e-3, None);
        }
    }

    #[test]
    fn tensor_core_bf16_matches_oracle_on_rounded_inputs(c in arbitrary_case(vec![16, 32, 64, 128])) {
        if valid_or_rejected::<TestBackend>(&c) {
            check_forward_half::<TestBackend>(&c, DType::BF16, 1e-2, None);
        }
    }
}

// The tensor-core backward (CUDA, same selection as the forward): gradients of half-precision
// inputs against the f32 oracle's on the same rounded inputs.
#[cfg(feature = "test-cuda")]
proptest! {
    #![proptest_config(ProptestConfig { cases: cases(24), .. ProptestConfig::default() })]

    #[test]
    fn tensor_core_f16_gradients_match_oracle(c in arbitrary_case(vec![16, 32, 64, 128])) {
        if valid_or_rejected::<TestBackend>(&c) {
            check_gradients_half::<TestBackend>(&c, DType::F16, 2e-3, None);
        }
    }

    #[test]
    fn tensor_core_bf16_gradients_match_oracle(c in arbitrary_case(vec![16, 32, 64, 128])) {
        if valid_or_rejected::<TestBackend>(&c) {
            check_gradients_half::<TestBackend>(&c, DType::BF16, 1e-2, None);
        }
    }
}

// The tensor-core kernels along a random sequence order.
#[cfg(feature = "test-cuda")]
proptest! {
    #![proptest_config(ProptestConfig { cases: cases(16), .. ProptestConfig::default() })]

    #[test]
    fn tensor_core_along_an_order_matches_the_gathered_oracle(
        c in arbitrary_case(vec![16, 32, 64, 128]),
        order_seed in any::<u64>(),
    ) {
        if valid_or_rejected::<TestBackend>(&c) {
            let order = random_order(c.shape[1], order_seed);
            check_forward_half::<TestBackend>(&c, DType::F16, 2e-3, Some(&order));
            check_gradients_half::<TestBackend>(&c, DType::BF16, 1e-2, Some(&order));
        }
    }
}

// The kernels on TF32 tensor cores (CUDA, `f32` inputs with `allow_tf32`): output, LSE and
// gradients within TF32's error of the f32 oracle, plain and along a random order.
#[cfg(feature = "test-cuda")]
proptest! {
    #![proptest_config(ProptestConfig { cases: cases(24), .. ProptestConfig::default() })]

    #[test]
    fn tensor_core_tf32_matches_oracle(c in arbitrary_case(vec![16, 32, 64, 128])) {
        if valid_or_rejected::<TestBackend>(&c) {
            check_forward_tf32::<TestBackend>(&c, 2e-3, None);
        }
    }

    #[test]
    fn tensor_core_tf32_gradients_match_oracle(c in arbitrary_case(vec![16, 32, 64, 128])) {
        if valid_or_rejected::<TestBackend>(&c) {
            check_gradients_tf32::<TestBackend>(&c, 1e-2, None);
        }
    }

}

// Along a random order on TF32 (fewer cases: the gathered oracle's gradients are slow).
#[cfg(feature = "test-cuda")]
proptest! {
    #![proptest_config(ProptestConfig { cases: cases(8), .. ProptestConfig::default() })]

    #[test]
    fn tensor_core_tf32_along_an_order_matches_the_gathered_oracle(
        c in arbitrary_case(vec![16, 32, 64, 128]),
        order_seed in any::<u64>(),
    ) {
        if valid_or_rejected::<TestBackend>(&c) {
            let order = random_order(c.shape[1], order_seed);
            check_forward_tf32::<TestBackend>(&c, 2e-3, Some(&order));
            check_gradients_tf32::<TestBackend>(&c, 1e-2, Some(&order));
        }
    }
}

// f32 without `allow_tf32` on CUDA: the register-resident kernels with each product split into
// three TF32 products, held to the f32 tolerances of the portable kernels.
#[cfg(feature = "test-cuda")]
proptest! {
    #![proptest_config(ProptestConfig { cases: cases(24), .. ProptestConfig::default() })]

    #[test]
    fn tensor_core_f32_matches_oracle(c in arbitrary_case(vec![16, 32, 64, 128])) {
        if valid_or_rejected::<TestBackend>(&c) {
            check_forward_f32::<TestBackend>(&c, 1e-5);
            check_forward::<TestBackend>(&c);
        }
    }

    #[test]
    fn tensor_core_f32_gradients_match_oracle(c in arbitrary_case(vec![16, 32, 64, 128])) {
        if valid_or_rejected::<TestBackend>(&c) {
            check_gradients::<TestBackend>(&c, None);
        }
    }
}
