//! [`CustomAttention`]: an attention-like function `(query, key, value) -> (output, lse)` given
//! by its own forward and backward on the untracked backend, which every
//! [`DilatedAttentionBackend`] can run and `Autodiff` differentiates through the given backward.
//!
//! This is how an algorithm that Burn's autodiff cannot trace op by op (the sequence-parallel
//! ring, whose backward sends gradients to other devices) becomes one differentiable step.
//!
//! ```
//! use std::sync::Arc;
//! use burn::backend::{Autodiff, NdArray};
//! use burn::tensor::ops::FloatTensor;
//! use burn::tensor::{Distribution, Tensor, TensorPrimitive};
//! use dilated_attention_core::Result;
//! use dilated_attention_kernels::{CustomAttention, DilatedAttentionBackend};
//!
//! /// out = 2 q (ignoring k and v), lse = 0: backward sends 2 dout to q.
//! #[derive(Debug)]
//! struct Double;
//! impl CustomAttention<NdArray> for Double {
//!     fn forward(&self, q: FloatTensor<NdArray>, _: FloatTensor<NdArray>, _: FloatTensor<NdArray>)
//!         -> Result<(FloatTensor<NdArray>, FloatTensor<NdArray>)> {
//!         let q = Tensor::<NdArray, 4>::from_primitive(TensorPrimitive::Float(q));
//!         let lse = q.clone().sum_dim(3).squeeze_dim::<3>(3).zeros_like();
//!         Ok(((q * 2.0).into_primitive().tensor(), lse.into_primitive().tensor()))
//!     }
//!     fn backward(&self, [q, k, v]: [FloatTensor<NdArray>; 3], _: FloatTensor<NdArray>,
//!         _: FloatTensor<NdArray>, grad_output: Option<FloatTensor<NdArray>>,
//!         _: Option<FloatTensor<NdArray>>) -> Result<[FloatTensor<NdArray>; 3]> {
//!         let t = |x| Tensor::<NdArray, 4>::from_primitive(TensorPrimitive::Float(x));
//!         let dq = grad_output.map(|g| t(g) * 2.0).unwrap_or_else(|| t(q).zeros_like());
//!         let (dk, dv) = (t(k).zeros_like(), t(v).zeros_like());
//!         Ok([dq, dk, dv].map(|x| x.into_primitive().tensor()))
//!     }
//! }
//!
//! type B = Autodiff<NdArray>;
//! let q = Tensor::<B, 4>::random([1, 3, 2, 4], Distribution::Default, &Default::default())
//!     .require_grad();
//! let (out, _) = B::custom_attention(
//!     Arc::new(Double),
//!     q.clone().into_primitive().tensor(),
//!     q.clone().into_primitive().tensor(),
//!     q.clone().into_primitive().tensor(),
//! )?;
//! let out = Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(out));
//! let grads = out.sum().backward();
//! // dq = 2 from the output, + 0 through the (zero) key and value gradients of the same tensor
//! let dq: Vec<f32> = q.grad(&grads).unwrap().into_data().to_vec().unwrap();
//! assert!(dq.iter().all(|&x| x == 2.0));
//! # Ok::<(), dilated_attention_core::DilatedAttentionError>(())
//! ```

use core::fmt::Debug;

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use dilated_attention_core::Result;

/// A differentiable function `(query, key, value) -> (output, lse)` on a backend's untracked
/// primitives; see the [module docs](self).
///
/// Shapes are the function's own business; the dilated-attention ones are
/// `[batch, seq, heads, head_dim]` in and `([batch, seq, heads, head_dim], [batch, seq, heads])`
/// out.
pub trait CustomAttention<B: Backend>: Send + Sync + Debug + 'static {
    /// The output and the per-query log-sum-exp. The LSE may be f32 while the output is in half
    /// precision: `Autodiff` keeps it as returned for [`Self::backward`] and hands the caller a
    /// copy in the output's dtype; other backends return it as it is.
    ///
    /// # Errors
    /// Whatever the function reports (bad shapes, a failed peer, ...).
    fn forward(
        &self,
        query: FloatTensor<B>,
        key: FloatTensor<B>,
        value: FloatTensor<B>,
    ) -> Result<(FloatTensor<B>, FloatTensor<B>)>;

    /// The gradients of `query`, `key` and `value` from the forward's inputs, its outputs, and the
    /// gradients of the output and of the LSE (`None`: that output did not reach the loss).
    ///
    /// # Errors
    /// Whatever the function reports. Burn's backward pass cannot return errors, so under
    /// `Autodiff` an error here panics with its message.
    fn backward(
        &self,
        inputs: [FloatTensor<B>; 3],
        output: FloatTensor<B>,
        lse: FloatTensor<B>,
        grad_output: Option<FloatTensor<B>>,
        grad_lse: Option<FloatTensor<B>>,
    ) -> Result<[FloatTensor<B>; 3]>;
}
