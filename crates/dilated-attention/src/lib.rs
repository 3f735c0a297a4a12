//! Long-context attention for [Burn](https://burn.dev): LongNet-style dilated attention
//! (arXiv 2307.02486) with a per-query log-sum-exp, sequence parallelism across devices (the
//! ring), multihead modules, transformer layers, a LongNet language model and a factory, on any
//! Burn backend.
//!
//! Backends are cargo features: `ndarray` (default, CPU), `wgpu`, `cuda` (and `nccl`, and the
//! opt-in `nvrtc-options`; see `docs/configuration.md`). Autodiff is always available: wrap the
//! backend in `Autodiff<_>` to train. [`kernel_choice`] tells which kernel family a call runs.
//!
//! ```
//! use dilated_attention::prelude::*;
//! use dilated_attention::backend::NdArray;
//! use burn::tensor::{Distribution, Tensor};
//!
//! type B = NdArray;
//! let device = Default::default();
//! let cfg = DilatedAttentionConfig::new(vec![64, 128, 256], vec![1, 2, 4])
//!     .with_mode(DilationMode::LongNet)
//!     .with_causal(true);
//! cfg.validate()?;
//! let attn: DilatedAttention<B> = cfg.init(&device);
//! let q = Tensor::<B, 4>::random([1, 300, 8, 32], Distribution::Default, &device);
//! let out = attn.try_forward(q.clone(), q.clone(), q.clone())?;   // [batch, seq, heads, head_dim]
//! let (out2, lse) = dilated_attention_with_lse(q.clone(), q.clone(), q, &cfg)?;
//! assert_eq!(lse.dims(), [1, 300, 8]);
//! # let _ = (out, out2);
//! # Ok::<(), DilatedAttentionError>(())
//! ```

mod factory;

/// The README's example, compiled and run as a doctest.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

pub use factory::*;

pub use burn;
pub use dilated_attention_core as core;
pub use dilated_attention_hilbert as hilbert;
pub use dilated_attention_kernels as kernels;
pub use dilated_attention_multihead as multihead;
pub use dilated_attention_ring as ring;

pub use dilated_attention_core::{
    AttentionShape, DilatedAttentionConfig, DilatedAttentionError, DilatedIndexPlan, DilationMode,
    KernelChoice, KernelFamily, KernelStrategy, ProductPrecision, merge_by_lse,
    reference_dilated_attention,
};
pub use dilated_attention_hilbert::{
    HilbertDilatedAttention, HilbertDilatedAttentionConfig, HilbertOrder, MAX_POINT_GRID_CELLS,
    hilbert_2d, hilbert_3d,
};
pub use dilated_attention_kernels::{
    DilatedAttention, DilatedAttentionBackend, DilatedAttentionInit, KERNEL_ENV, NVRTC_OPTIONS_ENV,
    SUBMIT_ENV, dilated_attention_with_lse, dilated_attention_with_lse_masked, kernel_choice,
};
pub use dilated_attention_multihead::{
    DilatedTransformerLayer, DilatedTransformerLayerConfig, FeedForward, FeedForwardConfig,
    LongNetLm, LongNetLmConfig, MultiheadDilatedAttention, MultiheadDilatedAttentionConfig,
};
pub use dilated_attention_ring::{
    Communicator, InProcessCommunicator, RingDilatedAttention, RingDilatedAttentionConfig,
    ShardLayout, ShardOrder, all_reduce_gradients,
};

/// Everything a model file needs: `use dilated_attention::prelude::*;`.
pub mod prelude {
    pub use crate::{
        AnyAttention, AttentionKind, Communicator, DilatedAttention, DilatedAttentionBackend,
        DilatedAttentionConfig, DilatedAttentionError, DilatedAttentionInit,
        DilatedTransformerLayer, DilatedTransformerLayerConfig, DilationMode,
        HilbertDilatedAttention, HilbertDilatedAttentionConfig, InProcessCommunicator,
        KernelChoice, KernelFamily, KernelStrategy, LongNetLm, LongNetLmConfig,
        MultiheadDilatedAttention, MultiheadDilatedAttentionConfig, RingDilatedAttention,
        RingDilatedAttentionConfig, ShardLayout, ShardOrder, StandardConfig, all_reduce_gradients,
        create_attention, create_ring_attention, dilated_attention_with_lse,
        dilated_attention_with_lse_masked, kernel_choice,
    };
}

/// The Burn backends enabled by this build's features, and `Autodiff`.
pub mod backend {
    pub use burn::backend::Autodiff;
    #[cfg(feature = "cuda")]
    pub use burn::backend::Cuda;
    #[cfg(feature = "ndarray")]
    pub use burn::backend::NdArray;
    #[cfg(feature = "wgpu")]
    pub use burn::backend::Wgpu;
}
