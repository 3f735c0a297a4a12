//! A shared block of the sharded forward (a rank's shared query rows of one (pair, offset group)
//! against the key rows of one step) on the single-device path: the fused kernels where the
//! backend has them, instead of scores materialised by Burn ops.
//!
//! Inside one segment, a group's selected rows step by the pair's dilation and positions grow
//! with the row index. The rank's query rows fall into *runs* (consecutive selected rows of one
//! segment), and against a run every key row of the same segment is either before the run,
//! inside it, or after it. Keys before are fully visible; keys after are invisible under causal
//! masking and fully visible otherwise; keys inside are, in the sharded plan, exactly the run's
//! own rows (the rank's own keys at step 0), causal by row index. So each (run, key set) is one
//! fused call on compact tensors with a single pair `(L, 1)`: causal on the diagonal, padded to
//! a common length `L` otherwise (padded keys hidden by the key padding mask, padded query rows
//! dropped). A run's pieces merge by log-sum-exp. A block whose keys lie inside a run but are
//! not its rows (no plan makes one) is left to the caller's masked block math. A group's owned
//! segments (whole segments inside the rank's shard) are one fused call each way:
//! [`fused_segments_forward`] and [`fused_segments_backward`].

use core::ops::Range;

use burn::tensor::{Bool, DType, IndexingUpdateOp, Tensor, TensorPrimitive, backend::Backend};
use dilated_attention_core::{DilatedAttentionConfig, KernelStrategy, Result, merge_by_lse};
use dilated_attention_kernels::{
    DilatedAttentionBackend, FusedBackwardInputs, dilated_attention_with_lse_masked,
};

use crate::block::{narrow_to, wide};
use crate::shard_plan::{GroupShard, Row};

/// Which rows a block attends: the rank's shared query rows, the step's key rows, and the pair.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BlockRows<'a> {
    pub queries: &'a [Row],
    pub keys: &'a [Row],
    pub segment_length: usize,
    pub dilation: usize,
    pub causal: bool,
}

impl<'a> BlockRows<'a> {
    /// `group`'s shared rows against `keys`.
    pub fn of(group: &'a GroupShard, keys: &'a [Row], causal: bool) -> Self {
        Self {
            queries: &group.shared,
            keys,
            segment_length: group.segment_length,
            dilation: group.dilation,
            causal,
        }
    }
}

/// The key rows (indices into the block's key list) one query run attends, by kind.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    /// Every key visible to every query of the run.
    Full(Vec<usize>),
    /// The run's own rows, in order: causal by row index.
    Diagonal(Vec<usize>),
}

impl Piece {
    /// The key rows and whether the piece's call is causal.
    fn into_keys(self) -> (Vec<usize>, bool) {
        match self {
            Piece::Full(keys) => (keys, false),
            Piece::Diagonal(keys) => (keys, true),
        }
    }
}

/// Maximal runs `[start, end)` of `rows`: one segment, positions stepping by `dilation`.
fn runs(rows: &[Row], segment_length: usize, dilation: usize) -> Vec<Range<usize>> {
    let mut out: Vec<Range<usize>> = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let continues = i > 0 && {
            let previous = rows[i - 1].position;
            previous / segment_length == row.position / segment_length
                && previous + dilation == row.position
        };
        match out.last_mut() {
            Some(run) if continues => run.end = i + 1,
            _ => out.push(i..i + 1),
        }
    }
    out
}

/// The pieces of each query run, or `None` when some key lies inside a run without being one of
/// its rows (then only a mask describes the block).
fn plan_pieces(rows: &BlockRows) -> Option<Vec<(Range<usize>, Vec<Piece>)>> {
    let s = rows.segment_length;
    runs(rows.queries, s, rows.dilation)
        .into_iter()
        .map(|run| {
            let queries = &rows.queries[run.clone()];
            let (first, last) = (queries[0].position, queries[queries.len() - 1].position);
            let segment = first / s;
            let (mut visible, mut inside) = (Vec::new(), Vec::new());
            for (j, key) in rows.keys.iter().enumerate() {
                if key.position / s != segment {
                    continue;
                }
                if key.position < first || (!rows.causal && key.position > last) {
                    visible.push(j);
                } else if key.position <= last {
                    inside.push(j);
                }
            }
            let mut pieces = Vec::new();
            if !inside.is_empty() {
                let own = inside.len() == queries.len()
                    && inside
                        .iter()
                        .zip(queries)
                        .all(|(&j, q)| rows.keys[j].position == q.position);
                if !own {
                    return None;
                }
                if rows.causal {
                    pieces.push(Piece::Diagonal(inside));
                } else {
                    visible.extend(inside);
                }
            }
            if !visible.is_empty() {
                pieces.push(Piece::Full(visible));
            }
            Some((run, pieces))
        })
        .collect()
}

/// Maximal ranges of consecutive values in `index`, in order.
fn consecutive_ranges(index: &[usize]) -> Vec<Range<usize>> {
    let mut out: Vec<Range<usize>> = Vec::new();
    for &i in index {
        match out.last_mut() {
            Some(range) if range.end == i => range.end = i + 1,
            _ => out.push(i..i + 1),
        }
    }
    out
}

/// Rows `index` of `t` along dim 1, as slices of its consecutive ranges (a piece's keys are one
/// to three). Not `select`: burn-fusion 0.21 fuses a `select` with
/// the padding `full` that follows it and the fused kernel read its indices out of bounds on
/// CUDA (an illegal address in `elemwise_fuse`, seen with uneven shards; lavapipe clamps the
/// read and gave wrong rows instead).
fn rows_of<B: Backend, const D: usize>(t: &Tensor<B, D>, index: &[usize]) -> Tensor<B, D> {
    let mut slices: Vec<Tensor<B, D>> = consecutive_ranges(index)
        .into_iter()
        .map(|range| t.clone().narrow(1, range.start, range.len()))
        .collect();
    if slices.len() == 1 {
        slices.pop().expect("one slice")
    } else {
        Tensor::cat(slices, 1)
    }
}

/// `t` with zero rows appended along dim 1 up to `len`.
fn pad_rows<B: Backend>(t: Tensor<B, 4>, len: usize) -> Tensor<B, 4> {
    let [b, m, h, d] = t.dims();
    if m == len {
        return t;
    }
    let zeros = Tensor::<B, 4>::zeros([b, len - m, h, d], &t.device()).cast(t.dtype());
    Tensor::cat(vec![t, zeros], 1)
}

/// The key padding mask `[b, len]` of a piece's call (true = hidden): keys with `keep` below 0.5
/// and the padding rows past the piece's `n` keys; `None` when no key is hidden.
fn hidden_keys<B: Backend>(
    keep: Option<Tensor<B, 2>>,
    batch: usize,
    n: usize,
    len: usize,
    device: &B::Device,
) -> Option<Tensor<B, 2, Bool>> {
    (keep.is_some() || n < len).then(|| {
        let keys = keep.map_or_else(
            || Tensor::<B, 2>::zeros([batch, n], device),
            |k| k.neg().add_scalar(1.0),
        );
        let padded = if n < len {
            Tensor::cat(
                vec![keys, Tensor::<B, 2>::ones([batch, len - n], device)],
                1,
            )
        } else {
            keys
        };
        padded.greater_elem(0.5)
    })
}

/// What every fused call of a block shares: the dtype the kernels run in, the softmax scale and
/// the kernel strategy (a forced reference path has no fused calls).
#[derive(Debug, Clone, Copy)]
pub(crate) struct FusedCall {
    pub dtype: DType,
    pub scale: f64,
    pub kernel_strategy: KernelStrategy,
}

impl FusedCall {
    /// The config of one call: one pair `(len, 1)`, causal or not, the block's scale.
    fn config(&self, len: usize, causal: bool) -> DilatedAttentionConfig {
        DilatedAttentionConfig::new(vec![len], vec![1])
            .with_causal(causal)
            .with_scale(Some(self.scale))
            .with_kernel_strategy(self.kernel_strategy)
    }

    /// `t` in the kernels' dtype.
    fn narrow<B: Backend>(&self, t: &Tensor<B, 4>) -> Tensor<B, 4> {
        narrow_to(t.clone(), self.dtype)
    }
}

/// The fused forward kernels on `config`, with their f32 LSE (the functional API returns it in
/// the inputs' dtype, too coarse in half precision for the merges that follow); `None` where
/// the backend has no kernels for the call.
fn fused_forward<B: DilatedAttentionBackend>(
    query: &Tensor<B, 4>,
    key: &Tensor<B, 4>,
    value: &Tensor<B, 4>,
    hidden: Option<Tensor<B, 2, Bool>>,
    config: &DilatedAttentionConfig,
) -> Result<Option<(Tensor<B, 4>, Tensor<B, 3>)>> {
    if !B::dilated_attention_kernel(query.dims(), query.dtype(), &query.device(), config)?
        .is_fused()
    {
        return Ok(None);
    }
    let (out, lse) = B::fused_dilated_attention_forward(
        query.clone().into_primitive().tensor(),
        key.clone().into_primitive().tensor(),
        value.clone().into_primitive().tensor(),
        hidden.map(Tensor::into_primitive),
        config,
        None,
    )?;
    Ok(Some((
        Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(out)),
        Tensor::<B, 3>::from_primitive(TensorPrimitive::Float(lse)),
    )))
}

/// One fused call: `query` `[b, m, h, d]` against `key`/`value` `[b, n, h, d]`, keys with
/// `keep` `[b, n]` below 0.5 hidden; f32 output `[b, m, h, d]` and LSE `[b, m, h]`.
fn attend_piece<B: DilatedAttentionBackend>(
    query: Tensor<B, 4>,
    key: Tensor<B, 4>,
    value: Tensor<B, 4>,
    keep: Option<Tensor<B, 2>>,
    causal: bool,
    call: &FusedCall,
) -> Result<(Tensor<B, 4>, Tensor<B, 3>)> {
    let [batch, m, _, _] = query.dims();
    let n = key.dims()[1];
    let len = m.max(n);
    let device = query.device();
    let hidden = hidden_keys(keep, batch, n, len, &device);
    let config = call.config(len, causal);
    let (query, key, value) = (
        pad_rows(query, len),
        pad_rows(key, len),
        pad_rows(value, len),
    );
    let (out, lse) = match fused_forward(&query, &key, &value, hidden.clone(), &config)? {
        Some(result) => result,
        None => dilated_attention_with_lse_masked(query, key, value, hidden, &config)?,
    };
    Ok((wide(out.narrow(1, 0, m)), wide(lse.narrow(1, 0, m))))
}

/// The block's f32 output `[batch, queries, heads, head_dim]` and LSE `[batch, queries, heads]`
/// (`-inf`, output 0, for a query that sees no key of the block), from `query`
/// `[batch, queries, heads, head_dim]` and `key`/`value` `[batch, keys, heads, head_dim]` (any
/// float dtype; the fused calls run in `call.dtype`), with `key_keep` `[batch, keys]` (1 = not padded).
/// `None` when the block's keys do not split into pieces (see the module docs).
///
/// # Errors
/// The single-device path's errors.
pub(crate) fn fused_block_forward<B: DilatedAttentionBackend>(
    query: &Tensor<B, 4>,
    key: &Tensor<B, 4>,
    value: &Tensor<B, 4>,
    key_keep: Option<&Tensor<B, 2>>,
    rows: &BlockRows,
    call: &FusedCall,
) -> Result<Option<(Tensor<B, 4>, Tensor<B, 3>)>> {
    let Some(plan) = plan_pieces(rows) else {
        return Ok(None);
    };
    let [batch, _, heads, head_dim] = query.dims();
    let device = query.device();
    let (query, key, value) = (call.narrow(query), call.narrow(key), call.narrow(value));
    let mut outs = Vec::with_capacity(plan.len());
    let mut lses = Vec::with_capacity(plan.len());
    for (run, pieces) in plan {
        let m = run.len();
        let q = query.clone().narrow(1, run.start, m);
        let mut parts = Vec::with_capacity(pieces.len());
        for piece in pieces {
            let (keys, causal) = piece.into_keys();
            let keep = key_keep.map(|k| rows_of(k, &keys));
            parts.push(attend_piece(
                q.clone(),
                rows_of(&key, &keys),
                rows_of(&value, &keys),
                keep,
                causal,
                call,
            )?);
        }
        let (o, l) = if parts.is_empty() {
            (
                Tensor::zeros([batch, m, heads, head_dim], &device),
                Tensor::full([batch, m, heads], f32::NEG_INFINITY, &device),
            )
        } else {
            merge_by_lse(parts)
        };
        outs.push(o);
        lses.push(l);
    }
    Ok(Some((Tensor::cat(outs, 1), Tensor::cat(lses, 1))))
}

/// What [`fused_block_backward`] needs of a block besides its keys: the shared query rows and,
/// for them, the final output, its f32 log-sum-exp and the gradients of both (`[batch, queries,
/// heads, ..]`), and the keys' `key_keep` `[batch, keys]` (1 = not padded).
pub(crate) struct BlockBackward<'a, B: Backend> {
    pub query: &'a Tensor<B, 4>,
    pub key: &'a Tensor<B, 4>,
    pub value: &'a Tensor<B, 4>,
    pub output: &'a Tensor<B, 4>,
    pub lse: &'a Tensor<B, 3>,
    pub grad_output: &'a Tensor<B, 4>,
    pub grad_lse: Option<&'a Tensor<B, 3>>,
    pub key_keep: Option<&'a Tensor<B, 2>>,
}

/// `t` with rows of `value` appended along dim 1 up to `len`.
fn pad_stat<B: Backend>(t: Tensor<B, 3>, len: usize, value: f32) -> Tensor<B, 3> {
    let [b, m, h] = t.dims();
    if m == len {
        return t;
    }
    let fill = Tensor::<B, 3>::full([b, len - m, h], value, &t.device()).cast(t.dtype());
    Tensor::cat(vec![t, fill], 1)
}

/// One fused backward call's tensors: a piece's query rows, its key and value rows, the hidden
/// keys, and the final output, f32 log-sum-exp and their gradients at the query rows.
struct BackwardPiece<B: Backend> {
    query: Tensor<B, 4>,
    key: Tensor<B, 4>,
    value: Tensor<B, 4>,
    hidden: Option<Tensor<B, 2, Bool>>,
    output: Tensor<B, 4>,
    lse: Tensor<B, 3>,
    grad_output: Tensor<B, 4>,
    grad_lse: Option<Tensor<B, 3>>,
}

/// The fused backward kernels on `config` from the final output and its f32 log-sum-exp
/// (FlashAttention-2's recomputation): f32 gradients of the query, key and value rows; `None`
/// where the backend has no kernels for the call.
fn fused_backward<B: DilatedAttentionBackend>(
    piece: BackwardPiece<B>,
    config: &DilatedAttentionConfig,
) -> Result<Option<[Tensor<B, 4>; 3]>> {
    let query = &piece.query;
    if !B::dilated_attention_kernel(query.dims(), query.dtype(), &query.device(), config)?
        .is_fused()
    {
        return Ok(None);
    }
    let inputs = FusedBackwardInputs {
        query: piece.query.into_primitive().tensor(),
        key: piece.key.into_primitive().tensor(),
        value: piece.value.into_primitive().tensor(),
        key_padding_mask: piece.hidden.map(Tensor::into_primitive),
        output: piece.output.into_primitive().tensor(),
        lse: piece.lse.into_primitive().tensor(),
        grad_output: Some(piece.grad_output.into_primitive().tensor()),
        grad_lse: piece.grad_lse.map(|g| g.into_primitive().tensor()),
    };
    let grads = B::fused_dilated_attention_backward(inputs, config, None)?;
    Ok(Some(grads.map(|t| {
        wide(Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(t)))
    })))
}

/// The block's f32 gradients (query rows `[batch, queries, heads, head_dim]`, key and value rows
/// `[batch, keys, heads, head_dim]`) on the fused backward kernels, piece by piece as in
/// [`fused_block_forward`], each recomputing its weights from the final log-sum-exp
/// (FlashAttention-2: the kernels take the final output and LSE). Zero padding rows of the
/// queries, the output and its gradient contribute nothing. `None` when the block's keys do not
/// split into pieces or a piece has no fused backward on this backend (no kernels, or the
/// reference path forced): the caller's Burn-ops block runs instead.
///
/// # Errors
/// The kernels' errors.
pub(crate) fn fused_block_backward<B: DilatedAttentionBackend>(
    block: &BlockBackward<B>,
    rows: &BlockRows,
    call: &FusedCall,
) -> Result<Option<[Tensor<B, 4>; 3]>> {
    let Some(plan) = plan_pieces(rows) else {
        return Ok(None);
    };
    let [batch, _, heads, head_dim] = block.query.dims();
    let keys = block.key.dims()[1];
    let device = block.query.device();
    let narrow = |t: &Tensor<B, 4>| call.narrow(t);
    let (query, key, value) = (narrow(block.query), narrow(block.key), narrow(block.value));
    let (output, grad_output) = (narrow(block.output), narrow(block.grad_output));
    let lse = wide(block.lse.clone());
    let grad_lse = block.grad_lse.map(|g| wide(g.clone()));
    let mut grad_key = Tensor::<B, 4>::zeros([batch, keys, heads, head_dim], &device);
    let mut grad_value = grad_key.clone();
    let mut grad_query_runs = Vec::with_capacity(plan.len());
    for (run, pieces) in plan {
        let m = run.len();
        let mut grad_query = Tensor::<B, 4>::zeros([batch, m, heads, head_dim], &device);
        for piece in pieces {
            let (key_rows, causal) = piece.into_keys();
            let n = key_rows.len();
            let len = m.max(n);
            let config = call.config(len, causal);
            let keep = block.key_keep.map(|k| rows_of(k, &key_rows));
            let hidden = hidden_keys(keep, batch, n, len, &device);
            // a run is one range of the shared rows: a slice
            let run_of = |t: &Tensor<B, 4>| pad_rows(t.clone().narrow(1, run.start, m), len);
            let run_stat = |t: &Tensor<B, 3>| pad_stat(t.clone().narrow(1, run.start, m), len, 0.0);
            let keys_of = |t: &Tensor<B, 4>| pad_rows(rows_of(t, &key_rows), len);
            let piece = BackwardPiece {
                query: run_of(&query),
                key: keys_of(&key),
                value: keys_of(&value),
                hidden,
                output: run_of(&output),
                lse: run_stat(&lse),
                grad_output: run_of(&grad_output),
                grad_lse: grad_lse.as_ref().map(run_stat),
            };
            let Some([d_q, d_k, d_v]) = fused_backward(piece, &config)? else {
                return Ok(None);
            };
            grad_query = grad_query + d_q.narrow(1, 0, m);
            let index = dilated_attention_core::index_tensor(key_rows.iter().copied(), &device);
            grad_key = grad_key.select_assign(
                1,
                index.clone(),
                d_k.narrow(1, 0, n),
                IndexingUpdateOp::Add,
            );
            grad_value =
                grad_value.select_assign(1, index, d_v.narrow(1, 0, n), IndexingUpdateOp::Add);
        }
        grad_query_runs.push(grad_query);
    }
    Ok(Some([
        Tensor::cat(grad_query_runs, 1),
        grad_key,
        grad_value,
    ]))
}

/// A group's owned segments on the fused forward kernels: `query`, `key` and `value`
/// `[batch, segments * rows, heads, head_dim]` hold whole segments of `rows` selected rows each,
/// back to back (gathered, so the dilation is gone: one pair `(rows, 1)`), with `key_keep`
/// `[batch, segments * rows]` (1 = not padded). f32 output and LSE; `None` where the backend has
/// no kernels for the call (the caller's Burn-ops block runs instead).
///
/// # Errors
/// The kernels' errors.
pub(crate) fn fused_segments_forward<B: DilatedAttentionBackend>(
    query: &Tensor<B, 4>,
    key: &Tensor<B, 4>,
    value: &Tensor<B, 4>,
    key_keep: Option<&Tensor<B, 2>>,
    rows: usize,
    causal: bool,
    call: &FusedCall,
) -> Result<Option<(Tensor<B, 4>, Tensor<B, 3>)>> {
    let [batch, n, _, _] = query.dims();
    let config = call.config(rows, causal);
    let hidden = hidden_keys(key_keep.cloned(), batch, n, n, &query.device());
    let (query, key, value) = (call.narrow(query), call.narrow(key), call.narrow(value));
    Ok(fused_forward(&query, &key, &value, hidden, &config)?
        .map(|(out, lse)| (wide(out), wide(lse))))
}

/// The gradients of [`fused_segments_forward`]'s rows on the fused backward kernels, from the
/// final output and f32 LSE of those rows (`block`, laid out as there); `None` where the backend
/// has no kernels for the call.
///
/// # Errors
/// The kernels' errors.
pub(crate) fn fused_segments_backward<B: DilatedAttentionBackend>(
    block: &BlockBackward<B>,
    rows: usize,
    causal: bool,
    call: &FusedCall,
) -> Result<Option<[Tensor<B, 4>; 3]>> {
    let [batch, n, _, _] = block.query.dims();
    let config = call.config(rows, causal);
    let hidden = hidden_keys(block.key_keep.cloned(), batch, n, n, &block.query.device());
    let piece = BackwardPiece {
        query: call.narrow(block.query),
        key: call.narrow(block.key),
        value: call.narrow(block.value),
        hidden,
        output: call.narrow(block.output),
        lse: wide(block.lse.clone()),
        grad_output: call.narrow(block.grad_output),
        grad_lse: block.grad_lse.map(|g| wide(g.clone())),
    };
    fused_backward(piece, &config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(positions: &[usize]) -> Vec<Row> {
        positions
            .iter()
            .enumerate()
            .map(|(local, &position)| Row { position, local })
            .collect()
    }

    #[test]
    fn consecutive_ranges_split_at_gaps_and_reversals() {
        assert_eq!(
            consecutive_ranges(&[0, 1, 5, 2, 3, 4, 9]),
            vec![0..2, 5..6, 2..5, 9..10]
        );
        assert_eq!(consecutive_ranges(&[7]), vec![7..8]);
    }

    #[test]
    fn rows_of_keeps_the_order_of_its_index() {
        type B = burn::backend::NdArray;
        let device = Default::default();
        let t = Tensor::<B, 1, burn::tensor::Int>::arange(0..10, &device)
            .float()
            .reshape([1, 10]);
        let index = [0, 1, 5, 2, 3, 4, 9];
        let got: Vec<f32> = rows_of(&t, &index).into_data().to_vec().unwrap();
        assert_eq!(got, index.map(|i| i as f32).to_vec());
    }

    #[test]
    fn runs_break_at_segments_and_gaps() {
        // segment 8, dilation 2: rows 1,3,5,7 | 9,11 | (gap) 15
        let r = rows(&[1, 3, 5, 7, 9, 11, 15]);
        assert_eq!(runs(&r, 8, 2), vec![0..4, 4..6, 6..7]);
    }

    #[test]
    fn keys_split_into_before_diagonal_and_after() {
        let queries = rows(&[4, 5, 6]);
        let keys = rows(&[0, 1, 4, 5, 6, 7, 9]);
        let block = |causal| BlockRows {
            queries: &queries,
            keys: &keys,
            segment_length: 8,
            dilation: 1,
            causal,
        };
        // causal: 0, 1 before; 4, 5, 6 the diagonal; 7 after (hidden); 9 another segment
        assert_eq!(
            plan_pieces(&block(true)),
            Some(vec![(
                0..3,
                vec![Piece::Diagonal(vec![2, 3, 4]), Piece::Full(vec![0, 1])]
            )])
        );
        // not causal: every key of the segment at once
        assert_eq!(
            plan_pieces(&block(false)),
            Some(vec![(0..3, vec![Piece::Full(vec![0, 1, 5, 2, 3, 4])])])
        );
    }

    #[test]
    fn a_key_inside_a_run_that_is_not_its_row_has_no_pieces() {
        let queries = rows(&[4, 6]);
        let keys = rows(&[5]);
        let block = BlockRows {
            queries: &queries,
            keys: &keys,
            segment_length: 8,
            dilation: 1,
            causal: true,
        };
        // dilation 1 makes 4 and 6 two runs; 5 lies after the first and before the second
        assert!(plan_pieces(&block).is_some());
        let block = BlockRows {
            dilation: 2,
            ..block
        };
        assert_eq!(plan_pieces(&block), None);
    }
}
