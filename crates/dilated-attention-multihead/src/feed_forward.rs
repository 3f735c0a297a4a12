//! [`FeedForward`]: the position-wise MLP of a transformer layer, with MAGNETO's sub-LayerNorm.
//!
//! ```
//! use burn::backend::NdArray;
//! use burn::tensor::{Distribution, Tensor};
//! use dilated_attention_multihead::FeedForwardConfig;
//!
//! let device = Default::default();
//! let ffn = FeedForwardConfig::new(32, 128).init::<NdArray>(&device);
//! let x = Tensor::<NdArray, 3>::random([2, 7, 32], Distribution::Default, &device);
//! assert_eq!(ffn.forward(x).dims(), [2, 7, 32]);
//! ```

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Gelu, LayerNorm, LayerNormConfig, Linear};
use burn::tensor::{Tensor, backend::Backend};
use dilated_attention_core::{Result, ensure_nonzero, ensure_positive, ensure_probability};

use crate::multihead::xavier_linear;

/// Configuration of [`FeedForward`].
#[derive(Config, Debug)]
pub struct FeedForwardConfig {
    /// Model width.
    pub embed_dim: usize,
    /// Hidden width.
    pub hidden_dim: usize,
    /// Dropout after the activation. Default: 0.
    #[config(default = 0.0)]
    pub dropout: f64,
    /// MAGNETO sub-LayerNorm before the second projection. Default: true.
    #[config(default = true)]
    pub sub_layer_norm: bool,
    /// Epsilon of the sub-LayerNorm. Default: 1e-5.
    #[config(default = 1e-5)]
    pub layer_norm_eps: f64,
    /// Xavier-normal gain of both projections (MAGNETO's `gamma`). Default: 1.
    #[config(default = 1.0)]
    pub gamma_init: f64,
}

/// `Linear -> GELU -> dropout -> (LayerNorm) -> Linear`.
#[derive(Module, Debug)]
pub struct FeedForward<B: Backend> {
    /// First projection `[embed_dim, hidden_dim]`.
    pub fc1: Linear<B>,
    /// Second projection `[hidden_dim, embed_dim]`.
    pub fc2: Linear<B>,
    /// Sub-LayerNorm over the hidden width.
    pub norm: Option<LayerNorm<B>>,
    activation: Gelu,
    dropout: Dropout,
}

impl FeedForwardConfig {
    /// Checks every field.
    ///
    /// # Errors
    /// [`DilatedAttentionError::ZeroSize`], [`DilatedAttentionError::InvalidProbability`],
    /// [`DilatedAttentionError::InvalidPositive`].
    pub fn validate(&self) -> Result<()> {
        ensure_nonzero("embed_dim", self.embed_dim)?;
        ensure_nonzero("hidden_dim", self.hidden_dim)?;
        ensure_probability("dropout", self.dropout)?;
        ensure_positive("gamma_init", self.gamma_init)?;
        ensure_positive("layer_norm_eps", self.layer_norm_eps)
    }

    /// Validates and builds the module.
    ///
    /// # Errors
    /// Those of [`FeedForwardConfig::validate`].
    pub fn try_init<B: Backend>(&self, device: &B::Device) -> Result<FeedForward<B>> {
        self.validate()?;
        Ok(FeedForward {
            fc1: xavier_linear(
                self.embed_dim,
                self.hidden_dim,
                true,
                self.gamma_init,
                device,
            ),
            fc2: xavier_linear(
                self.hidden_dim,
                self.embed_dim,
                true,
                self.gamma_init,
                device,
            ),
            norm: self.sub_layer_norm.then(|| {
                LayerNormConfig::new(self.hidden_dim)
                    .with_epsilon(self.layer_norm_eps)
                    .init(device)
            }),
            activation: Gelu::new(),
            dropout: DropoutConfig::new(self.dropout).init(),
        })
    }

    /// Builds the module.
    ///
    /// # Panics
    /// If the config is invalid, with the message of [`Self::try_init`]'s error.
    pub fn init<B: Backend>(&self, device: &B::Device) -> FeedForward<B> {
        self.try_init(device).unwrap_or_else(|e| panic!("{e}"))
    }
}

impl<B: Backend> FeedForward<B> {
    /// # Shapes
    /// `[batch, seq, embed_dim]` -> `[batch, seq, embed_dim]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let mut h = self
            .dropout
            .forward(self.activation.forward(self.fc1.forward(x)));
        if let Some(norm) = &self.norm {
            h = norm.forward(h);
        }
        self.fc2.forward(h)
    }
}
