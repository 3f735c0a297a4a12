//! The portable backward kernels (FlashAttention-2, with recomputation of the probabilities from
//! the forward's `f32` LSE; nothing of size `n x n` is stored).
//!
//! - [`dilated_flash_backward_query`]: `dQ`, cubes over query rows as in the forward, walking the
//!   same key tiles;
//! - [`dilated_flash_backward_key_value`]: `dK` and `dV`, cubes over key rows, walking the query
//!   tiles of each segment that see them.
//!
//! With `P = exp(S - LSE)` (the merged LSE: LongNet's pairs share one softmax) and
//! `dP = dO V^T`: `dS = P (dP - delta)`, `dQ = scale dS K`, `dK = scale dS^T Q`, `dV = P^T dO`.
//! The LSE's own gradient enters through `delta` (`d LSE_i / d S_ij = P_ij`).

use burn_cubecl::cubecl;
use burn_cubecl::cubecl::prelude::*;

use crate::fused::kernel_args::{AttentionInputs, BackwardRows, RowPlan};

use super::PortableBlueprint;
use crate::fused::rows::{
    first_selected_at_or_after, memory_row, pair_view, row_block, rows_selected, segment_key_count,
};
use crate::fused::tiles::{
    MASKED, RowRun, TileShape, load_row_values, load_rows_tile, load_visibility,
};

/// Reads `head_dim` values of one row as `f32`, times `factor` (zeros when `!valid`).
#[cube]
fn load_row<F: Float>(
    tensor: &Tensor<F>,
    registers: &mut Array<f32>,
    batch: usize,
    row: usize,
    head: usize,
    valid: bool,
    factor: f32,
    #[comptime] head_dim: usize,
) {
    let base = batch * tensor.stride(0) + row * tensor.stride(1) + head * tensor.stride(2);
    for i in 0..head_dim {
        registers[i] = 0.0;
        if valid {
            registers[i] = f32::cast_from(tensor[base + i * tensor.stride(3)]) * factor;
        }
    }
}

/// Writes `head_dim` registers times `factor` to one row (nothing when `!valid`).
#[cube]
fn store_row<F: Float>(
    tensor: &mut Tensor<F>,
    registers: &Array<f32>,
    batch: usize,
    row: usize,
    head: usize,
    valid: bool,
    factor: f32,
    #[comptime] head_dim: usize,
) {
    if valid {
        let base = batch * tensor.stride(0) + row * tensor.stride(1) + head * tensor.stride(2);
        for i in 0..head_dim {
            tensor[base + i * tensor.stride(3)] = F::cast_from(registers[i] * factor);
        }
    }
}

#[cube(launch_unchecked)]
pub(crate) fn dilated_flash_backward_query<F: Float>(
    inputs: &AttentionInputs<F, F>,
    backward: &BackwardRows<F>,
    plan: &RowPlan,
    grad_query: &mut Tensor<F>,
    #[comptime] blueprint: PortableBlueprint,
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

    let mut row_lse = f32::new(MASKED);
    let mut row_delta = 0.0f32;
    if row_valid {
        row_lse = lse[batch * lse.stride(0) + at * lse.stride(1) + head * lse.stride(2)];
        row_delta = delta[batch * delta.stride(0) + at * delta.stride(1) + head * delta.stride(2)];
    }
    // A row that saw no key (LSE -inf) has zero gradients.
    let row_active = row_lse > f32::new(MASKED);

    let mut q = Array::<f32>::new(head_dim);
    let mut d_o = Array::<f32>::new(head_dim);
    let mut dq = Array::<f32>::new(head_dim);
    load_row(query, &mut q, batch, at, head, row_valid, scale, head_dim);
    load_row(
        grad_output,
        &mut d_o,
        batch,
        at,
        head,
        row_valid,
        1.0,
        head_dim,
    );
    for i in 0..head_dim {
        dq[i] = 0.0;
    }

    let mut key_smem = SharedMemory::<f32>::new(key_tile * head_dim);
    let mut value_smem = SharedMemory::<f32>::new(key_tile * head_dim);
    let mut visible_smem = SharedMemory::<f32>::new(key_tile);

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
                let row_here = row_active && view.selected && view.row_segment == seg_index;
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
                        for j in 0..key_tile {
                            let mut keep = visible_smem[j] > 0.5;
                            if causal {
                                keep = keep && key0 + j <= view.t;
                            }
                            if keep {
                                let mut score = 0.0f32;
                                let mut d_p = 0.0f32;
                                for i in 0..head_dim {
                                    score += q[i] * key_smem[j * head_dim + i];
                                    d_p += d_o[i] * value_smem[j * head_dim + i];
                                }
                                let d_s = (score - row_lse).exp() * (d_p - row_delta);
                                for i in 0..head_dim {
                                    dq[i] += d_s * key_smem[j * head_dim + i];
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    store_row(grad_query, &dq, batch, at, head, row_valid, scale, head_dim);
}

#[cube(launch_unchecked)]
pub(crate) fn dilated_flash_backward_key_value<F: Float>(
    inputs: &AttentionInputs<F, F>,
    backward: &BackwardRows<F>,
    plan: &RowPlan,
    grad_key: &mut Tensor<F>,
    grad_value: &mut Tensor<F>,
    #[comptime] blueprint: PortableBlueprint,
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
    let block_rows = blueprint.block_rows;
    let query_tile = blueprint.tile;
    let head_dim = blueprint.head_dim;
    let causal = blueprint.causal;
    let has_padding = blueprint.has_padding;
    let ordered = blueprint.ordered;
    let shape = comptime!(TileShape {
        units: block_rows,
        tile_rows: query_tile,
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
    let mut key_active = row_valid;
    if has_padding && row_valid {
        key_active =
            f32::cast_from(padding[batch * padding.stride(0) + at * padding.stride(1)]) < 0.5;
    }

    let mut k = Array::<f32>::new(head_dim);
    let mut v = Array::<f32>::new(head_dim);
    let mut dk = Array::<f32>::new(head_dim);
    let mut dv = Array::<f32>::new(head_dim);
    load_row(key, &mut k, batch, at, head, row_valid, scale, head_dim);
    load_row(value, &mut v, batch, at, head, row_valid, 1.0, head_dim);
    for i in 0..head_dim {
        dk[i] = 0.0;
        dv[i] = 0.0;
    }

    let mut query_smem = SharedMemory::<f32>::new(query_tile * head_dim);
    let mut grad_smem = SharedMemory::<f32>::new(query_tile * head_dim);
    let mut lse_smem = SharedMemory::<f32>::new(query_tile);
    let mut delta_smem = SharedMemory::<f32>::new(query_tile);

    let num_pairs = table[0] as usize;
    for pair in 0..num_pairs {
        let view = pair_view(table, &rows, pair, seq_len);
        if !view.skip {
            let segment_lo = rows.first_row / view.segment;
            let segment_hi = rows.last_row / view.segment;
            for seg_index in segment_lo..segment_hi + 1 {
                let seg_start = seg_index * view.segment;
                let seg_len = min(view.segment, seq_len - seg_start);
                let query_count = rows_selected(view.offset, seg_len, view.dilation);
                let mut first_tile = 0usize;
                if causal {
                    // Queries before the cube's first key see none of its keys.
                    first_tile = first_selected_at_or_after(
                        max(rows.first_row, seg_start),
                        seg_start,
                        view.offset,
                        view.dilation,
                    ) / query_tile;
                }
                let query_start = seg_start + view.offset;
                let key_here = key_active && view.selected && view.row_segment == seg_index;
                for tile in first_tile..query_count.div_ceil(query_tile) {
                    let query0 = tile * query_tile;
                    let run = RowRun {
                        batch,
                        head,
                        first: query_start,
                        dilation: view.dilation,
                        tile_start: query0,
                        count: query_count,
                        unit: lane,
                    };
                    sync_cube();
                    load_rows_tile(query, order, &mut query_smem, &run, shape);
                    load_rows_tile(grad_output, order, &mut grad_smem, &run, shape);
                    load_row_values(lse, order, &mut lse_smem, &run, f32::new(MASKED), shape);
                    load_row_values(delta, order, &mut delta_smem, &run, 0.0, shape);
                    sync_cube();
                    if key_here {
                        for j in 0..query_tile {
                            let mut keep = lse_smem[j] > f32::new(MASKED);
                            if causal {
                                keep = keep && query0 + j >= view.t;
                            }
                            if keep {
                                let mut score = 0.0f32;
                                let mut d_p = 0.0f32;
                                for i in 0..head_dim {
                                    score += k[i] * query_smem[j * head_dim + i];
                                    d_p += v[i] * grad_smem[j * head_dim + i];
                                }
                                let p = (score - lse_smem[j]).exp();
                                let d_s = p * (d_p - delta_smem[j]);
                                for i in 0..head_dim {
                                    dv[i] += p * grad_smem[j * head_dim + i];
                                    dk[i] += d_s * query_smem[j * head_dim + i];
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    store_row(grad_key, &dk, batch, at, head, row_valid, scale, head_dim);
    store_row(grad_value, &dv, batch, at, head, row_valid, 1.0, head_dim);
}
