//! The register-resident tensor-core forward: the walk of [`crate::fused::cmma::forward`] with
//! FlashAttention-2's data flow. Products run as `mma.sync` m16n8k16 (`f16`/`bf16` in, `f32`
//! accumulation) through CubeCL's manual MMA (`cmma::MmaDefinition`), where each unit knows which
//! elements of a tile it holds, so scores, probabilities and the output never leave registers:
//! - a plane owns 16 query rows; unit `(g, t) = (lane / 4, lane % 4)` holds rows `g` and `g + 8`,
//!   columns `2t, 2t + 1` of every 8-column block of `S` and `O`;
//! - `Q` is loaded once into `A` registers (`ldmatrix`), each key tile's `B` registers come from
//!   shared memory by `ldmatrix` (`K` as is, `V` transposed by `ldmatrix.trans`);
//! - the softmax is exact and online: row max and sum over the 4 units of a row by two shuffles,
//!   `O` rescaled in registers when a row's reference max moves by more than the margin
//!   ([`raise_max`]); scores stay raw and each probability is `exp(scale s - m)`, one fused
//!   multiply-add before the exponential; the accumulator layout of two adjacent 8-column blocks
//!   of `P` is the `A` layout of one 16-column block, so `P` feeds `O += P V` without a
//!   shared-memory trip.
//!
//! The output goes through shared memory at the end for 16-byte stores. Requirements (checked by
//! the launcher): `f16`/`bf16`, head dim a multiple of 16 up to 128, 32-unit planes, the device's
//! manual MMA m16n8k16 for the dtype and `ldmatrix`. With `tf32` the inputs are `f32` and the
//! products run on TF32 m16n8k8 ([`crate::fused::mma::tf32`]; `split`: three products each, about `f32`
//! accuracy), which needs the manual MMA m16n8k8 TF32 instead; the walk and softmax are the same.
//! The backward kernels take the same two switches.

use burn_cubecl::cubecl;
use burn_cubecl::cubecl::ir::FastMath;
use burn_cubecl::cubecl::prelude::barrier::Barrier;
use burn_cubecl::cubecl::prelude::*;

use crate::fused::kernel_args::{AttentionInputs, RowPlan};

use super::MmaBlueprint;
use crate::fused::mma::operands::{plane_accumulate, plane_scores, stage_plane_rows};
use crate::fused::mma::staging::{
    copy_memory_rows_async, copy_tile_async, memory_row_slots, row_sources, shared_memory_rows,
    tile_memory_rows,
};
use crate::fused::mma::tiles::{
    MaskRows, Pair, RowFactors, ScoreMask, TileProduct, mask_scores, store_cube_rows_mma,
    zero_pairs,
};
use crate::fused::rows::{PairView, cube_row_count, memory_row, pair_view, row_block, with_row};
use crate::fused::tensor_core::{KEY_MASKED, KEY_PAD, RESCALE_MARGIN, key_bias};
use crate::fused::tensor_core::{TENSOR_CORE_BLOCK_ROWS, TENSOR_CORE_UNITS};
use crate::fused::tile_walk::{
    FIRST_SEGMENT, TileWalk, assign_key_tile, next_key_tile, seek_key_tile,
};
use crate::fused::tiles::{OwnRows, TileShape};

/// One query row's state in the walk: where it sits in the current pair and its online softmax.
#[derive(CubeType)]
pub(crate) struct MmaRow {
    pub selected: bool,
    pub segment: usize,
    pub t: usize,
    /// The reference max of the row's online softmax (see [`raise_max`]).
    pub max: f32,
    /// This unit's share of the row sum (its columns); the 4 units of a row add theirs at the end.
    pub sum: f32,
}

#[cube(
    launch_unchecked,
    fast_math = FastMath::ReducedPrecision | FastMath::NotNaN | FastMath::NotInf
)]
pub(crate) fn dilated_flash_forward_mma<F: Float, N: Size>(
    inputs: &AttentionInputs<F, Vector<F, N>>,
    plan: &RowPlan,
    output: &mut Tensor<Vector<F, N>>,
    lse: &mut Tensor<f32>,
    neg_inf: f32,
    #[comptime] blueprint: MmaBlueprint,
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
    // Along an order: the memory rows of the tiles in flight, one slot of `key_tile` per stage.
    let mut row_smem = SharedMemory::<u32>::new_aligned(
        comptime!(if ordered { 2 * key_tile } else { 4 }),
        16usize,
    );
    let barrier_0 = Barrier::shared(CUBE_DIM, UNIT_POS == 0);
    let barrier_1 = Barrier::shared(CUBE_DIM, UNIT_POS == 0);
    let width = N::value();
    let rounds = comptime!((key_tile * head_dim / width).div_ceil(TENSOR_CORE_UNITS));
    let mut key_regs = Array::<Vector<F, N>>::new(rounds);

    // Q in registers for the whole walk (`ldmatrix` layout, or TF32).
    let query_regs = stage_plane_rows(
        query,
        order,
        &mut key_regs,
        &mut tiles,
        &own,
        product,
        ordered,
    );

    let mut out = zero_pairs(comptime!(2 * dim_blocks));
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
    let view_a = pair_view(table, &rows_a, job.pair, seq_len);
    let view_b = pair_view(table, &rows_b, job.pair, seq_len);
    let mut state_a = mma_row(&view_a);
    let mut state_b = mma_row(&view_b);
    let mut scores = Array::<Pair<f32>>::new(comptime!(2 * key_blocks));

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
    // Along an order, tile i+1's memory rows come from the order by `cp.async` with tile i's
    // data (no register waits on them, and none is held across a tile's products).
    let mut next = next_key_tile(table, &rows, seq_len, &job, walk);
    if ordered {
        copy_memory_rows_async(order, &next, &mut row_smem, key_tile, unit, key_tile);
    }
    barrier_0.commit_copy_async();
    let mut stage = 0usize;
    while job.valid {
        let key0 = job.tile * key_tile;
        let other = 1 - stage;
        if ordered {
            // This tile's data and the next tile's memory rows.
            if stage == 0 {
                barrier_0.arrive_and_wait();
            } else {
                barrier_1.arrive_and_wait();
            }
        }
        if next.valid {
            if ordered {
                shared_memory_rows::<N>(
                    &row_smem,
                    other * key_tile,
                    &mut memory_rows,
                    unit,
                    key_tile,
                    head_dim,
                );
            }
            copy_tile_async(
                key,
                value,
                &mut tiles,
                other * stage_size,
                value_offset,
                &next,
                &memory_rows,
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
        if ordered {
            // Into this tile's slot: its rows were read when its copies were issued.
            copy_memory_rows_async(
                order,
                &after,
                &mut row_smem,
                stage * key_tile,
                unit,
                key_tile,
            );
        }
        if stage == 0 {
            barrier_1.commit_copy_async();
            if !ordered {
                barrier_0.arrive_and_wait();
            }
        } else {
            barrier_0.commit_copy_async();
            if !ordered {
                barrier_1.arrive_and_wait();
            }
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

            // 2. Masks, online softmax (exact: O is rescaled in registers when needed). A tile
            // that both rows see whole (every key present, none padded, none past a causal row)
            // skips the masks: most tiles of a segment.
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
            let tile_max = mask_scores(
                &mut scores,
                &bias_smem,
                bias_base,
                scale,
                &mask_rows,
                quad,
                mask,
            );
            let tile_max_a = tile_max[0];
            let tile_max_b = tile_max[1];
            let reference_a = raise_max(&mut state_a, tile_max_a, scale);
            let reference_b = raise_max(&mut state_b, tile_max_b, scale);
            let alpha_a = reference_a[1];
            let alpha_b = reference_b[1];
            let mut sum_a = 0.0f32;
            let mut sum_b = 0.0f32;
            #[unroll]
            for nb in 0..key_blocks {
                let s_a = scores[2 * nb];
                let s_b = scores[2 * nb + 1];
                let mut p_a = Pair::<f32>::empty();
                let mut p_b = Pair::<f32>::empty();
                #[unroll]
                for e in 0..2usize {
                    // The scale and the max in one fused multiply-add (raw scores).
                    p_a[e] = (s_a[e] * scale - reference_a[0]).exp();
                    p_b[e] = (s_b[e] * scale - reference_b[0]).exp();
                    sum_a += p_a[e];
                    sum_b += p_b[e];
                }
                scores[2 * nb] = p_a;
                scores[2 * nb + 1] = p_b;
            }
            state_a.sum = state_a.sum * alpha_a + sum_a;
            state_b.sum = state_b.sum * alpha_b + sum_b;
            // O is rescaled only when some row of the plane raised its reference (with the
            // margin, after a segment's first tile few tiles do).
            let raised = alpha_a != 1.0f32 || alpha_b != 1.0f32;
            if plane_any(raised) {
                rescale_rows(&mut out, alpha_a, alpha_b, dim_blocks);
            }

            // 3. O += P V: P's registers are the A operand as they stand; V by `ldmatrix.trans`
            // (on TF32: by scalar shared loads).
            plane_accumulate(&scores, &tiles, value_base, lane, &mut out, product);
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
    }

    // Epilogue: the row sums over the row's 4 units, O / l staged in shared memory, 16-byte
    // stores; the LSE by the row's first unit.
    let total_a = quad_sum(state_a.sum);
    let total_b = quad_sum(state_b.sum);
    let inverse_a = select(total_a > 0.0, 1.0 / total_a, 0.0f32);
    let inverse_b = select(total_b > 0.0, 1.0 / total_b, 0.0f32);
    let store = comptime!(TileShape {
        units: TENSOR_CORE_UNITS,
        tile_rows: TENSOR_CORE_BLOCK_ROWS,
        head_dim,
        smem_stride: stride,
        ordered,
    });
    let factors = RowFactors {
        a: inverse_a,
        b: inverse_b,
    };
    store_cube_rows_mma(&out, &factors, &mut tiles, output, order, &own, store);
    if quad == 0 {
        if row_a < seq_len {
            let value = select(total_a > 0.0, state_a.max + total_a.ln(), neg_inf);
            let at = memory_row(order, row_a, ordered);
            lse[batch * lse.stride(0) + at * lse.stride(1) + head * lse.stride(2)] = value;
        }
        if row_b < seq_len {
            let value = select(total_b > 0.0, state_b.max + total_b.ln(), neg_inf);
            let at = memory_row(order, row_b, ordered);
            lse[batch * lse.stride(0) + at * lse.stride(1) + head * lse.stride(2)] = value;
        }
    }
}

/// A row's state at the start of the walk, in the pair `view` shows.
#[cube]
pub(crate) fn mma_row(view: &PairView) -> MmaRow {
    MmaRow {
        selected: view.selected,
        segment: view.row_segment,
        t: view.t,
        max: f32::new(KEY_MASKED),
        sum: 0.0f32,
    }
}

/// Moves `row` into the pair `view` shows (its softmax state carries over: pairs share it).
#[cube]
pub(crate) fn enter_pair(row: &mut MmaRow, view: &PairView) {
    row.selected = view.selected;
    row.segment = view.row_segment;
    row.t = view.t;
}

/// Multiplies rows `g` (by `alpha_a`) and `g + 8` (by `alpha_b`) of the plane's accumulators.
#[cube]
fn rescale_rows(
    out: &mut Array<Pair<f32>>,
    alpha_a: f32,
    alpha_b: f32,
    #[comptime] dim_blocks: usize,
) {
    #[unroll]
    for dn in 0..dim_blocks {
        let o_a = out[2 * dn];
        let o_b = out[2 * dn + 1];
        let mut scaled_a = Pair::<f32>::empty();
        let mut scaled_b = Pair::<f32>::empty();
        scaled_a[0] = o_a[0] * alpha_a;
        scaled_a[1] = o_a[1] * alpha_a;
        scaled_b[0] = o_b[0] * alpha_b;
        scaled_b[1] = o_b[1] * alpha_b;
        out[2 * dn] = scaled_a;
        out[2 * dn + 1] = scaled_b;
    }
}

/// Raises `row`'s reference max (scaled scores) for a tile whose raw scores peak at `tile_max`
/// (this unit's share; the max over the row's 4 units is taken first, then scaled by `scale`)
/// and returns the max the tile's probabilities are taken against (`+1e30` while the row has
/// seen no key, so they are 0) and the factor that rescales what the row holds.
///
/// FlashAttention-4's conditional rescaling: the reference moves only when the tile passes it by
/// more than [`RESCALE_MARGIN`] (probabilities stay below `e^8`, far inside `f32`, `f16` and
/// `bf16`); otherwise the factor is exactly 1 and the caller skips the rescale. The LSE is the
/// reference plus the log of the sum taken against it, whichever reference that is.
#[cube]
pub(crate) fn raise_max(row: &mut MmaRow, tile_max: f32, scale: f32) -> Pair<f32> {
    let mut m = max(tile_max, plane_shuffle_xor(tile_max, 1u32));
    m = max(m, plane_shuffle_xor(m, 2u32));
    // Masked scores are KEY_MASKED in raw units too: keep them at KEY_MASKED once scaled.
    let scaled_max = select(
        m > f32::new(KEY_MASKED * 0.5),
        m * scale,
        f32::new(KEY_MASKED),
    );
    let raise = scaled_max > row.max + f32::new(RESCALE_MARGIN);
    let new_max = select(raise, scaled_max, row.max);
    let seen = new_max > f32::new(KEY_MASKED * 0.5);
    let reference = select(seen, new_max, f32::new(-KEY_MASKED));
    let mut result = Pair::<f32>::empty();
    result[0] = reference;
    result[1] = select(raise, (row.max - reference).exp(), 1.0f32);
    row.max = new_max;
    result
}

/// Sum over the 4 units of a row.
#[cube]
pub(crate) fn quad_sum(value: f32) -> f32 {
    let s = value + plane_shuffle_xor(value, 1u32);
    s + plane_shuffle_xor(s, 2u32)
}
