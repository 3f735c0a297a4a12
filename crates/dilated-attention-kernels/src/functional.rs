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

use burn::tensor::{Bool, DType, Tensor, TensorPrimitive};
use dilated_attention_core::{
    AttentionShape, DilatedAttentionConfig, DilatedAttentionError, KernelChoice, Result,
    SequenceOrder, check_attention_inputs, reference_score_elements,
};

use crate::DilatedAttentionBackend;
use crate::batch_chunks::{attend_in_batch_chunks, batch_rows_per_fused_call};

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
    attend_checked(query, key, value, key_padding_mask, config, None)
}

/// The inputs' checks, then one call or (beyond one fused launch) several along the batch;
/// along `order` when given.
fn attend_checked<B: DilatedAttentionBackend>(
    query: Tensor<B, 4>,
    key: Tensor<B, 4>,
    value: Tensor<B, 4>,
    key_padding_mask: Option<Tensor<B, 2, Bool>>,
    config: &DilatedAttentionConfig,
    order: Option<&SequenceOrder>,
) -> Result<(Tensor<B, 4>, Tensor<B, 3>)> {
    let shape = check_attention_inputs(&query, &key, &value, key_padding_mask.as_ref())?;
    if let Some(order) = order {
        order.check_len(shape.seq_len)?;
    }
    let attend = |query, key, value, mask| attend_once(query, key, value, mask, config, order);
    match fused_batch_chunks::<B>(shape.dims(), query.dtype(), &query.device(), config)? {
        Some((rows, _)) => {
            attend_in_batch_chunks([query, key, value], key_padding_mask, rows, attend)
        }
        None => attend(query, key, value, key_padding_mask),
    }
}

/// One call of the backend on checked inputs, after the allocation check.
fn attend_once<B: DilatedAttentionBackend>(
    query: Tensor<B, 4>,
    key: Tensor<B, 4>,
    value: Tensor<B, 4>,
    key_padding_mask: Option<Tensor<B, 2, Bool>>,
    config: &DilatedAttentionConfig,
    order: Option<&SequenceOrder>,
) -> Result<(Tensor<B, 4>, Tensor<B, 3>)> {
    let shape = AttentionShape::from_dims("query", &query.dims())?;
    check_allocation::<B>(&shape, query.dtype(), &query.device(), config)?;
    let [query, key, value] = [query, key, value].map(|t| t.into_primitive().tensor());
    let mask = key_padding_mask.map(Tensor::into_primitive);
    let (out, lse) = match order {
        Some(order) => B::dilated_attention_along_order(query, key, value, mask, config, order)?,
        None => B::dilated_attention_with_lse(query, key, value, mask, config)?,
    };
    Ok((
        Tensor::from_primitive(TensorPrimitive::Float(out)),
        Tensor::from_primitive(TensorPrimitive::Float(lse)),
    ))
}

/// Batch rows per call and the chunks' kernel choice, when a call beyond one fused launch runs
/// as several along the batch ([`batch_rows_per_fused_call`]) and the fused kernels take each
/// chunk; `None` for one call.
fn fused_batch_chunks<B: DilatedAttentionBackend>(
    dims: [usize; 4],
    dtype: DType,
    device: &B::Device,
    config: &DilatedAttentionConfig,
) -> Result<Option<(usize, KernelChoice)>> {
    let Some(rows) = batch_rows_per_fused_call(dims) else {
        return Ok(None);
    };
    let [_, seq, heads, head_dim] = dims;
    let chunk = B::dilated_attention_kernel([rows, seq, heads, head_dim], dtype, device, config)?;
    Ok(chunk.is_fused().then_some((rows, chunk)))
}

/// [`dilated_attention_with_lse_masked`] along a [`SequenceOrder`]: attention runs on the
/// sequence in that order (segments, dilation and causal masking follow it) and the output and
/// log-sum-exp come back in the inputs' layout. Equal to gathering the inputs and the mask along
/// the order, attending and gathering the results back with the inverse; the fused kernels read
/// the order instead (no copy of any tensor). Hilbert attention is built on it.
///
/// ```
/// use burn::backend::NdArray;
/// use burn::tensor::{Distribution, Tensor};
/// use dilated_attention_core::{DilatedAttentionConfig, SequenceOrder};
/// use dilated_attention_kernels::dilated_attention_along_order;
///
/// let device = Default::default();
/// let cfg = DilatedAttentionConfig::new(vec![2], vec![1]);
/// let q = Tensor::<NdArray, 4>::random([1, 4, 2, 8], Distribution::Default, &device);
/// // segments {token 0, token 2} and {token 1, token 3}
/// let order = SequenceOrder::new(vec![0, 2, 1, 3])?;
/// let (out, lse) = dilated_attention_along_order(q.clone(), q.clone(), q, None, &cfg, &order)?;
/// assert_eq!(out.dims(), [1, 4, 2, 8]);
/// assert_eq!(lse.dims(), [1, 4, 2]);
/// # Ok::<(), dilated_attention_core::DilatedAttentionError>(())
/// ```
///
/// # Errors
/// Those of [`dilated_attention_with_lse_masked`], and
/// [`SequenceMismatch`](dilated_attention_core::DilatedAttentionError::SequenceMismatch) when the
/// order's length is not the sequence's.
pub fn dilated_attention_along_order<B: DilatedAttentionBackend>(
    query: Tensor<B, 4>,
    key: Tensor<B, 4>,
    value: Tensor<B, 4>,
    key_padding_mask: Option<Tensor<B, 2, Bool>>,
    config: &DilatedAttentionConfig,
    order: &SequenceOrder,
) -> Result<(Tensor<B, 4>, Tensor<B, 3>)> {
    config.validate()?;
    attend_checked(query, key, value, key_padding_mask, config, Some(order))
}

/// Which kernel family, with which product precision, runs a call with inputs of shape `dims`
/// (`[batch, seq, heads, head_dim]`) and `dtype` on `device` with `config`: what
/// [`dilated_attention_with_lse`] and every module of this library run for such a call
/// (see [`DilatedAttentionBackend::dilated_attention_kernel`]; the strategies are in
/// [`KernelStrategy`](dilated_attention_core::KernelStrategy)).
///
/// ```
/// use burn::backend::NdArray;
/// use burn::tensor::DType;
/// use dilated_attention_core::{
///     DilatedAttentionConfig, DilatedAttentionError, KernelChoice, KernelStrategy,
/// };
/// use dilated_attention_kernels::kernel_choice;
///
/// let device = Default::default();
/// let cfg = DilatedAttentionConfig::new(vec![64], vec![1]);
/// # if std::env::var_os(dilated_attention_kernels::KERNEL_ENV).is_none() {
/// // The CPU backend has no fused kernels: the reference path runs...
/// let choice = kernel_choice::<NdArray>([1, 128, 4, 64], DType::F32, &device, &cfg)?;
/// assert_eq!(choice, KernelChoice::REFERENCE);
/// // ...and forcing a family is an error, not a silent detour.
/// let forced = cfg.with_kernel_strategy(KernelStrategy::Portable);
/// assert!(matches!(
///     kernel_choice::<NdArray>([1, 128, 4, 64], DType::F32, &device, &forced),
///     Err(DilatedAttentionError::KernelUnavailable { .. })
/// ));
/// # }
/// # Ok::<(), DilatedAttentionError>(())
/// ```
///
/// # Errors
/// [`KernelUnavailable`](dilated_attention_core::DilatedAttentionError::KernelUnavailable)
/// when the strategy forces a family that cannot run the call;
/// [`InvalidEnvironment`](dilated_attention_core::DilatedAttentionError::InvalidEnvironment)
/// for an unknown value of [`KERNEL_ENV`](crate::KERNEL_ENV).
pub fn kernel_choice<B: DilatedAttentionBackend>(
    dims: [usize; 4],
    dtype: DType,
    device: &B::Device,
    config: &DilatedAttentionConfig,
) -> Result<KernelChoice> {
    match fused_batch_chunks::<B>(dims, dtype, device, config)? {
        Some((_, chunk)) => Ok(chunk),
        None => B::dilated_attention_kernel(dims, dtype, device, config),
    }
}

/// Refuses a call whose largest buffer is above what `device` allocates at once
/// ([`DilatedAttentionBackend::max_allocation_bytes`]). Only the reference path can exceed it:
/// the fused path's largest buffer is an output the size of the query, which the device already
/// holds; the reference path's is one chunk of scores ([`reference_score_elements`], counted at
/// 4 bytes an element or the dtype's size if larger: the masks at the scores' shape are 32-bit on
/// some runtimes).
///
/// # Errors
/// [`DilatedAttentionError::AllocationTooLarge`]; the strategy's errors
/// ([`kernel_choice`]).
fn check_allocation<B: DilatedAttentionBackend>(
    shape: &AttentionShape,
    dtype: DType,
    device: &B::Device,
    config: &DilatedAttentionConfig,
) -> Result<()> {
    let Some(limit) = B::max_allocation_bytes(device) else {
        return Ok(());
    };
    if B::dilated_attention_kernel(shape.dims(), dtype, device, config)?.is_fused() {
        return Ok(());
    }
    let elements = reference_score_elements(shape, config)? as u64;
    let bytes = elements.saturating_mul(dtype.size().max(4) as u64);
    if bytes > limit {
        return Err(DilatedAttentionError::AllocationTooLarge {
            what: "one chunk of the reference path's scores",
            bytes,
            limit,
        });
    }
    Ok(())
}
