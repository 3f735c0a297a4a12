//! [`DilatedTransformerLayer`]: a pre-norm transformer layer around multihead dilated attention,
//! built as an encoder layer (bidirectional) or a decoder layer (causal, decoder-only as in a
//! LongNet language model).
//!
//! ```
//! use burn::backend::NdArray;
//! use burn::tensor::{Distribution, Tensor};
//! use dilated_attention_core::DilatedAttentionConfig;
//! use dilated_attention_multihead::DilatedTransformerLayerConfig;
//!
//! let device = Default::default();
//! let attention = DilatedAttentionConfig::new(vec![16, 32], vec![1, 2]);
//! let layer = DilatedTransformerLayerConfig::decoder(64, 4, 256, attention).init::<NdArray>(&device);
//! assert!(layer.is_causal());
//! let x = Tensor::<NdArray, 3>::random([1, 40, 64], Distribution::Default, &device);
//! assert_eq!(layer.forward(x).dims(), [1, 40, 64]);
//! ```
//!
//! Dilated attention attends within segments of one sequence, so there is no cross-attention
//! sub-layer: the decoder layer is the decoder-only layer of LongNet's language model.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, LayerNorm, LayerNormConfig};
use burn::tensor::{Bool, Tensor, backend::Backend};
use dilated_attention_core::{
    DilatedAttentionConfig, DilatedAttentionError, Result, ensure_parameter_dtype,
};
use dilated_attention_kernels::DilatedAttentionBackend;

use crate::{
    FeedForward, FeedForwardConfig, MultiheadDilatedAttention, MultiheadDilatedAttentionConfig,
};

/// Configuration of [`DilatedTransformerLayer`]. Build it with [`Self::encoder`] or
/// [`Self::decoder`], which set the attention's `causal` flag.
#[derive(Config, Debug)]
pub struct DilatedTransformerLayerConfig {
    /// Model width.
    pub embed_dim: usize,
    /// Number of heads.
    pub num_heads: usize,
    /// Hidden width of the feed-forward block.
    pub ffn_dim: usize,
    /// The dilated attention (its `causal` flag makes the layer a decoder layer).
    pub attention: DilatedAttentionConfig,
    /// Dropout on the residual branches and inside the feed-forward block. Default: 0.
    #[config(default = 0.0)]
    pub dropout: f64,
    /// Epsilon of every LayerNorm. Default: 1e-5.
    #[config(default = 1e-5)]
    pub layer_norm_eps: f64,
    /// MAGNETO sub-LayerNorms in attention and feed-forward. Default: true.
    #[config(default = true)]
    pub sub_layer_norm: bool,
    /// MAGNETO init gain (see [`MultiheadDilatedAttentionConfig::gamma_init`]). Default: 1.
    #[config(default = 1.0)]
    pub gamma_init: f64,
    /// Rotary position embedding in the attention. Default: false.
    #[config(default = false)]
    pub rotary: bool,
}

/// `x + drop(attn(LN(x)))`, then `x + drop(ffn(LN(x)))` (pre-norm).
#[derive(Module, Debug)]
pub struct DilatedTransformerLayer<B: Backend> {
    /// Norm before attention.
    pub attention_norm: LayerNorm<B>,
    /// Self-attention.
    pub attention: MultiheadDilatedAttention<B>,
    /// Norm before the feed-forward block.
    pub ffn_norm: LayerNorm<B>,
    /// Feed-forward block.
    pub ffn: FeedForward<B>,
    dropout: Dropout,
}

impl DilatedTransformerLayerConfig {
    /// An encoder layer: bidirectional attention (`causal = false`).
    pub fn encoder(
        embed_dim: usize,
        num_heads: usize,
        ffn_dim: usize,
        attention: DilatedAttentionConfig,
    ) -> Self {
        Self::new(embed_dim, num_heads, ffn_dim, attention.with_causal(false))
    }

    /// A decoder (decoder-only) layer: causal attention.
    pub fn decoder(
        embed_dim: usize,
        num_heads: usize,
        ffn_dim: usize,
        attention: DilatedAttentionConfig,
    ) -> Self {
        Self::new(embed_dim, num_heads, ffn_dim, attention.with_causal(true))
    }

    fn attention_config(&self) -> MultiheadDilatedAttentionConfig {
        MultiheadDilatedAttentionConfig::new(self.embed_dim, self.num_heads, self.attention.clone())
            .with_sub_layer_norm(self.sub_layer_norm)
            .with_layer_norm_eps(self.layer_norm_eps)
            .with_gamma_init(self.gamma_init)
            .with_rotary(self.rotary)
    }

    fn ffn_config(&self) -> FeedForwardConfig {
        FeedForwardConfig::new(self.embed_dim, self.ffn_dim)
            .with_dropout(self.dropout)
            .with_sub_layer_norm(self.sub_layer_norm)
            .with_layer_norm_eps(self.layer_norm_eps)
            .with_gamma_init(self.gamma_init)
    }

    /// Checks every field.
    ///
    /// # Errors
    /// Those of the attention and feed-forward configs.
    pub fn validate(&self) -> Result<()> {
        self.attention_config().validate()?;
        self.ffn_config().validate()
    }

    /// Validates and builds the layer.
    ///
    /// # Errors
    /// Those of [`Self::validate`].
    pub fn try_init<B: Backend>(&self, device: &B::Device) -> Result<DilatedTransformerLayer<B>> {
        self.validate()?;
        let norm = || {
            LayerNormConfig::new(self.embed_dim)
                .with_epsilon(self.layer_norm_eps)
                .init(device)
        };
        Ok(DilatedTransformerLayer {
            attention_norm: norm(),
            attention: self.attention_config().try_init(device)?,
            ffn_norm: norm(),
            ffn: self.ffn_config().try_init(device)?,
            dropout: DropoutConfig::new(self.dropout).init(),
        })
    }

    /// Builds the layer.
    ///
    /// # Panics
    /// If the config is invalid, with the message of [`Self::try_init`]'s error.
    pub fn init<B: Backend>(&self, device: &B::Device) -> DilatedTransformerLayer<B> {
        self.try_init(device).unwrap_or_else(|e| panic!("{e}"))
    }
}

impl<B: Backend> DilatedTransformerLayer<B> {
    /// True for a decoder layer.
    pub fn is_causal(&self) -> bool {
        self.attention.attention_config().causal
    }
}

impl<B: DilatedAttentionBackend> DilatedTransformerLayer<B> {
    /// # Shapes
    /// `[batch, seq, embed_dim]` -> `[batch, seq, embed_dim]`
    ///
    /// # Panics
    /// On bad shapes, with the message of [`Self::try_forward`]'s error.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.try_forward(x, None).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Self::forward`] with errors as values and an optional key padding mask.
    ///
    /// # Errors
    /// [`DilatedAttentionError::EmbedDimMismatch`] and
    /// [`DilatedAttentionError::ParameterDTypeMismatch`] for an `x` the norms cannot take, and
    /// those of [`MultiheadDilatedAttention::try_forward`].
    pub fn try_forward(
        &self,
        x: Tensor<B, 3>,
        key_padding_mask: Option<Tensor<B, 2, Bool>>,
    ) -> Result<Tensor<B, 3>> {
        let gamma = self.attention_norm.gamma.val();
        let [embed_dim] = gamma.dims();
        if x.dims()[2] != embed_dim {
            return Err(DilatedAttentionError::EmbedDimMismatch {
                name: "x",
                expected: embed_dim,
                actual: x.dims()[2],
            });
        }
        ensure_parameter_dtype("x", x.dtype(), gamma.dtype())?;
        let h = self.attention_norm.forward(x.clone());
        let attended = self
            .attention
            .try_forward(h.clone(), h.clone(), h, key_padding_mask)?;
        let x = x + self.dropout.forward(attended);
        let h = self.ffn.forward(self.ffn_norm.forward(x.clone()));
        Ok(x + self.dropout.forward(h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};
    use burn::tensor::Distribution;

    #[test]
    fn encoder_and_decoder_differ_only_in_causality() {
        let attention = DilatedAttentionConfig::new(vec![8], vec![1]).with_causal(true);
        assert!(
            !DilatedTransformerLayerConfig::encoder(16, 2, 32, attention.clone())
                .attention
                .causal
        );
        assert!(
            DilatedTransformerLayerConfig::decoder(16, 2, 32, attention.with_causal(false))
                .attention
                .causal
        );
    }

    #[test]
    fn decoder_layer_output_at_a_position_ignores_later_tokens() {
        let device = Default::default();
        let attention = DilatedAttentionConfig::new(vec![8, 16], vec![1, 2]);
        let layer =
            DilatedTransformerLayerConfig::decoder(16, 2, 32, attention).init::<NdArray>(&device);
        let x = Tensor::<NdArray, 3>::random([1, 20, 16], Distribution::Normal(0.0, 1.0), &device);
        let y = layer.forward(x.clone());
        // change tokens 12.. : outputs 0..12 stay
        let changed = Tensor::cat(
            vec![
                x.clone().narrow(1, 0, 12),
                Tensor::random([1, 8, 16], Distribution::Normal(0.0, 1.0), &device),
            ],
            1,
        );
        let y2 = layer.forward(changed);
        let diff = (y.clone().narrow(1, 0, 12) - y2.clone().narrow(1, 0, 12))
            .abs()
            .max()
            .into_scalar();
        assert!(diff < 1e-5, "{diff}");
        let later = (y.narrow(1, 12, 8) - y2.narrow(1, 12, 8))
            .abs()
            .max()
            .into_scalar();
        assert!(later > 1e-3);
    }

    #[test]
    fn layer_trains_every_parameter() {
        type AD = Autodiff<NdArray>;
        let device = Default::default();
        let attention = DilatedAttentionConfig::new(vec![4, 8], vec![1, 2]);
        let layer = DilatedTransformerLayerConfig::encoder(8, 2, 16, attention).init::<AD>(&device);
        let x = Tensor::<AD, 3>::random([2, 11, 8], Distribution::Normal(0.0, 1.0), &device);
        let grads = layer.forward(x).powf_scalar(2.0).sum().backward();
        let w = layer
            .attention
            .q_proj
            .weight
            .grad(&grads)
            .expect("q_proj grad");
        assert!(w.abs().max().into_scalar() > 0.0);
        let w = layer.ffn.fc1.weight.grad(&grads).expect("fc1 grad");
        assert!(w.abs().max().into_scalar() > 0.0);
    }

    #[test]
    fn an_input_the_norms_cannot_take_is_a_typed_error() {
        let device = Default::default();
        let attention = DilatedAttentionConfig::new(vec![8], vec![1]);
        let layer =
            DilatedTransformerLayerConfig::encoder(16, 2, 32, attention).init::<NdArray>(&device);
        let wide = Tensor::<NdArray, 3>::random([1, 8, 17], Distribution::Default, &device);
        assert!(matches!(
            layer.try_forward(wide, None),
            Err(DilatedAttentionError::EmbedDimMismatch {
                name: "x",
                expected: 16,
                actual: 17
            })
        ));
        let double = Tensor::<NdArray, 3>::random([1, 8, 16], Distribution::Default, &device)
            .cast(burn::tensor::DType::F64);
        assert!(matches!(
            layer.try_forward(double, None),
            Err(DilatedAttentionError::ParameterDTypeMismatch { name: "x", .. })
        ));
    }
}
