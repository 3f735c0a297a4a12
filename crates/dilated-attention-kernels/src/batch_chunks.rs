//! Calls larger than one fused launch addresses, split along the batch: batch rows are
//! independent, so a call whose tensors hold 2^32 elements or more (the kernels use 32-bit
//! offsets), or more than 65,535 batch rows (the grid's limit), runs as several fused calls on
//! consecutive batch rows, and its outputs are concatenated. Peak memory: the inputs, the
//! chunks' outputs and their concatenation (twice the output and log-sum-exp while the last chunk
//! is joined). A single batch row beyond the limits cannot be split this way: that call runs on
//! the reference path.
//!
//! ```
//! # use dilated_attention_kernels::batch_rows_per_fused_call;
//! // 3 rows of 2^31 elements each: one row per call.
//! assert_eq!(batch_rows_per_fused_call([3, 1 << 20, 16, 128]), Some(1));
//! // Fits in one call.
//! assert_eq!(batch_rows_per_fused_call([4, 4096, 8, 64]), None);
//! ```

use burn::tensor::{Bool, Tensor, backend::Backend};
use dilated_attention_core::Result;

/// Elements one tensor of a fused call holds at most (the kernels' offsets are 32-bit).
pub(crate) const MAX_FUSED_ELEMENTS: u64 = u32::MAX as u64;
/// Batch rows (and heads) of one fused call at most (the launch grid's y and z limit).
pub(crate) const MAX_FUSED_GRID_YZ: usize = 65_535;

/// Batch rows per fused call for inputs of shape `dims` (`[batch, seq, heads, head_dim]`)
/// when the whole call is beyond one launch (2^32 elements or more, more than 65,535 batch rows)
/// and a split along the batch brings it within; `None` when one call fits, or when even one
/// batch row is beyond.
pub fn batch_rows_per_fused_call(dims: [usize; 4]) -> Option<usize> {
    let [batch, seq, heads, head_dim] = dims.map(|d| d as u64);
    let per_row = seq * heads * head_dim;
    let fits = |rows: u64| rows * per_row <= MAX_FUSED_ELEMENTS && rows <= MAX_FUSED_GRID_YZ as u64;
    if per_row == 0 || fits(batch) || !fits(1) {
        return None;
    }
    let rows = (MAX_FUSED_ELEMENTS / per_row).min(MAX_FUSED_GRID_YZ as u64);
    Some(rows as usize)
}

/// Runs `attend` on `rows` batch rows at a time and concatenates the outputs and log-sum-exps
/// along the batch (differentiable: the slices and the concatenation are Burn ops).
pub(crate) fn attend_in_batch_chunks<B: Backend>(
    [query, key, value]: [Tensor<B, 4>; 3],
    key_padding_mask: Option<Tensor<B, 2, Bool>>,
    rows: usize,
    mut attend: impl FnMut(
        Tensor<B, 4>,
        Tensor<B, 4>,
        Tensor<B, 4>,
        Option<Tensor<B, 2, Bool>>,
    ) -> Result<(Tensor<B, 4>, Tensor<B, 3>)>,
) -> Result<(Tensor<B, 4>, Tensor<B, 3>)> {
    let batch = query.dims()[0];
    let mut outputs = Vec::new();
    let mut lses = Vec::new();
    for start in (0..batch).step_by(rows.max(1)) {
        let length = rows.min(batch - start);
        let chunk = |t: &Tensor<B, 4>| t.clone().narrow(0, start, length);
        let mask = key_padding_mask
            .as_ref()
            .map(|m| m.clone().narrow(0, start, length));
        let (out, lse) = attend(chunk(&query), chunk(&key), chunk(&value), mask)?;
        outputs.push(out);
        lses.push(lse);
    }
    Ok((Tensor::cat(outputs, 0), Tensor::cat(lses, 0)))
}

#[cfg(test)]
mod tests {
    use burn::backend::{Autodiff, NdArray};
    use burn::tensor::Distribution;
    use dilated_attention_core::compare::{check_close, check_lse_close};
    use dilated_attention_core::{DilatedAttentionConfig, reference_dilated_attention};

    use super::*;

    #[test]
    fn rows_per_call_keep_each_call_within_the_launch_limits() {
        // 2^33 elements over 8 rows: 2^30 a row, 3 rows (3 x 2^30 < 2^32) a call.
        assert_eq!(batch_rows_per_fused_call([8, 1 << 18, 64, 64]), Some(3));
        // Exactly 2^32 elements: one element beyond the last offset.
        assert_eq!(batch_rows_per_fused_call([2, 1 << 31, 1, 1]), Some(1));
        assert_eq!(batch_rows_per_fused_call([1, 1 << 31, 1, 1]), None);
        // More rows than the grid takes.
        assert_eq!(batch_rows_per_fused_call([70_000, 8, 1, 8]), Some(65_535));
        // One row beyond: no split helps.
        assert_eq!(batch_rows_per_fused_call([2, 1 << 22, 32, 64]), None);
        assert_eq!(batch_rows_per_fused_call([0, 8, 1, 8]), None);
    }

    /// The chunked call equals one call over the whole batch, output, log-sum-exp and
    /// gradients, with a padding mask sliced along.
    #[test]
    fn chunks_along_the_batch_equal_one_call() {
        type B = Autodiff<NdArray>;
        let device = Default::default();
        let config = DilatedAttentionConfig::new(vec![8, 16], vec![1, 2]).with_causal(true);
        let input = || {
            Tensor::<B, 4>::random([5, 21, 2, 8], Distribution::Normal(0.0, 1.0), &device)
                .require_grad()
        };
        let [q, k, v] = [input(), input(), input()];
        let mask =
            Tensor::<B, 2>::random([5, 21], Distribution::Default, &device).greater_elem(0.7);
        let weights = Tensor::<B, 4>::random([5, 21, 2, 8], Distribution::Default, &device);
        let attend = |q, k, v, m| reference_dilated_attention(q, k, v, m, &config);
        let values = |t: Tensor<B, 4>| t.into_data().to_vec::<f32>().unwrap();
        for rows in [1, 2, 5] {
            let (whole, whole_lse) =
                attend(q.clone(), k.clone(), v.clone(), Some(mask.clone())).unwrap();
            let (chunked, chunked_lse) = attend_in_batch_chunks(
                [q.clone(), k.clone(), v.clone()],
                Some(mask.clone()),
                rows,
                attend,
            )
            .unwrap();
            check_close(&values(chunked.clone()), &values(whole.clone()), 1e-6, 1e-6).unwrap();
            let lse = |t: Tensor<B, 3>| t.into_data().to_vec::<f32>().unwrap();
            check_lse_close(&lse(chunked_lse), &lse(whole_lse), 1e-6, 1e-6).unwrap();
            let grads_whole = (whole * weights.clone()).sum().backward();
            let grads_chunked = (chunked * weights.clone()).sum().backward();
            for t in [&q, &k, &v] {
                let grad = |grads| t.grad(grads).unwrap().into_data().to_vec::<f32>().unwrap();
                check_close(&grad(&grads_chunked), &grad(&grads_whole), 1e-6, 1e-6).unwrap();
            }
        }
    }
}
