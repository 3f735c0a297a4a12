//! Device-side tile loads the fused kernels share: selected rows of a `[b, n, h, d]` tensor into
//! shared memory (as `f32`, zeros past the list), and the visibility of a key tile.

use burn_cubecl::cubecl;
use burn_cubecl::cubecl::prelude::*;

use super::rows::{RowBlock, memory_row};

/// Score of a masked key. Finite, because WGSL has no infinity literal and fast-math CUDA may
/// not honour one; `exp(MASKED - m)` is 0 for every finite running max `m`. The `-inf` the LSE
/// of an empty row needs arrives as a runtime argument.
pub(crate) const MASKED: f32 = -3.0e38;

/// Loads rows `first + t * dilation` for `t` in `tile_start .. tile_start + tile_rows` of
/// (`batch`, `head`) into `smem` (`tile_rows x head_dim`, row-major), as `S` (`f32` for the
/// portable kernels, the inputs' dtype for the tensor-core one); rows at `t >= count` are zero.
/// Every unit of the cube takes part.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(crate) fn load_rows_tile<F: Float, S: Float>(
    tensor: &Tensor<F>,
    order: &Array<u32>,
    smem: &mut SharedMemory<S>,
    batch: usize,
    head: usize,
    first: usize,
    dilation: usize,
    tile_start: usize,
    count: usize,
    lane: usize,
    #[comptime] units: usize,
    #[comptime] tile_rows: usize,
    #[comptime] head_dim: usize,
    #[comptime] ordered: bool,
) {
    let base = batch * tensor.stride(0) + head * tensor.stride(2);
    let rounds = comptime!((tile_rows * head_dim).div_ceil(units));
    for round in 0..rounds {
        let element = lane + round * units;
        if element < tile_rows * head_dim {
            let t = tile_start + element / head_dim;
            let col = element % head_dim;
            let mut val = S::new(0.0);
            if t < count {
                let pos = memory_row(order, first + t * dilation, ordered);
                val = S::cast_from(tensor[base + pos * tensor.stride(1) + col * tensor.stride(3)]);
            }
            smem[element] = val;
        }
    }
}

/// Writes 1 for the keys of the tile that exist and are not padded, else 0.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(crate) fn load_visibility<F: Float>(
    padding: &Tensor<F>,
    order: &Array<u32>,
    smem: &mut SharedMemory<f32>,
    batch: usize,
    first: usize,
    dilation: usize,
    tile_start: usize,
    count: usize,
    lane: usize,
    #[comptime] units: usize,
    #[comptime] tile_rows: usize,
    #[comptime] has_padding: bool,
    #[comptime] ordered: bool,
) {
    let mut key_row = lane;
    while key_row < tile_rows {
        let t = tile_start + key_row;
        let mut visible = 0.0f32;
        if t < count {
            visible = 1.0;
            if has_padding {
                let pos = memory_row(order, first + t * dilation, ordered);
                let padded =
                    f32::cast_from(padding[batch * padding.stride(0) + pos * padding.stride(1)]);
                visible = 1.0 - padded;
            }
        }
        smem[key_row] = visible;
        key_row += units;
    }
}

/// Loads the `f32` per-row values (`[b, n, h]`: LSE, delta) of rows `first + t * dilation` for
/// `t` in the tile into `smem`; rows at `t >= count` get `fill`.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(crate) fn load_row_values(
    values: &Tensor<f32>,
    order: &Array<u32>,
    smem: &mut SharedMemory<f32>,
    batch: usize,
    head: usize,
    first: usize,
    dilation: usize,
    tile_start: usize,
    count: usize,
    lane: usize,
    fill: f32,
    #[comptime] units: usize,
    #[comptime] tile_rows: usize,
    #[comptime] ordered: bool,
) {
    let mut row = lane;
    while row < tile_rows {
        let t = tile_start + row;
        let mut val = fill;
        if t < count {
            let pos = memory_row(order, first + t * dilation, ordered);
            val =
                values[batch * values.stride(0) + pos * values.stride(1) + head * values.stride(2)];
        }
        smem[row] = val;
        row += units;
    }
}

/// Loads rows `first + t * dilation` for `t` in `tile_start .. tile_start + tile_rows` of
/// (`batch`, `head`) into this unit's registers, `N` values per load, zeros at `t >= count`; its
/// share of the tile is the vectors `unit + round * units`. The tensor's last dimension is
/// contiguous and its other strides are multiples of `N` (checked by the launcher). Nothing is
/// waited for here: the loads complete when [`store_rows_registers`] reads them.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(crate) fn load_rows_registers<F: Float, N: Size>(
    tensor: &Tensor<Vector<F, N>>,
    order: &Array<u32>,
    registers: &mut Array<Vector<F, N>>,
    batch: usize,
    head: usize,
    first: usize,
    dilation: usize,
    tile_start: usize,
    count: usize,
    unit: usize,
    #[comptime] units: usize,
    #[comptime] tile_rows: usize,
    #[comptime] head_dim: usize,
    #[comptime] ordered: bool,
) {
    let width = tensor.vector_size();
    let per_row = comptime!(head_dim / width);
    let total = comptime!(tile_rows * per_row);
    let rounds = comptime!(total.div_ceil(units));
    let base = batch * tensor.stride(0) + head * tensor.stride(2);
    #[unroll]
    for round in 0..rounds {
        let element = unit + round * units;
        let t = tile_start + element / per_row;
        let mut val = Vector::<F, N>::zeroed();
        if element < total && t < count {
            let pos = memory_row(order, first + t * dilation, ordered);
            val = tensor[(base + pos * tensor.stride(1) + (element % per_row) * width) / width];
        }
        registers[round] = val;
    }
}

/// Stores the registers [`load_rows_registers`] filled into `smem` (`tile_rows` rows of
/// `head_dim` values at row stride `smem_stride`, a multiple of `N`), one vector per store.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(crate) fn store_rows_registers<F: Float, N: Size>(
    registers: &Array<Vector<F, N>>,
    smem: &mut SharedMemory<F>,
    unit: usize,
    #[comptime] units: usize,
    #[comptime] tile_rows: usize,
    #[comptime] head_dim: usize,
    #[comptime] smem_stride: usize,
) {
    let width = N::value();
    let per_row = comptime!(head_dim / width);
    let total = comptime!(tile_rows * per_row);
    let rounds = comptime!(total.div_ceil(units));
    #[unroll]
    for round in 0..rounds {
        let element = unit + round * units;
        if element < total {
            let at = (element / per_row) * smem_stride + (element % per_row) * width;
            let mut target = smem
                .slice_mut(at, at + width)
                .into_vectorized()
                .with_vector_size::<N>();
            target[0] = registers[round];
        }
    }
}

/// Stages rows `chunk * tile_rows ..` of the cube's own rows (`rows.first_row + i * rows.stride`,
/// zeros from `cube_row_count` on) into `smem` from element 0 (row stride `smem_stride`), through
/// `registers`; every unit of the cube takes part and the tile is visible to all on return.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(crate) fn stage_cube_chunk<F: Float, N: Size>(
    tensor: &Tensor<Vector<F, N>>,
    order: &Array<u32>,
    registers: &mut Array<Vector<F, N>>,
    smem: &mut SharedMemory<F>,
    rows: &RowBlock,
    cube_row_count: usize,
    batch: usize,
    head: usize,
    unit: usize,
    #[comptime] chunk: usize,
    #[comptime] units: usize,
    #[comptime] tile_rows: usize,
    #[comptime] head_dim: usize,
    #[comptime] smem_stride: usize,
    #[comptime] ordered: bool,
) {
    load_rows_registers(
        tensor,
        order,
        registers,
        batch,
        head,
        rows.first_row,
        rows.stride,
        chunk * tile_rows,
        cube_row_count,
        unit,
        units,
        tile_rows,
        head_dim,
        ordered,
    );
    // The previous chunk's readers are done before it is overwritten.
    sync_cube();
    store_rows_registers(
        registers,
        smem,
        unit,
        units,
        tile_rows,
        head_dim,
        smem_stride,
    );
    sync_cube();
}
