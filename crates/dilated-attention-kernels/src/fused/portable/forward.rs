//! The fused forward kernel: flash attention over dilated rows, every pair in one launch.
//!
//! A cube owns `block_rows` query rows of one (batch, head) (see [`crate::fused::launch_plan`]); a unit
//! owns one row and keeps its query, its running max, its running sum and its `f32` output
//! accumulator in registers. For each pair the head uses, and each segment the cube's rows touch,
//! the cube walks the list of key tiles of that segment (the selected rows `start + offset + t r`,
//! read through strides: no gather copy), loading each tile once into shared memory. The online
//! softmax continues across pairs, which is exactly LongNet's merge by log-sum-exp (the merged
//! output is the softmax over the union of the pairs' keys), so pairs merge in registers and each
//! query writes its output and LSE once. Rows no pair selects write 0 and `-inf`.
//!
//! Causal: a segment's key list stops at the cube's last row, and keys after a row are masked.
//! This is the portable variant: scalar FMAs on shared-memory tiles, no plane ops, no tensor
//! cores; it runs on every CubeCL runtime, including lavapipe.

use burn_cubecl::cubecl;
use burn_cubecl::cubecl::prelude::*;

use super::PortableBlueprint;
use crate::fused::kernel_args::{AttentionInputs, RowPlan};
use crate::fused::rows::{memory_row, pair_view, row_block, segment_key_count};
use crate::fused::tiles::{MASKED, RowRun, TileShape, load_rows_tile, load_visibility};

#[cube(launch_unchecked)]
pub(crate) fn dilated_flash_forward<F: Float>(
    inputs: &AttentionInputs<F, F>,
    plan: &RowPlan,
    output: &mut Tensor<F>,
    lse: &mut Tensor<f32>,
    neg_inf: f32,
    #[comptime] blueprint: PortableBlueprint,
    #[define(F)] _dtype: StorageType,
) {
    let query = &inputs.query;
    let key = &inputs.key;
    let value = &inputs.value;
    let padding = &inputs.padding;
    let scale = inputs.scale;
    let table = &plan.table;
    let order = &plan.order;
    let block_rows = blueprint.block_rows;
    let key_tile = blueprint.tile;
    let head_dim = blueprint.head_dim;
    let causal = blueprint.causal;
    let has_padding = blueprint.has_padding;
    let ordered = blueprint.ordered;
    let shape = comptime!(TileShape {
        units: block_rows,
        tile_rows: key_tile,
        head_dim,
        smem_stride: head_dim,
        ordered,
    });
    let seq_len = query.shape(1);
    let batch = CUBE_POS_Z as usize;
    let head = CUBE_POS_Y as usize;
    let lane = UNIT_POS_X as usize;
    let rows = row_block(table, head, CUBE_POS_X as usize, lane, seq_len, block_rows);
    let row = rows.row;
    let row_valid = row < seq_len;
    let at = memory_row(order, row, ordered);

    let mut q = Array::<f32>::new(head_dim);
    let mut acc = Array::<f32>::new(head_dim);
    let q_base = batch * query.stride(0) + at * query.stride(1) + head * query.stride(2);
    for i in 0..head_dim {
        acc[i] = 0.0;
        q[i] = 0.0;
        if row_valid {
            q[i] = f32::cast_from(query[q_base + i * query.stride(3)]) * scale;
        }
    }
    let mut running_max = f32::new(MASKED);
    let mut running_sum = 0.0f32;

    let mut key_smem = SharedMemory::<f32>::new(key_tile * head_dim);
    let mut value_smem = SharedMemory::<f32>::new(key_tile * head_dim);
    let mut visible_smem = SharedMemory::<f32>::new(key_tile);
    // Per-unit scores of the current tile, in shared memory rather than a private array:
    // lavapipe (Mesa 22.3) miscompiles large private arrays live across barriers.
    let mut scores = SharedMemory::<f32>::new(block_rows * key_tile);
    let score_base = lane * key_tile;

    let num_pairs = table[0] as usize;
    for pair in 0..num_pairs {
        let view = pair_view(table, &rows, pair, seq_len);
        if !view.skip {
            let segment_lo = rows.first_row / view.segment;
            let segment_hi = rows.last_row / view.segment;
            for seg_index in segment_lo..segment_hi + 1 {
                let seg_start = seg_index * view.segment;
                let key_count = segment_key_count(&view, &rows, seg_index, seq_len, causal);
                let key_start = seg_start + view.offset;
                let row_here = view.selected && view.row_segment == seg_index;
                for tile in 0..key_count.div_ceil(key_tile) {
                    let key0 = tile * key_tile;
                    let run = RowRun {
                        batch,
                        head,
                        first: key_start,
                        dilation: view.dilation,
                        tile_start: key0,
                        count: key_count,
                        unit: lane,
                    };
                    sync_cube();
                    load_rows_tile(key, order, &mut key_smem, &run, shape);
                    load_rows_tile(value, order, &mut value_smem, &run, shape);
                    load_visibility(padding, order, &mut visible_smem, &run, shape, has_padding);
                    sync_cube();
                    if row_here {
                        let mut tile_max = f32::new(MASKED);
                        for j in 0..key_tile {
                            let mut score = 0.0f32;
                            for i in 0..head_dim {
                                score += q[i] * key_smem[j * head_dim + i];
                            }
                            let mut keep = visible_smem[j] > 0.5;
                            if causal {
                                keep = keep && key0 + j <= view.t;
                            }
                            score = select(keep, score, f32::new(MASKED));
                            scores[score_base + j] = score;
                            tile_max = max(tile_max, score);
                        }
                        let new_max = max(running_max, tile_max);
                        if new_max > f32::new(MASKED) {
                            let alpha = (running_max - new_max).exp();
                            let mut tile_sum = 0.0f32;
                            for j in 0..key_tile {
                                let p = (scores[score_base + j] - new_max).exp();
                                scores[score_base + j] = p;
                                tile_sum += p;
                            }
                            running_sum = running_sum * alpha + tile_sum;
                            for i in 0..head_dim {
                                let mut update = 0.0f32;
                                for j in 0..key_tile {
                                    update += scores[score_base + j] * value_smem[j * head_dim + i];
                                }
                                acc[i] = acc[i] * alpha + update;
                            }
                            running_max = new_max;
                        }
                    }
                }
            }
        }
    }

    if row_valid {
        let mut inverse = 0.0f32;
        let mut log_sum_exp = neg_inf;
        if running_sum > 0.0 {
            inverse = 1.0 / running_sum;
            log_sum_exp = running_max + running_sum.ln();
        }
        let o_base = batch * output.stride(0) + at * output.stride(1) + head * output.stride(2);
        for i in 0..head_dim {
            output[o_base + i * output.stride(3)] = F::cast_from(acc[i] * inverse);
        }
        lse[batch * lse.stride(0) + at * lse.stride(1) + head * lse.stride(2)] = log_sum_exp;
    }
}
