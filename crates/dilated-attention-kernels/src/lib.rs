//! The dispatch layer of the dilated-attention library: the [`DilatedAttentionBackend`]
//! extension trait with its impls for every Burn backend, the [`DilatedAttention`] module and the
//! functional API.
//!
//! `CubeBackend` (feature `cubecl`), `Fusion` (feature `fusion`) and `Autodiff` over them run the
//! fused CubeCL kernels of the `fused` module (flash attention over the dilated rows, every pair
//! in one launch; FlashAttention-2 style backward); `NdArray` and every call the kernels do not
//! take (see [`DilatedAttentionBackend::dilated_attention_kernel`], or the public
//! [`kernel_choice`]) run core's reference path through the trait's default bodies. Set
//! `config.kernel_strategy = KernelStrategy::Reference` to force the reference path.
//!
//! ```
//! use burn::backend::{Autodiff, NdArray};
//! use burn::tensor::{Distribution, Tensor};
//! use dilated_attention_core::DilatedAttentionConfig;
//! use dilated_attention_kernels::dilated_attention_with_lse;
//!
//! // Training works through Autodiff (here the reference path, differentiated op by op; on
//! // Cuda/Wgpu the fused backward kernels).
//! type B = Autodiff<NdArray>;
//! let device = Default::default();
//! let cfg = DilatedAttentionConfig::new(vec![16, 32], vec![1, 2]);
//! let q = Tensor::<B, 4>::random([1, 40, 2, 8], Distribution::Default, &device).require_grad();
//! let (out, _lse) = dilated_attention_with_lse(q.clone(), q.clone(), q.clone(), &cfg)?;
//! let grads = out.sum().backward();
//! assert_eq!(q.grad(&grads).unwrap().dims(), [1, 40, 2, 8]);
//! # Ok::<(), dilated_attention_core::DilatedAttentionError>(())
//! ```

mod attention;
mod backend;
mod backends;
mod batch_chunks;
mod custom_attention;
mod fallback_log;
mod functional;
#[cfg(feature = "cubecl")]
mod fused;
mod overrides;

pub use attention::*;
pub use backend::*;
pub use batch_chunks::batch_rows_per_fused_call;
pub use custom_attention::*;
pub use functional::*;
pub use overrides::{KERNEL_ENV, NVRTC_OPTIONS_ENV, SUBMIT_ENV, kernel_strategy};
