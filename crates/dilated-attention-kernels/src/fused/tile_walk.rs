//! The key tiles a cube visits, as one flat list: for each pair the cube's rows use, each
//! segment they touch, each tile of `key_tile` selected keys of that segment (stopping at the
//! cube's last row when causal). Kernels walk it with [`seek_key_tile`], which also tells them
//! the next tile while they compute the current one, so its loads can be issued early.
//!
//! The key/value backward walks the mirror list: its cube owns keys and visits the tiles of
//! selected queries that see them (when causal, from the cube's first row on); a segment's
//! selected queries are its selected keys, so only the causal bound differs
//! (`queries_of_keys`).

use burn_cubecl::cubecl;
use burn_cubecl::cubecl::prelude::*;

use super::rows::{
    RowBlock, first_selected_at_or_after, pair_view, rows_selected, segment_key_count,
};

/// `segment_index` value that means "the first segment the cube's rows touch in this pair".
pub(crate) const FIRST_SEGMENT: usize = usize::MAX;

/// One tile of the walk: keys `key_start + (tile * key_tile + j) * dilation` for
/// `j < key_tile` and `tile * key_tile + j < key_count`.
#[derive(CubeType, Clone, Copy)]
pub(crate) struct KeyTile {
    /// False past the end of the walk.
    pub valid: bool,
    pub pair: usize,
    pub segment_index: usize,
    pub tile: usize,
    /// Position of the segment's first selected key and the step between selected keys.
    pub key_start: usize,
    pub dilation: usize,
    /// Selected keys of the segment the cube visits.
    pub key_count: usize,
}

/// The first tile of the walk at or after (`pair`, `segment_index`, `tile`) for the cube
/// `rows`; [`FIRST_SEGMENT`] starts a pair at its first segment. With `queries_of_keys` the
/// walk is the key/value backward's: the tiles of queries that see the cube's rows as keys.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(crate) fn seek_key_tile(
    table: &Array<u32>,
    rows: &RowBlock,
    seq_len: usize,
    start_pair: usize,
    start_segment: usize,
    start_tile: usize,
    #[comptime] key_tile: usize,
    #[comptime] causal: bool,
    #[comptime] queries_of_keys: bool,
) -> KeyTile {
    let num_pairs = table[0] as usize;
    let mut found = KeyTile {
        valid: false,
        pair: 0usize,
        segment_index: 0usize,
        tile: 0usize,
        key_start: 0usize,
        dilation: 1usize,
        key_count: 0usize,
    };
    let mut pair = start_pair;
    let mut segment_index = start_segment;
    let mut tile = start_tile;
    while pair < num_pairs && !found.valid {
        let view = pair_view(table, rows, pair, seq_len);
        if !view.skip {
            if segment_index == FIRST_SEGMENT {
                segment_index = rows.first_row / view.segment;
            }
            let segment_hi = rows.last_row / view.segment;
            while segment_index <= segment_hi && !found.valid {
                let seg_start = segment_index * view.segment;
                let seg_len = min(view.segment, seq_len - seg_start);
                let mut key_count = rows_selected(view.offset, seg_len, view.dilation);
                if comptime!(queries_of_keys) {
                    if causal {
                        // Queries before the cube's first row see none of its keys.
                        let first = first_selected_at_or_after(
                            max(rows.first_row, seg_start),
                            seg_start,
                            view.offset,
                            view.dilation,
                        ) / key_tile;
                        tile = max(tile, first);
                    }
                } else {
                    key_count = segment_key_count(&view, rows, segment_index, seq_len, causal);
                }
                if tile < key_count.div_ceil(key_tile) {
                    found.valid = true;
                    found.pair = pair;
                    found.segment_index = segment_index;
                    found.tile = tile;
                    found.key_start = seg_start + view.offset;
                    found.dilation = view.dilation;
                    found.key_count = key_count;
                } else {
                    segment_index += 1;
                    tile = 0;
                }
            }
        }
        if !found.valid {
            pair += 1;
            segment_index = FIRST_SEGMENT;
            tile = 0;
        }
    }
    found
}

/// The tile after `job` in the walk: the same segment's next tile, or a seek.
#[cube]
pub(crate) fn next_key_tile(
    table: &Array<u32>,
    rows: &RowBlock,
    seq_len: usize,
    job: &KeyTile,
    #[comptime] key_tile: usize,
    #[comptime] causal: bool,
    #[comptime] queries_of_keys: bool,
) -> KeyTile {
    let mut next = KeyTile {
        valid: job.valid,
        pair: job.pair,
        segment_index: job.segment_index,
        tile: job.tile + 1,
        key_start: job.key_start,
        dilation: job.dilation,
        key_count: job.key_count,
    };
    if job.tile + 1 >= job.key_count.div_ceil(key_tile) {
        let found = seek_key_tile(
            table,
            rows,
            seq_len,
            job.pair,
            job.segment_index,
            job.tile + 1,
            key_tile,
            causal,
            queries_of_keys,
        );
        next.valid = found.valid;
        next.pair = found.pair;
        next.segment_index = found.segment_index;
        next.tile = found.tile;
        next.key_start = found.key_start;
        next.dilation = found.dilation;
        next.key_count = found.key_count;
    }
    next
}
