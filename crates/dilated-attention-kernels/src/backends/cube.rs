//! `CubeBackend` (CUDA, WGPU and the other CubeCL runtimes): the fused kernels of
//! [`crate::fused`], and the reference path for the calls they do not take.

use burn::tensor::ops::{BoolTensor, BoolTensorOps, FloatTensor};
use burn::tensor::{DType, FloatDType, TensorMetadata};
use burn_cubecl::kernel::cast;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use dilated_attention_core::{AttentionShape, DilatedAttentionConfig, Result};

use crate::fused::launch;
use crate::{DilatedAttentionBackend, reference_with_lse};

/// The dims of a rank-4 primitive, or `None` (the reference path then reports the rank error).
pub(crate) fn dims4(tensor: &impl TensorMetadata) -> Option<[usize; 4]> {
    tensor.shape().as_slice().try_into().ok()
}

impl<R, F, I, BT> DilatedAttentionBackend for CubeBackend<R, F, I, BT>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    fn dilated_attention_with_lse(
        query: FloatTensor<Self>,
        key: FloatTensor<Self>,
        value: FloatTensor<Self>,
        key_padding_mask: Option<BoolTensor<Self>>,
        config: &DilatedAttentionConfig,
    ) -> Result<(FloatTensor<Self>, FloatTensor<Self>)> {
        match dims4(&query) {
            Some(dims) if Self::fused_dilated_attention_available(dims, config) => {
                let dtype = query.dtype;
                let (output, lse) = Self::fused_dilated_attention_forward(
                    query,
                    key,
                    value,
                    key_padding_mask,
                    config,
                )?;
                let lse = if dtype == DType::F32 {
                    lse
                } else {
                    cast(lse, dtype)
                };
                Ok((output, lse))
            }
            _ => reference_with_lse::<Self>(query, key, value, key_padding_mask, config),
        }
    }

    fn fused_dilated_attention_available(
        dims: [usize; 4],
        config: &DilatedAttentionConfig,
    ) -> bool {
        AttentionShape::from_dims("query", &dims)
            .is_ok_and(|shape| launch::fused_supported(&shape, config, false))
    }

    fn fused_dilated_attention_forward(
        query: FloatTensor<Self>,
        key: FloatTensor<Self>,
        value: FloatTensor<Self>,
        key_padding_mask: Option<BoolTensor<Self>>,
        config: &DilatedAttentionConfig,
    ) -> Result<(FloatTensor<Self>, FloatTensor<Self>)> {
        let dtype = FloatDType::from(query.dtype);
        let padding = key_padding_mask.map(|mask| Self::bool_into_float(mask, dtype));
        launch::forward(query, key, value, padding, config)
    }
}
