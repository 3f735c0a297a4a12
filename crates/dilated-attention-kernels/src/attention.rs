//! [`DilatedAttention`]: the dilated attention module over `[batch, seq, heads, head_dim]`.
//!
//! ```
//! use burn::backend::NdArray;
//! use burn::tensor::{Distribution, Tensor};
//! use dilated_attention_core::{DilatedAttentionConfig, DilationMode};
//! use dilated_attention_kernels::{DilatedAttention, DilatedAttentionInit};
//!
//! let device = Default::default();
//! let attn: DilatedAttention<NdArray> = DilatedAttentionConfig::new(vec![32, 64], vec![1, 2])
//!     .with_mode(DilationMode::LongNet)
//!     .with_causal(true)
//!     .init(&device);
//! let q = Tensor::<NdArray, 4>::random([1, 100, 4, 16], Distribution::Default, &device);
//! let out = attn.forward(q.clone(), q.clone(), q.clone());
//! assert_eq!(out.dims(), [1, 100, 4, 16]);
//!
//! // shape errors are values with `try_forward`
//! let k = Tensor::<NdArray, 4>::random([1, 99, 4, 16], Distribution::Default, &device);
//! assert!(attn.try_forward(q.clone(), k, q).is_err());
//! ```

use core::marker::PhantomData;

use burn::module::Module;
use burn::tensor::{Bool, Tensor, backend::Backend};
use dilated_attention_core::{DilatedAttentionConfig, Result};

use crate::{DilatedAttentionBackend, dilated_attention_with_lse_masked};

/// Dilated attention (LongNet sec. 2.2-2.3) as a Burn module without parameters.
///
/// Built from a [`DilatedAttentionConfig`] with [`DilatedAttentionInit::init`]; the config is
/// validated once there and kept as a plain (not persisted) field.
#[derive(Module, Debug)]
pub struct DilatedAttention<B: Backend> {
    #[module(skip)]
    config: DilatedAttentionConfig,
    _backend: PhantomData<B>,
}

/// `init` / `try_init` for [`DilatedAttentionConfig`] (the config lives in the core crate, the
/// module here, so the constructor is an extension trait; the prelude imports it).
pub trait DilatedAttentionInit {
    /// Validates the config and builds the module.
    ///
    /// # Errors
    /// Any error of [`DilatedAttentionConfig::validate`].
    fn try_init<B: Backend>(&self, device: &B::Device) -> Result<DilatedAttention<B>>;

    /// Builds the module.
    ///
    /// # Panics
    /// If the config is invalid, with the message of [`DilatedAttentionInit::try_init`]'s error.
    fn init<B: Backend>(&self, device: &B::Device) -> DilatedAttention<B> {
        self.try_init(device).unwrap_or_else(|e| panic!("{e}"))
    }
}

impl DilatedAttentionInit for DilatedAttentionConfig {
    fn try_init<B: Backend>(&self, _device: &B::Device) -> Result<DilatedAttention<B>> {
        self.validate()?;
        Ok(DilatedAttention {
            config: self.clone(),
            _backend: PhantomData,
        })
    }
}

impl<B: Backend> DilatedAttention<B> {
    /// The config the module was built from.
    pub fn config(&self) -> &DilatedAttentionConfig {
        &self.config
    }
}

impl<B: DilatedAttentionBackend> DilatedAttention<B> {
    /// Attention output.
    ///
    /// # Shapes
    /// `query`, `key`, `value`: `[batch, seq, heads, head_dim]` -> `[batch, seq, heads, head_dim]`
    ///
    /// # Panics
    /// On mismatched shapes or a zero dimension, with the message of
    /// [`DilatedAttention::try_forward`]'s error.
    pub fn forward(
        &self,
        query: Tensor<B, 4>,
        key: Tensor<B, 4>,
        value: Tensor<B, 4>,
    ) -> Tensor<B, 4> {
        self.try_forward(query, key, value)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Attention output, with shape errors as values.
    ///
    /// # Errors
    /// See [`dilated_attention_with_lse`](crate::dilated_attention_with_lse).
    pub fn try_forward(
        &self,
        query: Tensor<B, 4>,
        key: Tensor<B, 4>,
        value: Tensor<B, 4>,
    ) -> Result<Tensor<B, 4>> {
        self.try_forward_with_lse(query, key, value, None)
            .map(|(out, _)| out)
    }

    /// Attention output with a key padding mask (`[batch, seq]`, true = padded key).
    ///
    /// # Errors
    /// See [`dilated_attention_with_lse_masked`].
    pub fn try_forward_masked(
        &self,
        query: Tensor<B, 4>,
        key: Tensor<B, 4>,
        value: Tensor<B, 4>,
        key_padding_mask: Tensor<B, 2, Bool>,
    ) -> Result<Tensor<B, 4>> {
        self.try_forward_with_lse(query, key, value, Some(key_padding_mask))
            .map(|(out, _)| out)
    }

    /// Output and per-query log-sum-exp `[batch, seq, heads]`, optionally with a key padding mask.
    ///
    /// # Errors
    /// See [`dilated_attention_with_lse_masked`].
    pub fn try_forward_with_lse(
        &self,
        query: Tensor<B, 4>,
        key: Tensor<B, 4>,
        value: Tensor<B, 4>,
        key_padding_mask: Option<Tensor<B, 2, Bool>>,
    ) -> Result<(Tensor<B, 4>, Tensor<B, 3>)> {
        dilated_attention_with_lse_masked(query, key, value, key_padding_mask, &self.config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::tensor::{Distribution, Tolerance};
    use dilated_attention_core::{DilatedAttentionError, reference_dilated_attention};

    type B = NdArray;

    #[test]
    fn try_init_rejects_zero_dilation() {
        let err = DilatedAttentionConfig::new(vec![4], vec![0])
            .try_init::<B>(&Default::default())
            .unwrap_err();
        assert_eq!(err, DilatedAttentionError::ZeroDilation { index: 0 });
    }

    #[test]
    #[should_panic(expected = "segment_lengths[0] is 0")]
    fn init_panics_with_the_error_message() {
        let _ = DilatedAttentionConfig::new(vec![0], vec![1]).init::<B>(&Default::default());
    }

    #[test]
    fn module_forward_equals_reference() {
        let device = Default::default();
        let cfg = DilatedAttentionConfig::new(vec![8, 16], vec![1, 4]).with_causal(true);
        let attn = cfg.init::<B>(&device);
        let q = Tensor::<B, 4>::random([2, 29, 3, 8], Distribution::Normal(0.0, 1.0), &device);
        let k = Tensor::<B, 4>::random([2, 29, 3, 8], Distribution::Normal(0.0, 1.0), &device);
        let v = Tensor::<B, 4>::random([2, 29, 3, 8], Distribution::Normal(0.0, 1.0), &device);
        let out = attn.forward(q.clone(), k.clone(), v.clone());
        let (want, _) = reference_dilated_attention(q, k, v, None, &cfg).unwrap();
        out.into_data()
            .assert_approx_eq::<f32>(&want.into_data(), Tolerance::rel_abs(1e-6, 1e-7));
    }

    #[test]
    fn module_records_no_parameters() {
        let attn = DilatedAttentionConfig::new(vec![8], vec![1]).init::<B>(&Default::default());
        assert_eq!(attn.num_params(), 0);
        assert_eq!(attn.config().segment_lengths, vec![8]);
    }
}
