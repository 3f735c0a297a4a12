//! The tensor-core building blocks the forward and backward kernels share: `cmma` 16x16x16
//! fragments (`f16`/`bf16` in, `f32` accumulation), a cube's own rows staged into fragments, tile
//! products against shared-memory tiles, and accumulators written out row by row.
//!
//! Every kernel that uses them is 4 planes of 32 units over 64 rows of one (batch, head): plane
//! `p` owns rows `16 p .. 16 p + 16` (see [`crate::fused::cmma::forward`]). Shared tiles hold rows
//! of `head_dim` values at a padded row stride; per-plane scratch holds `16` rows of `f32`.

use burn_cubecl::cubecl;
use burn_cubecl::cubecl::prelude::*;

use crate::fused::tensor_core::TENSOR_CORE_BLOCK_ROWS;
use crate::fused::tiles::{OwnRows, RowRun, TileShape, stage_cube_chunk};

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

/// Loads the cube's own 64 rows of `tensor` (`own`: `first_row + i * stride`, zeros past
/// `count`) into `fragments` (`head_dim / 16` per plane: plane `p` gets rows
/// `16 p .. 16 p + 16`), staged `shape.tile_rows` rows at a time through `staging` (row stride
/// `shape.smem_stride`; `shape.units` is the cube's). Every unit takes part; `registers` must
/// hold the staging tile's share.
#[cube]
pub(crate) fn stage_cube_rows<F: Float, N: Size>(
    tensor: &Tensor<Vector<F, N>>,
    order: &Array<u32>,
    fragments: &mut Sequence<cmma::Matrix<F>>,
    registers: &mut Array<Vector<F, N>>,
    staging: &mut SharedMemory<F>,
    own: &OwnRows,
    #[comptime] shape: TileShape,
) {
    let staging_rows = shape.tile_rows;
    let head_dim = shape.head_dim;
    let smem_stride = shape.smem_stride;
    let dim_tiles = comptime!(head_dim / 16);
    let chunks = comptime!(TENSOR_CORE_BLOCK_ROWS / staging_rows);
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
        stage_cube_chunk(tensor, order, registers, staging, &run, shape);
        let first_plane = comptime!(chunk * staging_rows / 16);
        let last_plane = comptime!((chunk + 1) * staging_rows / 16);
        if own.plane >= first_plane && own.plane < last_plane {
            let base = (own.plane * 16 - chunk * staging_rows) * smem_stride;
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

/// The comptime layout of a plane's products with a walked tile: the tile's shape and the row
/// strides of the shared-memory buffers they go through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct PlaneLayout {
    /// Rows of the walked tile.
    pub tile_rows: usize,
    /// Values per row, a multiple of 16.
    pub head_dim: usize,
    /// Row stride of the walked tile (keys, values, queries, output gradients).
    pub tile_stride: usize,
    /// Row stride of the per-plane `f32` scratch.
    pub scratch_stride: usize,
    /// Row stride of the per-plane probability tile (the inputs' dtype).
    pub probability_stride: usize,
}

/// Where [`store_accumulators`] writes a plane's accumulators for this unit.
#[derive(CubeType, Clone, Copy)]
pub(crate) struct AccumulatorStore {
    /// First element of the plane's scratch.
    pub scratch_base: usize,
    /// Element of `output` where this unit's row starts.
    pub row_base: usize,
    /// Whether this unit's row is inside the sequence (else nothing is written).
    pub row_valid: bool,
    /// This unit's row in its plane (`0..16`).
    pub row_in_plane: usize,
    /// Which half of each 16-column block this unit writes (0 or 1).
    pub half: usize,
    /// Factor the row's accumulators are multiplied by.
    pub factor: f32,
}

/// `scratch[16 x tile_rows] = A B^T` for one plane: `a` holds the plane's 16 rows
/// (`head_dim / 16` fragments), `b_tile` holds `tile_rows` rows of `head_dim` (row stride
/// `layout.tile_stride`), read as the columns of `B`; `scratch` rows are `layout.scratch_stride`
/// apart. One 16-column block at a time goes through
/// `block`, so only one accumulator is live. The caller syncs the plane before reading.
#[cube]
pub(crate) fn scores_into_scratch<F: Float>(
    a: &Sequence<cmma::Matrix<F>>,
    block: &cmma::Matrix<f32>,
    b_tile: &SharedMemory<F>,
    scratch: &mut SharedMemory<f32>,
    scratch_base: usize,
    #[comptime] layout: PlaneLayout,
) {
    let tile_rows = layout.tile_rows;
    let head_dim = layout.head_dim;
    let smem_stride = layout.tile_stride;
    let scratch_stride = layout.scratch_stride;
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
/// in shared memory (`a_base`, row stride `layout.probability_stride`, the inputs' dtype), `B` is
/// `tile_rows` rows of `head_dim` (row stride `layout.tile_stride`).
#[cube]
pub(crate) fn accumulate_product<F: Float>(
    accumulators: &mut Sequence<cmma::Matrix<f32>>,
    a_tile: &SharedMemory<F>,
    a_base: usize,
    b_tile: &SharedMemory<F>,
    #[comptime] layout: PlaneLayout,
) {
    let tile_rows = layout.tile_rows;
    let head_dim = layout.head_dim;
    let a_stride = layout.probability_stride;
    let smem_stride = layout.tile_stride;
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

/// Writes the plane's `16 x head_dim` accumulators times `target.factor` (per unit: its row's
/// factor) to `output` at element `target.row_base` (this unit's row, when `target.row_valid`),
/// through the plane's scratch (see [`AccumulatorStore`]). Units `2 r` and `2 r + 1` write row `r`'s halves of each 16-column block, `N` values
/// per store.
#[cube]
pub(crate) fn store_accumulators<F: Float, N: Size>(
    accumulators: &Sequence<cmma::Matrix<f32>>,
    scratch: &mut SharedMemory<f32>,
    output: &mut Tensor<Vector<F, N>>,
    target: &AccumulatorStore,
    #[comptime] layout: PlaneLayout,
) {
    let scratch_base = target.scratch_base;
    let row_base = target.row_base;
    let row_valid = target.row_valid;
    let row_in_plane = target.row_in_plane;
    let half = target.half;
    let factor = target.factor;
    let head_dim = layout.head_dim;
    let scratch_stride = layout.scratch_stride;
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
