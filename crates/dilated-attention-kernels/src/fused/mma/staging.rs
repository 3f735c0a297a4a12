//! How the register-resident kernels bring walked tiles into shared memory: `cp.async` copies
//! of `N` values (zero-filled past the tile's rows), the sources of a (batch, head)'s rows, and,
//! for a call along a sequence order, the memory rows read from the order a tile ahead of the
//! copies.

use burn_cubecl::cubecl;
use burn_cubecl::cubecl::prelude::barrier::{copy_async, copy_async_checked};
use burn_cubecl::cubecl::prelude::*;

use crate::fused::tensor_core::TENSOR_CORE_UNITS;
use crate::fused::tile_walk::KeyTile;

/// Slots for [`tile_memory_rows`]: one per copy round of a `tile_rows x head_dim` tile in
/// `N`-value copies (one unused slot without an order).
#[cube]
pub(crate) fn memory_row_slots<N: Size>(
    #[comptime] tile_rows: usize,
    #[comptime] head_dim: usize,
    #[comptime] ordered: bool,
) -> Array<u32> {
    let width = N::value();
    let rounds = comptime!((tile_rows * head_dim / width).div_ceil(TENSOR_CORE_UNITS));
    Array::<u32>::new(comptime!(if ordered { rounds } else { 1 }))
}

/// Reads from the sequence order the memory row of each tile row this unit copies in
/// [`copy_tile_async`] (one per round) for `job`. Kernels call it a tile ahead of the copies, so
/// that the order's latency hides behind a tile of products instead of stalling the copies' issue.
/// Nothing to read without an order (the copies compute their rows).
#[cube]
pub(crate) fn tile_memory_rows<N: Size>(
    order: &Array<u32>,
    job: &KeyTile,
    memory_rows: &mut Array<u32>,
    unit: usize,
    #[comptime] tile_rows: usize,
    #[comptime] head_dim: usize,
    #[comptime] ordered: bool,
) {
    if ordered {
        let width = N::value();
        let per_row = comptime!(head_dim / width);
        let total = comptime!(tile_rows * per_row);
        let first = job.tile * tile_rows;
        #[unroll]
        for round in 0..comptime!(total.div_ceil(TENSOR_CORE_UNITS)) {
            let element = unit + round * TENSOR_CORE_UNITS;
            let t = first + element / per_row;
            let mut row = 0u32;
            if job.valid && element < total && t < job.key_count {
                row = order[job.key_start + t * job.dilation];
            }
            memory_rows[round] = row;
        }
    }
}

/// Issues one 4-byte `cp.async` per row of `job`'s tile (units `0..tile_rows`): the row's memory
/// row from the order into `rows[base + unit]` (0 past the tile's list, by a plain store). The
/// copies complete on the barrier the caller commits them to, so no register waits on the order.
#[cube]
pub(crate) fn copy_memory_rows_async(
    order: &Array<u32>,
    job: &KeyTile,
    rows: &mut SharedMemory<u32>,
    base: usize,
    unit: usize,
    #[comptime] tile_rows: usize,
) {
    if unit < tile_rows {
        let t = job.tile * tile_rows + unit;
        if job.valid && t < job.key_count {
            let position = job.key_start + t * job.dilation;
            copy_async(
                &order.slice(position, position + 1),
                &mut rows.slice_mut(base + unit, base + unit + 1),
                1u32,
            );
        } else {
            rows[base + unit] = 0u32;
        }
    }
}

/// Reads into `memory_rows` ([`memory_row_slots`]) the memory rows this unit's copies of a tile
/// need from `rows[base..]` (one per tile row, from [`copy_memory_rows_async`]).
#[cube]
pub(crate) fn shared_memory_rows<N: Size>(
    rows: &SharedMemory<u32>,
    base: usize,
    memory_rows: &mut Array<u32>,
    unit: usize,
    #[comptime] tile_rows: usize,
    #[comptime] head_dim: usize,
) {
    let width = N::value();
    let per_row = comptime!(head_dim / width);
    let total = comptime!(tile_rows * per_row);
    #[unroll]
    for round in 0..comptime!(total.div_ceil(TENSOR_CORE_UNITS)) {
        let element = unit + round * TENSOR_CORE_UNITS;
        let mut row = 0u32;
        if element < total {
            row = rows[base + element / per_row];
        }
        memory_rows[round] = row;
    }
}

/// `target = source` for the arrays of [`memory_row_slots`].
#[cube]
pub(crate) fn assign_memory_rows<N: Size>(
    target: &mut Array<u32>,
    source: &Array<u32>,
    #[comptime] tile_rows: usize,
    #[comptime] head_dim: usize,
    #[comptime] ordered: bool,
) {
    if ordered {
        let width = N::value();
        #[unroll]
        for round in 0..comptime!((tile_rows * head_dim / width).div_ceil(TENSOR_CORE_UNITS)) {
            target[round] = source[round];
        }
    }
}

/// Where one (batch, head)'s rows of two tensors start and their row strides, read once per
/// kernel: each read of a stride is a load from the launch's metadata buffer, and the `cp.async`
/// copies (inline assembly that clobbers memory) made the compiler load it again at every copy.
#[derive(CubeType, Clone, Copy)]
pub(crate) struct RowSources {
    pub first_base: usize,
    pub first_stride: usize,
    pub second_base: usize,
    pub second_stride: usize,
}

/// The [`RowSources`] of `first` and `second` for (`batch`, `head`).
#[cube]
pub(crate) fn row_sources<F: Float, N: Size>(
    first: &Tensor<Vector<F, N>>,
    second: &Tensor<Vector<F, N>>,
    batch: usize,
    head: usize,
) -> RowSources {
    RowSources {
        first_base: batch * first.stride(0) + head * first.stride(2),
        first_stride: first.stride(1),
        second_base: batch * second.stride(0) + head * second.stride(2),
        second_stride: second.stride(1),
    }
}

/// Issues the copies of `job`'s rows of `first` into `tiles` from element `base` and of `second`
/// from `base + second_offset` (row stride `stride`), `N` values per `cp.async`; rows past the
/// tile's list are zero-filled by copies of source size 0. `sources` holds where the
/// (batch, head)'s rows start ([`row_sources`] of `first` and `second`). With an order, the rows'
/// memory rows come from `memory_rows` ([`tile_memory_rows`] for `job`). The copies complete on
/// the barrier the caller commits them to.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(crate) fn copy_tile_async<F: Float, N: Size>(
    first: &Tensor<Vector<F, N>>,
    second: &Tensor<Vector<F, N>>,
    tiles: &mut SharedMemory<F>,
    base: usize,
    second_offset: usize,
    job: &KeyTile,
    memory_rows: &Array<u32>,
    sources: &RowSources,
    unit: usize,
    #[comptime] tile_rows: usize,
    #[comptime] head_dim: usize,
    #[comptime] stride: usize,
    #[comptime] ordered: bool,
) {
    let width = N::value();
    let per_row = comptime!(head_dim / width);
    let total = comptime!(tile_rows * per_row);
    let rounds = comptime!(total.div_ceil(TENSOR_CORE_UNITS));
    let first_row = job.tile * tile_rows;
    #[unroll]
    for round in 0..rounds {
        let element = unit + round * TENSOR_CORE_UNITS;
        // Every unit copies in every round when the tile divides into the cube's units.
        if comptime!(total.is_multiple_of(TENSOR_CORE_UNITS)) || element < total {
            let r = element / per_row;
            let c = (element % per_row) * width;
            let at = base + r * stride + c;
            let t = first_row + r;
            // Rows past the tile's list copy nothing and zero-fill their slot (a source of
            // length 0, at the (batch, head)'s first row), so no branch splits the copies.
            let present = job.valid && t < job.key_count;
            let mut row = job.key_start + t * job.dilation;
            if ordered {
                row = memory_rows[round] as usize;
            }
            row = select(present, row, 0usize);
            let length = select(present, 1usize, 0usize);
            copy_row_async(
                first,
                tiles,
                at,
                (sources.first_base + row * sources.first_stride + c) / width,
                length,
            );
            copy_row_async(
                second,
                tiles,
                at + second_offset,
                (sources.second_base + row * sources.second_stride + c) / width,
                length,
            );
        }
    }
}

/// One `cp.async` of `N` values from vector `from` of `tensor` to `tiles` at element `at`, or,
/// with `length` 0, `N` zeros (the copy's source size is `length` vectors, the rest zero-filled).
#[cube]
fn copy_row_async<F: Float, N: Size>(
    tensor: &Tensor<Vector<F, N>>,
    tiles: &mut SharedMemory<F>,
    at: usize,
    from: usize,
    length: usize,
) {
    let width = N::value();
    let mut destination = unsafe {
        tiles
            .slice_mut(at, at + width)
            .downcast_unchecked::<Vector<F, N>>()
    };
    copy_async_checked(
        &tensor.slice(from, from + length),
        &mut destination,
        comptime!(width as u32),
    );
}
