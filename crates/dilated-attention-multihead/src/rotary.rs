//! Rotary position embedding (RoFormer, Su et al. 2021, sec. 3.4.2), applied to queries and keys
//! before dilation so that every selected row keeps its original position.
//!
//! The angles are computed per call from the sequence length (no table sized for a maximum
//! length, which at a million tokens would cost more than the activations). Pairs are the two
//! halves of the head dimension (`x[i]` with `x[i + d/2]`, the GPT-NeoX convention).
//!
//! ```
//! use burn::backend::NdArray;
//! use burn::tensor::{Distribution, Tensor};
//! use dilated_attention_multihead::apply_rotary;
//!
//! let device = Default::default();
//! let x = Tensor::<NdArray, 4>::random([1, 10, 2, 8], Distribution::Default, &device);
//! let y = apply_rotary(x.clone(), 10_000.0);
//! assert_eq!(y.dims(), [1, 10, 2, 8]);
//! // position 0 is not rotated
//! let diff = (y.narrow(1, 0, 1) - x.narrow(1, 0, 1)).abs().max().into_scalar();
//! assert!(diff < 1e-6);
//! ```

use burn::tensor::{Tensor, TensorData, backend::Backend};

/// Rotates `x` (`[batch, seq, heads, head_dim]`, `head_dim` even) by the angles
/// `position * base^(-2i / head_dim)`, `i < head_dim / 2`.
///
/// # Panics
/// If `head_dim` is odd (the multihead config rejects that before calling).
pub fn apply_rotary<B: Backend>(x: Tensor<B, 4>, base: f64) -> Tensor<B, 4> {
    let seq = x.dims()[1];
    let positions: Vec<usize> = (0..seq).collect();
    apply_rotary_at(x, &positions, base)
}

/// [`apply_rotary`] with the position of each row given: the rows of a sequence-parallel shard
/// keep their global positions (`positions.len()` = `seq`).
///
/// # Panics
/// If `head_dim` is odd or `positions` does not have one entry per row.
pub fn apply_rotary_at<B: Backend>(
    x: Tensor<B, 4>,
    positions: &[usize],
    base: f64,
) -> Tensor<B, 4> {
    let [_, seq, _, head_dim] = x.dims();
    assert_eq!(positions.len(), seq, "one position per row");
    assert!(
        head_dim % 2 == 0,
        "rotary embedding needs an even head_dim, got {head_dim}"
    );
    let half = head_dim / 2;
    let device = x.device();
    let mut cos = Vec::with_capacity(seq * half);
    let mut sin = Vec::with_capacity(seq * half);
    for &pos in positions {
        for i in 0..half {
            let angle = pos as f64 * base.powf(-2.0 * i as f64 / head_dim as f64);
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    let table =
        |v: Vec<f32>| Tensor::<B, 4>::from_data(TensorData::new(v, [1, seq, 1, half]), &device);
    let (cos, sin) = (table(cos), table(sin));
    let x1 = x.clone().narrow(3, 0, half);
    let x2 = x.narrow(3, half, half);
    Tensor::cat(
        vec![
            x1.clone() * cos.clone() - x2.clone() * sin.clone(),
            x2 * cos + x1 * sin,
        ],
        3,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::tensor::Distribution;

    type B = NdArray;

    #[test]
    fn rotary_preserves_norm_and_makes_scores_relative() {
        let device = Default::default();
        let x = Tensor::<B, 4>::random([1, 12, 1, 16], Distribution::Normal(0.0, 1.0), &device);
        let y = apply_rotary(x.clone(), 10_000.0);
        let norm = |t: Tensor<B, 4>| {
            t.powf_scalar(2.0)
                .sum_dim(3)
                .into_data()
                .to_vec::<f32>()
                .unwrap()
        };
        for (a, b) in norm(x).iter().zip(norm(y)) {
            assert!((a - b).abs() < 1e-4 * a.max(1.0));
        }
        // <R(p) u, R(p') w> depends only on p - p': same vectors at positions (2, 5) and (6, 9).
        let u = Tensor::<B, 4>::random([1, 1, 1, 16], Distribution::Normal(0.0, 1.0), &device);
        let w = Tensor::<B, 4>::random([1, 1, 1, 16], Distribution::Normal(0.0, 1.0), &device);
        let seq = |t: &Tensor<B, 4>| apply_rotary(t.clone().repeat_dim(1, 10), 10_000.0);
        let (ru, rw) = (seq(&u), seq(&w));
        let dot = |a: usize, b: usize| {
            (ru.clone().narrow(1, a, 1) * rw.clone().narrow(1, b, 1))
                .sum()
                .into_scalar()
        };
        assert!((dot(2, 5) - dot(6, 9)).abs() < 1e-4);
        // ... and it does depend on p - p': over distances 0..8 the score moves by more than a
        // thousandth of |u| |w| (two distances alone can meet by chance on random vectors).
        let scores: Vec<f32> = (0..9).map(|distance| dot(0, distance)).collect();
        assert!(scores.iter().all(|s| s.is_finite()), "{scores:?}");
        let spread = scores.iter().copied().fold(f32::MIN, f32::max)
            - scores.iter().copied().fold(f32::MAX, f32::min);
        let length = |t: &Tensor<B, 4>| t.clone().powf_scalar(2.0).sum().into_scalar().sqrt();
        assert!(spread > 1e-3 * length(&u) * length(&w), "spread {spread}");
    }
}
