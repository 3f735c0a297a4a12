//! The register-resident tensor-core forward: the walk of [`super::forward_tensor_core`] with
//! FlashAttention-2's data flow. Products run as `mma.sync` m16n8k16 (`f16`/`bf16` in, `f32`
//! accumulation) through CubeCL's manual MMA (`cmma::MmaDefinition`), where each unit knows which
//! elements of a tile it holds, so scores, probabilities and the output never leave registers:
//! - a plane owns 16 query rows; unit `(g, t) = (lane / 4, lane % 4)` holds rows `g` and `g + 8`,
//!   columns `2t, 2t + 1` of every 8-column block of `S` and `O`;
//! - `Q` is loaded once into `A` registers (`ldmatrix`), each key tile's `B` registers come from
//!   shared memory by `ldmatrix` (`K` as is, `V` transposed by `ldmatrix.trans`);
//! - the softmax is exact and online: row max and sum over the 4 units of a row by two shuffles,
//!   `O` rescaled in registers; the accumulator layout of two adjacent 8-column blocks of `P` is
//!   the `A` layout of one 16-column block, so `P` feeds `O += P V` without a shared-memory trip.
//!
//! The output goes through shared memory at the end for 16-byte stores. Requirements (checked by
//! the launcher): `f16`/`bf16`, head dim a multiple of 16 up to 128, 32-unit planes, the device's
//! manual MMA m16n8k16 for the dtype and `ldmatrix`.

use burn_cubecl::cubecl;
use burn_cubecl::cubecl::cmma::{MatrixIdent, MmaDefinition};
use burn_cubecl::cubecl::ir::FastMath;
use burn_cubecl::cubecl::prelude::barrier::{Barrier, copy_async};
use burn_cubecl::cubecl::prelude::*;

use super::forward_tensor_core::{KEY_MASKED, KEY_PAD, key_bias};
use super::fragments::{TENSOR_CORE_BLOCK_ROWS, TENSOR_CORE_UNITS};
use super::rows::{RowBlock, pair_view, row_block};
use super::tile_walk::KeyTile;
use super::tile_walk::{FIRST_SEGMENT, next_key_tile, seek_key_tile};
use super::tiles::{load_rows_registers, store_rows_registers};

/// A pair of values of one 32-bit register (two halves) or of one accumulator row (two `f32`).
type Pair<E> = Vector<E, Const<2>>;

/// One query row's state in the walk: where it sits in the current pair and its online softmax.
#[derive(CubeType)]
struct MmaRow {
    selected: bool,
    segment: usize,
    t: usize,
    max: f32,
    /// This unit's share of the row sum (its columns); the 4 units of a row add theirs at the end.
    sum: f32,
}

#[cube]
fn mma_definition<F: Float>() -> MmaDefinition<F, F, f32> {
    MmaDefinition::<F, F, f32>::new(16usize, 8usize, 16usize)
}

#[cube(
    launch_unchecked,
    fast_math = FastMath::ReducedPrecision | FastMath::NotNaN | FastMath::NotInf
)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn dilated_flash_forward_mma<F: Float, N: Size>(
    query: &Tensor<Vector<F, N>>,
    key: &Tensor<Vector<F, N>>,
    value: &Tensor<Vector<F, N>>,
    padding: &Tensor<F>,
    table: &Array<u32>,
    output: &mut Tensor<Vector<F, N>>,
    lse: &mut Tensor<f32>,
    scale: f32,
    neg_inf: f32,
    #[comptime] key_tile: usize,
    #[comptime] head_dim: usize,
    #[comptime] causal: bool,
    #[comptime] has_padding: bool,
    #[define(F)] _dtype: StorageType,
) {
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
    let def = mma_definition::<F>();
    let stride = comptime!(head_dim + KEY_PAD);
    let value_offset = comptime!(key_tile * stride);
    let stage_size = comptime!(2 * key_tile * stride);
    let dim_blocks = comptime!(head_dim / 8);
    let key_blocks = comptime!(key_tile / 8);
    let group = lane / 4;
    let quad = lane % 4;
    let cube_row_count = min(
        (seq_len - rows.first_row).div_ceil(rows.stride),
        TENSOR_CORE_BLOCK_ROWS,
    );

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

    // Q: 4 registers per 16 columns, loaded by `ldmatrix` from the staged rows.
    let mut query_regs = Array::<Pair<F>>::new(comptime!(head_dim / 16 * 4));
    let chunks = comptime!(TENSOR_CORE_BLOCK_ROWS / key_tile);
    #[unroll]
    for chunk in 0..chunks {
        load_rows_registers(
            query,
            &mut key_regs,
            batch,
            head,
            rows.first_row,
            rows.stride,
            chunk * key_tile,
            cube_row_count,
            unit,
            TENSOR_CORE_UNITS,
            key_tile,
            head_dim,
        );
        sync_cube();
        store_rows_registers(
            &key_regs,
            &mut tiles,
            unit,
            TENSOR_CORE_UNITS,
            key_tile,
            head_dim,
            stride,
        );
        sync_cube();
        let first_plane = comptime!(chunk * key_tile / 16);
        let last_plane = comptime!((chunk + 1) * key_tile / 16);
        if plane >= first_plane && plane < last_plane {
            // Matrix `j = lane / 8`: rows `8 (j % 2) ..`, columns `8 (j / 2) ..` of the block.
            let row = plane * 16 - chunk * key_tile + lane % 8 + 8 * ((lane / 8) % 2);
            #[unroll]
            for kb in 0..comptime!(head_dim / 16) {
                let at = row * stride + kb * 16 + 8 * (lane / 16);
                let regs = def.load_matrix::<F, Const<2>>(
                    &tiles.slice(at, at + 8),
                    MatrixIdent::A,
                    4usize,
                    false,
                );
                #[unroll]
                for i in 0..4usize {
                    query_regs[kb * 4 + i] = regs[i];
                }
            }
        }
    }

    let mut out = Array::<Pair<f32>>::new(comptime!(2 * dim_blocks));
    #[unroll]
    for i in 0..comptime!(2 * dim_blocks) {
        out[i] = Pair::<f32>::zeroed();
    }
    let mut job = seek_key_tile(
        table,
        &rows,
        seq_len,
        0usize,
        FIRST_SEGMENT,
        0usize,
        key_tile,
        causal,
        false,
    );
    let row_a = rows.first_row + (plane * 16 + group) * rows.stride;
    let row_b = row_a + 8 * rows.stride;
    let rows_a = RowBlock {
        entry: rows.entry,
        stride: rows.stride,
        class: rows.class,
        first_row: rows.first_row,
        last_row: rows.last_row,
        row: row_a,
    };
    let rows_b = RowBlock {
        entry: rows.entry,
        stride: rows.stride,
        class: rows.class,
        first_row: rows.first_row,
        last_row: rows.last_row,
        row: row_b,
    };
    let view_a = pair_view(table, &rows_a, job.pair, seq_len);
    let view_b = pair_view(table, &rows_b, job.pair, seq_len);
    let mut state_a = MmaRow {
        selected: view_a.selected,
        segment: view_a.row_segment,
        t: view_a.t,
        max: f32::new(KEY_MASKED),
        sum: 0.0f32,
    };
    let mut state_b = MmaRow {
        selected: view_b.selected,
        segment: view_b.row_segment,
        t: view_b.t,
        max: f32::new(KEY_MASKED),
        sum: 0.0f32,
    };
    let mut scores = Array::<Pair<f32>>::new(comptime!(2 * key_blocks));

    // The walk, one tile ahead: tile i+1's copies are issued before tile i's products.
    sync_cube();
    copy_tile_async(
        key, &mut tiles, 0usize, &job, batch, head, unit, key_tile, head_dim, stride,
    );
    copy_tile_async(
        value,
        &mut tiles,
        value_offset,
        &job,
        batch,
        head,
        unit,
        key_tile,
        head_dim,
        stride,
    );
    if unit < key_tile {
        bias_smem[unit] = key_bias(padding, &job, batch, unit, key_tile, has_padding);
    }
    barrier_0.commit_copy_async();
    let mut stage = 0usize;
    while job.valid {
        let key0 = job.tile * key_tile;
        let next = next_key_tile(table, &rows, seq_len, &job, key_tile, causal, false);
        let other = 1 - stage;
        if next.valid {
            copy_tile_async(
                key,
                &mut tiles,
                other * stage_size,
                &next,
                batch,
                head,
                unit,
                key_tile,
                head_dim,
                stride,
            );
            copy_tile_async(
                value,
                &mut tiles,
                other * stage_size + value_offset,
                &next,
                batch,
                head,
                unit,
                key_tile,
                head_dim,
                stride,
            );
            if unit < key_tile {
                bias_smem[other * key_tile + unit] =
                    key_bias(padding, &next, batch, unit, key_tile, has_padding);
            }
        }
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
            // 1. S = Q K^T: per 8-key block, `ldmatrix` gives two 16-column B blocks per load.
            #[unroll]
            for nb in 0..key_blocks {
                let mut acc = Array::<Pair<f32>>::new(2usize);
                acc[0] = Pair::<f32>::zeroed();
                acc[1] = Pair::<f32>::zeroed();
                let key_row = nb * 8 + lane % 8;
                #[unroll]
                for kb2 in 0..comptime!(head_dim / 32) {
                    let at = key_base + key_row * stride + kb2 * 32 + 8 * (lane / 8);
                    let regs = def.load_matrix::<F, Const<2>>(
                        &tiles.slice(at, at + 8),
                        MatrixIdent::B,
                        4usize,
                        false,
                    );
                    score_block(&def, &query_regs, &regs, 0usize, 2 * kb2, &mut acc);
                    score_block(&def, &query_regs, &regs, 2usize, 2 * kb2 + 1, &mut acc);
                }
                if comptime!(head_dim % 32 == 16) {
                    let at = key_base
                        + key_row * stride
                        + comptime!(head_dim - 16)
                        + 8 * ((lane / 8) % 2);
                    let regs = def.load_matrix::<F, Const<2>>(
                        &tiles.slice(at, at + 8),
                        MatrixIdent::B,
                        2usize,
                        false,
                    );
                    score_block(
                        &def,
                        &query_regs,
                        &regs,
                        0usize,
                        comptime!(head_dim / 16 - 1),
                        &mut acc,
                    );
                }
                scores[2 * nb] = acc[0];
                scores[2 * nb + 1] = acc[1];
            }

            // 2. Masks, online softmax (exact: O is rescaled in registers). A tile that both
            // rows see whole (every key present, none padded, none past a causal row) skips the
            // masks: most tiles of a segment.
            let mut tile_max_a = f32::new(KEY_MASKED);
            let mut tile_max_b = f32::new(KEY_MASKED);
            let mut whole = here_a && here_b && key0 + key_tile <= job.key_count && !has_padding;
            if causal {
                whole = whole && key0 + key_tile <= min(state_a.t, state_b.t) + 1;
            }
            if whole {
                #[unroll]
                for i in 0..comptime!(2 * key_blocks) {
                    let mut scaled = scores[i];
                    scaled[0] *= scale;
                    scaled[1] *= scale;
                    scores[i] = scaled;
                }
                #[unroll]
                for nb in 0..key_blocks {
                    let s_a = scores[2 * nb];
                    let s_b = scores[2 * nb + 1];
                    tile_max_a = max(tile_max_a, max(s_a[0], s_a[1]));
                    tile_max_b = max(tile_max_b, max(s_b[0], s_b[1]));
                }
            } else {
                #[unroll]
                for nb in 0..key_blocks {
                    let col = nb * 8 + 2 * quad;
                    let biases = bias_smem
                        .slice(bias_base + col, bias_base + col + 2)
                        .into_vectorized()
                        .with_vector_size::<Const<2>>()[0];
                    let mut masked_a = Pair::<f32>::empty();
                    let mut masked_b = Pair::<f32>::empty();
                    let raw_a = scores[2 * nb];
                    let raw_b = scores[2 * nb + 1];
                    #[unroll]
                    for e in 0..2usize {
                        let mut keep_a = here_a;
                        let mut keep_b = here_b;
                        if causal {
                            keep_a = keep_a && key0 + col + e <= state_a.t;
                            keep_b = keep_b && key0 + col + e <= state_b.t;
                        }
                        let a = select(keep_a, raw_a[e] * scale + biases[e], f32::new(KEY_MASKED));
                        let b = select(keep_b, raw_b[e] * scale + biases[e], f32::new(KEY_MASKED));
                        masked_a[e] = a;
                        masked_b[e] = b;
                        tile_max_a = max(tile_max_a, a);
                        tile_max_b = max(tile_max_b, b);
                    }
                    scores[2 * nb] = masked_a;
                    scores[2 * nb + 1] = masked_b;
                }
            }
            let reference_a = raise_max(&mut state_a, tile_max_a);
            let reference_b = raise_max(&mut state_b, tile_max_b);
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
                    p_a[e] = (s_a[e] - reference_a[0]).exp();
                    p_b[e] = (s_b[e] - reference_b[0]).exp();
                    sum_a += p_a[e];
                    sum_b += p_b[e];
                }
                scores[2 * nb] = p_a;
                scores[2 * nb + 1] = p_b;
            }
            state_a.sum = state_a.sum * alpha_a + sum_a;
            state_b.sum = state_b.sum * alpha_b + sum_b;
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

            // 3. O += P V: P's registers of key blocks 2kb, 2kb + 1 are the A registers of the
            // 16-key block kb; V's B registers by `ldmatrix.trans`, two 8-column blocks per load.
            #[unroll]
            for kb in 0..comptime!(key_tile / 16) {
                let mut p = Array::<Pair<F>>::new(4usize);
                p[0] = Pair::<F>::cast_from(scores[4 * kb]);
                p[1] = Pair::<F>::cast_from(scores[4 * kb + 1]);
                p[2] = Pair::<F>::cast_from(scores[4 * kb + 2]);
                p[3] = Pair::<F>::cast_from(scores[4 * kb + 3]);
                let key_row = kb * 16 + lane % 8 + 8 * ((lane / 8) % 2);
                #[unroll]
                for dn2 in 0..comptime!(head_dim / 16) {
                    let at = value_base + key_row * stride + dn2 * 16 + 8 * (lane / 16);
                    let regs = def.load_matrix::<F, Const<2>>(
                        &tiles.slice(at, at + 8),
                        MatrixIdent::B,
                        4usize,
                        true,
                    );
                    accumulate_block(&def, &p, &regs, 0usize, 2 * dn2, &mut out);
                    accumulate_block(&def, &p, &regs, 2usize, 2 * dn2 + 1, &mut out);
                }
            }
        }

        // Every plane is done with this stage before the next iteration copies into it.
        sync_cube();
        stage = other;
        if next.valid && next.pair != job.pair {
            let next_a = pair_view(table, &rows_a, next.pair, seq_len);
            let next_b = pair_view(table, &rows_b, next.pair, seq_len);
            state_a.selected = next_a.selected;
            state_a.segment = next_a.row_segment;
            state_a.t = next_a.t;
            state_b.selected = next_b.selected;
            state_b.segment = next_b.row_segment;
            state_b.t = next_b.t;
        }
        job.valid = next.valid;
        job.pair = next.pair;
        job.segment_index = next.segment_index;
        job.tile = next.tile;
        job.key_start = next.key_start;
        job.dilation = next.dilation;
        job.key_count = next.key_count;
    }

    // Epilogue: the row sums over the row's 4 units, O / l staged in shared memory, 16-byte
    // stores; the LSE by the row's first unit.
    let total_a = quad_sum(state_a.sum);
    let total_b = quad_sum(state_b.sum);
    let inverse_a = select(total_a > 0.0, 1.0 / total_a, 0.0f32);
    let inverse_b = select(total_b > 0.0, 1.0 / total_b, 0.0f32);
    sync_cube();
    let staged_a = (plane * 16 + group) * stride + 2 * quad;
    let staged_b = staged_a + 8 * stride;
    #[unroll]
    for dn in 0..dim_blocks {
        let o_a = out[2 * dn];
        let o_b = out[2 * dn + 1];
        let mut v_a = Pair::<F>::empty();
        let mut v_b = Pair::<F>::empty();
        v_a[0] = F::cast_from(o_a[0] * inverse_a);
        v_a[1] = F::cast_from(o_a[1] * inverse_a);
        v_b[0] = F::cast_from(o_b[0] * inverse_b);
        v_b[1] = F::cast_from(o_b[1] * inverse_b);
        write_pair(&mut tiles, staged_a + dn * 8, v_a);
        write_pair(&mut tiles, staged_b + dn * 8, v_b);
    }
    sync_cube();
    let per_row = comptime!(head_dim / width);
    let total = comptime!(TENSOR_CORE_BLOCK_ROWS * per_row);
    let store_rounds = comptime!(total.div_ceil(TENSOR_CORE_UNITS));
    #[unroll]
    for round in 0..store_rounds {
        let element = unit + round * TENSOR_CORE_UNITS;
        let r = element / per_row;
        if element < total && r < cube_row_count {
            let c = (element % per_row) * width;
            let row = rows.first_row + r * rows.stride;
            let at = r * stride + c;
            let values = tiles
                .slice(at, at + width)
                .into_vectorized()
                .with_vector_size::<N>()[0];
            output[(batch * output.stride(0)
                + row * output.stride(1)
                + head * output.stride(2)
                + c)
                / width] = values;
        }
    }
    if quad == 0 {
        if row_a < seq_len {
            let value = select(total_a > 0.0, state_a.max + total_a.ln(), neg_inf);
            lse[batch * lse.stride(0) + row_a * lse.stride(1) + head * lse.stride(2)] = value;
        }
        if row_b < seq_len {
            let value = select(total_b > 0.0, state_b.max + total_b.ln(), neg_inf);
            lse[batch * lse.stride(0) + row_b * lse.stride(1) + head * lse.stride(2)] = value;
        }
    }
}

/// `acc += Q[kb] B` with B in `regs[first], regs[first + 1]`.
#[cube]
fn score_block<F: Float>(
    def: &MmaDefinition<F, F, f32>,
    query_regs: &Array<Pair<F>>,
    regs: &Array<Pair<F>>,
    #[comptime] first: usize,
    #[comptime] kb: usize,
    acc: &mut Array<Pair<f32>>,
) {
    let mut a = Array::<Pair<F>>::new(4usize);
    #[unroll]
    for i in 0..4usize {
        a[i] = query_regs[kb * 4 + i];
    }
    let mut b = Array::<Pair<F>>::new(2usize);
    b[0] = regs[first];
    b[1] = regs[first + 1];
    def.execute_inplace(&a, &b, acc);
}

/// `out[dn] += P B` with B in `regs[first], regs[first + 1]`.
#[cube]
fn accumulate_block<F: Float>(
    def: &MmaDefinition<F, F, f32>,
    p: &Array<Pair<F>>,
    regs: &Array<Pair<F>>,
    #[comptime] first: usize,
    #[comptime] dn: usize,
    out: &mut Array<Pair<f32>>,
) {
    let mut b = Array::<Pair<F>>::new(2usize);
    b[0] = regs[first];
    b[1] = regs[first + 1];
    let mut acc = Array::<Pair<f32>>::new(2usize);
    acc[0] = out[2 * dn];
    acc[1] = out[2 * dn + 1];
    def.execute_inplace(p, &b, &mut acc);
    out[2 * dn] = acc[0];
    out[2 * dn + 1] = acc[1];
}

/// Raises `row`'s max to include `tile_max` (max over the row's 4 units first) and returns the
/// max the tile's probabilities are taken against (`+1e30` while the row has seen no key, so
/// they are 0) and the factor that rescales what the row holds.
#[cube]
fn raise_max(row: &mut MmaRow, tile_max: f32) -> Pair<f32> {
    let mut m = max(tile_max, plane_shuffle_xor(tile_max, 1u32));
    m = max(m, plane_shuffle_xor(m, 2u32));
    let new_max = max(row.max, m);
    let seen = new_max > f32::new(KEY_MASKED * 0.5);
    let reference = select(seen, new_max, f32::new(-KEY_MASKED));
    let mut result = Pair::<f32>::empty();
    result[0] = reference;
    result[1] = (row.max - reference).exp();
    row.max = new_max;
    result
}

/// Sum over the 4 units of a row.
#[cube]
fn quad_sum(value: f32) -> f32 {
    let s = value + plane_shuffle_xor(value, 1u32);
    s + plane_shuffle_xor(s, 2u32)
}

/// Two values at `at` (even) in one 4-byte store.
#[cube]
fn write_pair<F: Float>(smem: &mut SharedMemory<F>, at: usize, values: Pair<F>) {
    let mut target = smem
        .slice_mut(at, at + 2)
        .into_vectorized()
        .with_vector_size::<Const<2>>();
    target[0] = values;
}

/// Issues the copies of `job`'s rows of `tensor` into `tiles` from element `base` (row stride
/// `stride`), `N` values per `cp.async`; rows past the tile's keys are zeroed by plain stores.
/// The copies complete on the barrier the caller commits them to.
#[cube]
#[allow(clippy::too_many_arguments)]
fn copy_tile_async<F: Float, N: Size>(
    tensor: &Tensor<Vector<F, N>>,
    tiles: &mut SharedMemory<F>,
    base: usize,
    job: &KeyTile,
    batch: usize,
    head: usize,
    unit: usize,
    #[comptime] key_tile: usize,
    #[comptime] head_dim: usize,
    #[comptime] stride: usize,
) {
    let width = N::value();
    let per_row = comptime!(head_dim / width);
    let total = comptime!(key_tile * per_row);
    let rounds = comptime!(total.div_ceil(TENSOR_CORE_UNITS));
    let first = job.tile * key_tile;
    let row_base = batch * tensor.stride(0) + head * tensor.stride(2);
    #[unroll]
    for round in 0..rounds {
        let element = unit + round * TENSOR_CORE_UNITS;
        if element < total {
            let r = element / per_row;
            let c = (element % per_row) * width;
            let at = base + r * stride + c;
            let t = first + r;
            if job.valid && t < job.key_count {
                let from =
                    (row_base + (job.key_start + t * job.dilation) * tensor.stride(1) + c) / width;
                let mut destination = unsafe {
                    tiles
                        .slice_mut(at, at + width)
                        .downcast_unchecked::<Vector<F, N>>()
                };
                copy_async(
                    &tensor.slice(from, from + 1),
                    &mut destination,
                    comptime!(width as u32),
                );
            } else {
                let mut target = tiles
                    .slice_mut(at, at + width)
                    .into_vectorized()
                    .with_vector_size::<N>();
                target[0] = Vector::<F, N>::zeroed();
            }
        }
    }
}
