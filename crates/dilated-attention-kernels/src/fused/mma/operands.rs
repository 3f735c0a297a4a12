//! The register-resident kernels' products behind one switch: `f16`/`bf16` inputs on
//! `mma.sync` m16n8k16 with `ldmatrix` operands ([`crate::fused::mma::tiles`]), or `f32` inputs on TF32
//! m16n8k8 ([`crate::fused::mma::tf32`]), once (`allow_tf32`) or split into three products (`split`:
//! about `f32` accuracy). Both give scores and accumulators in the same register layout;
//! on TF32 each 8-column block of scores holds its keys in
//! [`crate::fused::mma::tf32::key_of_column`] order, which [`crate::fused::mma::tiles::mask_scores`] (with
//! `pairs_swapped`) and per-column values read by column
//! ([`crate::fused::mma::tf32::column_pair`]) follow.

use burn_cubecl::cubecl;
use burn_cubecl::cubecl::prelude::*;

use crate::fused::mma::tf32::{
    Tf32, accumulate_weighted_rows_tf32, load_plane_rows_tf32, tile_scores_tf32,
};
use crate::fused::mma::tiles::{
    Pair, TileProduct, accumulate_weighted_rows, load_plane_rows_mma, tile_scores,
};
use crate::fused::tensor_core::{TENSOR_CORE_BLOCK_ROWS, TENSOR_CORE_UNITS};
use crate::fused::tiles::{OwnRows, RowRun, TileShape, stage_cube_chunk};

/// A plane's 16 rows as the `A` operand of its products, held for a whole walk: `ldmatrix`
/// registers for `f16`/`bf16`, TF32 registers on TF32 (with `split`: the rounded values, then
/// the rounded residuals), the other array a placeholder of one.
#[derive(CubeType)]
pub(crate) struct PlaneRows<F: Float> {
    pub halves: Array<Pair<F>>,
    pub tf32: Array<Tf32>,
}

/// Loads the cube's own 64 rows of `tensor` (`own`) as each plane's [`PlaneRows`] (plane `p`
/// gets rows `16 p .. 16 p + 16`), staged `product.tile_rows` rows at a time through `tiles`
/// (from element 0, row stride `product.stride`), as `product`'s operands. Every unit takes part;
/// `registers` must hold the staging tile's share.
#[cube]
pub(crate) fn stage_plane_rows<F: Float, N: Size>(
    tensor: &Tensor<Vector<F, N>>,
    order: &Array<u32>,
    registers: &mut Array<Vector<F, N>>,
    tiles: &mut SharedMemory<F>,
    own: &OwnRows,
    #[comptime] product: TileProduct,
    #[comptime] ordered: bool,
) -> PlaneRows<F> {
    let staging_rows = product.tile_rows;
    let head_dim = product.head_dim;
    let stride = product.stride;
    let tf32 = product.tf32;
    let split = product.split;
    let mut halves = Array::<Pair<F>>::new(comptime!(if tf32 { 1 } else { head_dim / 16 * 4 }));
    let tf32_count = comptime!(if split { head_dim } else { head_dim / 2 });
    let mut tf32_regs = Array::<Tf32>::new(comptime!(if tf32 { tf32_count } else { 1 }));
    let chunks = comptime!(TENSOR_CORE_BLOCK_ROWS / staging_rows);
    let shape = comptime!(TileShape {
        units: TENSOR_CORE_UNITS,
        tile_rows: staging_rows,
        head_dim,
        smem_stride: stride,
        ordered,
    });
    #[unroll]
    for chunk in 0..chunks {
        let run = RowRun {
            batch: own.batch,
            head: own.head,
            first: own.first_row,
            dilation: own.stride,
            tile_start: chunk * staging_rows,
            count: own.count,
            unit: own.unit,
        };
        stage_cube_chunk(tensor, order, registers, tiles, &run, shape);
        let first_plane = comptime!(chunk * staging_rows / 16);
        let last_plane = comptime!((chunk + 1) * staging_rows / 16);
        if own.plane >= first_plane && own.plane < last_plane {
            let first_row = own.plane * 16 - chunk * staging_rows;
            if tf32 {
                load_plane_rows_tf32(
                    tiles,
                    &mut tf32_regs,
                    first_row,
                    own.lane,
                    head_dim,
                    stride,
                    split,
                );
            } else {
                load_plane_rows_mma(tiles, &mut halves, first_row, own.lane, head_dim, stride);
            }
        }
    }
    sync_cube();
    PlaneRows::<F> {
        halves,
        tf32: tf32_regs,
    }
}

/// `scores = A B^T` for one plane: [`tile_scores`] or [`tile_scores_tf32`].
#[cube]
pub(crate) fn plane_scores<F: Float>(
    a: &PlaneRows<F>,
    tiles: &SharedMemory<F>,
    base: usize,
    lane: usize,
    scores: &mut Array<Pair<f32>>,
    #[comptime] product: TileProduct,
) {
    if product.tf32 {
        tile_scores_tf32(&a.tf32, tiles, base, lane, scores, product);
    } else {
        tile_scores(&a.halves, tiles, base, lane, scores, product);
    }
}

/// `out += W T` for one plane: [`accumulate_weighted_rows`] or
/// [`accumulate_weighted_rows_tf32`].
#[cube]
pub(crate) fn plane_accumulate<F: Float>(
    weights: &Array<Pair<f32>>,
    tiles: &SharedMemory<F>,
    base: usize,
    lane: usize,
    out: &mut Array<Pair<f32>>,
    #[comptime] product: TileProduct,
) {
    if product.tf32 {
        accumulate_weighted_rows_tf32(weights, tiles, base, lane, out, product);
    } else {
        accumulate_weighted_rows(weights, tiles, base, lane, out, product);
    }
}
