//! The factory: one config, one call, any kind of attention, mirroring the PyTorch library's
//! `create_standardized_ring_attention(kind, dim=.., heads=.., segment_lengths=.., ...)`.
//!
//! ```
//! use burn::backend::NdArray;
//! use burn::tensor::{Distribution, Tensor};
//! use dilated_attention::prelude::*;
//!
//! let device = Default::default();
//! let cfg = StandardConfig::new(16, 4, vec![32, 64], vec![1, 2]).with_causal(true);
//! let attention = create_attention::<NdArray>(AttentionKind::Dilated, &cfg, &device)?;
//! let q = Tensor::<NdArray, 4>::random([1, 80, 4, 16], Distribution::Default, &device);
//! let out = attention.try_forward_heads(q.clone(), q.clone(), q.clone())?;
//! assert_eq!(out.dims(), [1, 80, 4, 16]);
//!
//! // the ring over a world of one device (see `create_ring_attention` for several ranks)
//! let ring = create_attention::<NdArray>(AttentionKind::Ring, &cfg, &device)?;
//! assert_eq!(ring.try_forward_heads(q.clone(), q.clone(), q.clone())?.dims(), [1, 80, 4, 16]);
//!
//! // kinds whose capability has not landed yet are typed errors, never silent stand-ins
//! let err = create_attention::<NdArray>(AttentionKind::BlockSparse, &cfg, &device).unwrap_err();
//! assert!(matches!(err, DilatedAttentionError::Unsupported { .. }));
//! # Ok::<(), DilatedAttentionError>(())
//! ```

use core::fmt;
use core::str::FromStr;

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Tensor, backend::Backend};
use dilated_attention_core::{
    DilatedAttentionConfig, DilatedAttentionError, DilationMode, Result, ensure_nonzero,
    ensure_ratio,
};
use dilated_attention_hilbert::{HilbertDilatedAttention, HilbertDilatedAttentionConfig};
use dilated_attention_kernels::{DilatedAttention, DilatedAttentionBackend, DilatedAttentionInit};
use dilated_attention_multihead::{MultiheadDilatedAttention, MultiheadDilatedAttentionConfig};
use dilated_attention_ring::{
    Communicator, InProcessCommunicator, RingDilatedAttention, RingDilatedAttentionConfig,
};
use std::sync::Arc;

/// Every kind of attention the factory knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttentionKind {
    /// [`DilatedAttention`] over `[batch, seq, heads, head_dim]`.
    Dilated,
    /// The ring with fault checks (sequence-parallelism issue).
    Production,
    /// Hilbert-ordered dilated attention (Hilbert issue).
    Hilbert,
    /// Block-sparse dilated attention (block-sparse issue).
    BlockSparse,
    /// Ring dilated attention across devices (sequence-parallelism issue).
    Ring,
    /// [`MultiheadDilatedAttention`] over `[batch, seq, embed_dim]`.
    Multihead,
    /// Block-sparse multihead attention (block-sparse issue).
    BlockSparseMultihead,
}

impl AttentionKind {
    /// Every kind, in declaration order.
    pub const ALL: [AttentionKind; 7] = [
        Self::Dilated,
        Self::Production,
        Self::Hilbert,
        Self::BlockSparse,
        Self::Ring,
        Self::Multihead,
        Self::BlockSparseMultihead,
    ];

    /// The name the PyTorch library's factory uses for this kind.
    pub fn name(self) -> &'static str {
        match self {
            Self::Dilated => "dilated",
            Self::Production => "production",
            Self::Hilbert => "hilbert",
            Self::BlockSparse => "block_sparse",
            Self::Ring => "ring",
            Self::Multihead => "multihead",
            Self::BlockSparseMultihead => "block_sparse_multihead",
        }
    }

    /// True when this build can create the kind.
    pub fn is_available(self) -> bool {
        matches!(
            self,
            Self::Dilated | Self::Multihead | Self::Ring | Self::Production | Self::Hilbert
        )
    }
}

impl fmt::Display for AttentionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for AttentionKind {
    type Err = DilatedAttentionError;

    fn from_str(s: &str) -> Result<Self> {
        let wanted = s.trim().to_ascii_lowercase().replace('-', "_");
        Self::ALL
            .into_iter()
            .find(|k| k.name() == wanted)
            .ok_or_else(|| DilatedAttentionError::Unsupported {
                kind: s.to_string(),
                reason: format!(
                    "unknown kind; known kinds are {}",
                    Self::ALL.map(|k| k.name()).join(", ")
                ),
            })
    }
}

/// The one config of the factory (the PyTorch library's `StandardizedRingConfig`).
#[derive(Config, Debug)]
pub struct StandardConfig {
    /// Head dimension.
    pub dim: usize,
    /// Number of heads (`embed_dim = dim * heads` for the multihead kinds).
    pub heads: usize,
    /// Segment length of each pair.
    pub segment_lengths: Vec<usize>,
    /// Dilation rate of each pair.
    pub dilation_rates: Vec<usize>,
    /// How heads use the pairs. Default: LongNet.
    #[config(default = "DilationMode::LongNet")]
    pub mode: DilationMode,
    /// Causal masking. Default: false.
    #[config(default = false)]
    pub causal: bool,
    /// Softmax scale; `None` means `1 / sqrt(dim)`.
    pub scale: Option<f64>,
    /// Attention dropout. Default: 0.
    #[config(default = 0.0)]
    pub dropout: f64,
    /// Fraction of blocks kept by the block-sparse kinds, in (0, 1]. Default: 0.1.
    #[config(default = 0.1)]
    pub sparsity_ratio: f64,
    /// Projection biases of the multihead kinds. Default: true.
    #[config(default = true)]
    pub bias: bool,
    /// MAGNETO sub-LayerNorm of the multihead kinds. Default: true.
    #[config(default = true)]
    pub sub_layer_norm: bool,
    /// Rotary embedding of the multihead kinds. Default: false.
    #[config(default = false)]
    pub rotary: bool,
    /// `[width, height]` of the token grid of the Hilbert kind (tokens in raster order);
    /// `None` (and no volume): a square of side `ceil(sqrt(seq))`, the PyTorch library's default.
    pub grid: Option<[usize; 2]>,
    /// `[width, height, depth]` of the token volume of the Hilbert kind (voxels or video frames,
    /// raster order); at most one of `grid` and `volume`.
    pub volume: Option<[usize; 3]>,
}

impl StandardConfig {
    /// The dilated attention config these fields describe.
    pub fn attention_config(&self) -> DilatedAttentionConfig {
        DilatedAttentionConfig::new(self.segment_lengths.clone(), self.dilation_rates.clone())
            .with_mode(self.mode)
            .with_causal(self.causal)
            .with_scale(self.scale)
            .with_dropout(self.dropout)
    }

    /// The multihead config these fields describe.
    pub fn multihead_config(&self) -> MultiheadDilatedAttentionConfig {
        MultiheadDilatedAttentionConfig::new(
            self.dim * self.heads,
            self.heads,
            self.attention_config(),
        )
        .with_bias(self.bias)
        .with_sub_layer_norm(self.sub_layer_norm)
        .with_rotary(self.rotary)
    }

    /// Checks every field.
    ///
    /// # Errors
    /// [`DilatedAttentionError::ZeroSize`] for `dim` or `heads`,
    /// [`DilatedAttentionError::InvalidRatio`] for `sparsity_ratio` outside (0, 1],
    /// [`DilatedAttentionError::TooFewHeads`], and the attention config's errors.
    pub fn validate(&self) -> Result<()> {
        ensure_nonzero("dim", self.dim)?;
        ensure_nonzero("heads", self.heads)?;
        ensure_ratio("sparsity_ratio", self.sparsity_ratio)?;
        self.multihead_config().validate()
    }
}

/// What [`create_attention`] returns: the module of the kind asked for.
// Built once per model, never moved in a hot loop: the size gap between variants is harmless.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum AnyAttention<B: Backend> {
    /// From [`AttentionKind::Dilated`].
    Dilated(DilatedAttention<B>),
    /// From [`AttentionKind::Multihead`].
    Multihead(MultiheadDilatedAttention<B>),
    /// From [`AttentionKind::Ring`] and [`AttentionKind::Production`] (the latter with
    /// `fault_checks` on).
    Ring(RingDilatedAttention<B>),
    /// From [`AttentionKind::Hilbert`].
    Hilbert(HilbertDilatedAttention<B>),
}

impl<B: Backend> AnyAttention<B> {
    /// The kind this module was created as.
    pub fn kind(&self) -> AttentionKind {
        match self {
            Self::Dilated(_) => AttentionKind::Dilated,
            Self::Multihead(_) => AttentionKind::Multihead,
            Self::Ring(m) if m.config().fault_checks => AttentionKind::Production,
            Self::Ring(_) => AttentionKind::Ring,
            Self::Hilbert(_) => AttentionKind::Hilbert,
        }
    }
}

impl<B: DilatedAttentionBackend> AnyAttention<B> {
    /// Attention over `[batch, seq, heads, head_dim]` (the head-layout kinds).
    ///
    /// # Errors
    /// [`DilatedAttentionError::Unsupported`] for a multihead kind (use
    /// [`Self::try_forward_embed`]), and the module's shape errors.
    pub fn try_forward_heads(
        &self,
        query: Tensor<B, 4>,
        key: Tensor<B, 4>,
        value: Tensor<B, 4>,
    ) -> Result<Tensor<B, 4>> {
        match self {
            Self::Dilated(m) => m.try_forward(query, key, value),
            Self::Ring(m) => m.try_forward(query, key, value),
            Self::Hilbert(m) => m.try_forward(query, key, value),
            Self::Multihead(_) => {
                Err(self.wrong_layout("[batch, seq, embed_dim]: call try_forward_embed"))
            }
        }
    }

    /// Attention over `[batch, seq, embed_dim]` (the multihead kinds).
    ///
    /// # Errors
    /// [`DilatedAttentionError::Unsupported`] for a head-layout kind (use
    /// [`Self::try_forward_heads`]), and the module's shape errors.
    pub fn try_forward_embed(
        &self,
        query: Tensor<B, 3>,
        key: Tensor<B, 3>,
        value: Tensor<B, 3>,
    ) -> Result<Tensor<B, 3>> {
        match self {
            Self::Multihead(m) => m.try_forward(query, key, value, None),
            Self::Dilated(_) | Self::Ring(_) | Self::Hilbert(_) => {
                Err(self.wrong_layout("[batch, seq, heads, head_dim]: call try_forward_heads"))
            }
        }
    }

    fn wrong_layout(&self, expected: &str) -> DilatedAttentionError {
        DilatedAttentionError::Unsupported {
            kind: self.kind().to_string(),
            reason: format!("this kind takes {expected}"),
        }
    }
}

/// Creates the attention module of `kind` from one config.
///
/// # Errors
/// The config's errors ([`StandardConfig::validate`]), and
/// [`DilatedAttentionError::Unsupported`] naming the kind for kinds this build does not have yet
/// (block-sparse comes with its own issue). The ring kinds get a world of one
/// device here; [`create_ring_attention`] gives them a communicator.
pub fn create_attention<B: DilatedAttentionBackend>(
    kind: AttentionKind,
    config: &StandardConfig,
    device: &B::Device,
) -> Result<AnyAttention<B>> {
    config.validate()?;
    match kind {
        AttentionKind::Dilated => Ok(AnyAttention::Dilated(
            config.attention_config().try_init(device)?,
        )),
        AttentionKind::Multihead => Ok(AnyAttention::Multihead(
            config.multihead_config().try_init(device)?,
        )),
        AttentionKind::Production | AttentionKind::Ring => {
            let solo = InProcessCommunicator::solo(B::inner_device(device));
            create_ring_attention(kind, config, Arc::new(solo))
        }
        AttentionKind::Hilbert => Ok(AnyAttention::Hilbert(
            HilbertDilatedAttentionConfig::new(config.attention_config())
                .with_grid(config.grid)
                .with_volume(config.volume)
                .try_init(device)?,
        )),
        AttentionKind::BlockSparse | AttentionKind::BlockSparseMultihead => {
            Err(not_yet(kind, "block-sparse attention"))
        }
    }
}

/// Creates [`AttentionKind::Ring`] or [`AttentionKind::Production`] for one rank of a group:
/// the factory's config, this rank's communicator (in-process, or NCCL with the ring crate's
/// `nccl` feature).
///
/// # Errors
/// The config's errors, and [`DilatedAttentionError::Unsupported`] for any other kind.
pub fn create_ring_attention<B: DilatedAttentionBackend>(
    kind: AttentionKind,
    config: &StandardConfig,
    communicator: Arc<dyn Communicator<B::Inner>>,
) -> Result<AnyAttention<B>> {
    config.validate()?;
    let fault_checks = match kind {
        AttentionKind::Ring => false,
        AttentionKind::Production => true,
        other => {
            return Err(DilatedAttentionError::Unsupported {
                kind: other.to_string(),
                reason: "create_ring_attention makes the ring kinds (ring, production); use create_attention".into(),
            });
        }
    };
    let ring = RingDilatedAttentionConfig::new(config.attention_config())
        .with_fault_checks(fault_checks)
        .try_init(communicator)?;
    Ok(AnyAttention::Ring(ring))
}

fn not_yet(kind: AttentionKind, capability: &str) -> DilatedAttentionError {
    DilatedAttentionError::Unsupported {
        kind: kind.to_string(),
        reason: format!("{capability} has not landed in this version of the library"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::tensor::Distribution;

    type B = NdArray;

    fn config() -> StandardConfig {
        StandardConfig::new(8, 4, vec![16, 32], vec![1, 2])
    }

    #[test]
    fn every_kind_parses_from_its_name() {
        for kind in AttentionKind::ALL {
            assert_eq!(kind.name().parse::<AttentionKind>().unwrap(), kind);
        }
        assert_eq!(
            "Block-Sparse".parse::<AttentionKind>().unwrap(),
            AttentionKind::BlockSparse
        );
        assert!(matches!(
            "flash".parse::<AttentionKind>(),
            Err(DilatedAttentionError::Unsupported { .. })
        ));
    }

    #[test]
    fn unavailable_kinds_return_unsupported_naming_the_kind() {
        let device = Default::default();
        for kind in AttentionKind::ALL.into_iter().filter(|k| !k.is_available()) {
            match create_attention::<B>(kind, &config(), &device) {
                Err(DilatedAttentionError::Unsupported { kind: name, .. }) => {
                    assert_eq!(name, kind.name())
                }
                other => panic!("{kind}: expected Unsupported, got {other:?}"),
            }
        }
    }

    #[test]
    fn multihead_kind_runs_on_embed_layout_and_rejects_head_layout() {
        let device = Default::default();
        let m = create_attention::<B>(AttentionKind::Multihead, &config(), &device).unwrap();
        let x = Tensor::<B, 3>::random([2, 40, 32], Distribution::Default, &device);
        assert_eq!(
            m.try_forward_embed(x.clone(), x.clone(), x).unwrap().dims(),
            [2, 40, 32]
        );
        let q = Tensor::<B, 4>::random([2, 40, 4, 8], Distribution::Default, &device);
        assert!(matches!(
            m.try_forward_heads(q.clone(), q.clone(), q),
            Err(DilatedAttentionError::Unsupported { .. })
        ));
    }

    #[test]
    fn ring_kinds_on_one_device_equal_dilated_and_production_checks_values() {
        let device = Default::default();
        let cfg = config().with_causal(true);
        let dilated = create_attention::<B>(AttentionKind::Dilated, &cfg, &device).unwrap();
        let ring = create_attention::<B>(AttentionKind::Ring, &cfg, &device).unwrap();
        let production = create_attention::<B>(AttentionKind::Production, &cfg, &device).unwrap();
        assert_eq!(ring.kind(), AttentionKind::Ring);
        assert_eq!(production.kind(), AttentionKind::Production);
        let q = Tensor::<B, 4>::random([2, 37, 4, 8], Distribution::Default, &device);
        let want = dilated
            .try_forward_heads(q.clone(), q.clone(), q.clone())
            .unwrap();
        for m in [&ring, &production] {
            let got = m
                .try_forward_heads(q.clone(), q.clone(), q.clone())
                .unwrap();
            let err = (got - want.clone()).abs().max().into_scalar();
            assert!(err < 1e-6, "{}: {err}", m.kind());
        }
        let nan = q.clone().mul_scalar(f32::NAN);
        assert!(matches!(
            production.try_forward_heads(nan, q.clone(), q.clone()),
            Err(DilatedAttentionError::NonFinite { name: "query", .. })
        ));
    }

    #[test]
    fn hilbert_kind_orders_along_the_grid_given() {
        let device = Default::default();
        let cfg = config().with_grid(Some([8, 5]));
        let m = create_attention::<B>(AttentionKind::Hilbert, &cfg, &device).unwrap();
        assert_eq!(m.kind(), AttentionKind::Hilbert);
        let q = Tensor::<B, 4>::random([1, 40, 4, 8], Distribution::Default, &device);
        assert_eq!(
            m.try_forward_heads(q.clone(), q.clone(), q.clone())
                .unwrap()
                .dims(),
            [1, 40, 4, 8]
        );
        let q = Tensor::<B, 4>::random([1, 39, 4, 8], Distribution::Default, &device);
        assert!(matches!(
            m.try_forward_heads(q.clone(), q.clone(), q),
            Err(DilatedAttentionError::SequenceMismatch { .. })
        ));
    }

    #[test]
    fn hilbert_kind_orders_along_the_volume_given() {
        let device = Default::default();
        let cfg = config().with_volume(Some([4, 5, 2]));
        let m = create_attention::<B>(AttentionKind::Hilbert, &cfg, &device).unwrap();
        let q = Tensor::<B, 4>::random([1, 40, 4, 8], Distribution::Default, &device);
        let got = m
            .try_forward_heads(q.clone(), q.clone(), q.clone())
            .unwrap();
        let want = HilbertDilatedAttentionConfig::new(cfg.attention_config())
            .with_volume(Some([4, 5, 2]))
            .init::<B>(&device)
            .forward(q.clone(), q.clone(), q);
        got.into_data()
            .assert_approx_eq::<f32>(&want.into_data(), Default::default());
        assert!(matches!(
            create_attention::<B>(
                AttentionKind::Hilbert,
                &cfg.clone().with_grid(Some([8, 5])),
                &device
            ),
            Err(DilatedAttentionError::ConflictingOptions { .. })
        ));
    }

    #[test]
    fn create_ring_attention_makes_only_ring_kinds() {
        let comm = Arc::new(InProcessCommunicator::<B>::solo(Default::default()));
        assert!(matches!(
            create_ring_attention::<B>(AttentionKind::Dilated, &config(), comm),
            Err(DilatedAttentionError::Unsupported { .. })
        ));
    }

    #[test]
    fn bad_configs_are_errors_before_kind_dispatch() {
        let device = Default::default();
        let bad = config().with_sparsity_ratio(0.0);
        assert!(matches!(
            create_attention::<B>(AttentionKind::Dilated, &bad, &device),
            Err(DilatedAttentionError::InvalidRatio {
                field: "sparsity_ratio",
                ..
            })
        ));
        let bad = config().with_sparsity_ratio(1.5);
        assert!(bad.validate().is_err());
        let bad = StandardConfig::new(8, 0, vec![16], vec![1]);
        assert_eq!(
            bad.validate(),
            Err(DilatedAttentionError::ZeroSize { field: "heads" })
        );
        let bad = StandardConfig::new(8, 4, vec![16, 32], vec![1]);
        assert!(matches!(
            bad.validate(),
            Err(DilatedAttentionError::PairCountMismatch { .. })
        ));
    }
}
