//! Softmax attention inside segments of selected rows, with the per-query log-sum-exp.
//!
//! This is the inner step of the reference path: for each segment, the selected queries attend to
//! the selected keys of the same segment (LongNet, arXiv 2307.02486, eq. 3-4). Segments are
//! batched, in chunks whose score tensors stay under [`SCORE_BUDGET_ELEMENTS`].
//!
//! ```
//! use burn::backend::NdArray;
//! use burn::tensor::{Distribution, Tensor};
//! use dilated_attention_core::segment_attention;
//!
//! let device = Default::default();
//! // batch 1, 3 segments of 4 selected rows, 2 heads, head_dim 8
//! let q = Tensor::<NdArray, 5>::random([1, 3, 4, 2, 8], Distribution::Default, &device);
//! let (out, lse) = segment_attention(q.clone(), q.clone(), q, None, true, 0.35, 0.0);
//! assert_eq!(out.dims(), [1, 3, 4, 2, 8]);
//! assert_eq!(lse.dims(), [1, 3, 4, 2]);
//! ```

use burn::nn::DropoutConfig;
use burn::tensor::{Bool, Tensor, backend::Backend};

/// Largest score tensor (elements) the reference path materialises at once, across segments
/// batched together: 2^25 elements, 128 MiB in f32. A single segment larger than this is still
/// processed whole (its `m x m` scores are the floor of this path).
pub const SCORE_BUDGET_ELEMENTS: usize = 1 << 25;

/// Attention of selected rows inside each segment.
///
/// Every query attends to the keys of its own segment; `causal` hides keys after the query
/// (selected rows are increasing positions, so "after" is "later in the segment");
/// `key_hidden` hides padded keys (true = hidden). A query that sees no key outputs 0 and has
/// log-sum-exp `-inf`. The max subtracted before `exp` is detached: softmax does not depend on it.
///
/// `dropout` is applied to the attention weights when the backend tracks gradients (Burn's
/// `Dropout` rule); the log-sum-exp is that of the undropped weights.
///
/// # Shapes
/// - `query`, `key`, `value`: `[batch, segments, rows, heads, head_dim]`
/// - `key_hidden`: `[batch, segments, rows]`
/// - output: `[batch, segments, rows, heads, head_dim]`, log-sum-exp `[batch, segments, rows, heads]`
pub fn segment_attention<B: Backend>(
    query: Tensor<B, 5>,
    key: Tensor<B, 5>,
    value: Tensor<B, 5>,
    key_hidden: Option<Tensor<B, 3, Bool>>,
    causal: bool,
    scale: f64,
    dropout: f64,
) -> (Tensor<B, 5>, Tensor<B, 4>) {
    let softmax = SegmentSoftmax {
        causal,
        scale,
        dropout,
    };
    segment_attention_within_budget(
        query,
        key,
        value,
        key_hidden,
        softmax,
        SCORE_BUDGET_ELEMENTS,
    )
}

/// How many of `segments` segments of `per_segment` scores each one chunk of
/// [`segment_attention`] batches under `budget_elements` (at least one: a larger segment is taken
/// whole).
pub(crate) fn segments_per_chunk(
    per_segment: usize,
    segments: usize,
    budget_elements: usize,
) -> usize {
    (budget_elements / per_segment.max(1)).clamp(1, segments)
}

/// How [`segment_attention`] turns scores into weights: causal masking, the scale, dropout.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SegmentSoftmax {
    pub causal: bool,
    pub scale: f64,
    pub dropout: f64,
}

/// [`segment_attention`] with the chunk budget as an argument.
pub(crate) fn segment_attention_within_budget<B: Backend>(
    query: Tensor<B, 5>,
    key: Tensor<B, 5>,
    value: Tensor<B, 5>,
    key_hidden: Option<Tensor<B, 3, Bool>>,
    softmax: SegmentSoftmax,
    budget_elements: usize,
) -> (Tensor<B, 5>, Tensor<B, 4>) {
    let SegmentSoftmax {
        causal,
        scale,
        dropout,
    } = softmax;
    let [batch, segments, rows, heads, _] = query.dims();
    // 0/1 floats from here on (see `attend_chunk`).
    let key_hidden = key_hidden.map(|m| m.float());
    let per_segment = batch * heads * rows * rows;
    let chunk = segments_per_chunk(per_segment, segments, budget_elements);
    if chunk >= segments {
        return attend_chunk(query, key, value, key_hidden, causal, scale, dropout);
    }
    let mut outs = Vec::with_capacity(segments.div_ceil(chunk));
    let mut lses = Vec::with_capacity(segments.div_ceil(chunk));
    for start in (0..segments).step_by(chunk) {
        let len = chunk.min(segments - start);
        let (o, l) = attend_chunk(
            query.clone().narrow(1, start, len),
            key.clone().narrow(1, start, len),
            value.clone().narrow(1, start, len),
            key_hidden.clone().map(|m| m.narrow(1, start, len)),
            causal,
            scale,
            dropout,
        );
        outs.push(o);
        lses.push(l);
    }
    (Tensor::cat(outs, 1), Tensor::cat(lses, 1))
}

fn attend_chunk<B: Backend>(
    query: Tensor<B, 5>,
    key: Tensor<B, 5>,
    value: Tensor<B, 5>,
    key_hidden: Option<Tensor<B, 3>>,
    causal: bool,
    scale: f64,
    dropout: f64,
) -> (Tensor<B, 5>, Tensor<B, 4>) {
    let [batch, segments, rows, heads, _] = query.dims();
    let device = query.device();
    // [b, s, rows, h, d] -> [b, s, h, rows, d]
    let q = query.swap_dims(2, 3) * scale;
    let k = key.swap_dims(2, 3);
    let v = value.swap_dims(2, 3);
    let mut scores = q.matmul(k.swap_dims(3, 4)); // [b, s, h, rows, rows]

    // Masks are combined as 0/1 floats and turned into one boolean at the scores' shape: Burn
    // 0.21's WGPU backend mis-handles reshaped and broadcast boolean masks (seen on lavapipe:
    // `docs/architecture.md`, "Known backend issues").
    let mut hidden: Option<Tensor<B, 5>> = None;
    if causal {
        // 1 strictly above the diagonal: key index > query index.
        let upper = Tensor::<B, 2, Bool>::tril_mask([rows, rows], 0, &device).float();
        hidden = Some(upper.reshape([1, 1, 1, rows, rows]));
    }
    if let Some(mask) = key_hidden {
        let mask = mask.reshape([batch, segments, 1, 1, rows]);
        hidden = Some(match hidden {
            Some(h) => h + mask,
            None => mask,
        });
    }
    if let Some(mask) = hidden {
        let mask = mask
            .expand([batch, segments, heads, rows, rows])
            .greater_elem(0.5);
        scores = scores.mask_fill(mask, f32::NEG_INFINITY);
    }

    // Safe softmax (FlashAttention-2, alg. 1): shift by the row max, which is detached; a row
    // with no visible key has max -inf, replaced by 0 so that exp gives exact zeros. Detached
    // before the max: a tracked `max_dim` is argmax + gather, and CubeCL's argmax gives an
    // out-of-range index for a row that is all -inf (see `merge_by_lse`).
    let row_max = scores.clone().detach().max_dim(4);
    let row_max = row_max
        .clone()
        .mask_fill(row_max.equal_elem(f32::NEG_INFINITY), 0.0);
    let weights = (scores - row_max.clone()).exp();
    let denom = weights.clone().sum_dim(4); // [b, s, h, rows, 1]
    let empty = denom.clone().equal_elem(0.0);
    let denom = denom.mask_fill(empty.clone(), 1.0);
    let lse = (row_max + denom.clone().log()).mask_fill(empty, f32::NEG_INFINITY);

    let mut probs = weights / denom;
    if dropout > 0.0 {
        probs = DropoutConfig::new(dropout).init().forward(probs);
    }
    let out = probs.matmul(v).swap_dims(2, 3); // [b, s, rows, h, d]
    let lse = lse.reshape([batch, segments, heads, rows]).swap_dims(2, 3);
    (out, lse)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::tensor::{Distribution, TensorData, Tolerance};

    type B = NdArray;

    /// Dense attention of one row set, written with plain loops in f64.
    fn naive(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        rows: usize,
        d: usize,
        causal: bool,
        scale: f64,
    ) -> (Vec<f64>, Vec<f64>) {
        let mut out = vec![0.0; rows * d];
        let mut lse = vec![f64::NEG_INFINITY; rows];
        for i in 0..rows {
            let keys: Vec<usize> = (0..rows).filter(|&j| !causal || j <= i).collect();
            let s: Vec<f64> = keys
                .iter()
                .map(|&j| {
                    (0..d)
                        .map(|c| q[i * d + c] as f64 * k[j * d + c] as f64)
                        .sum::<f64>()
                        * scale
                })
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
            lse[i] = m + z.ln();
            for (t, &j) in keys.iter().enumerate() {
                let p = (s[t] - m).exp() / z;
                for c in 0..d {
                    out[i * d + c] += p * v[j * d + c] as f64;
                }
            }
        }
        (out, lse)
    }

    #[test]
    fn causal_single_segment_matches_naive_loops() {
        let device = Default::default();
        let (rows, d) = (7, 5);
        let q = Tensor::<B, 5>::random([1, 1, rows, 1, d], Distribution::Normal(0.0, 1.0), &device);
        let k = Tensor::<B, 5>::random([1, 1, rows, 1, d], Distribution::Normal(0.0, 1.0), &device);
        let v = Tensor::<B, 5>::random([1, 1, rows, 1, d], Distribution::Normal(0.0, 1.0), &device);
        let flat = |t: &Tensor<B, 5>| t.to_data().to_vec::<f32>().unwrap();
        let (eo, el) = naive(&flat(&q), &flat(&k), &flat(&v), rows, d, true, 0.4);
        let (out, lse) = segment_attention(q, k, v, None, true, 0.4, 0.0);
        out.into_data().assert_approx_eq::<f32>(
            &TensorData::new(eo.iter().map(|&x| x as f32).collect(), [1, 1, rows, 1, d]),
            Tolerance::rel_abs(1e-5, 1e-6),
        );
        lse.into_data().assert_approx_eq::<f32>(
            &TensorData::new(el.iter().map(|&x| x as f32).collect(), [1, 1, rows, 1]),
            Tolerance::rel_abs(1e-5, 1e-6),
        );
    }

    #[test]
    fn fully_hidden_rows_give_zero_output_and_neg_inf_lse() {
        let device = Default::default();
        let q = Tensor::<B, 5>::random([2, 2, 3, 2, 4], Distribution::Normal(0.0, 1.0), &device);
        // batch 0: all keys hidden; batch 1: only key 0 visible.
        let hidden = Tensor::<B, 3, Bool>::from_data(
            TensorData::new(
                vec![
                    true, true, true, true, true, true, false, true, true, false, true, true,
                ],
                [2, 2, 3],
            ),
            &device,
        );
        let (out, lse) = segment_attention(
            q.clone(),
            q.clone(),
            q.clone(),
            Some(hidden),
            true,
            1.0,
            0.0,
        );
        let out = out.into_data().to_vec::<f32>().unwrap();
        let lse = lse.into_data().to_vec::<f32>().unwrap();
        assert!(out.iter().all(|x| x.is_finite()));
        let half = out.len() / 2;
        assert!(out[..half].iter().all(|&x| x == 0.0));
        assert!(lse[..lse.len() / 2].iter().all(|&x| x == f32::NEG_INFINITY));
        // batch 1: every query sees exactly key 0, so the output is value row 0 of its segment.
        let v = q.into_data().to_vec::<f32>().unwrap();
        let flat =
            |seg: usize, row: usize, h: usize, c: usize| (((2 + seg) * 3 + row) * 2 + h) * 4 + c;
        for seg in 0..2 {
            for row in 0..3 {
                for h in 0..2 {
                    for c in 0..4 {
                        let (got, want) = (out[flat(seg, row, h, c)], v[flat(seg, 0, h, c)]);
                        assert!(
                            (got - want).abs() < 1e-6,
                            "seg {seg} row {row}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn chunked_segments_equal_one_batch() {
        let device = Default::default();
        let (segments, rows) = (7, 5);
        let q = Tensor::<B, 5>::random(
            [2, segments, rows, 3, 4],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let k = Tensor::<B, 5>::random(
            [2, segments, rows, 3, 4],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let whole = segment_attention(q.clone(), k.clone(), q.clone(), None, true, 0.5, 0.0);
        // budget for two segments at a time: chunks of 2, 2, 2, 1
        let budget = 2 * (2 * 3 * rows * rows);
        let softmax = SegmentSoftmax {
            causal: true,
            scale: 0.5,
            dropout: 0.0,
        };
        let chunked = segment_attention_within_budget(q.clone(), k, q, None, softmax, budget);
        chunked
            .0
            .into_data()
            .assert_approx_eq::<f32>(&whole.0.into_data(), Tolerance::rel_abs(1e-6, 1e-7));
        chunked
            .1
            .into_data()
            .assert_approx_eq::<f32>(&whole.1.into_data(), Tolerance::rel_abs(1e-6, 1e-7));
    }
}
