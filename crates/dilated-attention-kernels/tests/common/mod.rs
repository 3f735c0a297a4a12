//! Helpers the backend suites share: the backend under test, conversions, comparisons with the
//! dense oracle (forward and gradients).

#![allow(dead_code)]

use burn::backend::{Autodiff, NdArray};
#[cfg(not(feature = "test-cuda"))]
use burn::tensor::Tolerance;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, DType, Tensor, TensorData};
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

pub type Oracle = NdArray;

/// The un-fused CubeCL backend of the same runtime: the kernels without the fusion layer.
#[cfg(feature = "test-cuda")]
pub type RawCube = burn_cubecl::CubeBackend<burn_cubecl::cubecl::cuda::CudaRuntime, f32, i32, u8>;
#[cfg(all(feature = "test-wgpu", not(feature = "test-cuda")))]
pub type RawCube = burn_cubecl::CubeBackend<burn_cubecl::cubecl::wgpu::WgpuRuntime, f32, i32, u32>;

/// Gradient tolerance (relative, absolute).
const GRAD_TOLERANCE: (f32, f32) = (1e-4, 1e-5);

/// Compares a result with the oracle. On NdArray and WGPU element by element (`rel`, `abs`).
/// On CUDA, burn 0.21 runs f32 matmuls on TF32 tensor cores (seen on an H100: a one-key softmax,
/// whose output is the value row itself, came back with 2.5e-4 relative error, the TF32 rounding
/// of the value), so there the check is the relative L2 error against TF32's level.
pub fn assert_matches(got: TensorData, want: TensorData, rel: f32, abs: f32) {
    #[cfg(feature = "test-cuda")]
    {
        let _ = (rel, abs);
        let err = relative_l2(got, want);
        println!("relative L2 error {err:.3e}");
        assert!(err < 2e-3, "relative L2 error {err:.3e} over TF32's 2e-3");
    }
    #[cfg(not(feature = "test-cuda"))]
    got.assert_approx_eq::<f32>(&want, Tolerance::rel_abs(rel, abs));
}

pub fn to<BB: Backend, const D: usize>(
    t: &Tensor<Oracle, D>,
    device: &BB::Device,
) -> Tensor<BB, D> {
    Tensor::from_data(t.to_data(), device)
}

pub fn mask_to<BB: Backend>(
    m: &Tensor<Oracle, 2, Bool>,
    device: &BB::Device,
) -> Tensor<BB, 2, Bool> {
    Tensor::from_data(m.to_data(), device)
}

pub fn finite(data: TensorData) -> TensorData {
    let shape = data.shape.clone();
    let v: Vec<f32> = data
        .convert::<f32>()
        .to_vec::<f32>()
        .unwrap()
        .into_iter()
        .map(|x| if x == f32::NEG_INFINITY { -1.0e4 } else { x })
        .collect();
    TensorData::new(v, shape)
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
    let [q, k, v] = c.inputs::<Oracle>(&Default::default());
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
    assert_matches(finite(out.into_data()), want_out.into_data(), 1e-5, 1e-5);
    assert_matches(
        finite(lse.into_data()),
        finite(want_lse.into_data()),
        1e-5,
        1e-5,
    );
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
    let q = to::<AB, 4>(&q, &device).require_grad();
    let k = to::<AB, 4>(&k, &device).require_grad();
    let v = to::<AB, 4>(&v, &device).require_grad();
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
    let loss = (out * to::<AB, 4>(w, &device)).sum() + lse.sum() * 0.5;
    let g = loss.backward();
    [q, k, v].map(|t| t.grad(&g).expect("gradient").into_data())
}

pub fn check_gradients<BB: DilatedAttentionBackend>(c: &OracleCase, order: Option<&SequenceOrder>)
where
    Autodiff<BB>: DilatedAttentionBackend,
{
    let [q, k, v] = c.inputs::<Oracle>(&Default::default());
    let w = seeded_normal::<Oracle, 4>(c.seed.wrapping_add(5), c.shape, &Default::default());
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
    for (g, w) in got.into_iter().zip(want) {
        assert_matches(finite(g), w, GRAD_TOLERANCE.0, GRAD_TOLERANCE.1);
    }
}

/// `(||got - want||, ||want||, element count)` over all elements (both converted to f32).
fn l2_parts(got: TensorData, want: TensorData) -> (f64, f64, usize) {
    let g = got.convert::<f32>().to_vec::<f32>().unwrap();
    let w = want.convert::<f32>().to_vec::<f32>().unwrap();
    assert_eq!(g.len(), w.len(), "element counts differ");
    let err: f64 = g
        .iter()
        .zip(&w)
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    let norm: f64 = w.iter().map(|b| (*b as f64).powi(2)).sum::<f64>().sqrt();
    (err, norm, w.len())
}

/// `||got - want|| / ||want||` over all elements (both converted to f32).
pub fn relative_l2(got: TensorData, want: TensorData) -> f64 {
    let (err, norm, _) = l2_parts(got, want);
    err / norm.max(1e-30)
}

/// `||got - want|| / max(||want||, sqrt(len))`: a relative L2 error that counts every element's
/// reference as at least 1 in size.
pub fn l2_error_floored(got: TensorData, want: TensorData) -> f64 {
    let (err, norm, len) = l2_parts(got, want);
    err / norm.max((len as f64).sqrt())
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
    let [q, k, v] = c.inputs::<Oracle>(&Default::default());
    let half = |t: &Tensor<Oracle, 4>| to::<BB, 4>(t, &device).cast(dtype);
    let [hq, hk, hv] = [half(&q), half(&k), half(&v)];
    let back = |t: &Tensor<BB, 4>| -> Tensor<Oracle, 4> {
        Tensor::from_data(t.clone().cast(DType::F32).into_data(), &Default::default())
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
        finite(lse.cast(DType::F32).into_data()),
        finite(want_lse.into_data()),
    );
    let lse_err = if lse_floor {
        l2_error_floored(got_lse, want_lse)
    } else {
        relative_l2(got_lse, want_lse)
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
    let [q, k, v] = c.inputs::<Oracle>(&Default::default());
    let w = seeded_normal::<Oracle, 4>(c.seed.wrapping_add(5), c.shape, &Default::default());
    let mask = c.padding_mask::<Oracle>(&Default::default());
    let rounded = |t: &Tensor<Oracle, 4>| -> Tensor<Oracle, 4> {
        let half = to::<BB, 4>(t, &device).cast(dtype).cast(DType::F32);
        Tensor::from_data(half.into_data(), &Default::default())
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
    let errors = [0, 1, 2].map(|i| relative_l2(finite(got[i].clone()), want[i].clone()));
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
