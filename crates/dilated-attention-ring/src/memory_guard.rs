//! The production ring's memory guard: an estimate of what one call allocates on a rank beyond
//! its inputs, and how many batch chunks keep it under a limit.
//!
//! The estimate follows the memory models of `docs/architecture.md`:
//! - the fused path allocates the output and an f32 log-sum-exp;
//! - the reference path holds gathered rows and one chunk of scores (inference), or every
//!   chunk's scores and weights (under autodiff);
//! - the sharded path adds its running and per-pair f32 results, one group's gathered rows with
//!   their f32 output, and one chunk of scores (the estimate against measured peaks:
//!   `benches/results/ring-h200x2.md`).
//!
//! Batch elements are independent, so a call over too large a batch runs as several calls over
//! batch chunks. A call whose single batch element is already over the limit is refused with
//! [`MemoryLimit`](dilated_attention_core::DilatedAttentionError::MemoryLimit) instead of running
//! out of device memory.

use dilated_attention_core::{AttentionShape, DilatedIndexPlan, SCORE_BUDGET_ELEMENTS};

/// How a call will run, for the estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallPath {
    /// The fused kernels.
    Fused,
    /// The reference path, without gradient tracking.
    Reference,
    /// The reference path under autodiff (keeps every chunk's scores).
    ReferenceTraining,
}

/// Bytes a call over `shape` (this rank's shard, batch included) allocates beyond its inputs.
pub(crate) fn estimate_call_bytes(
    shape: &AttentionShape,
    index: &DilatedIndexPlan,
    path: CallPath,
    sharded: bool,
    element_bytes: usize,
) -> u64 {
    let [b, n, h, d] = shape.dims().map(|x| x as u64);
    let e = element_bytes as u64;
    let output = b * n * h * (d * e + 4);
    let per_pair_scores: u64 = index
        .pairs()
        .iter()
        .map(|pair| {
            let m = pair.segment_length.div_ceil(pair.dilation) as u64;
            let segments = (n as usize).div_ceil(pair.segment_length) as u64;
            (segments * m * m).min(n * m)
        })
        .sum();
    let chunk = 3 * 4 * SCORE_BUDGET_ELEMENTS as u64;
    let base = match path {
        CallPath::Fused => output,
        CallPath::Reference => {
            output + 3 * b * n * h * d * e + chunk.min(3 * 4 * b * h * per_pair_scores)
        }
        CallPath::ReferenceTraining => {
            output + 3 * b * n * h * d * e + 2 * 4 * b * h * per_pair_scores
        }
    };
    if sharded {
        // the sharded path assembles pair by pair: the running f32 result and one pair's
        // scattered f32 result, then one group's gathered rows (at most the shard) and their
        // f32 output, and one chunk of scores on the Burn-ops fallback
        let f32_result = 4 * b * n * h * (d + 1);
        base + 3 * f32_result + 3 * b * n * h * d * e + chunk
    } else {
        base
    }
}

/// The number of batch chunks that keeps `estimate(batch_chunk)` under `limit`, if any does.
pub(crate) fn batch_chunks(
    batch: usize,
    limit: u64,
    estimate: impl Fn(usize) -> u64,
) -> Option<usize> {
    (1..=batch).find(|&chunks| estimate(batch.div_ceil(chunks)) <= limit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dilated_attention_core::DilatedAttentionConfig;

    #[test]
    fn training_costs_more_than_inference_and_chunks_divide_the_batch() {
        let cfg = DilatedAttentionConfig::new(vec![64, 128], vec![1, 2]);
        let index = DilatedIndexPlan::new(&cfg, 1024, 4).unwrap();
        let shape = |b| AttentionShape::from_dims("query", &[b, 1024, 4, 32]).unwrap();
        let fused = estimate_call_bytes(&shape(8), &index, CallPath::Fused, false, 4);
        let train = estimate_call_bytes(&shape(8), &index, CallPath::ReferenceTraining, false, 4);
        assert_eq!(fused, 8 * 1024 * 4 * (32 * 4 + 4));
        assert!(train > fused);
        let per_element =
            estimate_call_bytes(&shape(1), &index, CallPath::ReferenceTraining, false, 4);
        let chunks = batch_chunks(8, 3 * per_element, |b| {
            estimate_call_bytes(&shape(b), &index, CallPath::ReferenceTraining, false, 4)
        });
        assert_eq!(chunks, Some(3)); // chunks of 3, 3, 2
        assert_eq!(
            batch_chunks(8, per_element / 2, |b| b as u64 * per_element),
            None
        );
    }

    #[test]
    fn the_sharded_path_adds_three_f32_results_one_gathered_copy_and_a_chunk() {
        let cfg = DilatedAttentionConfig::new(vec![64, 128], vec![1, 2]);
        let index = DilatedIndexPlan::new(&cfg, 1024, 4).unwrap();
        let shape = AttentionShape::from_dims("query", &[2, 1024, 4, 32]).unwrap();
        let local = estimate_call_bytes(&shape, &index, CallPath::Fused, false, 2);
        let sharded = estimate_call_bytes(&shape, &index, CallPath::Fused, true, 2);
        let rows = 2 * 1024 * 4;
        let chunk = 3 * 4 * SCORE_BUDGET_ELEMENTS as u64;
        assert_eq!(
            sharded - local,
            3 * 4 * rows * 33 + 3 * rows * 32 * 2 + chunk
        );
    }
}
