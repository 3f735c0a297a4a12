//! [`DilatedAttentionConfig`]: the (segment length, dilation rate) pairs and how heads use them.
//!
//! ```
//! use dilated_attention_core::{DilatedAttentionConfig, DilationMode};
//!
//! let cfg = DilatedAttentionConfig::new(vec![2048, 4096, 8192], vec![1, 2, 4])
//!     .with_mode(DilationMode::HeadGrouped)
//!     .with_causal(true);
//! assert!(cfg.validate().is_ok());
//!
//! let bad = DilatedAttentionConfig::new(vec![2048, 4096], vec![1, 0]);
//! assert_eq!(
//!     bad.validate().unwrap_err().to_string(),
//!     "dilation_rates[1] is 0; rates must be >= 1"
//! );
//! ```

use burn::config::Config;

use crate::{DilatedAttentionError, KernelStrategy, Result, ensure_probability};

/// How the heads use the (segment length, dilation rate) pairs.
#[derive(Config, Debug, Copy, PartialEq, Eq, Hash)]
pub enum DilationMode {
    /// LongNet (arXiv 2307.02486, sec. 2.2-2.3): every head uses every pair; head `j` uses offset
    /// `j % r_i`; the pairs' partial outputs are merged by their log-sum-exp weights
    /// `w_i = exp(lse_i - logsumexp_k lse_k)`.
    LongNet,
    /// Parity with `dilated-attention-pytorch`: heads split into one contiguous group per pair
    /// (sizes `h / g`, the first `h % g` one larger); group `i` uses pair `i` with offset `i % r_i`;
    /// rows a head's dilation does not select are 0. Unlike the PyTorch library, the output is not
    /// divided by the number of groups.
    HeadGrouped,
}

/// Configuration of dilated attention.
///
/// A config holds pairs `(segment_lengths[i], dilation_rates[i])`. For pair `i` the sequence is
/// cut into segments of `segment_lengths[i]` tokens (clamped to the sequence length; the last
/// segment may be shorter), and inside a segment every `dilation_rates[i]`-th position from the
/// head's offset attends to the same selected positions. See `docs/semantics.md`.
#[derive(Config, Debug)]
pub struct DilatedAttentionConfig {
    /// Segment length of each pair, in tokens. Each must be >= 1.
    pub segment_lengths: Vec<usize>,
    /// Dilation rate of each pair (1 = every row). Each must be >= 1.
    pub dilation_rates: Vec<usize>,
    /// How heads use the pairs. Default: [`DilationMode::LongNet`].
    #[config(default = "DilationMode::LongNet")]
    pub mode: DilationMode,
    /// Hide keys at positions after the query (original positions). Default: false.
    #[config(default = false)]
    pub causal: bool,
    /// Softmax scale; `None` means `1 / sqrt(head_dim)`.
    pub scale: Option<f64>,
    /// Dropout probability on the attention weights, applied only while training (when the
    /// backend tracks gradients, as Burn's `Dropout` does). Default: 0.
    #[config(default = 0.0)]
    pub dropout: f64,
    /// Which kernel family runs the attention: the fastest available (default), the reference
    /// path, or one family forced (an error where it cannot run the call). The environment
    /// variable `DILATED_ATTENTION_KERNEL` overrides it. Default: [`KernelStrategy::Auto`].
    #[config(default = "KernelStrategy::Auto")]
    pub kernel_strategy: KernelStrategy,
    /// Lets the fused CUDA kernels (forward and backward) run `f32` inputs on one TF32 tensor-core
    /// product each, like PyTorch's `allow_tf32`: the products take inputs rounded to a 10-bit
    /// mantissa, while accumulation, the softmax and the outputs stay `f32`. About 2x faster than
    /// the default, which splits every product into three TF32 products for `f32`-level
    /// accuracy, at relative errors near TF32's `2^-11` instead of `f32`'s (current figures in
    /// `docs/performance.md`). Other dtypes and backends are unaffected. Default: false.
    #[config(default = false)]
    pub allow_tf32: bool,
}

impl DilatedAttentionConfig {
    /// Checks every field.
    ///
    /// # Errors
    /// [`DilatedAttentionError::EmptySegments`], [`DilatedAttentionError::PairCountMismatch`],
    /// [`DilatedAttentionError::ZeroSegmentLength`], [`DilatedAttentionError::ZeroDilation`],
    /// [`DilatedAttentionError::InvalidScale`], [`DilatedAttentionError::InvalidProbability`].
    pub fn validate(&self) -> Result<()> {
        if self.segment_lengths.is_empty() {
            return Err(DilatedAttentionError::EmptySegments);
        }
        if self.segment_lengths.len() != self.dilation_rates.len() {
            return Err(DilatedAttentionError::PairCountMismatch {
                segments: self.segment_lengths.len(),
                rates: self.dilation_rates.len(),
            });
        }
        if let Some(index) = self.segment_lengths.iter().position(|&s| s == 0) {
            return Err(DilatedAttentionError::ZeroSegmentLength { index });
        }
        if let Some(index) = self.dilation_rates.iter().position(|&r| r == 0) {
            return Err(DilatedAttentionError::ZeroDilation { index });
        }
        if let Some(scale) = self.scale
            && !(scale.is_finite() && scale > 0.0)
        {
            return Err(DilatedAttentionError::InvalidScale { value: scale });
        }
        ensure_probability("dropout", self.dropout)
    }

    /// Number of (segment length, dilation rate) pairs.
    pub fn num_pairs(&self) -> usize {
        self.segment_lengths.len()
    }

    /// The softmax scale for a head dimension: `scale`, or `1 / sqrt(head_dim)`.
    pub fn scale_for(&self, head_dim: usize) -> f64 {
        self.scale
            .unwrap_or_else(|| 1.0 / (head_dim.max(1) as f64).sqrt())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(s: Vec<usize>, r: Vec<usize>) -> DilatedAttentionConfig {
        DilatedAttentionConfig::new(s, r)
    }

    #[test]
    fn validate_accepts_longnet_defaults() {
        let cfg = pairs(vec![2048, 4096, 8192], vec![1, 2, 4]);
        assert_eq!(cfg.mode, DilationMode::LongNet);
        assert!(!cfg.causal);
        assert_eq!(cfg.validate(), Ok(()));
    }

    #[test]
    fn validate_rejects_empty_pairs() {
        assert_eq!(
            pairs(vec![], vec![]).validate(),
            Err(DilatedAttentionError::EmptySegments)
        );
    }

    #[test]
    fn validate_rejects_mismatched_pair_counts() {
        let err = pairs(vec![16, 32], vec![1]).validate().unwrap_err();
        assert_eq!(
            err,
            DilatedAttentionError::PairCountMismatch {
                segments: 2,
                rates: 1
            }
        );
        assert!(err.to_string().contains("segment_lengths has 2"));
    }

    #[test]
    fn validate_rejects_zero_segment_and_zero_dilation() {
        assert_eq!(
            pairs(vec![16, 0], vec![1, 2]).validate(),
            Err(DilatedAttentionError::ZeroSegmentLength { index: 1 })
        );
        assert_eq!(
            pairs(vec![16, 32], vec![0, 2]).validate(),
            Err(DilatedAttentionError::ZeroDilation { index: 0 })
        );
    }

    #[test]
    fn validate_rejects_bad_scale_and_dropout() {
        for scale in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let err = pairs(vec![8], vec![1]).with_scale(Some(scale)).validate();
            assert!(matches!(
                err,
                Err(DilatedAttentionError::InvalidScale { .. })
            ));
        }
        for p in [-0.1, 1.0, 2.0, f64::NAN] {
            let err = pairs(vec![8], vec![1]).with_dropout(p).validate();
            assert!(
                matches!(
                    err,
                    Err(DilatedAttentionError::InvalidProbability {
                        field: "dropout",
                        ..
                    })
                ),
                "dropout {p}"
            );
        }
    }

    #[test]
    fn config_round_trips_through_json() {
        let cfg = pairs(vec![64, 128], vec![1, 2])
            .with_mode(DilationMode::HeadGrouped)
            .with_causal(true)
            .with_scale(Some(0.25))
            .with_kernel_strategy(KernelStrategy::Mma);
        let json = burn::config::config_to_json(&cfg);
        let back = DilatedAttentionConfig::load_binary(json.as_bytes()).expect("load");
        assert_eq!(back.segment_lengths, vec![64, 128]);
        assert_eq!(back.dilation_rates, vec![1, 2]);
        assert_eq!(back.mode, DilationMode::HeadGrouped);
        assert!(back.causal);
        assert_eq!(back.scale, Some(0.25));
        assert_eq!(back.kernel_strategy, KernelStrategy::Mma);
    }

    #[test]
    fn scale_defaults_to_inverse_sqrt_head_dim() {
        let cfg = pairs(vec![8], vec![1]);
        assert!((cfg.scale_for(64) - 0.125).abs() < 1e-12);
        assert_eq!(cfg.with_scale(Some(0.5)).scale_for(64), 0.5);
    }
}
