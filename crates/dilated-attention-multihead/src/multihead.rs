//! [`MultiheadDilatedAttention`]: projections, optional rotary embedding, dilated attention,
//! optional MAGNETO sub-LayerNorm, output projection, over `[batch, seq, embed_dim]`.
//!
//! ```
//! use burn::backend::NdArray;
//! use burn::tensor::{Distribution, Tensor};
//! use dilated_attention_core::DilatedAttentionConfig;
//! use dilated_attention_multihead::MultiheadDilatedAttentionConfig;
//!
//! let device = Default::default();
//! let attention = DilatedAttentionConfig::new(vec![16, 32], vec![1, 2]).with_causal(true);
//! let mha = MultiheadDilatedAttentionConfig::new(64, 4, attention)
//!     .with_rotary(true)
//!     .init::<NdArray>(&device);
//! let x = Tensor::<NdArray, 3>::random([2, 50, 64], Distribution::Default, &device);
//! let y = mha.forward(x.clone(), x.clone(), x);
//! assert_eq!(y.dims(), [2, 50, 64]);
//! ```

use burn::config::Config;
use burn::module::{Initializer, Module, Param};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::{Bool, Tensor, backend::Backend};
use dilated_attention_core::{
    DilatedAttentionConfig, DilatedAttentionError, DilationMode, Result, ensure_nonzero,
    ensure_parameter_dtype, ensure_positive,
};
use dilated_attention_kernels::{DilatedAttentionBackend, dilated_attention_with_lse_masked};

use dilated_attention_ring::{Communicator, RingDilatedAttention, RingDilatedAttentionConfig};
use std::sync::Arc;

use crate::apply_rotary_at;

/// Configuration of [`MultiheadDilatedAttention`].
#[derive(Config, Debug)]
pub struct MultiheadDilatedAttentionConfig {
    /// Model width; must be divisible by `num_heads`.
    pub embed_dim: usize,
    /// Number of heads.
    pub num_heads: usize,
    /// The dilated attention inside.
    pub attention: DilatedAttentionConfig,
    /// Bias on the four projections. Default: true.
    #[config(default = true)]
    pub bias: bool,
    /// MAGNETO sub-LayerNorm (arXiv 2210.06423) before the output projection. Default: true, as
    /// in the PyTorch library's `MultiheadDilatedAttention(layer_norm=True)`.
    #[config(default = true)]
    pub sub_layer_norm: bool,
    /// Epsilon of the sub-LayerNorm. Default: 1e-5.
    #[config(default = 1e-5)]
    pub layer_norm_eps: f64,
    /// Xavier-normal gain of the value and output projections (MAGNETO's `gamma`; the query and
    /// key projections use gain 1). Set it from the depth of the model, e.g.
    /// `sqrt(ln(2 * num_layers))` for a decoder-only model (MAGNETO fig. 2). Default: 1.
    #[config(default = 1.0)]
    pub gamma_init: f64,
    /// Apply a rotary position embedding to queries and keys before dilation. Default: false.
    #[config(default = false)]
    pub rotary: bool,
    /// Base of the rotary angles. Default: 10000.
    #[config(default = 10000.0)]
    pub rotary_base: f64,
}

/// Multihead dilated attention (LongNet sec. 2.3) with MAGNETO's sub-LayerNorm and init.
#[derive(Module, Debug)]
pub struct MultiheadDilatedAttention<B: Backend> {
    /// Query projection `[embed_dim, embed_dim]`.
    pub q_proj: Linear<B>,
    /// Key projection.
    pub k_proj: Linear<B>,
    /// Value projection.
    pub v_proj: Linear<B>,
    /// Output projection.
    pub out_proj: Linear<B>,
    /// MAGNETO sub-LayerNorm before the output projection.
    pub norm: Option<LayerNorm<B>>,
    embed_dim: usize,
    num_heads: usize,
    #[module(skip)]
    attention: DilatedAttentionConfig,
    #[module(skip)]
    rotary_base: Option<f64>,
    /// Sequence parallelism: this rank's part of the attention over a sharded sequence.
    pub sequence_parallel: Option<RingDilatedAttention<B>>,
}

impl MultiheadDilatedAttentionConfig {
    /// Checks every field.
    ///
    /// # Errors
    /// [`DilatedAttentionError::ZeroSize`], [`DilatedAttentionError::NotDivisible`] (embed_dim by
    /// num_heads; head_dim by 2 with rotary), [`DilatedAttentionError::TooFewHeads`],
    /// the attention config's errors, and [`DilatedAttentionError::InvalidPositive`] for a gain,
    /// epsilon or rotary base that is not finite and > 0.
    pub fn validate(&self) -> Result<()> {
        self.attention.validate()?;
        ensure_nonzero("embed_dim", self.embed_dim)?;
        ensure_nonzero("num_heads", self.num_heads)?;
        if !self.embed_dim.is_multiple_of(self.num_heads) {
            return Err(DilatedAttentionError::NotDivisible {
                field: "embed_dim",
                value: self.embed_dim,
                divisor_field: "num_heads",
                divisor: self.num_heads,
            });
        }
        let head_dim = self.embed_dim / self.num_heads;
        if self.rotary && !head_dim.is_multiple_of(2) {
            return Err(DilatedAttentionError::NotDivisible {
                field: "head_dim (rotary)",
                value: head_dim,
                divisor_field: "2",
                divisor: 2,
            });
        }
        if self.attention.mode == DilationMode::HeadGrouped
            && self.num_heads < self.attention.num_pairs()
        {
            return Err(DilatedAttentionError::TooFewHeads {
                heads: self.num_heads,
                groups: self.attention.num_pairs(),
            });
        }
        ensure_positive("gamma_init", self.gamma_init)?;
        ensure_positive("layer_norm_eps", self.layer_norm_eps)?;
        ensure_positive("rotary_base", self.rotary_base)
    }

    /// Validates and builds the module: xavier-normal projections (gain 1 for query and key,
    /// `gamma_init` for value and output), zero biases.
    ///
    /// # Errors
    /// Those of [`MultiheadDilatedAttentionConfig::validate`].
    pub fn try_init<B: Backend>(&self, device: &B::Device) -> Result<MultiheadDilatedAttention<B>> {
        self.validate()?;
        let proj =
            |gain: f64| xavier_linear(self.embed_dim, self.embed_dim, self.bias, gain, device);
        Ok(MultiheadDilatedAttention {
            q_proj: proj(1.0),
            k_proj: proj(1.0),
            v_proj: proj(self.gamma_init),
            out_proj: proj(self.gamma_init),
            norm: self.sub_layer_norm.then(|| {
                LayerNormConfig::new(self.embed_dim)
                    .with_epsilon(self.layer_norm_eps)
                    .init(device)
            }),
            embed_dim: self.embed_dim,
            num_heads: self.num_heads,
            attention: self.attention.clone(),
            rotary_base: self.rotary.then_some(self.rotary_base),
            sequence_parallel: None,
        })
    }

    /// Builds the module.
    ///
    /// # Panics
    /// If the config is invalid, with the message of [`Self::try_init`]'s error.
    pub fn init<B: Backend>(&self, device: &B::Device) -> MultiheadDilatedAttention<B> {
        self.try_init(device).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// A linear layer with xavier-normal weights of the given gain and a zero bias.
pub(crate) fn xavier_linear<B: Backend>(
    d_input: usize,
    d_output: usize,
    bias: bool,
    gain: f64,
    device: &B::Device,
) -> Linear<B> {
    let mut linear = LinearConfig::new(d_input, d_output)
        .with_bias(bias)
        .with_initializer(Initializer::XavierNormal { gain })
        .init(device);
    linear.bias = linear
        .bias
        .map(|_| Param::from_tensor(Tensor::zeros([d_output], device)));
    linear
}

impl<B: Backend> MultiheadDilatedAttention<B> {
    /// Model width.
    pub fn embed_dim(&self) -> usize {
        self.embed_dim
    }

    /// Number of heads.
    pub fn num_heads(&self) -> usize {
        self.num_heads
    }

    /// The dilated attention config inside.
    pub fn attention_config(&self) -> &DilatedAttentionConfig {
        &self.attention
    }
}

impl<B: DilatedAttentionBackend> MultiheadDilatedAttention<B> {
    /// Makes the module sequence-parallel over the ranks of `communicator`: each rank then
    /// passes its shard `[batch, local seq, embed_dim]` of the sequence (contiguous shards of
    /// equal length by default; see [`RingDilatedAttention::with_layout`] for others) and gets
    /// its rows of the output, equal to one device's. Rotary positions are the rows' positions in
    /// the whole sequence. Parameters stay replicated: sum their gradients over the ranks with
    /// [`dilated_attention_ring::all_reduce_gradients`] before each optimizer step.
    ///
    /// # Errors
    /// The attention config's errors.
    pub fn with_sequence_parallel(
        mut self,
        communicator: Arc<dyn Communicator<B::Inner>>,
    ) -> Result<Self> {
        let ring =
            RingDilatedAttentionConfig::new(self.attention.clone()).try_init(communicator)?;
        self.sequence_parallel = Some(ring);
        Ok(self)
    }

    /// Self- or cross-projection attention over one sequence length.
    ///
    /// # Shapes
    /// `query`, `key`, `value`: `[batch, seq, embed_dim]` -> `[batch, seq, embed_dim]`
    ///
    /// # Panics
    /// On bad shapes, with the message of [`Self::try_forward`]'s error.
    pub fn forward(
        &self,
        query: Tensor<B, 3>,
        key: Tensor<B, 3>,
        value: Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        self.try_forward(query, key, value, None)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Self::forward`] with errors as values and an optional key padding mask
    /// (`[batch, seq]`, true = padded key).
    ///
    /// # Errors
    /// [`DilatedAttentionError::EmbedDimMismatch`], [`DilatedAttentionError::SequenceMismatch`],
    /// [`DilatedAttentionError::EmptyDimension`], a batch mismatch as
    /// [`DilatedAttentionError::ShapeMismatch`], an input whose dtype is not the projections' as
    /// [`DilatedAttentionError::ParameterDTypeMismatch`], and the mask's shape errors.
    pub fn try_forward(
        &self,
        query: Tensor<B, 3>,
        key: Tensor<B, 3>,
        value: Tensor<B, 3>,
        key_padding_mask: Option<Tensor<B, 2, Bool>>,
    ) -> Result<Tensor<B, 3>> {
        let [batch, seq, width] = query.dims();
        for (name, dims) in [
            ("query", query.dims()),
            ("key", key.dims()),
            ("value", value.dims()),
        ] {
            if let Some(i) = dims.iter().position(|&d| d == 0) {
                return Err(DilatedAttentionError::EmptyDimension {
                    name,
                    dim: ["batch", "seq", "embed_dim"][i],
                    shape: dims.to_vec(),
                });
            }
            if dims[2] != self.embed_dim {
                return Err(DilatedAttentionError::EmbedDimMismatch {
                    name,
                    expected: self.embed_dim,
                    actual: dims[2],
                });
            }
            if dims[1] != seq {
                return Err(DilatedAttentionError::SequenceMismatch {
                    name,
                    query: seq,
                    actual: dims[1],
                });
            }
            if dims[0] != batch {
                return Err(DilatedAttentionError::ShapeMismatch {
                    name,
                    query: [batch, seq, width, 1],
                    actual: [dims[0], dims[1], dims[2], 1],
                });
            }
        }
        let parameters = self.q_proj.weight.val().dtype();
        for (name, dtype) in [
            ("query", query.dtype()),
            ("key", key.dtype()),
            ("value", value.dtype()),
        ] {
            ensure_parameter_dtype(name, dtype, parameters)?;
        }
        let head_dim = self.embed_dim / self.num_heads;
        let split = |x: Tensor<B, 3>| x.reshape([batch, seq, self.num_heads, head_dim]);
        let mut q = split(self.q_proj.forward(query));
        let mut k = split(self.k_proj.forward(key));
        let v = split(self.v_proj.forward(value));
        if let Some(base) = self.rotary_base {
            // rows keep their positions in the whole sequence, also on a shard
            let positions: Vec<usize> = match &self.sequence_parallel {
                Some(ring) => {
                    let layout = ring.layout_for(seq)?;
                    layout.positions(ring.rank()).collect()
                }
                None => (0..seq).collect(),
            };
            if positions.len() != seq {
                return Err(DilatedAttentionError::ShardMismatch {
                    name: "query",
                    rank: self.sequence_parallel.as_ref().map_or(0, |r| r.rank()),
                    expected: positions.len(),
                    actual: seq,
                });
            }
            q = apply_rotary_at(q, &positions, base);
            k = apply_rotary_at(k, &positions, base);
        }
        let (out, _lse) = match &self.sequence_parallel {
            Some(ring) => ring.try_forward_with_lse(q, k, v, key_padding_mask)?,
            None => dilated_attention_with_lse_masked(q, k, v, key_padding_mask, &self.attention)?,
        };
        let mut out = out.reshape([batch, seq, self.embed_dim]);
        if let Some(norm) = &self.norm {
            out = norm.forward(out);
        }
        Ok(self.out_proj.forward(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::tensor::{Distribution, Tolerance};
    use dilated_attention_core::reference_dilated_attention;

    type B = NdArray;

    fn attention() -> DilatedAttentionConfig {
        DilatedAttentionConfig::new(vec![8, 16], vec![1, 2])
    }

    #[test]
    fn parameter_count_matches_four_projections_and_norm() {
        let m =
            MultiheadDilatedAttentionConfig::new(32, 4, attention()).init::<B>(&Default::default());
        assert_eq!(m.num_params(), 4 * (32 * 32 + 32) + 2 * 32);
        let m = MultiheadDilatedAttentionConfig::new(32, 4, attention())
            .with_bias(false)
            .with_sub_layer_norm(false)
            .init::<B>(&Default::default());
        assert_eq!(m.num_params(), 4 * 32 * 32);
    }

    #[test]
    fn init_uses_xavier_normal_gains_and_zero_bias() {
        let (e, gamma) = (256, 2.5);
        let m = MultiheadDilatedAttentionConfig::new(e, 4, attention())
            .with_gamma_init(gamma)
            .init::<B>(&Default::default());
        let std = |l: &Linear<B>| {
            let w = l.weight.val();
            let mean = w.clone().mean().into_scalar();
            ((w - mean).powf_scalar(2.0).mean().into_scalar()).sqrt()
        };
        // xavier normal: std = gain * sqrt(2 / (fan_in + fan_out))
        let unit = (2.0 / (2 * e) as f32).sqrt();
        assert!((std(&m.q_proj) / unit - 1.0).abs() < 0.05);
        assert!((std(&m.k_proj) / unit - 1.0).abs() < 0.05);
        assert!((std(&m.v_proj) / (unit * gamma as f32) - 1.0).abs() < 0.05);
        assert!((std(&m.out_proj) / (unit * gamma as f32) - 1.0).abs() < 0.05);
        let bias = m
            .q_proj
            .bias
            .as_ref()
            .unwrap()
            .val()
            .abs()
            .max()
            .into_scalar();
        assert_eq!(bias, 0.0);
    }

    #[test]
    fn forward_equals_projections_around_reference_attention() {
        let device = Default::default();
        let m = MultiheadDilatedAttentionConfig::new(24, 3, attention().with_causal(true))
            .with_sub_layer_norm(false)
            .init::<B>(&device);
        let x = Tensor::<B, 3>::random([2, 21, 24], Distribution::Normal(0.0, 1.0), &device);
        let y = m.forward(x.clone(), x.clone(), x.clone());
        let split = |t: Tensor<B, 3>| t.reshape([2, 21, 3, 8]);
        let (o, _) = reference_dilated_attention(
            split(m.q_proj.forward(x.clone())),
            split(m.k_proj.forward(x.clone())),
            split(m.v_proj.forward(x)),
            None,
            &attention().with_causal(true),
        )
        .unwrap();
        let want = m.out_proj.forward(o.reshape([2, 21, 24]));
        y.into_data()
            .assert_approx_eq::<f32>(&want.into_data(), Tolerance::rel_abs(1e-5, 1e-6));
    }

    #[test]
    fn config_errors_name_the_field() {
        let err = MultiheadDilatedAttentionConfig::new(30, 4, attention())
            .validate()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "embed_dim = 30 is not divisible by num_heads = 4"
        );
        let err = MultiheadDilatedAttentionConfig::new(12, 4, attention())
            .with_rotary(true)
            .validate()
            .unwrap_err();
        assert!(matches!(
            err,
            DilatedAttentionError::NotDivisible { value: 3, .. }
        ));
        let grouped = DilatedAttentionConfig::new(vec![4, 8, 16], vec![1, 2, 4])
            .with_mode(DilationMode::HeadGrouped);
        let err = MultiheadDilatedAttentionConfig::new(16, 2, grouped)
            .validate()
            .unwrap_err();
        assert_eq!(
            err,
            DilatedAttentionError::TooFewHeads {
                heads: 2,
                groups: 3
            }
        );
        let err = MultiheadDilatedAttentionConfig::new(16, 2, attention())
            .with_gamma_init(0.0)
            .validate()
            .unwrap_err();
        assert!(matches!(
            err,
            DilatedAttentionError::InvalidPositive {
                field: "gamma_init",
                ..
            }
        ));
    }

    #[test]
    fn try_forward_rejects_bad_shapes() {
        let device = Default::default();
        let m = MultiheadDilatedAttentionConfig::new(16, 2, attention()).init::<B>(&device);
        let x = Tensor::<B, 3>::random([1, 10, 16], Distribution::Default, &device);
        let wide = Tensor::<B, 3>::random([1, 10, 17], Distribution::Default, &device);
        let long = Tensor::<B, 3>::random([1, 11, 16], Distribution::Default, &device);
        assert_eq!(
            m.try_forward(x.clone(), wide, x.clone(), None).unwrap_err(),
            DilatedAttentionError::EmbedDimMismatch {
                name: "key",
                expected: 16,
                actual: 17
            }
        );
        assert_eq!(
            m.try_forward(x.clone(), x.clone(), long, None).unwrap_err(),
            DilatedAttentionError::SequenceMismatch {
                name: "value",
                query: 10,
                actual: 11
            }
        );
    }

    #[test]
    fn an_input_in_another_dtype_than_the_projections_is_a_typed_error() {
        let device = Default::default();
        let m = MultiheadDilatedAttentionConfig::new(16, 2, attention()).init::<B>(&device);
        let x = Tensor::<B, 3>::random([1, 10, 16], Distribution::Default, &device);
        let wide = x.clone().cast(burn::tensor::DType::F64);
        assert_eq!(
            m.try_forward(x.clone(), x.clone(), wide, None).unwrap_err(),
            DilatedAttentionError::ParameterDTypeMismatch {
                name: "value",
                parameters: burn::tensor::DType::F32,
                actual: burn::tensor::DType::F64
            }
        );
    }
}
