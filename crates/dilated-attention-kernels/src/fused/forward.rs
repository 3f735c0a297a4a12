//! The fused forward kernel: flash attention over dilated rows, every pair in one launch.
//!
//! A cube owns `block_rows` query rows of one (batch, head) (see [`super::launch_plan`]); a unit
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

use super::launch_plan::NOT_IN_PAIR;

/// Score of a masked key. Finite, because WGSL has no infinity literal and fast-math CUDA may
/// not honour one; `exp(MASKED - m)` is 0 for every finite running max `m`. The `-inf` the LSE
/// of an empty row needs arrives as the runtime argument `neg_inf`.
pub(crate) const MASKED: f32 = -3.0e38;

/// Index of the first entry of `head`'s block in the launch table.
#[cube]
pub(crate) fn head_entry(num_pairs: usize, head: usize) -> usize {
    1 + 2 * num_pairs + head * (1 + num_pairs)
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

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn dilated_flash_forward<F: Float>(
    query: &Tensor<F>,
    key: &Tensor<F>,
    value: &Tensor<F>,
    padding: &Tensor<F>,
    table: &Array<u32>,
    output: &mut Tensor<F>,
    lse: &mut Tensor<f32>,
    scale: f32,
    neg_inf: f32,
    #[comptime] block_rows: usize,
    #[comptime] key_tile: usize,
    #[comptime] head_dim: usize,
    #[comptime] causal: bool,
    #[comptime] has_padding: bool,
    #[define(F)] _dtype: StorageType,
) {
    let seq_len = query.shape(1);
    let batch = CUBE_POS_Z as usize;
    let head = CUBE_POS_Y as usize;
    let block = CUBE_POS_X as usize;
    let lane = UNIT_POS_X as usize;

    let num_pairs = table[0] as usize;
    let entry = head_entry(num_pairs, head);
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
    let row = class + stride * (first + lane);
    let row_valid = row < seq_len;

    let mut q = Array::<f32>::new(head_dim);
    let mut acc = Array::<f32>::new(head_dim);
    let mut scores = Array::<f32>::new(key_tile);
    let q_base = batch * query.stride(0) + row * query.stride(1) + head * query.stride(2);
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

    for pair in 0..num_pairs {
        let offset_entry = table[entry + 1 + pair];
        let segment = table[1 + 2 * pair] as usize;
        let dilation = table[2 + 2 * pair] as usize;
        let offset = offset_entry as usize;
        let aligned = stride % dilation == 0 && segment % dilation == 0;
        let skip = offset_entry == NOT_IN_PAIR || (aligned && class % dilation != offset);
        if !skip {
            let within = row % segment;
            let row_segment = row / segment;
            let selected = row_valid && within >= offset && (within - offset) % dilation == 0;
            let mut t = 0usize;
            if selected {
                t = (within - offset) / dilation;
            }
            let segment_lo = first_row / segment;
            let segment_hi = last_row / segment;
            for seg_index in segment_lo..segment_hi + 1 {
                let seg_start = seg_index * segment;
                let seg_len = min(segment, seq_len - seg_start);
                let mut key_count = rows_selected(offset, seg_len, dilation);
                if causal {
                    let last_in = min(last_row, seg_start + seg_len - 1) - seg_start;
                    let mut visible = 0usize;
                    if last_in >= offset {
                        visible = (last_in - offset) / dilation + 1;
                    }
                    key_count = min(key_count, visible);
                }
                let key_start = seg_start + offset;
                let tiles = key_count.div_ceil(key_tile);
                let row_here = selected && row_segment == seg_index;
                for tile in 0..tiles {
                    let key0 = tile * key_tile;
                    sync_cube();
                    let mut element = lane;
                    while element < key_tile * head_dim {
                        let key_row = element / head_dim;
                        let col = element % head_dim;
                        let kt = key0 + key_row;
                        let mut k_val = 0.0f32;
                        let mut v_val = 0.0f32;
                        if kt < key_count {
                            let pos = key_start + kt * dilation;
                            k_val = f32::cast_from(
                                key[batch * key.stride(0)
                                    + pos * key.stride(1)
                                    + head * key.stride(2)
                                    + col * key.stride(3)],
                            );
                            v_val = f32::cast_from(
                                value[batch * value.stride(0)
                                    + pos * value.stride(1)
                                    + head * value.stride(2)
                                    + col * value.stride(3)],
                            );
                        }
                        key_smem[element] = k_val;
                        value_smem[element] = v_val;
                        element += block_rows;
                    }
                    let mut key_row = lane;
                    while key_row < key_tile {
                        let kt = key0 + key_row;
                        let mut visible = 0.0f32;
                        if kt < key_count {
                            visible = 1.0;
                            if has_padding {
                                let pos = key_start + kt * dilation;
                                let padded = f32::cast_from(
                                    padding[batch * padding.stride(0) + pos * padding.stride(1)],
                                );
                                visible = 1.0 - padded;
                            }
                        }
                        visible_smem[key_row] = visible;
                        key_row += block_rows;
                    }
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
                                keep = keep && key0 + j <= t;
                            }
                            score = select(keep, score, f32::new(MASKED));
                            scores[j] = score;
                            tile_max = max(tile_max, score);
                        }
                        let new_max = max(running_max, tile_max);
                        if new_max > f32::new(MASKED) {
                            let alpha = (running_max - new_max).exp();
                            running_sum *= alpha;
                            for i in 0..head_dim {
                                acc[i] *= alpha;
                            }
                            for j in 0..key_tile {
                                let p = (scores[j] - new_max).exp();
                                running_sum += p;
                                for i in 0..head_dim {
                                    acc[i] += p * value_smem[j * head_dim + i];
                                }
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
        let o_base = batch * output.stride(0) + row * output.stride(1) + head * output.stride(2);
        for i in 0..head_dim {
            output[o_base + i * output.stride(3)] = F::cast_from(acc[i] * inverse);
        }
        lse[batch * lse.stride(0) + row * lse.stride(1) + head * lse.stride(2)] = log_sum_exp;
    }
}
