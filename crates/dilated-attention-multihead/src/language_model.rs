//! [`LongNetLm`]: a decoder-only language model on dilated attention (LongNet sec. 4):
//! token embedding, N pre-norm decoder layers, final LayerNorm, LM head.
//!
//! ```
//! use burn::backend::NdArray;
//! use burn::tensor::{Int, Tensor, TensorData};
//! use dilated_attention_core::DilatedAttentionConfig;
//! use dilated_attention_multihead::LongNetLmConfig;
//!
//! let device = Default::default();
//! let attention = DilatedAttentionConfig::new(vec![8, 16], vec![1, 2]);
//! let lm = LongNetLmConfig::new(100, 32, 4, 2, attention).init::<NdArray>(&device);
//! let tokens = Tensor::<NdArray, 2, Int>::from_data(
//!     TensorData::new((0..40i64).map(|t| t % 100).collect::<Vec<_>>(), [2, 20]),
//!     &device,
//! );
//! assert_eq!(lm.forward(tokens.clone()).dims(), [2, 20, 100]);
//! let loss = lm.try_loss(tokens).unwrap();
//! assert!(loss.into_scalar() > 0.0);
//! ```

use burn::config::Config;
use burn::module::{Initializer, Module};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear};
use burn::tensor::{Int, Tensor, backend::Backend};
use dilated_attention_core::{
    DilatedAttentionConfig, DilatedAttentionError, Result, ensure_nonzero,
};
use dilated_attention_kernels::DilatedAttentionBackend;

use crate::multihead::xavier_linear;
use crate::{DilatedTransformerLayer, DilatedTransformerLayerConfig};

/// Configuration of [`LongNetLm`].
#[derive(Config, Debug)]
pub struct LongNetLmConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Model width.
    pub embed_dim: usize,
    /// Number of heads.
    pub num_heads: usize,
    /// Number of decoder layers.
    pub num_layers: usize,
    /// The dilated attention of every layer (made causal).
    pub attention: DilatedAttentionConfig,
    /// Feed-forward width; `None` means `4 * embed_dim`.
    pub ffn_dim: Option<usize>,
    /// Dropout. Default: 0.
    #[config(default = 0.0)]
    pub dropout: f64,
    /// Rotary position embedding in every attention. Default: true.
    #[config(default = true)]
    pub rotary: bool,
}

/// Decoder-only language model on dilated attention.
#[derive(Module, Debug)]
pub struct LongNetLm<B: Backend> {
    /// Token embedding.
    pub embedding: Embedding<B>,
    /// Decoder layers.
    pub layers: Vec<DilatedTransformerLayer<B>>,
    /// Final LayerNorm.
    pub norm: LayerNorm<B>,
    /// LM head `[embed_dim, vocab_size]`.
    pub head: Linear<B>,
    vocab_size: usize,
}

impl LongNetLmConfig {
    fn layer_config(&self) -> DilatedTransformerLayerConfig {
        // MAGNETO fig. 2, decoder-only: gamma = sqrt(ln(2N)).
        let gamma = (2.0 * self.num_layers.max(1) as f64)
            .ln()
            .sqrt()
            .max(f64::MIN_POSITIVE);
        DilatedTransformerLayerConfig::decoder(
            self.embed_dim,
            self.num_heads,
            self.ffn_dim.unwrap_or(4 * self.embed_dim),
            self.attention.clone(),
        )
        .with_dropout(self.dropout)
        .with_gamma_init(if self.num_layers == 1 { 1.0 } else { gamma })
        .with_rotary(self.rotary)
    }

    /// Checks every field.
    ///
    /// # Errors
    /// [`DilatedAttentionError::ZeroSize`] for `vocab_size` or `num_layers`, and the layer's errors.
    pub fn validate(&self) -> Result<()> {
        ensure_nonzero("vocab_size", self.vocab_size)?;
        ensure_nonzero("num_layers", self.num_layers)?;
        self.layer_config().validate()
    }

    /// Validates and builds the model.
    ///
    /// # Errors
    /// Those of [`Self::validate`].
    pub fn try_init<B: Backend>(&self, device: &B::Device) -> Result<LongNetLm<B>> {
        self.validate()?;
        let layer = self.layer_config();
        Ok(LongNetLm {
            embedding: EmbeddingConfig::new(self.vocab_size, self.embed_dim)
                .with_initializer(Initializer::Normal {
                    mean: 0.0,
                    std: (self.embed_dim as f64).powf(-0.5),
                })
                .init(device),
            layers: (0..self.num_layers)
                .map(|_| layer.try_init(device))
                .collect::<Result<_>>()?,
            norm: LayerNormConfig::new(self.embed_dim).init(device),
            head: xavier_linear(self.embed_dim, self.vocab_size, false, 1.0, device),
            vocab_size: self.vocab_size,
        })
    }

    /// Builds the model.
    ///
    /// # Panics
    /// If the config is invalid, with the message of [`Self::try_init`]'s error.
    pub fn init<B: Backend>(&self, device: &B::Device) -> LongNetLm<B> {
        self.try_init(device).unwrap_or_else(|e| panic!("{e}"))
    }
}

impl<B: DilatedAttentionBackend> LongNetLm<B> {
    /// Next-token logits.
    ///
    /// # Shapes
    /// `tokens`: `[batch, seq]` -> `[batch, seq, vocab_size]`
    ///
    /// # Panics
    /// On token ids outside the vocabulary, with the message of [`Self::try_forward`]'s error.
    pub fn forward(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.try_forward(tokens).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Self::forward`], with bad token ids and shapes as errors. Checking the ids reads two
    /// scalars back from the device.
    ///
    /// # Errors
    /// [`DilatedAttentionError::TokenOutOfRange`], [`DilatedAttentionError::EmptyDimension`].
    pub fn try_forward(&self, tokens: Tensor<B, 2, Int>) -> Result<Tensor<B, 3>> {
        let dims = tokens.dims();
        if let Some(i) = dims.iter().position(|&d| d == 0) {
            return Err(DilatedAttentionError::EmptyDimension {
                name: "tokens",
                dim: ["batch", "seq"][i],
                shape: dims.to_vec(),
            });
        }
        self.check_tokens(&tokens)?;
        let mut x = self.embedding.forward(tokens);
        for layer in &self.layers {
            x = layer.try_forward(x, None)?;
        }
        Ok(self.head.forward(self.norm.forward(x)))
    }

    /// Mean next-token cross-entropy of `tokens` (`[batch, seq]`, seq >= 2): position `t`
    /// predicts token `t + 1`.
    ///
    /// # Errors
    /// Those of [`Self::try_forward`]; [`DilatedAttentionError::ZeroSize`] when `seq < 2`.
    pub fn try_loss(&self, tokens: Tensor<B, 2, Int>) -> Result<Tensor<B, 1>> {
        let [batch, seq] = tokens.dims();
        if seq < 2 {
            return Err(DilatedAttentionError::ZeroSize {
                field: "seq - 1 (targets)",
            });
        }
        let logits = self.try_forward(tokens.clone().narrow(1, 0, seq - 1))?;
        let targets = tokens.narrow(1, 1, seq - 1).reshape([batch * (seq - 1)]);
        let logits = logits.reshape([batch * (seq - 1), self.vocab_size]);
        Ok(CrossEntropyLossConfig::new()
            .init(&logits.device())
            .forward(logits, targets))
    }

    fn check_tokens(&self, tokens: &Tensor<B, 2, Int>) -> Result<()> {
        let flat = tokens.clone().flatten::<1>(0, 1);
        let (low, high) = (
            flat.clone().min().into_scalar().to_i64_lossy(),
            flat.clone().max().into_scalar().to_i64_lossy(),
        );
        if low >= 0 && (high as u64) < self.vocab_size as u64 {
            return Ok(());
        }
        let bad = if low < 0 { low } else { high };
        let values = flat
            .into_data()
            .convert::<i64>()
            .to_vec::<i64>()
            .unwrap_or_default();
        let position = values.iter().position(|&t| t == bad).unwrap_or(0);
        Err(DilatedAttentionError::TokenOutOfRange {
            token: bad,
            position,
            vocab_size: self.vocab_size,
        })
    }
}

trait ToI64Lossy {
    fn to_i64_lossy(self) -> i64;
}

impl<E: burn::tensor::ElementConversion> ToI64Lossy for E {
    fn to_i64_lossy(self) -> i64 {
        self.elem::<i64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};
    use burn::module::AutodiffModule;
    use burn::optim::{AdamConfig, GradientsParams, Optimizer};
    use burn::tensor::TensorData;

    type AD = Autodiff<NdArray>;

    fn tokens<BB: Backend>(
        values: Vec<i64>,
        shape: [usize; 2],
        device: &BB::Device,
    ) -> Tensor<BB, 2, Int> {
        Tensor::from_data(TensorData::new(values, shape), device)
    }

    #[test]
    fn out_of_vocabulary_token_is_an_error() {
        let device = Default::default();
        let lm = LongNetLmConfig::new(10, 8, 2, 1, DilatedAttentionConfig::new(vec![4], vec![1]))
            .init::<NdArray>(&device);
        let err = lm
            .try_forward(tokens::<NdArray>(vec![1, 2, 10, 3], [1, 4], &device))
            .unwrap_err();
        assert_eq!(
            err,
            DilatedAttentionError::TokenOutOfRange {
                token: 10,
                position: 2,
                vocab_size: 10
            }
        );
        let err = lm
            .try_forward(tokens::<NdArray>(vec![1, -1, 0, 3], [2, 2], &device))
            .unwrap_err();
        assert!(matches!(
            err,
            DilatedAttentionError::TokenOutOfRange {
                token: -1,
                position: 1,
                ..
            }
        ));
    }

    #[test]
    fn a_few_adam_steps_lower_the_loss_on_a_repeating_sequence() {
        let device = Default::default();
        let config = LongNetLmConfig::new(
            7,
            16,
            2,
            2,
            DilatedAttentionConfig::new(vec![8, 16], vec![1, 2]),
        );
        let mut lm = config.init::<AD>(&device);
        let seq: Vec<i64> = (0..64).map(|t| (t * 3 % 7) as i64).collect();
        let batch = tokens::<AD>(seq, [2, 32], &device);
        let mut optim = AdamConfig::new().init();
        let first = lm.try_loss(batch.clone()).unwrap().into_scalar();
        for _ in 0..30 {
            let loss = lm.try_loss(batch.clone()).unwrap();
            let grads = GradientsParams::from_grads(loss.backward(), &lm);
            lm = optim.step(3e-3, lm, grads);
        }
        let last = lm.valid().try_loss(batch.inner()).unwrap().into_scalar();
        assert!(last < 0.5 * first, "loss {first} -> {last}");
    }
}
