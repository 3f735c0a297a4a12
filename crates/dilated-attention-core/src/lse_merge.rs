//! Merging partial attentions of the same queries by their log-sum-exp.
//!
//! If `o_i` is the softmax attention of a query over key set `K_i` (disjoint sets) and `lse_i`
//! the log of its softmax denominator, the attention over the union is
//! `o = sum_i w_i o_i` with `w_i = exp(lse_i - logsumexp_k lse_k)`, and its log-sum-exp is
//! `logsumexp_k lse_k` (LongNet, arXiv 2307.02486, eq. 10; the ring's block merge). A part whose
//! query saw no key has `lse_i = -inf` and weight 0; when no part saw a key the output is 0 and
//! the merged log-sum-exp is `-inf`, never NaN.
//!
//! ```
//! use burn::backend::NdArray;
//! use burn::tensor::{Distribution, Tensor};
//! use dilated_attention_core::merge_by_lse;
//!
//! let device = Default::default();
//! let part = || Tensor::<NdArray, 4>::random([1, 5, 2, 8], Distribution::Default, &device);
//! let lse = || Tensor::<NdArray, 3>::random([1, 5, 2], Distribution::Default, &device);
//! let (out, merged) = merge_by_lse(vec![(part(), lse()), (part(), lse())]);
//! assert_eq!(out.dims(), [1, 5, 2, 8]);
//! assert_eq!(merged.dims(), [1, 5, 2]);
//! ```

use burn::tensor::{Tensor, backend::Backend};

/// Merges partial attentions `(output [batch, seq, heads, head_dim], lse [batch, seq, heads])`
/// of the same queries over disjoint key sets.
///
/// # Panics
/// If `parts` is empty or the parts' shapes differ (internal callers only pass matching parts).
pub fn merge_by_lse<B: Backend>(
    parts: Vec<(Tensor<B, 4>, Tensor<B, 3>)>,
) -> (Tensor<B, 4>, Tensor<B, 3>) {
    assert!(!parts.is_empty(), "merge_by_lse needs at least one part");
    if parts.len() == 1 {
        return parts.into_iter().next().expect("one part");
    }
    let (outs, lses): (Vec<_>, Vec<_>) = parts.into_iter().unzip();
    let lse: Tensor<B, 4> = Tensor::stack(lses, 0); // [parts, b, n, h]
    // The shift is detached: the merge does not depend on it. Detached before the max, so that
    // Autodiff does not track it: a tracked `max_dim` is argmax + gather, and on burn 0.21's
    // CubeCL backends argmax gives index u32::MAX for a row that is all -inf (a query that sees
    // no key), which the gather then reads out of bounds (an illegal address on CUDA).
    let max = lse.clone().detach().max_dim(0);
    let max = max
        .clone()
        .mask_fill(max.equal_elem(f32::NEG_INFINITY), 0.0);
    let weights = (lse - max.clone()).exp();
    let total = weights.clone().sum_dim(0);
    let empty = total.clone().equal_elem(0.0);
    let total = total.mask_fill(empty.clone(), 1.0);
    let weights = weights / total.clone();

    let out = outs
        .into_iter()
        .enumerate()
        .map(|(i, o)| {
            let [_, b, n, h] = weights.dims();
            o * weights.clone().narrow(0, i, 1).reshape([b, n, h, 1])
        })
        .reduce(|acc, x| acc + x)
        .expect("at least two parts");
    let merged = (max + total.log()).mask_fill(empty, f32::NEG_INFINITY);
    let [_, b, n, h] = merged.dims();
    (out, merged.reshape([b, n, h]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::tensor::{Distribution, TensorData, Tolerance};

    type B = NdArray;

    #[test]
    fn merge_of_split_keys_equals_attention_over_all_keys() {
        // One query row, 6 keys split 2 + 4: merge of the two partial softmaxes equals the full one.
        let device = Default::default();
        let scores = [0.3f64, -1.2, 2.0, 0.7, -0.1, 1.1];
        let values = [1.0f64, -2.0, 0.5, 3.0, -1.0, 0.25];
        let attend = |r: core::ops::Range<usize>| {
            let m = r
                .clone()
                .map(|j| scores[j])
                .fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = r.clone().map(|j| (scores[j] - m).exp()).sum();
            let o: f64 = r.map(|j| (scores[j] - m).exp() / z * values[j]).sum();
            (o, m + z.ln())
        };
        let (o1, l1) = attend(0..2);
        let (o2, l2) = attend(2..6);
        let (o, l) = attend(0..6);
        let t4 = |x: f64| {
            Tensor::<B, 4>::from_data(TensorData::new(vec![x as f32], [1, 1, 1, 1]), &device)
        };
        let t3 =
            |x: f64| Tensor::<B, 3>::from_data(TensorData::new(vec![x as f32], [1, 1, 1]), &device);
        let (out, lse) = merge_by_lse(vec![(t4(o1), t3(l1)), (t4(o2), t3(l2))]);
        let tol = Tolerance::rel_abs(1e-6, 1e-6);
        out.into_data()
            .assert_approx_eq::<f32>(&TensorData::new(vec![o as f32], [1, 1, 1, 1]), tol);
        lse.into_data()
            .assert_approx_eq::<f32>(&TensorData::new(vec![l as f32], [1, 1, 1]), tol);
    }

    #[test]
    fn parts_without_keys_get_zero_weight_and_all_empty_gives_zero() {
        let device = Default::default();
        let o1 = Tensor::<B, 4>::random([2, 3, 1, 4], Distribution::Normal(0.0, 1.0), &device);
        let o2 = Tensor::<B, 4>::zeros([2, 3, 1, 4], &device);
        let l1 = Tensor::<B, 3>::random([2, 3, 1], Distribution::Normal(0.0, 1.0), &device);
        let l1 = l1.clone().mask_fill(l1.lower_elem(-0.5), f32::NEG_INFINITY);
        let l2 = Tensor::<B, 3>::full([2, 3, 1], f32::NEG_INFINITY, &device);
        let (out, lse) = merge_by_lse(vec![(o1.clone(), l1.clone()), (o2, l2)]);
        let empty = l1
            .clone()
            .equal_elem(f32::NEG_INFINITY)
            .reshape([2, 3, 1, 1])
            .expand([2, 3, 1, 4]);
        let expected = o1.mask_fill(empty, 0.0);
        out.into_data()
            .assert_approx_eq::<f32>(&expected.into_data(), Tolerance::rel_abs(1e-6, 1e-7));
        let lse = lse.into_data().to_vec::<f32>().unwrap();
        let l1 = l1.into_data().to_vec::<f32>().unwrap();
        for (a, b) in lse.iter().zip(&l1) {
            assert!(a == b || (a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }
}
