//! The products of the register-resident forward ([`crate::fused::mma::forward`]) for `f32` inputs on
//! TF32 tensor cores: `mma.sync` m16n8k8 (`tf32` in, `f32` accumulation) through CubeCL's manual
//! MMA. Inputs are rounded to TF32 (10-bit mantissa, round to nearest) as they are read from
//! shared memory; accumulation, the softmax and the output stay `f32`.
//!
//! With `split` each operand `x` is also carried as its rounded residual, `tf32(x - tf32(x))`,
//! and each product takes three MMAs (`a_small b_big + a_big b_small + a_big b_big`, small terms
//! first): only `a_small b_small`, about `2^-22` of the product, is dropped, which is `f32`'s
//! own rounding level (CUTLASS's "3xTF32").
//!
//! The accumulator layout of m16n8k8 is that of m16n8k16 ([`crate::fused::mma::tiles`]): unit
//! `(g, t) = (lane / 4, lane % 4)` holds rows `g`, `g + 8` at columns `2t, 2t + 1` of every
//! 8-column block, as two [`Pair`]s. Operands (PTX, tf32 m16n8k8): `A` registers are
//! `(g, t), (g + 8, t), (g, t + 4), (g + 8, t + 4)`, `B` registers `(k = t, n = g)`,
//! `(k = t + 4, n = g)`. Two permutations, invisible outside these functions, keep every
//! operand in registers or one shared load away and the shared loads free of bank conflicts
//! (rows of `head_dim + 8` values: a row stride of 8 or 24 banks):
//! - along the head dimension, a block's logical columns `t` and `t + 4` are its columns `2t`
//!   and `2t + 1` (the same for `Q` and `K`, so the product is unchanged);
//! - along the keys, an 8-key block's column `n` of `S` is its key [`key_of_column`]`(n)`,
//!   which swaps the two keys of each pair in the upper half of the block. `P`'s accumulator
//!   pairs are then the `A` operand of `O += P V` as they stand (logical `t`, `t + 4` = columns
//!   `2t`, `2t + 1`), with `V`'s rows `key_of_column(2t)`, `key_of_column(2t + 1)`.
//!
//! Callers that look at a score's key (masks) use [`key_of_column`]; `tile_scores_tf32`'s
//! columns are keys in that order.

use burn_cubecl::cubecl;
use burn_cubecl::cubecl::cmma::MmaDefinition;
use burn_cubecl::cubecl::prelude::*;

use crate::fused::mma::tiles::{Pair, TileProduct};

/// One TF32 operand register.
pub(crate) type Tf32 = Vector<tf32, Const<1>>;

/// The m16n8k8 TF32 product into `f32`.
#[cube]
pub(crate) fn tf32_definition() -> MmaDefinition<tf32, tf32, f32> {
    MmaDefinition::<tf32, tf32, f32>::new(16usize, 8usize, 8usize)
}

/// `x` as TF32 at `at` and, with `split`, its residual `tf32(x - tf32(x))` at `at + offset`.
#[cube]
fn store_operand<F: Float>(
    fragment: &mut Array<Tf32>,
    at: usize,
    x: F,
    #[comptime] offset: usize,
    #[comptime] split: bool,
) {
    let big = Tf32::cast_from(x);
    fragment[at] = big;
    if split {
        let value = f32::cast_from(x);
        let rounded = f32::cast_from(big[0]);
        fragment[at + offset] = Tf32::cast_from(value - rounded);
    }
}

/// `acc += A B` for the TF32 registers `a` (4; with `split` 8: values, then residuals) and `b`
/// (2; with `split` 4).
#[cube]
fn multiply_tf32(
    def: &MmaDefinition<tf32, tf32, f32>,
    a: &Array<Tf32>,
    b: &Array<Tf32>,
    acc: &mut Array<Pair<f32>>,
    #[comptime] split: bool,
) {
    if split {
        let mut a_big = Array::<Tf32>::new(4usize);
        let mut a_small = Array::<Tf32>::new(4usize);
        #[unroll]
        for i in 0..4usize {
            a_big[i] = a[i];
            a_small[i] = a[4 + i];
        }
        let mut b_big = Array::<Tf32>::new(2usize);
        let mut b_small = Array::<Tf32>::new(2usize);
        #[unroll]
        for i in 0..2usize {
            b_big[i] = b[i];
            b_small[i] = b[2 + i];
        }
        def.execute_inplace(&a_small, &b_big, acc);
        def.execute_inplace(&a_big, &b_small, acc);
        def.execute_inplace(&a_big, &b_big, acc);
    } else {
        def.execute_inplace(a, b, acc);
    }
}

/// The key (within its 8-key block) of column `column` of a score block: the two keys of each
/// pair in the block's upper half swap places (`column ^ (column >> 2)`).
#[cube]
pub(crate) fn key_of_column(column: usize) -> usize {
    column ^ (column >> 2)
}

/// The per-column values of this unit's score pair in block `block` (columns `8 block + 2 quad`
/// and the next, from `values` at `base`), in the order the pair holds its keys: with
/// `pairs_swapped` (TF32 scores), [`key_of_column`]'s order.
#[cube]
pub(crate) fn column_pair(
    values: &SharedMemory<f32>,
    base: usize,
    block: usize,
    quad: usize,
    #[comptime] pairs_swapped: bool,
) -> Pair<f32> {
    let col = base + block * 8 + 2 * quad;
    let pair = values
        .slice(col, col + 2)
        .into_vectorized()
        .with_vector_size::<Const<2>>()[0];
    let mut ordered = pair;
    if pairs_swapped {
        let flip = key_of_column(2 * quad) != 2 * quad;
        ordered[0] = select(flip, pair[1], pair[0]);
        ordered[1] = select(flip, pair[0], pair[1]);
    }
    ordered
}

/// Loads a plane's 16 rows, rows `first_row ..` of the staged tile in `tiles` (row stride
/// `stride`), as TF32 `A` registers: `head_dim / 8` blocks of four; with `split` the residuals
/// follow, from `head_dim / 2` on.
#[cube]
pub(crate) fn load_plane_rows_tf32<F: Float>(
    tiles: &SharedMemory<F>,
    fragment: &mut Array<Tf32>,
    first_row: usize,
    lane: usize,
    #[comptime] head_dim: usize,
    #[comptime] stride: usize,
    #[comptime] split: bool,
) {
    let residuals = comptime!(head_dim / 2);
    let row_a = (first_row + lane / 4) * stride;
    let row_b = row_a + 8 * stride;
    #[unroll]
    for kb in 0..comptime!(head_dim / 8) {
        let column = kb * 8 + 2 * (lane % 4);
        let at = 4 * kb;
        store_operand::<F>(fragment, at, tiles[row_a + column], residuals, split);
        store_operand::<F>(fragment, at + 1, tiles[row_b + column], residuals, split);
        store_operand::<F>(
            fragment,
            at + 2,
            tiles[row_a + column + 1],
            residuals,
            split,
        );
        store_operand::<F>(
            fragment,
            at + 3,
            tiles[row_b + column + 1],
            residuals,
            split,
        );
    }
}

/// `scores = A B^T` for one plane on TF32: `a` holds the plane's 16 rows
/// ([`stage_cube_rows_tf32`]), the tile at `base` holds `tile_rows` rows of `head_dim` (row
/// stride `stride`), the columns of `B`. `scores` gets `2 tile_rows / 8` pairs, each 8-column
/// block's keys in [`key_of_column`] order.
/// `tile_rows`, `head_dim` and `stride` are `product`'s (with its `split`).
#[cube]
pub(crate) fn tile_scores_tf32<F: Float>(
    a: &Array<Tf32>,
    tiles: &SharedMemory<F>,
    base: usize,
    lane: usize,
    scores: &mut Array<Pair<f32>>,
    #[comptime] product: TileProduct,
) {
    let tile_rows = product.tile_rows;
    let head_dim = product.head_dim;
    let stride = product.stride;
    let split = product.split;
    let def = tf32_definition();
    let quad = lane % 4;
    let key = key_of_column(lane / 4);
    let residuals = comptime!(head_dim / 2);
    let a_count = comptime!(if split { 8usize } else { 4usize });
    let b_count = comptime!(if split { 4usize } else { 2usize });
    #[unroll]
    for nb in 0..comptime!(tile_rows / 8) {
        let mut acc = Array::<Pair<f32>>::new(2usize);
        acc[0] = Pair::<f32>::zeroed();
        acc[1] = Pair::<f32>::zeroed();
        let row = base + (nb * 8 + key) * stride + 2 * quad;
        #[unroll]
        for kb in 0..comptime!(head_dim / 8) {
            let mut a_block = Array::<Tf32>::new(a_count);
            #[unroll]
            for i in 0..4usize {
                a_block[i] = a[4 * kb + i];
                if split {
                    a_block[4 + i] = a[residuals + 4 * kb + i];
                }
            }
            let mut b = Array::<Tf32>::new(b_count);
            store_operand::<F>(&mut b, 0usize, tiles[row + kb * 8], 2usize, split);
            store_operand::<F>(&mut b, 1usize, tiles[row + kb * 8 + 1], 2usize, split);
            multiply_tf32(&def, &a_block, &b, &mut acc, split);
        }
        scores[2 * nb] = acc[0];
        scores[2 * nb + 1] = acc[1];
    }
}

/// `out += W T` for one plane on TF32: `W` is the plane's 16 x `tile_rows` weights in registers
/// (`scores` layout, keys in [`key_of_column`] order, rounded to TF32 as the `A` operand), `T`
/// is the tile at `base` (`tile_rows` rows of `head_dim`, row stride `stride`), read by scalar
/// shared loads as `B`. `out` holds `2 head_dim / 8` pairs.
/// `tile_rows`, `head_dim` and `stride` are `product`'s (with its `split`).
#[cube]
pub(crate) fn accumulate_weighted_rows_tf32<F: Float>(
    weights: &Array<Pair<f32>>,
    tiles: &SharedMemory<F>,
    base: usize,
    lane: usize,
    out: &mut Array<Pair<f32>>,
    #[comptime] product: TileProduct,
) {
    let tile_rows = product.tile_rows;
    let head_dim = product.head_dim;
    let stride = product.stride;
    let split = product.split;
    let def = tf32_definition();
    let a_count = comptime!(if split { 8usize } else { 4usize });
    let b_count = comptime!(if split { 4usize } else { 2usize });
    let group = lane / 4;
    let quad = lane % 4;
    let first_key = key_of_column(2 * quad);
    let second_key = key_of_column(2 * quad + 1);
    #[unroll]
    for kb in 0..comptime!(tile_rows / 8) {
        let w_a = weights[2 * kb];
        let w_b = weights[2 * kb + 1];
        let mut a = Array::<Tf32>::new(a_count);
        store_operand::<f32>(&mut a, 0usize, w_a[0], 4usize, split);
        store_operand::<f32>(&mut a, 1usize, w_b[0], 4usize, split);
        store_operand::<f32>(&mut a, 2usize, w_a[1], 4usize, split);
        store_operand::<f32>(&mut a, 3usize, w_b[1], 4usize, split);
        let first = base + (kb * 8 + first_key) * stride + group;
        let second = base + (kb * 8 + second_key) * stride + group;
        #[unroll]
        for dn in 0..comptime!(head_dim / 8) {
            let mut b = Array::<Tf32>::new(b_count);
            store_operand::<F>(&mut b, 0usize, tiles[first + dn * 8], 2usize, split);
            store_operand::<F>(&mut b, 1usize, tiles[second + dn * 8], 2usize, split);
            let mut acc = Array::<Pair<f32>>::new(2usize);
            acc[0] = out[2 * dn];
            acc[1] = out[2 * dn + 1];
            multiply_tf32(&def, &a, &b, &mut acc, split);
            out[2 * dn] = acc[0];
            out[2 * dn + 1] = acc[1];
        }
    }
}

#[cfg(test)]
mod tests {
    /// The host-side twin of `key_of_column`, for the checks below.
    fn key_of_column(column: usize) -> usize {
        column ^ (column >> 2)
    }

    /// Bank of a 32-bit shared word.
    fn bank(word: usize) -> usize {
        word % 32
    }

    #[test]
    fn key_order_is_a_permutation_that_keeps_pairs_together() {
        let mut keys: Vec<usize> = (0..8).map(key_of_column).collect();
        for t in 0..4 {
            assert_eq!(keys[2 * t] / 2, t);
            assert_eq!(keys[2 * t + 1] / 2, t);
        }
        keys.sort_unstable();
        assert_eq!(keys, (0..8).collect::<Vec<_>>());
    }

    /// `V`'s loads in `O += P V` (one word per unit, rows `key_of_column(2t)`, column `g`) and
    /// `K`'s in `S = Q K^T` (rows `key_of_column(g)`, columns `2t`, `2t + 1`: two words per
    /// unit, 16 units per shared-memory wavefront) touch 32 distinct banks for every head dim
    /// the kernels take (row stride `head_dim + 8`).
    #[test]
    fn operand_loads_are_free_of_bank_conflicts() {
        for head_dim in (16..=128).step_by(16) {
            let stride = head_dim + 8;
            for second in [false, true] {
                let mut banks: Vec<usize> = (0..32)
                    .map(|lane| {
                        let (g, t) = (lane / 4, lane % 4);
                        bank(key_of_column(2 * t + usize::from(second)) * stride + g)
                    })
                    .collect();
                banks.sort_unstable();
                banks.dedup();
                assert_eq!(banks.len(), 32, "V, head_dim {head_dim}");
            }
            for half in 0..2 {
                let mut banks: Vec<usize> = (16 * half..16 * half + 16)
                    .flat_map(|lane| {
                        let (g, t) = (lane / 4, lane % 4);
                        let word = key_of_column(g) * stride + 2 * t;
                        [bank(word), bank(word + 1)]
                    })
                    .collect();
                banks.sort_unstable();
                banks.dedup();
                assert_eq!(banks.len(), 32, "K, head_dim {head_dim}");
            }
        }
    }
}
