//! The tensor-core building blocks the forward and backward kernels share: `cmma` 16x16x16
//! fragments (`f16`/`bf16` in, `f32` accumulation), a cube's own rows staged into fragments, tile
//! products against shared-memory tiles, and accumulators written out row by row.
//!
//! Every kernel that uses them is 4 planes of 32 units over 64 rows of one (batch, head): plane
//! `p` owns rows `16 p .. 16 p + 16` (see [`crate::fused::cmma::forward`]). Shared tiles hold rows
//! of `head_dim` values at a padded row stride; per-plane scratch holds `16` rows of `f32`.

use burn_cubecl::cubecl;
use burn_cubecl::cubecl::prelude::*;

use crate::fused::rows::RowBlock;
use crate::fused::tensor_core::{TENSOR_CORE_BLOCK_ROWS, TENSOR_CORE_UNITS};
use crate::fused::tiles::stage_cube_chunk;

/// `count` input fragments (`A`, row-major), uninitialised.
#[cube]
pub(crate) fn input_fragments<F: Float>(#[comptime] count: usize) -> Sequence<cmma::Matrix<F>> {
    let mut fragments = Sequence::<cmma::Matrix<F>>::new();
    #[unroll]
    for _ in 0..count {
        fragments.push(unsafe {
            cmma::Matrix::<F>::uninitialized(
                cmma::MatrixIdent::A,
                16usize,
                16usize,
                16usize,
                cmma::MatrixLayout::RowMajor,
            )
        });
    }
    fragments
}

/// `count` accumulator fragments, zero.
#[cube]
pub(crate) fn accumulator_fragments(#[comptime] count: usize) -> Sequence<cmma::Matrix<f32>> {
    let mut fragments = Sequence::<cmma::Matrix<f32>>::new();
    #[unroll]
    for _ in 0..count {
        fragments.push(cmma::Matrix::<f32>::from_value(
            cmma::MatrixIdent::Accumulator,
            16usize,
            16usize,
            16usize,
            cmma::MatrixLayout::Undefined,
            0.0,
        ));
    }
    fragments
}

/// Loads the cube's own 64 rows of `tensor` (`rows.first_row + i * rows.stride`, zeros past
/// `cube_row_count`) into `fragments` (`head_dim / 16` per plane: plane `p` gets rows
/// `16 p .. 16 p + 16`), staged `staging_rows` rows at a time through `staging` (row stride
/// `smem_stride`). Every unit takes part; `registers` must hold the staging tile's share.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(crate) fn stage_cube_rows<F: Float, N: Size>(
    tensor: &Tensor<Vector<F, N>>,
    order: &Array<u32>,
    fragments: &mut Sequence<cmma::Matrix<F>>,
    registers: &mut Array<Vector<F, N>>,
    staging: &mut SharedMemory<F>,
    rows: &RowBlock,
    cube_row_count: usize,
    batch: usize,
    head: usize,
    unit: usize,
    plane: usize,
    #[comptime] staging_rows: usize,
    #[comptime] head_dim: usize,
    #[comptime] smem_stride: usize,
    #[comptime] ordered: bool,
) {
    let dim_tiles = comptime!(head_dim / 16);
    let chunks = comptime!(TENSOR_CORE_BLOCK_ROWS / staging_rows);
    #[unroll]
    for chunk in 0..chunks {
        stage_cube_chunk(
            tensor,
            order,
            registers,
            staging,
            rows,
            cube_row_count,
            batch,
            head,
            unit,
            chunk,
            TENSOR_CORE_UNITS,
            staging_rows,
            head_dim,
            smem_stride,
            ordered,
        );
        let first_plane = comptime!(chunk * staging_rows / 16);
        let last_plane = comptime!((chunk + 1) * staging_rows / 16);
        if plane >= first_plane && plane < last_plane {
            let base = (plane * 16 - chunk * staging_rows) * smem_stride;
            #[unroll]
            for kk in 0..dim_tiles {
                cmma::load(
                    fragments.index(kk),
                    &staging.slice(base + kk * 16, staging_rows * smem_stride),
                    smem_stride as u32,
                );
            }
        }
    }
    sync_cube();
}

/// `scratch[16 x tile_rows] = A B^T` for one plane: `a` holds the plane's 16 rows
/// (`head_dim / 16` fragments), `b_tile` holds `tile_rows` rows of `head_dim` (row stride
/// `smem_stride`), read as the columns of `B`. One 16-column block at a time goes through
/// `block`, so only one accumulator is live. The caller syncs the plane before reading.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(crate) fn scores_into_scratch<F: Float>(
    a: &Sequence<cmma::Matrix<F>>,
    block: &cmma::Matrix<f32>,
    b_tile: &SharedMemory<F>,
    scratch: &mut SharedMemory<f32>,
    scratch_base: usize,
    #[comptime] tile_rows: usize,
    #[comptime] head_dim: usize,
    #[comptime] smem_stride: usize,
    #[comptime] scratch_stride: usize,
) {
    let dim_tiles = comptime!(head_dim / 16);
    let blocks = comptime!(tile_rows / 16);
    let tile_elems = comptime!(tile_rows * smem_stride);
    #[unroll]
    for n in 0..blocks {
        cmma::fill(block, 0.0f32);
        #[unroll]
        for kk in 0..dim_tiles {
            let b = cmma::Matrix::<F>::from_slice(
                cmma::MatrixIdent::B,
                16usize,
                16usize,
                16usize,
                cmma::MatrixLayout::ColMajor,
                &b_tile.slice(n * 16 * smem_stride + kk * 16, tile_elems),
                smem_stride as u32,
            );
            cmma::execute::<F, F, f32, f32>(a.index(kk), &b, block, block);
        }
        cmma::store(
            &mut scratch.slice_mut(scratch_base + n * 16, scratch_base + 16 * scratch_stride),
            block,
            scratch_stride as u32,
            cmma::MatrixLayout::RowMajor,
        );
    }
}

/// `accumulators[16 x head_dim] += A B` for one plane: `A` is the plane's `16 x tile_rows` tile
/// in shared memory (`a_base`, row stride `a_stride`, the inputs' dtype), `B` is `tile_rows`
/// rows of `head_dim` (row stride `smem_stride`).
#[cube]
#[allow(clippy::too_many_arguments)]
pub(crate) fn accumulate_product<F: Float>(
    accumulators: &mut Sequence<cmma::Matrix<f32>>,
    a_tile: &SharedMemory<F>,
    a_base: usize,
    b_tile: &SharedMemory<F>,
    #[comptime] tile_rows: usize,
    #[comptime] head_dim: usize,
    #[comptime] a_stride: usize,
    #[comptime] smem_stride: usize,
) {
    let dim_tiles = comptime!(head_dim / 16);
    let blocks = comptime!(tile_rows / 16);
    let tile_elems = comptime!(tile_rows * smem_stride);
    #[unroll]
    for kk in 0..blocks {
        let a = cmma::Matrix::<F>::from_slice(
            cmma::MatrixIdent::A,
            16usize,
            16usize,
            16usize,
            cmma::MatrixLayout::RowMajor,
            &a_tile.slice(a_base + kk * 16, a_base + 16 * a_stride),
            a_stride as u32,
        );
        #[unroll]
        for f in 0..dim_tiles {
            let b = cmma::Matrix::<F>::from_slice(
                cmma::MatrixIdent::B,
                16usize,
                16usize,
                16usize,
                cmma::MatrixLayout::RowMajor,
                &b_tile.slice(kk * 16 * smem_stride + f * 16, tile_elems),
                smem_stride as u32,
            );
            cmma::execute::<F, F, f32, f32>(&a, &b, accumulators.index(f), accumulators.index(f));
        }
    }
}

/// Writes the plane's `16 x head_dim` accumulators times `factor` (per unit: its row's factor)
/// to `output` at element `row_base` (this unit's row, when `row_valid`), through the plane's
/// scratch. Units `2 r` and `2 r + 1` write row `r`'s halves of each 16-column block, `N` values
/// per store.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(crate) fn store_accumulators<F: Float, N: Size>(
    accumulators: &Sequence<cmma::Matrix<f32>>,
    scratch: &mut SharedMemory<f32>,
    scratch_base: usize,
    output: &mut Tensor<Vector<F, N>>,
    row_base: usize,
    row_valid: bool,
    row_in_plane: usize,
    half: usize,
    factor: f32,
    #[comptime] head_dim: usize,
    #[comptime] scratch_stride: usize,
) {
    let dim_tiles = comptime!(head_dim / 16);
    let width = N::value();
    let stores = comptime!(8 / width);
    #[unroll]
    for f in 0..dim_tiles {
        cmma::store(
            &mut scratch.slice_mut(scratch_base, scratch_base + 16 * scratch_stride),
            accumulators.index(f),
            scratch_stride as u32,
            cmma::MatrixLayout::RowMajor,
        );
        sync_plane();
        if row_valid {
            #[unroll]
            for v in 0..stores {
                let col = half * 8 + v * width;
                let mut packed = Vector::<F, N>::empty();
                #[unroll]
                for i in 0..width {
                    packed[i] = F::cast_from(
                        scratch[scratch_base + row_in_plane * scratch_stride + col + i] * factor,
                    );
                }
                output[(row_base + f * 16 + col) / width] = packed;
            }
        }
        sync_plane();
    }
}

/// Four consecutive `f32` of shared memory from `at` (a multiple of 4) in one 16-byte read.
#[cube]
pub(crate) fn read_four(smem: &SharedMemory<f32>, at: usize) -> Vector<f32, Const<4>> {
    smem.slice(at, at + 4)
        .into_vectorized()
        .with_vector_size::<Const<4>>()[0]
}

/// Writes four values to shared memory from `at` (a multiple of 4) in the inputs' dtype, in one
/// store.
#[cube]
pub(crate) fn write_four<F: Float>(
    smem: &mut SharedMemory<F>,
    at: usize,
    values: Vector<F, Const<4>>,
) {
    let mut target = smem
        .slice_mut(at, at + 4)
        .into_vectorized()
        .with_vector_size::<Const<4>>();
    target[0] = values;
}
