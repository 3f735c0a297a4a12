//! A user's crate: dilated attention on the backend its cargo feature picks, through the facade
//! alone. It runs a forward and a backward through `Autodiff`, and checks the output and the
//! gradients against the reference path (plain Burn tensor ops) on the CPU backend, from the same
//! input values.
//!
//! ```text
//! cargo run                      # ndarray (CPU)
//! cargo run --features wgpu      # WGPU (Vulkan, Metal, DX12; lavapipe on a CPU-only Linux)
//! cargo run --features cuda      # CUDA
//! ```

use dilated_attention::backend::{Autodiff, NdArray};
use dilated_attention::burn::tensor::backend::AutodiffBackend;
use dilated_attention::burn::tensor::{Device, Distribution, Tensor, TensorData};
use dilated_attention::prelude::*;

#[cfg(feature = "cuda")]
type Inner = dilated_attention::backend::Cuda;
#[cfg(all(feature = "wgpu", not(feature = "cuda")))]
type Inner = dilated_attention::backend::Wgpu;
#[cfg(not(any(feature = "wgpu", feature = "cuda")))]
type Inner = NdArray;

/// The backend under test, with gradients.
type B = Autodiff<Inner>;
/// The CPU backend of the reference, with gradients.
type Cpu = Autodiff<NdArray>;

/// Relative L2 distance of two tensors' values; infinite when either holds NaN or Inf.
fn relative_l2(ours: TensorData, reference: TensorData) -> f64 {
    let ours = ours.to_vec::<f32>().expect("f32 values");
    let reference = reference.to_vec::<f32>().expect("f32 values");
    if ours.iter().chain(&reference).any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    let diff: f64 = ours
        .iter()
        .zip(&reference)
        .map(|(a, b)| f64::from(a - b).powi(2))
        .sum();
    let norm: f64 = reference.iter().map(|b| f64::from(*b).powi(2)).sum();
    (diff / norm.max(f64::MIN_POSITIVE)).sqrt()
}

/// Output and query, key and value gradients of one forward and backward on `A`.
fn forward_backward<A: AutodiffBackend + DilatedAttentionBackend>(
    config: &DilatedAttentionConfig,
    inputs: &[TensorData; 3],
    device: &Device<A>,
) -> Result<[TensorData; 4], DilatedAttentionError> {
    let [q, k, v] = inputs
        .clone()
        .map(|data| Tensor::<A, 4>::from_data(data, device).require_grad());
    let attention: DilatedAttention<A> = config.try_init(device)?;
    let out = attention.try_forward(q.clone(), k.clone(), v.clone())?;
    let grads = (out.clone() * out.clone()).sum().backward();
    let grad = |t: &Tensor<A, 4>| t.grad(&grads).expect("a gradient").into_data();
    Ok([out.into_data(), grad(&q), grad(&k), grad(&v)])
}

fn main() -> Result<(), DilatedAttentionError> {
    let device: Device<B> = Default::default();
    let cpu: Device<Cpu> = Default::default();
    // Odd sizes: 300 tokens (no multiple of any segment), 3 heads over 2 pairs.
    let dims = [2, 300, 3, 32];
    let config = DilatedAttentionConfig::new(vec![64, 128], vec![1, 2]).with_causal(true);
    let inputs = [0, 1, 2]
        .map(|_| Tensor::<Cpu, 4>::random(dims, Distribution::Normal(0.0, 1.0), &cpu).into_data());
    // Which kernels this backend runs for the call (the reference path on the CPU, the portable
    // fused kernels on WGPU, tensor-core kernels on a recent NVIDIA GPU).
    let choice = kernel_choice::<B>(dims, inputs[0].dtype, &device, &config)?;
    println!("backend: {}", std::any::type_name::<Inner>());
    println!(
        "kernels: {:?}, products in {:?}",
        choice.family, choice.precision
    );
    #[cfg(all(feature = "wgpu", not(feature = "cuda")))]
    assert_eq!(
        choice.family,
        KernelFamily::Portable,
        "WGPU runs the portable kernels"
    );
    #[cfg(not(any(feature = "wgpu", feature = "cuda")))]
    assert_eq!(
        choice.family,
        KernelFamily::Reference,
        "the CPU runs the reference path"
    );
    let ours = forward_backward::<B>(&config, &inputs, &device)?;
    let reference = forward_backward::<Cpu>(&config, &inputs, &cpu)?;
    let mut failed = false;
    for (name, (ours, reference)) in ["output", "dQ", "dK", "dV"]
        .into_iter()
        .zip(ours.into_iter().zip(reference))
    {
        let error = relative_l2(ours, reference);
        println!("{name}: relative L2 against the CPU reference path {error:.2e}");
        // `relative_l2` is infinite for NaN or Inf, which fails here.
        failed |= error.is_nan() || error >= 1e-4;
    }
    if failed {
        eprintln!("the backend's attention does not match the CPU reference path");
        std::process::exit(1);
    }
    println!("ok");
    Ok(())
}
