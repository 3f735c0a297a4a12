//! Helpers the backend suites share: the backend under test, conversions, comparisons with the
//! dense oracle (forward and gradients).

#![allow(dead_code)]

use burn::backend::{Autodiff, NdArray};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, DType, Tensor, TensorData};
use dilated_attention_core::compare::{
    check_close, check_lse_close, floored_l2_error, lse_l2_error, lse_relative_l2_error,
    relative_l2_error,
};
use dilated_attention_core::oracle::{OracleCase, oracle_dilated_attention, seeded_normal};
use dilated_attention_core::{DilatedAttentionConfig, KernelStrategy, SequenceOrder, index_tensor};
use dilated_attention_kernels::{
    DilatedAttentionBackend, dilated_attention_along_order, dilated_attention_with_lse_masked,
};

#[cfg(feature = "test-cuda")]
pub type TestBackend = burn::backend::Cuda;
#[cfg(all(feature = "test-wgpu", not(feature = "test-cuda")))]
pub type TestBackend = burn::backend::Wgpu;
#[cfg(not(any(feature = "test-wgpu", feature = "test-cuda")))]
pub type TestBackend = NdArray;

/// The dense oracle, on the CPU: in `f64` when the backend under test is a GPU runtime (the
/// inputs are `f32` values, exact in `f64`). With `NdArray` under test it runs in `f32`: burn
/// keeps one default float dtype per device, so two `NdArray` float types in one process would
/// share (and mix) theirs.
#[cfg(any(feature = "test-wgpu", feature = "test-cuda"))]
pub type Oracle = NdArray<f64>;
#[cfg(not(any(feature = "test-wgpu", feature = "test-cuda")))]
pub type Oracle = NdArray<f32>;

/// The dtype the oracle computes in.
pub const ORACLE_DTYPE: DType = if cfg!(any(feature = "test-wgpu", feature = "test-cuda")) {
    DType::F64
} else {
    DType::F32
};

/// The un-fused CubeCL backend of the same runtime: the kernels without the fusion layer.
#[cfg(feature = "test-cuda")]
pub type RawCube = burn_cubecl::CubeBackend<burn_cubecl::cubecl::cuda::CudaRuntime, f32, i32, u8>;
#[cfg(all(feature = "test-wgpu", not(feature = "test-cuda")))]
pub type RawCube = burn_cubecl::CubeBackend<burn_cubecl::cubecl::wgpu::WgpuRuntime, f32, i32, u32>;

/// How close an `f32` result must be to the oracle's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Bound {
    /// Every element within `abs + rel |want|`.
    Elementwise { rel: f64, abs: f64 },
    /// `||got - want|| / ||want||` under the value (LSE: the same over its finite entries,
    /// floored at 1 per element).
    RelativeL2(f64),
}

/// Forward tolerance of exact `f32` arithmetic (the portable kernels, the CPU, lavapipe).
pub const F32_FORWARD: Bound = Bound::Elementwise {
    rel: 1e-5,
    abs: 1e-5,
};
/// Gradient tolerance of exact `f32` arithmetic.
pub const F32_GRADIENT: Bound = Bound::Elementwise {
    rel: 1e-4,
    abs: 1e-5,
};

/// The bound of an `f32` call with `config` on `BB` at the level its path reaches: exact `f32`
/// arithmetic elementwise; on CUDA the 3xTF32 kernels (about `f32`'s accuracy) a relative L2
/// of `3xtf32`, and single TF32 products (the kernels with `allow_tf32`, and burn 0.21's `f32`
/// matmuls that the reference path runs on) `2e-3` (seen on an H100: a one-key softmax, whose
/// output is the value row itself, came back with 2.5e-4 relative error, the TF32 rounding of
/// the value).
#[cfg_attr(
    not(feature = "test-cuda"),
    allow(clippy::extra_unused_type_parameters)
)]
pub fn f32_bound<BB: DilatedAttentionBackend>(
    c: &OracleCase,
    config: &DilatedAttentionConfig,
    exact: Bound,
    tf32x3: f64,
) -> Bound {
    let _ = (c, config, tf32x3);
    #[cfg(feature = "test-cuda")]
    {
        use dilated_attention_core::{KernelFamily, ProductPrecision};
        let choice = dilated_attention_kernels::kernel_choice::<BB>(
            c.shape,
            DType::F32,
            &Default::default(),
            config,
        )
        .expect("a valid case");
        return match (choice.family, choice.precision) {
            (KernelFamily::Portable, _) => exact,
            (_, ProductPrecision::Tf32x3) => Bound::RelativeL2(tf32x3),
            _ => Bound::RelativeL2(2e-3),
        };
    }
    #[allow(unreachable_code)]
    exact
}

/// The values of `data` as `f32`.
pub fn values(data: TensorData) -> Vec<f32> {
    data.convert::<f32>().to_vec::<f32>().unwrap()
}

/// Asserts `got` is within `bound` of the oracle's `want` (NaN and misplaced infinities fail).
pub fn assert_matches(what: &str, got: TensorData, want: TensorData, bound: Bound) {
    let (got, want) = (values(got), values(want));
    match bound {
        Bound::Elementwise { rel, abs } => {
            if let Err(message) = check_close(&got, &want, rel, abs) {
                panic!("{what}: {message}");
            }
        }
        Bound::RelativeL2(limit) => {
            let err = relative_l2_error(&got, &want);
            println!("{what}: relative L2 error {err:.3e}");
            assert!(
                err < limit,
                "{what}: relative L2 error {err:.3e} over {limit:.0e}"
            );
        }
    }
}

/// Asserts an LSE against the oracle's: the same `-inf` rows, the finite entries within
/// `bound` (a relative L2 bound floored at 1 per element).
pub fn assert_lse_matches(got: TensorData, want: TensorData, bound: Bound) {
    let (got, want) = (values(got), values(want));
    match bound {
        Bound::Elementwise { rel, abs } => {
            if let Err(message) = check_lse_close(&got, &want, rel, abs) {
                panic!("LSE: {message}");
            }
        }
        Bound::RelativeL2(limit) => {
            let err = lse_l2_error(&got, &want);
            println!("LSE: floored L2 error {err:.3e}");
            assert!(
                err < limit,
                "LSE: floored L2 error {err:.3e} over {limit:.0e}"
            );
        }
    }
}

pub fn to<BB: Backend, const D: usize>(
    t: &Tensor<Oracle, D>,
    device: &BB::Device,
) -> Tensor<BB, D> {
    Tensor::from_data(t.to_data().convert::<f32>(), (device, DType::F32))
}

/// `t` on `BB` in the oracle's dtype (the oracle's side of a comparison).
pub fn to_oracle_dtype<BB: Backend, const D: usize>(
    t: &Tensor<Oracle, D>,
    device: &BB::Device,
) -> Tensor<BB, D> {
    Tensor::from_data(t.to_data(), (device, ORACLE_DTYPE))
}

/// `data` as an oracle tensor.
pub fn oracle_tensor<const D: usize>(data: TensorData) -> Tensor<Oracle, D> {
    Tensor::from_data(data, (&Default::default(), ORACLE_DTYPE))
}

/// The case's seeded query, key and value (`f32` values) on the oracle.
pub fn oracle_inputs(c: &OracleCase) -> [Tensor<Oracle, 4>; 3] {
    c.inputs::<Oracle>(&Default::default())
        .map(|t| t.cast(ORACLE_DTYPE))
}

/// Seeded normal values (`f32`) on the oracle.
pub fn oracle_normal(seed: u64, shape: [usize; 4]) -> Tensor<Oracle, 4> {
    seeded_normal::<Oracle, 4>(seed, shape, &Default::default()).cast(ORACLE_DTYPE)
}

pub fn mask_to<BB: Backend>(
    m: &Tensor<Oracle, 2, Bool>,
    device: &BB::Device,
) -> Tensor<BB, 2, Bool> {
    Tensor::from_data(m.to_data(), device)
}

/// Invalid cases seen so far in this test process.
static INVALID_CASES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Whether `c` is a valid case. An invalid one (`HeadGrouped` with fewer heads than pairs) is
/// checked here instead: the public call must return `TooFewHeads` with the case's numbers. The
/// running count of invalid cases is printed.
pub fn valid_or_rejected<BB: DilatedAttentionBackend>(c: &OracleCase) -> bool {
    if c.valid() {
        return true;
    }
    let device: BB::Device = Default::default();
    let [q, k, v] = oracle_inputs(c);
    let result = dilated_attention_with_lse_masked(
        to::<BB, 4>(&q, &device),
        to::<BB, 4>(&k, &device),
        to::<BB, 4>(&v, &device),
        None,
        &c.config(),
    );
    let expected = dilated_attention_core::DilatedAttentionError::TooFewHeads {
        heads: c.shape[2],
        groups: c.segments.len(),
    };
    assert_eq!(result.err(), Some(expected), "{c:?}");
    let seen = INVALID_CASES.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    println!("invalid case {seen} of this process rejected with TooFewHeads: {c:?}");
    false
}

pub fn check_forward<BB: DilatedAttentionBackend>(c: &OracleCase) {
    check_forward_with::<BB>(c, KernelStrategy::Auto, None);
}

/// A random permutation of `0..len` from `seed` (Fisher-Yates on splitmix64).
pub fn random_order(len: usize, seed: u64) -> SequenceOrder {
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut tokens: Vec<usize> = (0..len).collect();
    for i in (1..len).rev() {
        tokens.swap(i, (next() % (i as u64 + 1)) as usize);
    }
    SequenceOrder::new(tokens).expect("a permutation")
}

/// The oracle along `order`, written the obvious way: gather the inputs and the mask along the
/// order on the sequence axis, attend, gather the output and the LSE back (under `Autodiff` the
/// gathers differentiate too). Without an order, the oracle itself.
pub fn oracle_along<B: burn::tensor::backend::Backend>(
    [q, k, v]: [Tensor<B, 4>; 3],
    mask: Option<Tensor<B, 2, Bool>>,
    config: &DilatedAttentionConfig,
    order: Option<&SequenceOrder>,
) -> (Tensor<B, 4>, Tensor<B, 3>) {
    assert_eq!(q.dtype(), ORACLE_DTYPE, "the oracle's dtype");
    let Some(order) = order else {
        return oracle_dilated_attention(q, k, v, mask, config);
    };
    let device = q.device();
    let along = index_tensor::<B>(order.tokens().iter().map(|&t| t as usize), &device);
    let back = index_tensor::<B>(order.positions_of_tokens(), &device);
    let gather = |t: Tensor<B, 4>| t.select(1, along.clone());
    let mask = mask.map(|m| m.float().select(1, along.clone()).greater_elem(0.5));
    let (out, lse) = oracle_dilated_attention(gather(q), gather(k), gather(v), mask, config);
    (out.select(1, back.clone()), lse.select(1, back))
}

/// The call under test: along `order` when given, else the plain masked call.
pub fn attend<B: DilatedAttentionBackend>(
    [q, k, v]: [Tensor<B, 4>; 3],
    mask: Option<Tensor<B, 2, Bool>>,
    config: &DilatedAttentionConfig,
    order: Option<&SequenceOrder>,
) -> (Tensor<B, 4>, Tensor<B, 3>) {
    match order {
        Some(order) => dilated_attention_along_order(q, k, v, mask, config, order),
        None => dilated_attention_with_lse_masked(q, k, v, mask, config),
    }
    .expect("valid case")
}

pub fn check_forward_with<BB: DilatedAttentionBackend>(
    c: &OracleCase,
    strategy: KernelStrategy,
    order: Option<&SequenceOrder>,
) {
    let device: BB::Device = Default::default();
    let mut config = c.config();
    config.kernel_strategy = strategy;
    let [q, k, v] = oracle_inputs(c);
    let mask = c.padding_mask::<Oracle>(&Default::default());
    let (want_out, want_lse) = oracle_along(
        [q.clone(), k.clone(), v.clone()],
        mask.clone(),
        &c.config(),
        order,
    );
    let (out, lse) = attend(
        [&q, &k, &v].map(|t| to::<BB, 4>(t, &device)),
        mask.as_ref().map(|m| mask_to::<BB>(m, &device)),
        &config,
        order,
    );
    let bound = f32_bound::<BB>(c, &config, F32_FORWARD, 1e-5);
    assert_matches("output", out.into_data(), want_out.into_data(), bound);
    assert_lse_matches(lse.into_data(), want_lse.into_data(), bound);
}

/// Gradients of `sum(out * w) + sum(LSE) / 2` (LSE `-inf` counted as 0) with respect to the
/// inputs, through the kernels' public call or (`oracle`) the dense oracle, on backend `AB`.
fn grads<AB: DilatedAttentionBackend + burn::tensor::backend::AutodiffBackend>(
    c: &OracleCase,
    [q, k, v]: [Tensor<Oracle, 4>; 3],
    w: &Tensor<Oracle, 4>,
    mask: Option<Tensor<Oracle, 2, Bool>>,
    oracle: bool,
    order: Option<&SequenceOrder>,
) -> [TensorData; 3] {
    let device: AB::Device = Default::default();
    // The oracle's side in its dtype, the side under test in f32.
    let put = |t: &Tensor<Oracle, 4>| {
        if oracle {
            to_oracle_dtype::<AB, 4>(t, &device)
        } else {
            to::<AB, 4>(t, &device)
        }
    };
    let q = put(&q).require_grad();
    let k = put(&k).require_grad();
    let v = put(&v).require_grad();
    let m = mask.as_ref().map(|m| mask_to::<AB>(m, &device));
    let inputs = [q.clone(), k.clone(), v.clone()];
    let (out, lse) = if oracle {
        oracle_along(inputs, m, &c.config(), order)
    } else {
        attend(inputs, m, &c.config(), order)
    };
    let lse = lse
        .clone()
        .mask_fill(lse.equal_elem(f32::NEG_INFINITY), 0.0);
    let loss = (out * put(w)).sum() + lse.sum() * 0.5;
    let g = loss.backward();
    [q, k, v].map(|t| t.grad(&g).expect("gradient").into_data())
}

pub fn check_gradients<BB: DilatedAttentionBackend>(c: &OracleCase, order: Option<&SequenceOrder>)
where
    Autodiff<BB>: DilatedAttentionBackend,
{
    let [q, k, v] = oracle_inputs(c);
    let w = oracle_normal(c.seed.wrapping_add(5), c.shape);
    let mask = c.padding_mask::<Oracle>(&Default::default());
    let got = grads::<Autodiff<BB>>(
        c,
        [q.clone(), k.clone(), v.clone()],
        &w,
        mask.clone(),
        false,
        order,
    );
    let want = grads::<Autodiff<Oracle>>(c, [q, k, v], &w, mask, true, order);
    let bound = f32_bound::<BB>(c, &c.config(), F32_GRADIENT, 2e-5);
    for ((name, g), w) in ["dQ", "dK", "dV"].into_iter().zip(got).zip(want) {
        assert_matches(name, g, w, bound);
    }
}

/// `||got - want|| / ||want||` over all elements (as `f32`); infinite on NaN or Inf.
pub fn relative_l2(got: TensorData, want: TensorData) -> f64 {
    relative_l2_error(&values(got), &values(want))
}

/// `||got - want|| / max(||want||, sqrt(len))`: a relative L2 error that counts every element's
/// reference as at least 1 in size; infinite on NaN or Inf.
pub fn l2_error_floored(got: TensorData, want: TensorData) -> f64 {
    floored_l2_error(&values(got), &values(want))
}

/// Forward in half precision (`dtype` F16 or BF16) against the f32 oracle on the same rounded
/// inputs, so the comparison sees the kernel's error, not the inputs' rounding: relative L2 of
/// the output and of the LSE under `bound`.
pub fn check_forward_half<BB: DilatedAttentionBackend>(
    c: &OracleCase,
    dtype: DType,
    bound: f64,
    order: Option<&SequenceOrder>,
) {
    check_forward_in::<BB>(c, dtype, &c.config(), bound, order, false);
}

/// [`check_forward_half`] with `config` (e.g. a forced strategy) for the call under test.
pub fn check_forward_half_with<BB: DilatedAttentionBackend>(
    c: &OracleCase,
    dtype: DType,
    config: &DilatedAttentionConfig,
    bound: f64,
) {
    check_forward_in::<BB>(c, dtype, config, bound, None, false);
}

/// `f32` forward with [`DilatedAttentionConfig::allow_tf32`] against the f32 oracle: relative L2
/// of the output under `bound`, and the LSE's L2 error under `bound` relative to the larger of
/// its norm and the root of its length (TF32 gives the LSE an absolute error, which a relative
/// measure would blow up where LSEs are near 0: one key with a score near 0).
pub fn check_forward_tf32<BB: DilatedAttentionBackend>(
    c: &OracleCase,
    bound: f64,
    order: Option<&SequenceOrder>,
) {
    let config = c.config().with_allow_tf32(true);
    check_forward_in::<BB>(c, DType::F32, &config, bound, order, true);
}

/// `f32` forward with the default config: relative L2 of the output and (floored as in
/// [`check_forward_tf32`]) of the LSE under `bound`, printed.
pub fn check_forward_f32<BB: DilatedAttentionBackend>(c: &OracleCase, bound: f64) {
    check_forward_in::<BB>(c, DType::F32, &c.config(), bound, None, true);
}

/// [`check_forward_half`] with the call's config; `lse_floor` measures the LSE's error against
/// at least 1 per element (see [`check_forward_tf32`]).
fn check_forward_in<BB: DilatedAttentionBackend>(
    c: &OracleCase,
    dtype: DType,
    config: &DilatedAttentionConfig,
    bound: f64,
    order: Option<&SequenceOrder>,
    lse_floor: bool,
) {
    let device: BB::Device = Default::default();
    let [q, k, v] = oracle_inputs(c);
    let half = |t: &Tensor<Oracle, 4>| to::<BB, 4>(t, &device).cast(dtype);
    let [hq, hk, hv] = [half(&q), half(&k), half(&v)];
    let back = |t: &Tensor<BB, 4>| -> Tensor<Oracle, 4> {
        oracle_tensor(t.clone().cast(DType::F32).into_data())
    };
    let mask = c.padding_mask::<Oracle>(&Default::default());
    let (want_out, want_lse) = oracle_along(
        [back(&hq), back(&hk), back(&hv)],
        mask.clone(),
        &c.config(),
        order,
    );
    let (out, lse) = attend(
        [hq, hk, hv],
        mask.as_ref().map(|m| mask_to::<BB>(m, &device)),
        config,
        order,
    );
    assert_eq!(out.dtype(), dtype, "output keeps the inputs' dtype");
    let out_err = relative_l2(out.cast(DType::F32).into_data(), want_out.into_data());
    let (got_lse, want_lse) = (
        values(lse.cast(DType::F32).into_data()),
        values(want_lse.into_data()),
    );
    // The same -inf rows, then the finite entries.
    let lse_err = if lse_floor {
        lse_l2_error(&got_lse, &want_lse)
    } else {
        lse_relative_l2_error(&got_lse, &want_lse)
    };
    println!("{dtype:?}: output rel L2 {out_err:.2e}, LSE rel L2 {lse_err:.2e}");
    assert!(
        out_err < bound,
        "{dtype:?} output rel L2 {out_err:.3e} over {bound:.0e}"
    );
    assert!(
        lse_err < bound,
        "{dtype:?} LSE rel L2 {lse_err:.3e} over {bound:.0e}"
    );
}

/// Gradients in half precision (`dtype` F16 or BF16) against the f32 oracle's on the same
/// rounded inputs: the loss is `sum(out * w) + sum(LSE) / 2` with `w` random (so the output's
/// gradient is `w`, rounded to `dtype` by the cast's backward). Relative L2 of `dQ`, `dK`, `dV`
/// under `bound`; returns the three errors.
pub fn check_gradients_half<BB: DilatedAttentionBackend>(
    c: &OracleCase,
    dtype: DType,
    bound: f64,
    order: Option<&SequenceOrder>,
) -> [f64; 3]
where
    Autodiff<BB>: DilatedAttentionBackend,
{
    check_gradients_in::<BB>(c, dtype, &c.config(), bound, order)
}

/// [`check_gradients_half`] with `config` for the call under test.
pub fn check_gradients_half_with<BB: DilatedAttentionBackend>(
    c: &OracleCase,
    dtype: DType,
    config: &DilatedAttentionConfig,
    bound: f64,
) -> [f64; 3]
where
    Autodiff<BB>: DilatedAttentionBackend,
{
    check_gradients_in::<BB>(c, dtype, config, bound, None)
}

/// `f32` gradients with [`DilatedAttentionConfig::allow_tf32`] (a TF32 forward, whose output
/// and LSE the backward uses) against the f32 oracle's: relative L2 of `dQ`, `dK`, `dV` under
/// `bound`.
pub fn check_gradients_tf32<BB: DilatedAttentionBackend>(
    c: &OracleCase,
    bound: f64,
    order: Option<&SequenceOrder>,
) -> [f64; 3]
where
    Autodiff<BB>: DilatedAttentionBackend,
{
    let config = c.config().with_allow_tf32(true);
    check_gradients_in::<BB>(c, DType::F32, &config, bound, order)
}

/// [`check_gradients_half`] with the call's config.
fn check_gradients_in<BB: DilatedAttentionBackend>(
    c: &OracleCase,
    dtype: DType,
    config: &DilatedAttentionConfig,
    bound: f64,
    order: Option<&SequenceOrder>,
) -> [f64; 3]
where
    Autodiff<BB>: DilatedAttentionBackend,
{
    type Ad<B> = Autodiff<B>;
    let device: BB::Device = Default::default();
    let [q, k, v] = oracle_inputs(c);
    let w = oracle_normal(c.seed.wrapping_add(5), c.shape);
    let mask = c.padding_mask::<Oracle>(&Default::default());
    let rounded = |t: &Tensor<Oracle, 4>| -> Tensor<Oracle, 4> {
        let half = to::<BB, 4>(t, &device).cast(dtype).cast(DType::F32);
        oracle_tensor(half.into_data())
    };
    let [q, k, v] = [rounded(&q), rounded(&k), rounded(&v)];

    let got = {
        let device = <Ad<BB> as burn::tensor::backend::BackendTypes>::Device::default();
        let leaf = |t: &Tensor<Oracle, 4>| {
            to::<Ad<BB>, 4>(t, &device)
                .cast(dtype)
                .detach()
                .require_grad()
        };
        let [hq, hk, hv] = [leaf(&q), leaf(&k), leaf(&v)];
        let m = mask.as_ref().map(|m| mask_to::<Ad<BB>>(m, &device));
        let (out, lse) = attend([hq.clone(), hk.clone(), hv.clone()], m, config, order);
        let lse = lse
            .clone()
            .mask_fill(lse.clone().equal_elem(f32::NEG_INFINITY), 0.0);
        let loss = (out.cast(DType::F32) * to::<Ad<BB>, 4>(&w, &device)).sum()
            + lse.cast(DType::F32).sum() * 0.5;
        let g = loss.backward();
        [hq, hk, hv].map(|t| {
            let grad = t.grad(&g).expect("gradient");
            assert_eq!(grad.dtype(), dtype, "gradients keep the inputs' dtype");
            grad.cast(DType::F32).into_data()
        })
    };
    let want = grads::<Ad<Oracle>>(c, [q, k, v], &w, mask, true, order);
    let errors = [0, 1, 2].map(|i| relative_l2(got[i].clone(), want[i].clone()));
    println!(
        "{dtype:?} gradients: rel L2 dQ {:.2e}, dK {:.2e}, dV {:.2e}",
        errors[0], errors[1], errors[2]
    );
    for (name, err) in ["dQ", "dK", "dV"].iter().zip(errors) {
        assert!(
            err < bound,
            "{dtype:?} {name} rel L2 {err:.3e} over {bound:.0e}"
        );
    }
    errors
}
