//! `dQ` on tensor cores: the forward's cube (4 planes x 16 query rows) and walk over key tiles,
//! with the probabilities recomputed from the forward's LSE (FlashAttention-2's backward; see
//! [`crate::fused::portable::backward`] for the algebra). Per key tile and plane:
//! 1. `S = Q K^T` into the plane's `f32` scratch; `P = exp(scale S + mask - LSE)` into registers
//!    (two units per row, as in the forward);
//! 2. `dP = dO V^T` into the scratch; `dS = P (dP - delta)` into shared memory in the inputs'
//!    dtype;
//! 3. `dQ += dS K` into accumulators that persist across the walk (LongNet's pairs share one
//!    softmax, so their gradients simply add); `scale` is applied once at the end.
//!
//! `Q` and `dO` of the cube's rows are held in fragments for the whole walk. Requirements are the
//! forward's (checked by the launcher).

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
    cube_row_count, memory_row, pair_view, row_block, row_statistics, with_row,
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
pub(crate) fn dilated_flash_backward_query_tensor_core<F: Float, N: Size>(
    inputs: &AttentionInputs<F, Vector<F, N>>,
    backward: &BackwardRows<Vector<F, N>>,
    plan: &RowPlan,
    grad_query: &mut Tensor<Vector<F, N>>,
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
    let key_tile = blueprint.tile;
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
    let s_stride = comptime!(key_tile + SCRATCH_PAD);
    let p_stride = comptime!(key_tile + PROBABILITY_PAD);
    let k_stride = comptime!(head_dim + KEY_PAD);
    let layout = comptime!(PlaneLayout {
        tile_rows: key_tile,
        head_dim,
        tile_stride: k_stride,
        scratch_stride: s_stride,
        probability_stride: p_stride,
    });
    let shape = comptime!(TileShape {
        units: TENSOR_CORE_UNITS,
        tile_rows: key_tile,
        head_dim,
        smem_stride: k_stride,
        ordered,
    });

    let row_in_plane = lane / 2;
    let half = lane % 2;
    let my_row = rows.first_row + (plane * 16 + row_in_plane) * rows.stride;
    let row_valid = my_row < seq_len;
    let my_rows = with_row(&rows, my_row);
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
    let (row_lse, row_delta) =
        row_statistics(lse, delta, batch, head, my_row, seq_len, order, ordered);

    let mut key_smem = SharedMemory::<F>::new_aligned(key_tile * k_stride, 16usize);
    let mut value_smem = SharedMemory::<F>::new_aligned(key_tile * k_stride, 16usize);
    let mut bias_smem = SharedMemory::<f32>::new_aligned(key_tile, 16usize);
    let mut scratch = SharedMemory::<f32>::new_aligned(TENSOR_CORE_PLANES * 16 * s_stride, 16usize);
    let mut grad_scores =
        SharedMemory::<F>::new_aligned(TENSOR_CORE_PLANES * 16 * p_stride, 16usize);
    let scratch_base = plane * 16 * s_stride;
    let p_base = plane * 16 * p_stride;
    let width = N::value();
    let rounds = comptime!((key_tile * head_dim / width).div_ceil(TENSOR_CORE_UNITS));
    let mut key_regs = Array::<Vector<F, N>>::new(rounds);
    let mut value_regs = Array::<Vector<F, N>>::new(rounds);

    let mut query_frags = input_fragments::<F>(dim_tiles);
    stage_cube_rows(
        query,
        order,
        &mut query_frags,
        &mut key_regs,
        &mut key_smem,
        &own,
        shape,
    );
    let mut grad_output_frags = input_fragments::<F>(dim_tiles);
    stage_cube_rows(
        grad_output,
        order,
        &mut grad_output_frags,
        &mut key_regs,
        &mut key_smem,
        &own,
        shape,
    );
    let mut grad_query_frags = accumulator_fragments(dim_tiles);
    let block = cmma::Matrix::<f32>::from_value(
        cmma::MatrixIdent::Accumulator,
        16usize,
        16usize,
        16usize,
        cmma::MatrixLayout::Undefined,
        0.0,
    );

    let walk = comptime!(TileWalk {
        key_tile,
        causal,
        queries_of_keys: false,
    });
    let mut job = seek_key_tile(table, &rows, seq_len, 0usize, FIRST_SEGMENT, 0usize, walk);
    let first_view = pair_view(table, &my_rows, job.pair, seq_len);
    let mut row_selected = first_view.selected;
    let mut row_segment = first_view.row_segment;
    let mut row_t = first_view.t;
    while job.valid {
        sync_cube();
        let key0 = job.tile * key_tile;
        let run = RowRun {
            batch,
            head,
            first: job.key_start,
            dilation: job.dilation,
            tile_start: key0,
            count: job.key_count,
            unit,
        };
        load_rows_registers(key, order, &mut key_regs, &run, shape);
        load_rows_registers(value, order, &mut value_regs, &run, shape);
        if unit < key_tile {
            let t = key0 + unit;
            let mut bias = f32::new(KEY_MASKED);
            if t < job.key_count {
                bias = 0.0;
                if has_padding {
                    let pos = memory_row(order, job.key_start + t * job.dilation, ordered);
                    let padded = f32::cast_from(
                        padding[batch * padding.stride(0) + pos * padding.stride(1)],
                    );
                    bias = select(padded > 0.5, f32::new(KEY_MASKED), 0.0f32);
                }
            }
            bias_smem[unit] = bias;
        }
        store_rows_registers(&key_regs, &mut key_smem, unit, shape);
        store_rows_registers(&value_regs, &mut value_smem, unit, shape);
        sync_cube();
        let row_here = row_selected && row_segment == job.segment_index;
        let mut row_sees_tile = row_here;
        if causal {
            row_sees_tile = row_sees_tile && key0 <= row_t;
        }
        if plane_any(row_sees_tile) {
            // Rows outside the segment take their probabilities against +1e30: all 0.
            let tile_lse = select(row_here, row_lse, f32::new(-KEY_MASKED));
            plane_query_tile(
                &query_frags,
                &grad_output_frags,
                &block,
                &mut grad_query_frags,
                &key_smem,
                &value_smem,
                &bias_smem,
                &mut scratch,
                &mut grad_scores,
                scratch_base,
                p_base,
                row_in_plane,
                half,
                key0,
                row_t,
                scale,
                tile_lse,
                row_delta,
                key_tile,
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

    let row_base = batch * grad_query.stride(0)
        + memory_row(order, my_row, ordered) * grad_query.stride(1)
        + head * grad_query.stride(2);
    let target = AccumulatorStore {
        scratch_base,
        row_base,
        row_valid,
        row_in_plane,
        half,
        factor: scale,
    };
    store_accumulators(&grad_query_frags, &mut scratch, grad_query, &target, layout);
}

/// One plane's `dQ` work on one loaded key tile.
#[cube]
#[allow(clippy::too_many_arguments)]
fn plane_query_tile<F: Float>(
    query_frags: &Sequence<cmma::Matrix<F>>,
    grad_output_frags: &Sequence<cmma::Matrix<F>>,
    block: &cmma::Matrix<f32>,
    grad_query_frags: &mut Sequence<cmma::Matrix<f32>>,
    key_smem: &SharedMemory<F>,
    value_smem: &SharedMemory<F>,
    bias_smem: &SharedMemory<f32>,
    scratch: &mut SharedMemory<f32>,
    grad_scores: &mut SharedMemory<F>,
    scratch_base: usize,
    p_base: usize,
    row_in_plane: usize,
    half: usize,
    key0: usize,
    row_t: usize,
    scale: f32,
    row_lse: f32,
    row_delta: f32,
    #[comptime] key_tile: usize,
    #[comptime] head_dim: usize,
    #[comptime] causal: bool,
) {
    let s_stride = comptime!(key_tile + SCRATCH_PAD);
    let p_stride = comptime!(key_tile + PROBABILITY_PAD);
    let k_stride = comptime!(head_dim + KEY_PAD);
    let layout = comptime!(PlaneLayout {
        tile_rows: key_tile,
        head_dim,
        tile_stride: k_stride,
        scratch_stride: s_stride,
        probability_stride: p_stride,
    });
    let groups = comptime!(key_tile / 8);
    let row_scores = scratch_base + row_in_plane * s_stride;

    // 1. P = exp(scale Q K^T + mask - LSE), kept in registers.
    scores_into_scratch(query_frags, block, key_smem, scratch, scratch_base, layout);
    sync_plane();
    let mut probabilities = Array::<f32>::new(comptime!(key_tile / 2));
    #[unroll]
    for k in 0..groups {
        let col0 = 8 * k + 4 * half;
        let scores = read_four(scratch, row_scores + col0);
        let biases = read_four(bias_smem, col0);
        #[unroll]
        for i in 0..4usize {
            let mut score = scores[i] * scale + biases[i];
            if causal {
                score = select(key0 + col0 + i <= row_t, score, f32::new(KEY_MASKED));
            }
            probabilities[4 * k + i] = (score - row_lse).exp();
        }
    }
    sync_plane();

    // 2. dS = P (dO V^T - delta), in the inputs' dtype.
    scores_into_scratch(
        grad_output_frags,
        block,
        value_smem,
        scratch,
        scratch_base,
        layout,
    );
    sync_plane();
    let ds_row = p_base + row_in_plane * p_stride;
    #[unroll]
    for k in 0..groups {
        let col0 = 8 * k + 4 * half;
        let grad_p = read_four(scratch, row_scores + col0);
        let mut packed = Vector::<F, Const<4>>::empty();
        #[unroll]
        for i in 0..4usize {
            packed[i] = F::cast_from(probabilities[4 * k + i] * (grad_p[i] - row_delta));
        }
        write_four(grad_scores, ds_row + col0, packed);
    }
    sync_plane();

    // 3. dQ += dS K.
    accumulate_product(grad_query_frags, grad_scores, p_base, key_smem, layout);
    sync_plane();
}
