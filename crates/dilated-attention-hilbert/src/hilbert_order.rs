//! [`HilbertOrder`]: the permutation of a grid's tokens that a Hilbert curve defines, and its
//! inverse: for 2-D grids, 3-D volumes (voxels, video as `width x height x frames`) and point
//! clouds (quantised coordinates).
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
//! let video = HilbertOrder::volume(8, 8, 4)?;      // 4 frames of 8 x 8
//! assert_eq!(video.len(), 256);
//! // a point cloud: points that are close in space come close along the curve
//! let cloud = HilbertOrder::points_3d(&[[0.0, 0.0, 0.0], [9.0, 9.0, 9.0], [0.1, 0.0, 0.2]], 16)?;
//! assert_eq!(cloud.inverse()[0].abs_diff(cloud.inverse()[2]), 1);
//! # Ok::<(), dilated_attention_core::DilatedAttentionError>(())
//! ```

use dilated_attention_core::{DilatedAttentionError, Result, SequenceOrder, inverse_permutation};

use crate::{hilbert_2d, hilbert_3d};

/// Largest number of cells of the quantisation grid of [`HilbertOrder::points_2d`] and
/// [`HilbertOrder::points_3d`] (`side^2` or `side^3`): the curve is enumerated once per call.
pub const MAX_POINT_GRID_CELLS: usize = 1 << 24;

/// A permutation of `0..len` along a Hilbert curve; see the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HilbertOrder {
    /// `order[i]`: the raster index of the `i`-th token along the curve.
    order: Vec<usize>,
    /// `inverse[token]`: the position of raster token `token` along the curve.
    inverse: Vec<usize>,
    /// `order` as the index array the fused kernels read.
    sequence: SequenceOrder,
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
        Self::from_order(order)
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
        Self::from_order(order)
    }

    /// The order of a `width x height x depth` volume's tokens, in raster order
    /// `index = (z * height + y) * width + x` (a video of `depth` frames of `width x height`
    /// patches, frame after frame).
    ///
    /// # Errors
    /// [`ZeroSize`](DilatedAttentionError::ZeroSize) for a side of 0.
    pub fn volume(width: usize, height: usize, depth: usize) -> Result<Self> {
        for (field, side) in [
            ("volume width", width),
            ("volume height", height),
            ("volume depth", depth),
        ] {
            if side == 0 {
                return Err(DilatedAttentionError::ZeroSize { field });
            }
        }
        let order = hilbert_3d(width, height, depth)
            .into_iter()
            .map(|(x, y, z)| (z * height + y) * width + x)
            .collect();
        Self::from_order(order)
    }

    /// The order of a 2-D point cloud: every point is quantised to a `side x side` grid over
    /// its bounding square (one scale for both axes, so shapes keep their proportions), and
    /// points are listed along that grid's curve; points of one cell keep their input order.
    ///
    /// # Errors
    /// [`ZeroSize`](DilatedAttentionError::ZeroSize) for no points or `side` 0;
    /// [`NonFinite`](DilatedAttentionError::NonFinite) for NaN or infinite coordinates;
    /// [`TooLarge`](DilatedAttentionError::TooLarge) when `side^2` exceeds
    /// [`MAX_POINT_GRID_CELLS`].
    pub fn points_2d(points: &[[f32; 2]], side: usize) -> Result<Self> {
        let cells = quantise(points, side)?;
        let rank = curve_rank(
            hilbert_2d(side, side)
                .into_iter()
                .map(|(x, y)| y * side + x),
            side * side,
        );
        Self::from_cells(&cells, |cell| rank[cell[1] * side + cell[0]])
    }

    /// The order of a 3-D point cloud: as [`Self::points_2d`] with a `side^3` grid over the
    /// bounding cube.
    ///
    /// # Errors
    /// As [`Self::points_2d`], with `side^3` cells.
    pub fn points_3d(points: &[[f32; 3]], side: usize) -> Result<Self> {
        let cells = quantise(points, side)?;
        let rank = curve_rank(
            hilbert_3d(side, side, side)
                .into_iter()
                .map(|(x, y, z)| (z * side + y) * side + x),
            side * side * side,
        );
        Self::from_cells(&cells, |cell| {
            rank[(cell[2] * side + cell[1]) * side + cell[0]]
        })
    }

    /// Sorts the points by the curve position of their cell, ties in input order.
    fn from_cells<const D: usize>(
        cells: &[[usize; D]],
        position: impl Fn(&[usize; D]) -> u32,
    ) -> Result<Self> {
        let mut order: Vec<usize> = (0..cells.len()).collect();
        order.sort_by_key(|&i| (position(&cells[i]), i));
        Self::from_order(order)
    }

    fn from_order(order: Vec<usize>) -> Result<Self> {
        let inverse = inverse_permutation(&order);
        let sequence = SequenceOrder::new(order.clone())?;
        Ok(Self {
            order,
            inverse,
            sequence,
        })
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

    /// The order as a [`SequenceOrder`], for
    /// [`dilated_attention_along_order`](dilated_attention_kernels::dilated_attention_along_order).
    pub fn sequence_order(&self) -> &SequenceOrder {
        &self.sequence
    }
}

/// `rank[cell]`: the position of `cell` (a raster index) along the curve that visits `cells`.
fn curve_rank(cells: impl Iterator<Item = usize>, count: usize) -> Vec<u32> {
    let mut rank = vec![0u32; count];
    for (position, cell) in cells.enumerate() {
        // count <= MAX_POINT_GRID_CELLS < 2^32
        rank[cell] = position as u32;
    }
    rank
}

/// The cell of every point in a `side^D` grid over the points' bounding cube.
fn quantise<const D: usize>(points: &[[f32; D]], side: usize) -> Result<Vec<[usize; D]>> {
    if points.is_empty() {
        return Err(DilatedAttentionError::ZeroSize { field: "points" });
    }
    if side == 0 {
        return Err(DilatedAttentionError::ZeroSize {
            field: "point grid side",
        });
    }
    let cells = side.checked_pow(D as u32).unwrap_or(usize::MAX);
    if cells > MAX_POINT_GRID_CELLS {
        return Err(DilatedAttentionError::TooLarge {
            field: "point grid cells (side^dims)",
            value: cells,
            limit: MAX_POINT_GRID_CELLS,
        });
    }
    let bad = points.iter().flatten().filter(|c| !c.is_finite()).count();
    if bad > 0 {
        return Err(DilatedAttentionError::NonFinite {
            name: "point coordinates",
            rank: 0,
            count: bad,
        });
    }
    let mut low = [f64::INFINITY; D];
    let mut high = [f64::NEG_INFINITY; D];
    for point in points {
        for axis in 0..D {
            low[axis] = low[axis].min(f64::from(point[axis]));
            high[axis] = high[axis].max(f64::from(point[axis]));
        }
    }
    let extent = (0..D).map(|a| high[a] - low[a]).fold(0.0, f64::max);
    let scale = if extent > 0.0 {
        side as f64 / extent
    } else {
        0.0
    };
    Ok(points
        .iter()
        .map(|point| {
            std::array::from_fn(|axis| {
                let cell = ((f64::from(point[axis]) - low[axis]) * scale).floor() as usize;
                cell.min(side - 1)
            })
        })
        .collect())
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
        assert!(HilbertOrder::volume(2, 0, 2).is_err());
        assert!(HilbertOrder::points_3d(&[], 4).is_err());
        assert!(HilbertOrder::points_2d(&[[0.0, 1.0]], 0).is_err());
    }

    #[test]
    fn bad_point_clouds_are_typed_errors() {
        assert!(matches!(
            HilbertOrder::points_3d(&[[0.0, f32::NAN, 1.0], [1.0, 2.0, f32::INFINITY]], 8),
            Err(DilatedAttentionError::NonFinite { count: 2, .. })
        ));
        assert!(matches!(
            HilbertOrder::points_3d(&[[0.0; 3]], 1 << 9),
            Err(DilatedAttentionError::TooLarge { .. })
        ));
    }

    proptest! {
        #[test]
        fn volume_and_point_orders_are_permutations_with_their_inverse(
            w in 1usize..=12, h in 1usize..=12, d in 1usize..=12,
            points in prop::collection::vec(prop::array::uniform3(-100.0f32..100.0), 1..200),
            side in 1usize..=32,
        ) {
            let flat: Vec<[f32; 2]> = points.iter().map(|p| [p[0], p[1]]).collect();
            for order in [
                HilbertOrder::volume(w, h, d).unwrap(),
                HilbertOrder::points_3d(&points, side).unwrap(),
                HilbertOrder::points_2d(&flat, side).unwrap(),
            ] {
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
    fn points_on_a_lattice_follow_the_volume_order() {
        // one point per cell of a 4^3 lattice, given in a scrambled order: the point order is
        // the volume's curve order mapped through the scramble
        let side = 4;
        let volume = HilbertOrder::volume(side, side, side).unwrap();
        let scramble: Vec<usize> = (0..64).map(|i| (i * 37) % 64).collect();
        let points: Vec<[f32; 3]> = scramble
            .iter()
            .map(|&cell| {
                let (x, y, z) = (cell % side, (cell / side) % side, cell / (side * side));
                // cell centres, so that quantisation puts each point in its own cell
                [x as f32 + 0.5, y as f32 + 0.5, z as f32 + 0.5]
            })
            .collect();
        // the bounding cube of the centres spans 3 units: rescale to 4 cells of width 0.75
        let cloud = HilbertOrder::points_3d(&points, side).unwrap();
        let cells_along_curve: Vec<usize> =
            cloud.order().iter().map(|&point| scramble[point]).collect();
        assert_eq!(cells_along_curve, volume.order());
    }

    #[test]
    fn segments_of_a_volume_are_compact_blocks() {
        // 16^3 voxels, segments of 64: 4 x 4 x 4 blocks along the curve, 64 x 1 x 1 rows in raster
        let order = HilbertOrder::volume(16, 16, 16).unwrap();
        for segment in order.order().chunks(64) {
            let coords: Vec<[usize; 3]> = segment
                .iter()
                .map(|&t| [t % 16, (t / 16) % 16, t / 256])
                .collect();
            for axis in 0..3 {
                let values = coords.iter().map(|c| c[axis]);
                let span = values.clone().max().unwrap() - values.min().unwrap();
                assert!(span <= 3, "axis {axis}: span {span}");
            }
        }
    }
}
