//! Device-side helpers the fused kernels share: which rows a cube owns, where a row sits in a
//! pair, how many selected rows of a segment a cube visits, and the per-row values (LSE, delta,
//! key padding) the backward kernels read.

use burn_cubecl::cubecl;
use burn_cubecl::cubecl::prelude::*;

use super::launch_plan::NOT_IN_PAIR;
use super::tensor_core::KEY_MASKED;
use super::tiles::MASKED;

/// The rows one cube owns (see [`super::launch_plan`]) and the row of this unit.
#[derive(CubeType, Clone, Copy)]
pub(crate) struct RowBlock {
    /// Index of the head's block in the launch table.
    pub entry: usize,
    /// The head's row stride.
    pub stride: usize,
    /// Residue class of the cube's rows modulo the stride.
    pub class: usize,
    /// First and last (inclusive, clamped to the sequence) row of the cube.
    pub first_row: usize,
    pub last_row: usize,
    /// This unit's row (may be `>= seq_len` in the last cube of a class).
    pub row: usize,
}

/// Resolves the cube at `block` for `head`; the whole cube terminates when it owns no row.
#[cube]
pub(crate) fn row_block(
    table: &Array<u32>,
    head: usize,
    block: usize,
    lane: usize,
    seq_len: usize,
    #[comptime] block_rows: usize,
) -> RowBlock {
    let num_pairs = table[0] as usize;
    let entry = 1 + 2 * num_pairs + head * (1 + num_pairs);
    let stride = table[entry] as usize;
    let per_class = seq_len.div_ceil(stride).div_ceil(block_rows);
    if block >= stride * per_class {
        terminate!();
    }
    let class = block / per_class;
    let first = (block % per_class) * block_rows;
    let first_row = class + stride * first;
    if first_row >= seq_len {
        terminate!();
    }
    let last_row = min(class + stride * (first + block_rows - 1), seq_len - 1);
    RowBlock {
        entry,
        stride,
        class,
        first_row,
        last_row,
        row: class + stride * (first + lane),
    }
}

/// The memory row of sequence position `position`: the position itself, or, in a call along a
/// sequence order (`ordered`: Hilbert attention), the order's entry `order[position]`, so that
/// the kernels attend along the order while every tensor stays in its own layout. Positions past
/// the order (rows past the sequence, which callers guard) map to themselves.
// The outer `if` is resolved at compile time (`ordered` is comptime): not collapsible.
#[allow(clippy::collapsible_if)]
#[cube]
pub(crate) fn memory_row(order: &Array<u32>, position: usize, #[comptime] ordered: bool) -> usize {
    let mut row = position;
    if ordered {
        if position < order.len() {
            row = order[position] as usize;
        }
    }
    row
}

/// One pair as a cube sees it.
#[derive(CubeType, Clone, Copy)]
pub(crate) struct PairView {
    /// Segment length (clamped to the sequence), dilation and the head's offset.
    pub segment: usize,
    pub dilation: usize,
    pub offset: usize,
    /// True when no row of the cube can be selected (head outside the pair, or an aligned
    /// pair that selects another residue class): the cube skips the pair without a load.
    pub skip: bool,
    /// Whether this unit's row is selected, its segment and its index `t` among the segment's
    /// selected rows.
    pub selected: bool,
    pub row_segment: usize,
    pub t: usize,
}

/// The view of pair `pair` for the cube `rows`.
// `is_multiple_of` has no device-side expansion in CubeCL 0.10.
#[allow(clippy::manual_is_multiple_of)]
#[cube]
pub(crate) fn pair_view(
    table: &Array<u32>,
    rows: &RowBlock,
    pair: usize,
    seq_len: usize,
) -> PairView {
    let offset_entry = table[rows.entry + 1 + pair];
    let segment = table[1 + 2 * pair] as usize;
    let dilation = table[2 + 2 * pair] as usize;
    let offset = offset_entry as usize;
    let aligned = rows.stride % dilation == 0 && segment % dilation == 0;
    let skip = offset_entry == NOT_IN_PAIR || (aligned && rows.class % dilation != offset);
    let within = rows.row % segment;
    let selected =
        !skip && rows.row < seq_len && within >= offset && (within - offset) % dilation == 0;
    let mut t = 0usize;
    if selected {
        t = (within - offset) / dilation;
    }
    PairView {
        segment,
        dilation,
        offset,
        skip,
        selected,
        row_segment: rows.row / segment,
        t,
    }
}

/// Number of selected rows `offset, offset + dilation, ... < len`.
#[cube]
pub(crate) fn rows_selected(offset: usize, len: usize, dilation: usize) -> usize {
    let mut count = 0usize;
    if offset < len {
        count = (len - offset).div_ceil(dilation);
    }
    count
}

/// Index among segment `seg_start`'s selected rows of the first selected row at or after
/// `position` (clamped at 0 from below).
#[cube]
pub(crate) fn first_selected_at_or_after(
    position: usize,
    seg_start: usize,
    offset: usize,
    dilation: usize,
) -> usize {
    let mut index = 0usize;
    if position > seg_start + offset {
        index = (position - seg_start - offset).div_ceil(dilation);
    }
    index
}

/// Number of selected rows of a segment at or before `last_row` (all of them when
/// `last_row` is past the segment).
#[cube]
pub(crate) fn selected_up_to(
    last_row: usize,
    seg_start: usize,
    seg_len: usize,
    offset: usize,
    dilation: usize,
) -> usize {
    let last_in = min(last_row, seg_start + seg_len - 1) - seg_start;
    let mut count = 0usize;
    if last_in >= offset {
        count = (last_in - offset) / dilation + 1;
    }
    count
}

/// Number of selected keys of segment `seg_index` of the pair `view` that the cube `rows`
/// visits: all of them, or when causal those at or before the cube's last row.
#[cube]
pub(crate) fn segment_key_count(
    view: &PairView,
    rows: &RowBlock,
    seg_index: usize,
    seq_len: usize,
    #[comptime] causal: bool,
) -> usize {
    let seg_start = seg_index * view.segment;
    let seg_len = min(view.segment, seq_len - seg_start);
    let mut key_count = rows_selected(view.offset, seg_len, view.dilation);
    if causal {
        key_count = min(
            key_count,
            selected_up_to(
                rows.last_row,
                seg_start,
                seg_len,
                view.offset,
                view.dilation,
            ),
        );
    }
    key_count
}

/// The cube `rows` seen from another of its rows (`row`, e.g. a tensor-core unit's).
#[cube]
pub(crate) fn with_row(rows: &RowBlock, row: usize) -> RowBlock {
    RowBlock {
        entry: rows.entry,
        stride: rows.stride,
        class: rows.class,
        first_row: rows.first_row,
        last_row: rows.last_row,
        row,
    }
}

/// Rows of the cube inside the sequence (at most `block_rows`).
#[cube]
pub(crate) fn cube_row_count(
    rows: &RowBlock,
    seq_len: usize,
    #[comptime] block_rows: usize,
) -> usize {
    min((seq_len - rows.first_row).div_ceil(rows.stride), block_rows)
}

/// The LSE the backward kernels take a row's probabilities against: its own when it saw a key,
/// `+1e30` otherwise (every probability 0; fast math takes no infinities).
#[cube]
pub(crate) fn live_lse(raw: f32) -> f32 {
    select(raw > f32::new(MASKED), raw, f32::new(-KEY_MASKED))
}

/// A row's [`live_lse`] (`+1e30` past the sequence) and delta.
#[cube]
pub(crate) fn row_statistics(
    lse: &Tensor<f32>,
    delta: &Tensor<f32>,
    batch: usize,
    head: usize,
    row: usize,
    seq_len: usize,
    order: &Array<u32>,
    #[comptime] ordered: bool,
) -> (f32, f32) {
    let mut row_lse = f32::new(-KEY_MASKED);
    let mut row_delta = 0.0f32;
    if row < seq_len {
        let at = memory_row(order, row, ordered);
        row_lse = live_lse(lse[batch * lse.stride(0) + at * lse.stride(1) + head * lse.stride(2)]);
        row_delta = delta[batch * delta.stride(0) + at * delta.stride(1) + head * delta.stride(2)];
    }
    (row_lse, row_delta)
}

/// Whether key `row` takes part: inside the sequence and not padded.
#[cube]
pub(crate) fn key_live<F: Float>(
    padding: &Tensor<F>,
    batch: usize,
    row: usize,
    seq_len: usize,
    order: &Array<u32>,
    #[comptime] has_padding: bool,
    #[comptime] ordered: bool,
) -> bool {
    let mut live = row < seq_len;
    if has_padding && live {
        let at = memory_row(order, row, ordered);
        live = f32::cast_from(padding[batch * padding.stride(0) + at * padding.stride(1)]) < 0.5;
    }
    live
}
