//! What the GPU harnesses (`fused_bench`, `call_overhead`) share: their random inputs and the
//! median of their timings.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Distribution, Tensor};

/// A standard-normal input of `shape` in `dtype` (`Tensor::random` makes `f32`, then a cast).
pub fn random_input<B: Backend>(
    shape: [usize; 4],
    dtype: DType,
    device: &B::Device,
) -> Tensor<B, 4> {
    Tensor::<B, 4>::random(shape, Distribution::Normal(0.0, 1.0), device).cast(dtype)
}

/// The median of `xs` (the upper one of an even count); `xs` must not be empty.
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}
