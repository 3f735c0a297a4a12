//! The backward's first pass, shared by every kernel family: `delta_i = sum_d dO_i * O_i - dLSE_i`
//! per (batch, row, head) (FlashAttention-2's `D`; the LSE's own gradient enters here, since
//! `d LSE_i / d S_ij = P_ij`).

use burn_cubecl::cubecl;
use burn_cubecl::cubecl::prelude::*;

/// Units that share one row in [`attention_delta`]: each sums every `DELTA_PARTS`-th value of
/// the row, so the units of a plane read 4 rows' 8 consecutive values per load (coalesced), and
/// the parts meet in shared memory.
pub(crate) const DELTA_PARTS: usize = 8;

/// `delta_i = sum_d dO_i * O_i - dLSE_i` for the rows `(batch, row, head)` of a cube: the cube's
/// units are `rows_per_cube * DELTA_PARTS`, unit `u` adds the products of values
/// `u % DELTA_PARTS + k DELTA_PARTS` of its row (`u / DELTA_PARTS`), and the first part of each
/// row adds the parts, so each warp load touches 4 rows' lines instead of the 32 of one unit per
/// row.
#[cube(launch_unchecked)]
pub(crate) fn attention_delta<F: Float>(
    output: &Tensor<F>,
    grad_output: &Tensor<F>,
    grad_lse: &Tensor<f32>,
    delta: &mut Tensor<f32>,
    #[comptime] head_dim: usize,
    #[comptime] rows_per_cube: usize,
    #[comptime] has_grad_lse: bool,
    #[define(F)] _dtype: StorageType,
) {
    let mut parts = SharedMemory::<f32>::new(rows_per_cube * DELTA_PARTS);
    let unit = UNIT_POS as usize;
    let part = unit % DELTA_PARTS;
    let index = CUBE_POS * rows_per_cube + unit / DELTA_PARTS;
    let valid = index < delta.len();
    let heads = delta.shape(2);
    let seq_len = delta.shape(1);
    let head = index % heads;
    let row = (index / heads) % seq_len;
    let batch = index / (heads * seq_len);
    let mut sum = 0.0f32;
    if valid {
        let o_base = batch * output.stride(0) + row * output.stride(1) + head * output.stride(2);
        let g_base = batch * grad_output.stride(0)
            + row * grad_output.stride(1)
            + head * grad_output.stride(2);
        let mut i = part;
        while i < head_dim {
            sum += f32::cast_from(output[o_base + i * output.stride(3)])
                * f32::cast_from(grad_output[g_base + i * grad_output.stride(3)]);
            i += DELTA_PARTS;
        }
    }
    parts[unit] = sum;
    sync_cube();
    if valid && part == 0 {
        let mut total = 0.0f32;
        #[unroll]
        for p in 0..DELTA_PARTS {
            total += parts[unit + p];
        }
        if has_grad_lse {
            total -= grad_lse
                [batch * grad_lse.stride(0) + row * grad_lse.stride(1) + head * grad_lse.stride(2)];
        }
        delta[batch * delta.stride(0) + row * delta.stride(1) + head * delta.stride(2)] = total;
    }
}
