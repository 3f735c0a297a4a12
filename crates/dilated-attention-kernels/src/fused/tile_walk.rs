//! The key tiles a cube visits, as one flat list: for each pair the cube's rows use, each
//! segment they touch, each tile of `key_tile` selected keys of that segment (stopping at the
//! cube's last row when causal). Kernels walk it with [`seek_key_tile`], which also tells them
//! the next tile while they compute the current one, so its loads can be issued early.

use burn_cubecl::cubecl;
use burn_cubecl::cubecl::prelude::*;

use super::rows::{RowBlock, pair_view, segment_key_count};

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
/// `rows`; [`FIRST_SEGMENT`] starts a pair at its first segment.
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
                let key_count = segment_key_count(&view, rows, segment_index, seq_len, causal);
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
