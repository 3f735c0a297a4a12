//! Multihead dilated attention, pre-norm transformer layers and a LongNet language model, for
//! Burn, generic over any backend that implements
//! [`DilatedAttentionBackend`](dilated_attention_kernels::DilatedAttentionBackend).
//!
//! ```
//! use burn::backend::NdArray;
//! use burn::tensor::{Distribution, Tensor};
//! use dilated_attention_core::DilatedAttentionConfig;
//! use dilated_attention_multihead::MultiheadDilatedAttentionConfig;
//!
//! let device = Default::default();
//! let cfg = DilatedAttentionConfig::new(vec![32, 64], vec![1, 2]);
//! let mha = MultiheadDilatedAttentionConfig::new(64, 8, cfg).init::<NdArray>(&device);
//! let x = Tensor::<NdArray, 3>::random([1, 100, 64], Distribution::Default, &device);
//! assert_eq!(mha.forward(x.clone(), x.clone(), x).dims(), [1, 100, 64]);
//! ```

mod feed_forward;
mod language_model;
mod multihead;
mod rotary;
mod transformer_layer;

pub use feed_forward::*;
pub use language_model::*;
pub use multihead::*;
pub use rotary::*;
pub use transformer_layer::*;
