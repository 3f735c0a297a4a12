//! The dispatch point: [`DilatedAttentionBackend`], the Burn backend extension every attending
//! module is bounded by.
//!
//! Its default method bodies run core's reference implementation with the backend's own tensor
//! ops, so a backend without kernels needs only an empty impl, and under `Autodiff<B>` the default
//! body differentiates by itself. The trait lives in this crate beside all of its impls because
//! Rust's orphan rule (E0117) rejects an impl of another crate's trait for Burn's backend types;
//! the fused kernels replace these bodies for `CubeBackend` and `Fusion` without changing any
//! caller (the pattern of burn-vision 0.21, `ops/base.rs` and `backends/`).
//!
//! ```
//! use burn::backend::NdArray;
//! use burn::tensor::{Distribution, Tensor, TensorPrimitive};
//! use dilated_attention_core::DilatedAttentionConfig;
//! use dilated_attention_kernels::DilatedAttentionBackend;
//!
//! let device = Default::default();
//! let cfg = DilatedAttentionConfig::new(vec![8], vec![2]);
//! let q = Tensor::<NdArray, 4>::random([1, 16, 2, 8], Distribution::Default, &device);
//! let prim = || q.clone().into_primitive().tensor();
//! let (out, lse) =
//!     <NdArray as DilatedAttentionBackend>::dilated_attention_with_lse(prim(), prim(), prim(), None, &cfg)
//!         .unwrap();
//! assert_eq!(Tensor::<NdArray, 4>::from_primitive(TensorPrimitive::Float(out)).dims(), [1, 16, 2, 8]);
//! # let _ = lse;
//! ```

use burn::tensor::ops::{BoolTensor, FloatTensor};
use burn::tensor::{Bool, Tensor, TensorPrimitive, backend::Backend};
use dilated_attention_core::{DilatedAttentionConfig, Result, reference_dilated_attention};

/// A Burn backend that can run dilated attention.
///
/// Implemented for `NdArray` (feature `ndarray`), `CubeBackend` (feature `cubecl`), `Fusion<B>`
/// (feature `fusion`) and `Autodiff<B>`. The default bodies run the reference path.
pub trait DilatedAttentionBackend: Backend {
    /// Dilated attention with the per-query log-sum-exp, on primitives.
    ///
    /// # Shapes
    /// - `query`, `key`, `value`: `[batch, seq, heads, head_dim]`
    /// - `key_padding_mask`: `[batch, seq]`, true = padded key
    /// - returns the output `[batch, seq, heads, head_dim]` and the log-sum-exp `[batch, seq, heads]`
    ///   (`-inf` where a query sees no key).
    ///
    /// # Errors
    /// Config and shape errors as values (see
    /// [`reference_dilated_attention`](dilated_attention_core::reference_dilated_attention)).
    fn dilated_attention_with_lse(
        query: FloatTensor<Self>,
        key: FloatTensor<Self>,
        value: FloatTensor<Self>,
        key_padding_mask: Option<BoolTensor<Self>>,
        config: &DilatedAttentionConfig,
    ) -> Result<(FloatTensor<Self>, FloatTensor<Self>)> {
        let float =
            |t: FloatTensor<Self>| Tensor::<Self, 4>::from_primitive(TensorPrimitive::Float(t));
        let mask = key_padding_mask.map(Tensor::<Self, 2, Bool>::from_primitive);
        let (out, lse) =
            reference_dilated_attention(float(query), float(key), float(value), mask, config)?;
        Ok((out.into_primitive().tensor(), lse.into_primitive().tensor()))
    }
}
