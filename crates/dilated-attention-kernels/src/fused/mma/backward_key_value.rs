//! `dK` and `dV` with scores in registers: a cube owns 64 key rows (4 planes x 16, the launch
//! plan's rows read as keys) and walks the query tiles that see them (the mirror walk of
//! [`crate::fused::tile_walk`]), with the data flow of [`crate::fused::mma::forward`] (`mma.sync` m16n8k16,
//! `ldmatrix`, two `cp.async` stages of queries and output gradients). `K` and `V` of the cube's
//! rows are held in registers. Per query tile and plane, transposed so that the plane's keys are
//! the rows of every product:
//! 1. `S^T = K Q^T`, `P^T = exp(scale S^T + mask - LSE_q)` in registers;
//! 2. `dV += P^T dO` with `P^T`'s registers as the `A` operand (`dO` by `ldmatrix.trans`);
//! 3. `dP^T = V dO^T`, `dS^T = P^T (dP^T - delta_q)` in registers;
//! 4. `dK += dS^T Q`; `scale` is applied once at the end.
//!
//! A key the pair does not select here, a padded key, a query past the segment and a query that
//! saw no key all give `P = 0`.

use burn_cubecl::cubecl;
use burn_cubecl::cubecl::ir::FastMath;
use burn_cubecl::cubecl::prelude::barrier::Barrier;
use burn_cubecl::cubecl::prelude::*;

use crate::fused::kernel_args::{AttentionInputs, BackwardRows, RowPlan};

use super::MmaBlueprint;
use crate::fused::mma::forward::{enter_pair, mma_row};
use crate::fused::mma::operands::{plane_accumulate, plane_scores, stage_plane_rows};
use crate::fused::mma::staging::{
    assign_memory_rows, copy_tile_async, memory_row_slots, row_sources, tile_memory_rows,
};
use crate::fused::mma::tf32::column_pair;
use crate::fused::mma::tiles::{
    MaskRows, Pair, RowFactors, ScoreMask, TileProduct, mask_scores, store_cube_rows_mma,
    zero_pairs,
};
use crate::fused::rows::{cube_row_count, key_live, memory_row, pair_view, row_block, with_row};
use crate::fused::tensor_core::{KEY_MASKED, KEY_PAD};
use crate::fused::tensor_core::{TENSOR_CORE_BLOCK_ROWS, TENSOR_CORE_UNITS};
use crate::fused::tile_walk::{
    FIRST_SEGMENT, KeyTile, TileWalk, assign_key_tile, next_key_tile, seek_key_tile,
};
use crate::fused::tiles::{MASKED, OwnRows, TileShape};

#[cube(
    launch_unchecked,
    fast_math = FastMath::ReducedPrecision | FastMath::NotNaN | FastMath::NotInf
)]
pub(crate) fn dilated_flash_backward_key_value_mma<F: Float, N: Size>(
    inputs: &AttentionInputs<F, Vector<F, N>>,
    backward: &BackwardRows<Vector<F, N>>,
    plan: &RowPlan,
    grad_key: &mut Tensor<Vector<F, N>>,
    grad_value: &mut Tensor<Vector<F, N>>,
    #[comptime] blueprint: MmaBlueprint,
    #[define(F)] _dtype: StorageType,
) {
    let query = &inputs.query;
    let key = &inputs.key;
    let value = &inputs.value;
    let padding = &inputs.padding;
    let scale = inputs.scale;
    let grad_output = &backward.grad_output;
    let lse = &backward.lse;
    let delta = &backward.delta;
    let table = &plan.table;
    let order = &plan.order;
    let key_tile = blueprint.tile;
    let sub_tiles = blueprint.sub_tiles;
    let head_dim = blueprint.head_dim;
    let causal = blueprint.causal;
    let has_padding = blueprint.has_padding;
    let ordered = blueprint.ordered;
    let tf32 = blueprint.tf32;
    let split = blueprint.split;
    let seq_len = query.shape(1);
    let batch = CUBE_POS_Z as usize;
    let head = CUBE_POS_Y as usize;
    let lane = UNIT_POS_X as usize;
    let plane = UNIT_POS_Y as usize;
    let unit = UNIT_POS as usize;
    let sources = row_sources(query, grad_output, batch, head);
    let rows = row_block(
        table,
        head,
        CUBE_POS_X as usize,
        0usize,
        seq_len,
        TENSOR_CORE_BLOCK_ROWS,
    );
    let stride = comptime!(head_dim + KEY_PAD);
    let product = comptime!(TileProduct {
        tile_rows: key_tile,
        head_dim,
        stride,
        tf32,
        split,
    });
    // A stage holds `sub_tiles` query tiles of `key_tile` rows, computed one after the other:
    // the probabilities' registers stay those of one tile, while the barriers, copies and walk
    // steps are paid once per stage.
    let stage_rows = comptime!(key_tile * sub_tiles);
    let value_offset = comptime!(stage_rows * stride);
    let stage_size = comptime!(2 * stage_rows * stride);
    let dim_blocks = comptime!(head_dim / 8);
    let key_blocks = comptime!(key_tile / 8);
    let group = lane / 4;
    let quad = lane % 4;
    let cube_row_count = cube_row_count(&rows, seq_len, TENSOR_CORE_BLOCK_ROWS);
    let own = OwnRows {
        batch,
        head,
        first_row: rows.first_row,
        stride: rows.stride,
        count: cube_row_count,
        unit,
        lane,
        plane,
    };

    // Keys then values of the current tile (and, before and after the walk, the cube's queries
    // and outputs: 64 rows, so `key_tile >= 32`).
    // Two stages of (keys, values): the cube copies tile i+1 (`cp.async`, no registers) while it
    // computes tile i; each stage's copies complete on its own barrier.
    let mut tiles = SharedMemory::<F>::new_aligned(2 * stage_size, 16usize);
    // Per query of each stage: `-LSE` (-1e30 for a query that saw no key or lies past the
    // segment: its probabilities are 0) and delta.
    let mut bias_smem = SharedMemory::<f32>::new_aligned(2 * stage_rows, 16usize);
    let mut delta_smem = SharedMemory::<f32>::new_aligned(2 * stage_rows, 16usize);
    let barrier_0 = Barrier::shared(CUBE_DIM, UNIT_POS == 0);
    let barrier_1 = Barrier::shared(CUBE_DIM, UNIT_POS == 0);
    let width = N::value();
    let rounds = comptime!((key_tile * head_dim / width).div_ceil(TENSOR_CORE_UNITS));
    let mut key_regs = Array::<Vector<F, N>>::new(rounds);

    // The cube's keys and values in registers for the whole walk (`ldmatrix` layout, or TF32).
    let value_regs = stage_plane_rows(
        value,
        order,
        &mut key_regs,
        &mut tiles,
        &own,
        product,
        ordered,
    );
    let key_regs_a = stage_plane_rows(
        key,
        order,
        &mut key_regs,
        &mut tiles,
        &own,
        product,
        ordered,
    );

    let mut grad_key_acc = zero_pairs(comptime!(2 * dim_blocks));
    let mut grad_value_acc = zero_pairs(comptime!(2 * dim_blocks));
    let walk = comptime!(TileWalk {
        key_tile: stage_rows,
        causal,
        queries_of_keys: true,
    });
    let mut job = seek_key_tile(table, &rows, seq_len, 0usize, FIRST_SEGMENT, 0usize, walk);
    let row_a = rows.first_row + (plane * 16 + group) * rows.stride;
    let row_b = row_a + 8 * rows.stride;
    let rows_a = with_row(&rows, row_a);
    let rows_b = with_row(&rows, row_b);
    let live_a = key_live(padding, batch, row_a, seq_len, order, has_padding, ordered);
    let live_b = key_live(padding, batch, row_b, seq_len, order, has_padding, ordered);
    let view_a = pair_view(table, &rows_a, job.pair, seq_len);
    let view_b = pair_view(table, &rows_b, job.pair, seq_len);
    let mut state_a = mma_row(&view_a);
    let mut state_b = mma_row(&view_b);
    let mut scores = Array::<Pair<f32>>::new(comptime!(2 * key_blocks));
    let mut grad_p = Array::<Pair<f32>>::new(comptime!(2 * key_blocks));

    // The walk over query tiles, one ahead: tile i+1's copies are issued before tile i's
    // products. A stage holds the queries, then the output gradients.
    sync_cube();
    let mut memory_rows = memory_row_slots::<N>(stage_rows, head_dim, ordered);
    tile_memory_rows::<N>(
        order,
        &job,
        &mut memory_rows,
        unit,
        stage_rows,
        head_dim,
        ordered,
    );
    copy_tile_async(
        query,
        grad_output,
        &mut tiles,
        0usize,
        value_offset,
        &job,
        &memory_rows,
        &sources,
        unit,
        stage_rows,
        head_dim,
        stride,
        ordered,
    );
    if unit < stage_rows {
        let values = query_column(
            lse, order, delta, &job, batch, head, unit, stage_rows, ordered,
        );
        bias_smem[unit] = values[0];
        delta_smem[unit] = values[1];
    }
    barrier_0.commit_copy_async();
    // Tile i+2's memory rows are read from the order while tile i computes.
    let mut next = next_key_tile(table, &rows, seq_len, &job, walk);
    let mut next_rows = memory_row_slots::<N>(stage_rows, head_dim, ordered);
    tile_memory_rows::<N>(
        order,
        &next,
        &mut next_rows,
        unit,
        stage_rows,
        head_dim,
        ordered,
    );
    // Tile i+1's `-LSE` and delta are loaded while tile i computes and stored into their stage
    // at the next step, so no unit waits on a global load before the stage's barrier.
    let mut next_columns = Pair::<f32>::empty();
    if unit < stage_rows {
        next_columns = query_column(
            lse, order, delta, &next, batch, head, unit, stage_rows, ordered,
        );
    }
    let mut stage = 0usize;
    while job.valid {
        let stage_query0 = job.tile * stage_rows;
        let other = 1 - stage;
        if next.valid {
            copy_tile_async(
                query,
                grad_output,
                &mut tiles,
                other * stage_size,
                value_offset,
                &next,
                &next_rows,
                &sources,
                unit,
                stage_rows,
                head_dim,
                stride,
                ordered,
            );
            if unit < stage_rows {
                bias_smem[other * stage_rows + unit] = next_columns[0];
                delta_smem[other * stage_rows + unit] = next_columns[1];
            }
        }
        let after = next_key_tile(table, &rows, seq_len, &next, walk);
        tile_memory_rows::<N>(
            order,
            &after,
            &mut memory_rows,
            unit,
            stage_rows,
            head_dim,
            ordered,
        );
        if unit < stage_rows {
            next_columns = query_column(
                lse, order, delta, &after, batch, head, unit, stage_rows, ordered,
            );
        }
        if stage == 0 {
            barrier_1.commit_copy_async();
            barrier_0.arrive_and_wait();
        } else {
            barrier_0.commit_copy_async();
            barrier_1.arrive_and_wait();
        }
        let here_a = live_a && state_a.selected && state_a.segment == job.segment_index;
        let here_b = live_b && state_b.selected && state_b.segment == job.segment_index;
        for sub_tile in 0..sub_tiles {
            let query0 = stage_query0 + sub_tile * key_tile;
            let query_base = stage * stage_size + sub_tile * key_tile * stride;
            let grad_base = query_base + value_offset;
            let column_base = stage * stage_rows + sub_tile * key_tile;

            let mut sees = here_a || here_b;
            if causal {
                // Some query of the tile sits at or after the key.
                sees = (here_a && state_a.t < query0 + key_tile)
                    || (here_b && state_b.t < query0 + key_tile);
            }
            // A tile past the segment's last query (the second of a stage) has nothing to add.
            if plane_any(sees && query0 < job.key_count) {
                // 1. P^T = exp(scale K Q^T - LSE_q), masked.
                plane_scores(&key_regs_a, &tiles, query_base, lane, &mut scores, product);
                let mask_rows = MaskRows {
                    whole: false,
                    here_a,
                    here_b,
                    limit_a: state_a.t,
                    limit_b: state_b.t,
                    first: query0,
                };
                let mask = comptime!(ScoreMask {
                    tile_rows: key_tile,
                    causal,
                    columns_after_rows: true,
                    raw: false,
                    pairs_swapped: tf32,
                });
                mask_scores(
                    &mut scores,
                    &bias_smem,
                    column_base,
                    scale,
                    &mask_rows,
                    quad,
                    mask,
                );
                #[unroll]
                for nb in 0..key_blocks {
                    let mut p_a = scores[2 * nb];
                    let mut p_b = scores[2 * nb + 1];
                    #[unroll]
                    for e in 0..2usize {
                        p_a[e] = p_a[e].exp();
                        p_b[e] = p_b[e].exp();
                    }
                    scores[2 * nb] = p_a;
                    scores[2 * nb + 1] = p_b;
                }

                // 2. dV += P^T dO (dO by `ldmatrix.trans`).
                plane_accumulate(
                    &scores,
                    &tiles,
                    grad_base,
                    lane,
                    &mut grad_value_acc,
                    product,
                );

                // 3. dS^T = P^T (V dO^T - delta_q), in place.
                plane_scores(&value_regs, &tiles, grad_base, lane, &mut grad_p, product);
                #[unroll]
                for nb in 0..key_blocks {
                    let deltas = column_pair(&delta_smem, column_base, nb, quad, tf32);
                    let mut ds_a = scores[2 * nb];
                    let mut ds_b = scores[2 * nb + 1];
                    let dp_a = grad_p[2 * nb];
                    let dp_b = grad_p[2 * nb + 1];
                    #[unroll]
                    for e in 0..2usize {
                        ds_a[e] *= dp_a[e] - deltas[e];
                        ds_b[e] *= dp_b[e] - deltas[e];
                    }
                    scores[2 * nb] = ds_a;
                    scores[2 * nb + 1] = ds_b;
                }

                // 4. dK += dS^T Q (Q by `ldmatrix.trans`).
                plane_accumulate(
                    &scores,
                    &tiles,
                    query_base,
                    lane,
                    &mut grad_key_acc,
                    product,
                );
            }
        }

        // Every plane is done with this stage before the next iteration copies into it.
        sync_cube();
        stage = other;
        if next.valid && next.pair != job.pair {
            let next_a = pair_view(table, &rows_a, next.pair, seq_len);
            let next_b = pair_view(table, &rows_b, next.pair, seq_len);
            enter_pair(&mut state_a, &next_a);
            enter_pair(&mut state_b, &next_b);
        }
        assign_key_tile(&mut job, &next);
        assign_key_tile(&mut next, &after);
        assign_memory_rows::<N>(&mut next_rows, &memory_rows, stage_rows, head_dim, ordered);
    }

    let store = comptime!(TileShape {
        units: TENSOR_CORE_UNITS,
        tile_rows: TENSOR_CORE_BLOCK_ROWS,
        head_dim,
        smem_stride: stride,
        ordered,
    });
    let factors = RowFactors { a: scale, b: scale };
    store_cube_rows_mma(
        &grad_key_acc,
        &factors,
        &mut tiles,
        grad_key,
        order,
        &own,
        store,
    );
    let factors = RowFactors {
        a: 1.0f32,
        b: 1.0f32,
    };
    store_cube_rows_mma(
        &grad_value_acc,
        &factors,
        &mut tiles,
        grad_value,
        order,
        &own,
        store,
    );
}

/// Query `unit` of `job`'s tile: `-LSE` (-1e30 when it saw no key or is past the tile's list)
/// and delta.
#[cube]
fn query_column(
    lse: &Tensor<f32>,
    order: &Array<u32>,
    delta: &Tensor<f32>,
    job: &KeyTile,
    batch: usize,
    head: usize,
    unit: usize,
    #[comptime] query_tile: usize,
    #[comptime] ordered: bool,
) -> Pair<f32> {
    let t = job.tile * query_tile + unit;
    let mut values = Pair::<f32>::empty();
    values[0] = f32::new(KEY_MASKED);
    values[1] = 0.0f32;
    if job.valid && t < job.key_count {
        let pos = memory_row(order, job.key_start + t * job.dilation, ordered);
        let raw = lse[batch * lse.stride(0) + pos * lse.stride(1) + head * lse.stride(2)];
        values[0] = select(raw > f32::new(MASKED), -raw, f32::new(KEY_MASKED));
        values[1] = delta[batch * delta.stride(0) + pos * delta.stride(1) + head * delta.stride(2)];
    }
    values
}
