//! `CubeBackend` (CUDA, WGPU and the other CubeCL runtimes): the fused kernels of
//! [`crate::fused`], and the reference path for the calls they do not take.

use burn::tensor::ops::{BoolTensor, BoolTensorOps, FloatTensor, FloatTensorOps};
use burn::tensor::{DType, FloatDType, TensorMetadata};
use burn_cubecl::cubecl::prelude::ComputeClient;
use burn_cubecl::kernel::cast;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use dilated_attention_core::{
    DilatedAttentionConfig, DilatedAttentionError, KernelChoice, Result, SequenceOrder,
};

use crate::backend::{fused_or_reference, untracked_backend_items};
use crate::fused::backward::{BackwardInputs, backward};
use crate::fused::forward::forward;
use crate::fused::strategy::select;
use crate::overrides::Submit;
use crate::{DilatedAttentionBackend, FusedBackwardInputs};

impl<R, F, I, BT> DilatedAttentionBackend for CubeBackend<R, F, I, BT>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    untracked_backend_items!();

    fn dilated_attention_with_lse(
        query: FloatTensor<Self>,
        key: FloatTensor<Self>,
        value: FloatTensor<Self>,
        key_padding_mask: Option<BoolTensor<Self>>,
        config: &DilatedAttentionConfig,
    ) -> Result<(FloatTensor<Self>, FloatTensor<Self>)> {
        fused_or_reference::<Self>(query, key, value, key_padding_mask, config, None)
    }

    fn dilated_attention_along_order(
        query: FloatTensor<Self>,
        key: FloatTensor<Self>,
        value: FloatTensor<Self>,
        key_padding_mask: Option<BoolTensor<Self>>,
        config: &DilatedAttentionConfig,
        order: &SequenceOrder,
    ) -> Result<(FloatTensor<Self>, FloatTensor<Self>)> {
        fused_or_reference::<Self>(query, key, value, key_padding_mask, config, Some(order))
    }

    fn dilated_attention_kernel(
        dims: [usize; 4],
        dtype: DType,
        device: &burn::tensor::Device<Self>,
        config: &DilatedAttentionConfig,
    ) -> Result<KernelChoice> {
        Ok(select(&R::client(device), dims, dtype, config)?.choice())
    }

    fn max_allocation_bytes(device: &burn::tensor::Device<Self>) -> Option<u64> {
        Some(R::client(device).properties().memory.max_page_size)
    }

    fn fused_dilated_attention_forward(
        query: FloatTensor<Self>,
        key: FloatTensor<Self>,
        value: FloatTensor<Self>,
        key_padding_mask: Option<BoolTensor<Self>>,
        config: &DilatedAttentionConfig,
        order: Option<&SequenceOrder>,
    ) -> Result<(FloatTensor<Self>, FloatTensor<Self>)> {
        let dtype = FloatDType::from(query.dtype);
        let padding = key_padding_mask.map(|mask| Self::bool_into_float(mask, dtype));
        let client = query.client.clone();
        let submit = Submit::from_env()?;
        let outputs = forward(query, key, value, padding, config, order)?;
        submit_queued_launches(&client, submit, "the fused forward")?;
        Ok(outputs)
    }

    fn fused_dilated_attention_backward(
        inputs: FusedBackwardInputs<Self>,
        config: &DilatedAttentionConfig,
        order: Option<&SequenceOrder>,
    ) -> Result<[FloatTensor<Self>; 3]> {
        let FusedBackwardInputs {
            query,
            key,
            value,
            key_padding_mask,
            output,
            lse,
            grad_output,
            grad_lse,
        } = inputs;
        let dtype = FloatDType::from(query.dtype);
        let padding = key_padding_mask.map(|mask| Self::bool_into_float(mask, dtype));
        let grad_output =
            grad_output.unwrap_or_else(|| Self::float_zeros(output.shape(), &output.device, dtype));
        let grad_lse = grad_lse.map(|grad| {
            if grad.dtype == DType::F32 {
                grad
            } else {
                cast(grad, DType::F32)
            }
        });
        let inputs = BackwardInputs {
            output,
            lse,
            grad_output,
            grad_lse,
        };
        let client = query.client.clone();
        let submit = Submit::from_env()?;
        let gradients = backward(query, key, value, padding, inputs, config, order)?;
        submit_queued_launches(&client, submit, "the fused backward")?;
        Ok(gradients)
    }
}

/// Unless `submit` is lazy ([`crate::SUBMIT_ENV`]), hands the launches queued so far to the
/// device (CubeCL's queue otherwise holds them until the caller's next sync). CubeCL 0.10 has no
/// public flush that does not wait for its device thread.
///
/// # Errors
/// [`DilatedAttentionError::Device`] when the flush returns the stream's errors: CubeCL hands
/// them to whoever flushes, so the caller's next sync would no longer see them.
fn submit_queued_launches<R: CubeRuntime>(
    client: &ComputeClient<R>,
    submit: Submit,
    operation: &'static str,
) -> Result<()> {
    if submit == Submit::Lazy {
        return Ok(());
    }
    client
        .flush()
        .map_err(|error| DilatedAttentionError::Device {
            operation,
            reason: error.to_string(),
        })
}
