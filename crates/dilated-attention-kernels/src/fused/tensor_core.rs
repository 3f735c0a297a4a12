//! What the two tensor-core families ([`super::cmma`] and [`super::mma`]) share: the cube's
//! shape (4 planes of 32 units over 64 query rows), the padding of shared-memory row tiles, the
//! additive score of a masked key, the rescaling margin of the online softmax, and the key bias
//! that masks a walked key tile.

use burn_cubecl::cubecl;
use burn_cubecl::cubecl::prelude::*;

use super::rows::memory_row;
use super::tile_walk::KeyTile;

/// Rows per cube of the tensor-core kernels (4 planes of 16 rows).
pub(crate) const TENSOR_CORE_BLOCK_ROWS: usize = 64;
/// Planes per cube.
pub(crate) const TENSOR_CORE_PLANES: usize = 4;
/// Units per cube.
pub(crate) const TENSOR_CORE_UNITS: usize = 32 * TENSOR_CORE_PLANES;

/// How far (in natural-log units) a row's tile max may exceed its reference max before the
/// accumulator is rescaled: probabilities stay `<= e^8 ~ 2981` between rescales.
pub(crate) const RESCALE_MARGIN: f32 = 8.0;

/// Additive score of a masked key: finite (fast math assumes no infinities), far below every
/// real score, and twice of it still finite in `f32`.
pub(crate) const KEY_MASKED: f32 = -1.0e30;
/// Padding of a row of the key and value tiles (8 halves) so that the 16 rows a `cmma` load
/// reads start on different banks.
pub(crate) const KEY_PAD: usize = 8;

/// Additive mask of key `unit` of `tile`: 0 when it exists and is not padded, else
/// [`KEY_MASKED`] (for `unit < key_tile`).
#[cube]
pub(crate) fn key_bias<F: Float>(
    padding: &Tensor<F>,
    order: &Array<u32>,
    tile: &KeyTile,
    batch: usize,
    unit: usize,
    #[comptime] key_tile: usize,
    #[comptime] has_padding: bool,
    #[comptime] ordered: bool,
) -> f32 {
    let t = tile.tile * key_tile + unit;
    let mut bias = f32::new(KEY_MASKED);
    if tile.valid && unit < key_tile && t < tile.key_count {
        bias = 0.0;
        if has_padding {
            let pos = memory_row(order, tile.key_start + t * tile.dilation, ordered);
            let padded =
                f32::cast_from(padding[batch * padding.stride(0) + pos * padding.stride(1)]);
            bias = select(padded > 0.5, f32::new(KEY_MASKED), 0.0f32);
        }
    }
    bias
}
