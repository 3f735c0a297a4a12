//! The functional API: dilated attention on tensors, with the per-query log-sum-exp.
//!
//! ```
//! use burn::backend::NdArray;
//! use burn::tensor::{Distribution, Tensor};
//! use dilated_attention_core::DilatedAttentionConfig;
//! use dilated_attention_kernels::dilated_attention_with_lse;
//!
//! let device = Default::default();
//! let cfg = DilatedAttentionConfig::new(vec![64, 128], vec![1, 2]).with_causal(true);
//! let q = Tensor::<NdArray, 4>::random([2, 200, 4, 32], Distribution::Default, &device);
//! let (out, lse) = dilated_attention_with_lse(q.clone(), q.clone(), q, &cfg)?;
//! assert_eq!(out.dims(), [2, 200, 4, 32]);
//! assert_eq!(lse.dims(), [2, 200, 4]);
//! # Ok::<(), dilated_attention_core::DilatedAttentionError>(())
//! ```

use burn::tensor::{Bool, Tensor, TensorPrimitive};
use dilated_attention_core::{AttentionShape, DilatedAttentionConfig, Result};

use crate::DilatedAttentionBackend;

/// Dilated attention and its log-sum-exp (the input of the LongNet merge and of the ring).
///
/// # Shapes
/// - `query`, `key`, `value`: `[batch, seq, heads, head_dim]`
/// - returns `([batch, seq, heads, head_dim], [batch, seq, heads])`
///
/// # Errors
/// Invalid config, mismatched shapes, a zero dimension, or `HeadGrouped` with fewer heads than
/// pairs: a [`DilatedAttentionError`](dilated_attention_core::DilatedAttentionError) naming the
/// field and the value.
pub fn dilated_attention_with_lse<B: DilatedAttentionBackend>(
    query: Tensor<B, 4>,
    key: Tensor<B, 4>,
    value: Tensor<B, 4>,
    config: &DilatedAttentionConfig,
) -> Result<(Tensor<B, 4>, Tensor<B, 3>)> {
    dilated_attention_with_lse_masked(query, key, value, None, config)
}

/// [`dilated_attention_with_lse`] with a key padding mask (`[batch, seq]`, true = padded key).
/// Padded keys are hidden in every mode and together with causal masking; a query that sees no
/// key outputs 0 (log-sum-exp `-inf`).
///
/// # Errors
/// Those of [`dilated_attention_with_lse`], and
/// [`MaskShapeMismatch`](dilated_attention_core::DilatedAttentionError::MaskShapeMismatch).
pub fn dilated_attention_with_lse_masked<B: DilatedAttentionBackend>(
    query: Tensor<B, 4>,
    key: Tensor<B, 4>,
    value: Tensor<B, 4>,
    key_padding_mask: Option<Tensor<B, 2, Bool>>,
    config: &DilatedAttentionConfig,
) -> Result<(Tensor<B, 4>, Tensor<B, 3>)> {
    config.validate()?;
    AttentionShape::check_inputs(
        &query.dims(),
        &key.dims(),
        &value.dims(),
        key_padding_mask.as_ref().map(Tensor::dims),
    )?;
    let (out, lse) = B::dilated_attention_with_lse(
        query.into_primitive().tensor(),
        key.into_primitive().tensor(),
        value.into_primitive().tensor(),
        key_padding_mask.map(Tensor::into_primitive),
        config,
    )?;
    Ok((
        Tensor::from_primitive(TensorPrimitive::Float(out)),
        Tensor::from_primitive(TensorPrimitive::Float(lse)),
    ))
}
