//! [`HilbertOrder`]: the permutation of a grid's tokens that a Hilbert curve defines, and its
//! inverse.
//!
//! Tokens of a `width x height` grid arrive in raster order (`index = y * width + x`, rows one
//! after the other). The Hilbert order lists them along the curve, so that every run of
//! consecutive tokens (a dilated-attention segment) is a compact patch of the grid. A plain
//! sequence with no grid gets the PyTorch library's default: a square of side `ceil(sqrt(n))`,
//! of which the first `n` raster cells are the tokens (the curve skips the others).
//!
//! ```
//! use dilated_attention_hilbert::HilbertOrder;
//!
//! let order = HilbertOrder::grid(4, 2)?;          // 8 tokens, two rows of four
//! assert_eq!(order.len(), 8);
//! for (i, &token) in order.order().iter().enumerate() {
//!     assert_eq!(order.inverse()[token], i);
//! }
//! let plain = HilbertOrder::sequence(10)?;         // 4 x 4 square, first 10 cells
//! assert_eq!(plain.len(), 10);
//! # Ok::<(), dilated_attention_core::DilatedAttentionError>(())
//! ```

use dilated_attention_core::{DilatedAttentionError, Result};

use crate::hilbert_2d;

/// A permutation of `0..len` along a Hilbert curve; see the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HilbertOrder {
    /// `order[i]`: the raster index of the `i`-th token along the curve.
    order: Vec<usize>,
    /// `inverse[token]`: the position of raster token `token` along the curve.
    inverse: Vec<usize>,
}

impl HilbertOrder {
    /// The order of a `width x height` grid's tokens.
    ///
    /// # Errors
    /// [`ZeroSize`](DilatedAttentionError::ZeroSize) for a side of 0.
    pub fn grid(width: usize, height: usize) -> Result<Self> {
        if width == 0 {
            return Err(DilatedAttentionError::ZeroSize {
                field: "grid width",
            });
        }
        if height == 0 {
            return Err(DilatedAttentionError::ZeroSize {
                field: "grid height",
            });
        }
        let order = hilbert_2d(width, height)
            .into_iter()
            .map(|(x, y)| y * width + x)
            .collect();
        Ok(Self::from_order(order))
    }

    /// The default order of a plain sequence of `len` tokens: the first `len` cells (in raster
    /// order) of a square of side `ceil(sqrt(len))`, along that square's curve.
    ///
    /// # Errors
    /// [`ZeroSize`](DilatedAttentionError::ZeroSize) for `len` 0.
    pub fn sequence(len: usize) -> Result<Self> {
        if len == 0 {
            return Err(DilatedAttentionError::ZeroSize { field: "seq_len" });
        }
        let side = len.isqrt() + usize::from(len.isqrt() * len.isqrt() < len);
        let order = hilbert_2d(side, side)
            .into_iter()
            .map(|(x, y)| y * side + x)
            .filter(|&token| token < len)
            .collect();
        Ok(Self::from_order(order))
    }

    fn from_order(order: Vec<usize>) -> Self {
        let mut inverse = vec![0; order.len()];
        for (i, &token) in order.iter().enumerate() {
            inverse[token] = i;
        }
        Self { order, inverse }
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Always false: an order has at least one token.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// `order()[i]`: the raster index of the `i`-th token along the curve (gather with it to go
    /// from raster to Hilbert order).
    pub fn order(&self) -> &[usize] {
        &self.order
    }

    /// `inverse()[token]`: where raster token `token` sits along the curve (gather with it to go
    /// back).
    pub fn inverse(&self) -> &[usize] {
        &self.inverse
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn orders_are_permutations_with_their_inverse(width in 1usize..=50, height in 1usize..=50, len in 1usize..=3000) {
            for order in [HilbertOrder::grid(width, height).unwrap(), HilbertOrder::sequence(len).unwrap()] {
                let mut sorted = order.order().to_vec();
                sorted.sort_unstable();
                prop_assert_eq!(sorted, (0..order.len()).collect::<Vec<_>>());
                for (i, &t) in order.order().iter().enumerate() {
                    prop_assert_eq!(order.inverse()[t], i);
                }
            }
        }
    }

    #[test]
    fn segments_along_the_curve_are_compact_patches() {
        // 64 x 64 grid, segments of 64 tokens: raster segments are 64 x 1 rows (diameter 63),
        // Hilbert segments are 8 x 8 blocks (diameter 7 in each axis)
        let order = HilbertOrder::grid(64, 64).unwrap();
        for segment in order.order().chunks(64) {
            let xs = segment.iter().map(|t| t % 64);
            let ys = segment.iter().map(|t| t / 64);
            let span = |v: Vec<usize>| v.iter().max().unwrap() - v.iter().min().unwrap();
            assert!(span(xs.collect()) <= 7 && span(ys.collect()) <= 7);
        }
    }

    #[test]
    fn zero_sizes_are_errors() {
        assert!(HilbertOrder::grid(0, 3).is_err());
        assert!(HilbertOrder::sequence(0).is_err());
    }
}
