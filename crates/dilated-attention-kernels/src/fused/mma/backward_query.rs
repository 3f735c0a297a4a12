//! `dQ` with scores in registers: the cube, walk and data flow of [`crate::fused::mma::forward`]
//! (`mma.sync` m16n8k16, `ldmatrix`, two `cp.async` stages), with the probabilities recomputed
//! from the forward's LSE (FlashAttention-2's backward; the algebra is in [`crate::fused::portable::backward`]).
//! Per key tile and plane: `S = Q K^T` and `P = exp(scale S + mask - LSE)`, `dP = dO V^T` and
//! `dS = P (dP - delta)` in registers, then `dQ += dS K` with `dS`'s registers as the `A` operand
//! (`K` by `ldmatrix.trans`). `Q` and `dO` are held in registers for the whole walk; `scale` is
//! applied once at the end. Requirements are the register-resident forward's.

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
use crate::fused::mma::tiles::{
    MaskRows, Pair, RowFactors, ScoreMask, TileProduct, mask_scores, store_cube_rows_mma,
    zero_pairs,
};
use crate::fused::rows::{cube_row_count, pair_view, row_block, row_statistics, with_row};
use crate::fused::tensor_core::{KEY_PAD, key_bias};
use crate::fused::tensor_core::{TENSOR_CORE_BLOCK_ROWS, TENSOR_CORE_UNITS};
use crate::fused::tile_walk::{
    FIRST_SEGMENT, TileWalk, assign_key_tile, next_key_tile, seek_key_tile,
};
use crate::fused::tiles::{OwnRows, TileShape};

#[cube(
    launch_unchecked,
    fast_math = FastMath::ReducedPrecision | FastMath::NotNaN | FastMath::NotInf
)]
pub(crate) fn dilated_flash_backward_query_mma<F: Float, N: Size>(
    inputs: &AttentionInputs<F, Vector<F, N>>,
    backward: &BackwardRows<Vector<F, N>>,
    plan: &RowPlan,
    grad_query: &mut Tensor<Vector<F, N>>,
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
    let sources = row_sources(key, value, batch, head);
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
    let value_offset = comptime!(key_tile * stride);
    let stage_size = comptime!(2 * key_tile * stride);
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
    let mut bias_smem = SharedMemory::<f32>::new_aligned(2 * key_tile, 16usize);
    let barrier_0 = Barrier::shared(CUBE_DIM, UNIT_POS == 0);
    let barrier_1 = Barrier::shared(CUBE_DIM, UNIT_POS == 0);
    let width = N::value();
    let rounds = comptime!((key_tile * head_dim / width).div_ceil(TENSOR_CORE_UNITS));
    let mut key_regs = Array::<Vector<F, N>>::new(rounds);

    // Q and dO in registers for the whole walk (`ldmatrix` layout, or TF32).
    let grad_output_regs = stage_plane_rows(
        grad_output,
        order,
        &mut key_regs,
        &mut tiles,
        &own,
        product,
        ordered,
    );
    let query_regs = stage_plane_rows(
        query,
        order,
        &mut key_regs,
        &mut tiles,
        &own,
        product,
        ordered,
    );

    let mut grad_query_acc = zero_pairs(comptime!(2 * dim_blocks));
    let walk = comptime!(TileWalk {
        key_tile,
        causal,
        queries_of_keys: false,
    });
    let mut job = seek_key_tile(table, &rows, seq_len, 0usize, FIRST_SEGMENT, 0usize, walk);
    let row_a = rows.first_row + (plane * 16 + group) * rows.stride;
    let row_b = row_a + 8 * rows.stride;
    let rows_a = with_row(&rows, row_a);
    let rows_b = with_row(&rows, row_b);
    let (lse_a, delta_a) = row_statistics(lse, delta, batch, head, row_a, seq_len, order, ordered);
    let (lse_b, delta_b) = row_statistics(lse, delta, batch, head, row_b, seq_len, order, ordered);
    let view_a = pair_view(table, &rows_a, job.pair, seq_len);
    let view_b = pair_view(table, &rows_b, job.pair, seq_len);
    let mut state_a = mma_row(&view_a);
    let mut state_b = mma_row(&view_b);
    let mut scores = Array::<Pair<f32>>::new(comptime!(2 * key_blocks));
    let mut grad_p = Array::<Pair<f32>>::new(comptime!(2 * key_blocks));

    // The walk, one tile ahead: tile i+1's copies are issued before tile i's products.
    sync_cube();
    let mut memory_rows = memory_row_slots::<N>(key_tile, head_dim, ordered);
    tile_memory_rows::<N>(
        order,
        &job,
        &mut memory_rows,
        unit,
        key_tile,
        head_dim,
        ordered,
    );
    copy_tile_async(
        key,
        value,
        &mut tiles,
        0usize,
        value_offset,
        &job,
        &memory_rows,
        &sources,
        unit,
        key_tile,
        head_dim,
        stride,
        ordered,
    );
    if unit < key_tile {
        bias_smem[unit] = key_bias(
            padding,
            order,
            &job,
            batch,
            unit,
            key_tile,
            has_padding,
            ordered,
        );
    }
    barrier_0.commit_copy_async();
    // Tile i+2's memory rows are read from the order while tile i computes.
    let mut next = next_key_tile(table, &rows, seq_len, &job, walk);
    let mut next_rows = memory_row_slots::<N>(key_tile, head_dim, ordered);
    tile_memory_rows::<N>(
        order,
        &next,
        &mut next_rows,
        unit,
        key_tile,
        head_dim,
        ordered,
    );
    let mut stage = 0usize;
    while job.valid {
        let key0 = job.tile * key_tile;
        let other = 1 - stage;
        if next.valid {
            copy_tile_async(
                key,
                value,
                &mut tiles,
                other * stage_size,
                value_offset,
                &next,
                &next_rows,
                &sources,
                unit,
                key_tile,
                head_dim,
                stride,
                ordered,
            );
            if unit < key_tile {
                bias_smem[other * key_tile + unit] = key_bias(
                    padding,
                    order,
                    &next,
                    batch,
                    unit,
                    key_tile,
                    has_padding,
                    ordered,
                );
            }
        }
        let after = next_key_tile(table, &rows, seq_len, &next, walk);
        tile_memory_rows::<N>(
            order,
            &after,
            &mut memory_rows,
            unit,
            key_tile,
            head_dim,
            ordered,
        );
        if stage == 0 {
            barrier_1.commit_copy_async();
            barrier_0.arrive_and_wait();
        } else {
            barrier_0.commit_copy_async();
            barrier_1.arrive_and_wait();
        }
        let key_base = stage * stage_size;
        let value_base = key_base + value_offset;
        let bias_base = stage * key_tile;

        let here_a = state_a.selected && state_a.segment == job.segment_index;
        let here_b = state_b.selected && state_b.segment == job.segment_index;
        let mut sees = here_a || here_b;
        if causal {
            sees = (here_a && key0 <= state_a.t) || (here_b && key0 <= state_b.t);
        }
        if plane_any(sees) {
            // 1. S = Q K^T.
            plane_scores(&query_regs, &tiles, key_base, lane, &mut scores, product);

            // 2. Masks on raw scores (the scale goes into the exponent below). A tile that both
            // rows see whole (every key present, none padded, none past a causal row) skips the
            // masks: most tiles of a segment.
            let mut whole = here_a && here_b && key0 + key_tile <= job.key_count && !has_padding;
            if causal {
                whole = whole && key0 + key_tile <= min(state_a.t, state_b.t) + 1;
            }
            let mask_rows = MaskRows {
                whole,
                here_a,
                here_b,
                limit_a: state_a.t,
                limit_b: state_b.t,
                first: key0,
            };
            let mask = comptime!(ScoreMask {
                tile_rows: key_tile,
                causal,
                columns_after_rows: false,
                raw: true,
                pairs_swapped: tf32,
            });
            mask_scores(
                &mut scores,
                &bias_smem,
                bias_base,
                scale,
                &mask_rows,
                quad,
                mask,
            );
            // P = exp(scale s - LSE), one fused multiply-add per score before the exponential
            // (rows outside the tile's segment are masked: 0).
            #[unroll]
            for nb in 0..key_blocks {
                let mut p_a = scores[2 * nb];
                let mut p_b = scores[2 * nb + 1];
                #[unroll]
                for e in 0..2usize {
                    p_a[e] = (p_a[e] * scale - lse_a).exp();
                    p_b[e] = (p_b[e] * scale - lse_b).exp();
                }
                scores[2 * nb] = p_a;
                scores[2 * nb + 1] = p_b;
            }

            // 2. dS = P (dO V^T - delta), in place.
            plane_scores(
                &grad_output_regs,
                &tiles,
                value_base,
                lane,
                &mut grad_p,
                product,
            );
            #[unroll]
            for nb in 0..key_blocks {
                let mut ds_a = scores[2 * nb];
                let mut ds_b = scores[2 * nb + 1];
                let dp_a = grad_p[2 * nb];
                let dp_b = grad_p[2 * nb + 1];
                #[unroll]
                for e in 0..2usize {
                    ds_a[e] *= dp_a[e] - delta_a;
                    ds_b[e] *= dp_b[e] - delta_b;
                }
                scores[2 * nb] = ds_a;
                scores[2 * nb + 1] = ds_b;
            }

            // 3. dQ += dS K: dS's registers are the A operand; K by `ldmatrix.trans`.
            plane_accumulate(
                &scores,
                &tiles,
                key_base,
                lane,
                &mut grad_query_acc,
                product,
            );
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
        assign_memory_rows::<N>(&mut next_rows, &memory_rows, key_tile, head_dim, ordered);
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
        &grad_query_acc,
        &factors,
        &mut tiles,
        grad_query,
        order,
        &own,
        store,
    );
}
