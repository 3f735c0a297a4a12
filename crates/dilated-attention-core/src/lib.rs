//! Core of the dilated-attention library: configs, errors, index plans, the reference
//! implementation (plain Burn tensor ops) and the log-sum-exp merge.
//!
//! No CubeCL here: this crate is the oracle every fused or distributed path is tested against.
//!
//! ```
//! use burn::backend::NdArray;
//! use burn::tensor::{Distribution, Tensor};
//! use dilated_attention_core::{reference_dilated_attention, DilatedAttentionConfig, DilationMode};
//!
//! let device = Default::default();
//! let cfg = DilatedAttentionConfig::new(vec![8, 16], vec![1, 2]).with_mode(DilationMode::LongNet);
//! let q = Tensor::<NdArray, 4>::random([1, 37, 2, 8], Distribution::Default, &device);
//! let (out, lse) = reference_dilated_attention(q.clone(), q.clone(), q, None, &cfg).unwrap();
//! assert_eq!(out.dims(), [1, 37, 2, 8]);
//! ```

#[cfg(feature = "test-oracle")]
pub mod compare;
mod config;
mod error;
mod field_check;
mod index_tensor;
mod input_check;
mod kernel_strategy;
mod lse_merge;
#[cfg(feature = "test-oracle")]
pub mod oracle;
mod plan;
mod reference;
mod segment_attention;
mod sequence_order;
mod shape;

pub use config::*;
pub use error::*;
pub use field_check::*;
pub use index_tensor::*;
pub use input_check::*;
pub use kernel_strategy::*;
pub use lse_merge::*;
pub use plan::*;
pub use reference::*;
pub use segment_attention::*;
pub use sequence_order::*;
pub use shape::*;
