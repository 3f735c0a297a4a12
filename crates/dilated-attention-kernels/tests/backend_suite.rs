//! The dispatch path (`DilatedAttentionBackend`) against the dense oracle on random shapes:
//! outputs, log-sum-exps and gradients, on the backend the features select:
//! `NdArray` by default, `Wgpu` with `test-wgpu` (lavapipe in CI), `Cuda` with `test-cuda`.
//! The oracle always runs on `NdArray`: in f64 for the GPU runtimes, in f32 when `NdArray` is
//! under test (see `common::Oracle`).

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

/// What [`kernel_choice`] answers on the backend under test, for the families each backend has:
/// the reference path on NdArray, the portable kernels on WGPU, the register-resident kernels on
/// CUDA (an Ampere or later GPU). Calls no kernel takes go to the reference path under `Auto`,
/// and a forced family that cannot run is an error.
#[test]
fn kernel_choice_names_the_family_each_backend_runs() {
    use burn::tensor::DType;
    use dilated_attention_core::{
        DilatedAttentionConfig, DilatedAttentionError, KernelChoice, KernelFamily, ProductPrecision,
    };
    use dilated_attention_kernels::kernel_choice;

    if std::env::var_os(dilated_attention_kernels::KERNEL_ENV).is_some() {
        println!(
            "skipped: {} overrides every strategy",
            dilated_attention_kernels::KERNEL_ENV
        );
        return;
    }
    let device = Default::default();
    let cfg = DilatedAttentionConfig::new(vec![64, 128], vec![1, 2]);
    let choice = |dims, dtype, cfg: &DilatedAttentionConfig| {
        kernel_choice::<TestBackend>(dims, dtype, &device, cfg)
    };
    let f32_call = choice([2, 97, 3, 64], DType::F32, &cfg).expect("auto always chooses");
    let expected = if cfg!(feature = "test-cuda") {
        KernelChoice {
            family: KernelFamily::Mma,
            precision: ProductPrecision::Tf32x3,
        }
    } else if cfg!(feature = "test-wgpu") {
        KernelChoice {
            family: KernelFamily::Portable,
            precision: ProductPrecision::F32,
        }
    } else {
        KernelChoice::REFERENCE
    };
    assert_eq!(f32_call, expected);
    // A head dimension above every family's: the reference path under `Auto`...
    let wide = choice([1, 8, 2, 320], DType::F32, &cfg).expect("auto always chooses");
    assert_eq!(wide, KernelChoice::REFERENCE);
    // ...and an error when a fused family is forced.
    let forced = cfg.clone().with_kernel_strategy(KernelStrategy::Portable);
    assert!(matches!(
        choice([1, 8, 2, 320], DType::F32, &forced),
        Err(DilatedAttentionError::KernelUnavailable { .. })
    ));
    // The reference path forced is the reference path everywhere.
    let reference = cfg.clone().with_kernel_strategy(KernelStrategy::Reference);
    assert_eq!(
        choice([2, 97, 3, 64], DType::F32, &reference).unwrap(),
        KernelChoice::REFERENCE
    );
    // `cmma` takes f16/bf16 only, and no family of WGPU or NdArray has it.
    let cmma = cfg.with_kernel_strategy(KernelStrategy::Cmma);
    assert!(matches!(
        choice([2, 97, 3, 64], DType::F32, &cmma),
        Err(DilatedAttentionError::KernelUnavailable { .. })
    ));
}

/// A forced family that cannot run the call reaches the caller of the public API as the typed
/// error (on CUDA: `cmma` for `f32` inputs; elsewhere: `cmma` at all).
#[test]
fn a_forced_family_that_cannot_run_is_an_error_from_the_call() {
    use dilated_attention_core::{DilatedAttentionConfig, DilatedAttentionError};
    use dilated_attention_kernels::dilated_attention_with_lse;

    if std::env::var_os(dilated_attention_kernels::KERNEL_ENV).is_some() {
        println!(
            "skipped: {} overrides every strategy",
            dilated_attention_kernels::KERNEL_ENV
        );
        return;
    }
    let c = &cases()[1];
    let device = Default::default();
    let [q, k, v] = c
        .inputs::<Oracle>(&Default::default())
        .map(|t| to::<TestBackend, 4>(&t, &device));
    let cfg = DilatedAttentionConfig::new(c.segments.clone(), c.rates.clone())
        .with_kernel_strategy(KernelStrategy::Cmma);
    let error = dilated_attention_with_lse(q, k, v, &cfg).unwrap_err();
    assert!(
        matches!(
            error,
            DilatedAttentionError::KernelUnavailable {
                strategy: KernelStrategy::Cmma,
                ..
            }
        ),
        "{error}"
    );
}

/// Inputs of different dtypes are a typed error naming both, before anything runs.
#[test]
fn mismatched_dtypes_are_a_typed_error() {
    use burn::tensor::DType;
    use dilated_attention_core::{DilatedAttentionConfig, DilatedAttentionError};
    use dilated_attention_kernels::dilated_attention_with_lse;

    let c = &cases()[1];
    let device = Default::default();
    let [q, k, v] = c
        .inputs::<Oracle>(&Default::default())
        .map(|t| to::<TestBackend, 4>(&t, &device));
    // A second float dtype every backend here has: f64 on the CPU, f16 on the GPU runtimes.
    let other = if cfg!(any(feature = "test-wgpu", feature = "test-cuda")) {
        DType::F16
    } else {
        DType::F64
    };
    let cfg = DilatedAttentionConfig::new(c.segments.clone(), c.rates.clone());
    let error = dilated_attention_with_lse(q, k.cast(other), v, &cfg).unwrap_err();
    assert_eq!(
        error,
        DilatedAttentionError::DTypeMismatch {
            name: "key",
            query: DType::F32,
            actual: other
        }
    );
}

/// The reference path runs in the caller's half dtype under Fusion (fresh tensors it makes take
/// the inputs' dtype), forward and gradients, within `forward` and `gradients` (relative L2) of
/// the oracle. Its gradients differentiate through half-precision scores and softmax (the
/// kernels accumulate in `f32`), so their bound is wider than the forward's.
#[cfg(any(feature = "test-wgpu", feature = "test-cuda"))]
fn check_reference_path_in(dtype: burn::tensor::DType, forward: f64, gradients: f64) {
    for c in &cases()[..4] {
        let config = c.config().with_kernel_strategy(KernelStrategy::Reference);
        check_forward_half_with::<TestBackend>(c, dtype, &config, forward);
        check_gradients_half_with::<TestBackend>(c, dtype, &config, gradients);
    }
}

/// f16: on lavapipe the worst gradient here (a 131-key segment) measured 3.0e-2 for `dQ`.
#[test]
#[cfg(any(feature = "test-wgpu", feature = "test-cuda"))]
fn the_reference_path_runs_in_f16() {
    check_reference_path_in(burn::tensor::DType::F16, 3e-3, 5e-2);
}

/// bf16 keeps 3 fewer mantissa bits than f16: 8x the rounding.
#[test]
#[cfg(feature = "test-cuda")]
fn the_reference_path_runs_in_bf16() {
    check_reference_path_in(burn::tensor::DType::BF16, 2e-2, 4e-1);
}

/// More batch rows than the launch grid takes (65,535) run on the fused kernels in chunks along
/// the batch, output, LSE and gradients within the fused bounds of the oracle.
#[test]
#[cfg(any(feature = "test-wgpu", feature = "test-cuda"))]
fn a_batch_beyond_the_grid_runs_fused_in_chunks() {
    use burn::tensor::DType;
    use dilated_attention_kernels::{batch_rows_per_fused_call, kernel_choice};

    let c = OracleCase {
        shape: [65_600, 5, 1, 4],
        segments: vec![2, 4],
        rates: vec![1, 2],
        mode: DilationMode::LongNet,
        causal: true,
        padding: Some(0.2),
        seed: 11,
    };
    assert_eq!(batch_rows_per_fused_call(c.shape), Some(65_535));
    let choice =
        kernel_choice::<TestBackend>(c.shape, DType::F32, &Default::default(), &c.config())
            .expect("auto always chooses");
    assert!(choice.is_fused(), "{choice:?}");
    // Forced onto the portable kernels, which refuse more than 65,535 rows in one launch: only
    // the split along the batch lets this call run.
    check_forward_with::<TestBackend>(&c, KernelStrategy::Portable, None);
    check_gradients::<TestBackend>(&c, None);
}

/// A call whose one buffer would exceed what the device allocates at once is refused with a
/// typed error before anything is queued, and the device goes on working.
#[test]
#[cfg(any(feature = "test-wgpu", feature = "test-cuda"))]
fn a_call_beyond_the_largest_allocation_is_refused() {
    use burn::tensor::{Distribution, Tensor};
    use dilated_attention_core::{DilatedAttentionConfig, DilatedAttentionError};
    use dilated_attention_kernels::dilated_attention_with_lse;

    let device = Default::default();
    // One segment of 65,536 rows for 8 heads: 8 x 2^32 scores (128 GiB in f32) at once.
    let q = Tensor::<TestBackend, 4>::random([1, 65_536, 8, 8], Distribution::Default, &device);
    let cfg = DilatedAttentionConfig::new(vec![65_536], vec![1])
        .with_kernel_strategy(KernelStrategy::Reference);
    let error = dilated_attention_with_lse(q.clone(), q.clone(), q, &cfg).unwrap_err();
    assert!(
        matches!(
            error,
            DilatedAttentionError::AllocationTooLarge { bytes, limit, .. }
                if bytes == 8 * 65_536 * 65_536 * 4 && limit < bytes
        ),
        "{error}"
    );
    check_forward::<TestBackend>(&cases()[0]);
}
