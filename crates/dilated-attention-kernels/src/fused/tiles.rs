//! Device-side tile loads the fused kernels share: selected rows of a `[b, n, h, d]` tensor into
//! shared memory (as `f32`, zeros past the list), and the visibility of a key tile.

use burn_cubecl::cubecl;
use burn_cubecl::cubecl::prelude::*;

use super::rows::memory_row;

/// Score of a masked key. Finite, because WGSL has no infinity literal and fast-math CUDA may
/// not honour one; `exp(MASKED - m)` is 0 for every finite running max `m`. The `-inf` the LSE
/// of an empty row needs arrives as a runtime argument.
pub(crate) const MASKED: f32 = -3.0e38;

/// The selected rows a tile covers: rows `first + t * dilation` of (`batch`, `head`) for `t` in
/// `tile_start .. tile_start + tile_rows`, of which those at `t >= count` do not exist; and the
/// unit of the cube that takes its share of the load.
#[derive(CubeType, Clone, Copy)]
pub(crate) struct RowRun {
    /// Batch of the rows.
    pub batch: usize,
    /// Head of the rows.
    pub head: usize,
    /// Position of the run's first selected row (`t = 0`).
    pub first: usize,
    /// Step between selected rows.
    pub dilation: usize,
    /// Index `t` of the tile's first row.
    pub tile_start: usize,
    /// Number of selected rows: rows at `t >= count` are past the run.
    pub count: usize,
    /// This unit's index in the cube.
    pub unit: usize,
}

/// The cube's own rows `first_row + i * stride` (`i < count`) of (`batch`, `head`), as the
/// tensor-core kernels stage and store them, and this unit's place in the cube.
#[derive(CubeType, Clone, Copy)]
pub(crate) struct OwnRows {
    /// Batch of the rows.
    pub batch: usize,
    /// Head of the rows.
    pub head: usize,
    /// The cube's first row.
    pub first_row: usize,
    /// Step between the cube's rows (the head's row stride).
    pub stride: usize,
    /// Rows of the cube inside the sequence ([`super::rows::cube_row_count`]).
    pub count: usize,
    /// This unit's index in the cube.
    pub unit: usize,
    /// This unit's lane in its plane.
    pub lane: usize,
    /// This unit's plane.
    pub plane: usize,
}

/// The comptime shape of a cube's tile load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct TileShape {
    /// Units of the cube that share the load.
    pub units: usize,
    /// Rows per tile.
    pub tile_rows: usize,
    /// Values per row.
    pub head_dim: usize,
    /// Row stride of the tile in shared memory when staged through registers
    /// ([`store_rows_registers`]); the direct loads ([`load_rows_tile`]) pack rows at
    /// `head_dim`.
    pub smem_stride: usize,
    /// Rows are read through the call's sequence order.
    pub ordered: bool,
}

/// Loads the rows of `run` (see [`RowRun`]) into `smem` (`tile_rows x head_dim`, row-major), as
/// `S` (`f32` for the portable kernels, the inputs' dtype for the tensor-core one); rows at
/// `t >= count` are zero. Every unit of the cube takes part.
#[cube]
pub(crate) fn load_rows_tile<F: Float, S: Float>(
    tensor: &Tensor<F>,
    order: &Array<u32>,
    smem: &mut SharedMemory<S>,
    run: &RowRun,
    #[comptime] shape: TileShape,
) {
    let units = shape.units;
    let tile_rows = shape.tile_rows;
    let head_dim = shape.head_dim;
    let base = run.batch * tensor.stride(0) + run.head * tensor.stride(2);
    let rounds = comptime!((tile_rows * head_dim).div_ceil(units));
    for round in 0..rounds {
        let element = run.unit + round * units;
        if element < tile_rows * head_dim {
            let t = run.tile_start + element / head_dim;
            let col = element % head_dim;
            let mut val = S::new(0.0);
            if t < run.count {
                let pos = memory_row(order, run.first + t * run.dilation, shape.ordered);
                val = S::cast_from(tensor[base + pos * tensor.stride(1) + col * tensor.stride(3)]);
            }
            smem[element] = val;
        }
    }
}

/// Writes 1 for the keys of the tile of `run` that exist and are not padded, else 0.
#[cube]
pub(crate) fn load_visibility<F: Float>(
    padding: &Tensor<F>,
    order: &Array<u32>,
    smem: &mut SharedMemory<f32>,
    run: &RowRun,
    #[comptime] shape: TileShape,
    #[comptime] has_padding: bool,
) {
    let units = shape.units;
    let tile_rows = shape.tile_rows;
    let mut key_row = run.unit;
    while key_row < tile_rows {
        let t = run.tile_start + key_row;
        let mut visible = 0.0f32;
        if t < run.count {
            visible = 1.0;
            if has_padding {
                let pos = memory_row(order, run.first + t * run.dilation, shape.ordered);
                let padded = f32::cast_from(
                    padding[run.batch * padding.stride(0) + pos * padding.stride(1)],
                );
                visible = 1.0 - padded;
            }
        }
        smem[key_row] = visible;
        key_row += units;
    }
}

/// Loads the `f32` per-row values (`[b, n, h]`: LSE, delta) of the rows of `run` into `smem`;
/// rows at `t >= count` get `fill`.
#[cube]
pub(crate) fn load_row_values(
    values: &Tensor<f32>,
    order: &Array<u32>,
    smem: &mut SharedMemory<f32>,
    run: &RowRun,
    fill: f32,
    #[comptime] shape: TileShape,
) {
    let units = shape.units;
    let tile_rows = shape.tile_rows;
    let mut row = run.unit;
    while row < tile_rows {
        let t = run.tile_start + row;
        let mut val = fill;
        if t < run.count {
            let pos = memory_row(order, run.first + t * run.dilation, shape.ordered);
            val = values[run.batch * values.stride(0)
                + pos * values.stride(1)
                + run.head * values.stride(2)];
        }
        smem[row] = val;
        row += units;
    }
}

/// Loads the rows of `run` (see [`RowRun`]) into this unit's registers, `N` values per load,
/// zeros at `t >= count`; its share of the tile is the vectors `unit + round * units`. The
/// tensor's last dimension is contiguous and its other strides are multiples of `N` (checked by
/// the launcher). Nothing is waited for here: the loads complete when [`store_rows_registers`]
/// reads them.
#[cube]
pub(crate) fn load_rows_registers<F: Float, N: Size>(
    tensor: &Tensor<Vector<F, N>>,
    order: &Array<u32>,
    registers: &mut Array<Vector<F, N>>,
    run: &RowRun,
    #[comptime] shape: TileShape,
) {
    let units = shape.units;
    let tile_rows = shape.tile_rows;
    let head_dim = shape.head_dim;
    let width = tensor.vector_size();
    let per_row = comptime!(head_dim / width);
    let total = comptime!(tile_rows * per_row);
    let rounds = comptime!(total.div_ceil(units));
    let base = run.batch * tensor.stride(0) + run.head * tensor.stride(2);
    #[unroll]
    for round in 0..rounds {
        let element = run.unit + round * units;
        let t = run.tile_start + element / per_row;
        let mut val = Vector::<F, N>::zeroed();
        if element < total && t < run.count {
            let pos = memory_row(order, run.first + t * run.dilation, shape.ordered);
            val = tensor[(base + pos * tensor.stride(1) + (element % per_row) * width) / width];
        }
        registers[round] = val;
    }
}

/// Stores the registers [`load_rows_registers`] filled into `smem` (`tile_rows` rows of
/// `head_dim` values at row stride `smem_stride`, a multiple of `N`), one vector per store.
#[cube]
pub(crate) fn store_rows_registers<F: Float, N: Size>(
    registers: &Array<Vector<F, N>>,
    smem: &mut SharedMemory<F>,
    unit: usize,
    #[comptime] shape: TileShape,
) {
    let units = shape.units;
    let tile_rows = shape.tile_rows;
    let head_dim = shape.head_dim;
    let smem_stride = shape.smem_stride;
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

/// Stages the rows of `run` (a chunk of the cube's own rows: `first` and `dilation` are the
/// cube's first row and stride, `tile_start` is `chunk * tile_rows`, `count` the cube's rows
/// inside the sequence, zeros from there on) into `smem` from element 0 (row stride
/// `shape.smem_stride`), through `registers`; every unit of the cube takes part and the tile is
/// visible to all on return.
#[cube]
pub(crate) fn stage_cube_chunk<F: Float, N: Size>(
    tensor: &Tensor<Vector<F, N>>,
    order: &Array<u32>,
    registers: &mut Array<Vector<F, N>>,
    smem: &mut SharedMemory<F>,
    run: &RowRun,
    #[comptime] shape: TileShape,
) {
    load_rows_registers(tensor, order, registers, run, shape);
    // The previous chunk's readers are done before it is overwritten.
    sync_cube();
    store_rows_registers(registers, smem, run.unit, shape);
    sync_cube();
}
