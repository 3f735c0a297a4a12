//! Host-side index helpers shared by the reference path, the ring and the Hilbert order: a list
//! of positions as a Burn `Int` tensor (for `select`), and the inverse of a permutation.

use burn::tensor::{Int, Tensor, TensorData, backend::Backend};

/// `positions` as a 1-D `Int` tensor on `device`, ready for `Tensor::select`.
///
/// ```
/// use burn::backend::NdArray;
/// use dilated_attention_core::index_tensor;
///
/// let idx = index_tensor::<NdArray>([2, 0, 1], &Default::default());
/// assert_eq!(idx.into_data().to_vec::<i64>().unwrap(), vec![2, 0, 1]);
/// ```
pub fn index_tensor<B: Backend>(
    positions: impl IntoIterator<Item = usize>,
    device: &B::Device,
) -> Tensor<B, 1, Int> {
    let data: Vec<i64> = positions.into_iter().map(|p| p as i64).collect();
    let len = data.len();
    Tensor::from_data(TensorData::new(data, [len]), device)
}

/// The inverse of the permutation `order` of `0..order.len()`: `inverse[order[i]] = i`.
///
/// ```
/// use dilated_attention_core::inverse_permutation;
///
/// assert_eq!(inverse_permutation(&[2, 0, 1]), vec![1, 2, 0]);
/// ```
pub fn inverse_permutation(order: &[usize]) -> Vec<usize> {
    let mut inverse = vec![0; order.len()];
    for (i, &j) in order.iter().enumerate() {
        inverse[j] = i;
    }
    inverse
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverse_permutation_undoes_order() {
        let order = [0, 3, 1, 4, 2];
        let inv = inverse_permutation(&order);
        for (i, &j) in order.iter().enumerate() {
            assert_eq!(inv[j], i);
        }
    }
}
