//! The tensor-core forward kernel: the same walk as [`crate::fused::portable::forward`] (every pair in one launch,
//! dilated rows read through strides, pairs merged in registers), with `Q K^T` and `P V` on tensor
//! cores (`cmma` 16x16x16, `f16`/`bf16` in, `f32` accumulation) and row statistics in plane
//! (warp) shuffles.
//!
//! A cube is 4 planes of 32 units and owns 64 query rows of one (batch, head), the rows the launch
//! plan gives it (`first_row + i * row_stride`); plane `p` owns rows `16 p .. 16 p + 16`. The
//! queries are staged once through shared memory into `head_dim / 16` fragments per plane. The
//! cube walks its list of key tiles ([`crate::fused::tile_walk`]); for each (`key_tile` selected rows of
//! a segment, loaded once into shared memory by the cube, 16 bytes per load):
//! 1. `S = Q K^T`, one 16-key block at a time through one accumulator fragment, each block
//!    stored to the plane's `f32` scratch;
//! 2. two units per row take the row's scores (scaled, masked: padding, rows the pair does not
//!    select here, causal), the tile max by one shuffle, and `P = exp(s - m)` into shared memory in
//!    the inputs' dtype;
//! 3. `O += P V` into `head_dim / 16` accumulator fragments that live across the whole walk.
//!
//! Rescaling: tensor-core fragments are opaque, so `O` cannot be scaled row by row in registers.
//! Each row keeps a reference max `m` and only raises it when a tile's max exceeds it by more than
//! [`RESCALE_MARGIN`] (FlashAttention-4's conditional rescaling); then, and only then, the plane
//! writes `O` out, scales its rows and reads it back. Between rescales `P <= e^8`, which `f16` and
//! `bf16` hold with their full relative precision, and the sum and `O` accumulate in `f32`, so
//! the result is the exact softmax: `O / l` and `LSE = m + ln l` do not depend on which `m` was used.
//!
//! Requirements (checked by the launcher): `f16` or `bf16` inputs, `head_dim` a multiple of 16 up
//! to 128, planes of 32 units, and the device's `cmma` 16x16x16 for the dtype.

use burn_cubecl::cubecl;
use burn_cubecl::cubecl::ir::FastMath;
use burn_cubecl::cubecl::prelude::*;

use crate::fused::kernel_args::{AttentionInputs, RowPlan};

use super::CmmaBlueprint;
use crate::fused::cmma::fragments::{
    AccumulatorStore, PlaneLayout, accumulate_product, accumulator_fragments, input_fragments,
    read_four, scores_into_scratch, stage_cube_rows, store_accumulators, write_four,
};
use crate::fused::rows::{cube_row_count, memory_row, pair_view, row_block, with_row};
use crate::fused::tensor_core::{
    KEY_MASKED, KEY_PAD, RESCALE_MARGIN, TENSOR_CORE_BLOCK_ROWS, TENSOR_CORE_PLANES,
    TENSOR_CORE_UNITS, key_bias,
};
use crate::fused::tile_walk::{
    FIRST_SEGMENT, KeyTile, TileWalk, assign_key_tile, next_key_tile, seek_key_tile,
};
use crate::fused::tiles::{
    MASKED, OwnRows, RowRun, TileShape, load_rows_registers, store_rows_registers,
};
/// Padding of a row of the per-plane `f32` scratch (scores, accumulator spills): with 8 floats,
/// the 16-byte reads of the softmax (two units per row, alternate groups of 4 columns) and the
/// `cmma` stores are free of bank conflicts.
pub(crate) const SCRATCH_PAD: usize = 8;
/// Padding of a row of the per-plane probability tile (8 halves: 16-byte rows for `cmma` loads).
pub(crate) const PROBABILITY_PAD: usize = 8;

/// A row's running softmax state: the reference max the probabilities are taken against and
/// the sum of those probabilities.
#[derive(CubeType)]
struct RowState {
    reference_max: f32,
    sum: f32,
}

// Fast `exp`/`ln` (`__expf`, `__logf`): every argument is finite (masked scores are -3e38,
// not -inf), and the ~2 ulp error is far below the bf16/f16 rounding of the probabilities.
#[cube(
    launch_unchecked,
    fast_math = FastMath::ReducedPrecision | FastMath::NotNaN | FastMath::NotInf
)]
pub(crate) fn dilated_flash_forward_tensor_core<F: Float, N: Size>(
    inputs: &AttentionInputs<F, Vector<F, N>>,
    plan: &RowPlan,
    output: &mut Tensor<Vector<F, N>>,
    lse: &mut Tensor<f32>,
    neg_inf: f32,
    #[comptime] blueprint: CmmaBlueprint,
    #[define(F)] _dtype: StorageType,
) {
    let query = &inputs.query;
    let key = &inputs.key;
    let value = &inputs.value;
    let padding = &inputs.padding;
    let scale = inputs.scale;
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
    let units = TENSOR_CORE_UNITS;
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

    // This unit's row: units 2r and 2r + 1 of a plane share row r; `half` picks their columns.
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

    let k_stride = comptime!(head_dim + KEY_PAD);
    let layout = comptime!(PlaneLayout {
        tile_rows: key_tile,
        head_dim,
        tile_stride: k_stride,
        scratch_stride: s_stride,
        probability_stride: p_stride,
    });
    let shape = comptime!(TileShape {
        units,
        tile_rows: key_tile,
        head_dim,
        smem_stride: k_stride,
        ordered,
    });
    let mut key_smem = SharedMemory::<F>::new_aligned(key_tile * k_stride, 16usize);
    let mut value_smem = SharedMemory::<F>::new_aligned(key_tile * k_stride, 16usize);
    let mut bias_smem = SharedMemory::<f32>::new_aligned(key_tile, 16usize);
    let mut scratch = SharedMemory::<f32>::new_aligned(TENSOR_CORE_PLANES * 16 * s_stride, 16usize);
    let mut probabilities =
        SharedMemory::<F>::new_aligned(TENSOR_CORE_PLANES * 16 * p_stride, 16usize);
    let scratch_base = plane * 16 * s_stride;
    let p_base = plane * 16 * p_stride;
    let width = N::value();
    let rounds = comptime!((key_tile * head_dim / width).div_ceil(units));
    let mut key_regs = Array::<Vector<F, N>>::new(rounds);
    let mut value_regs = Array::<Vector<F, N>>::new(rounds);

    // Queries: staged through the key tile into fragments held for the whole walk.
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
    let mut out_frags = accumulator_fragments(dim_tiles);
    let score_frag = cmma::Matrix::<f32>::from_value(
        cmma::MatrixIdent::Accumulator,
        16usize,
        16usize,
        16usize,
        cmma::MatrixLayout::Undefined,
        0.0,
    );

    let mut state = RowState {
        reference_max: f32::new(MASKED),
        sum: 0.0f32,
    };

    // The walk over key tiles: each is loaded (all loads issued, then stored) at the top of its
    // iteration. No register prefetch of the next tile during the compute: its registers would
    // stay live across the MMAs and cut the cubes per SM.
    let walk = comptime!(TileWalk {
        key_tile,
        causal,
        queries_of_keys: false,
    });
    let mut job = seek_key_tile(table, &rows, seq_len, 0usize, FIRST_SEGMENT, 0usize, walk);
    // This unit's row in the current tile's pair: selected, its segment, its index `t`.
    let first_view = pair_view(table, &my_rows, job.pair, seq_len);
    let mut row_selected = first_view.selected;
    let mut row_segment = first_view.row_segment;
    let mut row_t = first_view.t;
    while job.valid {
        sync_cube();
        // This tile's keys and values into this unit's registers.
        let run = tile_run(&job, batch, head, unit, key_tile);
        load_rows_registers(key, order, &mut key_regs, &run, shape);
        load_rows_registers(value, order, &mut value_regs, &run, shape);
        let bias = key_bias(
            padding,
            order,
            &job,
            batch,
            unit,
            key_tile,
            has_padding,
            ordered,
        );
        store_rows_registers(&key_regs, &mut key_smem, unit, shape);
        store_rows_registers(&value_regs, &mut value_smem, unit, shape);
        if unit < key_tile {
            bias_smem[unit] = bias;
        }
        sync_cube();
        let row_here = row_selected && row_segment == job.segment_index;
        let key0 = job.tile * key_tile;
        // The plane works on the tile only if one of its rows sees one of its keys.
        let mut row_sees_tile = row_here;
        if causal {
            row_sees_tile = row_sees_tile && key0 <= row_t;
        }
        if plane_any(row_sees_tile) {
            plane_tile(
                &query_frags,
                &score_frag,
                &mut out_frags,
                &key_smem,
                &value_smem,
                &bias_smem,
                &mut scratch,
                &mut probabilities,
                scratch_base,
                p_base,
                row_in_plane,
                half,
                row_here,
                key0,
                row_t,
                scale,
                &mut state,
                key_tile,
                head_dim,
                causal,
            );
        }
        // Next tile; a new pair moves this unit's row in it.
        let next = next_key_tile(table, &rows, seq_len, &job, walk);
        if next.valid && next.pair != job.pair {
            let view = pair_view(table, &my_rows, next.pair, seq_len);
            row_selected = view.selected;
            row_segment = view.row_segment;
            row_t = view.t;
        }
        assign_key_tile(&mut job, &next);
    }

    // Epilogue: O / l through the scratch, fragment by fragment; the LSE once per row.
    let mut inverse = 0.0f32;
    let mut log_sum_exp = neg_inf;
    if state.sum > 0.0 {
        inverse = 1.0 / state.sum;
        log_sum_exp = state.reference_max + state.sum.ln();
    }
    let my_memory_row = memory_row(order, my_row, ordered);
    let o_base =
        batch * output.stride(0) + my_memory_row * output.stride(1) + head * output.stride(2);
    let target = AccumulatorStore {
        scratch_base,
        row_base: o_base,
        row_valid,
        row_in_plane,
        half,
        factor: inverse,
    };
    store_accumulators(&out_frags, &mut scratch, output, &target, layout);
    if row_valid && half == 0 {
        lse[batch * lse.stride(0) + my_memory_row * lse.stride(1) + head * lse.stride(2)] =
            log_sum_exp;
    }
}

/// The rows of `tile` as this unit loads them (none when the walk has ended).
#[cube]
fn tile_run(
    tile: &KeyTile,
    batch: usize,
    head: usize,
    unit: usize,
    #[comptime] key_tile: usize,
) -> RowRun {
    let mut count = tile.key_count;
    if !tile.valid {
        count = 0;
    }
    let key0 = tile.tile * key_tile;
    RowRun {
        batch,
        head,
        first: tile.key_start,
        dilation: tile.dilation,
        tile_start: key0,
        count,
        unit,
    }
}

/// One plane's work on one loaded key tile: scores, masked online softmax with conditional
/// rescaling, and `O += P V`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn plane_tile<F: Float>(
    query_frags: &Sequence<cmma::Matrix<F>>,
    score_frag: &cmma::Matrix<f32>,
    out_frags: &mut Sequence<cmma::Matrix<f32>>,
    key_smem: &SharedMemory<F>,
    value_smem: &SharedMemory<F>,
    bias_smem: &SharedMemory<f32>,
    scratch: &mut SharedMemory<f32>,
    probabilities: &mut SharedMemory<F>,
    scratch_base: usize,
    p_base: usize,
    row_in_plane: usize,
    half: usize,
    row_here: bool,
    key0: usize,
    row_t: usize,
    scale: f32,
    state: &mut RowState,
    #[comptime] key_tile: usize,
    #[comptime] head_dim: usize,
    #[comptime] causal: bool,
) {
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
    let half_tile = comptime!(key_tile / 2);
    let groups = comptime!(key_tile / 8);

    // 1. S = Q K^T, one 16-key block at a time through one accumulator (registers bound the
    // kernel's occupancy).
    scores_into_scratch(
        query_frags,
        score_frag,
        key_smem,
        scratch,
        scratch_base,
        layout,
    );
    sync_plane();

    // 2. Row max of the tile, then the new reference. The two units of a row take alternate
    // groups of 4 columns (16-byte scratch reads and 8-byte probability writes, free of bank
    // conflicts with these strides). Masks are additive: the key bias (0, or KEY_MASKED for
    // padded and missing keys) and, on the diagonal, the causal limit.
    let row_scores = scratch_base + row_in_plane * s_stride;
    let mut masked_scores = Array::<f32>::new(half_tile);
    let mut tile_max = f32::new(MASKED);
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
            masked_scores[4 * k + i] = score;
            tile_max = max(tile_max, score);
        }
    }
    tile_max = max(tile_max, plane_shuffle_xor(tile_max, 1u32));
    // A row sees a key of this tile iff its max is a real score.
    let row_live = row_here && tile_max > f32::new(KEY_MASKED * 0.5);
    let raise = row_live && tile_max > state.reference_max + RESCALE_MARGIN;
    let mut alpha = 1.0f32;
    if raise {
        alpha = (state.reference_max - tile_max).exp();
        state.reference_max = tile_max;
    }
    // Dead rows take their probabilities against +1e30: every one is 0.
    let reference_max = select(row_live, state.reference_max, f32::new(-KEY_MASKED));

    // P = exp(s - m) in the inputs' dtype, and its row sum.
    let p_row = p_base + row_in_plane * p_stride;
    let mut tile_sum = 0.0f32;
    #[unroll]
    for k in 0..groups {
        let col0 = 8 * k + 4 * half;
        let mut packed = Vector::<F, Const<4>>::empty();
        #[unroll]
        for i in 0..4usize {
            let p = (masked_scores[4 * k + i] - reference_max).exp();
            tile_sum += p;
            packed[i] = F::cast_from(p);
        }
        write_four(probabilities, p_row + col0, packed);
    }
    tile_sum += plane_shuffle_xor(tile_sum, 1u32);
    state.sum = state.sum * alpha + tile_sum;

    // Rescale O (rare): spill each fragment to the scratch, scale its rows, load it back.
    if plane_any(raise) {
        sync_plane();
        #[unroll]
        for f in 0..dim_tiles {
            cmma::store(
                &mut scratch.slice_mut(scratch_base, scratch_base + 16 * s_stride),
                out_frags.index(f),
                s_stride as u32,
                cmma::MatrixLayout::RowMajor,
            );
            sync_plane();
            #[unroll]
            for c in 0..8usize {
                let at = scratch_base + row_in_plane * s_stride + half * 8 + c;
                scratch[at] = scratch[at] * alpha;
            }
            sync_plane();
            cmma::load_with_layout(
                out_frags.index(f),
                &scratch.slice(scratch_base, scratch_base + 16 * s_stride),
                s_stride as u32,
                cmma::MatrixLayout::RowMajor,
            );
            sync_plane();
        }
    }
    sync_plane();

    // 3. O += P V.
    accumulate_product(out_frags, probabilities, p_base, value_smem, layout);
    sync_plane();
}
