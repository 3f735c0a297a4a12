//! The reference implementation of dilated attention, in plain Burn tensor ops.
//!
//! It is the oracle for the kernels and the ring, the path of backends without kernels (CPU),
//! and it trains: every op is differentiable, so `Autodiff<B>` gives its gradients.
//!
//! ```
//! use burn::backend::NdArray;
//! use burn::tensor::{Distribution, Tensor};
//! use dilated_attention_core::{reference_dilated_attention, DilatedAttentionConfig};
//!
//! let device = Default::default();
//! let cfg = DilatedAttentionConfig::new(vec![16, 32], vec![1, 2]).with_causal(true);
//! let q = Tensor::<NdArray, 4>::random([2, 45, 4, 16], Distribution::Default, &device);
//! let (out, lse) = reference_dilated_attention(q.clone(), q.clone(), q, None, &cfg).unwrap();
//! assert_eq!(out.dims(), [2, 45, 4, 16]);
//! assert_eq!(lse.dims(), [2, 45, 4]);
//! ```
//!
//! # Memory
//! For each pair `i` with segment `s_i` and dilation `r_i` (`m_i = ceil(s_i / r_i)` rows per
//! segment), the forward holds the gathered rows of the pair (`3 b n h d / r_i` elements), one
//! chunk of scores and weights (at most [`SCORE_BUDGET_ELEMENTS`](crate::SCORE_BUDGET_ELEMENTS),
//! or one segment `b h m_i^2` if larger), the pair's output and LSE (`b n h (d + 1)`), and the
//! running merge (`b n h (d + 1)`). Never an `n x n` matrix: the peak is
//! `O(b n h d + max(budget, b h m_i^2))`. Under `Autodiff` the graph keeps every chunk's
//! scores and weights for the backward: `~2 b h sum_i ceil(n / s_i) m_i^2` elements, linear in
//! `n` (about `2 b h n sum_i s_i / r_i^2`).

use burn::tensor::{Bool, Int, Tensor, backend::Backend};

use crate::{
    AttentionShape, DilatedAttentionConfig, DilatedIndexPlan, DilationMode, OffsetGroup, PairPlan,
    Result, check_attention_inputs, index_tensor, inverse_permutation, merge_by_lse,
    segment_attention,
};

/// Dilated attention and its per-query log-sum-exp, on plain Burn tensor ops.
///
/// `key_padding_mask` (`true` = padded) hides keys in every mode and with causal masking; a query
/// that sees no key outputs 0 and has log-sum-exp `-inf`.
///
/// # Shapes
/// - `query`, `key`, `value`: `[batch, seq, heads, head_dim]`
/// - `key_padding_mask`: `[batch, seq]`
/// - returns output `[batch, seq, heads, head_dim]` and log-sum-exp `[batch, seq, heads]`.
///   In `HeadGrouped` mode the log-sum-exp of a row the head's dilation skips is `-inf`.
///
/// # Errors
/// Any [`DilatedAttentionConfig::validate`] error, the shape errors of
/// [`AttentionShape::check_qkv`] and [`AttentionShape::check_key_padding_mask`], and
/// [`TooFewHeads`](crate::DilatedAttentionError::TooFewHeads).
pub fn reference_dilated_attention<B: Backend>(
    query: Tensor<B, 4>,
    key: Tensor<B, 4>,
    value: Tensor<B, 4>,
    key_padding_mask: Option<Tensor<B, 2, Bool>>,
    config: &DilatedAttentionConfig,
) -> Result<(Tensor<B, 4>, Tensor<B, 3>)> {
    let shape = check_attention_inputs(&query, &key, &value, key_padding_mask.as_ref())?;
    let plan = DilatedIndexPlan::new(config, shape.seq_len, shape.num_heads)?;
    let inputs = Inputs {
        query,
        key,
        value,
        key_padding_mask,
        shape,
        causal: config.causal,
        scale: config.scale_for(shape.head_dim),
        dropout: config.dropout,
    };
    Ok(inputs.attend(&plan))
}

/// The largest score tensor (elements) [`reference_dilated_attention`] materialises for a call
/// of `shape` with `config`: one chunk of segments of one offset group,
/// `batch x heads x rows^2` per segment, batched up to
/// [`SCORE_BUDGET_ELEMENTS`](crate::SCORE_BUDGET_ELEMENTS) (a larger segment is taken whole).
/// Backends compare it with the largest buffer their device allocates before running the path.
///
/// ```
/// use dilated_attention_core::{AttentionShape, DilatedAttentionConfig, reference_score_elements};
///
/// let shape = AttentionShape { batch: 1, seq_len: 65_536, num_heads: 8, head_dim: 64 };
/// // One segment of 65,536 rows for 8 heads: 8 x 65,536^2 scores at once.
/// let whole = DilatedAttentionConfig::new(vec![65_536], vec![1]);
/// assert_eq!(reference_score_elements(&shape, &whole)?, 8 * 65_536 * 65_536);
/// // Segments of 1,024 (8 M scores each) batched up to the 2^25 budget.
/// let short = DilatedAttentionConfig::new(vec![1_024], vec![1]);
/// assert_eq!(reference_score_elements(&shape, &short)?, 1 << 25);
/// # Ok::<(), dilated_attention_core::DilatedAttentionError>(())
/// ```
///
/// # Errors
/// Those of [`DilatedIndexPlan::new`].
pub fn reference_score_elements(
    shape: &AttentionShape,
    config: &DilatedAttentionConfig,
) -> Result<usize> {
    let plan = DilatedIndexPlan::new(config, shape.seq_len, shape.num_heads)?;
    let mut largest = 0usize;
    for group in plan.pairs().iter().flat_map(|pair| &pair.groups) {
        let rows = &group.rows;
        for (segments, len) in [
            (rows.full_segments(), rows.rows_per_full_segment()),
            (1, rows.rows_in_tail()),
        ] {
            if segments == 0 || len == 0 {
                continue;
            }
            let per_segment = shape
                .batch
                .saturating_mul(group.heads.len())
                .saturating_mul(len)
                .saturating_mul(len);
            let chunk = crate::segment_attention::segments_per_chunk(
                per_segment,
                segments,
                crate::SCORE_BUDGET_ELEMENTS,
            );
            largest = largest.max(per_segment.saturating_mul(chunk));
        }
    }
    Ok(largest)
}

struct Inputs<B: Backend> {
    query: Tensor<B, 4>,
    key: Tensor<B, 4>,
    value: Tensor<B, 4>,
    key_padding_mask: Option<Tensor<B, 2, Bool>>,
    shape: AttentionShape,
    causal: bool,
    scale: f64,
    dropout: f64,
}

impl<B: Backend> Inputs<B> {
    fn attend(&self, plan: &DilatedIndexPlan) -> (Tensor<B, 4>, Tensor<B, 3>) {
        match plan.mode() {
            DilationMode::LongNet => {
                // Every pair covers every head; merge pairs as they come (two live at a time).
                let mut merged: Option<(Tensor<B, 4>, Tensor<B, 3>)> = None;
                for pair in plan.pairs() {
                    let (out, lse) = self.attend_groups(pair);
                    let order = pair.heads_in_group_order();
                    let part = if order.iter().copied().eq(0..self.shape.num_heads) {
                        (out, lse)
                    } else {
                        let inverse = self.index(&inverse_permutation(&order));
                        (out.select(2, inverse.clone()), lse.select(2, inverse))
                    };
                    merged = Some(match merged {
                        None => part,
                        Some(acc) => merge_by_lse(vec![acc, part]),
                    });
                }
                merged.expect("a validated config has at least one pair")
            }
            DilationMode::HeadGrouped => {
                // Groups are contiguous and in head order: concatenate along heads.
                let (outs, lses): (Vec<_>, Vec<_>) = plan
                    .pairs()
                    .iter()
                    .map(|pair| self.attend_groups(pair))
                    .unzip();
                (Tensor::cat(outs, 2), Tensor::cat(lses, 2))
            }
        }
    }

    /// The attention of each offset group of a pair, concatenated along heads in group order.
    ///
    /// The pair's heads are brought into group order once (a narrow for a contiguous range, one
    /// permuting `select` otherwise), so each group is a contiguous `narrow` of them.
    fn attend_groups(&self, pair: &PairPlan) -> (Tensor<B, 4>, Tensor<B, 3>) {
        let order = pair.heads_in_group_order();
        let first = order[0];
        let contiguous = order.iter().enumerate().all(|(i, &h)| h == first + i);
        let pick = |t: &Tensor<B, 4>| {
            if contiguous && order.len() == self.shape.num_heads {
                t.clone()
            } else if contiguous {
                t.clone().narrow(2, first, order.len())
            } else {
                t.clone().select(2, self.index(&order))
            }
        };
        let (q, k, v) = (pick(&self.query), pick(&self.key), pick(&self.value));
        let mut start = 0;
        let (outs, lses): (Vec<_>, Vec<_>) = pair
            .groups
            .iter()
            .map(|group| {
                let len = group.heads.len();
                let part = |t: &Tensor<B, 4>| t.clone().narrow(2, start, len);
                let result = self.attend_group(group, part(&q), part(&k), part(&v));
                start += len;
                result
            })
            .unzip();
        (Tensor::cat(outs, 2), Tensor::cat(lses, 2))
    }

    /// One offset group (`query`, `key`, `value` already restricted to its heads): gather its
    /// rows, attend per segment, put rows back.
    fn attend_group(
        &self,
        group: &OffsetGroup,
        query: Tensor<B, 4>,
        key: Tensor<B, 4>,
        value: Tensor<B, 4>,
    ) -> (Tensor<B, 4>, Tensor<B, 3>) {
        let AttentionShape {
            batch,
            seq_len,
            head_dim,
            ..
        } = self.shape;
        let heads = group.heads.len();
        let device = self.query.device();
        // Fresh tensors in the inputs' dtype: under Fusion a tensor of another dtype is an error
        // when concatenated with the results.
        let like = (&device, self.query.dtype());
        let rows = group.rows;
        if rows.is_empty() {
            return (
                Tensor::zeros([batch, seq_len, heads, head_dim], like),
                Tensor::full([batch, seq_len, heads], f32::NEG_INFINITY, like),
            );
        }

        let row_index =
            (!rows.is_identity()).then(|| self.index(&rows.positions().collect::<Vec<_>>()));
        let gather = |t: Tensor<B, 4>| match &row_index {
            Some(r) => t.select(1, r.clone()),
            None => t,
        };
        let (q, k, v) = (gather(query), gather(key), gather(value));
        // The mask travels as 0/1 floats through gathers and reshapes (see segment_attention).
        let mask = self.key_padding_mask.as_ref().map(|m| {
            let m = m.clone().float();
            match &row_index {
                Some(r) => m.select(1, r.clone()),
                None => m,
            }
        });

        // Full segments batched together, then the shorter tail segment.
        let full = rows.full_segments();
        let per = rows.rows_per_full_segment();
        let tail = rows.rows_in_tail();
        let mut outs = Vec::with_capacity(2);
        let mut lses = Vec::with_capacity(2);
        for (start, segments, len) in [(0, full, per), (full * per, 1, tail)] {
            if segments == 0 || len == 0 {
                continue;
            }
            let rows_total = segments * len;
            let cut = |t: &Tensor<B, 4>| {
                t.clone()
                    .narrow(1, start, rows_total)
                    .reshape([batch, segments, len, heads, head_dim])
            };
            let hidden = mask.as_ref().map(|m| {
                m.clone()
                    .narrow(1, start, rows_total)
                    .reshape([batch, segments, len])
                    .greater_elem(0.5)
            });
            let (o, l) = segment_attention(
                cut(&q),
                cut(&k),
                cut(&v),
                hidden,
                self.causal,
                self.scale,
                self.dropout,
            );
            outs.push(o.reshape([batch, rows_total, heads, head_dim]));
            lses.push(l.reshape([batch, rows_total, heads]));
        }
        let out = Tensor::cat(outs, 1);
        let lse = Tensor::cat(lses, 1);
        if rows.is_identity() {
            return (out, lse);
        }
        // Put rows back: append one empty row (0 output, -inf lse) and gather by position.
        let back = self.index(&rows.scatter_index());
        let out = Tensor::cat(
            vec![out, Tensor::zeros([batch, 1, heads, head_dim], like)],
            1,
        )
        .select(1, back.clone());
        let lse = Tensor::cat(
            vec![
                lse,
                Tensor::full([batch, 1, heads], f32::NEG_INFINITY, like),
            ],
            1,
        )
        .select(1, back);
        (out, lse)
    }

    fn index(&self, values: &[usize]) -> Tensor<B, 1, Int> {
        index_tensor(values.iter().copied(), &self.query.device())
    }
}
