//! The dispatch point: [`DilatedAttentionBackend`], the Burn backend extension every attending
//! module is bounded by.
//!
//! Its default method bodies run core's reference implementation with the backend's own tensor
//! ops, so a backend without kernels needs only an empty impl, and under `Autodiff<B>` the default
//! body differentiates by itself. The trait lives in this crate beside all of its impls because
//! Rust's orphan rule (E0117) rejects an impl of another crate's trait for Burn's backend types;
//! the fused kernels replace these bodies for `CubeBackend` and `Fusion` without changing any
//! caller (the pattern of burn-vision 0.21, `ops/base.rs` and `backends/`).
//!
//! ```
//! use burn::backend::NdArray;
//! use burn::tensor::{Distribution, Tensor, TensorPrimitive};
//! use dilated_attention_core::DilatedAttentionConfig;
//! use dilated_attention_kernels::DilatedAttentionBackend;
//!
//! let device = Default::default();
//! let cfg = DilatedAttentionConfig::new(vec![8], vec![2]);
//! let q = Tensor::<NdArray, 4>::random([1, 16, 2, 8], Distribution::Default, &device);
//! let prim = || q.clone().into_primitive().tensor();
//! let (out, lse) =
//!     <NdArray as DilatedAttentionBackend>::dilated_attention_with_lse(prim(), prim(), prim(), None, &cfg)
//!         .unwrap();
//! assert_eq!(Tensor::<NdArray, 4>::from_primitive(TensorPrimitive::Float(out)).dims(), [1, 16, 2, 8]);
//! # let _ = lse;
//! ```

use std::sync::Arc;

use burn::tensor::ops::{BoolTensor, FloatTensor};
use burn::tensor::{
    Bool, DType, Device, Tensor, TensorMetadata, TensorPrimitive, backend::Backend,
};
use dilated_attention_core::{
    DilatedAttentionConfig, DilatedAttentionError, KernelChoice, KernelStrategy, Result,
    SequenceOrder, index_tensor, reference_dilated_attention,
};

use crate::{CustomAttention, kernel_strategy};

/// A Burn backend that can run dilated attention.
///
/// Implemented for `NdArray` (feature `ndarray`), `CubeBackend` (feature `cubecl`), `Fusion<B>`
/// (feature `fusion`) and `Autodiff<B>`. The default bodies run the reference path; `CubeBackend`
/// and `Fusion` run the fused kernels where [`Self::dilated_attention_kernel`] says so,
/// and `Autodiff` over such a backend differentiates through the fused backward kernels.
pub trait DilatedAttentionBackend: Backend {
    /// The backend without gradient tracking: `Self`, or `B` for `Autodiff<B>`. A
    /// [`CustomAttention`] runs on it.
    type Inner: DilatedAttentionBackend;

    /// A float primitive as the inner backend's (detached from the autodiff graph).
    fn inner_float(tensor: FloatTensor<Self>) -> FloatTensor<Self::Inner>;

    /// A bool primitive as the inner backend's.
    fn inner_bool(tensor: BoolTensor<Self>) -> BoolTensor<Self::Inner>;

    /// The inner backend's device for `device`.
    fn inner_device(device: &Device<Self>) -> Device<Self::Inner>;

    /// Runs `function` forward; under `Autodiff` its own backward becomes the backward step of
    /// both outputs (see [`CustomAttention`]).
    ///
    /// # Errors
    /// The forward's errors.
    fn custom_attention(
        function: Arc<dyn CustomAttention<Self::Inner>>,
        query: FloatTensor<Self>,
        key: FloatTensor<Self>,
        value: FloatTensor<Self>,
    ) -> Result<(FloatTensor<Self>, FloatTensor<Self>)>;

    /// Dilated attention with the per-query log-sum-exp, on primitives.
    ///
    /// # Shapes
    /// - `query`, `key`, `value`: `[batch, seq, heads, head_dim]`
    /// - `key_padding_mask`: `[batch, seq]`, true = padded key
    /// - returns the output `[batch, seq, heads, head_dim]` and the log-sum-exp `[batch, seq, heads]`
    ///   (`-inf` where a query sees no key), both in the query's dtype.
    ///
    /// # Errors
    /// Config and shape errors as values (see
    /// [`reference_dilated_attention`](dilated_attention_core::reference_dilated_attention));
    /// [`DilatedAttentionError::KernelUnavailable`] when the config forces a fused family the
    /// backend cannot run (see [`Self::dilated_attention_kernel`]).
    fn dilated_attention_with_lse(
        query: FloatTensor<Self>,
        key: FloatTensor<Self>,
        value: FloatTensor<Self>,
        key_padding_mask: Option<BoolTensor<Self>>,
        config: &DilatedAttentionConfig,
    ) -> Result<(FloatTensor<Self>, FloatTensor<Self>)> {
        without_kernels(config)?;
        reference_with_lse::<Self>(query, key, value, key_padding_mask, config)
    }

    /// [`Self::dilated_attention_with_lse`] along a [`SequenceOrder`]: equal to gathering the
    /// inputs (and the mask) along `order`, attending, and scattering the output and the
    /// log-sum-exp back, so both come back in the inputs' layout. Backends with kernels pass the
    /// order to them (each row read and written at its token's place, no copy); the default body
    /// gathers ([`reference_along_order`]).
    ///
    /// # Errors
    /// Those of [`Self::dilated_attention_with_lse`], and
    /// [`SequenceMismatch`](DilatedAttentionError::SequenceMismatch) when the order's length is
    /// not the sequence's.
    fn dilated_attention_along_order(
        query: FloatTensor<Self>,
        key: FloatTensor<Self>,
        value: FloatTensor<Self>,
        key_padding_mask: Option<BoolTensor<Self>>,
        config: &DilatedAttentionConfig,
        order: &SequenceOrder,
    ) -> Result<(FloatTensor<Self>, FloatTensor<Self>)> {
        without_kernels(config)?;
        reference_along_order::<Self>(query, key, value, key_padding_mask, config, order)
    }

    /// Which kernel family, with which product precision, runs a call with inputs of shape
    /// `dims` (`[batch, seq, heads, head_dim]`) and `dtype` on `device` with `config`: the
    /// config's `kernel_strategy` (or the `DILATED_ATTENTION_KERNEL` override) resolved against
    /// what the backend and the device can run. Every call of this trait's attention methods
    /// runs what this answers. The default body (backends without kernels) answers the
    /// reference path.
    ///
    /// # Errors
    /// [`DilatedAttentionError::KernelUnavailable`] when the strategy forces a family that
    /// cannot run the call; [`DilatedAttentionError::InvalidEnvironment`] for an unknown value of
    /// the override.
    fn dilated_attention_kernel(
        dims: [usize; 4],
        dtype: DType,
        device: &Device<Self>,
        config: &DilatedAttentionConfig,
    ) -> Result<KernelChoice> {
        let _ = (dims, dtype, device);
        without_kernels(config)
    }

    /// The largest buffer, in bytes, the backend allocates at once on `device`, when it knows
    /// one (the CubeCL runtimes: the client's largest memory page). The public calls check
    /// their largest buffer against it before anything is queued and return
    /// [`DilatedAttentionError::AllocationTooLarge`] rather than let the allocation fail on the
    /// device's thread. Default: no limit known.
    fn max_allocation_bytes(device: &Device<Self>) -> Option<u64> {
        let _ = device;
        None
    }

    /// The fused forward: the output in the query's dtype and the log-sum-exp in `f32` (the
    /// precision the backward needs), along `order` when given (see
    /// [`Self::dilated_attention_along_order`]). Shapes as in [`Self::dilated_attention_with_lse`].
    ///
    /// # Errors
    /// [`DilatedAttentionError::Unsupported`] when the backend has no kernels for the call (see
    /// [`Self::dilated_attention_kernel`]); shape and config errors.
    fn fused_dilated_attention_forward(
        query: FloatTensor<Self>,
        key: FloatTensor<Self>,
        value: FloatTensor<Self>,
        key_padding_mask: Option<BoolTensor<Self>>,
        config: &DilatedAttentionConfig,
        order: Option<&SequenceOrder>,
    ) -> Result<(FloatTensor<Self>, FloatTensor<Self>)> {
        let _ = (query, key, value, key_padding_mask, config, order);
        Err(no_kernels())
    }

    /// The fused backward (FlashAttention-2 with recomputation): the gradients of `query`, `key`
    /// and `value` from the forward's inputs, its output and `f32` LSE, the output's gradient and,
    /// when the LSE was used, the LSE's gradient (all in `inputs`); along the forward's `order`.
    ///
    /// # Errors
    /// As [`Self::fused_dilated_attention_forward`].
    fn fused_dilated_attention_backward(
        inputs: FusedBackwardInputs<Self>,
        config: &DilatedAttentionConfig,
        order: Option<&SequenceOrder>,
    ) -> Result<[FloatTensor<Self>; 3]> {
        let _ = (inputs, config, order);
        Err(no_kernels())
    }
}

/// What the fused backward takes: the forward's inputs and results, and the gradients that
/// reach them. Shapes as in [`DilatedAttentionBackend::dilated_attention_with_lse`].
#[derive(Debug, Clone)]
pub struct FusedBackwardInputs<B: Backend> {
    /// The forward's query.
    pub query: FloatTensor<B>,
    /// The forward's key.
    pub key: FloatTensor<B>,
    /// The forward's value.
    pub value: FloatTensor<B>,
    /// The forward's key padding mask (true = padded).
    pub key_padding_mask: Option<BoolTensor<B>>,
    /// The forward's output.
    pub output: FloatTensor<B>,
    /// The forward's log-sum-exp, `f32`.
    pub lse: FloatTensor<B>,
    /// The output's gradient (`None`: zero).
    pub grad_output: Option<FloatTensor<B>>,
    /// The log-sum-exp's gradient, when the LSE was used.
    pub grad_lse: Option<FloatTensor<B>>,
}

/// The [`DilatedAttentionBackend`] items of a backend without gradient tracking: it is its own
/// inner backend, and a custom attention is its forward.
#[allow(unused_macros)] // used only by the impls that the enabled features compile
macro_rules! untracked_backend_items {
    () => {
        type Inner = Self;

        fn inner_float(
            tensor: burn::tensor::ops::FloatTensor<Self>,
        ) -> burn::tensor::ops::FloatTensor<Self> {
            tensor
        }

        fn inner_bool(
            tensor: burn::tensor::ops::BoolTensor<Self>,
        ) -> burn::tensor::ops::BoolTensor<Self> {
            tensor
        }

        fn inner_device(device: &burn::tensor::Device<Self>) -> burn::tensor::Device<Self> {
            device.clone()
        }

        fn custom_attention(
            function: std::sync::Arc<dyn $crate::CustomAttention<Self>>,
            query: burn::tensor::ops::FloatTensor<Self>,
            key: burn::tensor::ops::FloatTensor<Self>,
            value: burn::tensor::ops::FloatTensor<Self>,
        ) -> dilated_attention_core::Result<(
            burn::tensor::ops::FloatTensor<Self>,
            burn::tensor::ops::FloatTensor<Self>,
        )> {
            function.forward(query, key, value)
        }
    };
}
#[allow(unused_imports)]
pub(crate) use untracked_backend_items;

/// The answer of a backend without kernels: the reference path, unless the strategy forces a
/// fused family.
///
/// # Errors
/// [`DilatedAttentionError::KernelUnavailable`] for a forced fused family;
/// [`DilatedAttentionError::InvalidEnvironment`] as [`kernel_strategy`].
pub(crate) fn without_kernels(config: &DilatedAttentionConfig) -> Result<KernelChoice> {
    match kernel_strategy(config)? {
        KernelStrategy::Auto | KernelStrategy::Reference => Ok(KernelChoice::REFERENCE),
        forced => Err(DilatedAttentionError::KernelUnavailable {
            strategy: forced,
            reason: "this backend has no fused kernels (they run on burn's CubeCL backends: \
                     Cuda, Wgpu)"
                .into(),
        }),
    }
}

fn no_kernels() -> DilatedAttentionError {
    DilatedAttentionError::Unsupported {
        kind: "fused dilated attention".into(),
        reason: "this backend has no fused kernels; use dilated_attention_with_lse".into(),
    }
}

/// The reference path on any backend's primitives: the default body of
/// [`DilatedAttentionBackend::dilated_attention_with_lse`], also used by the impls with kernels
/// for the calls their kernels do not take.
///
/// # Errors
/// As [`reference_dilated_attention`].
pub fn reference_with_lse<B: Backend>(
    query: FloatTensor<B>,
    key: FloatTensor<B>,
    value: FloatTensor<B>,
    key_padding_mask: Option<BoolTensor<B>>,
    config: &DilatedAttentionConfig,
) -> Result<(FloatTensor<B>, FloatTensor<B>)> {
    let float = |t: FloatTensor<B>| Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(t));
    let mask = key_padding_mask.map(Tensor::<B, 2, Bool>::from_primitive);
    let (out, lse) =
        reference_dilated_attention(float(query), float(key), float(value), mask, config)?;
    Ok((out.into_primitive().tensor(), lse.into_primitive().tensor()))
}

/// The reference path along a [`SequenceOrder`] on any backend's primitives: gathers the inputs
/// and the mask along the order (`select` on the sequence axis), runs [`reference_with_lse`],
/// and gathers the output and the log-sum-exp back with the inverse order. The default body of
/// [`DilatedAttentionBackend::dilated_attention_along_order`].
///
/// # Errors
/// As [`reference_with_lse`], and a length mismatch of the order.
pub fn reference_along_order<B: Backend>(
    query: FloatTensor<B>,
    key: FloatTensor<B>,
    value: FloatTensor<B>,
    key_padding_mask: Option<BoolTensor<B>>,
    config: &DilatedAttentionConfig,
    order: &SequenceOrder,
) -> Result<(FloatTensor<B>, FloatTensor<B>)> {
    let float = |t: FloatTensor<B>| Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(t));
    let query = float(query);
    match query.shape().as_slice() {
        [_, seq_len, _, _] => order.check_len(*seq_len)?,
        // the reference path reports the rank error
        _ => {
            return reference_with_lse::<B>(
                query.into_primitive().tensor(),
                key,
                value,
                key_padding_mask,
                config,
            );
        }
    }
    let device = query.device();
    let along = index_tensor::<B>(order.tokens().iter().map(|&t| t as usize), &device);
    let back = index_tensor::<B>(order.positions_of_tokens(), &device);
    let gather = |t: Tensor<B, 4>| t.select(1, along.clone()).into_primitive().tensor();
    let mask = key_padding_mask.map(|m| {
        // 0/1 floats through the gather (see core's note on WGPU boolean masks)
        Tensor::<B, 2, Bool>::from_primitive(m)
            .float()
            .select(1, along.clone())
            .greater_elem(0.5)
            .into_primitive()
    });
    let (output, lse) = reference_with_lse::<B>(
        gather(query),
        gather(float(key)),
        gather(float(value)),
        mask,
        config,
    )?;
    let output = float(output).select(1, back.clone());
    let lse = Tensor::<B, 3>::from_primitive(TensorPrimitive::Float(lse)).select(1, back);
    Ok((
        output.into_primitive().tensor(),
        lse.into_primitive().tensor(),
    ))
}

/// The dims of a rank-4 primitive, or `None` (the reference path then reports the rank error).
pub(crate) fn dims4(tensor: &impl TensorMetadata) -> Option<[usize; 4]> {
    tensor.shape().as_slice().try_into().ok()
}

/// The body of `dilated_attention_with_lse` (and `_along_order`) for backends with kernels: the
/// fused forward (its `f32` LSE cast to the query's dtype) when
/// [`DilatedAttentionBackend::dilated_attention_kernel`] picks a fused family, else the
/// reference path (gathering along `order`, when given).
#[cfg(any(feature = "cubecl", feature = "fusion"))]
pub(crate) fn fused_or_reference<B: DilatedAttentionBackend>(
    query: FloatTensor<B>,
    key: FloatTensor<B>,
    value: FloatTensor<B>,
    key_padding_mask: Option<BoolTensor<B>>,
    config: &DilatedAttentionConfig,
    order: Option<&SequenceOrder>,
) -> Result<(FloatTensor<B>, FloatTensor<B>)> {
    if kernel_of::<B>(&query, config)?.is_fused() {
        let dtype = query.dtype();
        let (output, lse) =
            B::fused_dilated_attention_forward(query, key, value, key_padding_mask, config, order)?;
        let lse = if dtype == DType::F32 {
            lse
        } else {
            B::float_cast(lse, burn::tensor::FloatDType::from(dtype))
        };
        Ok((output, lse))
    } else {
        match order {
            Some(order) => {
                reference_along_order::<B>(query, key, value, key_padding_mask, config, order)
            }
            None => reference_with_lse::<B>(query, key, value, key_padding_mask, config),
        }
    }
}

/// [`DilatedAttentionBackend::dilated_attention_kernel`] for a call with `query`; the reference
/// path (which reports the rank error) for a query that is not of rank 4.
///
/// # Errors
/// As [`DilatedAttentionBackend::dilated_attention_kernel`].
pub(crate) fn kernel_of<B: DilatedAttentionBackend>(
    query: &FloatTensor<B>,
    config: &DilatedAttentionConfig,
) -> Result<KernelChoice> {
    match dims4(query) {
        Some(dims) => {
            B::dilated_attention_kernel(dims, query.dtype(), &B::float_device(query), config)
        }
        None => Ok(KernelChoice::REFERENCE),
    }
}

/// The checks of a fused call, on dims only (so the fusion layer can run them before queueing):
/// q/k/v shapes, the key padding mask's full shape (rank included), the config against the
/// sequence and head count, and the sequence order's length.
///
/// # Errors
/// Those of `AttentionShape::check_qkv`, [`AttentionShape::check_key_padding_mask`] and
/// [`DilatedIndexPlan::new`].
#[cfg(any(feature = "cubecl", feature = "fusion"))]
pub(crate) fn check_fused_call(
    query: &[usize],
    key: &[usize],
    value: &[usize],
    key_padding_mask: Option<&[usize]>,
    config: &DilatedAttentionConfig,
    order: Option<&SequenceOrder>,
) -> Result<dilated_attention_core::AttentionShape> {
    let shape = dilated_attention_core::AttentionShape::check_qkv(query, key, value)?;
    if let Some(mask) = key_padding_mask {
        shape.check_key_padding_mask(mask)?;
    }
    if let Some(order) = order {
        order.check_len(shape.seq_len)?;
    }
    dilated_attention_core::DilatedIndexPlan::new(config, shape.seq_len, shape.num_heads)?;
    Ok(shape)
}
