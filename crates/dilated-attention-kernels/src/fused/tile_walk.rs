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
// `u32::MAX`, not `usize::MAX`: device-side `usize` is 32 bits on WGPU, where the 64-bit constant
// did not survive (the walk came back empty on lavapipe).
pub(crate) const FIRST_SEGMENT: usize = u32::MAX as usize;

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

/// The comptime settings of a walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct TileWalk {
    /// Selected keys (queries, for `queries_of_keys`) per tile.
    pub key_tile: usize,
    /// Keys after the query are hidden.
    pub causal: bool,
    /// The key/value backward's mirror walk: the tiles of queries that see the cube's rows.
    pub queries_of_keys: bool,
}

/// The first tile of the walk at or after (`pair`, `segment_index`, `tile`) for the cube
/// `rows`; [`FIRST_SEGMENT`] starts a pair at its first segment. With `queries_of_keys` the
/// walk is the key/value backward's: the tiles of queries that see the cube's rows as keys.
#[cube]
pub(crate) fn seek_key_tile(
    table: &Array<u32>,
    rows: &RowBlock,
    seq_len: usize,
    start_pair: usize,
    start_segment: usize,
    start_tile: usize,
    #[comptime] walk: TileWalk,
) -> KeyTile {
    let key_tile = walk.key_tile;
    let causal = walk.causal;
    let queries_of_keys = walk.queries_of_keys;
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

/// The tile after `job` in the walk: the same segment's next tile, or a seek (an invalid tile
/// after an invalid one).
#[cube]
pub(crate) fn next_key_tile(
    table: &Array<u32>,
    rows: &RowBlock,
    seq_len: usize,
    job: &KeyTile,
    #[comptime] walk: TileWalk,
) -> KeyTile {
    let key_tile = walk.key_tile;
    let mut next = KeyTile {
        valid: job.valid,
        pair: job.pair,
        segment_index: job.segment_index,
        tile: job.tile + 1,
        key_start: job.key_start,
        dilation: job.dilation,
        key_count: job.key_count,
    };
    if job.valid && job.tile + 1 >= job.key_count.div_ceil(key_tile) {
        let found = seek_key_tile(
            table,
            rows,
            seq_len,
            job.pair,
            job.segment_index,
            job.tile + 1,
            walk,
        );
        assign_key_tile(&mut next, &found);
    }
    next
}

/// `*target = *source` (CubeCL assigns structs field by field).
#[cube]
pub(crate) fn assign_key_tile(target: &mut KeyTile, source: &KeyTile) {
    target.valid = source.valid;
    target.pair = source.pair;
    target.segment_index = source.segment_index;
    target.tile = source.tile;
    target.key_start = source.key_start;
    target.dilation = source.dilation;
    target.key_count = source.key_count;
}

/// The walk against the attention it must cover, on the test runtime (lavapipe in CI): every
/// (query, key) interaction of a cube's rows lies in exactly one walked tile, for the forward's
/// walk (the cube's rows as queries) and the key/value backward's mirror walk (as keys).
#[cfg(all(test, feature = "test-wgpu"))]
mod tests {
    use std::collections::BTreeSet;

    use burn_cubecl::cubecl::wgpu::WgpuRuntime;
    use dilated_attention_core::{DilatedAttentionConfig, DilatedIndexPlan, DilationMode};

    use super::*;
    use crate::fused::launch_plan::{LaunchPlan, rows_of_block};
    use crate::fused::rows::row_block;

    const ROWS: usize = 64;
    const MAX_TILES: usize = 256;

    /// Writes, per (head, block), the walk's length and its (pair, segment, tile) entries.
    #[cube(launch_unchecked)]
    fn walk_probe(
        table: &Array<u32>,
        out: &mut Array<u32>,
        seq_len_arg: u32,
        #[comptime] tile: usize,
        #[comptime] causal: bool,
        #[comptime] queries_of_keys: bool,
    ) {
        let seq_len = seq_len_arg as usize;
        let head = CUBE_POS_Y as usize;
        let block = CUBE_POS_X as usize;
        let slot = (head * CUBE_COUNT_X as usize + block) * (1 + 3 * MAX_TILES);
        out[slot] = 0;
        let rows = row_block(table, head, block, 0usize, seq_len, ROWS);
        let walk = comptime!(TileWalk {
            key_tile: tile,
            causal,
            queries_of_keys,
        });
        let mut job = seek_key_tile(table, &rows, seq_len, 0usize, FIRST_SEGMENT, 0usize, walk);
        let mut count = 0usize;
        while job.valid && count < MAX_TILES {
            out[slot + 1 + 3 * count] = job.pair as u32;
            out[slot + 2 + 3 * count] = job.segment_index as u32;
            out[slot + 3 + 3 * count] = job.tile as u32;
            count += 1;
            let next = next_key_tile(table, &rows, seq_len, &job, walk);
            assign_key_tile(&mut job, &next);
        }
        out[slot] = count as u32;
    }

    /// The walk of every (head, block) as read back from the device.
    fn walks(
        plan: &LaunchPlan,
        seq_len: usize,
        heads: usize,
        tile: usize,
        causal: bool,
        queries_of_keys: bool,
    ) -> Vec<Vec<(usize, usize, usize)>> {
        let client = WgpuRuntime::client(&Default::default());
        let table = client.create_from_slice(u32::as_bytes(&plan.table));
        let blocks = plan.blocks_x as usize;
        let words = heads * blocks * (1 + 3 * MAX_TILES);
        let out = client.empty(words * 4);
        // SAFETY: the table is the plan's; every index the probe writes is below `words`.
        unsafe {
            walk_probe::launch_unchecked::<WgpuRuntime>(
                &client,
                CubeCount::Static(plan.blocks_x, heads as u32, 1),
                CubeDim::new_1d(1),
                ArrayArg::from_raw_parts(table, plan.table.len()),
                ArrayArg::from_raw_parts(out.clone(), words),
                seq_len as u32,
                tile,
                causal,
                queries_of_keys,
            )
        };
        let bytes = client.read_one(out).expect("probe ran");
        let words = u32::from_bytes(&bytes);
        (0..heads * blocks)
            .map(|cube| {
                let slot = cube * (1 + 3 * MAX_TILES);
                let count = words[slot] as usize;
                assert!(count < MAX_TILES, "walk longer than the probe holds");
                (0..count)
                    .map(|i| {
                        let at = slot + 1 + 3 * i;
                        (
                            words[at] as usize,
                            words[at + 1] as usize,
                            words[at + 2] as usize,
                        )
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn every_interaction_lies_in_exactly_one_walked_tile() {
        for (segments, rates, mode, seq_len, heads, tile) in [
            (vec![16, 32], vec![1, 2], DilationMode::LongNet, 150, 3, 16),
            (vec![64, 128], vec![1, 4], DilationMode::LongNet, 300, 2, 32),
            (
                vec![24, 48],
                vec![2, 3],
                DilationMode::HeadGrouped,
                200,
                4,
                16,
            ),
            (vec![7, 40], vec![3, 5], DilationMode::LongNet, 97, 3, 16),
            (vec![512], vec![8], DilationMode::LongNet, 700, 2, 32),
        ] {
            let mut cfg = DilatedAttentionConfig::new(segments, rates);
            cfg.mode = mode;
            let plan = LaunchPlan::new(&cfg, seq_len, heads, ROWS).unwrap();
            let index = DilatedIndexPlan::new(&cfg, seq_len, heads).unwrap();
            for causal in [false, true] {
                for queries_of_keys in [false, true] {
                    let found = walks(&plan, seq_len, heads, tile, causal, queries_of_keys);
                    let blocks = plan.blocks_x as usize;
                    for head in 0..heads {
                        for block in 0..blocks {
                            let walk = &found[head * blocks + block];
                            let listed: BTreeSet<_> = walk.iter().copied().collect();
                            assert_eq!(listed.len(), walk.len(), "a tile walked twice: {walk:?}");
                            let needed = needed_tiles(
                                &index,
                                seq_len,
                                head,
                                &rows_of_block(&plan, seq_len, head, block),
                                tile,
                                causal,
                                queries_of_keys,
                            );
                            let missing: Vec<_> = needed.difference(&listed).collect();
                            assert!(
                                missing.is_empty(),
                                "head {head} block {block} causal {causal} mirror \
                                 {queries_of_keys}: tiles {missing:?} not walked"
                            );
                        }
                    }
                }
            }
        }
    }

    /// The (pair, segment, tile) of every partner the cube's `rows` attend with: its keys (or,
    /// mirrored, its queries) among the selected rows of the row's segment, causal as given.
    fn needed_tiles(
        index: &DilatedIndexPlan,
        seq_len: usize,
        head: usize,
        rows: &[usize],
        tile: usize,
        causal: bool,
        queries_of_keys: bool,
    ) -> BTreeSet<(usize, usize, usize)> {
        let mut needed = BTreeSet::new();
        for &row in rows {
            for (p, pair) in index.pairs().iter().enumerate() {
                let Some(group) = pair.groups.iter().find(|g| g.heads.contains(&head)) else {
                    continue;
                };
                let segment = pair.segment_length;
                let within = row % segment;
                if within < group.offset || (within - group.offset) % pair.dilation != 0 {
                    continue;
                }
                let t = (within - group.offset) / pair.dilation;
                let seg_index = row / segment;
                let seg_len = segment.min(seq_len - seg_index * segment);
                let count =
                    dilated_attention_core::rows_selected(group.offset, seg_len, pair.dilation);
                for partner in 0..count {
                    let sees = match (causal, queries_of_keys) {
                        (false, _) => true,
                        (true, false) => partner <= t,
                        (true, true) => partner >= t,
                    };
                    if sees {
                        needed.insert((p, seg_index, partner / tile));
                    }
                }
            }
        }
        needed
    }
}
