//! `dK` and `dV` on tensor cores: a cube owns 64 key rows (4 planes x 16, the launch plan's rows
//! read as keys) and walks the tiles of selected queries that see them (the mirror walk of
//! [`crate::fused::tile_walk`]). `K` and `V` of the cube's rows are held in fragments. Per query tile
//! and plane, transposed so that the plane's key rows are the rows of every product:
//! 1. `S^T = K Q^T` into the plane's `f32` scratch; `P^T = exp(scale S^T + mask - LSE_q)` into
//!    registers and, in the inputs' dtype, into shared memory;
//! 2. `dV += P^T dO`;
//! 3. `dP^T = V dO^T` into the scratch; `dS^T = P^T (dP^T - delta_q)` over `P^T` in shared memory;
//! 4. `dK += dS^T Q`; `scale` is applied once at the end.
//!
//! A key a pair does not select here, a padded key, a query past the segment and a query that saw
//! no key (LSE `-inf`) all give `P = 0`, so they add nothing.

use burn_cubecl::cubecl;
use burn_cubecl::cubecl::ir::FastMath;
use burn_cubecl::cubecl::prelude::*;

use crate::fused::kernel_args::{AttentionInputs, BackwardRows, RowPlan};

use super::CmmaBlueprint;
use crate::fused::cmma::forward::{PROBABILITY_PAD, SCRATCH_PAD};
use crate::fused::cmma::fragments::{
    AccumulatorStore, PlaneLayout, accumulate_product, accumulator_fragments, input_fragments,
    read_four, scores_into_scratch, stage_cube_rows, store_accumulators, write_four,
};
use crate::fused::rows::{
    cube_row_count, key_live, live_lse, memory_row, pair_view, row_block, with_row,
};
use crate::fused::tensor_core::{KEY_MASKED, KEY_PAD};
use crate::fused::tensor_core::{TENSOR_CORE_BLOCK_ROWS, TENSOR_CORE_PLANES, TENSOR_CORE_UNITS};
use crate::fused::tile_walk::{
    FIRST_SEGMENT, TileWalk, assign_key_tile, next_key_tile, seek_key_tile,
};
use crate::fused::tiles::{OwnRows, RowRun, TileShape, load_rows_registers, store_rows_registers};

#[cube(
    launch_unchecked,
    fast_math = FastMath::ReducedPrecision | FastMath::NotNaN | FastMath::NotInf
)]
pub(crate) fn dilated_flash_backward_key_value_tensor_core<F: Float, N: Size>(
    inputs: &AttentionInputs<F, Vector<F, N>>,
    backward: &BackwardRows<Vector<F, N>>,
    plan: &RowPlan,
    grad_key: &mut Tensor<Vector<F, N>>,
    grad_value: &mut Tensor<Vector<F, N>>,
    #[comptime] blueprint: CmmaBlueprint,
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
    let query_tile = blueprint.tile;
    let head_dim = blueprint.head_dim;
    let causal = blueprint.causal;
    let has_padding = blueprint.has_padding;
    let ordered = blueprint.ordered;
    let seq_len = query.shape(1);
    let batch = CUBE_POS_Z as usize;
    let head = CUBE_POS_Y as usize;
    let lane = UNIT_POS_X as usize;
    let plane = UNIT_POS_Y as usize;
    let unit = UNIT_POS as usize;
    let rows = row_block(
        table,
        head,
        CUBE_POS_X as usize,
        0usize,
        seq_len,
        TENSOR_CORE_BLOCK_ROWS,
    );
    let dim_tiles = comptime!(head_dim / 16);
    let s_stride = comptime!(query_tile + SCRATCH_PAD);
    let p_stride = comptime!(query_tile + PROBABILITY_PAD);
    let q_stride = comptime!(head_dim + KEY_PAD);
    let layout = comptime!(PlaneLayout {
        tile_rows: query_tile,
        head_dim,
        tile_stride: q_stride,
        scratch_stride: s_stride,
        probability_stride: p_stride,
    });
    let shape = comptime!(TileShape {
        units: TENSOR_CORE_UNITS,
        tile_rows: query_tile,
        head_dim,
        smem_stride: q_stride,
        ordered,
    });

    // This unit's key row: units 2r and 2r + 1 of a plane share row r.
    let row_in_plane = lane / 2;
    let half = lane % 2;
    let my_row = rows.first_row + (plane * 16 + row_in_plane) * rows.stride;
    let row_valid = my_row < seq_len;
    let my_rows = with_row(&rows, my_row);
    let my_memory_row = memory_row(order, my_row, ordered);
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
    let live = key_live(padding, batch, my_row, seq_len, order, has_padding, ordered);

    let mut query_smem = SharedMemory::<F>::new_aligned(query_tile * q_stride, 16usize);
    let mut grad_output_smem = SharedMemory::<F>::new_aligned(query_tile * q_stride, 16usize);
    let mut lse_smem = SharedMemory::<f32>::new_aligned(query_tile, 16usize);
    let mut delta_smem = SharedMemory::<f32>::new_aligned(query_tile, 16usize);
    let mut scratch = SharedMemory::<f32>::new_aligned(TENSOR_CORE_PLANES * 16 * s_stride, 16usize);
    let mut probabilities =
        SharedMemory::<F>::new_aligned(TENSOR_CORE_PLANES * 16 * p_stride, 16usize);
    let scratch_base = plane * 16 * s_stride;
    let p_base = plane * 16 * p_stride;
    let width = N::value();
    let rounds = comptime!((query_tile * head_dim / width).div_ceil(TENSOR_CORE_UNITS));
    let mut query_regs = Array::<Vector<F, N>>::new(rounds);
    let mut grad_output_regs = Array::<Vector<F, N>>::new(rounds);

    let mut key_frags = input_fragments::<F>(dim_tiles);
    stage_cube_rows(
        key,
        order,
        &mut key_frags,
        &mut query_regs,
        &mut query_smem,
        &own,
        shape,
    );
    let mut value_frags = input_fragments::<F>(dim_tiles);
    stage_cube_rows(
        value,
        order,
        &mut value_frags,
        &mut query_regs,
        &mut query_smem,
        &own,
        shape,
    );
    let mut grad_key_frags = accumulator_fragments(dim_tiles);
    let mut grad_value_frags = accumulator_fragments(dim_tiles);
    let block = cmma::Matrix::<f32>::from_value(
        cmma::MatrixIdent::Accumulator,
        16usize,
        16usize,
        16usize,
        cmma::MatrixLayout::Undefined,
        0.0,
    );

    let walk = comptime!(TileWalk {
        key_tile: query_tile,
        causal,
        queries_of_keys: true,
    });
    let mut job = seek_key_tile(table, &rows, seq_len, 0usize, FIRST_SEGMENT, 0usize, walk);
    let first_view = pair_view(table, &my_rows, job.pair, seq_len);
    let mut row_selected = first_view.selected;
    let mut row_segment = first_view.row_segment;
    let mut row_t = first_view.t;
    while job.valid {
        sync_cube();
        let query0 = job.tile * query_tile;
        let run = RowRun {
            batch,
            head,
            first: job.key_start,
            dilation: job.dilation,
            tile_start: query0,
            count: job.key_count,
            unit,
        };
        load_rows_registers(query, order, &mut query_regs, &run, shape);
        load_rows_registers(grad_output, order, &mut grad_output_regs, &run, shape);
        if unit < query_tile {
            let t = query0 + unit;
            // Missing queries: LSE +1e30, so their probabilities are 0.
            let mut query_lse = f32::new(-KEY_MASKED);
            let mut query_delta = 0.0f32;
            if t < job.key_count {
                let pos = memory_row(order, job.key_start + t * job.dilation, ordered);
                query_lse = live_lse(
                    lse[batch * lse.stride(0) + pos * lse.stride(1) + head * lse.stride(2)],
                );
                query_delta =
                    delta[batch * delta.stride(0) + pos * delta.stride(1) + head * delta.stride(2)];
            }
            lse_smem[unit] = query_lse;
            delta_smem[unit] = query_delta;
        }
        store_rows_registers(&query_regs, &mut query_smem, unit, shape);
        store_rows_registers(&grad_output_regs, &mut grad_output_smem, unit, shape);
        sync_cube();
        let row_here = live && row_selected && row_segment == job.segment_index;
        let mut row_sees_tile = row_here;
        if causal {
            // Some query of the tile sits at or after the key.
            row_sees_tile = row_sees_tile && row_t < query0 + query_tile;
        }
        if plane_any(row_sees_tile) {
            // Keys outside the segment (or padded) add -1e30 to every score: P = 0.
            let row_bias = select(row_here, 0.0f32, f32::new(KEY_MASKED));
            plane_key_value_tile(
                &key_frags,
                &value_frags,
                &block,
                &mut grad_key_frags,
                &mut grad_value_frags,
                &query_smem,
                &grad_output_smem,
                &lse_smem,
                &delta_smem,
                &mut scratch,
                &mut probabilities,
                scratch_base,
                p_base,
                row_in_plane,
                half,
                query0,
                row_t,
                scale,
                row_bias,
                query_tile,
                head_dim,
                causal,
            );
        }
        let next = next_key_tile(table, &rows, seq_len, &job, walk);
        if next.valid && next.pair != job.pair {
            let view = pair_view(table, &my_rows, next.pair, seq_len);
            row_selected = view.selected;
            row_segment = view.row_segment;
            row_t = view.t;
        }
        assign_key_tile(&mut job, &next);
    }

    let key_base =
        batch * grad_key.stride(0) + my_memory_row * grad_key.stride(1) + head * grad_key.stride(2);
    let target = AccumulatorStore {
        scratch_base,
        row_base: key_base,
        row_valid,
        row_in_plane,
        half,
        factor: scale,
    };
    store_accumulators(&grad_key_frags, &mut scratch, grad_key, &target, layout);
    let value_base = batch * grad_value.stride(0)
        + my_memory_row * grad_value.stride(1)
        + head * grad_value.stride(2);
    let target = AccumulatorStore {
        scratch_base,
        row_base: value_base,
        row_valid,
        row_in_plane,
        half,
        factor: 1.0f32,
    };
    store_accumulators(&grad_value_frags, &mut scratch, grad_value, &target, layout);
}

/// One plane's `dK`/`dV` work on one loaded query tile.
#[cube]
#[allow(clippy::too_many_arguments)]
fn plane_key_value_tile<F: Float>(
    key_frags: &Sequence<cmma::Matrix<F>>,
    value_frags: &Sequence<cmma::Matrix<F>>,
    block: &cmma::Matrix<f32>,
    grad_key_frags: &mut Sequence<cmma::Matrix<f32>>,
    grad_value_frags: &mut Sequence<cmma::Matrix<f32>>,
    query_smem: &SharedMemory<F>,
    grad_output_smem: &SharedMemory<F>,
    lse_smem: &SharedMemory<f32>,
    delta_smem: &SharedMemory<f32>,
    scratch: &mut SharedMemory<f32>,
    probabilities: &mut SharedMemory<F>,
    scratch_base: usize,
    p_base: usize,
    row_in_plane: usize,
    half: usize,
    query0: usize,
    row_t: usize,
    scale: f32,
    row_bias: f32,
    #[comptime] query_tile: usize,
    #[comptime] head_dim: usize,
    #[comptime] causal: bool,
) {
    let s_stride = comptime!(query_tile + SCRATCH_PAD);
    let p_stride = comptime!(query_tile + PROBABILITY_PAD);
    let q_stride = comptime!(head_dim + KEY_PAD);
    let layout = comptime!(PlaneLayout {
        tile_rows: query_tile,
        head_dim,
        tile_stride: q_stride,
        scratch_stride: s_stride,
        probability_stride: p_stride,
    });
    let groups = comptime!(query_tile / 8);
    let row_scores = scratch_base + row_in_plane * s_stride;
    let p_row = p_base + row_in_plane * p_stride;

    // 1. P^T = exp(scale K Q^T + mask - LSE_q), in registers and in the inputs' dtype.
    scores_into_scratch(key_frags, block, query_smem, scratch, scratch_base, layout);
    sync_plane();
    let mut kept = Array::<f32>::new(comptime!(query_tile / 2));
    #[unroll]
    for k in 0..groups {
        let col0 = 8 * k + 4 * half;
        let scores = read_four(scratch, row_scores + col0);
        let query_lse = read_four(lse_smem, col0);
        let mut packed = Vector::<F, Const<4>>::empty();
        #[unroll]
        for i in 0..4usize {
            let mut score = scores[i] * scale + row_bias;
            if causal {
                score = select(query0 + col0 + i >= row_t, score, f32::new(KEY_MASKED));
            }
            let p = (score - query_lse[i]).exp();
            kept[4 * k + i] = p;
            packed[i] = F::cast_from(p);
        }
        write_four(probabilities, p_row + col0, packed);
    }
    sync_plane();

    // 2. dV += P^T dO.
    accumulate_product(
        grad_value_frags,
        probabilities,
        p_base,
        grad_output_smem,
        layout,
    );

    // 3. dS^T = P^T (V dO^T - delta_q), over P^T.
    scores_into_scratch(
        value_frags,
        block,
        grad_output_smem,
        scratch,
        scratch_base,
        layout,
    );
    sync_plane();
    #[unroll]
    for k in 0..groups {
        let col0 = 8 * k + 4 * half;
        let grad_p = read_four(scratch, row_scores + col0);
        let query_delta = read_four(delta_smem, col0);
        let mut packed = Vector::<F, Const<4>>::empty();
        #[unroll]
        for i in 0..4usize {
            packed[i] = F::cast_from(kept[4 * k + i] * (grad_p[i] - query_delta[i]));
        }
        write_four(probabilities, p_row + col0, packed);
    }
    sync_plane();

    // 4. dK += dS^T Q.
    accumulate_product(grad_key_frags, probabilities, p_base, query_smem, layout);
    sync_plane();
}
