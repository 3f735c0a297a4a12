//! [`HilbertDilatedAttention`]: dilated attention over tokens serialised along a Hilbert curve,
//! so that every segment is a compact patch of the grid; the output comes back in the input's
//! order.
//!
//! Input and output are `[batch, seq, heads, head_dim]` with tokens in raster order of a 2-D grid
//! (`seq = width * height`) or of a 3-D volume (`seq = width * height * depth`: voxels, or video
//! frames of patches), or a plain sequence with the default square grid of side
//! `ceil(sqrt(seq))` (the PyTorch library's). Point clouds bring their own order
//! ([`HilbertOrder::points_3d`]) to [`HilbertDilatedAttention::try_forward_with_order`]; one
//! order serves the whole batch. Where the fused kernels run (CUDA, WGPU), they read the order as
//! an index array: each row is read and written at its token's place, so no tensor is copied
//! into Hilbert order and back, forward or backward. Elsewhere (NdArray, the reference path)
//! the permutation is a gather before the attention and one after it. The orders are cached
//! per shape.
//!
//! ```
//! use burn::backend::NdArray;
//! use burn::tensor::{Distribution, Tensor};
//! use dilated_attention_core::DilatedAttentionConfig;
//! use dilated_attention_hilbert::HilbertDilatedAttentionConfig;
//!
//! let device = Default::default();
//! // a 16 x 8 image of tokens: segments of 16 tokens are 4 x 4 patches
//! let attn = HilbertDilatedAttentionConfig::new(DilatedAttentionConfig::new(vec![16, 64], vec![1, 2]))
//!     .with_grid(Some([16, 8]))
//!     .init::<NdArray>(&device);
//! let x = Tensor::<NdArray, 4>::random([1, 128, 4, 8], Distribution::Default, &device);
//! let out = attn.forward(x.clone(), x.clone(), x);
//! assert_eq!(out.dims(), [1, 128, 4, 8]);
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Bool, Tensor, backend::Backend};
use dilated_attention_core::{
    DilatedAttentionConfig, DilatedAttentionError, Result, check_attention_inputs,
};
use dilated_attention_kernels::{DilatedAttentionBackend, dilated_attention_along_order};

use crate::HilbertOrder;

/// Config of [`HilbertDilatedAttention`].
#[derive(Config, Debug)]
pub struct HilbertDilatedAttentionConfig {
    /// The dilated attention run along the curve.
    pub attention: DilatedAttentionConfig,
    /// `[width, height]` of the token grid (raster order, `seq = width * height`); `None` (and no
    /// volume): the default square of side `ceil(sqrt(seq))`.
    pub grid: Option<[usize; 2]>,
    /// `[width, height, depth]` of a token volume (raster order, `x` fastest, then `y`, then
    /// `z`; `seq = width * height * depth`). At most one of `grid` and `volume`.
    pub volume: Option<[usize; 3]>,
}

/// The layout an order is computed for.
type OrderKey = (usize, Option<[usize; 2]>, Option<[usize; 3]>);

/// Orders already computed, per (sequence length, grid, volume).
type OrderCache = Arc<Mutex<HashMap<OrderKey, Arc<HilbertOrder>>>>;

/// Hilbert-ordered dilated attention; see the [module docs](self).
#[derive(Module, Debug)]
pub struct HilbertDilatedAttention<B: Backend> {
    #[module(skip)]
    config: HilbertDilatedAttentionConfig,
    #[module(skip)]
    cache: OrderCache,
    _backend: core::marker::PhantomData<B>,
}

impl HilbertDilatedAttentionConfig {
    /// Validates the config and builds the module.
    ///
    /// # Errors
    /// The attention config's errors; [`ZeroSize`](DilatedAttentionError::ZeroSize) for a grid
    /// or volume side of 0; [`ConflictingOptions`](DilatedAttentionError::ConflictingOptions)
    /// when both a grid and a volume are set.
    pub fn try_init<B: Backend>(&self, _device: &B::Device) -> Result<HilbertDilatedAttention<B>> {
        self.attention.validate()?;
        if self.grid.is_some() && self.volume.is_some() {
            return Err(DilatedAttentionError::ConflictingOptions {
                first: "grid",
                second: "volume",
            });
        }
        if self.grid.is_some_and(|sides| sides.contains(&0)) {
            return Err(DilatedAttentionError::ZeroSize { field: "grid side" });
        }
        if self.volume.is_some_and(|sides| sides.contains(&0)) {
            return Err(DilatedAttentionError::ZeroSize {
                field: "volume side",
            });
        }
        Ok(HilbertDilatedAttention {
            config: self.clone(),
            cache: OrderCache::default(),
            _backend: core::marker::PhantomData,
        })
    }

    /// Builds the module.
    ///
    /// # Panics
    /// If the config is invalid, with the message of [`Self::try_init`]'s error.
    pub fn init<B: Backend>(&self, device: &B::Device) -> HilbertDilatedAttention<B> {
        self.try_init(device).unwrap_or_else(|e| panic!("{e}"))
    }
}

impl<B: Backend> HilbertDilatedAttention<B> {
    /// The config the module was built from.
    pub fn config(&self) -> &HilbertDilatedAttentionConfig {
        &self.config
    }

    /// The order for a sequence of `seq_len` tokens (cached).
    ///
    /// # Errors
    /// [`SequenceMismatch`](DilatedAttentionError::SequenceMismatch) when the grid or volume
    /// does not have `seq_len` cells; [`ZeroSize`](DilatedAttentionError::ZeroSize).
    pub fn order(&self, seq_len: usize) -> Result<Arc<HilbertOrder>> {
        let key = (seq_len, self.config.grid, self.config.volume);
        if let Some(order) = self.cache.lock().expect("order cache").get(&key) {
            return Ok(order.clone());
        }
        let cells = |name, count: usize| {
            if count == seq_len {
                Ok(())
            } else {
                Err(DilatedAttentionError::SequenceMismatch {
                    name,
                    query: seq_len,
                    actual: count,
                })
            }
        };
        let order = match (self.config.grid, self.config.volume) {
            (Some([w, h]), _) => {
                cells("grid (width * height)", w * h)?;
                HilbertOrder::grid(w, h)?
            }
            (None, Some([w, h, d])) => {
                cells("volume (width * height * depth)", w * h * d)?;
                HilbertOrder::volume(w, h, d)?
            }
            (None, None) => HilbertOrder::sequence(seq_len)?,
        };
        let order = Arc::new(order);
        self.cache
            .lock()
            .expect("order cache")
            .insert(key, order.clone());
        Ok(order)
    }
}

impl<B: DilatedAttentionBackend> HilbertDilatedAttention<B> {
    /// Attention output in the input's order.
    ///
    /// # Panics
    /// On any error of [`Self::try_forward_with_lse`], with its message.
    pub fn forward(
        &self,
        query: Tensor<B, 4>,
        key: Tensor<B, 4>,
        value: Tensor<B, 4>,
    ) -> Tensor<B, 4> {
        self.try_forward(query, key, value)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Attention output in the input's order, with errors as values.
    ///
    /// # Errors
    /// See [`Self::try_forward_with_lse`].
    pub fn try_forward(
        &self,
        query: Tensor<B, 4>,
        key: Tensor<B, 4>,
        value: Tensor<B, 4>,
    ) -> Result<Tensor<B, 4>> {
        self.try_forward_with_lse(query, key, value, None)
            .map(|(out, _)| out)
    }

    /// Output `[batch, seq, heads, head_dim]` and log-sum-exp `[batch, seq, heads]`, both in the
    /// input's order, with an optional key padding mask (`[batch, seq]`, input order).
    ///
    /// # Errors
    /// Shape and config errors, and the grid errors of [`Self::order`].
    pub fn try_forward_with_lse(
        &self,
        query: Tensor<B, 4>,
        key: Tensor<B, 4>,
        value: Tensor<B, 4>,
        key_padding_mask: Option<Tensor<B, 2, Bool>>,
    ) -> Result<(Tensor<B, 4>, Tensor<B, 3>)> {
        let shape = check_attention_inputs(&query, &key, &value, key_padding_mask.as_ref())?;
        let order = self.order(shape.seq_len)?;
        self.try_forward_with_order(query, key, value, key_padding_mask, &order)
    }

    /// As [`Self::try_forward_with_lse`] along a given order (e.g. of a point cloud, from
    /// [`HilbertOrder::points_3d`]) instead of the config's grid; the same order for every
    /// batch element.
    ///
    /// # Errors
    /// Shape and config errors; [`SequenceMismatch`](DilatedAttentionError::SequenceMismatch)
    /// when the order does not have `seq` tokens.
    pub fn try_forward_with_order(
        &self,
        query: Tensor<B, 4>,
        key: Tensor<B, 4>,
        value: Tensor<B, 4>,
        key_padding_mask: Option<Tensor<B, 2, Bool>>,
        order: &HilbertOrder,
    ) -> Result<(Tensor<B, 4>, Tensor<B, 3>)> {
        // checks the shapes and the order's length
        dilated_attention_along_order(
            query,
            key,
            value,
            key_padding_mask,
            &self.config.attention,
            order.sequence_order(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    type B = NdArray;

    #[test]
    fn the_cache_keeps_one_order_per_shape() {
        let attn =
            HilbertDilatedAttentionConfig::new(DilatedAttentionConfig::new(vec![8], vec![1]))
                .init::<B>(&Default::default());
        let a = attn.order(50).unwrap();
        let b = attn.order(50).unwrap();
        let c = attn.order(64).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(*a, HilbertOrder::sequence(50).unwrap());
        assert_eq!(*c, HilbertOrder::sequence(64).unwrap());
        assert_eq!(attn.cache.lock().unwrap().len(), 2);
    }

    #[test]
    fn a_grid_and_a_volume_together_are_an_error() {
        let cfg = HilbertDilatedAttentionConfig::new(DilatedAttentionConfig::new(vec![8], vec![1]))
            .with_grid(Some([4, 4]))
            .with_volume(Some([2, 2, 4]));
        assert!(matches!(
            cfg.try_init::<B>(&Default::default()),
            Err(DilatedAttentionError::ConflictingOptions { .. })
        ));
    }

    #[test]
    fn an_order_of_the_wrong_length_is_an_error() {
        let attn =
            HilbertDilatedAttentionConfig::new(DilatedAttentionConfig::new(vec![8], vec![1]))
                .init::<B>(&Default::default());
        let x = Tensor::<B, 4>::zeros([1, 24, 2, 4], &Default::default());
        let order = HilbertOrder::volume(2, 3, 5).unwrap();
        assert!(matches!(
            attn.try_forward_with_order(x.clone(), x.clone(), x, None, &order),
            Err(DilatedAttentionError::SequenceMismatch {
                query: 24,
                actual: 30,
                ..
            })
        ));
    }

    #[test]
    fn a_grid_of_the_wrong_size_is_an_error() {
        let attn =
            HilbertDilatedAttentionConfig::new(DilatedAttentionConfig::new(vec![8], vec![1]))
                .with_grid(Some([5, 5]))
                .init::<B>(&Default::default());
        let x = Tensor::<B, 4>::zeros([1, 24, 2, 4], &Default::default());
        assert!(matches!(
            attn.try_forward(x.clone(), x.clone(), x),
            Err(DilatedAttentionError::SequenceMismatch {
                query: 24,
                actual: 25,
                ..
            })
        ));
    }
}
