//! What the register-resident kernels share ([`crate::fused::mma::forward`] and the `mma` backward
//! kernels): `mma.sync` m16n8k16 through CubeCL's manual MMA (`f16`/`bf16` in, `f32`
//! accumulation), operands from shared memory by `ldmatrix`, tiles copied by `cp.async`.
//!
//! Register layouts (PTX, per plane of 32 units; unit `(g, t) = (lane / 4, lane % 4)`):
//! - an accumulator block (16 rows x 8 columns) is two [`Pair`]s: row `g`, then row `g + 8`, each
//!   at columns `2t, 2t + 1`; a 16 x `8 n` tile is `2 n` pairs, block-major;
//! - an `A` block (16 x 16) is four pairs: (row `g`, cols `2t..`), (`g + 8`, `2t..`),
//!   (`g`, `2t + 8..`), (`g + 8`, `2t + 8..`): the accumulators of two adjacent 8-column blocks,
//!   in order, so a tile of scores is the `A` operand of the next product as it stands.

use burn_cubecl::cubecl;
use burn_cubecl::cubecl::cmma::{MatrixIdent, MmaDefinition};
use burn_cubecl::cubecl::prelude::*;

use crate::fused::mma::tf32::{column_pair, key_of_column};
use crate::fused::rows::memory_row;
use crate::fused::tensor_core::KEY_MASKED;
use crate::fused::tensor_core::{TENSOR_CORE_BLOCK_ROWS, TENSOR_CORE_UNITS};
use crate::fused::tiles::{OwnRows, TileShape};

/// Two values of one 32-bit register (two halves) or of one accumulator row (two `f32`).
pub(crate) type Pair<E> = Vector<E, Const<2>>;

/// The m16n8k16 product for the inputs' dtype into `f32`.
#[cube]
pub(crate) fn mma_definition<F: Float>() -> MmaDefinition<F, F, f32> {
    MmaDefinition::<F, F, f32>::new(16usize, 8usize, 16usize)
}

/// `count` zero pairs.
#[cube]
pub(crate) fn zero_pairs(#[comptime] count: usize) -> Array<Pair<f32>> {
    let mut pairs = Array::<Pair<f32>>::new(count);
    #[unroll]
    for i in 0..count {
        pairs[i] = Pair::<f32>::zeroed();
    }
    pairs
}

/// Loads a plane's 16 rows, rows `first_row ..` of the staged tile in `tiles` (row stride
/// `stride`), into `A` registers by `ldmatrix`: `head_dim / 16` blocks of four pairs.
#[cube]
pub(crate) fn load_plane_rows_mma<F: Float>(
    tiles: &SharedMemory<F>,
    fragment: &mut Array<Pair<F>>,
    first_row: usize,
    lane: usize,
    #[comptime] head_dim: usize,
    #[comptime] stride: usize,
) {
    let def = mma_definition::<F>();
    // Matrix `j = lane / 8`: rows `8 (j % 2) ..`, columns `8 (j / 2) ..` of the block.
    let row = first_row + lane % 8 + 8 * ((lane / 8) % 2);
    #[unroll]
    for kb in 0..comptime!(head_dim / 16) {
        let at = row * stride + kb * 16 + 8 * (lane / 16);
        let regs =
            def.load_matrix::<F, Const<2>>(&tiles.slice(at, at + 8), MatrixIdent::A, 4usize, false);
        #[unroll]
        for i in 0..4usize {
            fragment[kb * 4 + i] = regs[i];
        }
    }
}

/// The comptime settings of a plane's product with a shared-memory tile: its shape and the
/// products' precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct TileProduct {
    /// Rows of the tile.
    pub tile_rows: usize,
    /// Values per row, a multiple of 16.
    pub head_dim: usize,
    /// Row stride of the tile in shared memory.
    pub stride: usize,
    /// `f32` inputs on TF32 m16n8k8 (else `f16`/`bf16` on m16n8k16).
    pub tf32: bool,
    /// Each TF32 product split into three (about `f32` accuracy).
    pub split: bool,
}

/// `scores = A B^T` for one plane: `a` holds the plane's 16 rows (`head_dim / 16` blocks of four
/// pairs), the tile at `base` holds `tile_rows` rows of `head_dim` (row stride `stride`), read as
/// the columns of `B` by `ldmatrix` (two 16-deep blocks per load). `scores` gets `2 tile_rows / 8`
/// pairs.
/// `tile_rows`, `head_dim` and `stride` are `product`'s.
#[cube]
pub(crate) fn tile_scores<F: Float>(
    a: &Array<Pair<F>>,
    tiles: &SharedMemory<F>,
    base: usize,
    lane: usize,
    scores: &mut Array<Pair<f32>>,
    #[comptime] product: TileProduct,
) {
    let tile_rows = product.tile_rows;
    let head_dim = product.head_dim;
    let stride = product.stride;
    let def = mma_definition::<F>();
    #[unroll]
    for nb in 0..comptime!(tile_rows / 8) {
        let mut acc = Array::<Pair<f32>>::new(2usize);
        acc[0] = Pair::<f32>::zeroed();
        acc[1] = Pair::<f32>::zeroed();
        let row = nb * 8 + lane % 8;
        #[unroll]
        for kb2 in 0..comptime!(head_dim / 32) {
            let at = base + row * stride + kb2 * 32 + 8 * (lane / 8);
            let regs = def.load_matrix::<F, Const<2>>(
                &tiles.slice(at, at + 8),
                MatrixIdent::B,
                4usize,
                false,
            );
            multiply_block(&def, a, &regs, 0usize, 2 * kb2, &mut acc);
            multiply_block(&def, a, &regs, 2usize, 2 * kb2 + 1, &mut acc);
        }
        if comptime!(head_dim % 32 == 16) {
            let at = base + row * stride + comptime!(head_dim - 16) + 8 * ((lane / 8) % 2);
            let regs = def.load_matrix::<F, Const<2>>(
                &tiles.slice(at, at + 8),
                MatrixIdent::B,
                2usize,
                false,
            );
            multiply_block(
                &def,
                a,
                &regs,
                0usize,
                comptime!(head_dim / 16 - 1),
                &mut acc,
            );
        }
        scores[2 * nb] = acc[0];
        scores[2 * nb + 1] = acc[1];
    }
}

/// `acc += A[kb] B` with `B`'s two registers at `regs[first]`, `regs[first + 1]`.
#[cube]
fn multiply_block<F: Float>(
    def: &MmaDefinition<F, F, f32>,
    a: &Array<Pair<F>>,
    regs: &Array<Pair<F>>,
    #[comptime] first: usize,
    #[comptime] kb: usize,
    acc: &mut Array<Pair<f32>>,
) {
    let mut a_block = Array::<Pair<F>>::new(4usize);
    #[unroll]
    for i in 0..4usize {
        a_block[i] = a[kb * 4 + i];
    }
    let mut b = Array::<Pair<F>>::new(2usize);
    b[0] = regs[first];
    b[1] = regs[first + 1];
    def.execute_inplace(&a_block, &b, acc);
}

/// `out += W T` for one plane: `W` is the plane's 16 x `tile_rows` weights in registers (`scores`
/// layout, cast to the inputs' dtype as the `A` operand), `T` is the tile at `base` (`tile_rows`
/// rows of `head_dim`, row stride `stride`), loaded by `ldmatrix.trans` as `B`. `out` holds
/// `2 head_dim / 8` pairs.
/// `tile_rows`, `head_dim` and `stride` are `product`'s.
#[cube]
pub(crate) fn accumulate_weighted_rows<F: Float>(
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
    let def = mma_definition::<F>();
    #[unroll]
    for kb in 0..comptime!(tile_rows / 16) {
        let mut a = Array::<Pair<F>>::new(4usize);
        #[unroll]
        for i in 0..4usize {
            a[i] = Pair::<F>::cast_from(weights[4 * kb + i]);
        }
        let row = kb * 16 + lane % 8 + 8 * ((lane / 8) % 2);
        #[unroll]
        for dn2 in 0..comptime!(head_dim / 16) {
            let at = base + row * stride + dn2 * 16 + 8 * (lane / 16);
            let regs = def.load_matrix::<F, Const<2>>(
                &tiles.slice(at, at + 8),
                MatrixIdent::B,
                4usize,
                true,
            );
            accumulate_block(&def, &a, &regs, 0usize, 2 * dn2, out);
            accumulate_block(&def, &a, &regs, 2usize, 2 * dn2 + 1, out);
        }
    }
}

/// `out[dn] += A B` with `B`'s two registers at `regs[first]`, `regs[first + 1]`.
#[cube]
fn accumulate_block<F: Float>(
    def: &MmaDefinition<F, F, f32>,
    a: &Array<Pair<F>>,
    regs: &Array<Pair<F>>,
    #[comptime] first: usize,
    #[comptime] dn: usize,
    out: &mut Array<Pair<f32>>,
) {
    let mut b = Array::<Pair<F>>::new(2usize);
    b[0] = regs[first];
    b[1] = regs[first + 1];
    let mut acc = Array::<Pair<f32>>::new(2usize);
    acc[0] = out[2 * dn];
    acc[1] = out[2 * dn + 1];
    def.execute_inplace(a, &b, &mut acc);
    out[2 * dn] = acc[0];
    out[2 * dn + 1] = acc[1];
}

/// The factors a unit's two accumulator rows (`g` and `g + 8`) are multiplied by when stored.
#[derive(CubeType, Clone, Copy)]
pub(crate) struct RowFactors {
    /// Factor of row `g`.
    pub a: f32,
    /// Factor of row `g + 8`.
    pub b: f32,
}

/// Writes the plane's 16 x `head_dim` accumulators (`out`, rows `g` and `g + 8` times
/// `factors.a` and `factors.b`) to `output` for the cube's rows (`own`), through `tiles` (64 rows
/// from element 0, row stride `shape.smem_stride`) and `N`-wide stores. `shape` is the cube's
/// (`TENSOR_CORE_UNITS` units, `TENSOR_CORE_BLOCK_ROWS` rows). Every unit takes part.
#[cube]
pub(crate) fn store_cube_rows_mma<F: Float, N: Size>(
    out: &Array<Pair<f32>>,
    factors: &RowFactors,
    tiles: &mut SharedMemory<F>,
    output: &mut Tensor<Vector<F, N>>,
    order: &Array<u32>,
    own: &OwnRows,
    #[comptime] shape: TileShape,
) {
    let factor_a = factors.a;
    let factor_b = factors.b;
    let cube_row_count = own.count;
    let batch = own.batch;
    let head = own.head;
    let unit = own.unit;
    let lane = own.lane;
    let plane = own.plane;
    let head_dim = shape.head_dim;
    let stride = shape.smem_stride;
    let ordered = shape.ordered;
    sync_cube();
    let staged_a = (plane * 16 + lane / 4) * stride + 2 * (lane % 4);
    let staged_b = staged_a + 8 * stride;
    #[unroll]
    for dn in 0..comptime!(head_dim / 8) {
        let o_a = out[2 * dn];
        let o_b = out[2 * dn + 1];
        let mut v_a = Pair::<F>::empty();
        let mut v_b = Pair::<F>::empty();
        v_a[0] = F::cast_from(o_a[0] * factor_a);
        v_a[1] = F::cast_from(o_a[1] * factor_a);
        v_b[0] = F::cast_from(o_b[0] * factor_b);
        v_b[1] = F::cast_from(o_b[1] * factor_b);
        write_pair(tiles, staged_a + dn * 8, v_a);
        write_pair(tiles, staged_b + dn * 8, v_b);
    }
    sync_cube();
    let width = N::value();
    let per_row = comptime!(head_dim / width);
    let total = comptime!(TENSOR_CORE_BLOCK_ROWS * per_row);
    #[unroll]
    for round in 0..comptime!(total.div_ceil(TENSOR_CORE_UNITS)) {
        let element = unit + round * TENSOR_CORE_UNITS;
        let r = element / per_row;
        if element < total && r < cube_row_count {
            let c = (element % per_row) * width;
            let row = memory_row(order, own.first_row + r * own.stride, ordered);
            let at = r * stride + c;
            let values = tiles
                .slice(at, at + width)
                .into_vectorized()
                .with_vector_size::<N>()[0];
            output[(batch * output.stride(0)
                + row * output.stride(1)
                + head * output.stride(2)
                + c)
                / width] = values;
        }
    }
}

/// Two values at `at` (even) in one 4-byte store.
#[cube]
fn write_pair<F: Float>(smem: &mut SharedMemory<F>, at: usize, values: Pair<F>) {
    let mut target = smem
        .slice_mut(at, at + 2)
        .into_vectorized()
        .with_vector_size::<Const<2>>();
    target[0] = values;
}

/// The runtime side of [`mask_scores`]: this unit's two rows and the tile's first column.
#[derive(CubeType, Clone, Copy)]
pub(crate) struct MaskRows {
    /// Every column present and unmasked for both rows (only the scale is applied).
    pub whole: bool,
    /// Row `g` takes part in the tile.
    pub here_a: bool,
    /// Row `g + 8` takes part in the tile.
    pub here_b: bool,
    /// Row `g`'s causal limit.
    pub limit_a: usize,
    /// Row `g + 8`'s causal limit.
    pub limit_b: usize,
    /// Index of the tile's first column.
    pub first: usize,
}

/// The comptime side of [`mask_scores`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ScoreMask {
    /// Columns of the tile.
    pub tile_rows: usize,
    /// Columns past a row's limit are masked.
    pub causal: bool,
    /// The causal limit is a lower bound (key rows of the key/value backward).
    pub columns_after_rows: bool,
    /// The scale is left to the caller.
    pub raw: bool,
    /// The scores come from the TF32 products (keys in `key_of_column` order).
    pub pairs_swapped: bool,
}

/// Applies the masks of a plane's tile of scores (and, unless `raw`, the scale) in place:
/// `scale s + bias[col]` where this unit's row (`a`: row `g`, `b`: row `g + 8`; see [`MaskRows`])
/// takes part and,
/// when `causal`, the column's index `first + col` is at most the row's `limit` (at least, with
/// `columns_after_rows`: the key rows of the key/value backward see the queries at or after
/// them); [`KEY_MASKED`] elsewhere. With `whole` (every column present and unmasked for both
/// rows, the biases all 0) only the scale is applied. With `raw` the scale is not applied at all
/// (`s + bias[col]`, the biases being 0 or [`KEY_MASKED`]): the caller folds it into the
/// exponent's one fused multiply-add (`exp(scale s - m)`), which saves a multiply per score.
/// That needs `scale > 0`, so that the scaled max of raw scores is the max of scaled scores
/// (config validation rejects non-positive and non-finite scales), and a scale above about
/// `1e-27`, so that masked scores stay far below any row's max once scaled. Returns this unit's
/// max of rows `a` and `b` (of raw scores with `raw`). With `pairs_swapped` the scores come
/// from [`crate::fused::mma::tf32::tile_scores_tf32`]: the two keys of each pair in a block's upper
/// half are swapped ([`crate::fused::mma::tf32::key_of_column`]).
#[cube]
pub(crate) fn mask_scores(
    scores: &mut Array<Pair<f32>>,
    biases: &SharedMemory<f32>,
    bias_base: usize,
    scale: f32,
    rows: &MaskRows,
    quad: usize,
    #[comptime] mask: ScoreMask,
) -> Pair<f32> {
    let whole = rows.whole;
    let here_a = rows.here_a;
    let here_b = rows.here_b;
    let limit_a = rows.limit_a;
    let limit_b = rows.limit_b;
    let first = rows.first;
    let tile_rows = mask.tile_rows;
    let causal = mask.causal;
    let columns_after_rows = mask.columns_after_rows;
    let raw = mask.raw;
    let pairs_swapped = mask.pairs_swapped;
    let blocks = comptime!(tile_rows / 8);
    let mut max_a = f32::new(KEY_MASKED);
    let mut max_b = f32::new(KEY_MASKED);
    if whole {
        #[unroll]
        for nb in 0..blocks {
            let mut s_a = scores[2 * nb];
            let mut s_b = scores[2 * nb + 1];
            if comptime!(!raw) {
                s_a[0] *= scale;
                s_a[1] *= scale;
                s_b[0] *= scale;
                s_b[1] *= scale;
            }
            max_a = max(max_a, max(s_a[0], s_a[1]));
            max_b = max(max_b, max(s_b[0], s_b[1]));
            scores[2 * nb] = s_a;
            scores[2 * nb + 1] = s_b;
        }
    } else {
        #[unroll]
        for nb in 0..blocks {
            let col = nb * 8 + 2 * quad;
            let bias = column_pair(biases, bias_base, nb, quad, pairs_swapped);
            let raw_a = scores[2 * nb];
            let raw_b = scores[2 * nb + 1];
            let mut masked_a = Pair::<f32>::empty();
            let mut masked_b = Pair::<f32>::empty();
            #[unroll]
            for e in 0..2usize {
                let mut key = col + e;
                if pairs_swapped {
                    key = nb * 8 + key_of_column(2 * quad + e);
                }
                let mut keep_a = here_a;
                let mut keep_b = here_b;
                if causal {
                    if comptime!(columns_after_rows) {
                        keep_a = keep_a && first + key >= limit_a;
                        keep_b = keep_b && first + key >= limit_b;
                    } else {
                        keep_a = keep_a && first + key <= limit_a;
                        keep_b = keep_b && first + key <= limit_b;
                    }
                }
                let mut a = raw_a[e] + bias[e];
                let mut b = raw_b[e] + bias[e];
                if comptime!(!raw) {
                    a = raw_a[e] * scale + bias[e];
                    b = raw_b[e] * scale + bias[e];
                }
                a = select(keep_a, a, f32::new(KEY_MASKED));
                b = select(keep_b, b, f32::new(KEY_MASKED));
                masked_a[e] = a;
                masked_b[e] = b;
                max_a = max(max_a, a);
                max_b = max(max_b, b);
            }
            scores[2 * nb] = masked_a;
            scores[2 * nb + 1] = masked_b;
        }
    }
    let mut maxes = Pair::<f32>::empty();
    maxes[0] = max_a;
    maxes[1] = max_b;
    maxes
}
